"""One REINFORCE search step against one gradient search step, on the same routing space.

The space is examples/mtnas.yaml's (2 layers of 4 experts, routes of at most 2, on the tabular
generator's 100 features) and, for images, the same routing on MultiMNIST-sized inputs. Each step
is what `dagir.training.search` does per batch: `reinforce` samples the routes, trains the sampled
network's weights, and takes the policy-gradient step on a held-out batch (a second forward);
`gradient` (joint) runs the softmax-relaxed supernet forward and backward once, gates and weights
together. Best of interleaved repeats in one process, on one thread.

`reinforce` computes only the sampled network, each distinct state once (`backends/torch_sampled.py`);
`reinforce_batched` runs the same steps through the task-batched graph with every edge of every
task's state and the dropped ones multiplied by 0 (`distinct_states = False`), as before. The
`per-task` cases give every task its own expert routes (`expert_scope=task`), with 2 and 4 tasks:
their states coincide only where the sampled routes do.

    python benchmarks/search_step.py
The last line is a JSON object with the times and the ratios reinforce / gradient, reinforce / reinforce_batched.
"""
from __future__ import annotations

import json

import torch

from timing import best_times

from dagir.backends.torch_supernet import head_parameters, lower_supernet, weight_parameters
from dagir.pass_manager import PassManager
from dagir.pipeline import seed_ir, spec_pipeline
from dagir.spec import Spec, TaskSpec
from dagir.training.search import SearchContext, make_strategy

def routing(scope: str) -> list[str]:
    return [f"build-routing{{layers=2, experts=4, route_size=2, expert_scope={scope}}}", "legalize-types",
            "attach-gates"]


def strategies(shape: list[int], width: int, batch: int, scope: str = "shared", count: int = 2) -> dict[str, object]:
    tasks = [{"name": f"t{i}", "kind": "regression"} for i in range(count)]
    spec = Spec(tasks=tasks, network={"input": {"shape": shape}, "stem": {"channels": width},
                                      "central": {"nodes": 2, "stages": 1, "channels": [width]},
                                      "heads": {"hidden": width}})
    ir = PassManager(spec_pipeline(routing(scope), spec)).run(seed_ir(spec))
    x = torch.randn(batch, *shape)
    batch_ = (x, {t["name"]: torch.randn(batch, 1) for t in tasks})
    held = (torch.randn(batch, *shape), {t["name"]: torch.randn(batch, 1) for t in tasks})
    steps = {}
    for name, stage in (("reinforce", {"strategy": "reinforce"}), ("reinforce_batched", {"strategy": "reinforce"}),
                        ("gradient", {"train_weights": True})):
        torch.manual_seed(0)
        module = lower_supernet(ir).train()
        module.distinct_states = name != "reinforce_batched"
        search = Spec(tasks=tasks, train={"search": stage}).train.search
        squeeze = Spec(tasks=tasks, search={"squeeze": {"kind": "none"}}).search.squeeze
        context = SearchContext(module, search, squeeze, [TaskSpec(**t) for t in tasks], module,
                                weight_parameters(module), head_parameters(module), 0,
                                arch_batch=(lambda e, i: held) if name.startswith("reinforce") else (lambda e, i: None))
        strategy = make_strategy(context)
        counter = {"i": 0}

        def step(strategy=strategy, counter=counter):
            counter["i"] += 1
            strategy.step(batch_, 0, counter["i"])
        steps[name] = step
    return steps


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    cases = (("tabular", [100], 32, 128, "shared", 2), ("image", [1, 36, 36], 16, 32, "shared", 2),
             ("tabular per-task T=2", [100], 32, 128, "task", 2), ("tabular per-task T=4", [100], 32, 128, "task", 4),
             ("image per-task T=4", [1, 36, 36], 16, 32, "task", 4))
    for label, shape, width, batch, scope, count in cases:
        times = best_times(strategies(shape, width, batch, scope, count), repeats=5, inner=10)
        ratio, saved = times["reinforce"] / times["gradient"], times["reinforce"] / times["reinforce_batched"]
        results[label] = {"ms": {k: round(v * 1000, 2) for k, v in times.items()},
                          "reinforce_over_gradient": round(ratio, 3), "reinforce_over_batched": round(saved, 3)}
        print(f"{label:>21}  step ms: reinforce {times['reinforce'] * 1000:7.2f}  (batched "
              f"{times['reinforce_batched'] * 1000:7.2f})  gradient {times['gradient'] * 1000:7.2f}  "
              f"reinforce/gradient {ratio:.2f}  reinforce/batched {saved:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
