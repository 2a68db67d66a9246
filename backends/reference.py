"""A reference evaluator: the DESIGN §4 equations computed straight from the IR, in plain Python.

It exists to test the lowering. It walks the IR itself — tasks, edges, `Edge.is_active`, node
ownership (`dagir.task_states`) — and computes every gate from the IR's decisions with
`dagir.gates` (never through `GateTable`), so the only thing it shares with the generated module is
the op and aggregation modules, looked up by name:

    outputs = evaluate_reference(ir, lower_supernet(ir), x, tau=0.5, mode="soft")

`mode="fixed"` takes the option values of every decision from `fixed` ({decision: {owner: values}}),
as a drawn sample (relaxed-bernoulli, REINFORCE) gives them.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from torch import Tensor, nn

from dagir import gates
from dagir.ir import IR, SHARED, SOFTMAX_AGGREGATIONS, Edge
from dagir.task_states import reached_nodes, state_owner

from .torch_supernet import aggregation_module_name, node_op_module_name


def gate_value(ir: IR, edge: Edge, task: str, *, tau: float, mode: str,
               fixed: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> float:
    """`task`'s gate on `edge`, from the decision governing it (1 where none does)."""
    decision = ir.decision_of_edge().get((edge.src, edge.dst))
    if decision is None or task not in decision.tasks or mode == "ones":
        return 1.0
    logits = decision.logits_of(task)
    if mode == "hard":
        values = gates.hard_values(decision.kind, logits)
    elif mode == "soft":
        values = gates.probabilities(decision.kind, logits, tau)
    elif mode == "fixed":
        values = list(fixed[decision.name][SHARED if decision.scope == "shared" else task])
    else:
        raise ValueError(f"unknown gate mode {mode!r}")
    if decision.kind == "bernoulli":
        return float(values[0])
    return math.fsum(values[k] for k in decision.options_with((edge.src, edge.dst)))


def evaluate_reference(ir: IR, modules: nn.Module, x: Tensor, *, tau: float = 1.0, mode: str = "soft",
                       fixed: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> dict[str, Tensor]:
    """Every task's output for input batch `x`, using the op modules of `modules` (a lowered
    supernet) by name: `edge_<src>_<dst>`, `node_<name>` (aggregation), `head_<task>` / `op_<name>`."""
    incoming = ir.in_edges()
    reached = {task: reached_nodes(ir, task) for task in ir.task_names}
    memo: dict[tuple[str, str], Tensor] = {}

    def state(name: str, task: str) -> Tensor:
        """h_name^task; a task-owned node holds its owner's state whoever reads it."""
        node = ir.nodes[name]
        task = state_owner(ir, name, task)
        if node.kind == "input":
            return x
        if (name, task) in memo:
            return memo[(name, task)]
        terms: dict[str, Tensor] = {}
        gates: dict[str, float] = {}
        for edge in incoming[name]:
            source_task = state_owner(ir, edge.src, task)
            if edge.is_active(task) and edge.src in reached[source_task]:
                output = modules.get_submodule(edge.name)(state(edge.src, task))
                gates[edge.name] = gate_value(ir, edge, task, tau=tau, mode=mode, fixed=fixed)
                terms[edge.name] = gates[edge.name] * output
        if node.aggregation == "sum":
            value = sum(terms.values())
        else:
            aggregate = modules.get_submodule(aggregation_module_name(node))
            slots = [terms.get(edge.name) for edge in incoming[name]]
            if node.aggregation in SOFTMAX_AGGREGATIONS:  # a gate of exactly 0 takes its edge out of the softmax
                value = aggregate(slots, [gates.get(edge.name) for edge in incoming[name]],
                                  x if node.query == "input" else None)
            else:
                value = aggregate(slots)
        if node.op is not None:
            value = modules.get_submodule(node_op_module_name(node))(value)
        memo[(name, task)] = value
        return value

    return {task: state(ir.head_of(task).name, task) for task in ir.task_names}
