"""The compact lowering: equal to the supernet with hard gates set to the keep masks, each shared
state and each (edge, source state) computed once, standalone export, and the cost model."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dagir.backends.torch_aggregations import MixAggregation, NddrAggregation
from dagir.backends.torch_compact import PerStateCopy, PerStateNorm, lower_compact
from dagir.backends.torch_export import export_compact, load_compact
from dagir.backends.torch_supernet import count_parameters, lower_supernet
from dagir.compact_cost import compact_macs, compact_parameters, compact_states
from dagir.errors import UserError
from dagir.ir import AGGREGATIONS, IR
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.pipeline import compile_spec

from helpers import make_spec, with_random_logits

LARGE = 50.0


def post_search(ir: IR, flow_budget: float = 0.1, untie: bool = False) -> IR:
    passes = parse_pipeline(["discretize", f"flow-reduce{{flow_budget={flow_budget}}}",
                             f"share-states{{untie={'true' if untie else 'false'}}}"], needs_build=False)
    return PassManager(passes).run(ir)


def randomize_batch_norm(module: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so copying them is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                for tensor, low, high in ((layer.running_mean, -1, 1), (layer.running_var, 0.5, 2),
                                          (layer.weight, 0.5, 2), (layer.bias, -1, 1)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) * (high - low) + low)


def hard_supernet(searched: IR, reduced: IR, seed: int = 0) -> nn.Module:
    """The supernet of `searched` in eval mode, hard gates: 1 where `reduced` keeps the edge for the
    task, 0 elsewhere (edges the reduction deleted included)."""
    supernet = lower_supernet(searched, dtype=torch.float64)
    randomize_batch_norm(supernet, seed)
    with torch.no_grad():  # a mix node's weight away from its start, so copying it is tested
        for layer in supernet.modules():
            if isinstance(layer, MixAggregation):
                layer.mix.uniform_(-2, 2, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for entry in supernet.gates.entries:
            edge = reduced.edges.get((entry.src, entry.dst))
            kept = edge is not None and edge.is_active(entry.task)
            supernet.gates.logits[entry.group][entry.position] = LARGE if kept else -LARGE
    supernet.gates.mode = "hard"
    return supernet.eval()


def edge_calls(module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in module.graph.nodes if n.op == "call_module" and str(n.target).startswith("edge_")]


def batch_for(ir: IR, size: int = 3) -> torch.Tensor:
    return torch.randn(size, *ir.input_node().type.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(size))


@st.composite
def searched_spaces(draw) -> IR:
    nodes = draw(st.integers(1, 6))
    spec = make_spec(tasks=draw(st.integers(1, 3)), nodes=nodes, stages=draw(st.integers(1, min(2, nodes))),
                     max_span=draw(st.none() | st.integers(1, nodes)), image=draw(st.booleans()),
                     read_in=draw(st.booleans()), read_out=draw(st.booleans()),
                     aggregation=draw(st.sampled_from(AGGREGATIONS)), nddr_norm=draw(st.sampled_from(NddrAggregation.NORMS)))
    return with_random_logits(compile_spec(spec), draw(st.integers(0, 2 ** 16)))


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(searched_spaces(), st.sampled_from([0.0, 0.1, 0.4]), st.booleans())
def test_compact_equals_the_hard_gated_supernet(searched, flow_budget, untie):
    reduced = post_search(searched, flow_budget, untie)
    supernet = hard_supernet(searched, reduced)
    compact = lower_compact(reduced, supernet, dtype=torch.float64).eval()
    x = batch_for(searched)
    expected, outputs = supernet(x), compact(x)
    assert set(outputs) == set(reduced.task_names)
    for task in reduced.task_names:
        torch.testing.assert_close(outputs[task], expected[task])
    assert not hasattr(compact, "gates")


@PROPERTY
@given(searched_spaces(), st.sampled_from([0.0, 0.1, 0.4]), st.booleans())
def test_each_state_and_edge_call_is_computed_once(searched, flow_budget, untie):
    reduced = post_search(searched, flow_budget, untie)
    compact = lower_compact(reduced, dtype=torch.float64)
    states = compact_states(reduced)
    groups = reduced.meta["share_states"]["states"]
    state_of = {(node, task): index for node, node_groups in groups.items()
                for index, group in enumerate(node_groups) for task in group}
    pairs = {(edge.name, state_of[(edge.src, reduced.nodes[edge.src].task or task)])
             for edge in reduced.edges.values() for task in edge.active_tasks()}
    per_task = sum(1 for edge in reduced.edges.values() for _ in edge.active_tasks())
    calls = edge_calls(compact)
    assert len(calls) == len(pairs) <= per_task
    # no edge op is applied twice to the same value
    assert len({(n.target, n.args[0]) for n in calls}) == len(calls)
    assert len(states) == reduced.meta["share_states"]["distinct_states"]
    macs = compact_macs(reduced)
    assert macs["separate_total"] == sum(macs["per_task"].values())
    assert 0 < macs["total"] <= macs["separate_total"]
    if len(reduced.tasks) == 1:
        assert macs["total"] == macs["separate_total"]
        assert len(calls) == per_task
    assert compact_parameters(reduced)["total"] == count_parameters(compact)


@PROPERTY
@given(searched_spaces(), st.sampled_from([0.0, 0.4]), st.booleans())
def test_each_state_gathers_its_own_batch_norm_statistics(searched, flow_budget, untie):
    """Fine-tuning trains batch norm: the statistics one training pass gathers (momentum 1) give, at
    test time, exactly what training computed, for every state, even where one op serves several
    states. (Running variance is the unbiased estimate and batch variance is not: each batch norm's
    running variance is scaled back by (n - 1) / n after its training call, so the two agree.)"""
    torch.manual_seed(0)  # the ops' initial weights: the same example always gives the same network
    reduced = post_search(searched, flow_budget, untie)
    compact = lower_compact(reduced, hard_supernet(searched, reduced), dtype=torch.float64)

    def biased(layer, inputs, output):
        if layer.training:
            n = inputs[0].numel() // inputs[0].shape[1]
            layer.running_var.mul_((n - 1) / n)

    for layer in compact.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = 1.0
            layer.register_forward_hook(biased)
    x = batch_for(searched, size=64)
    with torch.no_grad():
        trained = compact.train()(x)
        tested = compact.eval()(x)
    for task in reduced.task_names:
        torch.testing.assert_close(tested[task], trained[task])


def test_shared_states_make_the_compact_network_cheaper():
    searched = compile_spec(make_spec(tasks=3, nodes=4, stages=1))  # every gate at init: all kept
    reduced = post_search(searched, 0.0)
    macs = compact_macs(reduced)
    assert macs["total"] < macs["separate_total"]
    compact = lower_compact(reduced)
    per_task = sum(len(edge.active_tasks()) for edge in reduced.edges.values())
    assert len(edge_calls(compact)) < per_task


@PROPERTY
@given(searched_spaces(), st.sampled_from([0.0, 0.4]))
def test_untied_states_train_weights_of_their_own(searched, flow_budget):
    """With `untie`, an op called on several states has a copy per state, and one task's loss
    reaches at most one of them (a task has one state per node), so tasks whose states differ
    never move each other's weights there."""
    reduced = post_search(searched, flow_budget, untie=True)
    compact = lower_compact(reduced, hard_supernet(searched, reduced), dtype=torch.float64).train()
    untied = [child for child in compact.children() if isinstance(child, PerStateCopy)]
    x = batch_for(searched, size=4)
    reached = [[False] * (len(child.copies) + 1) for child in untied]  # by some task's loss
    for task in reduced.task_names:
        compact.zero_grad(set_to_none=True)
        compact(x)[task].pow(2).sum().backward()
        for child, seen in zip(untied, reached):
            moved = [any(p.grad is not None for p in state.parameters())  # in this loss's graph
                     for state in (child.op, *child.copies)]
            assert sum(moved) <= 1
            seen[:] = [a or b for a, b in zip(seen, moved)]
    assert all(all(seen) for seen in reached), "every state's copy is some task's to train"


