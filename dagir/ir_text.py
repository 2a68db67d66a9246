"""A readable text form of an IR, for `--print-between-passes` and for reading dumps by eye."""
from __future__ import annotations

import math

from .ir import IR


def format_ir(ir: IR) -> str:
    """One line per node, then its incoming edges with their ops and per-task gates.

    >>> from dagir.ir import IR, Node, TensorType
    >>> ir = IR("tiny", []); ir.add_node(Node("input", "input", TensorType((4,))))
    >>> print(format_ir(ir).splitlines()[1])
      input: input [4]
    """
    restriction = "full DAG" if ir.max_span is None else f"max_span={ir.max_span}"
    lines = [f"ir {ir.name!r} tasks={ir.task_names} {restriction} after {ir.provenance[-1:] or ['nothing']}"]
    incoming = ir.in_edges()
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
                if state.gate_logit is not None:
                    text += f"={1 / (1 + math.exp(-state.gate_logit)):.2f}"
                if state.keep is False:
                    text += "(dropped)"
                states.append(text)
            lines.append(f"    <- {edge.src} [{edge.kind}] {edge.op or 'op?'} tasks: {' '.join(states)}")
    return "\n".join(lines)
