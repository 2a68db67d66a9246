"""PyTorch modules for the op registry (`dagir.ops`) and for node aggregation.

`build_op` turns an IR op into an `nn.Module` whose output shape is `dagir.ops.output_type`;
`build_aggregation` makes the module a hidden node uses to combine its incoming edges (`nddr`,
`gate`, `mix`, from `torch_aggregations`; `sum` needs none).

>>> build_op(Op("conv_bn_relu", {"c_in": 1, "c_out": 8, "stride": 2}))(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 8, 14, 14])
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dagir.ir import AGGREGATIONS, Op, TensorType
from dagir.ops import REGISTRY, OpTypeError

from .torch_aggregations import GateAggregation, MixAggregation, NddrAggregation


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
def build_aggregation(aggregation: str, inputs: int, node_type: TensorType, *, own: Sequence[bool] | None = None,
                      fusion: tuple[float, float] | None = None, query_width: int | None = None,
                      nddr_norm: str = "batch") -> nn.Module | None:
    """The module combining `inputs` incoming edges into a node of `node_type`; None for `sum`.
    `own` marks the slots that are the node's own inputs (not cross edges), `fusion` the NDDR
    initialisation (`Node.fusion`), `query_width` the width of a gate's own query (`Node.query`),
    `nddr_norm` the norm after an NDDR mixing (`Node.nddr_norm`)."""
    if aggregation == "sum":
        return None
    if aggregation == "nddr":
        return NddrAggregation(inputs, node_type.channels, node_type.is_image,
                               None if own is None else list(own), fusion, nddr_norm)
    if aggregation == "gate":
        return GateAggregation(inputs, node_type.channels, query_width)
    if aggregation == "mix":
        return MixAggregation(inputs, node_type.channels, node_type.is_image, query_width, nddr_norm)
    raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATIONS)})")
