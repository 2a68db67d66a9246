"""Do the tasks' gradients disagree on the warmed-up supernet where sharing hurts? A diagnostic for issue 12.

    .venv/bin/python benchmarks/gradient_conflict.py examples/mmoe_synthetic.yaml data.options.correlation=0.1 [seed=1]

Runs the searched method's warm-up as `dagir run` does, then, on 20 training batches with every gate 1, sums each
task's loss gradient over the batches for every edge and node module the tasks share, and prints the cosine
between two tasks' summed gradients (the mean over task pairs), averaged per kind of module: the stem, the
read-in edges, the internal edges, the nodes' aggregations. A negative cosine is a module the tasks pull apart.
"""
from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from dagir.bench_job import resolve_methods, run_method
from dagir.spec import load_spec
from dagir.tasks import task_loss
from dagir.training import stages
from dagir.training.loop import epoch_batches

BATCHES = 20


class WarmedUp(Exception):
    """Raised after the warm-up, with the cosine of each shared module: the rest of the run is not needed."""

    def __init__(self, cosines: dict[str, float]) -> None:
        super().__init__()
        self.cosines = cosines


def summed_gradients(network, data, spec) -> dict[str, dict[str, torch.Tensor]]:
    """Per task, per shared module, the task loss's gradient summed over `BATCHES` training batches."""
    modules = {name: list(child.parameters()) for name, child in network.named_children()
               if name.startswith(("edge_", "node_")) and any(True for _ in child.parameters())}
    flat = [p for parameters in modules.values() for p in parameters]
    sums = {task.name: torch.zeros(sum(p.numel() for p in flat)) for task in spec.tasks}
    network.gates.mode = "ones"
    network.train()
    batches = epoch_batches(data.train, spec.data.batch_size, seed=12345)
    for index in range(min(BATCHES, len(batches))):
        inputs, targets = batches[index]
        outputs = network(inputs)
        for task in spec.tasks:
            loss = task_loss(task.kind, outputs[task.name], targets[task.name], task.loss)
            grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
            sums[task.name] += torch.cat([torch.zeros(p.numel()) if g is None else g.flatten()
                                          for p, g in zip(flat, grads)])
    bounds, start = {}, 0
    for name, parameters in modules.items():
        size = sum(p.numel() for p in parameters)
        bounds[name], start = (start, start + size), start + size
    return {task: {name: vector[a:b] for name, (a, b) in bounds.items()} for task, vector in sums.items()}


def cosines(gradients: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    out = {}
    for name in next(iter(gradients.values())):
        values = [float(gradients[a][name] @ gradients[b][name] / (gradients[a][name].norm() * gradients[b][name].norm()))
                  for a, b in itertools.combinations(gradients, 2)
                  if gradients[a][name].norm() > 0 and gradients[b][name].norm() > 0]
        if values:
            out[name] = statistics.fmean(values)
    return out


def kind(module: str) -> str:
    if module == "edge_input_stem":
        return "stem"
    if module.startswith("edge_stem_"):
        return "read-in"
    return "node" if module.startswith("node_") else "internal"


def main() -> None:
    torch.set_num_threads(1)
    spec = load_spec(sys.argv[1], sys.argv[2:])
    warmup = stages.warmup

    def measured_warmup(runner, network, data, state) -> None:
        warmup(runner, network, data, state)
        raise WarmedUp(cosines(summed_gradients(network, data, runner.spec)))
    stages.warmup = measured_warmup
    with tempfile.TemporaryDirectory() as scratch:
        try:
            run_method(resolve_methods(spec, ["searched"])["searched"], Path(scratch) / "run", progress=False,
                       echo=lambda text: None)
        except WarmedUp as done:
            found = done.cosines
    by_kind: dict[str, list[float]] = {}
    for module, cosine in found.items():
        by_kind.setdefault(kind(module), []).append(cosine)
    shown = "  ".join(f"{name} {statistics.fmean(values):+.3f}" for name, values in by_kind.items())
    print(f"{' '.join(sys.argv[1:])}: gradient cosine between tasks  {shown}  all {statistics.fmean(found.values()):+.3f}")


if __name__ == "__main__":
    main()
