"""Which states exist for each task (DESIGN §9, "States"): one module that every part asks.

A node with `task=None` holds one state per task that reaches it (task states differ because
gates differ). A node owned by a task (a head, a per-task chain of MTL-NAS or cross-stitch) holds
its owner's state only, and any edge reading from it reads that state. So a state is a pair
(node, owner), with `owner = node.task or the task reading it`, and an edge `u -> v` feeds the
state of v owned by `state_owner(v, t)`: its keep flag and its decision are that owner's.

A task decides the edges that feed its own states (`own_edges`); what its head computes can also
pass through another task's states: a cross edge that reads task B's chain brings B's chain, with
B's edges and gates, into task A's flow (`dagir.flow`).

Used by the verifier, flow, the post-search passes, the reference evaluator and the lowerings.
"""
from __future__ import annotations

from .ir import IR, Edge, EdgeKey


def state_owner(ir: IR, node: str, task: str) -> str:
    """The task whose state of `node` task `task` reads: the node's owner, else `task` itself."""
    return ir.nodes[node].task or task


def own_edges(ir: IR, task: str) -> list[EdgeKey]:
    """The edges that feed `task`'s own states: active for it, into a node it does not leave to
    another owner. Their decisions and keep flags are the task's; an edge into another task's
    node is that task's (its keep flag, its gate)."""
    return [key for key, edge in ir.edges.items()
            if edge.is_active(task) and state_owner(ir, edge.dst, task) == task]


def _forward_states(ir: IR, outgoing: dict[str, list[Edge]]) -> set[tuple[str, str]]:
    """Every state (node, owner) computed from the input on active edges."""
    start = ir.input_node().name
    seen = {(start, t) for t in ir.task_names}
    stack = list(seen)
    while stack:
        node, task = stack.pop()
        owned = ir.nodes[node].task is not None
        for edge in outgoing[node]:
            for reader in (edge.active_tasks() if owned else [task] if edge.is_active(task) else []):
                state = (edge.dst, state_owner(ir, edge.dst, reader))
                if state not in seen:
                    seen.add(state)
                    stack.append(state)
    return seen


def reached_nodes(ir: IR, task: str, outgoing: dict[str, list[Edge]] | None = None) -> set[str]:
    """Nodes whose state, as `task` reads it, is computed from the input on active edges."""
    outgoing = outgoing if outgoing is not None else ir.out_edges()
    if any(ir.nodes[e.src].task is not None for e in ir.edges.values()):
        states = _forward_states(ir, outgoing)
        return {name for name in ir.nodes if (name, state_owner(ir, name, task)) in states}
    start = ir.input_node().name
    seen, stack = {start}, [start]
    while stack:
        for edge in outgoing[stack.pop()]:
            if edge.dst not in seen and edge.is_active(task):
                seen.add(edge.dst)
                stack.append(edge.dst)
    return seen


def reaching_nodes(ir: IR, task: str, incoming: dict[str, list[Edge]] | None = None) -> set[str]:
    """Nodes whose state flows into `task`'s head on active edges (an owned node's state is
    computed with its owner's edges, whichever task reads it)."""
    incoming = incoming if incoming is not None else ir.in_edges()
    head = ir.head_of(task).name
    seen, stack = {(head, task)}, [(head, task)]
    while stack:
        node, owner = stack.pop()
        for edge in incoming[node]:
            if edge.is_active(owner):
                state = (edge.src, state_owner(ir, edge.src, owner))
                if state not in seen:
                    seen.add(state)
                    stack.append(state)
    return {node for node, _ in seen}


def nodes_on_paths(ir: IR, task: str, outgoing: dict[str, list[Edge]] | None = None,
                   incoming: dict[str, list[Edge]] | None = None) -> set[str]:
    """Nodes on one of `task`'s input-to-head paths: reached from the input and reaching its head."""
    return reached_nodes(ir, task, outgoing) & reaching_nodes(ir, task, incoming)
