"""`build-single-task`: the single-task baseline, one independent chain per task (DESIGN, baselines).

Also home of `ChainBuild`, the options and layer layout the three baseline build passes share
(`build-single-task`, `build-hard-sharing`, `build-cross-stitch`).
"""
from __future__ import annotations

from math import ceil
from typing import Any

from pydantic import Field, model_validator

from dagir.ir import IR, Edge, EdgeTaskState, Node, TensorType
from dagir.pass_manager import Pass, register_pass

from .build_central import _stem_op, task_head


class ChainBuild(Pass):
    """Options and layout of a chain of `nodes` layers, grouped in `stages` like `build-central`.

    Layer j (1-based) lies in stage (j-1)*stages // nodes, with `channels[stage]` channels; each
    stage halves an image's resolution. The options default from the spec's `network` section, so a
    baseline spec reads like the method's spec it is compared with. Every internal edge spans one
    layer, so the build records `max_span = 1`.
    """

    builds = True
    nodes: int = Field(9, ge=1)
    stages: int = Field(3, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    stem_channels: int = Field(16, ge=1)
    stem_stride: int = Field(1, ge=1)
    head_hidden: int = Field(64, ge=1)

    @classmethod
    def spec_defaults(cls, spec: Any) -> dict[str, Any]:
        central = spec.network.central
        return {"nodes": central.nodes, "stages": central.stages, "channels": central.stage_channels(),
                "stem_channels": spec.network.stem.channels, "stem_stride": spec.network.stem.stride,
                "head_hidden": spec.network.heads.hidden}

    @model_validator(mode="after")
    def _stages_fit(self) -> "ChainBuild":
        if self.stages > self.nodes:
            raise ValueError(f"stages ({self.stages}) cannot exceed nodes ({self.nodes})")
        if len(self.channels) != self.stages or min(self.channels) < 1:
            raise ValueError(f"channels needs {self.stages} positive widths, one per stage")
        return self

    def stage_of(self, layer: int) -> int:
        return (layer - 1) * self.stages // self.nodes

    def layer_type(self, input_type: TensorType, layer: int) -> TensorType:
        """The type of layer `layer` (0 is the stem) for an input of `input_type`."""
        stage = 0 if layer == 0 else self.stage_of(layer)
        width = self.stem_channels if layer == 0 else self.channels[stage]
        if not input_type.is_image:
            return TensorType((width,))
        stride = self.stem_stride * 2 ** stage
        return TensorType((width, ceil(input_type.shape[1] / stride), ceil(input_type.shape[2] / stride)))

    def add_stem(self, ir: IR, name: str, tasks: list[str], owner: str | None) -> None:
        x = ir.input_node()
        ir.add_node(Node(name, "stem", self.layer_type(x.type, 0), task=owner))
        ir.add_edge(Edge(x.name, name, "stem", _stem_op(x.type, self.stem_channels, self.stem_stride),
                         {t: EdgeTaskState() for t in tasks}))

    def add_chain(self, ir: IR, prefix: str, stem: str, tasks: list[str], owner: str | None) -> list[str]:
        """Hidden nodes `<prefix>h1..h<nodes>` after `stem`, linked by ungated edges; their names."""
        x = ir.input_node()
        names = [f"{prefix}h{j}" for j in range(1, self.nodes + 1)]
        for j, name in enumerate(names, start=1):
            ir.add_node(Node(name, "hidden", self.layer_type(x.type, j), index=j, stage=self.stage_of(j),
                             task=owner))
        states = {t: EdgeTaskState() for t in tasks}
        ir.add_edge(Edge(stem, names[0], "read_in", None, states))
        for before, after in zip(names, names[1:]):
            ir.add_edge(Edge(before, after, "internal", None, states))
        return names

    def add_head(self, ir: IR, task: str, last: str) -> None:
        head = task_head(next(t for t in ir.tasks if t.name == task), self.head_hidden, ir.input_node().type)
        ir.add_node(head)
        ir.add_edge(Edge(last, head.name, "read_out", None, {task: EdgeTaskState()}))


@register_pass
class BuildSingleTask(ChainBuild):
    """One network per task, sharing nothing: a stem `stem_<t>`, a chain `<t>_h1..<t>_hN` and a head.

    Every node is owned by its task (`Node.task`) and no edge is gated, so the compact network is
    the supernet, and `legalize-types` chooses the layers (strided convs between stages). This is
    the baseline Δ_MTL measures against (DESIGN §8).

    >>> ir = BuildSingleTask(nodes=2, stages=1, channels=[4]).run(seed_ir(spec))  # doctest: +SKIP
    """

    name = "build-single-task"

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        for task in out.task_names:
            stem = f"stem_{task}"
            self.add_stem(out, stem, [task], owner=task)
            chain = self.add_chain(out, f"{task}_", stem, [task], owner=task)
            self.add_head(out, task, chain[-1])
        out.max_span = 1
        return out
