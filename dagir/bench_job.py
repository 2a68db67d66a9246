"""`dagir bench`: the searched network against the classic baselines, on the same data and budget.

Each baseline is a search space of its own, built by a build pass (`build-single-task`,
`build-hard-sharing`, `build-cross-stitch`) and lowered like any IR; it trains through the same
stages without search: as many epochs as warm-up, search and fine-tune together, with the warm-up's
optimiser. The searched network is a full `dagir run`. Per seed and method the test metrics, the
parameters, the multiply-accumulates and the training time are collected; the table reports mean ±
std over seeds and Δ_MTL against the single-task networks (DESIGN §8).

OUT/table.md, table.csv, results.json, comparison.png, and one run folder per method and seed, each
with the spec it ran (`spec.resolved.yaml`). With `resume`, a method and seed whose folder holds a
finished result of the same spec is not trained again, and an interrupted searched run continues
from its checkpoint: a long bench can be stopped and taken up again, or given more seeds.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .datasets import load_dataset
from .errors import UserError
from .ir_stats import count_macs
from .pass_manager import PassManager, parse_pipeline
from .pipeline import seed_ir
from .run_job import Run, prepare_run_folder, same_run_spec, write_text
from .spec import Spec, check_data_root
from .tasks import delta_mtl, primary_metric
from .training.loop import EpochTotals, StageLoop, evaluate, make_optimizer, supervised_step
from .training.schedules import set_learning_rates

BASELINES = {"single_task": "build-single-task", "hard_sharing": "build-hard-sharing",
             "cross_stitch": "build-cross-stitch"}
BASELINE_RESULT_KEYS = ("test", "parameters", "macs", "seconds")
Echo = Callable[[str], None]


def with_seed(spec: Spec, seed: int) -> Spec:
    copy = spec.model_copy(deep=True)
    copy.seed = seed
    copy._source = spec._source
    return copy


def train_baseline(spec: Spec, baseline: str, out: Path, *, progress: bool, echo: Echo) -> dict[str, Any]:
    """Build, lower, train and test one baseline; returns its results."""
    from dagir.backends.torch_supernet import count_parameters, lower_supernet

    check_data_root(spec)
    torch.manual_seed(spec.seed)
    data = load_dataset(spec.data.dataset, spec.data.options, spec.data.root, spec.data.val_split, spec.seed)
    ir = PassManager(parse_pipeline([BASELINES[baseline], "legalize-types"], spec)).run(seed_ir(spec))
    prepare_run_folder(spec, out, resume=False, overwrite=True)  # no finished result left from before
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "spec.resolved.yaml", spec.resolved_yaml())
    write_text(out / "ir.json", ir.to_json())
    module = lower_supernet(ir)
    module.gates.mode = "ones"
    module.train()
    train = spec.train
    epochs = train.warmup.epochs + train.search.epochs + train.finetune.epochs
    optimizer = make_optimizer(list(module.parameters()), train.warmup)

    step = supervised_step(module, optimizer, spec.tasks)

    def end_of_epoch(epoch: int, totals: EpochTotals) -> None:
        echo(f"{baseline} epoch {epoch + 1}/{epochs}: loss {totals.loss / max(totals.steps, 1):.4f}")

    started = time.perf_counter()
    StageLoop(baseline, data.train, spec.data.batch_size, epochs, train.warmup.steps_per_epoch, spec.seed, step,
              lambda position, totals: None, end_of_epoch, progress=progress,
              before_step=functools.partial(set_learning_rates, [optimizer], schedule=train.warmup.lr_schedule)).run()
    seconds = time.perf_counter() - started
    test = evaluate(module, data.test, spec.tasks, data)
    result = {"test": test, "parameters": count_parameters(module), "macs": count_macs(ir), "seconds": seconds}
    write_text(out / "metrics.json", json.dumps(result, indent=1))
    return result


def run_searched(spec: Spec, out: Path, *, progress: bool, echo: Echo, resume: bool = False) -> dict[str, Any]:
    """A full `dagir run` in `out`; with `resume`, an interrupted one there continues from its checkpoint."""
    resume = resume and (out / "checkpoints" / "latest.pt").is_file()
    prepare_run_folder(spec, out, resume=resume, overwrite=not resume)
    return searched_result(Run(spec, out, resume=resume, progress=progress, echo=echo).execute())


def searched_result(metrics: dict[str, Any]) -> dict[str, Any]:
    """The bench's row for a searched run, from its metrics.json."""
    return {"test": metrics["test"], "parameters": metrics["compact"]["parameters"],
            "macs": metrics["compact"]["macs"]["total"], "seconds": sum(metrics["stage_seconds"].values())}


