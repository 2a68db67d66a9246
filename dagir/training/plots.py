"""Pictures of a run: training curves and per-task gate heatmaps (matplotlib, no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..gates import edge_gate  # noqa: E402
from ..ir import IR  # noqa: E402


def plot_curves(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """Training loss, validation metrics and squeeze loss per epoch, stages separated by colour."""
    if not history:
        return
    metric_names = sorted({k for row in history for k in row if k.startswith("val/")})
    panels = ["train/loss", "train/squeeze"] + metric_names
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    stages = list(dict.fromkeys(row["stage"] for row in history))
    colours = dict(zip(stages, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for axis, name in zip(axes.flat, panels):
        for stage in stages:
            points = [(row["epoch_global"], row[name]) for row in history if row["stage"] == stage and name in row]
            if name == "train/squeeze" and not any(value for _, value in points):
                continue  # a stage without a squeeze (warm-up, fine-tune): no line of zeros
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", markersize=3, color=colours[stage], label=stage)
        axis.set_title(name.replace("val/", "validation "), fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def task_gate_grid(ir: IR, task: str) -> tuple[list[str], list[str], list[list[float]]]:
    """`task`'s gates as a grid: destinations (rows: hidden nodes, then the task's head), sources
    (columns: stem, hidden nodes), NaN where `task` has no edge. Rows and columns that hold none of
    the task's edges are left out (its head's row stays), so in a space of task chains (MTL-NAS's)
    a task's grid is its own chain and what reads into it, not every task's nodes."""
    decided = ir.decision_of_edge()
    hidden = [n.name for n in ir.hidden_nodes()]
    sources = [n.name for n in ir.nodes_of_kind("stem")] + hidden
    destinations = hidden + [ir.head_of(task).name]
    cells = {}
    for key, edge in ir.edges.items():
        value = edge_gate(decided.get(key), key, task)
        if value is not None and edge.src in sources and edge.dst in destinations:
            cells[edge.dst, edge.src] = value
    into, out_of = {dst for dst, _ in cells}, {src for _, src in cells}
    rows = [d for d in destinations if d in into or d == destinations[-1]]
    columns = [s for s in sources if s in out_of] or sources
    return rows, columns, [[cells.get((d, s), math.nan) for s in columns] for d in rows]


def plot_gate_heatmaps(ir: IR, path: Path) -> None:
    """One heatmap per task: the gate of every edge into (rows) and out of (columns) each node (σ(logit),
    or for a route edge the summed probability of the routes through it), as `task_gate_grid` lays
    it out; blank cells have no edge. Titles give each task's mean gate.
    """
    tasks = ir.task_names
    grids = {task: task_gate_grid(ir, task) for task in tasks}
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    width = max(len(grid[1]) for grid in grids.values())
    height = max(len(grid[0]) for grid in grids.values())
    figure, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                                figsize=(max(3.0, 0.35 * width + 1.5) * columns * 1.15,
                                         max(3.5, 0.35 * height + 1.5) * rows))
    image = None
    for axis, task in zip(axes.flat, tasks):
        destinations, sources, grid = grids[task]
        image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
        axis.set_xticks(range(len(sources)), sources, rotation=90, fontsize=7)
        axis.set_yticks(range(len(destinations)), destinations, fontsize=7)
        values = [value for row in grid for value in row if not math.isnan(value)]
        mean = sum(values) / len(values) if values else float("nan")
        axis.set_title(f"{task}: gates (mean {mean:.2f})", fontsize=9)
        axis.set_xlabel("from", fontsize=8)
    for axis in list(axes.flat)[len(tasks):]:
        axis.axis("off")
    if image is not None:
        bar = figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7)
        bar.set_label("gate: the edge's probability of being on", fontsize=8)
    figure.supylabel("to", fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
