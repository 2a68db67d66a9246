"""One search step of the lowered supernet against a straightforward implementation of the same
equations.

A search step (DESIGN §4, stage 2): forward with soft gates, the task losses, backward, an Adam step
on the gates and the heads, Θ frozen with its batch norms in eval mode (as `dagir run` does). Timed:
- `reference`: a Python loop over tasks and, per task, over nodes and their in-edges (the
  equations of `backends/reference.py`), with the supernet's own modules and gate vector;
- `per_task`: `lower_supernet(ir, batched=False)`, one generated call per edge and task state;
- `batched`: `lower_supernet(ir, fuse_edges=False)`, the tasks stacked along the batch dimension, one call per edge;
- `fused`: `lower_supernet(ir)` (fuse_edges on by default), edges with the same source and op as one layer;
- `compiled` (the default example only): `fused` under `torch.compile`, as `train.compile_supernet` runs
  it; the seconds its first steps took to compile are printed beside.
Also a warm-up step ("ones" gates, Θ trained, batch norm in train mode): batched vs per-task.

Search spaces: the default example (examples/multimnist.yaml, at batch 8 and at its own batch size,
128) and N = 8, 16, 32 hidden
nodes with max_span M = 3, T = 3 tasks (16x16 inputs, channels 8/16, batch 16). Every figure is the
best of several interleaved repeats in one process, on one thread: the machine is shared, and two
processes each spinning two OpenMP threads on two cores make single steps 10-30x slower at random.

    python benchmarks/supernet_step.py
The last line is a JSON object with the times, the speed-ups and step(N=32)/step(N=16).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from timing import best_times

from dagir.task_states import reached_nodes
from dagir.backends.torch_supernet import (aggregation_module_name, gate_parameters, head_parameters,
                                           lower_supernet, node_op_module_name, weight_parameters)
from dagir.ir import IR
from dagir.pipeline import compile_spec
from dagir.spec import Spec
from dagir import load_spec

ROOT = Path(__file__).resolve().parent.parent


def reference_forward(ir: IR, modules: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """DESIGN §4 per task, edge by edge, in plain Python, with the module's gates (so they train)."""
    gates, slots = modules.gates(), modules.gates.slots
    incoming = ir.in_edges()
    reached = {task: reached_nodes(ir, task) for task in ir.task_names}
    outputs = {}
    for task in ir.task_names:
        states: dict[str, Tensor] = {ir.input_node().name: x}
        for name in ir.topological_order():
            node = ir.nodes[name]
            if node.kind == "input" or name not in reached[task] or node.task not in (None, task):
                continue
            terms: dict[str, Tensor] = {}
            for edge in incoming[name]:
                if edge.is_active(task) and edge.src in states:
                    output = modules.get_submodule(edge.name)(states[edge.src])
                    terms[edge.name] = output * gates[slots[(edge.name, task)]] if edge.gated else output
            if node.aggregation == "sum":
                value = sum(terms.values())
            else:
                value = modules.get_submodule(aggregation_module_name(node))(
                    [terms.get(edge.name) for edge in incoming[name]])
            if node.op is not None:
                value = modules.get_submodule(node_op_module_name(node))(value)
            states[name] = value
        outputs[task] = states[ir.head_of(task).name]
    return outputs


