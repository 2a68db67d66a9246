"""The bench's comparison (`dagir bench`): per method, the mean ± std over seeds of every task's
metric, Δ_MTL against the single-task networks (DESIGN §8) and each seed's difference from the searched
network, the cost figures; written as OUT/table.md, table.csv, runs.csv, results.json and comparison.png.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from .run_folder import write_text
from .spec import STAGES, Spec
from .tasks import delta_mtl, primary_metric


def summarise(spec: Spec, results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std over seeds of each task's primary metric, Δ_MTL, parameters, MACs and time, and
    each method's Δ_MTL minus the searched network's on the same seed (the paired difference:
    seed noise common to both cancels)."""
    kinds = {t.name: t.kind for t in spec.tasks}
    metric_of = {t.name: primary_metric(t.kind, t.metric)[0] for t in spec.tasks}
    single = results.get("single_task", {})
    chosen = {t.name: t.metric for t in spec.tasks}  # a task's own metric decides its direction too
    per_seed_delta = {method: {seed: delta_mtl({t: r["test"][t][metric_of[t]] for t in kinds},
                                               {t: single[seed]["test"][t][metric_of[t]] for t in kinds}, kinds,
                                               chosen)
                               for seed, r in by_seed.items() if seed in single}
                      for method, by_seed in results.items()}
    rows = {}
    for method, by_seed in results.items():
        row: dict[str, Any] = {}
        for task in kinds:
            values = [r["test"][task][metric_of[task]] for r in by_seed.values()]
            row[task] = _mean_std(values)
        if single:
            row["delta_mtl"] = _mean_std(list(per_seed_delta[method].values()))
            searched = per_seed_delta.get("searched", {})
            row["delta_vs_searched"] = _mean_std([delta - searched[seed] for seed, delta in per_seed_delta[method].items()
                                                  if seed in searched])
        for key in RUN_FIGURES:
            row[key] = _mean_std([float(r.get(key, math.nan)) for r in by_seed.values()])
        row["epochs"] = next(iter(by_seed.values()))["epochs"]  # a method's epochs are the same for every seed
        rows[method] = row
    return {"metrics": metric_of, "rows": rows, "seeds": sorted({s for r in results.values() for s in r}),
            "per_seed_delta": per_seed_delta}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    clean = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(clean) if clean else math.nan
    std = statistics.stdev(clean) if len(clean) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(clean)}


def _cell(stat: dict[str, float], digits: int = 4) -> str:
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def write_results(out: Path, spec: Spec, table: dict[str, Any], results: dict) -> None:
    metric_of, rows = table["metrics"], table["rows"]
    tasks = list(metric_of)
    header = ["method"] + [f"{t} {metric_of[t]}" for t in tasks] + ["Δ_MTL %", "Δ_MTL − searched (paired)",
                                                                     "parameters", "MACs", "epochs w+s+f", "steps",
                                                                     "warm-up + search s", "train s",
                                                                     "warm-up + search CPU s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in rows.items():
        delta = _cell(row["delta_mtl"], 2) if "delta_mtl" in row else "n/a"
        paired = _cell(row["delta_vs_searched"], 2) if row.get("delta_vs_searched", {}).get("n") else "n/a"
        cells = ([method] + [_cell(row[t]) for t in tasks] + [delta, paired, f"{row['parameters']['mean']:,.0f}",
                 f"{row['macs']['mean']:,.0f}", "+".join(str(row["epochs"][stage]) for stage in STAGES),
                 "n/a" if math.isnan(row["steps"]["mean"]) else f"{row['steps']['mean']:,.0f}",
                 f"{row['search_seconds']['mean']:.0f}", f"{row['seconds']['mean']:.0f}",
                 "n/a" if math.isnan(row["search_cpu_seconds"]["mean"]) else f"{row['search_cpu_seconds']['mean']:.1f}"])
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s) for s in table["seeds"])
    budget = ("Budget: every method trains on the same data and seeds; `epochs w+s+f` are its warm-up, search "
              "and fine-tune epochs (passes over its training split), `steps` its optimiser steps in all, and "
              "the seconds its wall time (warm-up + search: the cost of choosing the architecture), then the "
              "CPU time of warm-up + search, which runs sharing the machine (`--workers`, other jobs) inflate "
              "less than their wall time (n/a: a run recorded none). Every "
              "method's last stage follows the bench spec's last-stage learning-rate schedule "
              f"({getattr(spec.train, spec.train.final_stage()).lr_schedule}) unless the method sets its own.")
    kept = [f"`{method}` kept " + ", ".join(f"{run['kept']} (seed {seed})" for seed, run in by_seed.items()) + "."
            for method, by_seed in results.items() if any("kept" in run for run in by_seed.values())]
    if kept:
        budget += (" A choice's row is the network it kept per seed, chosen on validation among its candidates, "
                   "with the budget of them all (their epochs, steps and seconds summed; its warm-up + search is "
                   "that less the kept network's fine-tuning). " + " ".join(kept))
    write_text(out / "table.md", f"# {spec.name}: searched network vs baselines (seeds {seeds})\n\n"
               + "\n".join(lines) + f"\n\n{budget}\n")
    write_csvs(out, table, results)
    write_text(out / "results.json", json.dumps({"table": table, "runs": results}, indent=1, default=float))
    plot_comparison(table, out / "comparison.png")


