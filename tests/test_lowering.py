"""The torch lowering: op modules against `dagir.ops`, and the generated supernet against the
reference evaluator (DESIGN §4 computed straight from the IR) on random search spaces."""
from __future__ import annotations

import math
import random
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagir.backends.reference import evaluate_reference
from dagir.backends.torch_aggregations import GateAggregation, MixAggregation, NddrAggregation
from dagir.backends.torch_ops import build_aggregation, build_op
from dagir.ops import aggregation_parameter_count
from dagir.backends.torch_supernet import (count_parameters, gate_parameters, head_parameters,
                                           import_gates_from_module, lower_supernet, weight_parameters)
from dagir.ir import AGGREGATIONS, IR, SHARED, Decision, Edge, EdgeTaskState, Node, Op, Task, TensorType, edge_name
from dagir.ops import REGISTRY, output_type, parameter_count
from dagir.pipeline import before_search_pipeline, compile_spec
from dagir.spec import Spec
from dagir.gates import sigmoid
from dagir.task_states import reached_nodes
from dagir.verify import verify

OP_CASES = [
    (Op("identity"), (3, 5, 5)),
    (Op("identity"), (7,)),
    (Op("conv_bn_relu", {"c_in": 2, "c_out": 3, "stride": 1}), (2, 7, 7)),
    (Op("conv_bn_relu", {"c_in": 2, "c_out": 3, "stride": 2}), (2, 7, 5)),
    (Op("conv_bn_relu", {"c_in": 1, "c_out": 4, "stride": 4, "kernel": 5}), (1, 9, 6)),
    (Op("conv_bn_relu", {"c_in": 3, "c_out": 2, "stride": 2, "kernel": 1}), (3, 1, 1)),
    (Op("pool_conv_bn_relu", {"c_in": 2, "c_out": 3, "stride": 1}), (2, 6, 6)),
    (Op("pool_conv_bn_relu", {"c_in": 2, "c_out": 3, "stride": 2}), (2, 7, 5)),
    (Op("pool_conv_bn_relu", {"c_in": 2, "c_out": 3, "stride": 4}), (2, 3, 9)),
    (Op("linear_relu", {"d_in": 5, "d_out": 3}), (5,)),
    (Op("linear", {"d_in": 5, "d_out": 2}), (5,)),
    (Op("pool_linear", {"c_in": 3, "d_out": 4}), (3, 5, 7)),
    (Op("head_mlp", {"d_in": 6, "d_out": 2}), (6,)),
    (Op("upsample_conv", {"c_in": 3, "c_out": 5, "height": 9, "width": 7}), (3, 3, 2)),
    (Op("dense_head", {"c_in": 4, "c_out": 3}), (4, 5, 7)),
    (Op("scale", {"init": 0.25}), (3, 4, 4)),
]


def test_op_cases_cover_the_registry():
    assert {op.name for op, _ in OP_CASES} == set(REGISTRY)


@pytest.mark.parametrize("op, shape", OP_CASES, ids=lambda case: str(case))
def test_op_module_matches_the_registry(op, shape):
    module = build_op(op).eval()
    output = module(torch.randn(2, *shape))
    assert tuple(output.shape[1:]) == output_type(op, TensorType(shape)).shape
    assert count_parameters(module) == parameter_count(op)


@pytest.mark.parametrize("aggregation", [a for a in AGGREGATIONS if a != "sum"])
@pytest.mark.parametrize("shape", [(3, 4, 4), (5,)])
@pytest.mark.parametrize("nddr_norm", NddrAggregation.NORMS)
def test_aggregation_keeps_the_node_type_and_reports_its_parameters(aggregation, shape, nddr_norm):
    node_type = TensorType(shape)
    module = build_aggregation(aggregation, 3, node_type, nddr_norm=nddr_norm).eval()
    slots = [torch.randn(2, *shape), None, torch.randn(2, *shape)]
    assert module(slots).shape == (2, *shape)
    assert count_parameters(module) == aggregation_parameter_count(aggregation, node_type, 3, nddr_norm=nddr_norm)


