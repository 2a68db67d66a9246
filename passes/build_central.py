"""`build-central`: the stem, the hidden nodes h_1..h_N in stages, the candidate edges and the heads."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from dagir.ir import IR, Edge, Node, all_tasks
from dagir.pass_manager import register_pass

from .staged_build import StagedBuild, task_head


@register_pass
class BuildCentral(StagedBuild):
    """Build the DAG-based central network of the method.

    Candidate internal edges are h_i -> h_j for i < j. `max_span` builds only the edges with
    j - i <= max_span, so a restricted search space costs time linear in N to build rather than
    quadratic; `flow-restrict` then records and enforces the restriction. Without read-in and
    read-out (added by `insert-read-io`) the stem feeds h_1 only and h_N feeds every head. Hidden
    node i (1-based) lies in stage (i-1)*stages // nodes; each stage halves an image's resolution.
    Edge ops are chosen later, by `legalize-types`.
    """

    name = "build-central"
    aggregation: Literal["sum", "nddr", "gate"] = "sum"
    max_span: int | None = Field(None, ge=1)

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        shared = all_tasks(tasks)  # immutable: every edge serving all tasks can share it
        x = out.input_node()
        out.add_node(Node("stem", "stem", self.layer_type(x.type, 0)))
        out.add_edge(Edge(x.name, "stem", "stem", self.stem_op(x.type), shared))
        names = [f"h{i}" for i in range(1, self.nodes + 1)]
        for i, name in enumerate(names, start=1):
            out.add_node(Node(name, "hidden", self.layer_type(x.type, i), index=i, stage=self.stage_of(i),
                              aggregation=self.aggregation))
        span = self.nodes if self.max_span is None else self.max_span
        for j in range(2, self.nodes + 1):
            for i in range(max(1, j - span), j):
                out.add_edge(Edge(names[i - 1], names[j - 1], "internal", None, shared, gated=True))
        out.add_edge(Edge("stem", names[0], "read_in", None, shared))
        for task in out.tasks:
            head = task_head(task, self.head_hidden, x.type)
            out.add_node(head)
            out.add_edge(Edge(names[-1], head.name, "read_out", None, {task.name: shared[task.name]}))
        return out
