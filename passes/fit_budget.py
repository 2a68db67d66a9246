"""`fit-budget`: remove edges until the compact network costs at most a MACs or parameter budget."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from dagir.compact_cost import compact_macs, compact_parameters
from dagir.flow import EdgeKey, gate_weights, task_flow
from dagir.ir import IR, edge_name
from dagir.pass_manager import Pass, register_pass
from dagir.prune import Removal, kept_flow_stats, largest_share, protected_paths, prune

from .share_states import ShareStates


@register_pass
class FitBudget(Pass):
    """A constraint on the compact network's cost: multiply-accumulates per sample (`macs`) and/or
    parameters (`parameters`), as `dagir.compact_cost` counts them (states shared by tasks count once).

    While the cost is over budget, remove the (task, edge) whose share of flow is least — the largest
    φ_e / Φ_u over the tasks u whose flow passes through it (a cross edge reading task B's chain makes
    B's edges carry flow for A too) — among the kept edges off every task's best path (each owner's
    edges on it stay, `dagir.prune.protected_paths`: every task keeps a path), then trim each task to
    its input-to-head paths and delete what no task keeps. The flows are recomputed after every
    removal. With a budget the pass first does flow-reduce's clean-up (trim, delete what is dead) and
    marks the IR reduced, so it may also run straight after `discretize`; after `flow-reduce` it
    refreshes the kept flows that pass recorded. A budget the best paths alone exceed cannot be met:
    the pass stops there and records it (`ir.meta["fit_budget"]["met"]` false, with the cost
    reached), so a finished search is never thrown away. With no budget (the default) it changes nothing.
    Runs after `flow-reduce` (or `discretize`); costs one share-states sweep per removal, with
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
        protected = protected_paths(out)
        prune(out)
        cost = self.cost(out, self.untie)
        while not self._within(cost):
            candidate = self._least_flow_edge(out, protected)
            if candidate is None:
                break
            task, key = candidate
            out.edges[key] = out.edges[key].with_task_state(task, keep=False)
            prune(out)
            removed.append(f"{task}:{edge_name(*key)}")
            cost = self.cost(out, self.untie)
        out.reduced = True  # the verifier now holds it to a reduction's invariants: it is one
        if "flow_reduce" in out.meta:  # Φ and the groups stay: a later flow-reduce measures against them
            out.meta["flow_reduce"].update(kept_flow_stats(out))
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
    def _least_flow_edge(ir: IR, protected: set[Removal]) -> Removal | None:
        flows = {task: task_flow(ir, task) for task in ir.task_names}
        totals = {task: flow.total for task, flow in flows.items()}
        best: tuple[float, str, EdgeKey] | None = None
        for owner in ir.task_names:
            for key in gate_weights(ir, owner):
                if (owner, key) in protected:
                    continue
                share = largest_share((owner, key), flows, totals)
                if best is None or (share, owner, key) < best:
                    best = (share, owner, key)
        return None if best is None else (best[1], best[2])
