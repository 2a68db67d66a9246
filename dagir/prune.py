"""Pruning an IR to what its tasks keep: the structural clean-up after edges are dropped.

`flow-reduce` and `fit-budget` both drop (owner, edge) pairs off every task's best path
(`protected_paths`), then `prune`: trim each task to its input-to-head paths and delete the edges
kept for no task and the nodes on no task's path. The result is what the verifier's `reduced`
invariant asks of a reduced IR.
"""
from __future__ import annotations

from typing import Any, Mapping

from .flow import TaskFlow, best_path, gate_weights, task_flow
from .ir import IR, EdgeKey, edge_name
from .task_states import nodes_on_paths, reached_nodes, reaching_nodes, state_owner

Removal = tuple[str, EdgeKey]  # (owner, edge): drop the edge from the owner's kept edges


def protected_paths(ir: IR) -> set[Removal]:
    """(owner, edge) for every edge on every task's best path, the owner being that of the state
    the edge feeds: the path of task A through task B's chain protects B's edges on it."""
    return {(state_owner(ir, key[1], task), key)
            for task in ir.task_names for key in best_path(ir, task, gate_weights(ir, task))}


def largest_share(removal: Removal, flows: Mapping[str, TaskFlow], totals: Mapping[str, float]) -> float:
    """The largest share φ / total of any task's flow (among `flows`) that the (owner, edge) carries;
    0 where it carries none. A cross edge reading task B's chain makes B's edges carry A's flow too."""
    owner, key = removal
    return max((flows[task].instances[(key, owner)] / totals[task] if totals[task] > 0 else 0.0
                for task in flows if (key, owner) in flows[task].instances), default=0.0)


def kept_flow_stats(ir: IR) -> dict[str, Any]:
    """Each task's flow over the edges it keeps, and how many it keeps (`meta["flow_reduce"]`'s)."""
    kept = {task: gate_weights(ir, task) for task in ir.task_names}
    return {"kept_flow": {task: task_flow(ir, task, kept[task]).total for task in ir.task_names},
            "kept_per_task": {task: len(kept[task]) for task in ir.task_names}}


def trim_to_paths(ir: IR, task: str) -> None:
    """Drop `task` from its kept edges that lie on none of its input-to-head paths (in place)."""
    reached, reaching = reached_nodes(ir, task), reaching_nodes(ir, task)
    for key, edge in list(ir.edges.items()):
        if edge.is_active(task) and not (edge.src in reached and edge.dst in reaching):
            ir.edges[key] = edge.with_task_state(task, keep=False)


def delete_dead(ir: IR) -> tuple[list[str], list[str]]:
    """Delete the edges kept for no task, then the nodes on no task's path (in place); return their
    names."""
    live: set[str] = set()
    for task in ir.task_names:
        live |= nodes_on_paths(ir, task)
    dead_nodes = sorted(set(ir.nodes) - live)
    dead_edges = sorted(key for key, edge in ir.edges.items()
                        if not edge.active_tasks() or edge.src in dead_nodes or edge.dst in dead_nodes)
    for key in dead_edges:
        ir.remove_edge(*key)
    for name in dead_nodes:
        del ir.nodes[name]
    return [edge_name(*key) for key in dead_edges], dead_nodes


def prune(ir: IR) -> tuple[list[str], list[str]]:
    """Trim every task to its input-to-head paths, then `delete_dead` (in place); return the names
    of the deleted edges and nodes."""
    for task in ir.task_names:
        trim_to_paths(ir, task)
    return delete_dead(ir)
