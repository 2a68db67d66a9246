"""`fit-budget`: remove edges until the compact network costs at most a MACs or parameter budget."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from dagir.compact_cost import compact_macs, compact_parameters
from dagir.flow import EdgeKey, best_path, gate_weights, task_flow
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass

from .flow_reduce import _delete_dead, _trim_to_paths
from .share_states import ShareStates


@register_pass
class FitBudget(Pass):
    """A constraint on the compact network's cost: multiply-accumulates per sample (`macs`) and/or
    parameters (`parameters`), as `dagir.compact_cost` counts them (states shared by tasks count once).

    While the cost is over budget, remove the (task, edge) whose share of its task's flow is least,
    φ_e / Φ_t, among the kept edges off each task's best path (which stays: every task keeps a path),
    then trim each task to its input-to-head paths and delete what no task keeps. The flows are
    recomputed after every removal. A budget the best paths alone exceed cannot be met: the pass
    stops there and records it (`ir.meta["fit_budget"]["met"]` false, with the cost reached), so a
    finished search is never thrown away. With no budget (the default) it changes nothing.
    Runs after `flow-reduce` on a discretised IR; costs one share-states sweep per removal, with
    `untie` as `share-states` will run (untied states cost their own copies of the weights).
    """

    name = "fit-budget"
    macs: int | None = Field(None, ge=1)
    parameters: int | None = Field(None, ge=1)
    untie: bool = False

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        if self.macs is None and self.parameters is None:
            return out
        removed: list[str] = []
        cost = self.cost(out, self.untie)
        protected = {task: set(best_path(out, task, gate_weights(out, task))) for task in out.task_names}
        while not self._within(cost):
            candidate = self._least_flow_edge(out, protected)
            if candidate is None:
                break
            task, key = candidate
            out.edges[key] = out.edges[key].with_task_state(task, keep=False)
            for name in out.task_names:
                _trim_to_paths(out, name)
            _delete_dead(out)
            removed.append(f"{task}:{edge_name(*key)}")
            cost = self.cost(out, self.untie)
        out.meta["fit_budget"] = {"macs": self.macs, "parameters": self.parameters, "met": self._within(cost),
                                  "cost": cost, "removed": removed}
        return out

    def _within(self, cost: dict[str, int]) -> bool:
        return ((self.macs is None or cost["macs"] <= self.macs)
                and (self.parameters is None or cost["parameters"] <= self.parameters))

    @staticmethod
    def cost(ir: IR, untie: bool = False) -> dict[str, Any]:
        """The compact network's MACs and parameters, its states shared as `share-states` shares them."""
        shared = ShareStates(untie=untie).run(ir)
        return {"macs": compact_macs(shared)["total"], "parameters": compact_parameters(shared)["total"]}

    @staticmethod
    def _least_flow_edge(ir: IR, protected: dict[str, set[EdgeKey]]) -> tuple[str, EdgeKey] | None:
        best: tuple[float, str, EdgeKey] | None = None
        for task in ir.task_names:
            weights = gate_weights(ir, task)
            flow = task_flow(ir, task, weights)
            for key in weights:
                if key in protected[task]:
                    continue
                share = flow.edge[key] / flow.total if flow.total > 0 else 0.0
                if best is None or (share, task, key) < best:
                    best = (share, task, key)
        return None if best is None else (best[1], best[2])
