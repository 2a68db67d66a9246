"""A reference evaluator: the DESIGN §4 equations computed straight from the IR, in plain Python.

It exists to test the lowering. It walks the IR itself — tasks, edges, `Edge.is_active`, node
ownership — and computes every gate from the IR's logits (never through `GateTable`), so the only
thing it shares with the generated module is the op and aggregation modules, looked up by name:

    outputs = evaluate_reference(ir, lower_supernet(ir), x, tau=0.5, mode="soft")
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dagir.ir import IR, Edge

from .torch_supernet import MISSING_LOGIT, aggregation_module_name, node_op_module_name


def reached_nodes(ir: IR, task: str) -> set[str]:
    """Nodes holding a state for `task`: the input, and every node an active edge reaches from a
    node that holds the state the edge reads (a task-owned source is read in its owner's state)."""
    holds = {(ir.input_node().name, t) for t in ir.task_names}
    incoming = ir.in_edges()
    for name in ir.topological_order():
        node = ir.nodes[name]
        for owner in ir.task_names if node.task is None else [node.task]:
            if any(edge.is_active(owner) and (edge.src, ir.nodes[edge.src].task or owner) in holds
                   for edge in incoming[name]):
                holds.add((name, owner))
    return {name for name, owner in holds if owner == task}


def gate_value(edge: Edge, task: str, *, tau: float, mode: str, like: Tensor) -> Tensor | float:
    if not edge.gated or mode == "ones":
        return 1.0
    logit = edge.tasks[task].gate_logit
    logit = MISSING_LOGIT if logit is None else logit
    if mode == "hard":
        return 1.0 if logit >= 0 else 0.0
    if mode == "soft":
        return torch.sigmoid(torch.tensor(logit / tau, dtype=like.dtype, device=like.device))
    raise ValueError(f"unknown gate mode {mode!r}")


def evaluate_reference(ir: IR, modules: nn.Module, x: Tensor, *, tau: float = 1.0,
                       mode: str = "soft") -> dict[str, Tensor]:
    """Every task's output for input batch `x`, using the op modules of `modules` (a lowered
    supernet) by name: `edge_<src>_<dst>`, `node_<name>` (aggregation), `head_<task>` / `op_<name>`."""
    incoming = ir.in_edges()
    reached = {task: reached_nodes(ir, task) for task in ir.task_names}
    memo: dict[tuple[str, str], Tensor] = {}

    def state(name: str, task: str) -> Tensor:
        """h_name^task; a task-owned node holds its owner's state whoever reads it."""
        node = ir.nodes[name]
        task = node.task or task
        if node.kind == "input":
            return x
        if (name, task) in memo:
            return memo[(name, task)]
        terms: dict[str, Tensor] = {}
        for edge in incoming[name]:
            source_task = ir.nodes[edge.src].task or task
            if edge.is_active(task) and edge.src in reached[source_task]:
                output = modules.get_submodule(edge.name)(state(edge.src, task))
                terms[edge.name] = gate_value(edge, task, tau=tau, mode=mode, like=output) * output
        if node.aggregation == "sum":
            value = sum(terms.values())
        else:
            aggregate = modules.get_submodule(aggregation_module_name(node))
            value = aggregate([terms.get(edge.name) for edge in incoming[name]])
        if node.op is not None:
            value = modules.get_submodule(node_op_module_name(node))(value)
        memo[(name, task)] = value
        return value

    return {task: state(ir.head_of(task).name, task) for task in ir.task_names}
