"""PyTorch modules for the op registry (`dagir.ops`) and for node aggregation.

`build_op` turns an IR op into an `nn.Module` whose output shape is `dagir.ops.output_type`;
`build_aggregation` makes the module a hidden node uses to combine its incoming edges (`nddr`,
`gate`; `sum` needs none). An aggregation module takes one slot per incoming edge of its node, in
`IR.in_edges()` order, each slot holding the gated edge output or None where that edge contributes
nothing to the state being computed (inactive for the task, or its source unreached).

>>> build_op(Op("conv_bn_relu", {"c_in": 1, "c_out": 8, "stride": 2}))(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 8, 14, 14])
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dagir.ir import Op, TensorType
from dagir.ops import REGISTRY, OpTypeError


def _conv_bn_relu(p: Mapping) -> nn.Module:
    kernel = int(p.get("kernel", 3))
    if kernel % 2 == 0:
        raise OpTypeError(f"conv_bn_relu needs an odd kernel to keep 'same' padding, got {kernel}")
    c_in, c_out = int(p["c_in"]), int(p["c_out"])
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel, stride=int(p.get("stride", 1)), padding=kernel // 2, bias=False),
        bn=nn.BatchNorm2d(c_out), relu=nn.ReLU()))


def _pool_conv_bn_relu(p: Mapping) -> nn.Module:
    stride, c_in, c_out = int(p.get("stride", 1)), int(p["c_in"]), int(p["c_out"])
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if stride > 1:
        # ceil_mode matches the ceil-halving of `dagir.ops`; partial windows average what they cover.
        layers["pool"] = nn.AvgPool2d(stride, ceil_mode=True)
    layers.update(conv=nn.Conv2d(c_in, c_out, 1, bias=False), bn=nn.BatchNorm2d(c_out), relu=nn.ReLU())
    return nn.Sequential(layers)


def _linear_relu(p: Mapping) -> nn.Module:
    return nn.Sequential(OrderedDict(linear=nn.Linear(int(p["d_in"]), int(p["d_out"])), relu=nn.ReLU()))


def _linear(p: Mapping) -> nn.Module:
    return nn.Linear(int(p["d_in"]), int(p["d_out"]))


def _pool_linear(p: Mapping) -> nn.Module:
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     linear=nn.Linear(int(p["c_in"]), int(p["d_out"]))))


def _head_mlp(p: Mapping) -> nn.Module:
    return nn.Sequential(OrderedDict(relu=nn.ReLU(), linear=nn.Linear(int(p["d_in"]), int(p["d_out"]))))


class UpsampleConv(nn.Module):
    """1x1 conv-BN-ReLU at the source resolution, then bilinear up-sampling to `size`: projecting
    before resizing costs the convolution at the small resolution only."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        projected = self.relu(self.bn(self.conv(x)))
        return nn.functional.interpolate(projected, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _upsample_conv(p: Mapping) -> nn.Module:
    return UpsampleConv(int(p["c_in"]), int(p["c_out"]), (int(p["height"]), int(p["width"])))


def _dense_head(p: Mapping) -> nn.Module:
    c_in, c_out = int(p["c_in"]), int(p["c_out"])
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), bn=nn.BatchNorm2d(c_in), relu=nn.ReLU(),
        classifier=nn.Conv2d(c_in, c_out, 1)))


