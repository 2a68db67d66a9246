"""The op registry: what each op does to types, and what it costs.

An op is named in the IR (`Op("conv_bn_relu", {...})`); this module knows, without importing torch,
the type it produces from its input type, its parameter count and its multiply-accumulate count.
`dagir.backends.torch_ops` builds the matching `nn.Module` for each name.

>>> output_type(Op("conv_bn_relu", {"c_in": 1, "c_out": 8, "stride": 2}), TensorType((1, 28, 28)))
TensorType(shape=(8, 14, 14))
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Callable, Mapping

from .ir import MIX_HALVES, Op, TensorType


class OpTypeError(ValueError):
    """An op cannot take the given input type, or its parameters are inconsistent."""


@dataclass(frozen=True)
class OpRule:
    """Type and cost rules of one op. `macs` counts multiply-accumulates per sample; `norm_channels`
    the channels of its batch norms (their affine parameters are part of `params`)."""

    infer: Callable[[Mapping, TensorType], TensorType]
    params: Callable[[Mapping], int]
    macs: Callable[[Mapping, TensorType], int]
    doc: str
    norm_channels: Callable[[Mapping], int] = lambda p: 0


def _require_image(t: TensorType, channels: int, op: str) -> None:
    if not t.is_image:
        raise OpTypeError(f"{op} needs an image input [C, H, W], got {t}")
    if t.channels != channels:
        raise OpTypeError(f"{op} expects {channels} input channels, got {t}")


def _require_vector(t: TensorType, dim: int, op: str) -> None:
    if t.is_image:
        raise OpTypeError(f"{op} needs a vector input [D], got {t}")
    if t.shape[0] != dim:
        raise OpTypeError(f"{op} expects input dimension {dim}, got {t}")


def _strided(p: Mapping, t: TensorType) -> TensorType:
    stride = int(p.get("stride", 1))
    return TensorType((int(p["c_out"]), ceil(t.shape[1] / stride), ceil(t.shape[2] / stride)))


def _conv_infer(p: Mapping, t: TensorType) -> TensorType:
    _require_image(t, int(p["c_in"]), "conv_bn_relu")
    return _strided(p, t)


def _pool_conv_infer(p: Mapping, t: TensorType) -> TensorType:
    _require_image(t, int(p["c_in"]), "pool_conv_bn_relu")
    return _strided(p, t)


def _conv_macs(p: Mapping, t: TensorType) -> int:
    out = _strided(p, t)
    k = int(p.get("kernel", 3))
    return int(p["c_in"]) * int(p["c_out"]) * k * k * out.shape[1] * out.shape[2]


def _pool_conv_macs(p: Mapping, t: TensorType) -> int:
    out = _strided(p, t)
    return int(p["c_in"]) * int(p["c_out"]) * out.shape[1] * out.shape[2]


def _linear_infer(name: str) -> Callable[[Mapping, TensorType], TensorType]:
    def infer(p: Mapping, t: TensorType) -> TensorType:
        _require_vector(t, int(p["d_in"]), name)
        return TensorType((int(p["d_out"]),))
    return infer


def _pool_linear_infer(p: Mapping, t: TensorType) -> TensorType:
    _require_image(t, int(p["c_in"]), "pool_linear")
    return TensorType((int(p["d_out"]),))


def _identity_infer(p: Mapping, t: TensorType) -> TensorType:
    return t


def _upsample_conv_infer(p: Mapping, t: TensorType) -> TensorType:
    _require_image(t, int(p["c_in"]), "upsample_conv")
    height, width = int(p["height"]), int(p["width"])
    if height < t.shape[1] or width < t.shape[2]:
        raise OpTypeError(f"upsample_conv up-samples: {t} cannot become {height}x{width}")
    return TensorType((int(p["c_out"]), height, width))


def _dense_head_infer(p: Mapping, t: TensorType) -> TensorType:
    _require_image(t, int(p["c_in"]), "dense_head")
    return TensorType((int(p["c_out"]),) + t.shape[1:])


def _dense_head_params(p: Mapping) -> int:
    c_in, c_out = int(p["c_in"]), int(p["c_out"])
    return 9 * c_in * c_in + 2 * c_in + c_in * c_out + c_out


def _elements(t: TensorType) -> int:
    count = 1
    for size in t.shape:
        count *= size
    return count


REGISTRY: dict[str, OpRule] = {
    "identity": OpRule(_identity_infer, lambda p: 0, lambda p, t: 0, "passes its input through"),
    "conv_bn_relu": OpRule(
        _conv_infer,
        lambda p: int(p["c_in"]) * int(p["c_out"]) * int(p.get("kernel", 3)) ** 2 + 2 * int(p["c_out"]),
        _conv_macs,
        "k x k convolution (stride s, no bias), batch norm, ReLU; params c_in, c_out, stride, kernel=3",
        lambda p: int(p["c_out"])),
    "pool_conv_bn_relu": OpRule(
        _pool_conv_infer,
        lambda p: int(p["c_in"]) * int(p["c_out"]) + 2 * int(p["c_out"]),
        _pool_conv_macs,
        "average pooling by `stride`, 1x1 convolution, batch norm, ReLU; params c_in, c_out, stride",
        lambda p: int(p["c_out"])),
    "linear_relu": OpRule(
        _linear_infer("linear_relu"),
        lambda p: int(p["d_in"]) * int(p["d_out"]) + int(p["d_out"]),
        lambda p, t: int(p["d_in"]) * int(p["d_out"]),
        "fully connected layer with bias, ReLU; params d_in, d_out"),
    "linear": OpRule(
        _linear_infer("linear"),
        lambda p: int(p["d_in"]) * int(p["d_out"]) + int(p["d_out"]),
        lambda p, t: int(p["d_in"]) * int(p["d_out"]),
        "fully connected layer with bias; params d_in, d_out"),
    "pool_linear": OpRule(
        _pool_linear_infer,
        lambda p: int(p["c_in"]) * int(p["d_out"]) + int(p["d_out"]),
        lambda p, t: int(p["c_in"]) * int(p["d_out"]),
        "global average pooling, then a fully connected layer; params c_in, d_out"),
    "head_mlp": OpRule(
        _linear_infer("head_mlp"),
        lambda p: int(p["d_in"]) * int(p["d_out"]) + int(p["d_out"]),
        lambda p, t: int(p["d_in"]) * int(p["d_out"]),
        "ReLU, then a fully connected layer to the task's outputs; params d_in, d_out"),
    "upsample_conv": OpRule(
        _upsample_conv_infer,
        lambda p: int(p["c_in"]) * int(p["c_out"]) + 2 * int(p["c_out"]),
        lambda p, t: int(p["c_in"]) * int(p["c_out"]) * t.shape[1] * t.shape[2],  # the conv runs before up-sampling
        "1x1 convolution, batch norm, ReLU, then bilinear up-sampling (align_corners=False) to "
        "height x width: a read-out into a dense head; params c_in, c_out, height, width",
        lambda p: int(p["c_out"])),
    "dense_head": OpRule(
        _dense_head_infer,
        _dense_head_params,
        lambda p, t: (9 * int(p["c_in"]) + int(p["c_out"])) * int(p["c_in"]) * t.shape[1] * t.shape[2],
        "3x3 convolution, batch norm, ReLU, then a 1x1 convolution (with bias) to the task's channels "
        "per pixel: the head of a segmentation, depth or normals task; params c_in, c_out",
        lambda p: int(p["c_in"])),
    "scale": OpRule(
        _identity_infer,
        lambda p: 1,
        lambda p, t: _elements(t),
        "its input times one learned scalar α starting at `init` (a cross-stitch weight); params init"),
}


def known_ops() -> list[str]:
    return sorted(REGISTRY)


def _rule(op: Op) -> OpRule:
    try:
        return REGISTRY[op.name]
    except KeyError:
        raise OpTypeError(f"unknown op {op.name!r} (known: {', '.join(known_ops())})") from None


def output_type(op: Op, input_type: TensorType) -> TensorType:
    """The type `op` produces from `input_type`; raises `OpTypeError` if it cannot take it."""
    try:
        return _rule(op).infer(op.params, input_type)
    except KeyError as missing:
        raise OpTypeError(f"op {op} is missing parameter {missing}") from None


def parameter_count(op: Op | None) -> int:
    return 0 if op is None else _rule(op).params(op.params)


def norm_parameter_count(op: Op | None) -> int:
    """The affine parameters of the op's batch norms (2 per channel): what one more set of batch
    norms for the op costs (the compact network gives every state an op reads its own)."""
    return 0 if op is None else 2 * _rule(op).norm_channels(op.params)


def mac_count(op: Op | None, input_type: TensorType) -> int:
    return 0 if op is None else _rule(op).macs(op.params, input_type)


def aggregation_parameter_count(aggregation: str, node_type: TensorType, in_degree: int,
                                query_width: int | None = None, nddr_norm: str = "batch") -> int:
    """Parameters of a node's aggregation over `in_degree` incoming edges.

    `sum` has none; `nddr` is a 1x1 conv (images) or a linear layer (vectors), without bias, from the
    concatenated inputs to the node's width, then its norm (`nddr_norm`: batch or layer norm, each
    with a scale and a shift per channel, or none); `gate` is one linear layer (with bias)
    from its query (the pooled concatenation, or `query_width` features of its own) to one weight
    per incoming edge; `mix` holds an `nddr` and a `gate` and the weight mixing them.
    """
    width = node_type.shape[0]
    if aggregation == "sum" or in_degree == 0:
        return 0
    if aggregation == "nddr":
        return in_degree * width * width + (0 if nddr_norm == "none" else 2 * width)
    if aggregation == "mix":
        return sum(aggregation_parameter_count(half, node_type, in_degree, query_width, nddr_norm)
                   for half in MIX_HALVES) + 1
    if aggregation == "gate":
        return (in_degree * width if query_width is None else query_width) * in_degree + in_degree
    raise OpTypeError(f"unknown aggregation {aggregation!r}")
