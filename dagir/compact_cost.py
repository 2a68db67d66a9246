"""The compact network's states, and what it costs (DESIGN §4 "Sharing", §8 "Parameters and FLOPs").

After the post-search passes every kept edge has gate 1 and a dropped edge is absent, so the compact
network is fixed by the IR alone: `share-states` groups, at every node, the tasks computing the same
state (`ir.meta["share_states"]["states"]`), and `compact_states` turns those groups into the list
of distinct states, each with the kept in-edges it sums and the source state each edge reads. The
torch lowering (`dagir.backends.torch_compact`) builds its graph from this list, so the costs below
count exactly what the generated module computes.

    ir = PassManager(parse_pipeline(["discretize", "flow-reduce", "share-states"], needs_build=False)).run(ir)
    macs = compact_macs(ir)    # {"total": ..., "per_task": {...}, "separate_total": ...}
    assert macs["total"] <= macs["separate_total"]   # what sharing saves

Pure Python on purpose (no torch): reports and tests use it on the IR.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .ir import AGGREGATIONS, IR, MIX_HALVES, Edge, Node, TensorType
from .ops import aggregation_parameter_count, mac_count, norm_parameter_count, parameter_count
from .task_states import state_owner

StateKey = tuple[str, int]  # (node name, index of the state among the node's states)


@dataclass(frozen=True)
class CompactState:
    """One distinct state: node `node`'s `index`-th state, held by `tasks`.

    `inputs` pairs every kept in-edge (in `IR.in_edges()` order) with the state it reads.
    """

    node: Node
    index: int
    tasks: tuple[str, ...]
    inputs: tuple[tuple[Edge, StateKey], ...]

    @property
    def key(self) -> StateKey:
        return (self.node.name, self.index)


def compact_states(ir: IR) -> list[CompactState]:
    """The distinct states of the compact network in topological order (the input's first).

    Needs `ir.meta["share_states"]` (run `share-states`); raises `UserError` when it is missing or
    does not match the IR (two tasks grouped together that keep different edges into a node).
    """
    groups_by_node = ir.meta.get("share_states", {}).get("states")
    if groups_by_node is None:
        raise UserError("the compact network needs shared states: run the post-search pipeline "
                        "(discretize, flow-reduce, share-states) first")
    state_index: dict[tuple[str, str], int] = {}  # (node, task) -> index of the task's state there
    incoming = ir.in_edges()
    states: list[CompactState] = []
    for name in ir.topological_order():
        if name not in groups_by_node:
            continue
        node = ir.nodes[name]
        for index, group in enumerate(groups_by_node[name]):
            keys = {task: _inputs(ir, incoming[name], task, state_index) for task in group}
            inputs = keys[group[0]]
            if any(other != inputs for other in keys.values()):
                raise UserError(f"stale share-states result at node {name!r}: tasks {', '.join(group)} "
                                "keep different edges there; run share-states again")
            if node.kind != "input" and not inputs:
                raise UserError(f"node {name!r} holds a state for {', '.join(group)} but no kept edge reaches it")
            states.append(CompactState(node, index, tuple(group), inputs))
            state_index.update({(name, task): index for task in group})
    for task in ir.task_names:
        if (ir.head_of(task).name, task) not in state_index:
            raise UserError(f"task {task!r} has no state at its head: run share-states on this IR")
    return states


def _inputs(ir: IR, in_edges: list[Edge], task: str,
            state_index: dict[tuple[str, str], int]) -> tuple[tuple[Edge, StateKey], ...]:
    terms = []
    for edge in in_edges:
        if edge.is_active(task):
            reader = state_owner(ir, edge.src, task)  # a task-owned source serves its owner's state
            if (edge.src, reader) in state_index:
                terms.append((edge, (edge.src, state_index[(edge.src, reader)])))
    return tuple(terms)


def aggregation_edges(ir: IR, states: list[CompactState]) -> dict[str, list[Edge]]:
    """Per node, the in-edges any of its states reads, in `IR.in_edges()` order: the slots of the
    node's one aggregation module, which every state calls (with nothing in the slots it lacks)."""
    used = {(state.node.name, edge.name) for state in states for edge, _ in state.inputs}
    return {node: [edge for edge in in_edges if (node, edge.name) in used]
            for node, in_edges in ir.in_edges().items()
            if any((node, edge.name) in used for edge in in_edges)}


# -- costs ----------------------------------------------------------------------------------------
def aggregation_macs(aggregation: str, node_type: TensorType, inputs: int, query_width: int | None = None) -> int:
    """Multiply-accumulates per sample of a node's aggregation over `inputs` present inputs.

    `sum`: none (additions are not MACs). `nddr`: the 1x1 convolution (linear layer for vectors) from
    the concatenated inputs to the node's width, `inputs·C·C` per position; batch norm and ReLU are
    not counted (batch norm folds into the convolution at inference). `gate`: the routing layer on
    its query (the pooled concatenation, `inputs·C`, or `query_width` features) to `inputs` logits,
    plus the weighted sum, `inputs·C·H·W`. `mix`: both, and their weighted sum, `2·C·H·W`. Inputs the
    state lacks (zeros in the module's slot) are not counted: they contribute nothing, and a network
    built for that state alone would not have them.
    """
    if aggregation == "sum" or inputs == 0:
        return 0
    width = node_type.shape[0]
    positions = node_type.shape[1] * node_type.shape[2] if node_type.is_image else 1
    if aggregation == "nddr":
        return inputs * width * width * positions
    if aggregation == "mix":
        return sum(aggregation_macs(half, node_type, inputs, query_width) for half in MIX_HALVES) + 2 * width * positions
    if aggregation == "gate":
        return (inputs * width if query_width is None else query_width) * inputs + inputs * width * positions
    raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATIONS)})")


