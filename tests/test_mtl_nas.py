"""MTL-NAS as a spec: `build-cross-task` over random spaces (2-4 tasks, chains of 2-8, windows
1-3), flow over task states, discretisation, NDDR initialisation, the compact lowering against the
hard-gated supernet, and a short end-to-end run."""
from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagir.backends.torch_compact import lower_compact
from dagir.flow import task_flow
from dagir.gates import sigmoid
from dagir.errors import UserError
from dagir.ir import IR, Node
from dagir.ir_io import read_ir
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.passes.insert_read_io import InsertReadIO
from dagir.pipeline import seed_ir, spec_pipeline
from dagir.spec import Spec
from dagir.training.plots import task_gate_grid
from helpers import small_ir
from test_compact import batch_for, hard_supernet
from test_run import TINY, run_quietly

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cross_task_spec(tasks: int, nodes: int, stages: int, image: bool) -> Spec:
    return Spec(tasks=[{"name": f"t{i}", "kind": "regression"} for i in range(tasks)],
                network={"input": {"shape": [1, 8, 8] if image else [5]}, "stem": {"channels": 3},
                         "central": {"nodes": nodes, "stages": stages, "channels": [2 + s for s in range(stages)]},
                         "heads": {"hidden": 4}})


def build(spec: Spec, window: int, after: list[str] | None = None, aggregation: str = "nddr") -> IR:
    passes = [f"build-cross-task{{window={window}, aggregation={aggregation}}}", "legalize-types",
              "attach-gates{init=0}"] + (after or [])
    return PassManager(spec_pipeline(passes, spec)).run(seed_ir(spec))


@st.composite
def cross_task_spaces(draw):
    nodes = draw(st.integers(2, 8))
    spec = cross_task_spec(draw(st.integers(2, 4)), nodes, draw(st.integers(1, min(3, nodes))), draw(st.booleans()))
    return spec, draw(st.integers(1, 3)), random.Random(draw(st.integers(0, 2 ** 16)))