def test_untied_export_loads_and_reproduces_the_module(tmp_path: Path):
    searched = with_random_logits(compile_spec(make_spec(tasks=3, nodes=5, stages=2)), 4)
    reduced = post_search(searched, untie=True)
    compact = lower_compact(reduced, hard_supernet(searched, reduced, seed=1), dtype=torch.float64).eval()
    assert any(isinstance(child, PerStateCopy) for child in compact.children())
    assert compact_parameters(reduced)["total"] > compact_parameters(post_search(searched))["total"]
    with torch.no_grad():
        for parameter in compact.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # every state's copy differs, as after fine-tuning
    x = batch_for(searched)
    expected = compact(x)
    export_compact(compact, reduced, tmp_path)
    loaded, _ = load_compact(tmp_path, dtype=torch.float64)
    outputs = loaded.eval()(x)
    for task in reduced.task_names:
        torch.testing.assert_close(outputs[task], expected[task])


def test_generated_code_is_readable_and_names_follow_the_ir():
    searched = with_random_logits(compile_spec(make_spec(tasks=2, nodes=4, stages=2, aggregation="nddr")), 3)
    reduced = post_search(searched)
    compact = lower_compact(reduced, hard_supernet(searched, reduced))
    code = compact.code
    assert "h1_s0 = self.node_h1([" in code
    assert "stem = self.edge_input_stem(x)" in code
    assert "return {'t0': head_t0, 't1': head_t1}" in code
    assert "gates" not in code
    children = {name for name, _ in compact.named_children()}
    assert {e.name for e in reduced.edges.values()} == {c for c in children if c.startswith("edge_")}
    assert {"head_t0", "head_t1"} <= children


