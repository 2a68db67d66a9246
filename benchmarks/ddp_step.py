"""One run on two processes against one (issue 15): the seconds per optimiser step of each stage,
with the same global batch, on CPU (gloo), one thread per process.

    .venv/bin/python benchmarks/ddp_step.py [--spec examples/multimnist.yaml] [--steps 30] [--repeats 2]

Each stage runs `--steps` steps (`steps_per_epoch`, one epoch each); the per-step time is the
stage's wall time over its steps (metrics.json's `stage_seconds` / `stage_steps`, validation after
the epoch included). Runs alternate, 1 process then 2, `--repeats` times; the best of each is kept.
On a 2-core machine the ideal ratio is 0.5 (each process takes half of every batch); what is above
it is the gradient all-reduce, the evaluation both ranks share, and Python overhead per step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("warmup", "search", "finetune")


def run(spec: str, out: Path, steps: int, processes: int) -> dict[str, float]:
    overrides = [f"train.{stage}.{key}" for stage in STAGES for key in ("epochs=1", f"steps_per_epoch={steps}")]
    command = [sys.executable, "-m", "dagir", "run", spec, "-o", str(out), "--no-progress", "--no-tensorboard",
               "--overwrite", *(part for item in overrides for part in ("--set", item))]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "dagir", *command[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == processes
    return {stage: metrics["stage_seconds"][stage] / metrics["stage_steps"][stage] for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="examples/multimnist.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    best: dict[int, dict[str, float]] = {1: {}, 2: {}}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for processes in (1, 2):
                seconds = run(args.spec, Path(scratch) / f"p{processes}", args.steps, processes)
                best[processes] = {s: min(v, best[processes].get(s, v)) for s, v in seconds.items()}
    print(f"{args.spec}, {args.steps} steps per stage, one thread per process, best of {args.repeats}")
    for stage in STAGES:
        one, two = best[1][stage], best[2][stage]
        print(f"  {stage:<9} 1 process {one * 1000:7.1f} ms/step   2 processes {two * 1000:7.1f} ms/step   "
              f"ratio {two / one:.2f}")


if __name__ == "__main__":
    main()