def expected_cross_edges(tasks: int, nodes: int, stages: int, window: int) -> int:
    """Counted straight from the MTL-NAS rule: into layer i + 1 from layer j of another task, for
    j <= i < i + window... with both layers in the same stage (j's stage = i's)."""
    stage = [None] + [(j - 1) * stages // nodes for j in range(1, nodes + 1)]
    per_pair = sum(1 for i in range(1, nodes) for j in range(1, i + 1) if i - j < window and stage[j] == stage[i])
    return per_pair * tasks * (tasks - 1)


def with_logits(ir: IR, draw_logit) -> IR:
    out = ir.copy()
    for name, decision in out.decisions.items():
        out.decisions[name] = decision.with_logits({owner: [draw_logit()] for owner in decision.logits})
    return out


@PROPERTY
@given(cross_task_spaces())
def test_the_space_verifies_after_every_pass_and_has_the_mtl_nas_cross_edges(case):
    spec, window, _ = case
    ir = build(spec, window)  # the pass manager verifies after every pass
    central = spec.network.central
    cross = [e for e in ir.edges.values() if e.kind == "cross"]
    assert len(cross) == expected_cross_edges(len(spec.tasks), central.nodes, central.stages, window)
    assert all(e.gated and ir.decisions[e.name].kind == "bernoulli" for e in cross)
    assert all(sigmoid(d.logits_of(t)[0]) == 0.5 for d in ir.decisions.values() for t in d.tasks)
    assert all(ir.nodes[e.src].task != ir.nodes[e.dst].task for e in cross)


@PROPERTY
@given(cross_task_spaces())
def test_flow_is_conserved_over_task_states(case):
    spec, window, rng = case
    ir = with_logits(build(spec, window), lambda: rng.gauss(0, 2))
    for task in ir.task_names:
        flow = task_flow(ir, task)
        into, out_of = {}, {}
        for (key, owner), value in flow.instances.items():
            target = (key[1], owner)
            source = (key[0], "" if ir.nodes[key[0]].kind == "input" else (ir.nodes[key[0]].task or owner))
            into[target] = into.get(target, 0.0) + value
            out_of[source] = out_of.get(source, 0.0) + value
        head = (ir.head_of(task).name, task)
        assert into[head] == pytest.approx(flow.total)
        for state, inflow in into.items():
            if state != head:
                assert inflow == pytest.approx(out_of.get(state, 0.0), abs=1e-12)


@PROPERTY
@given(cross_task_spaces())
def test_with_every_gate_high_flow_reduce_keeps_every_cross_edge(case):
    """Every cross edge carries flow for the task reading it, so a reduction that may lose none
    (budget 0) removes none; when cross edges carried no flow, it removed them all."""
    spec, window, _ = case
    ir = with_logits(build(spec, window), lambda: 8.0)
    reduced = PassManager(parse_pipeline(["discretize", "flow-reduce{flow_budget=0}"], needs_build=False)).run(ir)
    cross = {key for key, edge in ir.edges.items() if edge.kind == "cross"}
    assert cross <= {key for key, edge in reduced.edges.items() if edge.active_tasks()}


@PROPERTY
@given(cross_task_spaces(), st.floats(0.2, 0.8))
def test_discretize_keeps_exactly_the_chosen_cross_edges(case, threshold):
    spec, window, rng = case
    ir = with_logits(build(spec, window), lambda: rng.gauss(0, 2))
    out = PassManager(parse_pipeline([f"discretize{{threshold={threshold}}}"], needs_build=False)).run(ir)
    for decision in out.decisions.values():
        (key,), = decision.options
        (task,) = decision.tasks
        chosen = sigmoid(ir.decisions[decision.name].logits_of(task)[0]) >= threshold
        assert decision.chosen[task] == int(chosen)
        assert out.edges[key].is_active(task) is chosen


def test_nddr_fusion_starts_as_w_t_and_w_s():
    spec = cross_task_spec(3, 4, 2, image=True)
    ir = PassManager(spec_pipeline(["build-cross-task{window=2, self_weight=0.9, other_weight=0.1}",
                                    "legalize-types", "attach-gates"], spec)).run(seed_ir(spec))
    from dagir.backends.torch_supernet import lower_supernet
    supernet = lower_supernet(ir)
    node = ir.nodes["t0_h3"]  # fuses layer 2: own t0_h2, cross t1_h1, t1_h2, t2_h1, t2_h2 (window 2, one stage)
    in_edges = ir.in_edges()["t0_h3"]
    assert [e.kind for e in in_edges].count("cross") == 4
    weight = supernet.node_t0_h3.fuse.weight.detach().view(node.input_type.channels, len(in_edges),
                                                            node.input_type.channels)
    eye = torch.eye(node.input_type.channels)
    for slot, edge in enumerate(in_edges):
        expected = 0.9 * eye if edge.kind != "cross" else 0.1 / 4 * eye
        torch.testing.assert_close(weight[:, slot], expected)


@pytest.mark.parametrize("aggregation", ["nddr", "sum"])
@pytest.mark.parametrize("image", [False, True])
def test_the_compact_network_equals_the_hard_gated_supernet_and_drops_unchosen_cross_edges(image, aggregation):
    spec = cross_task_spec(3, 4, 2, image)
    rng = random.Random(1)
    searched = with_logits(build(spec, 2, aggregation=aggregation), lambda: rng.choice([-3.0, 3.0]))
    reduced = PassManager(parse_pipeline(["discretize", "flow-reduce{enabled=false}", "share-states"],
                                         needs_build=False)).run(searched)
    dropped = [key for key, e in searched.edges.items() if e.kind == "cross" and key not in reduced.edges]
    assert dropped, "some cross edges were not chosen"
    supernet = hard_supernet(searched, reduced)
    compact = lower_compact(reduced, supernet, dtype=torch.float64).eval()
    x = batch_for(searched)
    torch.testing.assert_close(compact(x), supernet(x))
    from dagir.backends.torch_supernet import count_parameters
    from dagir.compact_cost import compact_macs
    from dagir.ir_stats import count_macs
    if aggregation == "nddr":  # the unchosen edges' fusion channels go
        assert count_parameters(compact) < count_parameters(supernet) - count_parameters(supernet.gates)
        assert compact_macs(reduced)["total"] < count_macs(searched)
    else:  # identity edges into sums: nothing to drop but the additions
        assert compact_macs(reduced)["total"] <= count_macs(searched)


@pytest.mark.parametrize("image", [False, True])
def test_summed_cross_edges_cost_what_the_single_task_networks_cost(image):
    """With `aggregation=sum` the cross edges are identities: whichever the search keeps, the compact
    network has the single-task networks' parameters (counted on the lowered module, against the
    `build-single-task` networks of the same spec) and at most a sum's MACs more."""
    from dagir.backends.torch_supernet import count_parameters
    from dagir.compact_cost import compact_macs, compact_parameters
    spec = cross_task_spec(3, 5, 2, image)
    after = ["discretize", "flow-reduce{enabled=false}", "share-states"]
    single = PassManager(spec_pipeline(["build-single-task", "legalize-types", "attach-gates"] + after,
                                       spec)).run(seed_ir(spec))
    single_parameters = count_parameters(lower_compact(single, hard_supernet(single, single)))
    for logit in (-3.0, 3.0):  # no cross edge kept, every cross edge kept
        searched = with_logits(build(spec, 2, aggregation="sum"), lambda: logit)
        reduced = PassManager(parse_pipeline(after, needs_build=False)).run(searched)
        kept = sum(edge.kind == "cross" for edge in reduced.edges.values())
        assert kept == (0 if logit < 0 else sum(edge.kind == "cross" for edge in searched.edges.values()))
        compact = lower_compact(reduced, hard_supernet(searched, reduced))
        assert count_parameters(compact) == compact_parameters(reduced)["total"] == single_parameters
        assert compact_macs(reduced)["total"] == compact_macs(single)["total"]  # sums count no MACs


MTL_NAS_TINY = TINY.replace("search:\n  squeeze: {kind: binary, weight: 1.0, rho: 1.0}\n"
                            "  budget: {macs: null, parameters: null}", """search:
  gates: {init: 0.0, temperature: {start: 1.0, end: 0.01, schedule: quadratic}}
  squeeze: {kind: entropy, weight: 10.0, rho: 0.0, ramp: 0.0}
pipeline:
  before_search: ["build-cross-task{window=3}", legalize-types, attach-gates]
  after_search: [discretize, "flow-reduce{enabled=false}", share-states]""").replace(
    "  search: {epochs: 2, steps_per_epoch: 4, lr: 0.01, gate_lr: 0.2, lr_schedule: cosine}",
    "  search: {epochs: 2, steps_per_epoch: 4, lr: 0.01, gate_lr: 0.2, mode: alternating, split: 0.5,\n"
    "           train_weights: true, weight_relaxation: relaxed-bernoulli, arch_tau: 1.0}").replace(
    "  finetune: {epochs: 1, steps_per_epoch: 4, lr: 0.005, lr_schedule: cosine}", "  finetune: {epochs: 0}")


def test_mtl_nas_runs_end_to_end_and_thresholds_at_one_half(tmp_path):
    assert MTL_NAS_TINY != TINY and "build-cross-task" in MTL_NAS_TINY and "finetune: {epochs: 0}" in MTL_NAS_TINY
    spec = tmp_path / "mtl_nas.yaml"
    spec.write_text(MTL_NAS_TINY)
    metrics = run_quietly(spec, tmp_path / "run")
    searched = read_ir(tmp_path / "run" / "architecture.json")
    compact = read_ir(tmp_path / "run" / "compact.json")
    for decision in searched.decisions.values():
        (key,), = decision.options
        (task,) = decision.tasks
        kept = key in compact.edges and compact.edges[key].is_active(task)
        assert kept is (sigmoid(decision.logits_of(task)[0]) >= 0.5)
    assert set(metrics["test"]) == {"digit", "parity"}
    assert metrics["compact"]["macs"]["total"] <= metrics["supernet"]["macs_shared"]
    assert math.isfinite(metrics["discretization_gap"])


def test_a_tasks_gate_heatmap_holds_its_own_chain_and_the_cross_edges_into_it():
    tasks, nodes, window = 3, 4, 2
    ir = build(cross_task_spec(tasks, nodes, 1, image=False), window)
    gated = 0
    for task in ir.task_names:
        rows, columns, grid = task_gate_grid(ir, task)
        assert rows == [f"{task}_h{i}" for i in range(2, nodes + 1)] + [f"head_{task}"]
        assert columns and not any(column.startswith(f"{task}_") for column in columns)
        gated += sum(not math.isnan(value) for row in grid for value in row)
    assert gated == expected_cross_edges(tasks, nodes, 1, window)
    shared = small_ir(tasks=2, image=False)  # a shared-node space: every hidden node is every task's
    rows, _, _ = task_gate_grid(shared, "t0")
    assert rows == [n.name for n in shared.hidden_nodes()] + ["head_t0"]


@PROPERTY
@given(cross_task_spaces(), st.sampled_from([0.3, 1.0]))
def test_nddr_nodes_gate_their_weight_and_compute_the_reference(case, tau):
    """On images the supernet scales an NDDR node's weight columns by its gates (`gated_forward`)
    instead of its inputs: the reference evaluator's outputs (soft gates, and hard ones, exactly 0
    for the edges left out) and the per-task lowering's gradients, which gates the inputs."""
    from dagir.backends.reference import evaluate_reference
    from dagir.backends.torch_supernet import lower_supernet

    spec, window, rng = case
    ir = with_logits(build(spec, window), lambda: rng.gauss(0, 2))
    torch.manual_seed(rng.randrange(2 ** 16))
    per_task = lower_supernet(ir, dtype=torch.float64, batched=False).eval()
    batched = lower_supernet(ir, dtype=torch.float64).eval()
    batched.load_state_dict(per_task.state_dict())
    image = ir.input_node().type.is_image
    crossed = any(edge.kind == "cross" for edge in ir.edges.values())
    assert ("gated_forward" in batched.code) == (image and crossed)
    x = batch_for(ir)
    for mode in ("soft", "hard"):
        expected = evaluate_reference(ir, per_task, x, tau=tau, mode=mode)
        for module in (per_task, batched):
            module.gates.mode, module.gates.tau = mode, tau
        torch.testing.assert_close(batched(x), expected)
    per_task.gates.mode = batched.gates.mode = "soft"
    gradients = []  # by parameter name: the two lowerings register their submodules in other orders
    for module in (per_task, batched):
        names, parameters = zip(*module.named_parameters())
        loss = sum((output ** 2).sum() for output in module(x).values())
        gradients.append(dict(zip(names, torch.autograd.grad(loss, parameters, allow_unused=True))))
    assert gradients[0].keys() == gradients[1].keys()
    for name, theirs in gradients[0].items():
        mine = gradients[1][name]
        assert (mine is None) == (theirs is None), name
        if mine is not None:
            torch.testing.assert_close(mine, theirs, msg=name)


def test_read_in_of_a_task_chain_comes_from_its_own_stem():
    spec = cross_task_spec(2, 3, 1, image=False)
    ir = PassManager(spec_pipeline(["build-cross-task{window=2}", "insert-read-io"], spec)).run(seed_ir(spec))
    read_in = sorted(key for key, edge in ir.edges.items() if edge.kind == "read_in")
    assert read_in == [(f"stem_{t}", f"{t}_h{j}") for t in ("t0", "t1") for j in (1, 2, 3)]
    assert all(list(ir.edges[key].tasks) == [key[1].split("_")[0]] for key in read_in)


def test_read_in_refuses_a_shared_node_without_a_shared_stem():
    spec = cross_task_spec(2, 2, 1, image=False)
    ir = PassManager(spec_pipeline(["build-cross-task{window=2}"], spec)).run(seed_ir(spec))
    ir.add_node(Node("h_shared", "hidden", ir.nodes["t0_h1"].type, index=1, stage=0))
    with pytest.raises(UserError, match="h_shared.*needs one stem"):
        InsertReadIO().run(ir)