RUN_FIGURES = ("parameters", "macs", "steps", "search_seconds", "seconds", "search_cpu_seconds")  # runs.csv columns, each summarised
NUMERIC = ("delta_mtl", "delta_vs_searched") + RUN_FIGURES


def write_csvs(out: Path, table: dict[str, Any], results: dict[str, dict[int, dict[str, Any]]]) -> None:
    """`table.csv`: a row per method, every figure a number in its own column (mean and std apart,
    the epochs per stage); `runs.csv`: a row per method and seed. Both read as they are by pandas."""
    metric_of, rows = table["metrics"], table["rows"]
    figures = [f"{task}_{metric}" for task, metric in metric_of.items()] + list(NUMERIC)
    header = (["method"] + [f"{name}_{part}" for name in figures for part in ("mean", "std")]
              + ["seeds"] + [f"epochs_{stage}" for stage in STAGES])
    lines = []
    for method, row in rows.items():
        stats = [row[task] for task in metric_of] + [row.get(key, {"mean": math.nan, "std": math.nan}) for key in NUMERIC]
        lines.append([method] + [_number(stat[part]) for stat in stats for part in ("mean", "std")]
                     + [row[next(iter(metric_of))]["n"]] + [row["epochs"][stage] for stage in STAGES])
    _write_csv(out / "table.csv", header, lines)
    per_seed = ["method", "seed"] + [f"{task}_{metric}" for task, metric in metric_of.items()] + [
        "delta_mtl", *RUN_FIGURES]
    lines = [[method, seed] + [_number(run["test"][task][metric]) for task, metric in metric_of.items()]
             + [_number(table["per_seed_delta"].get(method, {}).get(seed, math.nan))]
             + [_number(run.get(key, math.nan)) for key in RUN_FIGURES]
             for method, by_seed in results.items() for seed, run in sorted(by_seed.items())]
    _write_csv(out / "runs.csv", per_seed, lines)


def _number(value: Any) -> str:
    """A number as CSV holds it: plain digits, empty for a missing one (NaN)."""
    value = float(value)
    return "" if math.isnan(value) else repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _write_csv(path: Path, header: list[str], lines: list[list[Any]]) -> None:
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(lines)
    write_text(path, buffer.getvalue())


def plot_comparison(table: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_of, rows = table["metrics"], table["rows"]
    panels = list(metric_of) + ["parameters"] + (["delta_mtl"] if any("delta_mtl" in r for r in rows.values()) else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    methods = list(rows)
    for axis, panel in zip(axes[0], panels):
        means = [rows[m].get(panel, {"mean": math.nan})["mean"] for m in methods]
        stds = [rows[m].get(panel, {"std": 0.0})["std"] for m in methods]
        axis.bar(range(len(methods)), means, yerr=stds, color=[f"C{i}" for i in range(len(methods))], capsize=3)
        axis.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        title = f"{panel} ({metric_of[panel]})" if panel in metric_of else ("Δ_MTL %" if panel == "delta_mtl" else panel)
        axis.set_title(title, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