@pytest.mark.parametrize("shape", [(3, 4, 4), (5,)])
def test_an_nddr_norm_is_what_its_name_says(shape):
    """The oracle is the norm's defining property, on inputs scaled per sample by c > 0: with none the
    node is ReLU(W x), so it scales by c; a layer norm undoes the scale (per sample); a batch norm in
    eval mode with its running statistics is an affine map per channel, so it does neither."""
    torch.manual_seed(0)
    slots = [torch.randn(4, *shape), torch.randn(4, *shape)]
    scale = torch.tensor([0.5, 2.0, 3.0, 7.0]).view((4,) + (1,) * len(shape))
    scaled = [slot * scale for slot in slots]
    modules = {norm: build_aggregation("nddr", 2, TensorType(shape), nddr_norm=norm).eval()
               for norm in NddrAggregation.NORMS}
    with torch.no_grad():
        modules["batch"].norm.running_mean.uniform_(0.5, 1.0)  # as after training: not zero, not one
        modules["batch"].norm.running_var.uniform_(0.5, 2.0)
        modules["layer"].norm.bias.uniform_(0.5, 1.0)  # every output positive, so ReLU keeps the invariance
        outputs = {norm: (module(slots), module(scaled)) for norm, module in modules.items()}
    torch.testing.assert_close(outputs["none"][1], outputs["none"][0] * scale)
    torch.testing.assert_close(outputs["layer"][1], outputs["layer"][0], atol=1e-3, rtol=1e-3)  # up to its eps
    plain, of_scaled = outputs["batch"]
    assert not torch.allclose(of_scaled, plain * scale) and not torch.allclose(of_scaled, plain)


@pytest.mark.parametrize("shape", [(3, 4, 4), (5,)])
def test_a_mix_aggregation_weighs_an_nddr_and_a_gate_aggregation_of_the_same_inputs(shape):
    """σ(m)·nddr + (1 − σ(m))·gate, each half as it is alone: modules built separately with the
    halves' weights are the oracle, an input gated 0 left out of the gate half's softmax."""
    node_type = TensorType(shape)
    torch.manual_seed(0)
    mix = build_aggregation("mix", 3, node_type).eval()
    with torch.no_grad():
        mix.mix.fill_(0.8)
    nddr, gate = build_aggregation("nddr", 3, node_type).eval(), build_aggregation("gate", 3, node_type)
    nddr.load_state_dict(mix.nddr.state_dict())
    gate.load_state_dict(mix.gate.state_dict())
    slots = [torch.randn(2, *shape), None, torch.randn(2, *shape)]
    gates = [torch.tensor(0.0), None, torch.tensor(0.5)]
    weight = 1 / (1 + math.exp(-0.8))
    torch.testing.assert_close(mix(slots, gates), weight * nddr(slots) + (1 - weight) * gate(slots, gates))
    torch.testing.assert_close(gate(slots, gates), slots[2])  # the gated-0 input takes no weight


