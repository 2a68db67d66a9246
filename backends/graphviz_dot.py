"""The graphviz backend: DOT text for any IR, rendered to SVG/PNG when the `dot` program is installed.

Hidden nodes sit in one cluster per stage (labelled with the stage's tensor type), and task-owned
hidden nodes (MTL-NAS's per-task chains) in a cluster per task inside it. Edges are styled by kind
and coloured per task; an edge that serves every task with the same weight is drawn once, in grey,
and any other edge once per task it is active for, in that task's colour. Pen width shows the
task's gate `σ(logit)` or its share of the task's flow. Edges dropped for every task are drawn faint.

>>> dot_text = to_dot(ir)                                   # doctest: +SKIP
>>> render(dot_text, Path("out/passes/05-attach-gates"))    # doctest: +SKIP
[PosixPath('out/passes/05-attach-gates.dot'), PosixPath('out/passes/05-attach-gates.svg')]
"""
from __future__ import annotations

import html
import shutil
import subprocess
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from dagir.gates import edge_gate
from dagir.ir import IR, Decision, Edge, Node, edge_name

EdgeWidths = Literal["auto", "gate", "flow", "none"]
FlowMap = Mapping[str, Any]  # task -> {(src, dst) or edge name: flow}, or task -> dagir.flow.TaskFlow

# Tableau 10 without its grey, which means "shared by all tasks" here; stable: task i gets colour i.
TASK_PALETTE: tuple[str, ...] = ("#4E79A7", "#F28E2B", "#E15759", "#59A14F", "#B07AA1",
                                 "#76B7B2", "#EDC948", "#FF9DA7", "#9C755F")
SHARED_COLOUR = "#7F7F7F"
DROPPED_COLOUR = "#D9D9D9"
EDGE_STYLES: dict[str, str] = {"stem": "solid", "internal": "solid", "read_in": "dashed",
                               "read_out": "dotted", "cross": "bold"}
NODE_SHAPES: dict[str, str] = {"input": "invhouse", "stem": "box3d", "hidden": "ellipse",
                               "head": "doubleoctagon"}
MIN_PENWIDTH, MAX_PENWIDTH = 0.4, 4.0
RENDER_EDGE_LIMIT = 3000
RENDER_TIMEOUT_S = 120.0


def task_colours(ir: IR) -> dict[str, str]:
    """The colour of every task, by its position in `ir.tasks` (so it is the same in every pass)."""
    return {task: TASK_PALETTE[i % len(TASK_PALETTE)] for i, task in enumerate(ir.task_names)}


