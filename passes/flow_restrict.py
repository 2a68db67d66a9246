"""`flow-restrict`: cut the long skip connections (DESIGN §4, flow restriction)."""
from __future__ import annotations


from pydantic import Field

from dagir.ir import IR
from dagir.pass_manager import Pass, register_pass


@register_pass
class FlowRestrict(Pass):
    """Keep an internal edge h_i -> h_j only if j - i <= max_span, and record the restriction.

    With max_span = M < N the central network has M*N - M(M+1)/2 internal edges, linear in N.
    `max_span=none` keeps the full DAG. The verifier checks the recorded restriction after every
    later pass.
    """

    name = "flow-restrict"
    max_span: int | None = Field(3, ge=1)

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        if self.max_span is not None:
            index = {name: node.index for name, node in out.nodes.items()}
            for key, edge in list(out.edges.items()):
                src, dst = index[edge.src], index[edge.dst]
                if edge.kind == "internal" and src is not None and dst is not None and dst - src > self.max_span:
                    out.remove_edge(*key)  # drops or trims the decisions governing it too
        tighter = out.max_span is not None and (self.max_span is None or out.max_span < self.max_span)
        out.max_span = out.max_span if tighter else self.max_span
        return out