@pytest.mark.parametrize("shape", [(3, 4, 4), (5,)])
@pytest.mark.parametrize("query", ["inputs", "input", "none"])
@pytest.mark.parametrize("kind", ["gate", "mix"])
def test_a_node_applying_the_gates_computes_what_it_computes_of_gated_inputs(shape, query, kind):
    """`gated_forward` (ungated `[K, B, ...]` inputs, the `[K, k]` gates of K states) against the oracle
    of `forward` called per state on the inputs multiplied by their gates: an input gated 0 is out of
    that state's softmax, a state with every gate 0 gets zeros, an empty slot and an input the same for
    every state (`[1, B, ...]`) included; a `mix` node's halves read the same gated inputs."""
    torch.manual_seed(0)
    query_width = {"inputs": None, "input": 6, "none": 0}[query]
    module = (GateAggregation(3, shape[0], query_width) if kind == "gate"
              else MixAggregation(3, shape[0], image=len(shape) > 1, query_width=query_width)).double().eval()
    if kind == "mix":
        with torch.no_grad():
            module.mix.fill_(0.8)
    states, batch = 3, 2
    blocks = [torch.randn(states, batch, *shape, dtype=torch.float64), None,
              torch.randn(1, batch, *shape, dtype=torch.float64)]
    gates = torch.tensor([[0.7, 0.0, 0.2], [0.0, 0.0, 1.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    network_input = torch.randn(states * batch, 6, dtype=torch.float64) if query == "input" else None
    expected = []
    for k in range(states):
        slots = [None if block is None else block[min(k, block.shape[0] - 1)] * gates[k, i]
                 for i, block in enumerate(blocks)]
        per_slot = [None if block is None else gates[k, i] for i, block in enumerate(blocks)]
        own_query = None if network_input is None else network_input[k * batch:(k + 1) * batch]
        expected.append(module(slots, per_slot, own_query))
    torch.testing.assert_close(module.gated_forward(blocks, gates, network_input), torch.cat(expected))
    if kind == "gate":
        torch.testing.assert_close(expected[1], blocks[2][0] * 1.3)  # the one input not gated 0 takes all the weight
        assert not expected[2].any()


def test_gate_aggregation_gives_an_empty_slot_no_weight():
    module = build_aggregation("gate", 2, TensorType((4,)))
    only = torch.randn(3, 4)
    torch.testing.assert_close(module([only, None]), only)


# -- random search spaces -------------------------------------------------------------------------
def make_spec(image: bool, nodes: int = 4, stages: int = 2, tasks: int = 2, aggregation: str = "sum",
              max_span: int | None = None, read_in: bool = True, read_out: bool = True,
              channels: list[int] | None = None, shape: list[int] | None = None, task_stages: int = 0,
              task_copies: str = "replace") -> Spec:
    task_specs = [{"name": f"t{i}", "kind": "classification", "classes": 2 + i} if i % 2 == 0
                  else {"name": f"t{i}", "kind": "regression"} for i in range(tasks)]
    return Spec(tasks=task_specs, network={
        "input": {"shape": shape or ([1, 8, 8] if image else [5])}, "stem": {"channels": 3},
        "central": {"nodes": nodes, "stages": stages, "channels": channels or [2 + s for s in range(stages)],
                    "aggregation": aggregation, "task_stages": task_stages, "task_copies": task_copies},
        "flow_restriction": {"max_span": max_span}, "read_in": read_in, "read_out": read_out,
        "heads": {"hidden": 5}})


def with_random_gates(ir: IR, rng: random.Random, drop: float = 0.0) -> IR:
    """Random gate logits on every gated edge; with probability `drop` an (edge, task) is dropped
    (keep=False) unless that would cut the task off from its head."""
    out = ir.copy()
    for key, edge in list(out.edges.items()):
        for task in edge.tasks:
            if edge.gated:
                out.set_bernoulli_logit(key, task, rng.uniform(-3, 3))
            if edge.kind != "stem" and rng.random() < drop:
                kept = out.edges[key]
                out.edges[key] = kept.with_task_state(task, keep=False)
                if out.head_of(task).name not in reached_nodes(out, task):
                    out.edges[key] = kept
    return out


@st.composite
def search_spaces(draw) -> IR:
    image = draw(st.booleans())
    shape = draw(st.sampled_from([[1, 8, 8], [2, 6, 6]])) if image else [draw(st.integers(1, 6))]
    nodes = draw(st.integers(1, 12))
    stages = draw(st.integers(1, min(3, nodes)))
    spec = make_spec(image, nodes=nodes, stages=stages, tasks=draw(st.integers(1, 4)),
                     aggregation=draw(st.sampled_from(AGGREGATIONS)),
                     max_span=draw(st.none() | st.integers(1, nodes)),
                     read_in=draw(st.booleans()), read_out=draw(st.booleans()),
                     channels=draw(st.lists(st.integers(1, 4), min_size=stages, max_size=stages)),
                     shape=shape, task_stages=draw(st.integers(0, stages)),
                     task_copies=draw(st.sampled_from(["replace", "beside"])))
    rng = random.Random(draw(st.integers(0, 2 ** 16)))
    return with_random_gates(compile_spec(spec), rng, drop=draw(st.sampled_from([0.0, 0.3])))


def sample_equals_the_reference(module, ir: IR, x: torch.Tensor, seed: int) -> dict:
    """Fix a sample of every decision drawn with `seed`; the module in fixed mode must compute what
    the reference evaluator computes with those option values. Returns them by decision."""
    module.gates.generator = torch.Generator().manual_seed(seed)
    drawn = module.gates.sample()
    module.gates.fix(drawn)
    module.gates.mode = "fixed"
    fixed = module.gates.values_by_decision(drawn)
    torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode="fixed", fixed=fixed))
    return fixed


def batch_for(ir: IR, size: int = 2) -> torch.Tensor:
    return torch.randn(size, *ir.input_node().type.shape, dtype=torch.float64)


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(search_spaces(), st.sampled_from([0.3, 1.0, 2.0]), st.integers(0, 2 ** 16))
def test_supernet_equals_the_reference_evaluator(ir, tau, seed):
    torch.manual_seed(seed)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    x = batch_for(ir)
    module.gates.tau = tau
    for mode in ("soft", "hard"):
        module.gates.mode = mode
        outputs = module(x)
        assert set(outputs) == set(ir.task_names)
        for task in ir.tasks:
            assert outputs[task.name].shape == (2, task.out_dim)
        torch.testing.assert_close(outputs, evaluate_reference(ir, module, x, tau=tau, mode=mode))
    # a drawn sample (as REINFORCE and the warm-up's edge dropout fix them): only the sampled network runs
    sample_equals_the_reference(module, ir, x, seed)


@PROPERTY
@given(search_spaces(), st.integers(0, 2 ** 16))
def test_gate_slots_match_the_ir_and_imported_gates_round_trip(ir, seed):
    torch.manual_seed(seed)
    before = ir.to_json()
    module = lower_supernet(ir, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    values = module.gates()
    for entry in module.gates.entries:
        edge = ir.edges[(entry.src, entry.dst)]
        slot = module.gates.slots[(edge.name, entry.task)]
        assert values[slot].item() == pytest.approx(sigmoid(ir.decisions[edge.name].logits_of(entry.task)[0]))
    with torch.no_grad():
        for parameter in gate_parameters(module):
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    imported = import_gates_from_module(module, ir)
    assert ir.to_json() == before, "the IR given must not change"
    for entry in module.gates.entries:
        decision = imported.decisions[edge_name(entry.src, entry.dst)]
        assert decision.logits_of(entry.task)[0] == module.gates.logits[entry.group][entry.position].item()
    again = lower_supernet(imported, dtype=torch.float64)
    torch.testing.assert_close(again.gates(), module.gates())
    assert import_gates_from_module(again, imported).to_json() == imported.to_json()


# -- unit tests on small IRs ----------------------------------------------------------------------
def test_generated_code_is_readable_and_names_follow_the_ir():
    ir = compile_spec(make_spec(image=True, nodes=4, stages=2))
    module = lower_supernet(ir, fuse_edges=False)  # fused edges call `edge_h1_h2.bn` and friends
    code = module.code
    for name in ("self.edge_h1_h2(", "self.edge_stem_h3(", "self.head_t0(", "self.head_t1(",
                 "self.gates()", "stem = self.edge_input_stem(x)"):
        assert name in code
    assert "return {'t0': head_t0, 't1': head_t1}" in code
    edges = [name for name, _ in module.named_children() if name.startswith("edge_")]
    assert sorted(edges) == sorted(e.name for e in ir.edges.values())


def test_nddr_gate_and_mix_nodes_get_an_aggregation_module():
    for aggregation in ("nddr", "gate", "mix"):
        module = lower_supernet(compile_spec(make_spec(image=False, nodes=3, stages=1, aggregation=aggregation)))
        assert {"node_h1", "node_h2", "node_h3"} <= {name for name, _ in module.named_children()}
        called = "self.node_h3([" if aggregation == "nddr" else "node_h3.gated_forward(["  # gate, mix: they apply the gates
        assert called in module.code


@pytest.mark.parametrize("image", [False, True])
def test_an_nddr_node_started_as_the_mean_mixes_its_inputs_equally(image):
    """`nddr_start: mean`: each slot of the 1x1 mixing is I/k, so it computes the inputs' mean;
    the default random start does not."""
    def fused(start: str) -> tuple[torch.Tensor, torch.Tensor]:
        spec = make_spec(image=image, nodes=3, stages=1, aggregation="nddr")
        spec = spec.model_copy(update={"network": spec.network.model_copy(update={
            "central": spec.network.central.model_copy(update={"nddr_start": start})})})
        node = lower_supernet(compile_spec(spec)).node_h3
        inputs, width = node.config["inputs"], node.config["width"]
        torch.manual_seed(0)
        slots = [torch.randn(4, width, 3, 3) if image else torch.randn(4, width) for _ in range(inputs)]
        return node.fuse(torch.cat(slots, dim=1)), torch.stack(slots).mean(dim=0)

    mixed, mean = fused("mean")
    assert torch.allclose(mixed, mean, atol=1e-6)
    mixed, mean = fused("random")
    assert not torch.allclose(mixed, mean, atol=1e-2)


def test_parameter_groups_partition_the_module():
    module = lower_supernet(compile_spec(make_spec(image=True, aggregation="nddr")))
    groups = [gate_parameters(module), weight_parameters(module), head_parameters(module)]
    assert all(groups)
    assert sum(count_parameters(group) for group in groups) == count_parameters(module)
    assert count_parameters(gate_parameters(module)) == len(module.gates.entries)


def test_a_hard_gate_below_zero_cuts_its_edge():
    ir = compile_spec(make_spec(image=True, nodes=3, stages=1, tasks=2))
    ir.set_bernoulli_logit(("h1", "h3"), "t0", -1.0)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    module.gates.mode = "hard"
    x = batch_for(ir)
    before = module(x)
    with torch.no_grad():
        module.edge_h1_h3.conv.weight.add_(1.0)
    after = module(x)
    torch.testing.assert_close(after["t0"], before["t0"])
    assert not torch.allclose(after["t1"], before["t1"]), "the edge still counts for t1"
    module.gates.mode = "soft"
    torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode="soft"))


