"""`build-central`: the stem, the hidden nodes h_1..h_N in stages, the candidate edges and the heads."""
from __future__ import annotations

from math import ceil
from typing import Any, Literal

from pydantic import Field, model_validator

from dagir.errors import UserError
from dagir.ir import IR, Edge, Node, Op, Task, TensorType, all_tasks
from dagir.pass_manager import Pass, register_pass
from dagir.tasks import TASK_KINDS


@register_pass
class BuildCentral(Pass):
    """Build the DAG-based central network of the method.

    Candidate internal edges are h_i -> h_j for i < j. `max_span` builds only the edges with
    j - i <= max_span, so a restricted search space costs time linear in N to build rather than
    quadratic; `flow-restrict` then records and enforces the restriction. Without read-in and
    read-out (added by `insert-read-io`) the stem feeds h_1 only and h_N feeds every head. Hidden
    node i (1-based) lies in stage (i-1)*stages // nodes; each stage halves an image's resolution.
    Edge ops are chosen later, by `legalize-types`.
    """

    name = "build-central"
    builds = True
    nodes: int = Field(9, ge=1)
    stages: int = Field(3, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    stem_channels: int = Field(16, ge=1)
    stem_stride: int = Field(1, ge=1)
    head_hidden: int = Field(64, ge=1)
    aggregation: Literal["sum", "nddr", "gate"] = "sum"
    max_span: int | None = Field(None, ge=1)

    @classmethod
    def spec_defaults(cls, spec: Any) -> dict[str, Any]:
        central = spec.network.central
        return {"nodes": central.nodes, "stages": central.stages, "channels": central.stage_channels(),
                "stem_channels": spec.network.stem.channels,
                "stem_stride": spec.network.stem.stride, "head_hidden": spec.network.heads.hidden,
                "aggregation": central.aggregation,
                "max_span": spec.network.flow_restriction.max_span}

    @model_validator(mode="after")
    def _stages_fit(self) -> "BuildCentral":
        if self.stages > self.nodes:
            raise ValueError(f"stages ({self.stages}) cannot exceed nodes ({self.nodes})")
        if len(self.channels) != self.stages or min(self.channels) < 1:
            raise ValueError(f"channels needs {self.stages} positive widths, one per stage")
        return self

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        shared = all_tasks(tasks)  # immutable: every edge serving all tasks can share it
        x = out.input_node()
        image = x.type.is_image

        def typed(width: int, stage: int) -> TensorType:
            if not image:
                return TensorType((width,))
            stride = self.stem_stride * 2 ** stage
            return TensorType((width, ceil(x.type.shape[1] / stride), ceil(x.type.shape[2] / stride)))

        out.add_node(Node("stem", "stem", typed(self.stem_channels, 0)))
        out.add_edge(Edge(x.name, "stem", "stem", _stem_op(x.type, self.stem_channels, self.stem_stride), shared))
        names = [f"h{i}" for i in range(1, self.nodes + 1)]
        for i, name in enumerate(names, start=1):
            stage = (i - 1) * self.stages // self.nodes
            out.add_node(Node(name, "hidden", typed(self.channels[stage], stage), index=i, stage=stage,
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


def is_dense(task: Task) -> bool:
    """Whether the task predicts per pixel (segmentation, depth, normals)."""
    kind = TASK_KINDS.get(task.kind)
    return kind is not None and kind.dense


def task_head(task: Task, hidden: int, input_type: TensorType) -> Node:
    """The head node `head_<task>`, with its `hidden` input width.

    A vector task's head takes `[hidden]` and applies `head_mlp`. A dense task's head takes
    `[hidden, H, W]` at the input's resolution, where its labels live, and applies `dense_head`, so
    its output is `[out_dim, H, W]`; `legalize-types` up-samples every read-out to that resolution.
    """
    if not is_dense(task):
        return Node(f"head_{task.name}", "head", TensorType((task.out_dim,)), in_type=TensorType((hidden,)),
                    op=Op("head_mlp", {"d_in": hidden, "d_out": task.out_dim}), task=task.name)
    if not input_type.is_image:
        raise UserError(f"task {task.name!r} is a {task.kind} task: it needs an image input, not {input_type}")
    resolution = input_type.shape[1:]
    return Node(f"head_{task.name}", "head", TensorType((task.out_dim, *resolution)),
                in_type=TensorType((hidden, *resolution)),
                op=Op("dense_head", {"c_in": hidden, "c_out": task.out_dim}), task=task.name)


def _stem_op(input_type: TensorType, width: int, stride: int) -> Op:
    if input_type.is_image:
        return Op("conv_bn_relu", {"c_in": input_type.channels, "c_out": width, "stride": stride})
    return Op("linear_relu", {"d_in": input_type.shape[0], "d_out": width})
