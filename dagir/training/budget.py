"""The budget held inside the search (`search.budget.search_rate`, DESIGN §4 "a MACs or parameter budget").

`fit-budget` meets `search.budget` after the search by removing the edges of least flow; where the
supernet costs many times the budget (task copies beside every stage: 1.79M parameters against 269k
on MultiMNIST) it removes most of what the gates kept, and the search chose none of it. Held inside
the search, the budget is a term of the architecture loss with a multiplier μ per limit (MACs,
parameters), raised by dual ascent while the network the gates give now costs more than the limit:

    loss += μ_k · Σ_e c_e,k · mean_t p_e,t / B_k    for each limit k the network exceeds
    μ_k ← max(0, μ_k + rate · Δ · (C_k / B_k − 1))  at each count of C_k

`C_k` is exactly what the post-search passes before `fit-budget` (discretize, flow-reduce,
share-states) would give as the compact network's cost if the search stopped now: the run counts it
(`recount`) every `1/COUNTS` of the search stage, as counting costs far more than a step of an MLP
space. Δ is the fraction of the stage since the last count, so `rate` is how far μ climbs over the
whole search per unit of overshoot, whatever the number of steps. The term pushes only while a limit is
exceeded, on each gated edge's gates in proportion to its cost c_e (its op, and what it adds to its
node's aggregation), the mean of its tasks' gates so every task's gate on an edge is pushed alike (the
chance that some task uses the edge, 1 − Π_t (1 − p_e,t), has no gradient on one task's gate while
another's is open, so two open gates would hold each other open). Costly edges get the largest push,
and the task losses choose which of them stay open; `fit-budget` still meets the budget exactly
after the search.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..compact_cost import aggregation_macs, edge_macs
from ..ir import IR
from ..ops import aggregation_parameter_count, parameter_count

COUNTS = 32  # counts of the discretised network's cost per search stage


def added_by_each_input(ir: IR) -> dict[str, dict[str, int]]:
    """What one more in-edge adds to each node's aggregation, per quantity (MACs, parameters): the
    last in-edge's share (all of an `nddr` node's linear part; a `gate` node's routing layer grows
    faster, and its share is that of its last input)."""
    incoming = ir.in_edges()
    added: dict[str, dict[str, int]] = {"macs": {}, "parameters": {}}
    for name, node in ir.nodes.items():
        inputs, width = len(incoming.get(name, [])), ir.query_width(node)
        if not inputs:
            added["macs"][name] = added["parameters"][name] = 0
            continue
        macs = [aggregation_macs(node.aggregation, node.input_type, k, width) for k in (inputs - 1, inputs)]
        parameters = [aggregation_parameter_count(node.aggregation, node.input_type, k, width, node.nddr_norm)
                      for k in (inputs - 1, inputs)]
        added["macs"][name], added["parameters"][name] = macs[1] - macs[0], parameters[1] - parameters[0]
    return added


class SearchBudget:
    """The budget's term of the architecture loss and its multipliers. `slots`: (edge name, task) ->
    gate slot; `limits`: {"macs"/"parameters": limit or None}; `rate`: the dual ascent rate per search
    stage; `recount()`: what the network the gates give now costs, {"macs": ..., "parameters": ...}.
    The run sets `progress` (the stage's fraction done) before each step."""

    def __init__(self, ir: IR, slots: Mapping[tuple[str, str], int], limits: Mapping[str, int | None],
                 rate: float, recount: Callable[[], Mapping[str, int]]) -> None:
        self.limits = {name: limit for name, limit in limits.items() if limit is not None}
        self.rate, self.recount = rate, recount
        self.multipliers = {name: 0.0 for name in self.limits}
        self.last: dict[str, float] = {}  # the cost at the last count
        self.progress, self.counted_at = 0.0, None  # the stage's progress now, and at the last count
        edges = {edge.name: edge for edge in ir.edges.values()}
        by_edge: dict[str, list[int]] = {}
        for (edge, _task), slot in slots.items():
            by_edge.setdefault(edge, []).append(slot)
        added = added_by_each_input(ir)
        costs = {"macs": lambda edge: edge_macs(ir, edge), "parameters": lambda edge: parameter_count(edge.op)}
        # each slot's share of its edge's cost: the edge's cost over the number of its tasks' gates
        self.slot_costs = {name: torch.zeros(len(slots), dtype=torch.float64) for name in self.limits}
        for name in self.limits:
            for edge, members in by_edge.items():
                cost = costs[name](edges[edge]) + added[name][edges[edge].dst]
                self.slot_costs[name][members] = cost / len(members)

    def penalty(self, slot_values: Tensor) -> Tensor:
        """μ_k · Σ_e c_e,k · mean_t p_e,t / B_k over the limits the network exceeded at the last count."""
        total = slot_values.new_zeros(())
        for name, limit in self.limits.items():
            if self.multipliers[name] > 0 and self.last.get(name, 0.0) > limit:
                weights = self.slot_costs[name].to(slot_values)
                total = total + self.multipliers[name] * (weights * slot_values).sum() / limit
        return total

    def update(self) -> None:
        """Count the network's cost, and move the multipliers, once every 1/COUNTS of the stage."""
        if self.counted_at is not None and self.progress - self.counted_at < 1.0 / COUNTS:
            return
        elapsed = 0.0 if self.counted_at is None else self.progress - self.counted_at
        self.counted_at = self.progress
        self.last = {name: float(cost) for name, cost in self.recount().items() if name in self.limits}
        for name, limit in self.limits.items():
            overshoot = self.last[name] / limit - 1.0
            self.multipliers[name] = max(0.0, self.multipliers[name] + self.rate * elapsed * overshoot)

    def summary(self) -> dict[str, Any]:
        """The multipliers, and the cost against each limit at the last count (metrics.json)."""
        return {"rate": self.rate, "limits": self.limits, "multipliers": dict(self.multipliers),
                "cost": dict(self.last)}

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": dict(self.multipliers), "last": dict(self.last), "counted_at": self.counted_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.multipliers.update(state.get("multipliers", {}))
        self.last.update(state.get("last", {}))
        self.counted_at = state.get("counted_at")
