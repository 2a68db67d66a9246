"""Unit tests of the pre-search passes on small IRs, and of pipeline parsing."""
from __future__ import annotations

import pytest
from helpers import make_spec, small_ir

from dagir.ir import IR
from dagir.pass_manager import PipelineError, parse_pass, registered_passes
from dagir.pipeline import BEFORE_SEARCH, compile_spec, seed_ir, spec_options, spec_pipeline


def run(names, spec=None):
    spec = spec or make_spec()
    ir = seed_ir(spec)
    for pass_ in spec_pipeline(names, spec):
        ir = pass_.run(ir)
    return ir


def test_build_central_full_dag_and_stages():
    ir = run(["build-central{nodes=6, stages=3, channels=[4,6,8], max_span=none}"])
    internal = ir.edges_of_kind("internal")
    assert len(internal) == 6 * 5 // 2
    assert [n.stage for n in ir.hidden_nodes()] == [0, 0, 1, 1, 2, 2]
    assert [n.type.shape for n in ir.hidden_nodes()][::2] == [(4, 8, 8), (6, 4, 4), (8, 2, 2)]
    assert ir.edges_of_kind("read_in")[0].src == "stem" and len(ir.edges_of_kind("read_out")) == 2
    assert all(e.op is None for e in internal) and not ir.types_legal


def test_task_stages_give_each_task_its_own_branch_of_the_last_stages():
    ir = small_ir(tasks=2, nodes=6, stages=3, max_span=2, task_stages=1)
    shared = [n.name for n in ir.hidden_nodes() if n.task is None]
    assert shared == ["h1", "h2", "h3", "h4"]
    assert sorted(n.name for n in ir.hidden_nodes() if n.task == "t1") == ["h5_t1", "h6_t1"]
    for (src, dst), edge in ir.edges.items():
        owner = ir.nodes[dst].task
        if owner is not None:  # an edge into a task's copy (or its head) serves that task alone
            assert list(edge.tasks) == [owner], (src, dst)
        if ir.nodes[src].task is not None:  # a copy feeds its own task's nodes only
            assert ir.nodes[dst].task == ir.nodes[src].task, (src, dst)
    # a branch reads the shared nodes within the span, each through its own task's gate
    assert {src for src, dst in ir.edges if dst == "h5_t0"} == {"stem", "h3", "h4"}
    assert ir.edges[("h4", "h5_t0")].gated and ir.edges[("h4", "h5_t1")].gated
    paper_space = small_ir(tasks=2, nodes=6, stages=3, max_span=2)
    assert len(ir.hidden_nodes()) == len(paper_space.hidden_nodes()) + 2  # h5, h6: one copy more


def test_task_copies_beside_the_shared_nodes_let_each_task_read_either():
    ir = small_ir(tasks=2, nodes=6, stages=3, max_span=2, task_stages=1, task_copies="beside")
    assert [n.name for n in ir.hidden_nodes() if n.task is None] == ["h1", "h2", "h3", "h4", "h5", "h6"]
    assert sorted(n.name for n in ir.hidden_nodes() if n.task == "t0") == ["h5_t0", "h6_t0"]
    # a copy reads its own earlier copy and the shared nodes within the span, for its task alone
    assert {src for src, dst in ir.edges if dst == "h6_t0"} == {"stem", "h4", "h5", "h5_t0"}
    assert list(ir.edges[("h5", "h6_t0")].tasks) == ["t0"]
    # the shared nodes read only shared nodes, and serve every task
    assert {src for src, dst in ir.edges if dst == "h6"} == {"stem", "h4", "h5"}
    assert set(ir.edges[("h5", "h6")].tasks) == {"t0", "t1"}
    # each head may leave from its task's copies and from every shared node, never another task's copy
    assert {src for src, dst in ir.edges if dst == "head_t0"} == {f"h{i}" for i in range(1, 7)} | {"h5_t0", "h6_t0"}
    without_read_out = small_ir(tasks=2, nodes=6, stages=3, max_span=2, task_stages=1, task_copies="beside",
                                read_out=False)
    assert {src for src, dst in without_read_out.edges if dst == "head_t1"} == {"h6", "h6_t1"}