def test_ones_mode_ignores_the_logits():
    ir = with_random_gates(compile_spec(make_spec(image=False, nodes=4, stages=2, tasks=3)), random.Random(0))
    saturated = ir.copy()
    for name, decision in saturated.decisions.items():
        saturated.decisions[name] = decision.with_logits({owner: [100.0] for owner in decision.logits})
    module = lower_supernet(ir, dtype=torch.float64).eval()
    module.gates.mode = "ones"
    x = batch_for(ir)
    ones = module(x)
    torch.testing.assert_close(ones, evaluate_reference(saturated, module, x, mode="soft"))
    torch.testing.assert_close(ones, evaluate_reference(ir, module, x, mode="ones"))
    module.gates.mode = "soft"
    assert not torch.allclose(module(x)["t0"], ones["t0"])


def test_gate_mode_is_checked():
    module = lower_supernet(compile_spec(make_spec(image=False)))
    module.gates.mode = "sharp"
    with pytest.raises(ValueError, match="unknown gate mode"):
        module(torch.randn(2, 5))


def test_gates_by_hand_on_identity_edges():
    """h1 = x0, h2 = σ(a)·h1 + σ(b)·x0, head = h2: computed by hand, not by the reference."""
    vector = TensorType((3,))
    ir = IR("tiny", [Task("t", "regression", 3)])
    for node in (Node("input", "input", vector), Node("stem", "stem", vector),
                 Node("h1", "hidden", vector, index=1), Node("h2", "hidden", vector, index=2),
                 Node("head_t", "head", vector, op=Op("identity"), task="t")):
        ir.add_node(node)
    identity = Op("identity")
    for src, dst, kind, logit in (("input", "stem", "stem", None), ("stem", "h1", "read_in", None),
                                  ("h1", "h2", "internal", 0.5), ("stem", "h2", "read_in", -1.0),
                                  ("h2", "head_t", "read_out", None)):
        ir.add_edge(Edge(src, dst, kind, identity, {"t": EdgeTaskState()}, gated=logit is not None))
        if logit is not None:
            ir.set_bernoulli_logit((src, dst), "t", logit)
    module = lower_supernet(ir, dtype=torch.float64)
    x = batch_for(ir)
    sigmoid = lambda value: 1 / (1 + torch.exp(torch.tensor(-value, dtype=torch.float64)))
    module.gates.tau = 0.5
    torch.testing.assert_close(module(x)["t"], (sigmoid(0.5 / 0.5) + sigmoid(-1.0 / 0.5)) * x)
    module.gates.mode = "hard"
    torch.testing.assert_close(module(x)["t"], x)