def _state_macs(ir: IR, state: CompactState) -> int:
    """The node's own work for one state: its aggregation and its op (a head's MLP)."""
    node = state.node
    return (aggregation_macs(node.aggregation, node.input_type, len(state.inputs), ir.query_width(node))
            + mac_count(node.op, node.input_type))


def _edge_calls(states: list[CompactState]) -> dict[tuple[str, StateKey], Edge]:
    """Every (edge, source state) pair the compact network computes: one edge op call each."""
    return {(edge.name, source): edge for state in states for edge, source in state.inputs}


def edge_macs(ir: IR, edge: Edge) -> int:
    """The multiply-accumulates per sample of one call of `edge`'s op."""
    return mac_count(edge.op, ir.nodes[edge.src].type)


def compact_macs(ir: IR) -> dict[str, Any]:
    """Multiply-accumulates per sample: of the compact network (`total`, each shared state and each
    edge op on each distinct source state counted once), of each task's sub-network alone
    (`per_task`), and of running every task's sub-network separately (`separate_total`, their sum).

    `total <= separate_total`, with equality when no state is shared (one task, say); the ratio is
    what sharing saves. Aggregations are costed by `aggregation_macs`.
    """
    states = compact_states(ir)
    total = sum(_state_macs(ir, s) for s in states) + sum(edge_macs(ir, e) for e in _edge_calls(states).values())
    per_task = {task: 0 for task in ir.task_names}
    for state in states:
        cost = _state_macs(ir, state) + sum(edge_macs(ir, edge) for edge, _ in state.inputs)
        for task in state.tasks:
            per_task[task] += cost
    return {"total": total, "per_task": per_task, "separate_total": sum(per_task.values())}


