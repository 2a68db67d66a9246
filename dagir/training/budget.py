"""The budget held inside the search (`search.budget.search_rate`, DESIGN §4 "a MACs or parameter budget").

`fit-budget` meets `search.budget` after the search by removing the edges of least flow; where the
supernet costs many times the budget (task copies beside every stage: 1.79M parameters against 269k
on MultiMNIST) it removes most of what the gates kept, and the search chose none of it. Held inside
the search, the budget is a term of the architecture loss with a multiplier μ per limit (MACs,
parameters), raised by dual ascent while the network the gates give now costs more than the limit:

    loss += Σ_k μ_k · C_k(p) / B_k,    μ_k ← max(0, μ_k + rate · (C_k(hard) / B_k − 1)) each architecture step

`C_k(p)` is the expected cost under the gates' probabilities p (deterministic: σ(logit/τ)): a fixed part
(what no gate governs: stem, nodes, heads) plus, for each gated edge e of cost c_e, c_e times the
chance that some task uses it, 1 − Π_t (1 − p_e,t). `C_k(hard)` counts the network the gates'
discretisation (p ≥ 1/2) gives: the fixed part plus every edge some task keeps on one of its
input-to-head paths (an open edge after a closed one computes nothing the task reads, and the
post-search passes drop it). So the multiplier grows while the discretised network is over budget and
shrinks, to 0, once it is within; costly edges get the largest push, and the task losses choose
which of them stay open. The estimate counts an edge once for all the tasks it serves, as
`share-states` does where their states agree; where they differ the compact network computes an edge
once per state, so `fit-budget` still checks the exact cost after the search.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..compact_cost import aggregation_macs, compact_macs, compact_parameters, edge_macs
from ..ir import IR
from ..ops import aggregation_parameter_count, parameter_count

COSTS = ("macs", "parameters")


def open_network_cost(ir: IR) -> dict[str, int]:
    """What the compact network of `ir` costs with every gated edge kept for every task it may serve
    and every state shared: the fixed part plus each edge once."""
    from ..pass_manager import PassManager, parse_pipeline

    opened = PassManager(parse_pipeline(["discretize", "share-states"], {"discretize": {"threshold": 1e-9}},
                                        needs_build=False)).run(ir)
    return {"macs": compact_macs(opened)["total"], "parameters": compact_parameters(opened)["total"]}


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
    gate slot, `limits`: {"macs"/"parameters": limit or None}, `rate`: the dual ascent step."""

    def __init__(self, ir: IR, slots: Mapping[tuple[str, str], int], limits: Mapping[str, int | None],
                 rate: float) -> None:
        self.limits = {name: limit for name, limit in limits.items() if limit is not None}
        self.rate = rate
        self.multipliers = {name: 0.0 for name in self.limits}
        edges = {edge.name: edge for edge in ir.edges.values()}
        by_edge: dict[str, list[int]] = {}
        for (edge, _task), slot in slots.items():
            by_edge.setdefault(edge, []).append(slot)
        names = sorted(by_edge)
        width = max((len(members) for members in by_edge.values()), default=0)
        dummy = len(slots)  # a slot that is always 0, to pad edges serving fewer tasks
        self.members = torch.tensor([by_edge[name] + [dummy] * (width - len(by_edge[name])) for name in names],
                                    dtype=torch.long).view(len(names), width)
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
        position = {name: index for index, name in enumerate(names)}
        order = {node: index for index, node in enumerate(ir.topological_order())}
        self.routes = {task: self._route(ir, task, slots, position, order) for task in ir.task_names}

    @staticmethod
    def _route(ir: IR, task: str, slots: Mapping[tuple[str, str], int], position: Mapping[str, int],
               order: Mapping[str, int]) -> tuple[str, str, list[tuple[str, str, int | None, int | None]]]:
        """Task `task`'s input, head and edges (source, destination, gate slot or None when ungated,
        gated edge index or None) by their source's topological position."""
        edges = sorted((edge for edge in ir.edges.values() if edge.is_active(task)), key=lambda e: order[e.src])
        return (ir.input_node().name, ir.head_of(task).name,
                [(e.src, e.dst, slots.get((e.name, task)), position.get(e.name)) for e in edges])

    def used(self, slot_values: Tensor) -> Tensor:
        """For each gated edge, the chance that some task uses it: 1 − Π_t (1 − p_e,t)."""
        padded = torch.cat([slot_values, slot_values.new_zeros(1)])[self.members.to(slot_values.device)]
        return 1 - (1 - padded).prod(dim=1)

    def cost(self, slot_values: Tensor) -> dict[str, Tensor]:
        """The expected cost of each limited quantity under the gate values `slot_values` (every
        aggregation counted as if its node were kept)."""
        used = self.used(slot_values)
        return {name: self.fixed[name] + sum(self.node_costs[name].values())
                + (self.edge_costs[name].to(used) * used).sum() for name in self.limits}

    def penalty(self, probabilities: Tensor) -> Tensor:
        """Σ_k μ_k · C_k(p) / B_k: the term the architecture step adds (0 while every μ is 0)."""
        total = probabilities.new_zeros(())
        if not any(self.multipliers.values()):
            return total
        for name, cost in self.cost(probabilities).items():
            total = total + self.multipliers[name] * cost / self.limits[name]
        return total

    def live(self, hard_values: Tensor) -> tuple[list[int], set[str]]:
        """The gated edges (their indices) some task keeps on an input-to-head path when each slot is
        open where `hard_values` is 1, and the nodes such paths pass through."""
        values = hard_values.tolist()
        edges: set[int] = set()
        nodes: set[str] = set()
        for start, head, route in self.routes.values():
            kept = [(src, dst, index) for src, dst, slot, index in route if slot is None or values[slot] >= 0.5]
            reached, reaches_head = {start}, {head}
            for src, dst, _ in kept:  # by the source's topological position
                if src in reached:
                    reached.add(dst)
            for src, dst, _ in reversed(kept):  # every edge out of a node before any edge into it
                if dst in reaches_head:
                    reaches_head.add(src)
            on_path = reached & reaches_head
            nodes |= on_path
            edges.update(index for src, dst, index in kept if index is not None and src in on_path and dst in on_path)
        return sorted(edges), nodes

    def hard_cost(self, hard_values: Tensor) -> dict[str, float]:
        """What the network the discretised gates `hard_values` give costs, each edge counted once."""
        edges, nodes = self.live(hard_values)
        return {name: self.fixed[name] + float(self.edge_costs[name][edges].sum())
                + sum(cost for node, cost in self.node_costs[name].items() if node in nodes) for name in self.limits}

    def update(self, hard_values: Tensor) -> None:
        """One dual ascent step from the discretised gates (0 or 1 per slot)."""
        for name, cost in self.hard_cost(hard_values).items():
            self.last[name] = cost
            self.multipliers[name] = max(0.0, self.multipliers[name] + self.rate * (cost / self.limits[name] - 1.0))

    def summary(self) -> dict[str, Any]:
        """The multipliers and the last estimated cost against each limit (metrics.json)."""
        return {"rate": self.rate, "limits": self.limits, "multipliers": dict(self.multipliers),
                "estimated_cost": dict(self.last)}

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": dict(self.multipliers), "last": dict(self.last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.multipliers.update(state.get("multipliers", {}))
        self.last.update(state.get("last", {}))
