"""`flow-reduce`: drop the edges that carry the least flow (DESIGN §4, "Flow-based reduction")."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from dagir.flow import EdgeKey, Weights, best_path, gate_weights, node_key, task_flow
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass
from dagir.task_states import nodes_on_paths, reached_nodes, reaching_nodes


@register_pass
class FlowReduce(Pass):
    """Per task, remove kept edges in ascending order of flow while (1 - ε) of the flow remains.

    For task t, on the kept edges of its view (`dagir.task_states`: a cross edge reading another
    task's chain carries flow for t like any other edge) weighted by their gates, with Φ the flow of the discretised
    network: repeatedly take the edge of least current flow φ_e (ties by edge; the edges of t's best
    path excluded; only the edges feeding t's own states are t's to remove), recompute the flows without it, and remove it if the remaining flow is still
    >= (1 - ε) Φ; stop at the first edge that would break the bound. Flows are recomputed after
    every removal (removing an edge lowers the flow of the others), so the bound holds exactly — the
    check is made on the very flow the result has. Stopping loses nothing: removing an edge costs
    exactly its flow, and the rejected edge had the least, so no later edge could pass either.

    Why a larger budget never keeps more edges: the removal order depends on the graph and the gates
    only, never on ε — ε only decides where to stop, at the first prefix of the order whose flow falls
    below (1 - ε) Φ. A larger ε lowers that bound, so every prefix accepted under the smaller ε is
    accepted again and the stop comes no earlier. The per-task kept sets shrink, hence so do the
    structural clean-up below and the union over tasks.

    Why running it again changes nothing: Φ is recorded (`meta["flow_reduce"]["reference_flow"]`) and
    a reduced IR is measured against it, not against its own smaller flow; the order then resumes
    exactly where the first run stopped, at an edge the bound rejects. (Running it again with a larger
    budget continues the same order: the result equals one run with that budget.)

    Then each task's kept edges are trimmed to those on one of its input-to-head paths, edges kept
    for no task are deleted, and so are nodes on no task's path. `enabled=false` does only this
    clean-up. Stats go to `ir.meta["flow_reduce"]`. Cost: one O(E) flow sweep per removal tried.
    """

    name = "flow-reduce"
    flow_budget: float = Field(0.05, ge=0, lt=1)
    enabled: bool = True

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        recorded = ir.meta.get("flow_reduce", {}).get("reference_flow", {}) if ir.reduced else {}
        stats: dict[str, dict[str, Any]] = {key: {} for key in
                                            ("reference_flow", "kept_flow", "removed", "protected", "kept_per_task")}
        for task in out.task_names:
            weights = gate_weights(out, task)
            protected = best_path(out, task, weights)
            reference = recorded.get(task, task_flow(out, task, weights).total)
            removed = self._removal(out, task, weights, set(protected), reference) if self.enabled else []
            for key in removed:
                out.edges[key] = out.edges[key].with_task_state(task, keep=False)
            _trim_to_paths(out, task)
            stats["reference_flow"][task] = reference
            stats["removed"][task] = [edge_name(*key) for key in removed]
            stats["protected"][task] = [edge_name(*key) for key in protected]
        deleted_edges, deleted_nodes = _delete_dead(out)
        for task in out.task_names:
            kept = gate_weights(out, task)
            stats["kept_flow"][task] = task_flow(out, task, kept).total
            stats["kept_per_task"][task] = len(kept)
        out.reduced = True
        out.meta["flow_reduce"] = {"flow_budget": self.flow_budget, "enabled": self.enabled, **stats,
                                   "deleted_edges": deleted_edges, "deleted_nodes": deleted_nodes}
        return out

    def _removal(self, ir: IR, task: str, weights: Weights, protected: set[EdgeKey],
                 reference: float) -> list[EdgeKey]:
        """The prefix of the budget-independent removal order that keeps >= (1 - ε) reference."""
        bound = (1.0 - self.flow_budget) * reference
        current, flow, removed = dict(weights), task_flow(ir, task, weights), []
        while True:
            candidates = [key for key in current if key not in protected]
            if not candidates:
                return removed
            cheapest = min(candidates, key=lambda key: (flow.edge[key], node_key(ir, key[0]), node_key(ir, key[1])))
            trial = {key: w for key, w in current.items() if key != cheapest}
            trial_flow = task_flow(ir, task, trial)
            if trial_flow.total < bound:
                return removed
            current, flow = trial, trial_flow
            removed.append(cheapest)


def _trim_to_paths(ir: IR, task: str) -> None:
    """Drop `task` from its kept edges that lie on none of its input-to-head paths."""
    reached, reaching = reached_nodes(ir, task), reaching_nodes(ir, task)
    for key, edge in list(ir.edges.items()):
        if edge.is_active(task) and not (edge.src in reached and edge.dst in reaching):
            ir.edges[key] = edge.with_task_state(task, keep=False)


def _delete_dead(ir: IR) -> tuple[list[str], list[str]]:
    """Delete the edges kept for no task, then the nodes on no task's path; return their names."""
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
