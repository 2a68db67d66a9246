"""The compact module against a hand-written `nn.Module` with the same layers, and eager against
`torch.compile(fullgraph=True)`.

The network: 2 tasks, 4 hidden nodes in 2 stages (16x16 then 8x8, 8 and 16 channels), max_span 2,
read-in and read-out, every edge kept (gates at their initial 2.0, no reduction), so every hidden
state is shared and each head sums four read-outs. `Handwritten` below is that network written
out by hand with the compact module's own layers (same names, same weights); the script checks the
two compute the same outputs before timing them. Timed: forward + backward of the summed task
losses, train mode, batch 32, one thread, best of interleaved repeats.

    python benchmarks/compact_forward.py
The last line is a JSON object with the times and the ratios compact/hand-written and
compiled/eager.
"""
from __future__ import annotations

import copy
import json
import time
from typing import Callable

import torch
from torch import Tensor, nn

from timing import best_times

from dagir.backends.torch_compact import lower_compact
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.pipeline import compile_spec
from dagir.spec import Spec

SPEC = Spec(name="compact-bench", data={"dataset": "multimnist"},
            tasks=[{"name": "t0", "kind": "classification", "classes": 10},
                   {"name": "t1", "kind": "classification", "classes": 10}],
            network={"input": {"shape": [1, 16, 16]}, "stem": {"channels": 8},
                     "central": {"nodes": 4, "stages": 2, "channels": [8, 16]},
                     "flow_restriction": {"max_span": 2}, "heads": {"hidden": 16}})


class Handwritten(nn.Module):
    """The same network as the compact module, written by hand (its layers are deep copies)."""

    def __init__(self, compact: nn.Module) -> None:
        super().__init__()
        for name, child in compact.named_children():
            setattr(self, name, copy.deepcopy(child))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stem = self.edge_input_stem(x)
        h1 = self.edge_stem_h1(stem)
        h2 = self.edge_stem_h2(stem) + self.edge_h1_h2(h1)
        h3 = self.edge_stem_h3(stem) + self.edge_h1_h3(h1) + self.edge_h2_h3(h2)
        h4 = self.edge_stem_h4(stem) + self.edge_h2_h4(h2) + self.edge_h3_h4(h3)
        t0 = self.edge_h1_head_t0(h1) + self.edge_h2_head_t0(h2) + self.edge_h3_head_t0(h3) + self.edge_h4_head_t0(h4)
        t1 = self.edge_h1_head_t1(h1) + self.edge_h2_head_t1(h2) + self.edge_h3_head_t1(h3) + self.edge_h4_head_t1(h4)
        return {"t0": self.head_t0(t0), "t1": self.head_t1(t1)}


def compact_module() -> nn.Module:
    passes = parse_pipeline(["discretize", "flow-reduce{flow_budget=0.0}", "share-states"], needs_build=False)
    return lower_compact(PassManager(passes).run(compile_spec(SPEC)))


def train_step(module: Callable[[Tensor], dict[str, Tensor]], parameters: list[nn.Parameter],
               x: Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = sum(output.square().mean() for output in module(x).values())
        for parameter in parameters:
            parameter.grad = None
        loss.backward()
    return step


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    compact = compact_module().train()
    hand = Handwritten(compact).train()
    x = torch.randn(32, 1, 16, 16)
    outputs, expected = compact(x), hand(x)
    for task in expected:
        torch.testing.assert_close(outputs[task], expected[task])
    hand.load_state_dict(compact.state_dict())  # the check above ran BN in train mode once each
    started = time.perf_counter()
    compiled = torch.compile(compact, fullgraph=True)
    compiled(x)
    compile_seconds = time.perf_counter() - started
    torch.testing.assert_close(compiled(x), compact(x), rtol=1e-4, atol=1e-4)
    steps = {"hand": train_step(hand, list(hand.parameters()), x),
             "compact": train_step(compact, list(compact.parameters()), x),
             "compiled": train_step(compiled, list(compact.parameters()), x)}
    times = best_times(steps, repeats=15, inner=10)
    for name, seconds in times.items():
        print(f"{name:>9}: forward+backward {seconds * 1000:7.3f} ms")
    print(f"compact/hand-written = {times['compact'] / times['hand']:.3f}   "
          f"compiled/eager = {times['compiled'] / times['compact']:.3f}   "
          f"(torch.compile took {compile_seconds:.1f} s)")
    print(json.dumps({"ms": {name: round(s * 1000, 3) for name, s in times.items()},
                      "ratio_compact_over_handwritten": round(times["compact"] / times["hand"], 3),
                      "ratio_compiled_over_eager": round(times["compiled"] / times["compact"], 3),
                      "compile_seconds": round(compile_seconds, 1)}))


if __name__ == "__main__":
    main()
