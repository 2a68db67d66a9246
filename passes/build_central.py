"""`build-central`: the stem, the hidden nodes h_1..h_N in stages, the candidate edges and the heads."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dagir.ir import IR, Aggregation, Edge, Node, NddrNorm, TensorType, all_tasks
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

    `task_stages` = k gives each task its own copy of the hidden nodes of the last k stages
    (`h7_left`, owned by the task, with its own Θ): a task's copy reads the shared nodes and its own
    earlier copies, through edges gated for that task alone, so the search chooses per task which
    shared features to branch from, and the branches do not share weights (0: every node shared, the
    paper's space; `stages`: a network per task on the shared stem). With `task_copies` = `beside`
    the shared nodes of those stages stay too: a task's copy h_j_t reads its own earlier copies and
    the shared nodes, the shared h_j reads the shared nodes, and each head may read its task's copy
    and the shared node of the last layer, so the space holds the fully shared network, a network
    per task and every mixture, and the search chooses between them per task and per node.

    `aggregation` = `auto` gives the nodes NDDR's mixing in an MLP space (vector inputs) and the
    softmax gate in a conv space (images): the choice the built-in task sets measured (the NDDR
    layer is one linear layer over the concatenated inputs in an MLP space, and a 1x1 conv with
    batch norm over feature maps in a conv space, where it tied the gate at twice the search's time).

    `nddr_start` = `mean` starts each `nddr` node's 1x1 mixing as the mean of its inputs (the sum
    node it replaces, then batch norm and ReLU) rather than torch's random weights; `nddr_norm` is
    the norm after that mixing (`batch`, MTL-NAS's; `layer`; `none`), for `nddr` and `mix` nodes.
    """

    name = "build-central"
    aggregation: Literal["auto", Aggregation] = "sum"
    nddr_start: Literal["random", "mean"] = "random"
    nddr_norm: NddrNorm = "batch"
    max_span: int | None = Field(None, ge=1)
    task_stages: int = Field(0, ge=0)
    task_copies: Literal["replace", "beside"] = "replace"

    @model_validator(mode="after")
    def _task_stages_fit(self) -> "BuildCentral":
        if self.task_stages > self.stages:
            raise ValueError(f"task_stages ({self.task_stages}) cannot exceed the {self.stages} stages")
        return self

    def node_aggregation(self, input_type: TensorType) -> Aggregation:
        """The hidden nodes' aggregation: `aggregation`, `auto` resolved by the input's kind."""
        if self.aggregation != "auto":
            return self.aggregation
        return "gate" if input_type.is_image else "nddr"

    def owned(self, layer: int) -> bool:
        """Whether hidden node `layer` has a copy per task."""
        return self.stage_of(layer) >= self.stages - self.task_stages

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        shared = all_tasks(tasks)  # immutable: every edge serving all tasks can share it
        x = out.input_node()
        out.add_node(Node("stem", "stem", self.layer_type(x.type, 0)))
        out.add_edge(Edge(x.name, "stem", "stem", self.stem_op(x.type), shared))

        beside = self.task_copies == "beside"
        aggregation = self.node_aggregation(x.type)

        def copies(i: int) -> dict[str | None, str]:
            """Node h_i's name per owning task (None: the one shared node)."""
            if not self.owned(i):
                return {None: f"h{i}"}
            own = {task: f"h{i}_{task}" for task in tasks}
            return {None: f"h{i}", **own} if beside else own

        def sources(src: dict[str | None, str], task: str | None) -> list[str]:
            """What a node owned by `task` (None: shared) reads of layer `src`: its own copy where there
            is one, the shared node where there is no copy or the copies sit beside it."""
            own = [src[task]] if task is not None and task in src else []
            return own + ([src[None]] if None in src and (not own or beside) else [])

        # every input of a central node is its own (no cross edges): (1, 0) starts it as their mean
        fusion = (1.0, 0.0) if aggregation == "nddr" and self.nddr_start == "mean" else None
        for i in range(1, self.nodes + 1):
            for task, name in copies(i).items():
                out.add_node(Node(name, "hidden", self.layer_type(x.type, i), index=i, stage=self.stage_of(i),
                                  aggregation=aggregation, fusion=fusion, task=task,
                                  nddr_norm=self.nddr_norm))

        def connect(src: dict[str | None, str], dst: dict[str | None, str], kind: str, gated: bool) -> None:
            for task, name in dst.items():
                serves = shared if task is None else {task: shared[task]}
                for source in sources(src, task):
                    out.add_edge(Edge(source, name, kind, None, serves, gated=gated))

        span = self.nodes if self.max_span is None else self.max_span
        for j in range(2, self.nodes + 1):
            for i in range(max(1, j - span), j):
                connect(copies(i), copies(j), "internal", True)
        connect({None: "stem"}, copies(1), "read_in", False)
        last = copies(self.nodes)
        for task in out.tasks:
            head = task_head(task, self.head_hidden, x.type)
            out.add_node(head)
            for source in sources(last, task.name):
                out.add_edge(Edge(source, head.name, "read_out", None, {task.name: shared[task.name]}))
        return out
