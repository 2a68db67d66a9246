"""Channels-last and `torch.compile` for the compact network of the default example (issue 15's
`train.channels_last` and `train.compile`): one fine-tuning step (forward + backward of the summed
task losses, train mode, the example's batch of 128), one thread, best of interleaved repeats.

    .venv/bin/python benchmarks/memory_format.py [--spec examples/multimnist.yaml]

The compact network is the one the after-search passes make from the initial gates (every edge
kept): the largest compact network the example can give. Prints ms per step and each variant's
ratio to the plain one; checks first that every variant computes the plain outputs.
"""
from __future__ import annotations

import argparse
import time

import torch

from timing import best_times

from dagir.backends.torch_compact import lower_compact
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.pipeline import compile_spec
from dagir.spec import input_shape, load_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="examples/multimnist.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    passes = parse_pipeline(["discretize", "flow-reduce{flow_budget=0.0}", "share-states"], needs_build=False)
    ir = PassManager(passes).run(compile_spec(spec))
    torch.manual_seed(0)
    plain = lower_compact(ir).train()
    last = lower_compact(ir).train()
    last.load_state_dict(plain.state_dict())
    last = last.to(memory_format=torch.channels_last)
    x = torch.randn(spec.data.batch_size, *input_shape(spec))
    x_last = x.contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    compiled, compiled_last = torch.compile(plain), torch.compile(last)
    compiled(x), compiled_last(x_last)
    compile_seconds = time.perf_counter() - started
    with torch.no_grad():
        expected = plain.eval()(x)
        for module, inputs in ((last, x_last), (compiled, x), (compiled_last, x_last)):
            module.eval()
            got = module(inputs)
            for task in expected:
                torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-4)
    for module in (plain, last, compiled, compiled_last):
        module.train()

    def step(module, inputs, parameters):
        def run() -> None:
            loss = sum(output.square().mean() for output in module(inputs).values())
            for parameter in parameters:
                parameter.grad = None
            loss.backward()
        return run

    times = best_times({"plain": step(plain, x, list(plain.parameters())),
                        "channels_last": step(last, x_last, list(last.parameters())),
                        "compiled": step(compiled, x, list(plain.parameters())),
                        "compiled+channels_last": step(compiled_last, x_last, list(last.parameters()))},
                       repeats=7, inner=3)
    print(f"{args.spec}: compact network, batch {spec.data.batch_size}, one thread "
          f"(torch.compile of both took {compile_seconds:.1f} s)")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds * 1000:8.1f} ms/step   ratio to plain {seconds / times['plain']:.2f}")


if __name__ == "__main__":
    main()
