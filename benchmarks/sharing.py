"""What sharing saves: MACs of the compact module serving every task in one pass against running
each task's sub-network separately, on a searched-like IR.

The IR: the default example's search space (examples/multimnist.yaml: 9 hidden nodes, max_span 3,
3 tasks) with random gate logits (as a search might leave them, seeds 0-4), through the post-search
pipeline (discretize, flow-reduce, share-states). MACs per sample come from `dagir.compact_cost`
(each shared state and each edge op on a distinct source state counted once); the script also
checks them against torch's FLOP counter on the generated compact module.

    python benchmarks/sharing.py
The last line is a JSON object with the MACs and parameters and the ratio shared/separate per seed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dagir import load_spec
from dagir.backends.torch_compact import lower_compact
from dagir.compact_cost import compact_macs, compact_parameters
from dagir.ir import IR
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.pipeline import compile_spec

ROOT = Path(__file__).resolve().parent.parent


def searched_like(ir: IR, seed: int) -> IR:
    rng, out = random.Random(seed), ir.copy()
    for key, edge in list(out.edges.items()):
        if edge.gated:
            for task in edge.tasks:
                out.set_bernoulli_logit(key, task, rng.uniform(-2, 4))
    return out


def main() -> None:
    spec = load_spec(ROOT / "examples" / "multimnist.yaml")
    supernet_ir = compile_spec(spec)
    passes = parse_pipeline(["discretize", "flow-reduce{flow_budget=0.05}", "share-states"], needs_build=False)
    results = {}
    for seed in range(5):
        reduced = PassManager(passes).run(searched_like(supernet_ir, seed))
        macs, parameters = compact_macs(reduced), compact_parameters(reduced)
        compact = lower_compact(reduced).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            compact(torch.zeros(1, *reduced.input_node().type.shape))
        assert counter.get_total_flops() == 2 * macs["total"], "the cost model must count what the module runs"
        ratio = macs["total"] / macs["separate_total"]
        results[seed] = {"macs_shared": macs["total"], "macs_separate": macs["separate_total"],
                         "macs_per_task": macs["per_task"], "ratio_shared_over_separate": round(ratio, 4),
                         "parameters": parameters["total"],
                         "parameters_separate": sum(parameters["per_task"].values()),
                         "distinct_states": reduced.meta["share_states"]["distinct_states"]}
        print(f"seed {seed}: MACs shared {macs['total'] / 1e6:7.2f} M  separate {macs['separate_total'] / 1e6:7.2f} M"
              f"  ratio {ratio:.3f}  params {parameters['total']}  states {results[seed]['distinct_states']}")
    ratios = [r["ratio_shared_over_separate"] for r in results.values()]
    print(f"shared/separate MACs: mean {sum(ratios) / len(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(json.dumps({"per_seed": results, "mean_ratio_shared_over_separate": round(sum(ratios) / len(ratios), 4)}))


if __name__ == "__main__":
    main()
