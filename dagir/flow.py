"""Flow through a task's gated sub-network (DESIGN §4, "Flow"), and its path of largest gate product.

For task t every edge active for t gets a weight `w_e`: its gate `σ(logit)` (temperature 1 after
search), or 1 for an ungated edge. The forward flow is `F(input) = 1`, `F(v) = Σ_{u→v} F(u) w_uv`;
the backward flow is `R(head) = 1`, `R(u) = Σ_{u→v} w_uv R(v)`. The total flow `Φ = F(head) = R(input)`
is the sum over every input-to-head path of the product of its weights, and the flow through an edge
is `φ_uv = F(u) w_uv R(v)`: the part of Φ carried by the paths through that edge. Flow is conserved
at every node, so the edge flows across any input/head cut sum to Φ.

Each function costs O(V + E) per task: one topological order, one sweep. Sums are correctly rounded
(`math.fsum`), so a node's flow depends on the set of its terms, not on their order: a sub-graph that
differs only by edges contributing exact zeros has the same flows bit for bit, and removing an edge
never raises a flow, even in floating point. The reduction pass states its guarantee exactly on that.

Pure Python on purpose (no torch): passes and property tests use it on the IR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .ir import IR, Edge

EdgeKey = tuple[str, str]
Weights = Mapping[EdgeKey, float]


def sigmoid(logit: float) -> float:
    """The logistic function, stable for large |logit|.

    >>> sigmoid(0.0)
    0.5
    """
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def gate_value(edge: Edge, task: str) -> float:
    """The weight `edge` gives `task`: σ(gate logit) for a gated edge with a logit, else 1."""
    state = edge.tasks[task]
    if not edge.gated or state.gate_logit is None:
        return 1.0
    return sigmoid(state.gate_logit)


def gate_weights(ir: IR, task: str) -> dict[EdgeKey, float]:
    """Weights of the edges active for `task` (its gates); inactive edges are absent.

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}]))
    >>> round(gate_weights(ir, 'a')[('input', 'stem')], 3), round(gate_weights(ir, 'a')[('h1', 'h2')], 3)
    (1.0, 0.731)
    """
    return {key: gate_value(edge, task) for key, edge in ir.edges.items() if edge.is_active(task)}


@dataclass(frozen=True)
class TaskFlow:
    """Forward flow, backward flow and edge flow of one task; `total` is Φ."""

    task: str
    forward: dict[str, float]
    backward: dict[str, float]
    edge: dict[EdgeKey, float]
    total: float


def node_key(ir: IR, name: str) -> tuple[int, str]:
    """A key for a node that depends on the node alone (not on the rest of the graph): ties are
    broken by it, so a choice made on a graph is made again on any sub-graph that contains it."""
    index = ir.nodes[name].index
    return (index if index is not None else 0, name)


def task_flow(ir: IR, task: str, weights: Weights | None = None) -> TaskFlow:
    """Forward, backward and edge flows of `task` on the edges in `weights` (default: its gates).

    `weights` may name any subset of the IR's edges (e.g. only the kept ones); the others carry no
    flow. O(V + E).

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}],
    ...                        network={'central': {'nodes': 2, 'stages': 1, 'channels': 8},
    ...                                 'read_in': False, 'read_out': False}))
    >>> flow = task_flow(ir, 'a')     # input -> stem -> h1 -> h2 -> head, one gated edge h1 -> h2
    >>> round(flow.total, 4), round(flow.edge[('h1', 'h2')], 4)
    (0.7311, 0.7311)
    """
    weights = gate_weights(ir, task) if weights is None else weights
    order = _topological_order(ir, weights)
    incoming, outgoing = _adjacency(ir, weights)
    source, head = ir.input_node().name, ir.head_of(task).name
    forward: dict[str, float] = {}
    for node in order:
        forward[node] = 1.0 if node == source else math.fsum(forward[u] * weights[(u, node)] for u in incoming[node])
    backward: dict[str, float] = {}
    for node in reversed(order):
        backward[node] = 1.0 if node == head else math.fsum(weights[(node, v)] * backward[v] for v in outgoing[node])
    edge = {key: forward[key[0]] * w * backward[key[1]] for key, w in weights.items()}
    return TaskFlow(task, forward, backward, edge, forward[head])


def total_flow(ir: IR, task: str, weights: Weights | None = None) -> float:
    """Φ for `task`: the sum over its input-to-head paths of the product of their weights."""
    return task_flow(ir, task, weights).total


def best_path(ir: IR, task: str, weights: Weights | None = None) -> list[EdgeKey]:
    """The input-to-head path of largest weight product, as edges in path order.

    A max-product dynamic programme in log space (no underflow on long paths), O(V + E). Ties go to
    the next node of smallest `node_key`, so the choice is stable: the path chosen on a graph is
    chosen again on every sub-graph that still contains it (discretisation forces it, the reduction
    protects it, and both agree). Raises `ValueError` when the head cannot be reached.

    >>> from dagir.spec import Spec; from dagir.pipeline import compile_spec
    >>> ir = compile_spec(Spec(tasks=[{'name': 'a', 'kind': 'regression'}],
    ...                        network={'central': {'nodes': 3, 'stages': 1, 'channels': 8}}))
    >>> best_path(ir, 'a')[:2]        # all gates equal: the shortest path wins
    [('input', 'stem'), ('stem', 'h1')]
    """
    weights = gate_weights(ir, task) if weights is None else weights
    order = _topological_order(ir, weights)
    _, outgoing = _adjacency(ir, weights)
    source, head = ir.input_node().name, ir.head_of(task).name
    score: dict[str, float] = {head: 0.0}  # log product of the best path to the head
    step: dict[str, str] = {}
    for node in reversed(order):
        if node == head:
            continue
        for nxt in outgoing[node]:
            if nxt not in score:
                continue
            candidate = _log(weights[(node, nxt)]) + score[nxt]
            if (node not in score or candidate > score[node]
                    or (candidate == score[node] and node_key(ir, nxt) < node_key(ir, step[node]))):
                score[node], step[node] = candidate, nxt
    if source not in score:
        raise ValueError(f"task {task!r} has no path from the input to its head")
    path, node = [], source
    while node != head:
        path.append((node, step[node]))
        node = step[node]
    return path


def path_product(weights: Weights, path: list[EdgeKey]) -> float:
    """The product of the weights along `path`."""
    return math.prod(weights[key] for key in path)


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _adjacency(ir: IR, weights: Weights) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Predecessors and successors of every node on the weighted edges."""
    incoming: dict[str, list[str]] = {name: [] for name in ir.nodes}
    outgoing: dict[str, list[str]] = {name: [] for name in ir.nodes}
    for src, dst in weights:
        incoming[dst].append(src)
        outgoing[src].append(dst)
    return incoming, outgoing


def _topological_order(ir: IR, weights: Weights) -> list[str]:
    """Kahn's algorithm over every node and the weighted edges (O(V + E))."""
    indegree = {name: 0 for name in ir.nodes}
    successors: dict[str, list[str]] = {name: [] for name in ir.nodes}
    for src, dst in weights:
        indegree[dst] += 1
        successors[src].append(dst)
    ready = [name for name, degree in indegree.items() if degree == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for nxt in successors[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(indegree):
        raise ValueError("the weighted edges form a cycle")
    return order
