"""The gate aggregation (`GateAggregation`, a node's softmax over its inputs, with the query the
pooled concatenation of the inputs), forward and backward, its weighted sum `Σ_i w_i · input_i`
three ways:
- `loop`: the query's concatenation, then one product per input and a chain of adds (the
  formulation before stop 32);
- `mul_sum`: the inputs stacked `[B, k, ...]` (the query a view of the stack), one broadcast
  product and one sum over k;
- `bmm`: the same stack as `[B, k, rest]`, one batched matrix product `[B, 1, k] @ [B, k, rest]`.
`GateAggregation` takes `mul_sum` on small inputs and `bmm` where an input has more than
`GateAggregation.BMM_ABOVE` (1024) values per sample. Best of interleaved repeats in one process, on
one thread.

    .venv/bin/python benchmarks/aggregation_step.py
"""
from __future__ import annotations

import json

import torch

from timing import best_times

from dagir.backends.torch_aggregations import GateAggregation

SHAPES = [(128, 3, (64,)), (256, 3, (64,)), (32, 3, (16, 8, 8)), (128, 3, (16, 8, 8)), (128, 3, (8, 16, 16)),
          (128, 3, (32, 8, 8)), (384, 3, (16, 18, 18)), (384, 4, (32, 9, 9))]


def weighted_sums(batch: int, k: int, rest: tuple[int, ...]) -> dict[str, float]:
    inputs = [torch.randn(batch, *rest, requires_grad=True) for _ in range(k)]
    route = torch.nn.Linear(k * rest[0], k)
    ones = (1,) * len(rest)

    def weights_of(joined: torch.Tensor) -> torch.Tensor:
        return torch.softmax(route(GateAggregation.global_average(joined)), 1)

    def loop() -> None:
        weights = weights_of(torch.cat(inputs, dim=1))
        sum(weights[:, i].reshape((-1,) + ones) * inputs[i] for i in range(k)).sum().backward()

    def mul_sum() -> None:
        stacked = torch.stack(inputs, dim=1)
        weights = weights_of(stacked.flatten(1, 2))
        (weights.view(batch, k, *ones) * stacked).sum(1).sum().backward()

    def bmm() -> None:
        stacked = torch.stack(inputs, dim=1)
        weights = weights_of(stacked.flatten(1, 2))
        torch.bmm(weights.unsqueeze(1), stacked.flatten(2)).sum().backward()

    inner = 50 if len(rest) == 1 else 5
    times = best_times({"loop": loop, "mul_sum": mul_sum, "bmm": bmm}, repeats=5, inner=inner)
    return {name: round(seconds * 1e3, 4) for name, seconds in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for batch, k, rest in SHAPES:
        label = f"B={batch} k={k} input={'x'.join(map(str, rest))}"
        results[label] = times = weighted_sums(batch, k, rest)
        chosen = "bmm" if torch.Size(rest).numel() > GateAggregation.BMM_ABOVE else "mul_sum"
        print(f"{label:>28}  ms: " + "  ".join(f"{name} {value:8.3f}" for name, value in times.items())
              + f"   chosen {chosen}: {times[chosen] / times['loop']:.2f}x the loop")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
