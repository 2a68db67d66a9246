"""Pruning an IR to what its tasks keep: the structural clean-up after edges are dropped.

`flow-reduce` and `fit-budget` both drop (owner, edge) pairs off every task's best path
(`protected_paths`), then `prune`: trim each task to its input-to-head paths and delete the edges
kept for no task and the nodes on no task's path. The result is what the verifier's `reduced`
invariant asks of a reduced IR.
"""
from __future__ import annotations

from .flow import best_path, gate_weights
from .ir import IR, EdgeKey, edge_name
from .task_states import nodes_on_paths, reached_nodes, reaching_nodes, state_owner

Removal = tuple[str, EdgeKey]  # (owner, edge): drop the edge from the owner's kept edges


def protected_paths(ir: IR) -> set[Removal]:
    """(owner, edge) for every edge on every task's best path, the owner being that of the state
    the edge feeds: the path of task A through task B's chain protects B's edges on it."""
    return {(state_owner(ir, key[1], task), key)
            for task in ir.task_names for key in best_path(ir, task, gate_weights(ir, task))}


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
