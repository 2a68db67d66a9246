"""Flow through a task's gated sub-network (DESIGN §4, "Flow"), and its path of largest gate product.

Flow runs over a task's **states** (`dagir.task_states`): a node holds the state of the task that
reads it, or of its owner when a task owns it, so a cross edge that reads task B's chain carries
flow for task A through B's chain, computed with B's edges and gates. Every edge feeding a state of
owner o gets a weight `w_e`: its gate for o (the probability its decision gives it, `σ(logit)` for
a bernoulli at temperature 1 after search), or 1 for an edge no decision governs. The forward flow
is `F(input) = 1`, `F(v) = Σ_{u→v} F(u) w_uv`; the backward flow is `R(head) = 1`,
`R(u) = Σ_{u→v} w_uv R(v)`. The total flow `Φ = F(head) = R(input)` is the sum over every
input-to-head path of the product of its weights, and the flow through an edge is
`φ_uv = F(u) w_uv R(v)`: the part of Φ carried by the paths through that edge. Flow is conserved at
every state, so the edge flows across any input/head cut sum to Φ. Without task-owned nodes every
node holds one state per task and this is flow on the task's edges.

Each function costs O(V + E) per task and owner its head reaches: one topological order, one
sweep. Sums are correctly rounded (`math.fsum`), so a state's flow depends on the set of its terms,
not on their order: a sub-graph that differs only by edges contributing exact zeros has the same
flows bit for bit, and removing an edge never raises a flow, even in floating point. The reduction
pass states its guarantee exactly on that.

Pure Python on purpose (no torch): passes and property tests use it on the IR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .gates import edge_gate
from .ir import IR, EdgeKey
from .task_states import own_edges, state_owner

Weights = Mapping[EdgeKey, float]
State = tuple[str, str]  # (node, owner); the input's owner is ""


def gate_weights(ir: IR, task: str) -> dict[EdgeKey, float]:
    """Weights of the edges feeding `task`'s own states (`dagir.task_states.own_edges`): each
    edge's gate for the task (the probability its decision gives it; 1 with no decision).

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}]))
    >>> round(gate_weights(ir, 'a')[('input', 'stem')], 3), round(gate_weights(ir, 'a')[('h1', 'h2')], 3)
    (1.0, 0.731)
    """
    decided = ir.decision_of_edge()
    weights = {}
    for key in own_edges(ir, task):
        gate = edge_gate(decided.get(key), key, task)
        weights[key] = 1.0 if gate is None else gate
    return weights


@dataclass(frozen=True)
class TaskFlow:
    """Flows of one task. `forward`, `backward` (by node) and `edge` (by edge) are those of the
    states the task reads (its own, or an owner's); `states` and `instances` hold every state
    (node, owner) and every (edge, owner of the state it feeds) the head's flow passes through.
    `total` is Φ."""

    task: str
    forward: dict[str, float]
    backward: dict[str, float]
    edge: dict[EdgeKey, float]
    total: float
    states: dict[State, tuple[float, float]]
    instances: dict[tuple[EdgeKey, str], float]


def node_key(ir: IR, name: str) -> tuple[int, str]:
    """A key for a node that depends on the node alone (not on the rest of the graph): ties are
    broken by it, so a choice made on a graph is made again on any sub-graph that contains it."""
    index = ir.nodes[name].index
    return (index if index is not None else 0, name)


@dataclass
class _Instance:
    key: EdgeKey
    owner: str
    source: State
    target: State
    weight: float


def _state(ir: IR, node: str, owner: str) -> State:
    """(node, owner); the input holds one state, whoever reads it."""
    return (node, "") if ir.nodes[node].kind == "input" else (node, owner)


def _state_graph(ir: IR, task: str, weights: Weights) -> tuple[list[State], list[_Instance]]:
    """The states `task`'s flow runs over, in topological order, and the edge instances between
    them: the task's own states on `weights`, and, closed over their sources, the states of other
    owners they read, with those owners' gates on their active edges."""
    by_owner: dict[str, Weights] = {task: weights}
    incoming: dict[str, list[EdgeKey]] = {name: [] for name in ir.nodes}
    for src, dst in ir.edges:
        incoming[dst].append((src, dst))
    seeds = {(dst, task) for _, dst in weights} | {(ir.head_of(task).name, task)}
    seen, stack, instances = set(seeds), list(seeds), []
    while stack:
        node, owner = stack.pop()
        if owner not in by_owner:
            by_owner[owner] = gate_weights(ir, owner)
        for key in incoming[node]:
            weight = by_owner[owner].get(key)
            if weight is None:
                continue
            source = _state(ir, key[0], state_owner(ir, key[0], owner))
            instances.append(_Instance(key, owner, source, (node, owner), weight))
            if source not in seen and source[1]:
                seen.add(source)
                stack.append(source)
    seen.add(_state(ir, ir.input_node().name, task))
    return _topological_order(seen, instances), instances


def task_flow(ir: IR, task: str, weights: Weights | None = None) -> TaskFlow:
    """Forward, backward and edge flows of `task`, its own states weighted by `weights` (default:
    its gates; any subset of `gate_weights`' edges, e.g. only the kept ones: the others carry no
    flow). O(V + E).

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}],
    ...                        network={'central': {'nodes': 2, 'stages': 1, 'channels': 8},
    ...                                 'read_in': False, 'read_out': False}))
    >>> flow = task_flow(ir, 'a')     # input -> stem -> h1 -> h2 -> head, one gated edge h1 -> h2
    >>> round(flow.total, 4), round(flow.edge[('h1', 'h2')], 4)
    (0.7311, 0.7311)
    """
    weights = gate_weights(ir, task) if weights is None else weights
    order, instances = _state_graph(ir, task, weights)
    into: dict[State, list[_Instance]] = {state: [] for state in order}
    out_of: dict[State, list[_Instance]] = {state: [] for state in order}
    for instance in instances:
        into[instance.target].append(instance)
        out_of[instance.source].append(instance)
    source, head = _state(ir, ir.input_node().name, task), (ir.head_of(task).name, task)
    forward: dict[State, float] = {}
    for state in order:
        forward[state] = 1.0 if state == source else math.fsum(forward[i.source] * i.weight for i in into[state])
    backward: dict[State, float] = {}
    for state in reversed(order):
        backward[state] = 1.0 if state == head else math.fsum(i.weight * backward[i.target] for i in out_of[state])
    flows = {(i.key, i.owner): forward[i.source] * i.weight * backward[i.target] for i in instances}

    def read(values: dict[State, float], node: str) -> float:
        return values.get(_state(ir, node, state_owner(ir, node, task)), 0.0)

    edge = {key: flows.get((key, state_owner(ir, key[1], task)), 0.0) for key in weights}
    for (key, owner), value in flows.items():
        if owner == state_owner(ir, key[1], task):
            edge[key] = value
    return TaskFlow(task, {n: read(forward, n) for n in ir.nodes}, {n: read(backward, n) for n in ir.nodes},
                    edge, forward.get(head, 0.0), {s: (forward[s], backward[s]) for s in order}, flows)


def total_flow(ir: IR, task: str, weights: Weights | None = None) -> float:
    """Φ for `task`: the sum over its input-to-head paths of the product of their weights."""
    return task_flow(ir, task, weights).total


def best_path(ir: IR, task: str, weights: Weights | None = None) -> list[EdgeKey]:
    """The input-to-head path of largest weight product, as edges in path order (over the task's
    states: it may pass through another task's chain).

    A max-product dynamic programme in log space (no underflow on long paths), O(V + E). Ties go to
    the next state of smallest `node_key`, so the choice is stable: the path chosen on a graph is
    chosen again on every sub-graph that still contains it (discretisation forces it, the reduction
    protects it, and both agree). Raises `ValueError` when the head cannot be reached.

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}],
    ...                        network={'central': {'nodes': 3, 'stages': 1, 'channels': 8}}))
    >>> best_path(ir, 'a')[:2]        # all gates equal: the shortest path wins
    [('input', 'stem'), ('stem', 'h1')]
    """
    weights = gate_weights(ir, task) if weights is None else weights
    order, instances = _state_graph(ir, task, weights)
    out_of: dict[State, list[_Instance]] = {state: [] for state in order}
    for instance in instances:
        out_of[instance.source].append(instance)
    source, head = _state(ir, ir.input_node().name, task), (ir.head_of(task).name, task)

    def tie_key(state: State) -> tuple[tuple[int, str], str]:
        return node_key(ir, state[0]), state[1]

    score: dict[State, float] = {head: 0.0}  # log product of the best path to the head
    step: dict[State, _Instance] = {}
    for state in reversed(order):
        if state == head:
            continue
        for instance in out_of[state]:
            if instance.target not in score:
                continue
            candidate = _log(instance.weight) + score[instance.target]
            if (state not in score or candidate > score[state]
                    or (candidate == score[state] and tie_key(instance.target) < tie_key(step[state].target))):
                score[state], step[state] = candidate, instance
    if source not in score:
        raise ValueError(f"task {task!r} has no path from the input to its head")
    path, state = [], source
    while state != head:
        path.append(step[state].key)
        state = step[state].target
    return path


def path_product(weights: Weights, path: list[EdgeKey]) -> float:
    """The product of the weights along `path`."""
    return math.prod(weights[key] for key in path)


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _topological_order(states: set[State], instances: list[_Instance]) -> list[State]:
    """Kahn's algorithm over the states and the edge instances between them (O(V + E))."""
    indegree = {state: 0 for state in states}
    successors: dict[State, list[State]] = {state: [] for state in states}
    for instance in instances:
        indegree[instance.target] += 1
        successors[instance.source].append(instance.target)
    ready = sorted(state for state, degree in indegree.items() if degree == 0)
    order = []
    while ready:
        state = ready.pop()
        order.append(state)
        for nxt in successors[state]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(indegree):
        raise ValueError("the weighted edges form a cycle")
    return order
