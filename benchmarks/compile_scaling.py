"""How the pre-search pipeline scales with the number of hidden nodes under a flow restriction.

Times `compile_spec` (all five passes, verifier on, no dumps, no torch) for N = 16, 64, 256 hidden
nodes with max_span M = 8 and T = 10 tasks, best of several runs. The IR grows about 4x from
N = 64 to N = 256, so a linear pipeline shows a time ratio near 4.

    python benchmarks/compile_scaling.py
The last line is a JSON object with the times and the ratio time(256)/time(64).
"""
from __future__ import annotations

import json
import sys
import time

from dagir.pipeline import compile_spec
from dagir.spec import Spec


def spec_for(nodes: int, max_span: int = 8, tasks: int = 10) -> Spec:
    return Spec(name=f"scale-{nodes}", data={"dataset": "multimnist"},
                tasks=[{"name": f"t{i}", "kind": "classification", "classes": 10} for i in range(tasks)],
                network={"central": {"nodes": nodes, "stages": 3, "channels": [16, 32, 64]},
                         "flow_restriction": {"max_span": max_span}})


def best_time(spec: Spec, repeats: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        ir = compile_spec(spec)
        best = min(best, time.perf_counter() - start)
        size = len(ir.nodes) + len(ir.edges)
    return best, size


def main() -> None:
    results = {}
    for nodes in (16, 64, 256):
        seconds, size = best_time(spec_for(nodes), repeats=7 if nodes < 256 else 5)
        results[nodes] = (seconds, size)
        print(f"N={nodes:>4}  IR size (nodes+edges) {size:>6}  compile {seconds * 1000:8.2f} ms")
    ratio = results[256][0] / results[64][0]
    size_ratio = results[256][1] / results[64][1]
    print(f"time(256)/time(64) = {ratio:.2f}   size(256)/size(64) = {size_ratio:.2f}")
    assert "torch" not in sys.modules, "the pre-search pipeline must not import torch"
    print(json.dumps({"seconds": {str(n): round(s, 5) for n, (s, _) in results.items()},
                      "ir_size": {str(n): z for n, (_, z) in results.items()},
                      "ratio_time_256_over_64": round(ratio, 3), "ratio_size_256_over_64": round(size_ratio, 3)}))


if __name__ == "__main__":
    main()