def to_dot(ir: IR, *, edge_widths: EdgeWidths = "auto", flows: FlowMap | None = None) -> str:
    """DOT text drawing `ir`.

    `edge_widths`: `"gate"` scales each task's edge by `σ(gate_logit)` (width 1 where no logit is
    set), `"flow"` by the edge's flow for the task over the task's total flow (needs `flows`),
    `"none"` draws every edge at one width; `"auto"` is `"flow"` when `flows` is given, else `"gate"`.
    `flows` maps a task to a `dagir.flow.TaskFlow`, or to the flow `φ_e` through each edge keyed by
    `(src, dst)` or edge name; then the task's largest edge flow (the stem edge's, which every path
    crosses) counts as its total flow Φ.

    The IR need not verify: a broken IR is drawn as it is, so a failing pass can be inspected.
    """
    if edge_widths == "auto":
        edge_widths = "flow" if flows is not None else "gate"
    if edge_widths not in ("gate", "flow", "none"):
        raise ValueError(f"edge_widths must be 'auto', 'gate', 'flow' or 'none' (got {edge_widths!r})")
    if edge_widths == "flow" and flows is None:
        raise ValueError("edge_widths='flow' needs a flows mapping {task: {(src, dst): flow}}")
    colours = task_colours(ir)
    weigh = _edge_weigher(ir, edge_widths, flows)
    decided = ir.decision_of_edge()
    edge_lines = [line for key, edge in ir.edges.items()
                  for line in _edge_lines(edge, ir, colours, weigh, decided.get(key))]
    large = len(edge_lines) > 400

    lines = [f"digraph {_quote(ir.name or 'dagir')} {{"]
    lines.append(f"  graph [rankdir=LR, labelloc=t, labeljust=l, fontname=Helvetica, "
                 f"outputorder=edgesfirst, newrank=true, compound=true, "
                 f"nodesep={0.15 if large else 0.25}, ranksep={0.9 if large else 0.6}, "
                 f"label=<{_legend_html(ir, colours, edge_widths)}>];")
    lines.append(f"  node [fontname=Helvetica, fontsize={9 if large else 10}, style=filled, "
                 f"fillcolor=white, margin=\"0.06,0.03\"];")
    lines.append(f"  edge [arrowsize={0.4 if large else 0.6}];")
    lines.extend(_node_lines(ir, colours))
    lines.extend(edge_lines)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, path_without_suffix: Path, formats: Sequence[str] = ("svg",)) -> list[Path]:
    """Write `<path>.dot`, then `<path>.<format>` for each format the `dot` program can render.

    Rendering is skipped, with a warning, when `dot` is not installed, when the graph has more than
    `RENDER_EDGE_LIMIT` edges (layout time grows fast), or when `dot` fails or times out; the DOT
    text is always written. Returns the files written, the `.dot` file first.
    """
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    dot_path = base.with_name(base.name + ".dot")
    dot_path.write_text(dot_text, encoding="utf-8")
    written = [dot_path]
    if not formats:
        return written
    program = shutil.which("dot")
    if program is None:
        warnings.warn("graphviz `dot` is not installed: wrote DOT text only", RuntimeWarning, stacklevel=2)
        return written
    edge_count = sum(1 for line in dot_text.splitlines() if " -> " in line)
    if edge_count > RENDER_EDGE_LIMIT:
        warnings.warn(f"{dot_path}: {edge_count} edges (> {RENDER_EDGE_LIMIT}): not rendered, `dot` "
                      f"would be slow; render the .dot by hand if needed", RuntimeWarning, stacklevel=2)
        return written
    for fmt in formats:
        out_path = base.with_name(f"{base.name}.{fmt}")
        try:
            result = subprocess.run([program, f"-T{fmt}", "-o", str(out_path), str(dot_path)],
                                    capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            warnings.warn(f"{dot_path}: `dot -T{fmt}` took over {RENDER_TIMEOUT_S:.0f}s: not rendered",
                          RuntimeWarning, stacklevel=2)
            continue
        if result.returncode != 0:
            warnings.warn(f"{dot_path}: `dot -T{fmt}` failed: {result.stderr.strip()}",
                          RuntimeWarning, stacklevel=2)
            continue
        written.append(out_path)
    return written


# -- nodes ----------------------------------------------------------------------------------------
def _route_notes(ir: IR) -> dict[str, str]:
    """Per block with a categorical route decision: how many candidate routes it has and, once
    discretised, the route each task chose (the sources it reads)."""
    notes: dict[str, str] = {}
    for decision in ir.decisions.values():
        blocks = {dst for _, dst in decision.edges()}
        if decision.kind != "categorical" or len(blocks) != 1:
            continue
        text = f"{len(decision.options)} routes"
        for task, index in (decision.chosen or {}).items():
            sources = ", ".join(src for src, _ in decision.options[index]) or "-"
            text += f"\n{task} ← {sources}"
        notes[blocks.pop()] = text
    return notes


def _node_lines(ir: IR, colours: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    notes = _route_notes(ir)
    by_stage: dict[int, list[Node]] = defaultdict(list)
    loose: list[Node] = []
    for node in ir.hidden_nodes():
        (by_stage[node.stage] if node.stage is not None else loose).append(node)
    for node in ir.nodes.values():
        if node.kind != "hidden":
            loose.append(node)
    for stage in sorted(by_stage):
        members = by_stage[stage]
        types = sorted({str(n.type) for n in members})
        lines.append(f"  subgraph {_quote(f'cluster_stage_{stage}')} {{")
        lines.append(f"    graph [label={_quote(f'stage {stage} · ' + ' | '.join(types))}, "
                     f"style=\"rounded,filled\", fillcolor=\"#F4F6F8\", color=\"#B8C2CC\"];")
        by_task: dict[str | None, list[Node]] = defaultdict(list)
        for node in members:
            by_task[node.task].append(node)
        for node in by_task.pop(None, []):
            lines.append("    " + _node_line(node, colours, notes.get(node.name)))
        for task, owned in by_task.items():
            colour = colours.get(task, SHARED_COLOUR)
            lines.append(f"    subgraph {_quote(f'cluster_stage_{stage}_task_{task}')} {{")
            lines.append(f"      graph [label={_quote(f'task {task}')}, style=rounded, color={_quote(colour)}];")
            lines.extend("      " + _node_line(node, colours, notes.get(node.name)) for node in owned)
            lines.append("    }")
        lines.append("  }")
    lines.extend("  " + _node_line(node, colours, notes.get(node.name)) for node in loose)
    for kind, rank in (("input", "source"), ("head", "sink")):
        names = " ".join(_quote(n.name) for n in ir.nodes_of_kind(kind))
        if names:
            lines.append(f"  {{ rank={rank}; {names} }}")
    return lines


def _node_line(node: Node, colours: Mapping[str, str], note: str | None = None) -> str:
    shape = NODE_SHAPES.get(node.kind, "box")
    label = _node_label(node) + (f"\n{note}" if note else "")
    attrs = {"label": label, "shape": shape, "tooltip": _node_tooltip(node)}
    if node.kind in ("input", "stem"):
        attrs["fillcolor"] = "#E8E8E8"
    elif node.task is not None:
        colour = colours.get(node.task, SHARED_COLOUR)
        attrs["color"] = colour
        attrs["fillcolor"] = colour + "33"  # the task colour, light
        attrs["penwidth"] = "1.6"
    return f"{_quote(node.name)} [{_attr_list(attrs)}];"


def _node_label(node: Node) -> str:
    if node.kind == "head":
        op = node.op.name if node.op is not None else "head"
        return f"{node.name}\n{op} {node.input_type} → {node.type}"
    detail = f"{node.kind} {node.type}"
    if node.kind == "hidden" and node.aggregation != "sum":
        detail += f" · {node.aggregation}"
    return f"{node.name}\n{detail}"


def _node_tooltip(node: Node) -> str:
    parts = [f"{node.name}: {node.kind}", f"type {node.type}"]
    if node.in_type is not None:
        parts.append(f"in_type {node.in_type}")
    if node.op is not None:
        parts.append(f"op {node.op}")
    if node.task is not None:
        parts.append(f"task {node.task}")
    return "\n".join(parts)


# -- edges ----------------------------------------------------------------------------------------
def _edge_weigher(ir: IR, edge_widths: str, flows: FlowMap | None) -> Callable[[Edge, str], float]:
    """A function `(edge, task) -> weight in [0, 1]` for the chosen width mode."""
    if edge_widths == "none":
        return lambda edge, task: 1.0
    if edge_widths == "gate":
        decided = ir.decision_of_edge()

        def gate(edge: Edge, task: str) -> float:
            value = edge_gate(decided.get((edge.src, edge.dst)), (edge.src, edge.dst), task)
            return 1.0 if value is None else value
        return gate
    assert flows is not None
    names = {edge_name(src, dst): (src, dst) for src, dst in ir.edges}
    per_task: dict[str, dict[tuple[str, str], float]] = {}
    for task, by_edge in flows.items():
        total = getattr(by_edge, "total", None)  # a `dagir.flow.TaskFlow` knows its total
        by_edge = getattr(by_edge, "edge", by_edge)
        table = {(names.get(key, key) if isinstance(key, str) else tuple(key)): abs(float(value))
                 for key, value in by_edge.items()}
        if total is None:
            total = max(table.values(), default=0.0)
        per_task[task] = {key: (value / total if total > 0 else 0.0) for key, value in table.items()}
    return lambda edge, task: per_task.get(task, {}).get((edge.src, edge.dst), 0.0)


def _edge_lines(edge: Edge, ir: IR, colours: Mapping[str, str],
                weigh: Callable[[Edge, str], float], decision: Decision | None) -> Iterable[str]:
    ends = f"{_quote(edge.src)} -> {_quote(edge.dst)}"
    style = EDGE_STYLES.get(edge.kind, "solid")
    active = [t for t in edge.active_tasks() if t in colours] or edge.active_tasks()
    base = {"style": style, "tooltip": _edge_tooltip(edge, decision)}
    bold = 1.5 if style == "bold" else 0.0  # an explicit penwidth overrides style=bold: widen by hand
    if edge.kind == "cross":
        base["arrowhead"], base["arrowsize"] = "odiamond", "1.0"
    if edge.kind == "internal" and edge.dst in ir.nodes and edge.src in ir.nodes:
        span = _span(ir.nodes[edge.src], ir.nodes[edge.dst])
        if span is not None and span > 1:
            base["weight"] = "0"  # long skips must not bend the h_1 -> h_N spine
    if not active:
        yield f"  {ends} [{_attr_list({**base, 'color': DROPPED_COLOUR, 'penwidth': '0.5', 'arrowhead': 'none'})}];"
        return
    weights = {task: min(1.0, max(0.0, weigh(edge, task))) for task in active}
    serves_all = set(active) >= set(ir.task_names)
    if len(ir.task_names) > 1 and serves_all and max(weights.values()) - min(weights.values()) < 1e-9:
        width = _penwidth(next(iter(weights.values())), bold)
        yield f"  {ends} [{_attr_list({**base, 'color': SHARED_COLOUR, 'penwidth': width})}];"
        return
    for task in active:
        colour = colours.get(task, SHARED_COLOUR)
        yield f"  {ends} [{_attr_list({**base, 'color': colour, 'penwidth': _penwidth(weights[task], bold)})}];"


def _span(src: Node, dst: Node) -> int | None:
    if src.index is None or dst.index is None:
        return None
    return dst.index - src.index


def _edge_tooltip(edge: Edge, decision: Decision | None) -> str:
    parts = [f"{edge.name}: {edge.kind}", f"op {edge.op}" if edge.op is not None else "op (not legalised)"]
    for task, state in edge.tasks.items():
        value = edge_gate(decision, (edge.src, edge.dst), task)
        gate = "" if value is None else f" p={value:.3f}"
        keep = "" if state.keep is None else (" kept" if state.keep else " dropped")
        parts.append(f"{task}:{gate}{keep}" if gate or keep else f"{task}")
    return "\n".join(parts)


def _penwidth(weight: float, extra: float = 0.0) -> str:
    return f"{extra + MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * weight:.2f}"


# -- the legend -----------------------------------------------------------------------------------
def _legend_html(ir: IR, colours: Mapping[str, str], edge_widths: str) -> str:
    last_pass = ir.provenance[-1] if ir.provenance else "(no pass)"
    summary = ir.summary()
    width_note = {"gate": "width = gate (σ(logit); a route edge: its routes' softmax)", "flow": "width = flow / task's total flow",
                  "none": "uniform width"}[edge_widths]
    swatches = [(colour, task) for task, colour in colours.items()]
    swatches.append((SHARED_COLOUR, "all tasks, same weight"))
    keys = " ".join(f'<font color="{colour}">■■■</font> {_html(label)}  ' for colour, label in swatches)
    return ('<table border="0" cellborder="0" cellspacing="1" cellpadding="1">'
            f'<tr><td align="left"><b>{_html(ir.name)}</b> · after {_html(last_pass)}</td></tr>'
            f'<tr><td align="left">{summary["nodes"]} nodes, {summary["edges"]} edges · '
            'internal ── solid, read-in ╌ dashed, read-out ┈ dotted, cross ━◇ bold, '
            f'dropped: faint grey · {width_note}</td></tr>'
            f'<tr><td align="left">tasks: {keys}</td></tr></table>')


# -- escaping -------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    """A DOT double-quoted string; a newline in `text` becomes a centred line break."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _html(text: str) -> str:
    return html.escape(str(text), quote=True)


def _attr_list(attrs: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={_quote(value)}" for key, value in attrs.items())
