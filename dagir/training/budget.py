"""The budget held inside the search (`search.budget.search_rate`, DESIGN §4 "a MACs or parameter budget").

`fit-budget` meets `search.budget` after the search by removing the edges of least flow; where the
supernet costs many times the budget (task copies beside every stage: 1.79M parameters against 269k
on MultiMNIST) it removes most of what the gates kept, and the search chose none of it. Held inside
the search, the budget is a term of the architecture loss with a multiplier μ per limit (MACs,
parameters), raised by dual ascent while the network the gates give now costs more than the limit:

    loss += Σ_k μ_k · C_k(p) / B_k   (over the limits C_k(hard) exceeds)
    μ_k ← max(0, μ_k + rate · Δ · (C_k(hard) / B_k − 1))   each architecture step

Δ is the fraction of the search stage since the last update, so `rate` is how far μ climbs over the
whole search per unit of overshoot, whatever the number of steps (a search of 50 architecture steps
and one of 500 hold the budget alike).

`C_k(p)` is the cost under the gates' probabilities p (deterministic: σ(logit/τ)): a fixed part (what
no gate governs: stem, node ops, heads) plus, for each gated edge e of cost c_e (its op and its share
of its node's aggregation), c_e times the mean of its tasks' gates (every task's gate on an edge is
pushed alike, and the edge costs nothing once all of them close). `C_k(hard)` counts the network the
discretised gates (p ≥ 1/2) give, as `discretize` keeps it: every open edge and each task's path of
largest gate product, of which only what lies on an input-to-head path over the tasks' states costs
anything. The term pushes only while a limit is exceeded; costly edges get the largest push, and the
task losses choose which of them stay open. Each kept edge is counted once, as `share-states`
computes it where the tasks' states agree (the tests check equality there against the compact
network's cost); where they differ the compact network computes an edge once per state, so
`fit-budget` still checks the exact cost after the search.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from ..compact_cost import aggregation_macs, edge_macs
from ..ir import IR
from ..task_states import state_owner
from ..ops import aggregation_parameter_count, mac_count, parameter_count

COSTS = ("macs", "parameters")


def open_network_cost(ir: IR) -> dict[str, int]:
    """What the network of `ir` with every edge kept and every state shared costs, as
    `dagir.compact_cost` counts a compact network: each edge op, node op and aggregation once."""
    incoming = ir.in_edges()
    macs = sum(edge_macs(ir, edge) for edge in ir.edges.values())
    parameters = sum(parameter_count(edge.op) for edge in ir.edges.values())
    for name, node in ir.nodes.items():
        inputs, width = len(incoming.get(name, [])), ir.query_width(node)
        macs += aggregation_macs(node.aggregation, node.input_type, inputs, width) + mac_count(node.op, node.input_type)
        parameters += (aggregation_parameter_count(node.aggregation, node.input_type, inputs, width, node.nddr_norm)
                       + parameter_count(node.op))
    return {"macs": macs, "parameters": parameters}


def aggregation_costs(ir: IR) -> dict[str, dict[str, tuple[float, float]]]:
    """Each node's aggregation as (what each in-edge adds, what it costs with any in-edge), per quantity:
    the last in-edge's marginal cost, and the rest of the cost over all in-edges. Exact for `sum` and
    `nddr` (linear in its inputs, plus a batch norm); `gate`'s routing layer grows faster than linearly,
    so a node that keeps few of its inputs is overcounted."""
    incoming = ir.in_edges()
    costs: dict[str, dict[str, tuple[float, float]]] = {"macs": {}, "parameters": {}}
    for name, node in ir.nodes.items():
        inputs, width = len(incoming.get(name, [])), ir.query_width(node)
        counts = {"macs": lambda k: aggregation_macs(node.aggregation, node.input_type, k, width),
                  "parameters": lambda k: aggregation_parameter_count(node.aggregation, node.input_type, k, width,
                                                                      node.nddr_norm)}
        for quantity, count in counts.items():
            whole = count(inputs)
            each = whole - count(inputs - 1) if inputs else 0
            costs[quantity][name] = (each, whole - inputs * each)
    return costs


class SearchBudget:
    """The budget term of the architecture loss and its multipliers. `slots`: (edge name, task) ->
    gate slot, `limits`: {"macs"/"parameters": limit or None}, `rate`: the dual ascent rate per search
    stage. The run sets `progress` (the stage's fraction done) before each step."""

    def __init__(self, ir: IR, slots: Mapping[tuple[str, str], int], limits: Mapping[str, int | None],
                 rate: float) -> None:
        self.limits = {name: limit for name, limit in limits.items() if limit is not None}
        self.rate = rate
        self.multipliers = {name: 0.0 for name in self.limits}
        self.progress = self.updated_at = 0.0
        edges = {edge.name: edge for edge in ir.edges.values()}
        by_edge: dict[str, list[int]] = {}
        for (edge, _task), slot in slots.items():
            by_edge.setdefault(edge, []).append(slot)
        names = sorted(by_edge)
        width = max((len(members) for members in by_edge.values()), default=0)
        dummy = len(slots)  # a slot that is always 0, to pad edges serving fewer tasks
        self.members = torch.tensor([by_edge[name] + [dummy] * (width - len(by_edge[name])) for name in names],
                                    dtype=torch.long).view(len(names), width)
        self.member_count = torch.tensor([len(by_edge[name]) for name in names], dtype=torch.float64)
        each = {"macs": [edge_macs(ir, edges[name]) for name in names],
                "parameters": [parameter_count(edges[name].op) for name in names]}
        aggregations = aggregation_costs(ir)
        gated_nodes = {edges[name].dst for name in names}  # whose aggregation some gate may switch off
        self.node_costs = {quantity: {node: aggregations[quantity][node][1] for node in gated_nodes}
                           for quantity in self.limits}
        for quantity, by_node in aggregations.items():
            each[quantity] = [cost + by_node[edges[name].dst][0] for name, cost in zip(names, each[quantity])]
        opened = open_network_cost(ir)
        self.edge_costs = {name: torch.tensor(each[name], dtype=torch.float64) for name in self.limits}
        self.fixed = {name: opened[name] - sum(each[name]) - sum(self.node_costs[name].values())
                      for name in self.limits}
        self.last: dict[str, float] = {}  # the discretised network's estimated cost at the last update
        self.ir = ir
        position = {name: index for index, name in enumerate(names)}
        order = {node: index for index, node in enumerate(ir.topological_order())}
        self.pairs = sorted(((edge, task) for edge in ir.edges.values() for task in ir.task_names
                             if edge.is_active(task) and state_owner(ir, edge.dst, task) == task),
                            key=lambda pair: order[pair[0].src])
        self.pair_info = [(self._state(pair[0].src, pair[1]), (pair[0].dst, pair[1]),
                           slots.get((pair[0].name, pair[1])), position.get(pair[0].name)) for pair in self.pairs]

    def _state(self, node: str, task: str) -> tuple[str, str]:
        return node, state_owner(self.ir, node, task)

    def used(self, slot_values: Tensor) -> Tensor:
        """For each gated edge, the mean of its tasks' gates: 1 where every task keeps it. (Not the
        chance that some task uses it, 1 − Π_t (1 − p_e,t): that has no gradient on one task's gate while
        another task's is open, so two open gates on an edge would hold each other open.)"""
        padded = torch.cat([slot_values, slot_values.new_zeros(1)])[self.members.to(slot_values.device)]
        return padded.sum(dim=1) / self.member_count.to(padded)

    def cost(self, slot_values: Tensor) -> dict[str, Tensor]:
        """The expected cost of each limited quantity under the gate values `slot_values` (every
        aggregation counted as if its node were kept)."""
        used = self.used(slot_values)
        return {name: self.fixed[name] + sum(self.node_costs[name].values())
                + (self.edge_costs[name].to(used) * used).sum() for name in self.limits}

    def penalty(self, probabilities: Tensor) -> Tensor:
        """Σ_k μ_k · C_k(p) / B_k over the limits the discretised gates exceeded at the last update: the
        term the architecture step adds. Within a limit it pushes nothing, so the gates stop closing
        there and the squeeze alone decides the rest (μ_k keeps what it reached, to push at once if
        the gates reopen past the limit)."""
        total = probabilities.new_zeros(())
        over = [name for name in self.limits
                if self.multipliers[name] > 0 and self.last.get(name, math.inf) > self.limits[name]]
        if not over:
            return total
        costs = self.cost(probabilities)
        for name in over:
            total = total + self.multipliers[name] * costs[name] / self.limits[name]
        return total

    def live(self, hard_values: Tensor, probabilities: Tensor | None = None) -> tuple[list[int], set[str]]:
        """The gated edges (their indices) the network the discretised gates `hard_values` give keeps on
        some input-to-head path, and the nodes such paths pass through. Each task also keeps its path of
        largest gate product under `probabilities`, where they are given, as `discretize` does."""
        values = hard_values.tolist()
        kept = {i for i, (_, _, slot, _) in enumerate(self.pair_info) if slot is None or values[slot] >= 0.5}
        if probabilities is not None:
            kept |= self._best_paths(probabilities)
        edges, states = self._on_paths(sorted(kept))
        return sorted(edges), {node for node, _ in states}

    def _on_paths(self, kept: list[int]) -> tuple[set[int], set[tuple[str, str]]]:
        """Of the (edge, task) pairs `kept`, the gated edges on an input-to-head path over the tasks'
        states (a task reads another owner's node as that owner computes it), and those states."""
        info = self.pair_info
        reached = {(self.ir.input_node().name, task) for task in self.ir.task_names}
        for i in kept:  # by the source's topological position
            source, target, _, _ = info[i]
            if source in reached:
                reached.add(target)
        reaches_head = {(self.ir.head_of(task).name, task) for task in self.ir.task_names} & reached
        for i in reversed(kept):  # every edge out of a state before any edge into it
            source, target, _, _ = info[i]
            if target in reaches_head and source in reached:
                reaches_head.add(source)
        edges = {info[i][3] for i in kept
                 if info[i][3] is not None and info[i][0] in reaches_head and info[i][1] in reaches_head}
        return edges, reaches_head

    def _best_paths(self, probabilities: Tensor) -> set[int]:
        """The (edge, task) pairs on each task's input-to-head path of largest gate product: one
        max-product sweep over the states in log space, as `dagir.flow.best_path` finds it (ties aside)."""
        values = probabilities.clamp_min(1e-12).log().tolist()
        score: dict[tuple[str, str], float] = {(self.ir.input_node().name, t): 0.0 for t in self.ir.task_names}
        came_from: dict[tuple[str, str], int] = {}
        for i, (source, target, slot, _) in enumerate(self.pair_info):
            if source in score:
                candidate = score[source] + (0.0 if slot is None else values[slot])
                if candidate > score.get(target, -math.inf):
                    score[target], came_from[target] = candidate, i
        chosen: set[int] = set()
        for task in self.ir.task_names:
            state = (self.ir.head_of(task).name, task)
            while state in came_from:
                chosen.add(came_from[state])
                state = self.pair_info[came_from[state]][0]
        return chosen

    def hard_cost(self, hard_values: Tensor, probabilities: Tensor | None = None) -> dict[str, float]:
        """What the network the discretised gates `hard_values` give costs, each edge counted once."""
        edges, nodes = self.live(hard_values, probabilities)
        return {name: self.fixed[name] + float(self.edge_costs[name][edges].sum())
                + sum(cost for node, cost in self.node_costs[name].items() if node in nodes) for name in self.limits}

    def update(self, hard_values: Tensor, probabilities: Tensor | None = None) -> None:
        """One dual ascent step from the discretised gates (0 or 1 per slot), over the stage's progress
        since the last; `probabilities` choose the path a task left with none keeps."""
        elapsed, self.updated_at = max(self.progress - self.updated_at, 0.0), self.progress
        for name, cost in self.hard_cost(hard_values, probabilities).items():
            self.last[name] = cost
            overshoot = cost / self.limits[name] - 1.0
            self.multipliers[name] = max(0.0, self.multipliers[name] + self.rate * elapsed * overshoot)

    def summary(self) -> dict[str, Any]:
        """The multipliers and the last estimated cost against each limit (metrics.json)."""
        return {"rate": self.rate, "limits": self.limits, "multipliers": dict(self.multipliers),
                "estimated_cost": dict(self.last)}

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": dict(self.multipliers), "last": dict(self.last), "updated_at": self.updated_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.multipliers.update(state.get("multipliers", {}))
        self.last.update(state.get("last", {}))
        self.updated_at = float(state.get("updated_at", 0.0))
