"""Inputs larger than memory (issue 14): a run of one epoch on 1 GiB of `.npy` inputs, memory-mapped
(`data.options.in_memory: false`, batches read from disk) against read into memory (`true`).

    .venv/bin/python benchmarks/streaming.py [--gib 1.0] [--repeats 2]

Each mode runs in its own process (peak memory is per process), alternating, `--repeats` times.
Prints each run's wall time (data load included) and its peak memory: VmHWM, the resident peak
the kernel reports, and the peak of RssAnon, the memory the process itself holds. Mapped file
pages count in VmHWM while they are cached, but the kernel can drop them at any time, so RssAnon
is what a data set larger than memory would need.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 1024

SPEC = """\
name: streaming
data: {{dataset: arrays, root: {root}, batch_size: 512, val_split: 0.05, options: {{test_fraction: 0.05}}}}
tasks:
  - {{name: label, kind: classification, classes: 2}}
  - {{name: target, kind: regression}}
network:
  stem: {{channels: 32}}
  central: {{nodes: 3, stages: 1, channels: 32, edge_op: mlp}}
  heads: {{hidden: 16}}
train:
  warmup: {{epochs: 1, lr: 0.01}}
  search: {{epochs: 0, lr: 0.01}}
  finetune: {{epochs: 0, lr: 0.01}}
  device: cpu
"""


def write_data(folder: Path, gib: float) -> int:
    """`inputs.npy` of about `gib` GiB float32 with a linear label and target, written in chunks."""
    rows = int(gib * 2 ** 30 / (4 * FEATURES))
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(FEATURES, 2)).astype(np.float32)
    inputs = np.lib.format.open_memmap(folder / "inputs.npy", mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    label, target = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.float32)
    for start in range(0, rows, 16384):
        chunk = rng.normal(size=(min(16384, rows - start), FEATURES)).astype(np.float32)
        inputs[start:start + len(chunk)] = chunk
        score = chunk @ weights
        label[start:start + len(chunk)] = score[:, 0] > 0
        target[start:start + len(chunk)] = score[:, 1] / np.sqrt(FEATURES)
    inputs.flush()
    del inputs
    np.save(folder / "label.npy", label)
    np.save(folder / "target.npy", target)
    return rows


def memory_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0])
    return fields


def child(root: str, out: str, mode: str) -> None:
    """One run in this process; prints a JSON line of its time and memory peaks."""
    sys.path.insert(0, str(ROOT))
    from dagir.run_job import Run
    from dagir.run_folder import prepare_run_folder
    from dagir.spec import load_spec

    peak = {"RssAnon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak["RssAnon"] = max(peak["RssAnon"], memory_kib()["RssAnon"])

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    spec_path = Path(out).parent / f"spec-{mode}.yaml"
    spec_path.write_text(SPEC.format(root=root))
    start = time.perf_counter()
    spec = load_spec(spec_path, [f"data.options.in_memory={mode}"])
    prepare_run_folder(spec, Path(out), resume=False, overwrite=True)
    metrics = Run(spec, Path(out), resume=False, progress=False, echo=lambda text: None).execute()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    peak["RssAnon"] = max(peak["RssAnon"], memory_kib()["RssAnon"])
    print(json.dumps({"mode": mode, "seconds": seconds, "vm_hwm_mib": memory_kib()["VmHWM"] / 1024,
                      "rss_anon_peak_mib": peak["RssAnon"] / 1024,
                      "accuracy": metrics["test"]["label"]["accuracy"]}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "MODE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "data"
        folder.mkdir()
        rows = write_data(folder, args.gib)
        size = (folder / "inputs.npy").stat().st_size / 2 ** 30
        print(f"inputs.npy: {rows} rows x {FEATURES} float32 = {size:.2f} GiB")
        results: dict[str, list[dict]] = {"true": [], "false": []}
        for _ in range(args.repeats):
            for mode in ("false", "true"):
                line = subprocess.run([sys.executable, __file__, "--child", str(folder), str(Path(scratch) / mode), mode],
                                      check=True, capture_output=True, text=True, env=os.environ).stdout
                results[mode].append(json.loads(line.strip().splitlines()[-1]))
        for mode, name in (("true", "in memory"), ("false", "memory-mapped")):
            for run in results[mode]:
                print(f"{name:>14}: {run['seconds']:6.1f} s, peak resident {run['vm_hwm_mib']:6.0f} MiB, "
                      f"peak anonymous {run['rss_anon_peak_mib']:6.0f} MiB, test accuracy {run['accuracy']:.4f}")
        ratio = min(r["seconds"] for r in results["false"]) / min(r["seconds"] for r in results["true"])
        print(f"memory-mapped / in memory, best wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
