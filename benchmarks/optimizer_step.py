"""The optimiser's share of a training step: torch's per-tensor Adam against its fused kernel (what
`make_optimizer` picks on CPU and CUDA), on the supernets of the tabular generator and MultiMNIST,
and the single-task networks' step beside the supernet's warm-up step.

    .venv/bin/python benchmarks/optimizer_step.py

Per spec: the Adam step alone with each implementation, and a whole warm-up step (forward, backward,
Adam) with each; then the single-task networks' training step (`single_task` as the bench resolves it,
fused Adam). Best of interleaved repeats in one process, on one thread, batch 128 of random data.
"""
from __future__ import annotations

import json

import torch

from timing import best_times

from dagir.backends.torch_supernet import head_parameters, lower_supernet, weight_parameters
from dagir.bench_job import resolve_methods
from dagir.pass_manager import PassManager
from dagir.pipeline import before_search_pipeline, seed_ir
from dagir.spec import load_spec
from dagir.training.loop import multitask_loss

SPECS = {"tabular generator": ("examples/mmoe_synthetic.yaml", 50), "penguins": ("examples/penguins.yaml", 50),
         "multimnist": ("examples/multimnist.yaml", 3)}


def random_targets(spec, batch: int) -> dict[str, torch.Tensor]:
    targets = {}
    for task in spec.tasks:
        if task.kind == "classification":
            targets[task.name] = torch.randint(0, task.classes, (batch,))
        else:
            targets[task.name] = torch.randn(batch, 1)
    return targets


def warm_up(spec, inputs: torch.Tensor, targets: dict[str, torch.Tensor]):
    """The network of `spec` in warm-up mode, its trained parameters, and its backward pass."""
    network = lower_supernet(PassManager(before_search_pipeline(spec)).run(seed_ir(spec)))
    network.gates.mode = "ones"
    network.train()
    parameters = weight_parameters(network) + head_parameters(network)

    def backward() -> None:
        for parameter in parameters:
            parameter.grad = None
        multitask_loss(network(inputs), targets, spec.tasks)[0].backward()
    return parameters, backward


def measure(path: str, inner: int, batch: int = 128) -> dict[str, float]:
    spec = load_spec(path)
    inputs = torch.randn(batch, *seed_ir(spec).input_node().type.shape)
    targets = random_targets(spec, batch)
    parameters, backward = warm_up(spec, inputs, targets)
    optimizers = {name: torch.optim.Adam(parameters, lr=1e-6, **options)
                  for name, options in (("per-tensor", {"foreach": False}), ("fused", {"fused": True}))}
    single_parameters, single_backward = warm_up(resolve_methods(spec, ["single_task"])["single_task"], inputs, targets)
    single_optimizer = torch.optim.Adam(single_parameters, lr=1e-6, fused=True)

    backward()
    steps = {f"adam {name}": optimizer.step for name, optimizer in optimizers.items()}
    steps.update({f"warm-up step, adam {name}": (lambda optimizer=optimizer: (backward(), optimizer.step()))
                  for name, optimizer in optimizers.items()})
    steps["single-task step, adam fused"] = lambda: (single_backward(), single_optimizer.step())
    times = best_times(steps, repeats=5, inner=inner)
    return {"tensors": len(parameters), **{name: round(seconds * 1e3, 3) for name, seconds in times.items()},
            "adam fused / per-tensor": round(times["adam fused"] / times["adam per-tensor"], 3),
            "step fused / per-tensor": round(times["warm-up step, adam fused"] / times["warm-up step, adam per-tensor"], 3),
            "warm-up step / single-task step (fused)": round(times["warm-up step, adam fused"]
                                                             / times["single-task step, adam fused"], 3)}


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for label, (path, inner) in SPECS.items():
        results[label] = measure(path, inner)
        print(label, "(ms)", results[label])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