def cost_floor(ir: IR) -> dict[str, int]:
    """A lower bound on what any compact network of the space `ir` costs (MACs per sample, parameters):
    every one keeps the stem and, for each task, its head and at least one of the head's read-outs (the
    cheapest is counted). Known before training, so a budget below it is refused before any starts."""
    incoming = ir.in_edges()
    stems = [edge for edge in ir.edges.values() if edge.src == ir.input_node().name]
    macs = sum(edge_macs(ir, edge) for edge in stems)
    parameters = sum(parameter_count(edge.op) for edge in stems)
    for task in ir.task_names:
        head = ir.head_of(task)
        reads = incoming.get(head.name, [])
        macs += mac_count(head.op, head.input_type) + min((edge_macs(ir, edge) for edge in reads), default=0)
        parameters += parameter_count(head.op) + min((parameter_count(edge.op) for edge in reads), default=0)
    return {"macs": macs, "parameters": parameters}


def aggregation_norm_parameters(aggregation: str, node_type: TensorType, nddr_norm: str = "batch") -> int:
    """The batch-norm affine parameters within a node's aggregation (`nddr` has one batch norm, unless
    its `nddr_norm` is a layer norm or none): what each further state of the node adds in the compact
    network, whose states keep batch norms of their own (`PerStateNorm`)."""
    return 2 * node_type.shape[0] if aggregation in ("nddr", "mix") and nddr_norm == "batch" else 0


def untied_states(ir: IR) -> bool:
    """Whether `share-states` untied the states (`search.reduction.untie`): an op called on several
    states has a copy of its weights per state, not only batch norms of its own."""
    return bool(ir.meta.get("share_states", {}).get("untie", False))


def compact_parameters(ir: IR) -> dict[str, Any]:
    """Parameters of the compact network and of each task's sub-network alone:
    `{"total": int, "per_task": {task: int}}`.

    The compact network has each edge op and aggregation once, plus, for a module called on several
    states (an edge op reading several states of its source, a node's aggregation or op computing
    several states), one more set of batch norms per extra state (`torch_compact.PerStateNorm`), or
    with untied states (`untied_states`) one more copy of the whole op
    (`torch_compact.PerStateCopy`).
    A task's sub-network alone computes one state per node, so it has one set.
    """
    states = compact_states(ir)
    slots = aggregation_edges(ir, states)
    edges = {edge.name: edge for state in states for edge, _ in state.inputs}
    nodes = {state.node.name: state.node for state in states}
    reads = Counter(name for name, _ in _edge_calls(states))
    calls = Counter(state.node.name for state in states)
    untie = untied_states(ir)

    def node_parameters(name: str, node: Node) -> int:  # its op and its aggregation, once
        return parameter_count(node.op) + aggregation_parameter_count(
            node.aggregation, node.input_type, len(slots.get(name, [])), ir.query_width(node), node.nddr_norm)

    def extra_edge_state(edge: Edge) -> int:  # what each further state of an edge op costs
        return parameter_count(edge.op) if untie else norm_parameter_count(edge.op)

    def extra_node_state(name: str, node: Node) -> int:  # of a node's op and aggregation
        return node_parameters(name, node) if untie else (
            norm_parameter_count(node.op) + aggregation_norm_parameters(node.aggregation, node.input_type,
                                                                        node.nddr_norm))

    total = (sum(parameter_count(e.op) for e in edges.values())
             + sum(node_parameters(name, n) for name, n in nodes.items()))
    extra = (sum((reads[name] - 1) * extra_edge_state(e) for name, e in edges.items())
             + sum((calls[name] - 1) * extra_node_state(name, n) for name, n in nodes.items()))
    per_task = {}
    for task in ir.task_names:
        own = [s for s in states if task in s.tasks]
        per_task[task] = sum(parameter_count(s.node.op)
                             + aggregation_parameter_count(s.node.aggregation, s.node.input_type, len(s.inputs),
                                                           ir.query_width(s.node), s.node.nddr_norm)
                             + sum(parameter_count(edge.op) for edge, _ in s.inputs) for s in own)
    return {"total": total + extra, "per_task": per_task}
