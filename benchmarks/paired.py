"""One method's runs against another's, seed by seed, where the two ran in different benches (another
setting of the bench spec, another day): both scored by Δ_MTL against the same single-task networks.

    python benchmarks/paired.py constant=runs/penguins-constant:searched \
        annealed=runs/penguins-cosine:searched [--reference runs/penguins-cosine]

Each side is `label=FOLDER:METHOD` (the method's `METHOD-seedN/` runs in a `dagir bench` output folder);
the single-task runs of `--reference` (default: the second side's folder) are the reference of both, so
the difference is the two networks' own, not a difference of their benches' single-task networks. Prints
the second side minus the first: the mean, its standard error over seeds, and the seeds it is above at;
then each side's Δ_MTL against the single-task networks of its own folder, where it has them.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from dagir.bench_job import run_result
from dagir.bench_table import summarise
from dagir.spec import Spec


def runs_of(folder: Path, method: str) -> tuple[dict[int, dict], Spec | None]:
    """`method`'s runs in `folder` per seed (the bench's row of each), and the spec of the last one read."""
    runs, spec = {}, None
    for path in sorted(folder.glob(f"{method}-seed*/metrics.json")):
        spec = Spec.model_validate(yaml.safe_load((path.parent / "spec.resolved.yaml").read_text()))
        runs[int(path.parent.name.rpartition("-seed")[2])] = run_result(json.loads(path.read_text()), spec)
    return runs, spec


def deltas(spec: Spec, reference: dict[int, dict], runs: dict[int, dict]) -> dict[int, float]:
    """Δ_MTL of each seed's run against the reference's single-task run of that seed."""
    return summarise(spec, {"single_task": reference, "run": runs})["per_seed_delta"]["run"]


def side(text: str) -> tuple[str, Path, str]:
    label, _, where = text.partition("=")
    folder, _, method = where.rpartition(":")
    if not (label and folder and method):
        raise argparse.ArgumentTypeError(f"{text!r}: expected label=FOLDER:METHOD")
    return label, Path(folder), method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=side)
    parser.add_argument("second", type=side)
    parser.add_argument("--reference", type=Path, help="the folder whose single-task runs score both sides")
    args = parser.parse_args()
    (first, first_folder, first_method), (second, second_folder, second_method) = args.first, args.second
    reference, spec = runs_of(args.reference or second_folder, "single_task")
    a, _ = runs_of(first_folder, first_method)
    b, _ = runs_of(second_folder, second_method)
    if spec is None or not a or not b:
        raise SystemExit("no single-task runs in the reference folder, or no runs of a side's method")
    da, db = deltas(spec, reference, a), deltas(spec, reference, b)
    seeds = sorted(set(da) & set(db))
    differences = [db[s] - da[s] for s in seeds]
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
    print(f"{second} − {first} over seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}): "
          f"{statistics.fmean(differences):+.2f} ± {error:.2f} standard error, above at "
          f"{sum(d > 0 for d in differences)}; Δ_MTL {first} "
          f"{statistics.fmean(da[s] for s in seeds):+.2f}, {second} {statistics.fmean(db[s] for s in seeds):+.2f}")
    print("  per seed: " + " ".join(f"{d:+.2f}" for d in differences))
    for label, folder, runs in ((first, first_folder, a), (second, second_folder, b)):
        own, _ = runs_of(folder, "single_task")
        if own:
            print(f"  {label} against its own folder's single-task networks: Δ_MTL "
                  f"{statistics.fmean(deltas(spec, own, runs).values()):+.2f}")


if __name__ == "__main__":
    main()
