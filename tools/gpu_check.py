"""The GPU check (issue 15), one command for anyone with a CUDA device:

    .venv/bin/python tools/gpu_check.py [--out runs/gpu-check] [--quick]

1. the CUDA tests of the suite (`pytest -k cuda`);
2. the default example end to end on CUDA in float32, bfloat16 and float16 (`--quick`: one epoch
   a stage), each run's test metrics and wall time;
3. the search step and a fine-tune step, timed on the GPU against the CPU in this process
   (`benchmarks/supernet_step.py`'s setting: the default example's supernet, batch 128);
4. the compact network's forward, eager against `torch.compile`.

Prints a table and writes OUT/gpu_check.json. Without CUDA it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(function, repeats: int = 20, device: str = "cpu") -> float:
    """Seconds per call: the median of `repeats` after two warm-up calls, synchronised on CUDA."""
    import statistics

    import torch
    for _ in range(2):
        function()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def step_times(device: str) -> dict[str, float]:
    """A search step (soft gates, backward to the logits) and a fine-tune step of the compact network."""
    import torch

    sys.path.insert(0, str(ROOT))
    from dagir.backends.torch_compact import lower_compact
    from dagir.backends.torch_supernet import lower_supernet
    from dagir.pass_manager import PassManager
    from dagir.pipeline import after_search_pipeline, compile_spec
    from dagir.spec import input_shape, load_spec

    spec = load_spec(ROOT / "examples" / "multimnist.yaml")
    ir = compile_spec(spec)
    supernet = lower_supernet(ir).to(device)
    x = torch.randn(128, *input_shape(spec), device=device)
    supernet.gates.mode = "soft"

    def search_step():
        supernet.zero_grad(set_to_none=True)
        sum(out.float().mean() for out in supernet(x).values()).backward()

    compact_ir = PassManager(after_search_pipeline(spec)).run(ir)
    compact = lower_compact(compact_ir, supernet).to(device)
    optimizer = torch.optim.Adam(compact.parameters(), lr=1e-3)

    def finetune_step():
        optimizer.zero_grad(set_to_none=True)
        sum(out.float().mean() for out in compact(x).values()).backward()
        optimizer.step()

    compact.eval()
    with torch.no_grad():
        eager = timed(lambda: compact(x), device=device)
        compiled_module = torch.compile(compact)
        compiled = timed(lambda: compiled_module(x), device=device)
    compact.train()
    return {"search_step_s": timed(search_step, device=device), "finetune_step_s": timed(finetune_step, device=device),
            "compact_forward_eager_s": eager, "compact_forward_compiled_s": compiled}


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--quick", action="store_true", help="one epoch a stage for the end-to-end runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", str(ROOT / "tests")], cwd=ROOT)
    report["cuda_tests_exit"] = tests.returncode
    quick = ["--set", "train.warmup.epochs=1", "--set", "train.search.epochs=1", "--set", "train.finetune.epochs=1"]
    for precision in ("float32", "bfloat16", "float16"):
        out = args.out / f"multimnist-{precision}"
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "dagir.cli", "run", str(ROOT / "examples" / "multimnist.yaml"),
                               "-o", str(out), "--overwrite", "--no-progress", "--set", "train.device=cuda",
                               "--set", f"train.precision={precision}", *(quick if args.quick else [])], cwd=ROOT).returncode
        metrics = json.loads((out / "metrics.json").read_text()) if code == 0 else {}
        report[f"run_{precision}"] = {"exit": code, "seconds": time.perf_counter() - start, "test": metrics.get("test")}
    report["gpu"] = step_times("cuda")
    report["cpu"] = step_times("cpu")
    report["speedup"] = {key: report["cpu"][key] / report["gpu"][key] for key in report["gpu"]}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if tests.returncode == 0 and all(report[f"run_{p}"]["exit"] == 0
                                              for p in ("float32", "bfloat16", "float16")) else 1


if __name__ == "__main__":
    sys.exit(main())
