"""`flow-reduce`: drop the edges that carry the least flow (DESIGN §4, "Flow-based reduction")."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from dagir.flow import TaskFlow, best_path, gate_weights, node_key, task_flow
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass
from dagir.prune import Removal, kept_flow_stats, largest_share, protected_paths, prune


@register_pass
class FlowReduce(Pass):
    """Remove kept edges in ascending order of flow while every task keeps (1 - ε) of its flow.

    A task's flow runs over its states (`dagir.task_states`): a cross edge reading task B's chain
    carries flow for task A through B's edges and gates, so removing one of B's edges can lower A's
    flow. Tasks are therefore reduced in **coupled groups**: two tasks are coupled when one's flow
    passes through the other's states (closed transitively). Without task-owned nodes (`build-central`)
    every task is a group of its own and the reduction is per task, as DESIGN §4 states it.

    Φ_t, every task's flow on the discretised network, is taken before anything is removed. For a
    group, a removal is a kept edge of one of its tasks (an edge feeding that owner's states) that lies
    on no task's best path (`protected_paths`: the union of every task's path of largest gate
    product, through whichever owners' states it passes, so every task keeps a path). Repeatedly take
    the removal of least cost — the largest share φ_e / Φ_t of any task's reference flow it carries
    (then the flow itself, then the edge; ties broken by the nodes alone) — recompute the flows
    without it, and accept it if every task of the group still has >= (1 - ε) Φ_t; stop the group at
    the first removal the bound rejects. Flows are recomputed after every removal, so the bound holds
    exactly — the check is made on the very flow the result has. For a group of one task stopping
    loses nothing: removing an edge costs exactly its flow, and the rejected edge had the least, so
    no later edge could pass either. For a coupled group the stop is conservative (a later edge may
    carry little of the task whose bound stopped it); it is what keeps the next two guarantees.

    Why a larger budget never keeps more edges: the removal order depends on the graph, the gates and
    Φ only, never on ε — ε only decides where to stop, at the first prefix of the order whose flow
    falls below (1 - ε) Φ for some task. A larger ε lowers every bound, so every prefix accepted under
    the smaller ε is accepted again and the stop comes no earlier. The per-task kept sets shrink,
    hence so do the structural clean-up below and the union over tasks.

    Why running it again changes nothing: Φ and the groups are recorded (`meta["flow_reduce"]`:
    `reference_flow`, `groups`) and a reduced IR is measured against them, not against its own
    smaller flow and looser coupling; the order then resumes exactly where the first run stopped, at
    a removal the bound rejects. (Running it again with a larger budget continues the same order: the
    result equals one run with that budget.)

    Then each task's kept edges are trimmed to those on one of its input-to-head paths, edges kept
    for no task are deleted, and so are nodes on no task's path. `enabled=false` does only this
    clean-up. Stats go to `ir.meta["flow_reduce"]`. Cost: one O(E) flow sweep per task of the group
    whose flow a tried removal touches.
    """

    name = "flow-reduce"
    flow_budget: float = Field(0.05, ge=0, lt=1)
    enabled: bool = True

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        previous = ir.meta.get("flow_reduce", {}) if ir.reduced else {}
        recorded = previous.get("reference_flow", {})
        flows = {task: task_flow(out, task) for task in out.task_names}
        reference = {task: recorded[task] if task in recorded else flows[task].total for task in out.task_names}
        groups = previous.get("groups") or coupled_groups(out, flows)
        protected = protected_paths(out)
        removed: dict[str, list[str]] = {task: [] for task in out.task_names}
        if self.enabled:
            for group in groups:
                for owner, key in self._removal(out, group, reference, protected, flows):
                    removed[owner].append(edge_name(*key))
        stats: dict[str, Any] = {
            "reference_flow": reference, "removed": removed, "groups": groups,
            "protected": {task: [edge_name(*key) for key in best_path(ir, task, gate_weights(ir, task))]
                          for task in ir.task_names}}
        deleted_edges, deleted_nodes = prune(out)
        stats.update(kept_flow_stats(out))
        out.reduced = True
        out.meta["flow_reduce"] = {"flow_budget": self.flow_budget, "enabled": self.enabled, **stats,
                                   "deleted_edges": deleted_edges, "deleted_nodes": deleted_nodes}
        return out

    def _removal(self, ir: IR, group: list[str], reference: dict[str, float], protected: set[Removal],
                 flows: dict[str, TaskFlow]) -> list[Removal]:
        """Remove (in `ir`) the prefix of the group's budget-independent removal order that keeps
        >= (1 - ε) Φ_t for every task t of the group; return it."""
        bound = {task: (1.0 - self.flow_budget) * reference[task] for task in group}
        removed: list[Removal] = []
        while True:
            candidates = [(owner, key) for owner in group for key in gate_weights(ir, owner)
                          if (owner, key) not in protected]
            if not candidates:
                return removed
            owner, key = min(candidates, key=lambda removal: _cost(ir, removal, group, flows, reference))
            edge = ir.edges[key]
            ir.edges[key] = edge.with_task_state(owner, keep=False)
            touched = [task for task in group if (key, owner) in flows[task].instances]
            trial = {task: task_flow(ir, task) for task in touched}
            if any(trial[task].total < bound[task] for task in touched):
                ir.edges[key] = edge
                return removed
            flows.update(trial)
            removed.append((owner, key))


def coupled_groups(ir: IR, flows: dict[str, TaskFlow]) -> list[list[str]]:
    """The tasks in groups, two tasks together when one's flow passes through the other's states
    (closed transitively); in task order. Without task-owned nodes every task is alone."""
    group = {task: task for task in ir.task_names}

    def root(task: str) -> str:
        while group[task] != task:
            task = group[task]
        return task

    for task, flow in flows.items():
        for _, owner in flow.states:
            if owner in group:
                group[root(owner)] = root(task)
    members: dict[str, list[str]] = {}
    for task in ir.task_names:
        members.setdefault(root(task), []).append(task)
    return list(members.values())


def _cost(ir: IR, removal: Removal, group: list[str], flows: dict[str, TaskFlow],
          reference: dict[str, float]) -> tuple[Any, ...]:
    """The removal order's key: the largest share of a task's reference flow the edge carries, the
    largest flow, then the edge and its owner (stable on sub-graphs)."""
    owner, key = removal
    carrying = {task: flows[task] for task in group}
    most = max((flow.instances[(key, owner)] for flow in carrying.values() if (key, owner) in flow.instances),
               default=0.0)
    return largest_share(removal, carrying, reference), most, node_key(ir, key[0]), node_key(ir, key[1]), owner
