"""The verifier catches every invariant broken on purpose, and names the pass and nodes."""
from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import make_spec, small_ir

from dagir.errors import VerificationError
from dagir.ir import Edge, EdgeTaskState, Node, Op, TensorType
from dagir.pass_manager import Pass, PassManager
from dagir.pipeline import seed_ir, spec_pipeline
from dagir.verify import verify


def broken(invariant: str, ir) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verify(ir)
    assert caught.value.invariant == invariant, str(caught.value)
    return caught.value


def test_compiled_ir_verifies():
    verify(small_ir())


def test_cycle_is_caught():
    ir = small_ir().copy()
    ir.add_edge(Edge("h3", "h2", "internal", Op("conv_bn_relu", {"c_in": 6, "c_out": 6, "stride": 1}),
                     {"t0": EdgeTaskState()}))
    error = broken("structure", ir)
    assert "h2" in error.offending and "h3" in error.offending


def test_dangling_edge_is_caught():
    ir = small_ir().copy()
    ir.add_edge(Edge("h1", "ghost", "internal", None, {"t0": EdgeTaskState()}))
    assert broken("structure", ir).offending == ["ghost"]


def test_missing_head_is_caught():
    ir = small_ir().copy()
    del ir.nodes["head_t1"]
    ir.edges = {k: e for k, e in ir.edges.items() if e.dst != "head_t1"}
    assert "t1" in broken("structure", ir).offending


def test_type_mismatch_is_caught():
    ir = small_ir().copy()
    key = ("h1", "h2")
    ir.edges[key] = replace(ir.edges[key], op=Op("conv_bn_relu", {"c_in": 4, "c_out": 9, "stride": 1}))
    error = broken("types", ir)
    assert error.offending == ["h1", "h2"] and "takes" in error.detail


def test_missing_op_after_legalisation_is_caught():
    ir = small_ir().copy()
    ir.edges[("h1", "h2")] = replace(ir.edges[("h1", "h2")], op=None)
    broken("types", ir)
    ir.types_legal = False
    verify(ir)  # before legalize-types an edge may lack its op


def test_task_without_path_is_caught():
    ir = small_ir(read_in=False, read_out=False).copy()
    for key, edge in list(ir.edges.items()):
        if edge.dst == "head_t0":
            ir.edges[key] = edge.with_task_state("t0", keep=False)
    assert broken("task-paths", ir).offending == ["head_t0"]


def test_task_whose_only_path_skips_the_stem_is_caught():
    ir = small_ir(read_in=False, read_out=False).copy()
    ir.edges[("stem", "h1")] = ir.edges[("stem", "h1")].with_task_state("t0", keep=False)  # the stem: a dead end
    ir.add_edge(Edge("input", "h1", "read_in", Op("conv_bn_relu", {"c_in": 1, "c_out": 4, "stride": 1}),
                     {"t0": EdgeTaskState()}))
    error = broken("task-paths", ir)
    assert error.offending == ["stem"] and "'t0'" in error.detail


def test_node_owned_by_an_unknown_task_is_caught():
    ir = small_ir().copy()
    ir.nodes["h3"] = replace(ir.nodes["h3"], task="ghost")
    error = broken("structure", ir)
    assert error.offending == ["h3"] and "unknown task" in error.detail


def test_edge_into_a_task_owned_node_active_for_another_task_is_caught():
    ir = small_ir(read_in=False, read_out=False).copy()
    key = ("h6", "head_t1")
    ir.edges[key] = replace(ir.edges[key], tasks={"t0": EdgeTaskState(), "t1": EdgeTaskState()})
    error = broken("structure", ir)
    assert error.offending == ["h6", "head_t1"] and "['t0']" in error.detail
    ir.edges[key] = ir.edges[key].with_task_state("t0", keep=False)
    verify(ir)  # dropped for t0 after discretisation, it no longer feeds t1's head for t0


def test_flow_restriction_is_caught():
    ir = small_ir(max_span=2).copy()
    ir.add_edge(Edge("h1", "h4", "internal", Op("conv_bn_relu", {"c_in": 4, "c_out": 6, "stride": 2}),
                     {"t0": EdgeTaskState()}))
    assert broken("flow-restriction", ir).offending == ["h1", "h4"]


def test_reduced_ir_with_unused_edge_is_caught():
    ir = small_ir().copy()
    ir.reduced = True
    key = ("h1", "h2")
    ir.edges[key] = replace(ir.edges[key], tasks={t: EdgeTaskState(keep=False) for t in ir.task_names})
    assert broken("reduced", ir).offending == ["edge_h1_h2"]


def test_reduced_ir_with_dead_node_is_caught():
    ir = small_ir(read_in=False, read_out=False).copy()
    ir.reduced = True
    ir.add_node(Node("h99", "hidden", TensorType((4, 8, 8)), index=99, stage=0))
    assert broken("reduced", ir).offending == ["h99"]


class BreakTypes(Pass):
    name = "break-types-for-test"

    def run(self, ir):
        out = ir.copy()
        out.edges[("h3", "h4")] = replace(out.edges[("h3", "h4")], op=Op("identity"))
        return out


def test_pass_manager_names_the_pass_that_broke_the_ir():
    spec = make_spec()
    passes = spec_pipeline(["build-central", "flow-restrict", "legalize-types"], spec) + [BreakTypes()]
    with pytest.raises(VerificationError) as caught:
        PassManager(passes).run(seed_ir(spec))
    assert caught.value.pass_name == "break-types-for-test"
    assert "after pass 'break-types-for-test'" in str(caught.value)
    PassManager(passes, verify_each=False).run(seed_ir(spec))  # --no-verify lets it through
