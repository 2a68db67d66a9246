"""MTNAS's routing space (`build-routing`): categorical route decisions, the gate aggregation on a
route (no weight leaks to an edge outside it), the supernet against the reference evaluator with
sampled routes, the compact network with the argmax routes, and a short REINFORCE run."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_compact import lower_compact
from dagir.backends.torch_supernet import count_parameters, head_parameters, lower_supernet, weight_parameters
from dagir.compact_cost import compact_parameters
from dagir.errors import VerificationError
from dagir.ir_stats import count_parameters as ir_parameters
from dagir.ir import IR
from dagir.ir_io import read_ir
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.pipeline import seed_ir, spec_pipeline
from dagir.spec import Spec
from dagir.task_states import nodes_on_paths
from test_compact import randomize_batch_norm
from test_run import run_quietly

PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def routing_spec(tasks: int, image: bool, width: int = 4) -> Spec:
    return Spec(tasks=[{"name": f"t{i}", "kind": "regression"} for i in range(tasks)],
                network={"input": {"shape": [1, 6, 6] if image else [5]}, "stem": {"channels": width - 1},
                         "central": {"nodes": 2, "stages": 1, "channels": [width]}, "heads": {"hidden": width}})


def build(spec: Spec, options: str) -> IR:
    return PassManager(spec_pipeline([f"build-routing{{{options}}}", "legalize-types", "attach-gates"], spec)).run(
        seed_ir(spec))


@st.composite
def routing_spaces(draw):
    experts = draw(st.integers(1, 3))
    options = (f"layers={draw(st.integers(1, 3))}, experts={experts}, "
               f"route_size={draw(st.integers(1, experts))}, expert_scope={draw(st.sampled_from(['shared', 'task']))}, "
               f"query={draw(st.sampled_from(['inputs', 'input', 'task']))}")
    ir = build(routing_spec(draw(st.integers(1, 3)), draw(st.booleans())), options)
    rng = random.Random(draw(st.integers(0, 2 ** 16)))
    for name, decision in ir.decisions.items():
        ir.decisions[name] = decision.with_logits(
            {owner: [rng.uniform(-2, 2) for _ in decision.options] for owner in decision.logits})
    return ir, draw(st.integers(0, 2 ** 16))


def test_routes_are_every_set_up_to_the_route_size():
    ir = build(routing_spec(2, image=False), "layers=2, experts=3, route_size=2")
    expert_route = ir.decisions["route_e2_1"]
    assert expert_route.kind == "categorical" and expert_route.scope == "shared" and len(expert_route.options) == 6
    assert {len(option) for option in expert_route.options} == {1, 2}
    tower = ir.decisions["route_tower_t1"]
    assert tower.tasks == ("t1",) and tower.scope == "task"
    assert "route_e1_1" not in ir.decisions, "layer 1 reads the stem alone"
    mmoe = build(routing_spec(2, image=False), "layers=1, experts=3, search=false")
    assert not mmoe.decisions and mmoe.nodes["tower_t0"].aggregation == "gate"


@PROPERTY
@given(routing_spaces())
def test_sampled_routes_lower_like_the_reference(case):
    ir, seed = case
    module = lower_supernet(ir, dtype=torch.float64).eval()
    randomize_batch_norm(module, seed)
    module.gates.generator = torch.Generator().manual_seed(seed)
    drawn = module.gates.sample()
    module.gates.fix(drawn)
    module.gates.mode = "fixed"
    x = torch.randn(3, *ir.input_node().type.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fixed = module.gates.values_by_decision(drawn)
    torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode="fixed", fixed=fixed))
    for mode in ("soft", "hard"):
        module.gates.mode = mode
        torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode=mode))


@pytest.mark.parametrize("batched", [False, True])
def test_warm_up_opens_every_route_with_gate_one_like_the_reference(batched):
    """An edge on several routes is on with gate 1 in "ones" mode and under warm-up edge dropout
    (`dropped`), not gate = the number of routes it lies on (mtnas.yaml: 4 experts, routes of 2)."""
    from dagir.pipeline import compile_spec
    from dagir.spec import load_spec
    ir = compile_spec(load_spec("examples/mtnas.yaml"))
    assert any(len(d.options_with(key)) > 1 for d in ir.decisions.values() if d.kind == "categorical"
               for key in d.edges())
    module = lower_supernet(ir, dtype=torch.float64, batched=batched).eval()
    randomize_batch_norm(module, 0)
    x = torch.randn(3, *ir.input_node().type.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    module.gates.mode = "ones"
    assert module.gates().tolist() == [1.0] * len(module.gates.slots)
    ones = module(x)
    torch.testing.assert_close(ones, evaluate_reference(ir, module, x, mode="ones"))
    module.gates.fix(module.gates.dropped(0.0))
    module.gates.mode = "fixed"
    assert module.gates().tolist() == [1.0] * len(module.gates.slots)
    torch.testing.assert_close(module(x), ones)


@PROPERTY
@given(routing_spaces())
def test_the_compact_network_holds_the_argmax_routes_and_equals_the_hard_supernet(case):
    ir, seed = case
    reduced = PassManager(parse_pipeline(["discretize", "flow-reduce{enabled=false}", "share-states"],
                                         needs_build=False)).run(ir)
    for name, decision in reduced.decisions.items():
        block = decision.name[len("route_"):]
        for task in decision.tasks:
            chosen = set(decision.options[decision.chosen[task]])
            kept = {key for key in decision.edges() if key in reduced.edges and reduced.edges[key].is_active(task)}
            # a block no task's route reaches is deleted with its edges; a live one reads its whole route
            assert kept == (chosen if block in nodes_on_paths(reduced, task) else set())
    supernet = lower_supernet(ir, dtype=torch.float64).eval()
    randomize_batch_norm(supernet, seed)
    supernet.gates.mode = "hard"
    compact = lower_compact(reduced, supernet, dtype=torch.float64).eval()
    x = torch.randn(3, *ir.input_node().type.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(compact(x), supernet(x))
    # the cost model counts what the modules hold
    assert compact_parameters(reduced)["total"] == count_parameters(compact)
    assert ir_parameters(ir) == count_parameters(weight_parameters(supernet) + head_parameters(supernet))


def test_staged_image_experts_down_sample_layer_by_layer():
    spec = Spec(tasks=[{"name": "t0", "kind": "regression"}, {"name": "t1", "kind": "regression"}],
                network={"input": {"shape": [1, 12, 12]}, "stem": {"channels": 3},
                         "central": {"nodes": 3, "stages": 3, "channels": [4, 6, 8]}, "heads": {"hidden": 4}})
    flat = build(spec, "layers=3, experts=2")
    staged = build(spec, "layers=3, experts=2, expert_stages=staged")
    assert {flat.nodes[f"e{layer}_1"].type.shape for layer in (1, 2, 3)} == {(4, 12, 12)}
    assert [staged.nodes[f"e{layer}_1"].type.shape for layer in (1, 2, 3)] == [(4, 12, 12), (6, 6, 6), (8, 3, 3)]
    assert staged.nodes["e2_1"].op.params["stride"] == 2 and staged.nodes["tower_t0"].type.shape == (8, 3, 3)
    assert [staged.nodes[name].stage for name in ("e1_1", "e2_1", "e3_1", "tower_t0")] == [0, 1, 2, 2]
    assert {node.stage for node in flat.nodes.values() if node.kind == "hidden"} == {0}
    module = lower_supernet(staged, dtype=torch.float64).eval()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(module(x), evaluate_reference(staged, module, x, mode="soft"))


def test_no_weight_leaks_to_an_expert_outside_the_route():
    torch.manual_seed(0)
    ir = build(routing_spec(2, image=False, width=16), "layers=1, experts=2")
    ir.decisions["route_tower_t0"] = ir.decisions["route_tower_t0"].with_logits({"t0": [5.0, 0.0, 0.0]})  # {e1_1}
    ir.decisions["route_tower_t1"] = ir.decisions["route_tower_t1"].with_logits({"t1": [0.0, 0.0, 5.0]})  # both
    module = lower_supernet(ir, dtype=torch.float64).eval()
    module.gates.mode = "hard"
    x = torch.randn(64, 5, dtype=torch.float64)
    before = module(x)
    with torch.no_grad():
        module.op_e1_2[0].weight.add_(1.0)
    after = module(x)
    torch.testing.assert_close(after["t0"], before["t0"])  # e1_2 is outside t0's route: no weight, no effect
    assert not torch.allclose(after["t1"], before["t1"])


MTNAS_TINY = """\
name: tiny-mtnas
seed: 1
data: {dataset: mmoe_synthetic, options: {samples: 600, dim: 8}, batch_size: 32}
tasks:
  - {name: a, kind: regression}
  - {name: b, kind: regression}