class Scale(nn.Module):
    """Its input times one learned scalar: a cross-stitch unit's weight α_ts on one edge."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha


BUILDERS: dict[str, Callable[[Mapping], nn.Module]] = {
    "identity": lambda p: nn.Identity(),
    "conv_bn_relu": _conv_bn_relu,
    "pool_conv_bn_relu": _pool_conv_bn_relu,
    "linear_relu": _linear_relu,
    "linear": _linear,
    "pool_linear": _pool_linear,
    "head_mlp": _head_mlp,
    "upsample_conv": _upsample_conv,
    "dense_head": _dense_head,
    "scale": lambda p: Scale(float(p.get("init", 1.0))),
}
assert set(BUILDERS) == set(REGISTRY), "every registered op needs a torch builder"


def build_op(op: Op) -> nn.Module:
    """The `nn.Module` computing `op`; its output shape is `dagir.ops.output_type(op, input)`."""
    try:
        builder = BUILDERS[op.name]
    except KeyError:
        raise OpTypeError(f"no torch module for op {op.name!r} (known: {', '.join(sorted(BUILDERS))})") from None
    try:
        return builder(op.params)
    except KeyError as missing:
        raise OpTypeError(f"op {op} is missing parameter {missing}") from None


# -- aggregation ----------------------------------------------------------------------------------
def _fill_missing(slots: Sequence[Tensor | None]) -> list[Tensor]:
    """Zeros where a slot is empty: an absent edge is one whose gate is 0."""
    present = next(s for s in slots if s is not None)
    return [torch.zeros_like(present) if s is None else s for s in slots]


class NddrAggregation(nn.Module):
    """MTL-NAS's NDDR fusion: concatenate the gated edge outputs along channels (or features), then
    1x1 conv (Linear for vectors), batch norm, ReLU back to the node's width."""

    def __init__(self, inputs: int, node_type: TensorType, own: Sequence[bool] | None = None,
                 fusion: tuple[float, float] | None = None) -> None:
        super().__init__()
        width = node_type.channels
        if node_type.is_image:
            self.fuse = nn.Conv2d(inputs * width, width, 1, bias=False)
            self.bn: nn.Module = nn.BatchNorm2d(width)
        else:
            self.fuse = nn.Linear(inputs * width, width, bias=False)
            self.bn = nn.BatchNorm1d(width)
        self.relu = nn.ReLU()
        if fusion is not None:
            self._initialise(width, [True] * inputs if own is None else list(own), fusion)

    @torch.no_grad()
    def _initialise(self, width: int, own: list[bool], fusion: tuple[float, float]) -> None:
        """[w_t·I, (w_s/k)·I, ...]: start from the node's own input, a little of the k others."""
        self_weight, other_weight = fusion
        others = max(1, own.count(False))
        weight = self.fuse.weight.view(width, len(own), width, -1)
        weight.zero_()
        for slot, is_own in enumerate(own):
            scale = self_weight / max(1, own.count(True)) if is_own else other_weight / others
            weight[:, slot, :, 0] = scale * torch.eye(width)

    def forward(self, slots: list[Tensor | None]) -> Tensor:
        return self.relu(self.bn(self.fuse(torch.cat(_fill_missing(slots), dim=1))))


class GateAggregation(nn.Module):
    """MTNAS's input-dependent soft sharing: a softmax over the incoming edges of a Linear applied to
    the globally pooled concatenation, then `Σ_i w_i · (gated edge output)_i`. Empty slots get
    weight 0 (they are masked out of the softmax)."""

    def __init__(self, inputs: int, node_type: TensorType) -> None:
        super().__init__()
        self.inputs = inputs
        self.route = nn.Linear(inputs * node_type.channels, inputs)

    def forward(self, slots: list[Tensor | None]) -> Tensor:
        filled = _fill_missing(slots)
        joined = torch.cat(filled, dim=1)
        pooled = joined.flatten(2).mean(dim=2) if joined.dim() > 2 else joined
        present = torch.tensor([s is not None for s in slots], device=joined.device)
        logits = self.route(pooled).masked_fill(~present, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        shape = (-1,) + (1,) * (joined.dim() - 1)
        return sum(weights[:, i].reshape(shape) * filled[i] for i in range(self.inputs))


AGGREGATION_MODULES: dict[str, type[nn.Module]] = {"nddr": NddrAggregation, "gate": GateAggregation}


def build_aggregation(aggregation: str, inputs: int, node_type: TensorType, *, own: Sequence[bool] | None = None,
                      fusion: tuple[float, float] | None = None) -> nn.Module | None:
    """The module combining `inputs` incoming edges into a node of `node_type`; None for `sum`.
    `own` marks the slots that are the node's own inputs (not cross edges) and `fusion` the
    NDDR initialisation (`Node.fusion`)."""
    if aggregation == "sum":
        return None
    if aggregation == "nddr":
        return NddrAggregation(inputs, node_type, own, fusion)
    try:
        return AGGREGATION_MODULES[aggregation](inputs, node_type)
    except KeyError:
        raise ValueError(f"unknown aggregation {aggregation!r} (known: sum, nddr, gate)") from None