def search_step(module: nn.Module, forward: Callable[[Tensor], dict[str, Tensor]], x: Tensor,
                ) -> Callable[[], None]:
    for parameter in weight_parameters(module):
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(gate_parameters(module) + head_parameters(module), lr=1e-3)
    module.train()
    for name, child in module.named_children():
        if name.startswith(("edge_", "node_", "op_")):
            child.eval()
    module.gates.mode, module.gates.tau = "soft", 0.5

    def step() -> None:
        outputs = forward(x)
        loss = sum(output.float().pow(2).mean() for output in outputs.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def warmup_step(module: nn.Module, x: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()

    def step() -> None:
        module.gates.mode = "ones"
        loss = sum(output.pow(2).mean() for output in module(x).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def scaling_spec(nodes: int) -> Spec:
    return Spec(name=f"step-{nodes}", data={"dataset": "multimnist"},
                tasks=[{"name": f"t{i}", "kind": "classification", "classes": 10} for i in range(3)],
                network={"input": {"shape": [1, 16, 16]}, "stem": {"channels": 8},
                         "central": {"nodes": nodes, "stages": 2, "channels": [8, 16]},
                         "flow_restriction": {"max_span": 3}, "heads": {"hidden": 16}})


def measure(ir: IR, batch: int, repeats: int, inner: int, compiled: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, *ir.input_node().type.shape)
    modules = {"per_task": lower_supernet(ir, batched=False), "batched": lower_supernet(ir, fuse_edges=False),
               "fused": lower_supernet(ir, fuse_edges=True), "reference": lower_supernet(ir, batched=False)}
    if compiled:
        modules["compiled"] = lower_supernet(ir, fuse_edges=True)
    for module in modules.values():
        module.load_state_dict(modules["per_task"].state_dict())
    forwards: dict[str, Callable] = dict(modules)
    forwards["reference"] = lambda v: reference_forward(ir, modules["reference"], v)
    if compiled:
        forwards["compiled"] = torch.compile(modules["compiled"])
    steps = {name: search_step(module, forwards[name], x) for name, module in modules.items()}
    if compiled:
        started = time.perf_counter()
        steps["compiled"]()
        print(f"torch.compile of the search step: {time.perf_counter() - started:.1f} s")
    times = best_times(steps, repeats, inner)
    warm = {name: lower_supernet(ir, batched=name == "warmup_batched")
            for name in ("warmup_per_task", "warmup_batched")}
    times.update(best_times({name: warmup_step(module, x) for name, module in warm.items()}, repeats, inner))
    return times


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    default = load_spec(ROOT / "examples" / "multimnist.yaml")
    cases = {"multimnist": (compile_spec(default), 8),
             f"multimnist-b{default.data.batch_size}": (compile_spec(default), default.data.batch_size)}
    cases.update({f"N={n}": (compile_spec(scaling_spec(n)), 16) for n in (8, 16, 32)})
    results = {}
    for label, (ir, batch) in cases.items():
        default_example = label.startswith("multimnist")
        times = measure(ir, batch, repeats=3 if default_example else 5, inner=1 if default_example else 2,
                        compiled=default_example)
        results[label] = times
        print(f"{label:>10}  edges {len(ir.edges):>4}  step ms: " + "  ".join(
            f"{name} {seconds * 1000:7.1f}" for name, seconds in times.items()))
    summary = {
        "ms": {label: {name: round(s * 1000, 2) for name, s in times.items()} for label, times in results.items()},
        "speedup_batched_vs_reference": {label: round(t["reference"] / t["batched"], 2) for label, t in results.items()},
        "speedup_fused_vs_reference": {label: round(t["reference"] / t["fused"], 2) for label, t in results.items()},
        "speedup_compiled_vs_reference": {label: round(t["reference"] / t["compiled"], 2)
                                          for label, t in results.items() if "compiled" in t},
        "speedup_batched_vs_per_task": {label: round(t["per_task"] / t["batched"], 2) for label, t in results.items()},
        "fused_over_batched": {label: round(t["fused"] / t["batched"], 3) for label, t in results.items()},
        "warmup_speedup_batched_vs_per_task": {label: round(t["warmup_per_task"] / t["warmup_batched"], 2)
                                               for label, t in results.items()},
        "ratio_step_N32_over_N16": round(results["N=32"]["batched"] / results["N=16"]["batched"], 3),
        "ratio_reference_N32_over_N16": round(results["N=32"]["reference"] / results["N=16"]["reference"], 3),
    }
    for key in ("speedup_batched_vs_reference", "speedup_fused_vs_reference", "speedup_compiled_vs_reference",
                "speedup_batched_vs_per_task", "fused_over_batched",
                "warmup_speedup_batched_vs_per_task"):
        print(f"{key}: {summary[key]}")
    print(f"step(N=32)/step(N=16) = {summary['ratio_step_N32_over_N16']} (batched), "
          f"{summary['ratio_reference_N32_over_N16']} (reference)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
