"""Small builders shared by the tests."""
from __future__ import annotations

from typing import Any

from dagir.pipeline import compile_spec
from dagir.spec import Spec


def make_spec(tasks: int = 2, nodes: int = 6, stages: int = 2, max_span: int | None = 2,
              image: bool = True, read_in: bool = True, read_out: bool = True, **network: Any) -> Spec:
    """A small valid spec; every knob the property tests vary is an argument."""
    task_list = [{"name": f"t{i}", "kind": "classification", "classes": 3} for i in range(tasks)]
    shape = [1, 8, 8] if image else [5]
    channels = [4 + 2 * s for s in range(stages)]
    return Spec(
        name="test", data={"dataset": "multimnist" if image else "digits"}, tasks=task_list,
        network={"input": {"shape": shape}, "stem": {"channels": 4}, "heads": {"hidden": 6},
                 "central": {"nodes": nodes, "stages": stages, "channels": channels, **network},
                 "flow_restriction": {"max_span": max_span}, "read_in": read_in, "read_out": read_out},
        search={"budget": {"macs": None, "parameters": None}})  # no data set to price single-task networks on


def small_ir(**kwargs: Any):
    return compile_spec(make_spec(**kwargs))


def with_random_logits(ir, seed: int, low: float = -3.0, high: float = 3.0):
    """A copy of `ir` with a uniform random gate logit for every task on every gated edge."""
    import random

    rng, out = random.Random(seed), ir.copy()
    for key, edge in list(out.edges.items()):
        if edge.gated:
            for task in edge.tasks:
                out.set_bernoulli_logit(key, task, rng.uniform(low, high))
    return out
