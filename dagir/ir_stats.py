"""Counting an IR without lowering it: parameters, gates, multiply-accumulates, edges per task."""
from __future__ import annotations

from .compact_cost import aggregation_macs
from .ir import IR
from .ops import aggregation_parameter_count, mac_count, parameter_count


def _in_degree(ir: IR) -> dict[str, int]:
    in_degree = {name: 0 for name in ir.nodes}
    for _, dst in ir.edges:
        in_degree[dst] += 1
    return in_degree


def count_parameters(ir: IR) -> int:
    """Network parameters (Θ and heads, not gates) the IR's ops and aggregations hold."""
    total = sum(parameter_count(e.op) for e in ir.edges.values())
    total += sum(parameter_count(n.op) for n in ir.nodes.values())
    in_degree = _in_degree(ir)
    total += sum(aggregation_parameter_count(n.aggregation, n.input_type, in_degree[n.name], ir.query_width(n),
                                             n.nddr_norm)
                 for n in ir.nodes.values() if n.kind == "hidden")
    return total


def count_gates(ir: IR) -> int:
    """Gate logits: one per (gated edge, task served)."""
    return sum(len(e.tasks) for e in ir.edges.values() if e.gated)


def count_macs(ir: IR) -> int:
    """Multiply-accumulates of one sample through every edge op, node op and aggregation once (the
    shared supernet; an aggregation over all its in-edges, as a supernet with its dropped edges
    masked to 0 still computes them: MTL-NAS's public code evaluates that way)."""
    total = sum(mac_count(e.op, ir.nodes[e.src].type) for e in ir.edges.values())
    in_degree = _in_degree(ir)
    total += sum(aggregation_macs(n.aggregation, n.input_type, in_degree[n.name], ir.query_width(n))
                 for n in ir.nodes.values() if n.kind == "hidden")
    return total + sum(mac_count(n.op, n.input_type) for n in ir.nodes.values())


def edges_per_task(ir: IR) -> dict[str, int]:
    return {t: sum(1 for e in ir.edges.values() if e.is_active(t)) for t in ir.task_names}


def pass_summary(ir: IR) -> dict[str, object]:
    """The row the compile summary prints after each pass."""
    summary = ir.summary()
    return {**summary, "parameters": count_parameters(ir), "gates": count_gates(ir)}
