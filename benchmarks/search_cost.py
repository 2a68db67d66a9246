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
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dagir.bench_job import resolve_methods, run_method
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
    methods = resolve_methods(spec, [args.method, "single_task"])
    searching, single = methods.values()
    searching = searching.model_copy(deep=True)
    searching.train.finetune.epochs = 0
    best = {"search": float("inf"), "single": float("inf")}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            best["search"] = min(best["search"], timed(searching, Path(scratch) / f"search-{repeat}")["search_seconds"])
            best["single"] = min(best["single"], timed(single, Path(scratch) / f"single-{repeat}")["seconds"])
    epochs = "+".join(str(getattr(searching.train, stage).epochs) for stage in ("warmup", "search"))
    print(f"{args.spec} {' '.join(args.overrides)} {args.method} (epochs {epochs}): warm-up + search "
          f"{best['search']:.2f} s, single-task training {best['single']:.2f} s, "
          f"ratio {best['search'] / best['single']:.2f} (best of {args.repeats}, one thread)")


if __name__ == "__main__":
    main()
