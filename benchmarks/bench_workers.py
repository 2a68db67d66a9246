"""`dagir bench --workers 2` against `--workers 1` on the digits example (issue 15): the wall time of
the whole bench, each as its own process, and whether both wrote the same table.

    .venv/bin/python benchmarks/bench_workers.py [--seeds 2] [--repeats 1]

Methods: searched, mtl_nas, single_task, hard_sharing, cross_stitch. On a 2-core machine each worker
runs torch on one thread; one worker alone runs on both.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = "searched,mtl_nas,single_task,hard_sharing,cross_stitch"


def bench(out: Path, seeds: int, workers: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dagir", "bench", "examples/digits.yaml", "-o", str(out), "--methods",
                    METHODS, "--seeds", str(seeds), "--workers", str(workers), "--no-progress"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                times[workers].append(bench(Path(scratch) / f"w{workers}-{repeat}", args.seeds, workers))
        tables = [json.loads((Path(scratch) / f"w{w}-0" / "results.json").read_text())["runs"] for w in (1, 2)]
        differences = {m: max(abs(tables[0][m][s]["test"][t][k] - tables[1][m][s]["test"][t][k])
                              for s in tables[0][m] for t in tables[0][m][s]["test"] for k in tables[0][m][s]["test"][t])
                       for m in tables[0]}
    one, two = min(times[1]), min(times[2])
    print(f"digits bench, {METHODS}, {args.seeds} seeds: 1 worker {one:.1f} s, 2 workers {two:.1f} s, "
          f"ratio {two / one:.2f}")
    print("largest difference of a test metric, 2 workers against 1 (torch on 1 thread against 2: another "
          "summation order): " + ", ".join(f"{m} {d:.4f}" for m, d in differences.items()))


if __name__ == "__main__":
    main()
