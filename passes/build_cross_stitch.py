"""`build-cross-stitch`: the cross-stitch baseline (Misra et al., CVPR 2016) in the IR."""
from __future__ import annotations

from pydantic import Field

from dagir.ir import IR, Edge, EdgeTaskState, Node, Op
from dagir.pass_manager import register_pass

from .build_single_task import ChainBuild


@register_pass
class BuildCrossStitch(ChainBuild):
    """One chain per task, mixed by a learned linear unit before every layer.

    The input of task t's layer j is `Σ_s α_ts · out^s_{j-1}` over every task s (out^s_0 is task s's
    own stem). In the IR: node `<t>_h<j>` (owned by t) takes the previous layer's type, sums its
    incoming edges, and applies the layer as its own `op` (conv-BN-ReLU, strided where a stage
    begins; linear + ReLU on vectors). Each incoming edge `<s>_h<j-1> -> <t>_h<j>` is a `scale` op,
    one learned α: `internal` (`read_in` from the stem) for s = t, starting at `self_weight`;
    `cross` for s != t, starting at (1 - self_weight) / (T - 1). So every layer has T(T-1) cross
    edges. No edge is gated; the heads read their own chain's last node.
    """

    name = "build-cross-stitch"
    self_weight: float = Field(0.9, ge=0, le=1)

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        x = out.input_node()
        # Rounded so the IR reads 0.05, not 0.04999999999999999 (the value is only a starting point).
        other_weight = round((1.0 - self.self_weight) / (len(tasks) - 1), 12) if len(tasks) > 1 else 0.0
        previous = {}
        for task in tasks:
            previous[task] = f"stem_{task}"
            self.add_stem(out, previous[task], [task], owner=task)
        for j in range(1, self.nodes + 1):
            before, after, layer = self.layer(x.type, j)
            current = {task: f"{task}_h{j}" for task in tasks}
            for task in tasks:
                out.add_node(Node(current[task], "hidden", after, in_type=before, op=layer, index=j,
                                  stage=self.stage_of(j), task=task))
                for source in tasks:
                    own = source == task
                    kind = ("read_in" if j == 1 else "internal") if own else "cross"
                    weight = self.self_weight if own else other_weight
                    out.add_edge(Edge(previous[source], current[task], kind, Op("scale", {"init": weight}),
                                      {task: EdgeTaskState()}))
            previous = current
        for task in tasks:
            self.add_head(out, task, previous[task])
        out.max_span = 1
        return out