@pytest.mark.parametrize("aggregation, nddr_norm", [(aggregation, "batch") for aggregation in AGGREGATIONS]
                         + [("nddr", "layer"), ("nddr", "none"), ("mix", "layer")])
def test_export_is_standalone_and_load_reproduces_the_module(tmp_path: Path, aggregation: str, nddr_norm: str):
    searched = with_random_logits(compile_spec(make_spec(tasks=3, nodes=5, stages=2, aggregation=aggregation,
                                                         nddr_norm=nddr_norm)), 4)
    reduced = post_search(searched)
    supernet = hard_supernet(searched, reduced, seed=1)
    compact = lower_compact(reduced, supernet, dtype=torch.float64).eval()
    assert any(isinstance(child, PerStateNorm) for child in compact.children())
    randomize_batch_norm(compact, seed=2)  # every state's own batch norms differ, as after fine-tuning
    x = batch_for(searched)
    expected = compact(x)
    traced = torch.jit.trace(compact, (x,), strict=False, check_trace=False)  # dagir export --format torchscript
    assert all(torch.equal(traced(x)[task], expected[task]) for task in reduced.task_names)
    export_compact(compact, reduced, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"compact.py", "compact.json", "compact.safetensors"}

    source = (tmp_path / "compact.py").read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"torch", "copy", "json", "struct", "collections"}
    spec = importlib.util.spec_from_file_location(f"exported_compact_{aggregation}_{nddr_norm}", tmp_path / "compact.py")
    standalone = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(standalone)
    network = standalone.load(tmp_path / "compact.safetensors")
    assert set(network.state_dict()) == set(compact.state_dict())
    outputs = network(x)
    for task in reduced.task_names:
        assert torch.equal(outputs[task], expected[task])

    loaded, ir = load_compact(tmp_path, dtype=torch.float64)
    assert ir.to_dict()["edges"] == reduced.to_dict()["edges"]
    outputs = loaded.eval()(x)
    for task in reduced.task_names:
        assert torch.equal(outputs[task], expected[task])
    assert compact_parameters(ir)["total"] == count_parameters(loaded) == count_parameters(compact)


