"""One REINFORCE search step against one gradient search step, on the same routing space.

The space is examples/mtnas.yaml's (2 layers of 4 experts, routes of at most 2, on the tabular
generator's 100 features) and, for images, the same routing on MultiMNIST-sized inputs. Each step
is what `dagir.training.search` does per batch: `reinforce` samples the routes, trains the sampled
network's weights, and takes the policy-gradient step on a held-out batch (a second forward);
`gradient` (joint) runs the softmax-relaxed supernet forward and backward once, gates and weights
together. Best of interleaved repeats in one process, on one thread.

    python benchmarks/search_step.py
The last line is a JSON object with the times and the ratio reinforce / gradient.
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

ROUTING = ["build-routing{layers=2, experts=4, route_size=2}", "legalize-types", "attach-gates"]


def strategies(shape: list[int], width: int, batch: int) -> dict[str, object]:
    tasks = [{"name": "a", "kind": "regression"}, {"name": "b", "kind": "regression"}]
    spec = Spec(tasks=tasks, network={"input": {"shape": shape}, "stem": {"channels": width},
                                      "central": {"nodes": 2, "stages": 1, "channels": [width]},
                                      "heads": {"hidden": width}})
    ir = PassManager(spec_pipeline(ROUTING, spec)).run(seed_ir(spec))
    x = torch.randn(batch, *shape)
    batch_ = (x, {"a": torch.randn(batch, 1), "b": torch.randn(batch, 1)})
    held = (torch.randn(batch, *shape), {"a": torch.randn(batch, 1), "b": torch.randn(batch, 1)})
    steps = {}
    for name, stage in (("reinforce", {"strategy": "reinforce"}), ("gradient", {"train_weights": True})):
        torch.manual_seed(0)
        module = lower_supernet(ir).train()
        search = Spec(tasks=tasks, train={"search": stage}).train.search
        squeeze = Spec(tasks=tasks, search={"squeeze": {"kind": "none"}}).search.squeeze
        context = SearchContext(module, search, squeeze, [TaskSpec(**t) for t in tasks], module,
                                weight_parameters(module), head_parameters(module), 0,
                                arch_batch=(lambda epoch, index: held) if name == "reinforce" else (lambda e, i: None))
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
    for label, shape, width, batch in (("tabular", [100], 32, 128), ("image", [1, 36, 36], 16, 32)):
        times = best_times(strategies(shape, width, batch), repeats=5, inner=10)
        ratio = times["reinforce"] / times["gradient"]
        results[label] = {"ms": {k: round(v * 1000, 2) for k, v in times.items()}, "reinforce_over_gradient": round(ratio, 3)}
        print(f"{label:>8}  step ms: reinforce {times['reinforce'] * 1000:7.2f}  gradient {times['gradient'] * 1000:7.2f}"
              f"  ratio {ratio:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