def test_task_stages_cannot_exceed_the_stages():
    from dagir.errors import SpecError
    from dagir.spec import load_spec
    with pytest.raises(SpecError, match="task_stages \\(4\\) cannot exceed the 3 stages"):
        load_spec("examples/multimnist.yaml", ["network.central.task_stages=4"])


def test_flow_restrict_cuts_long_edges_and_records_span():
    ir = run(["build-central{nodes=6, stages=1, channels=[4], max_span=none}", "flow-restrict{max_span=2}"])
    assert ir.max_span == 2
    assert sorted((int(e.src[1:]), int(e.dst[1:])) for e in ir.edges_of_kind("internal")) == \
        [(1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5), (4, 6), (5, 6)]


def test_flow_restrict_never_loosens_a_recorded_restriction():
    ir = run(["build-central", "flow-restrict{max_span=2}", "flow-restrict{max_span=none}"])
    assert ir.max_span == 2


def test_insert_read_io_adds_gated_edges_everywhere():
    ir = run(["build-central", "insert-read-io"], make_spec(nodes=4, tasks=3))
    assert len(ir.edges_of_kind("read_in")) == 4
    assert len(ir.edges_of_kind("read_out")) == 4 * 3
    assert all(e.gated for e in ir.edges_of_kind("read_in") + ir.edges_of_kind("read_out"))
    assert all(list(e.tasks) == [e.dst[len("head_"):]] for e in ir.edges_of_kind("read_out"))


def test_read_io_off_leaves_single_ungated_entry_and_exit():
    ir = compile_spec(make_spec(nodes=4, tasks=2, read_in=False, read_out=False))
    assert [(e.src, e.dst, e.gated) for e in ir.edges_of_kind("read_in")] == [("stem", "h1", False)]
    assert sorted((e.src, e.dst, e.gated) for e in ir.edges_of_kind("read_out")) == \
        [("h4", "head_t0", False), ("h4", "head_t1", False)]


def test_legalize_types_picks_strides_and_families():
    ir = compile_spec(make_spec(nodes=6, stages=3, max_span=3))
    op = ir.edges[("h2", "h5")].op  # stage 0 (8x8) -> stage 2 (2x2)
    assert (op.name, op.params["stride"]) == ("conv_bn_relu", 4)
    assert ir.edges[("h5", "head_t0")].op.name == "pool_linear"
    pooled = compile_spec(make_spec(nodes=6, stages=3, max_span=3, resample="pool"))
    assert pooled.edges[("h2", "h5")].op.name == "pool_conv_bn_relu"
    assert pooled.edges[("h1", "h2")].op.name == "conv_bn_relu"  # same stage: no resampling
    vector = compile_spec(make_spec(image=False))
    assert {e.op.name for e in vector.edges.values()} == {"linear_relu", "linear"}


def test_attach_gates_sets_a_logit_per_task_on_gated_edges_only():
    ir = run(BEFORE_SEARCH[:-1] + ["attach-gates{init=1.5, noise=0.1, seed=3}"])
    gated = [e for e in ir.edges.values() if e.gated]
    assert sorted(ir.decisions) == sorted(e.name for e in gated)
    logits = [ir.decisions[e.name].logits_of(t)[0] for e in gated for t in e.tasks]
    assert all(abs(v - 1.5) < 1 for v in logits) and len(set(logits)) > 1
    assert all(ir.decisions[e.name].kind == "bernoulli" and ir.decisions[e.name].options == (((e.src, e.dst),),)
               for e in gated)
    again = run(BEFORE_SEARCH[:-1] + ["attach-gates{init=1.5, noise=0.1, seed=3}"])
    assert again.to_dict() == ir.to_dict()


def test_passes_never_mutate_their_input():
    spec = make_spec()
    ir = seed_ir(spec)
    for pass_ in spec_pipeline(BEFORE_SEARCH, spec):
        before = ir.to_json()
        result = pass_.run(ir)
        assert ir.to_json() == before and result is not ir
        ir = result