network:
  stem: {channels: 8}
  central: {nodes: 2, stages: 1, channels: [8], edge_op: mlp}
  heads: {hidden: 8}
search:
  squeeze: {kind: none}
pipeline:
  before_search: ["build-routing{layers=2, experts=3}", legalize-types, attach-gates]
  after_search: [discretize, "flow-reduce{enabled=false}", share-states]
train:
  warmup: {epochs: 1, lr: 0.01}
  search: {epochs: 2, lr: 0.01, gate_lr: 0.1, strategy: reinforce, split: 0.3}
  finetune: {epochs: 1, lr: 0.005}
  device: cpu
"""


def test_mtnas_runs_end_to_end_with_reinforce(tmp_path):
    spec = tmp_path / "mtnas.yaml"
    spec.write_text(MTNAS_TINY)
    metrics = run_quietly(spec, tmp_path / "run")
    searched = read_ir(tmp_path / "run" / "architecture.json")
    compact = read_ir(tmp_path / "run" / "compact.json")
    moved = [d for d in searched.decisions.values() if any(max(v) != min(v) for v in d.logits.values())]
    assert moved, "the policy gradient moved the route logits"
    for decision in compact.decisions.values():
        block = decision.name[len("route_"):]
        for task in decision.tasks:
            kept = {key for key in decision.edges() if compact.edges[key].is_active(task)}
            chosen = set(decision.options[decision.chosen[task]])
            assert kept == (chosen if block in nodes_on_paths(compact, task) else set())
    assert set(metrics["test"]) == {"a", "b"}
    assert metrics["compact"]["parameters"] < metrics["supernet"]["parameters"]


def test_mmoe_has_the_parameters_of_a_hand_written_mmoe():
    """One layer of E experts on the stem, a softmax gate per task on the input x, a tower per task:
    counted by hand from the sizes, not from the IR."""
    d, stem, width, hidden, experts, tasks = 5, 7, 8, 6, 3, 2
    spec = Spec(tasks=[{"name": f"t{i}", "kind": "regression"} for i in range(tasks)],
                network={"input": {"shape": [d]}, "stem": {"channels": stem},
                         "central": {"nodes": 2, "stages": 1, "channels": [width]}, "heads": {"hidden": hidden}})
    ir = build(spec, f"layers=1, experts={experts}, search=false, query=input")
    module = lower_supernet(ir)
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    by_hand = (linear(d, stem) + experts * linear(stem, width)          # the stem, the experts
               + tasks * linear(d, experts)                             # a gate per task, on x
               + tasks * (linear(width, hidden) + linear(hidden, 1)))   # a tower per task: read-out, head
    assert sum(p.numel() for p in module.parameters()) == by_hand
    x = torch.randn(4, d)
    assert module.node_tower_t0.route.in_features == d and module(x)["t0"].shape == (4, 1)


def test_reinforce_finds_the_route_that_carries_the_signal():
    """Two experts, a tower that reads one of them; expert 2 is frozen at zero (it carries nothing):
    REINFORCE's route logits converge to expert 1."""
    from dagir.backends.torch_supernet import gate_parameters
    from dagir.spec import TaskSpec
    from dagir.training.search import SearchContext, make_strategy
    from test_search_strategies import toy_batches

    torch.manual_seed(0)
    spec = Spec(tasks=[{"name": "y", "kind": "regression"}],
                network={"input": {"shape": [4]}, "stem": {"channels": 8},
                         "central": {"nodes": 2, "stages": 1, "channels": [8]}, "heads": {"hidden": 8}})
    ir = build(spec, "layers=1, experts=2, route_size=1")
    assert [option for option in ir.decisions["route_tower_y"].options] == [(("e1_1", "tower_y"),), (("e1_2", "tower_y"),)]
    supernet = lower_supernet(ir)
    with torch.no_grad():
        for parameter in supernet.op_e1_2.parameters():
            parameter.zero_()
    weights = [p for name, p in supernet.named_parameters()
               if name.startswith(("edge_", "node_", "op_")) and not name.startswith("op_e1_2")]
    stage = Spec(tasks=spec.tasks, train={"search": {"strategy": "reinforce", "gate_lr": 0.1, "lr": 0.01}}).train.search
    squeeze = Spec(tasks=spec.tasks, search={"squeeze": {"kind": "none"}}).search.squeeze
    held = list(toy_batches(1, 50))
    context = SearchContext(supernet, stage, squeeze, [TaskSpec(name="y", kind="regression")], supernet,
                            weights, head_parameters(supernet), 0, arch_batch=lambda epoch, index: held[index % 50])
    strategy = make_strategy(context)
    for index, batch in enumerate(toy_batches(0, 300)):
        strategy.step(batch, 0, index)
    probabilities = torch.softmax(gate_parameters(supernet)[0].detach()[0], dim=0)
    assert probabilities[0] > 0.9, probabilities
    assert all(float(p.detach().abs().sum()) == 0.0 for p in supernet.op_e1_2.parameters())


