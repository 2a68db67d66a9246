"""Property tests: the pre-search pipeline over random search spaces."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import make_spec

from dagir.ir import IR
from dagir.pass_manager import PassManager
from dagir.pipeline import before_search_pipeline, seed_ir
from dagir.verify import check_task_paths, verify


@st.composite
def specs(draw):
    nodes = draw(st.integers(1, 40))
    image = draw(st.booleans())
    stages = draw(st.integers(1, min(nodes, 4 if image else 3)))
    max_span = draw(st.one_of(st.none(), st.integers(1, nodes + 2)))
    return make_spec(tasks=draw(st.integers(1, 6)), nodes=nodes, stages=stages, max_span=max_span,
                     image=image, read_in=draw(st.booleans()), read_out=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(specs())
def test_pipeline_verifies_after_every_pass_and_counts_edges(spec):
    verified_after = []
    manager = PassManager(before_search_pipeline(spec),
                          on_pass=lambda result: verified_after.append(result.pass_.name))
    ir = manager.run(seed_ir(spec))  # raises if any pass leaves an invalid IR
    assert verified_after == [p.name for p in manager.passes]

    n, m = spec.network.central.nodes, spec.network.flow_restriction.max_span
    expected = m * n - m * (m + 1) // 2 if m is not None and m < n else n * (n - 1) // 2
    assert len(ir.edges_of_kind("internal")) == expected
    t = len(spec.tasks)
    assert len(ir.edges_of_kind("read_in")) == (n if spec.network.read_in else 1)
    assert len(ir.edges_of_kind("read_out")) == (n * t if spec.network.read_out else t)
    check_task_paths(ir)
    assert IR.from_json(ir.to_json()).to_dict() == ir.to_dict()
    verify(IR.from_json(ir.to_json()))