def test_round_trip_through_json():
    ir = small_ir()
    assert IR.from_json(ir.to_json()).to_dict() == ir.to_dict()


def test_the_spec_s_nddr_norm_reaches_every_hidden_node_and_survives_a_dump():
    spec = make_spec(aggregation="nddr", nddr_norm="layer")
    assert spec.resolved_dict()["network"]["central"]["nddr_norm"] == "layer"
    ir = compile_spec(spec)
    hidden = [node for node in ir.nodes.values() if node.kind == "hidden"]
    assert hidden and {node.nddr_norm for node in hidden} == {"layer"}
    assert [node.nddr_norm for node in IR.from_json(ir.to_json()).nodes.values() if node.kind == "hidden"] == ["layer"] * len(hidden)
    assert {node.nddr_norm for node in small_ir().nodes.values()} == {"batch"}  # MTL-NAS's, by default


@pytest.mark.parametrize("image, chosen, built", [
    (False, "auto", "nddr"),  # an MLP space mixes its inputs NDDR-style
    (True, "auto", "gate"),  # a conv space weighs them by the softmax gate
    (False, "gate", "gate"),  # a choice the spec names is kept in either space
    (True, "nddr", "nddr"),
])
def test_the_default_aggregation_depends_on_the_space_and_a_named_one_is_kept(image, chosen, built):
    spec = make_spec(image=image) if chosen == "auto" else make_spec(image=image, aggregation=chosen)
    assert spec.resolved_dict()["network"]["central"]["aggregation"] == chosen
    ir = compile_spec(spec)
    hidden = [node for node in ir.nodes.values() if node.kind == "hidden"]
    assert hidden and {node.aggregation for node in hidden} == {built}


def test_nddr_start_mean_reaches_the_nodes_that_auto_makes_nddr():
    vectors = compile_spec(make_spec(image=False, nddr_start="mean"))
    assert {node.fusion for node in vectors.nodes.values() if node.kind == "hidden"} == {(1.0, 0.0)}
    images = compile_spec(make_spec(image=True, nddr_start="mean"))  # gate nodes: nothing to start
    assert {node.fusion for node in images.nodes.values() if node.kind == "hidden"} == {None}


@pytest.mark.parametrize("text, message", [
    ("no-such-pass", "unknown pass 'no-such-pass'"),
    ("flow-restrict{max_span=0}", "option 'max_span'"),
    ("flow-restrict{colour=3}", "option 'colour'"),
    ("flow-restrict{max_span}", "is not key=value"),
    ("build-central{nodes=2, stages=3, channels=[1,2,3]}", "stages (3) cannot exceed nodes (2)"),
])
def test_bad_pass_text(text, message):
    with pytest.raises(PipelineError) as caught:
        parse_pass(text, spec_options(make_spec()))
    assert message in str(caught.value)


def test_pipeline_that_builds_nothing_is_rejected():
    with pytest.raises(PipelineError, match="builds nothing"):
        spec_pipeline(["flow-restrict", "attach-gates"], make_spec())


def test_every_pass_is_registered_and_prints_its_options():
    passes = registered_passes()
    assert set(BEFORE_SEARCH) <= set(passes)
    assert str(parse_pass("flow-restrict{max_span=none}")) == "flow-restrict{max_span=none}"


def test_flow_restrict_after_attach_gates_drops_the_decisions_of_the_edges_it_cuts():
    from dagir.pass_manager import PassManager
    spec = make_spec()
    names = ["build-central{nodes=5, stages=1, channels=[4], max_span=none}", "insert-read-io", "legalize-types",
             "attach-gates", "flow-restrict{max_span=1}"]
    ir = PassManager(spec_pipeline(names, spec)).run(seed_ir(spec))  # verifies after every pass
    assert sorted((int(e.src[1:]), int(e.dst[1:])) for e in ir.edges_of_kind("internal")) == \
        [(1, 2), (2, 3), (3, 4), (4, 5)]
    governed = {key for decision in ir.decisions.values() for key in decision.edges()}
    assert governed <= set(ir.edges) and "edge_h1_h3" not in ir.decisions
