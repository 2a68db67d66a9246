"""`build-cross-task`: MTL-NAS's search space (Gao et al., CVPR 2020) in the IR."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from dagir.ir import IR, Edge, EdgeTaskState, Node, Op
from dagir.pass_manager import register_pass

from .build_single_task import ChainBuild


@register_pass
class BuildCrossTask(ChainBuild):
    """One fixed chain per task, and searched cross-task edges between the chains, fused NDDR-style.

    Task t's chain is `stem_<t>`, `<t>_h1..<t>_hN` (every node owned by t) and its head, laid out
    like `build-central` (`StagedBuild`). Node `<t>_h<i+1>` computes layer i+1 (its `op`) on the
    fusion of layer i's output with the outputs of other tasks' layers: its `nddr` aggregation
    concatenates its own input (the ungated edge from `<t>_h<i>`) with every gated cross edge
    `<s>_h<j> -> <t>_h<i+1>`, s != t, then 1x1 conv, BN, ReLU. A cross edge exists iff
    i - window < j <= i and layer j lies in the same stage (resolution block) as layer i, as in
    the public code (window 3): every ordered pair of tasks gets them, in both directions. The
    fusion starts as (`self_weight`, `other_weight`) (MTL-NAS's (w_t, w_s); (1, 0) starts as the
    single-task networks). `attach-gates` then gives each cross edge a bernoulli decision.

    `aggregation=sum` fuses by summing instead (the cross edges are identities within a stage, so
    they add no parameters): the space of the single-task networks plus searched cross-task
    shortcuts, which costs what the single-task networks cost whichever edges the search keeps.
    """

    name = "build-cross-task"
    window: int = Field(3, ge=1)
    self_weight: float = Field(0.9, ge=0)
    other_weight: float = Field(0.1, ge=0)
    aggregation: Literal["nddr", "sum"] = "nddr"

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        x = out.input_node()
        for task in tasks:
            self.add_stem(out, f"stem_{task}", [task], owner=task)
            previous = f"stem_{task}"
            for j in range(1, self.nodes + 1):
                before, after, layer = self.layer(x.type, j)
                nddr = j > 1 and len(tasks) > 1 and self.aggregation == "nddr"
                out.add_node(Node(f"{task}_h{j}", "hidden", after, in_type=before, op=layer, index=j,
                                  stage=self.stage_of(j), task=task, aggregation="nddr" if nddr else "sum",
                                  fusion=(self.self_weight, self.other_weight) if nddr else None))
                out.add_edge(Edge(previous, f"{task}_h{j}", "read_in" if j == 1 else "internal", Op("identity"),
                                  {task: EdgeTaskState()}))
                previous = f"{task}_h{j}"
            self.add_head(out, task, previous)
        for task in tasks:
            for i in range(1, self.nodes):  # the fusion after layer i feeds layer i + 1
                for j in self.cross_sources(i):
                    for source in tasks:
                        if source != task:
                            out.add_edge(Edge(f"{source}_h{j}", f"{task}_h{i + 1}", "cross", Op("identity"),
                                              {task: EdgeTaskState()}, gated=True))
        out.max_span = 1
        return out

    def cross_sources(self, i: int) -> list[int]:
        """The layers j whose outputs may be fused after layer i: j <= i, i - j < window, same stage."""
        return [j for j in range(max(1, i - self.window + 1), i + 1) if self.stage_of(j) == self.stage_of(i)]
