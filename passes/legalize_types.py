"""`legalize-types`: give every edge an op that maps its source type to its destination type."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal
from math import ceil

from dagir.ir import IR, Op, TensorType
from dagir.pass_manager import Pass, register_pass


class IllegalEdge(ValueError):
    """No op of the family maps the source type to the destination type."""


@register_pass
class LegalizeTypes(Pass):
    """Choose each edge's op from the edge-op family and the types at its ends.

    Between images of the same resolution: a 3x3 conv-BN-ReLU changing channels as needed. Down to a
    lower resolution (an edge between stages): a strided conv (`resample=strided`) or average pooling
    then a 1x1 conv (`resample=pool`), with the stride the two resolutions require. Between vectors:
    linear + ReLU. Into a head: global pooling then linear (images) or linear (vectors); into a dense
    head (an image head at the input's resolution): a 1x1 conv-BN-ReLU, up-sampled bilinearly
    (`upsample_conv`) from a lower resolution. Edges that already have an op keep it. Afterwards
    every edge has an op, and the IR says so (`types_legal`).
    """

    name = "legalize-types"
    resample: Literal["strided", "pool"] = "strided"

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        for key, edge in out.edges.items():
            if edge.op is None:
                dst = out.nodes[edge.dst]
                op = self.choose(out.nodes[edge.src].type, dst.input_type, into_head=dst.kind == "head")
                out.edges[key] = replace(edge, op=op)
        out.types_legal = True
        return out

    def choose(self, src: TensorType, dst: TensorType, *, into_head: bool) -> Op:
        if into_head and src.is_image and dst.is_image:
            return _into_dense_head(src, dst)
        if src.is_image and dst.is_image:
            stride = _stride(src, dst)
            family = "pool_conv_bn_relu" if stride > 1 and self.resample == "pool" else "conv_bn_relu"
            return Op(family, {"c_in": src.channels, "c_out": dst.channels, "stride": stride})
        if src.is_image:
            return Op("pool_linear", {"c_in": src.channels, "d_out": dst.shape[0]})
        if dst.is_image:
            raise IllegalEdge(f"no op maps a vector {src} to an image {dst}")
        name = "linear" if into_head else "linear_relu"
        return Op(name, {"d_in": src.shape[0], "d_out": dst.shape[0]})


def _into_dense_head(src: TensorType, dst: TensorType) -> Op:
    """A read-out into a per-pixel head: a 1x1 projection, up-sampled when the head's resolution is
    higher (every read-out is then the same projection, whatever resolution it starts from)."""
    if src.shape[1:] == dst.shape[1:]:
        return Op("conv_bn_relu", {"c_in": src.channels, "c_out": dst.channels, "stride": 1, "kernel": 1})
    if src.shape[1] <= dst.shape[1] and src.shape[2] <= dst.shape[2]:
        return Op("upsample_conv", {"c_in": src.channels, "c_out": dst.channels,
                                    "height": dst.shape[1], "width": dst.shape[2]})
    raise IllegalEdge(f"no read-out takes {src} to the dense head's {dst} (heads do not down-sample)")


def _stride(src: TensorType, dst: TensorType) -> int:
    """The power-of-two stride taking src's resolution to dst's (ceil-halving per stage)."""
    for k in range(0, 31):
        stride = 2 ** k
        if (ceil(src.shape[1] / stride), ceil(src.shape[2] / stride)) == dst.shape[1:]:
            return stride
        if stride > max(src.shape[1], src.shape[2]):
            break
    raise IllegalEdge(f"no stride takes {src} to {dst} (up-sampling is not supported on edges)")
