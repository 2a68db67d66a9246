"""Issue 12's targets, read from finished benches: does the searched network beat every other method,
stay within seed noise of the single-task networks, cost less than them, and search within their
training time?

    python benchmarks/targets.py multimnist=benchmarks/results/bench-multimnist \
        tabular-0.1=benchmarks/results/bench-tabular-0.1 ...  [--method searched]

Each argument is `label=FOLDER[,FOLDER...]`: `dagir bench` output folders of one task set, whose
`METHOD-seedN/` runs are read (the first folder holding a method and seed wins). Prints one markdown row per
task set. "Seed noise" is the standard deviation over seeds of the paired difference; a target is
met when the paired mean clears it on the right side (beat: > 0; not below single-task: > −noise). The
search's cost is the ratio of CPU seconds where every run recorded them (runs sharing the machine inflate
those less than wall time), else of wall seconds, and only where the method and the single-task networks
ran in one bench (a folder they share): seconds from two benches, other days and other load, are no
ratio. `benchmarks/search_cost.py` times it alone.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

from dagir.bench_job import run_result
from dagir.bench_table import summarise
from dagir.spec import Spec

OTHERS = ("hard_sharing", "cross_stitch", "mtl_nas", "mtnas", "mmoe")


def read_runs(folders: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """Per method and seed, the bench's own row of each run (`run_result`: parameters, MACs, the
    seconds in all and for warm-up + search) and its Δ_MTL against the single-task run of the same
    seed, as `dagir bench` computes it (`summarise`)."""
    results: dict[str, dict[int, dict]] = {}
    spec = None
    for folder in folders:
        for path in sorted(folder.glob("*-seed*/metrics.json")):
            method, _, seed = path.parent.name.rpartition("-seed")
            spec = Spec.model_validate(yaml.safe_load((path.parent / "spec.resolved.yaml").read_text()))
            run = {**run_result(json.loads(path.read_text()), spec), "folder": str(folder)}
            results.setdefault(method, {}).setdefault(int(seed), run)
    deltas = summarise(spec, results)["per_seed_delta"]
    return {method: {seed: {**run, "delta_mtl": deltas[method][seed]}
                     for seed, run in by_seed.items() if seed in deltas[method]}
            for method, by_seed in results.items()}


def paired(mine: dict[int, dict[str, float]], other: dict[int, dict[str, float]]) -> tuple[float, float, int]:
    seeds = sorted(set(mine) & set(other))
    differences = [mine[s]["delta_mtl"] - other[s]["delta_mtl"] for s in seeds]
    noise = statistics.stdev(differences) if len(differences) > 1 else float("nan")
    return statistics.fmean(differences), noise, len(seeds)


def mean(runs: dict[int, dict[str, float]], key: str) -> float:
    return statistics.fmean(run.get(key, math.nan) for run in runs.values())


def row(label: str, runs: dict[str, dict[int, dict[str, float]]], method: str) -> str:
    mine, single = runs[method], runs["single_task"]
    others = {name: paired(mine, runs[name]) for name in OTHERS if name in runs and name != method}
    versus_single, single_noise, seeds = paired(mine, single)
    if others:
        strongest = min(others, key=lambda name: others[name][0])
        beat, beat_noise, _ = others[strongest]
        versus_others = f"{strongest} {beat:+.2f} ± {beat_noise:.2f} ({'met' if beat > 0 else 'not met'})"
    else:
        versus_others = "n/a (no other method in these folders)"
    cells = [
        label, str(seeds), f"{statistics.fmean(r['delta_mtl'] for r in mine.values()):+.2f}", versus_others,
        f"{versus_single:+.2f} ± {single_noise:.2f} ({'met' if versus_single > -single_noise else 'not met'})",
    ]
    for key in ("parameters", "macs"):
        ratio = mean(mine, key) / mean(single, key)
        cells.append(f"{ratio:.2f}x ({'met' if ratio < 1 else 'not met'})")
    if not {run["folder"] for run in mine.values()} & {run["folder"] for run in single.values()}:
        # seconds from two benches (other days, other load on the machine) are not a ratio worth reading
        cells.append("n/a (not timed in one bench: benchmarks/search_cost.py)")
        return "| " + " | ".join(cells) + " |"
    cpu = mean(mine, "search_cpu_seconds") / mean(single, "search_cpu_seconds")  # NaN where a run recorded none
    ratio, clock = (cpu, "CPU") if not math.isnan(cpu) else (mean(mine, "search_seconds") / mean(single, "seconds"), "wall")
    cells.append(f"{ratio:.2f}x {clock} ({'met' if ratio <= 1 else 'not met'})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="label=FOLDER[,FOLDER...]")
    parser.add_argument("--method", default="searched")
    args = parser.parse_args()
    print(f"| task set | seeds | {args.method} Δ_MTL % | paired vs the strongest other method | "
          "paired vs single-task | parameters / single-task | MACs / single-task | "
          "warm-up + search s / single-task s |")
    print("|---|---|---|---|---|---|---|---|")
    for argument in args.sets:
        label, _, folders = argument.partition("=")
        print(row(label, read_runs([Path(folder) for folder in folders.split(",")]), args.method))


if __name__ == "__main__":
    main()