def task_owned_chains() -> IR:
    """MTL-NAS-like: one chain per task, a gated cross edge from each chain into the other."""
    image = TensorType((2, 4, 4))
    ir = IR("chains", [Task("a", "regression", 1), Task("b", "regression", 2)])
    ir.add_node(Node("input", "input", TensorType((1, 4, 4))))
    ir.add_node(Node("stem", "stem", image))
    conv = Op("conv_bn_relu", {"c_in": 2, "c_out": 2, "stride": 1})
    ir.add_edge(Edge("input", "stem", "stem", Op("conv_bn_relu", {"c_in": 1, "c_out": 2, "stride": 1}),
                     {"a": EdgeTaskState(), "b": EdgeTaskState()}))
    for task, other, outputs in (("a", "b", 1), ("b", "a", 2)):
        for index in (1, 2):
            ir.add_node(Node(f"{task}{index}", "hidden", image, index=index, task=task, aggregation="nddr"))
        ir.add_node(Node(f"head_{task}", "head", TensorType((outputs,)), in_type=TensorType((3,)),
                         op=Op("head_mlp", {"d_in": 3, "d_out": outputs}), task=task))
        own = {task: EdgeTaskState()}
        ir.add_edge(Edge("stem", f"{task}1", "read_in", conv, {task: EdgeTaskState()}))
        ir.add_edge(Edge(f"{task}1", f"{task}2", "internal", conv, own, gated=True))
        ir.add_edge(Edge(f"{other}1", f"{task}2", "cross", conv, {task: EdgeTaskState()}, gated=True))
        ir.set_bernoulli_logit((f"{task}1", f"{task}2"), task, 1.0)
        ir.set_bernoulli_logit((f"{other}1", f"{task}2"), task, -0.5)
        ir.add_edge(Edge(f"{task}2", f"head_{task}", "read_out", Op("pool_linear", {"c_in": 2, "d_out": 3}),
                         {task: EdgeTaskState()}))
    return ir


