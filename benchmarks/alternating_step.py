"""The default example's search steps (`mode: alternating`, Θ trained) as `dagir run` takes them,
each computing only the gradients it applies (`without_gradients`) against every gradient
computed (as before the fifth session).

The steps are `GradientSearch`'s own, through a `SearchContext` built as `dagir.training.stages.search`
builds it, at the spec's batch size (128) on random inputs and targets: an architecture step (odd
index) and a weight step (even index). Best of interleaved repeats, one thread.

    cd benchmarks && PYTHONPATH=.. ../.venv/bin/python alternating_step.py
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from timing import best_times

from dagir import load_spec
from dagir.backends.torch_supernet import head_parameters, lower_supernet, weight_parameters
from dagir.pipeline import compile_spec
from dagir.training.search import SearchContext, gradient, make_strategy

ROOT = Path(__file__).resolve().parent.parent


def steps(spec, ir, batch):
    supernet = lower_supernet(ir).train()
    supernet.gates.mode = "soft"
    context = SearchContext(supernet, spec.train.search, spec.search.squeeze, spec.tasks, supernet,
                            weights=weight_parameters(supernet), heads=head_parameters(supernet), seed=0)
    strategy = make_strategy(context)
    return {"architecture": lambda: strategy.step(batch, 0, 1), "weights": lambda: strategy.step(batch, 0, 0)}


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = load_spec(ROOT / "examples" / "multimnist.yaml")
    ir = compile_spec(spec)
    size = spec.data.batch_size
    batch = (torch.randn(size, *ir.input_node().type.shape),
             {"left": torch.randint(0, 10, (size,)), "right": torch.randint(0, 10, (size,)),
              "sum": torch.randint(0, 19, (size,)).float()[:, None]})
    only = steps(spec, ir, batch)
    every = steps(spec, ir, batch)
    real = gradient.without_gradients

    def all_gradients(name):
        def step():
            gradient.without_gradients = lambda parameters: contextlib.nullcontext()
            try:
                every[name]()
            finally:
                gradient.without_gradients = real
        return step

    times = best_times({"architecture_only": only["architecture"], "architecture_all": all_gradients("architecture"),
                        "weights_only": only["weights"], "weights_all": all_gradients("weights")}, repeats=3, inner=1)
    ms = {name: round(seconds * 1000, 1) for name, seconds in times.items()}
    summary = {"ms": ms,
               "architecture_speedup": round(ms["architecture_all"] / ms["architecture_only"], 2),
               "weights_speedup": round(ms["weights_all"] / ms["weights_only"], 2),
               "search_epoch_speedup": round((ms["architecture_all"] + ms["weights_all"])
                                             / (ms["architecture_only"] + ms["weights_only"]), 2)}
    print(f"default example, batch {size}, step ms: " + "  ".join(f"{k} {v}" for k, v in ms.items()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