def finished_result(spec: Spec, method: str, out: Path) -> dict[str, Any] | None:
    """The result in `out` if a run of `method` with exactly this spec finished there, else None."""
    metrics, resolved = out / "metrics.json", out / "spec.resolved.yaml"
    if not metrics.is_file():
        return None
    if not resolved.is_file() or not same_run_spec(resolved, spec):
        raise UserError(f"{out}: holds a result of a different spec (or none recorded); "
                        f"resume with the same spec and --set options, or use a new output folder")
    try:
        saved = json.loads(metrics.read_text())
        return searched_result(saved) if method == "searched" else {k: saved[k] for k in BASELINE_RESULT_KEYS}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{metrics}: not a finished {method} result ({error}); delete the folder to train it again")


def run_bench(spec: Spec, out: Path, *, methods: Sequence[str], seeds: Sequence[int], progress: bool = True,
              echo: Echo = print, resume: bool = False) -> dict[str, Any]:
    """Train every method for every seed (with `resume`, only those not finished in OUT), then write
    the comparison table and plot."""
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in methods}
    for seed in seeds:
        seeded = with_seed(spec, seed)
        for method in methods:
            folder = out / f"{method}-seed{seed}"
            finished = finished_result(seeded, method, folder) if resume else None
            if finished is not None:
                echo(f"== {method}, seed {seed}: finished in {folder}, not trained again")
                results[method][seed] = finished
                continue
            echo(f"== {method}, seed {seed}")
            results[method][seed] = (run_searched(seeded, folder, progress=progress, echo=echo, resume=resume)
                                     if method == "searched" else
                                     train_baseline(seeded, method, folder, progress=progress, echo=echo))
    table = summarise(spec, results)
    write_results(out, spec, table, results)
    return table


def summarise(spec: Spec, results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std over seeds of each task's primary metric, Δ_MTL, parameters, MACs and time."""
    kinds = {t.name: t.kind for t in spec.tasks}
    metric_of = {t.name: primary_metric(t.kind, t.metric)[0] for t in spec.tasks}
    rows = {}
    for method, by_seed in results.items():
        row: dict[str, Any] = {}
        for task in kinds:
            values = [r["test"][task][metric_of[task]] for r in by_seed.values()]
            row[task] = _mean_std(values)
        if "single_task" in results:
            deltas = [delta_mtl({t: r["test"][t][metric_of[t]] for t in kinds},
                                {t: results["single_task"][seed]["test"][t][metric_of[t]] for t in kinds}, kinds)
                      for seed, r in by_seed.items() if seed in results["single_task"]]
            row["delta_mtl"] = _mean_std(deltas)
        for key in ("parameters", "macs", "seconds"):
            row[key] = _mean_std([float(r[key]) for r in by_seed.values()])
        rows[method] = row
    return {"metrics": metric_of, "rows": rows, "seeds": sorted({s for r in results.values() for s in r})}


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
    header = ["method"] + [f"{t} {metric_of[t]}" for t in tasks] + ["Δ_MTL %", "parameters", "MACs", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for method, row in rows.items():
        delta = _cell(row["delta_mtl"], 2) if "delta_mtl" in row else "n/a"
        cells = ([method] + [_cell(row[t]) for t in tasks] + [delta, f"{row['parameters']['mean']:,.0f}",
                 f"{row['macs']['mean']:,.0f}", f"{row['seconds']['mean']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
        records.append(cells)
    seeds = ", ".join(str(s) for s in table["seeds"])
    write_text(out / "table.md", f"# {spec.name}: searched network vs baselines (seeds {seeds})\n\n"
               + "\n".join(lines) + "\n")
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(records)
    write_text(out / "results.json", json.dumps({"table": table, "runs": results}, indent=1, default=float))
    plot_comparison(table, out / "comparison.png")


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
