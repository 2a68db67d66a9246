"""`build-routing`: MTNAS's search space ("Boosting Share Routing for Multi-task Learning") in the IR."""
from __future__ import annotations

from itertools import combinations
from math import ceil
from typing import Literal

from pydantic import Field, model_validator

from dagir.ir import IR, SHARED, Decision, Edge, Node, Op, TensorType, all_tasks
from dagir.pass_manager import register_pass

from .staged_build import StagedBuild, task_head


@register_pass
class BuildRouting(StagedBuild):
    """Layers of expert sub-networks with searched sharing routes, and a tower per task.

    The stem feeds `layers` layers of `experts` experts each: node `e<l>_<k>`, which applies its
    expert block (linear + ReLU on vectors, conv-BN-ReLU on images, `width` wide, at the stem's
    resolution) to the `gate` aggregation of the route it reads. Candidate edges run from every
    expert of layer l - 1 to every expert of layer l (layer 1 reads the stem alone), and from the
    last layer to each task's tower input `tower_<t>` (owned by t, a `gate` aggregation), which its
    head reads. Each block with more than one candidate input has a categorical decision over its
    route (`route_<node>`): every non-empty set of at most `route_size` (None: all) of the previous
    layer's experts; per task for the towers, and for the experts shared by every task, unless
    `expert_scope=task`. The gate's `query` is the block's input features (`inputs`, the pooled
    route inputs), the network input (`input`), or the task (`task`): a tower's gate is then
    softmax(W e_t) for a learned embedding e_t of its task, which, as the tower serves one task, is
    a learned logit per input (`GateAggregation` with `query_width=0`); a shared expert's state
    cannot depend on the task, so its gate keeps the `inputs` query.

    `expert_stages`: `flat` keeps every layer at the stem's resolution and the first stage's width;
    `staged` puts layer l at stage min(l, stages)'s width, and on images at half the previous
    layer's resolution (its expert block a strided conv-BN-ReLU), as the other spaces of the spec
    down-sample. `flat` is the default, which the benches so far ran; image experts that stay at
    the stem's resolution are far smaller than the spec's other networks (issue 11's note).

    `search=false` builds every route open with no decision: with one layer and `query=input`,
    that is MMoE (Ma et al., 2018): shared experts, a softmax gate per task on the input over all
    of them, a tower per task.
    """

    name = "build-routing"
    layers: int = Field(2, ge=1)
    experts: int = Field(4, ge=1)
    width: int | None = Field(None, ge=1)
    route_size: int | None = Field(None, ge=1)
    expert_scope: Literal["shared", "task"] = "shared"
    expert_stages: Literal["flat", "staged"] = "flat"
    query: Literal["inputs", "input", "task"] = "inputs"
    search: bool = True
    init: float = 0.0

    @model_validator(mode="after")
    def _route_fits(self) -> "BuildRouting":
        if self.route_size is not None and self.route_size > self.experts:
            raise ValueError(f"route_size ({self.route_size}) cannot exceed the {self.experts} experts a route "
                             "chooses from")
        return self

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        x = out.input_node()
        stem_type = self.layer_type(x.type, 0)
        out.add_node(Node("stem", "stem", stem_type))
        out.add_edge(Edge(x.name, "stem", "stem", self.stem_op(x.type), all_tasks(tasks)))
        previous = ["stem"]
        for layer in range(1, self.layers + 1):
            current = [f"e{layer}_{k}" for k in range(1, self.experts + 1)]
            reads = stem_type if layer == 1 else self.expert_type(stem_type, layer - 1)
            expert_type = self.expert_type(stem_type, layer)
            stage = self.layer_stage(layer)
            for name in current:
                out.add_node(Node(name, "hidden", expert_type, in_type=reads, op=_expert_op(reads, expert_type),
                                  index=layer, stage=stage, aggregation="gate" if len(previous) > 1 else "sum",
                                  query="inputs" if self.query == "task" else self.query))
                for source in previous:
                    out.add_edge(Edge(source, name, "read_in" if layer == 1 else "internal", Op("identity"),
                                      all_tasks(tasks)))
                if self.search and len(previous) > 1:
                    self._route(out, name, previous, tasks, shared=self.expert_scope == "shared")
            previous = current
        for task in out.tasks:  # a tower lies in the last layer's stage, at its resolution
            tower = f"tower_{task.name}"
            out.add_node(Node(tower, "hidden", expert_type, index=self.layers + 1, stage=stage, task=task.name,
                              aggregation="gate" if len(previous) > 1 else "sum", query=self.query))
            for source in previous:
                out.add_edge(Edge(source, tower, "internal", Op("identity"), all_tasks([task.name])))
            if self.search and len(previous) > 1:
                self._route(out, tower, previous, [task.name], shared=False)
            head = task_head(task, self.head_hidden, x.type)
            out.add_node(head)
            out.add_edge(Edge(tower, head.name, "read_out", None, all_tasks([task.name])))
        out.max_span = None
        return out

    def staged(self) -> bool:
        return self.expert_stages == "staged"

    def layer_stage(self, layer: int) -> int:
        """The stage layer `layer`'s experts lie in: min(layer, stages) - 1 when staged, else 0.
        Only drawings and dumps read a node's stage; the types decide the ops."""
        return min(layer, self.stages) - 1 if self.staged() else 0

    def expert_type(self, stem_type: TensorType, layer: int) -> TensorType:
        """What layer `layer`'s experts make: `width` (default: the first stage's) at the stem's
        resolution; or, staged, stage min(layer, stages) - 1's width at half the previous resolution."""
        if not self.staged():
            return TensorType((self.width or self.channels[0], *stem_type.shape[1:]))
        stage = self.layer_stage(layer)
        width = self.width or self.channels[stage]
        if not stem_type.is_image:
            return TensorType((width,))
        return TensorType((width, *(ceil(side / 2 ** stage) for side in stem_type.shape[1:])))

    def routes(self, sources: list[str]) -> list[tuple[str, ...]]:
        """Every non-empty set of at most `route_size` of `sources`, smaller sets first."""
        largest = len(sources) if self.route_size is None else min(self.route_size, len(sources))
        return [combo for size in range(1, largest + 1) for combo in combinations(sources, size)]

    def _route(self, ir: IR, block: str, sources: list[str], tasks: list[str], *, shared: bool) -> None:
        options = tuple(tuple((source, block) for source in route) for route in self.routes(sources))
        logits = {owner: (self.init,) * len(options) for owner in ([SHARED] if shared else tasks)}
        ir.add_decision(Decision(f"route_{block}", "categorical", options, tuple(tasks), logits,
                                 scope="shared" if shared else "task"))


def _expert_op(reads: TensorType, makes: TensorType) -> Op:
    if reads.is_image:
        stride = 2 if makes.shape[1] < reads.shape[1] else 1  # a staged layer halves the resolution
        return Op("conv_bn_relu", {"c_in": reads.channels, "c_out": makes.channels, "stride": stride})
    return Op("linear_relu", {"d_in": reads.shape[0], "d_out": makes.shape[0]})