def test_drawings_show_each_blocks_routes_and_the_chosen_one():
    from dagir.backends.graphviz_dot import to_dot

    ir = build(routing_spec(2, image=False), "layers=1, experts=2")
    ir.decisions["route_tower_t0"] = ir.decisions["route_tower_t0"].with_logits({"t0": [0.0, 4.0, 0.0]})
    assert "tower_t0\\nhidden [4] · gate\\n3 routes" in to_dot(ir)
    chosen = PassManager(parse_pipeline(["discretize"], needs_build=False)).run(ir)
    assert "3 routes\\nt0 ← e1_2" in to_dot(chosen)


def test_a_task_query_gives_each_tower_a_learned_weighting_and_leaves_the_experts_on_their_inputs():
    from dagir.verify import verify
    ir = build(routing_spec(2, image=False), "layers=2, experts=3, query=task")
    assert ir.nodes["tower_t0"].query == "task" and ir.nodes["e2_1"].query == "inputs"
    assert ir.query_width(ir.nodes["tower_t0"]) == 0
    module = lower_supernet(ir)
    tower = module.get_submodule("node_tower_t0")
    assert tower.route.weight.numel() == 0 and tower.route.bias.numel() == 3  # one learned logit per expert
    shared = ir.copy()
    shared.nodes["e2_1"] = replace(shared.nodes["e2_1"], query="task")
    with pytest.raises(VerificationError, match="gates on its task .* but serves no single task"):
        verify(shared)