def test_load_reports_missing_and_corrupt_files(tmp_path: Path):
    reduced = post_search(with_random_logits(compile_spec(make_spec(tasks=2, nodes=3, stages=1)), 1))
    compact = lower_compact(reduced)
    with pytest.raises(UserError, match="compact.json: no such file"):
        load_compact(tmp_path)
    export_compact(compact, reduced, tmp_path)
    weights = tmp_path / "compact.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_compact(tmp_path)
    weights.unlink()
    with pytest.raises(UserError, match="compact.safetensors: no such file"):
        load_compact(tmp_path)
    other = post_search(with_random_logits(compile_spec(make_spec(tasks=2, nodes=4, stages=1)), 1))
    export_compact(lower_compact(other), other, tmp_path / "other")
    (tmp_path / "other" / "compact.safetensors").replace(weights)
    with pytest.raises(UserError, match="weights do not match"):
        load_compact(tmp_path)
    (tmp_path / "compact.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_compact(tmp_path)


def test_lowering_needs_shared_states():
    searched = compile_spec(make_spec(tasks=2, nodes=3, stages=1))
    with pytest.raises(UserError, match="share-states"):
        lower_compact(searched)


def test_one_task_costs_its_own_sub_network():
    reduced = post_search(with_random_logits(compile_spec(make_spec(tasks=1, nodes=4, stages=2)), 5))
    macs = compact_macs(reduced)
    assert macs["total"] == macs["separate_total"] == macs["per_task"]["t0"]
    assert compact_parameters(reduced)["total"] == compact_parameters(reduced)["per_task"]["t0"]


@pytest.mark.parametrize("aggregation, seed", [("sum", 11), ("nddr", 0), ("nddr", 5)])
def test_compact_macs_count_what_the_module_computes(aggregation, seed):
    """compact_macs (shared states and shared edge calls once) against torch's own FLOP counter on
    the generated module: convolutions and linear layers, 2 FLOPs per multiply-accumulate. Summed
    and NDDR nodes (a state lacking some of a node's inputs mixes only those it has); the counter
    does not see a gate's weighted sum (elementwise), which compact_macs counts."""
    from torch.utils.flop_counter import FlopCounterMode

    searched = with_random_logits(compile_spec(make_spec(tasks=3, nodes=5, stages=2, max_span=3,
                                                         aggregation=aggregation)), seed)
    reduced = post_search(searched, 0.1)
    compact = lower_compact(reduced).eval()
    batch = 2
    with FlopCounterMode(display=False) as counter:
        compact(torch.randn(batch, *reduced.input_node().type.shape))
    macs = compact_macs(reduced)
    assert counter.get_total_flops() == 2 * batch * macs["total"]
    assert macs["total"] < macs["separate_total"], "read-outs of shared states are shared work"


def test_compact_module_compiles_with_fullgraph():
    """~20 s on a 2-core CPU (the nddr aggregation's list of optional inputs included)."""
    searched = with_random_logits(compile_spec(make_spec(tasks=2, nodes=3, stages=1, aggregation="nddr")), 2)
    reduced = post_search(searched)
    compact = lower_compact(reduced, hard_supernet(searched, reduced), dtype=torch.float64).eval()
    compiled = torch.compile(compact, fullgraph=True, dynamic=False)
    x = batch_for(searched)
    torch.testing.assert_close(compiled(x), compact(x))


def test_an_untied_network_meets_a_parameter_budget_with_its_copies_counted():
    """fit-budget with `untie` costs the copies the untied compact module will hold: the module it
    leaves is within the budget, where the tied count would have stopped short."""
    from dagir.passes.fit_budget import FitBudget
    from dagir.passes.share_states import ShareStates

    searched = with_random_logits(compile_spec(make_spec(tasks=3, nodes=5, stages=2)), 4)
    start = PassManager(parse_pipeline(["discretize", "flow-reduce{flow_budget=0.0}"], needs_build=False)).run(searched)
    tied, untied = (compact_parameters(ShareStates(untie=u).run(start))["total"] for u in (False, True))
    assert tied < untied
    budget = (tied + untied) // 2  # the tied network already fits, the untied one does not
    fitted = ShareStates(untie=True).run(FitBudget(parameters=budget, untie=True).run(start))
    assert fitted.meta["fit_budget"]["met"] and fitted.meta["fit_budget"]["removed"]
    assert count_parameters(lower_compact(fitted)) <= budget
    assert FitBudget(parameters=budget).run(start).meta["fit_budget"]["removed"] == []
