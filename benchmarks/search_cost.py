"""Issue 12's cost target, timed in one process: the searched method's warm-up + search against the
single-task networks' training, on one spec and seed.

    .venv/bin/python benchmarks/search_cost.py examples/mmoe_synthetic.yaml \
        --set data.options.correlation=0.1 [--method examples/levers/...yaml] [--repeats 3]

A bench's seconds columns come from runs that may have shared the machine with other runs (`--workers`);
here the two runs alternate, `--repeats` times each, on one torch thread, and the best of each is kept,
so load from other processes hits both alike. Each is a `dagir run` of the method's spec as the bench
resolves it (the searched one without its fine-tune, which is not part of the search's cost), and the
figure is the ratio of the stages' own seconds (`stage_seconds` in metrics.json: the training loops,
their validation and checkpoints; not start-up, compilation or drawing).

For a choice (`dagir.choice`) every candidate runs whole, fine-tune included, since the choice reads each
one's fine-tuned network on validation; its cost is their sum less the kept candidate's fine-tune, printed
as the range over which one is kept.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dagir.bench_job import bench_plan, run_method
from dagir.methods import method_name
from dagir.spec import load_spec


def timed(spec, out: Path) -> dict[str, float]:
    """The bench's row of one run: `search_seconds` (warm-up + search) and `seconds` (every stage)."""
    return run_method(spec, out, progress=False, echo=lambda text: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as dagir's --set")
    parser.add_argument("--method", default="searched", help="the searching method (a built-in name or a file)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec, args.overrides)
    searching, choices = bench_plan(spec, [args.method])
    single = bench_plan(spec, ["single_task"])[0]["single_task"]
    searching = {name: method.model_copy(deep=True) for name, method in searching.items()}
    if not choices:
        for method in searching.values():
            method.train.finetune.epochs = 0
    best: dict[str, dict[str, float]] = {}  # each searching run's fastest repeat, whole
    alone = float("inf")  # the single-task networks' fastest training
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name, method in searching.items():
                row = timed(method, Path(scratch) / f"{name}-{repeat}")
                if row["seconds"] < best.get(name, {"seconds": float("inf")})["seconds"]:
                    best[name] = row
            alone = min(alone, timed(single, Path(scratch) / f"single-task-{repeat}")["seconds"])
    if choices:
        total = sum(row["seconds"] for row in best.values())
        finetunes = [row["seconds"] - row["search_seconds"] for row in best.values()]
        each = ", ".join(f"{name} {row['seconds']:.2f} s" for name, row in best.items())
        print(f"{args.spec} {' '.join(args.overrides)} {method_name(args.method)}: candidates {each}; choosing "
              f"{total - max(finetunes):.2f}-{total - min(finetunes):.2f} s, single-task training {alone:.2f} s, ratio "
              f"{(total - max(finetunes)) / alone:.2f}-{(total - min(finetunes)) / alone:.2f} "
              f"(best of {args.repeats}, one thread)")
        return
    (name, row), = best.items()
    epochs = "+".join(str(getattr(searching[name].train, stage).epochs) for stage in ("warmup", "search"))
    print(f"{args.spec} {' '.join(args.overrides)} {args.method} (epochs {epochs}): warm-up + search "
          f"{row['search_seconds']:.2f} s, single-task training {alone:.2f} s, "
          f"ratio {row['search_seconds'] / alone:.2f} (best of {args.repeats}, one thread)")


if __name__ == "__main__":
    main()