def test_task_owned_nodes_are_read_in_their_owners_state():
    ir = task_owned_chains()
    module = lower_supernet(ir, dtype=torch.float64, fuse_edges=False).eval()
    code = module.code
    assert "edge_stem_a1 = self.edge_stem_a1(stem)" in code
    assert not re.search(r"\ba1_a\b", code), "an owned node holds one state, named after the node"
    assert "self.edge_b1_a2(b1)" in code, "the cross edge reads b's own state"
    x = batch_for(ir)
    for mode in ("soft", "hard", "ones"):
        module.gates.mode = mode
        torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode=mode))
    assert {"A", "cross"} == set(module.gates.logits)


def test_lowering_needs_ops_on_edges():
    spec = make_spec(image=False)
    passes = [p for p in before_search_pipeline(spec) if p.name not in ("legalize-types", "attach-gates")]
    ir = compile_spec(spec, passes=passes, verify_each=False)
    with pytest.raises(ValueError, match="legalize-types"):
        lower_supernet(ir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_supernet_runs_on_cuda():
    ir = with_random_gates(compile_spec(make_spec(image=True, aggregation="gate")), random.Random(1))
    module = lower_supernet(ir).eval()
    x = torch.randn(2, 1, 8, 8)
    expected = module(x)
    outputs = module.to("cuda")(x.to("cuda"))
    torch.testing.assert_close({t: v.cpu() for t, v in outputs.items()}, expected, rtol=1e-4, atol=1e-4)


@PROPERTY
@given(search_spaces(), st.sampled_from(["relaxed-bernoulli", "sample"]), st.sampled_from([0.3, 1.0]),
       st.integers(0, 2 ** 16))
def test_supernet_equals_the_reference_for_drawn_relaxations(ir, relaxation, tau, seed):
    """Relaxations that draw (Gumbel-sigmoid noise, hard samples): with the drawn values fixed, the
    supernet computes what the reference evaluator computes from the same values."""
    module = lower_supernet(ir, dtype=torch.float64).eval()
    table = module.gates
    table.train()  # the gates draw; the rest stays in eval mode
    table.relaxation, table.tau, table.generator = relaxation, tau, torch.Generator().manual_seed(seed)
    drawn = table.option_values("soft").detach()
    assert drawn.numel() == table.values_size
    if relaxation == "sample":
        assert set(drawn.tolist()) <= {0.0, 1.0}
    table.fix(drawn)
    table.mode = "fixed"
    x = batch_for(ir)
    fixed = table.values_by_decision(drawn)
    assert set(fixed) == set(ir.decisions)
    torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, mode="fixed", fixed=fixed))


