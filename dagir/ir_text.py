"""A readable text form of an IR, for `--print-between-passes` and for reading dumps by eye."""
from __future__ import annotations

from .gates import edge_gate
from .ir import IR


def format_ir(ir: IR) -> str:
    """One line per node, then its incoming edges with their ops and per-task gates, then the
    categorical decisions with their options' probabilities per task.

    >>> from dagir.ir import IR, Node, TensorType
    >>> ir = IR("tiny", []); ir.add_node(Node("input", "input", TensorType((4,))))
    >>> print(format_ir(ir).splitlines()[1])
      input: input [4]
    """
    restriction = "full DAG" if ir.max_span is None else f"max_span={ir.max_span}"
    lines = [f"ir {ir.name!r} tasks={ir.task_names} {restriction} after {ir.provenance[-1:] or ['nothing']}"]
    incoming, decided = ir.in_edges(), ir.decision_of_edge()
    for name in ir.topological_order():
        node = ir.nodes[name]
        owner = f" task={node.task}" if node.task else ""
        op = f" op={node.op}" if node.op else ""
        where = f" stage={node.stage}" if node.stage is not None else ""
        lines.append(f"  {name}: {node.kind} {node.type}{where}{owner}{op}")
        for edge in incoming[name]:
            states = []
            for task, state in edge.tasks.items():
                text = task
                gate = edge_gate(decided.get((edge.src, edge.dst)), (edge.src, edge.dst), task)
                if gate is not None:
                    text += f"={gate:.2f}"
                if state.keep is False:
                    text += "(dropped)"
                states.append(text)
            lines.append(f"    <- {edge.src} [{edge.kind}] {edge.op or 'op?'} tasks: {' '.join(states)}")
    for decision in ir.decisions.values():
        if decision.kind != "categorical":
            continue
        options = " | ".join(",".join(f"{src}->{dst}" for src, dst in option) or "-" for option in decision.options)
        lines.append(f"  decision {decision.name} ({decision.scope}): {options}")
        for task in decision.tasks:
            shown = " ".join(f"{p:.2f}" for p in decision.probabilities(task))
            chosen = "" if decision.chosen is None else f" chosen={decision.chosen[task]}"
            lines.append(f"    {task}: {shown}{chosen}")
    return "\n".join(lines)
