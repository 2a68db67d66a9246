"""`build-single-task`: the single-task baseline, one independent chain per task (DESIGN, baselines).

Also home of `ChainBuild`, the options and layer layout the three baseline build passes share
(`build-single-task`, `build-hard-sharing`, `build-cross-stitch`).
"""
from __future__ import annotations

from dagir.ir import IR, Edge, EdgeTaskState, Node, Op, TensorType, all_tasks
from dagir.pass_manager import register_pass

from .staged_build import StagedBuild, task_head


class ChainBuild(StagedBuild):
    """A chain of `nodes` layers laid out like `build-central` (see `StagedBuild`); every internal
    edge spans one layer, so the build records `max_span = 1`."""

    def add_stem(self, ir: IR, name: str, tasks: list[str], owner: str | None) -> None:
        x = ir.input_node()
        ir.add_node(Node(name, "stem", self.layer_type(x.type, 0), task=owner))
        ir.add_edge(Edge(x.name, name, "stem", self.stem_op(x.type), all_tasks(tasks)))

    def add_chain(self, ir: IR, prefix: str, stem: str, tasks: list[str], owner: str | None) -> list[str]:
        """Hidden nodes `<prefix>h1..h<nodes>` after `stem`, linked by ungated edges; their names."""
        x = ir.input_node()
        names = [f"{prefix}h{j}" for j in range(1, self.nodes + 1)]
        for j, name in enumerate(names, start=1):
            ir.add_node(Node(name, "hidden", self.layer_type(x.type, j), index=j, stage=self.stage_of(j),
                             task=owner))
        states = all_tasks(tasks)
        ir.add_edge(Edge(stem, names[0], "read_in", None, states))
        for before, after in zip(names, names[1:]):
            ir.add_edge(Edge(before, after, "internal", None, states))
        return names

    def layer(self, input_type: TensorType, j: int) -> tuple[TensorType, TensorType, Op]:
        """Layer j as a node op: the type it reads (layer j-1's), the type it makes, and the op
        (conv-BN-ReLU, strided where a stage begins; linear + ReLU on vectors)."""
        before, after = self.layer_type(input_type, j - 1), self.layer_type(input_type, j)
        if not before.is_image:
            return before, after, Op("linear_relu", {"d_in": before.shape[0], "d_out": after.shape[0]})
        stride = 1 if j == 1 else 2 ** (self.stage_of(j) - self.stage_of(j - 1))  # halve where a stage begins
        return before, after, Op("conv_bn_relu", {"c_in": before.channels, "c_out": after.channels, "stride": stride})

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