def with_categorical_read_outs(ir: IR, rng: random.Random) -> IR:
    """`ir` with each head's gated read-outs decided by one categorical decision (per task, or
    shared when the head's task is the only one it serves) over random options: single edges,
    pairs (an edge in two options sums their weights)."""
    out = ir.copy()
    for task in out.task_names:
        head = out.head_of(task).name
        keys = [key for key, edge in out.edges.items() if key[1] == head and edge.name in out.decisions]
        if len(keys) < 2:
            continue
        for key in keys:
            del out.decisions[out.edges[key].name]
        options = [(key,) for key in keys] + [tuple(rng.sample(keys, 2)) for _ in range(2)]
        scope = rng.choice(["task", "shared"])
        logits = {SHARED if scope == "shared" else task: tuple(rng.uniform(-3, 3) for _ in options)}
        out.add_decision(Decision(f"route_{task}", "categorical", tuple(options), (task,), logits, scope=scope))
    return out


@PROPERTY
@given(search_spaces(), st.sampled_from([0.5, 1.0]), st.integers(0, 2 ** 16))
def test_categorical_decisions_lower_like_the_reference(ir, tau, seed):
    rng = random.Random(seed)
    ir = with_categorical_read_outs(ir, rng)
    verify(ir)
    module = lower_supernet(ir, dtype=torch.float64).eval()
    module.gates.tau = tau
    x = batch_for(ir)
    for mode in ("soft", "hard"):
        module.gates.mode = mode
        torch.testing.assert_close(module(x), evaluate_reference(ir, module, x, tau=tau, mode=mode))
    fixed = sample_equals_the_reference(module, ir, x, seed)
    for name, decision in ir.decisions.items():
        if decision.kind == "categorical":
            assert all(sum(values) == 1.0 for values in fixed[name].values())  # one option drawn
    assert import_gates_from_module(module, ir).to_json() == ir.to_json()  # float64 logits round-trip exactly