def edge_calls(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict]:
    """How many times `module(x)` runs an edge op (`edge_*` submodules), and its outputs."""
    calls = {"n": 0}
    handles = [child.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
               for name, child in module.named_children() if name.startswith("edge_")]
    try:
        outputs = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls["n"], outputs


def routes_values(supernet, choose) -> torch.Tensor:
    """Option values with `choose(decision, owner)` the chosen option of every decision and owner."""
    return torch.tensor([1.0 if option == choose(name, owner) else 0.0
                         for name, owner, option in supernet.gates.value_names], dtype=torch.float64)


def test_a_sample_computes_each_distinct_state_once_as_the_compact_network_does():
    ir = build(routing_spec(3, image=False, width=6), "layers=2, experts=3, route_size=2, expert_scope=task")
    supernet = lower_supernet(ir, dtype=torch.float64).eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    agreed = {name: 2 for name in ir.decisions}  # every task draws the same route for every block
    supernet.gates.fix(routes_values(supernet, lambda name, owner: agreed[name]))
    supernet.gates.mode = "fixed"
    calls, outputs = edge_calls(supernet, x)
    # the oracle: the compact network of that sample, whose share-states pass computes each state once
    chosen = ir.copy()
    for name, decision in chosen.decisions.items():
        chosen.decisions[name] = decision.with_logits(
            {owner: [9.0 if k == agreed[name] else -9.0 for k in range(len(decision.options))]
             for owner in decision.logits})
    reduced = PassManager(parse_pipeline(["discretize", "flow-reduce{enabled=false}", "share-states"],
                                         needs_build=False)).run(chosen)
    compact_calls, expected = edge_calls(lower_compact(reduced, supernet, dtype=torch.float64).eval(), x)
    assert calls == compact_calls
    torch.testing.assert_close(outputs, expected)
    # tasks drawing different routes hold different states, and those are computed apart
    supernet.gates.fix(routes_values(supernet, lambda name, owner: int(owner[1:]) if owner.startswith("t") else 2))
    assert edge_calls(supernet, x)[0] > calls
    supernet.distinct_states = False  # the task-batched graph runs every edge, whatever the sample
    assert edge_calls(supernet, x)[0] > calls


def test_an_edge_outside_the_sample_is_not_run_and_gets_no_gradient():
    ir = build(routing_spec(2, image=True, width=4), "layers=2, experts=3, route_size=1")
    supernet = lower_supernet(ir, dtype=torch.float64).train()
    supernet.gates.fix(routes_values(supernet, lambda name, owner: 0))  # each block reads its first expert only
    supernet.gates.mode = "fixed"
    running = {name: buffer.clone() for name, buffer in supernet.named_buffers() if "running_mean" in name}
    sum(output.sum() for output in supernet(torch.randn(4, 1, 6, 6, dtype=torch.float64)).values()).backward()
    drawn = {key for decision in ir.decisions.values() for key in decision.options[0]}
    read = {src for src, _ in drawn}
    idle = [name for name, node in ir.nodes.items() if name.startswith("e") and node.op is not None and name not in read]
    assert idle  # with routes of one expert, some experts are read by no block
    buffers = dict(supernet.named_buffers())
    for name in idle:  # an expert no drawn route reads: its block is not run
        module = f"op_{name}"
        assert all(p.grad is None for p in supernet.get_submodule(module).parameters()), name
        moved = [n for n in running if n.startswith(module + ".") and not torch.equal(running[n], buffers[n])]
        assert not moved, moved  # its batch norm saw no state it does not feed
    assert all(p.grad is not None for name in read if name.startswith("e")
               for p in supernet.get_submodule(f"op_{name}").parameters())
