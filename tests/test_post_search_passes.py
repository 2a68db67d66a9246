"""The post-search passes: discretize, flow-reduce, share-states (DESIGN §4).

Unit tests on hand-built IRs; property tests on random gated search spaces for every guarantee the
design lists (sub-graph, a path and (1 - ε) of the flow per task, no dead node or edge, monotone in the
budget, idempotent) and for the structural sharing test.
"""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagir.errors import UserError
from dagir.flow import best_path, gate_weights, total_flow
from dagir.gates import sigmoid
from dagir.ir import IR
from dagir.pass_manager import PassManager, parse_pass
from dagir.pipeline import spec_options
from dagir.spec import Spec
from dagir.task_states import nodes_on_paths, reached_nodes, state_owner
from dagir.verify import check_task_paths, verify
from test_flow import DIAMOND, PROPERTY, gated_irs, hand_ir, search_spaces

from dagir.passes.discretize import Discretize
from dagir.passes.flow_reduce import FlowReduce
from dagir.passes.share_states import ShareStates


def kept(ir: IR) -> dict[str, set[tuple[str, str]]]:
    """Every task's kept edges."""
    return {task: set(gate_weights(ir, task)) for task in ir.task_names}


def discretized(ir: IR, threshold: float = 0.5) -> IR:
    return Discretize(threshold=threshold).run(ir)


def reduced(ir: IR, budget: float) -> IR:
    return FlowReduce(flow_budget=budget).run(ir)


# -- discretize -----------------------------------------------------------------------------------
def test_discretize_thresholds_forces_the_best_path_and_reports_the_gap():
    ir = hand_ir([("input", "stem", None), ("stem", "h1", 0.9), ("stem", "h2", 0.3),
                  ("h1", "head_a", 0.2), ("h2", "head_a", 0.45)])
    out = discretized(ir)
    assert kept(out)["a"] == {("input", "stem"), ("stem", "h1"), ("h1", "head_a")}  # 0.18 beats 0.135
    report = out.meta["discretize"]
    assert report["forced"] == {"a": ["edge_h1_head_a"]}
    assert report["kept_per_task"] == {"a": 3}
    assert report["gap"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.45) / 4)
    assert out.discretized and not ir.discretized and ir.edges[("h1", "head_a")].tasks["a"].keep is None
    verify(out)


def test_discretize_keeps_ungated_edges_and_reads_the_threshold_from_the_spec():
    spec = Spec(tasks=[{"name": "a", "kind": "regression"}], search={"reduction": {"threshold": 0.7}})
    assert parse_pass("discretize", spec_options(spec)).threshold == 0.7
    out = Discretize(threshold=0.99).run(hand_ir(DIAMOND))
    assert ("input", "stem") in kept(out)["a"]


@PROPERTY
@given(gated_irs(), st.floats(0.05, 0.95))
def test_discretize_keeps_a_path_for_every_task(ir, threshold):
    out = discretized(ir, threshold)
    check_task_paths(out)
    for task in ir.task_names:
        path = set(best_path(ir, task))
        for key, edge in ir.edges.items():
            if edge.is_active(task):
                decision = ir.decisions.get(edge.name)
                gate = 1.0 if decision is None else sigmoid(decision.logits_of(task)[0])
                expected = gate >= threshold or key in path
                assert out.edges[key].tasks[task].keep is expected
    assert 0.0 <= out.meta["discretize"]["gap"] <= 0.5
    assert discretized(out, threshold).edges == out.edges  # idempotent


# -- flow-reduce ----------------------------------------------------------------------------------
# A strong ungated route stem -> h1 -> head carries 1, a weak one stem -> h2 -> h3 -> head 0.52^3
# (12.3% of the 1.140608 in all): a budget of 0.15 removes it, one of 0.05 does not.
TWO_ROUTES = [("input", "stem", None), ("stem", "h1", None), ("h1", "head_a", None),
              ("stem", "h2", 0.52), ("h2", "h3", 0.52), ("h3", "head_a", 0.52)]


def test_flow_reduce_drops_the_weak_route_only_when_the_budget_allows():
    ir = discretized(hand_ir(TWO_ROUTES))
    generous, tight = reduced(ir, 0.15), reduced(ir, 0.05)
    assert set(generous.edges) == {("input", "stem"), ("stem", "h1"), ("h1", "head_a")}
    report = generous.meta["flow_reduce"]
    assert report["deleted_nodes"] == ["h2", "h3"]
    assert report["kept_flow"]["a"] == 1.0
    assert report["reference_flow"]["a"] == pytest.approx(1 + 0.52 ** 3)
    assert len(report["removed"]["a"]) == 3  # the first cut edge, then the two it left without flow
    assert tight.edges == ir.edges
    assert generous.reduced and tight.reduced
    verify(generous)


def test_flow_reduce_never_removes_the_best_path_even_with_a_huge_budget():
    ir = discretized(hand_ir(DIAMOND))
    out = reduced(ir, 0.99)
    assert kept(out)["a"] == set(best_path(ir, "a"))


def test_flow_reduce_disabled_only_cleans_up():
    ir = discretized(hand_ir(TWO_ROUTES + [("h1", "h4", 0.9)]))  # h4 leads nowhere
    out = FlowReduce(flow_budget=0.5, enabled=False).run(ir)
    assert set(out.nodes) == set(ir.nodes) - {"h4"}
    assert set(out.edges) == set(ir.edges) - {("h1", "h4")}
    assert out.reduced


def test_flow_reduce_keeps_an_edge_for_the_tasks_that_need_it():
    # Task b's weak route carries 0.99 * 0.99 * 0.9 of its flow: too much to drop.
    ir = hand_ir(TWO_ROUTES + [("h1", "head_b", None), ("h3", "head_b", 0.9)], tasks=("a", "b"),
                 per_task={("stem", "h2", "b"): 0.99, ("h2", "h3", "b"): 0.99})
    out = reduced(discretized(ir), 0.15)
    states = out.edges[("stem", "h2")].tasks
    assert states["a"].keep is False and states["b"].keep is True
    assert ("h3", "head_a") not in out.edges
    verify(out)


def test_flow_reduce_drops_a_task_from_an_edge_off_its_paths_that_another_task_needs():
    # For task a, h1 -> h3 leads to h3, from which a's head is cut (h3 -> head_a gate 0.1).
    ir = hand_ir(TWO_ROUTES + [("h1", "h3", 0.9), ("h3", "head_b", 0.9), ("h1", "head_b", None)],
                 tasks=("a", "b"), per_task={("h3", "head_a", "a"): 0.1})
    out = FlowReduce(enabled=False).run(discretized(ir))
    assert out.edges[("h1", "h3")].tasks["a"].keep is False and out.edges[("h1", "h3")].tasks["b"].keep


def test_flow_reduce_options_come_from_the_spec():
    spec = Spec(tasks=[{"name": "a", "kind": "regression"}],
                search={"reduction": {"flow_budget": 0.2, "enabled": False}})
    assert str(parse_pass("flow-reduce", spec_options(spec))) == "flow-reduce{flow_budget=0.2, enabled=false}"


@PROPERTY
@given(search_spaces(), st.floats(0.0, 0.9))
def test_flow_reduce_guarantees(ir, budget):
    before = discretized(ir)
    out = reduced(before, budget)
    verify(out)  # every task keeps a path; no dead node; no edge kept for no task
    assert set(out.nodes) <= set(before.nodes)
    for key, edge in out.edges.items():
        assert before.edges[key].op == edge.op and set(edge.active_tasks()) <= set(before.edges[key].active_tasks())
    for task in ir.task_names:
        reference = total_flow(before, task, gate_weights(before, task))
        assert total_flow(out, task, gate_weights(out, task)) >= (1.0 - budget) * reference  # exactly
        for key in best_path(before, task, gate_weights(before, task)):  # kept by the owner of the state it feeds
            assert key in kept(out)[state_owner(before, key[1], task)]
        on_paths = nodes_on_paths(out, task)
        assert all(src in on_paths and dst in on_paths for src, dst in kept(out)[task])


@PROPERTY
@given(search_spaces(), st.floats(0.0, 0.9), st.floats(0.0, 0.9))
def test_a_larger_budget_never_keeps_more(ir, first, second):
    small, large = sorted((first, second))
    before = discretized(ir)
    tight, loose = reduced(before, small), reduced(before, large)
    assert set(loose.edges) <= set(tight.edges) and set(loose.nodes) <= set(tight.nodes)
    assert all(kept(loose)[t] <= kept(tight)[t] for t in ir.task_names)


@PROPERTY
@given(search_spaces(), st.floats(0.0, 0.9), st.floats(0.0, 0.9))
def test_flow_reduce_is_idempotent_and_composes(ir, first, second):
    once = reduced(discretized(ir), first)
    again = reduced(once, first)
    assert again.edges == once.edges and again.nodes == once.nodes
    assert again.meta["flow_reduce"]["kept_flow"] == once.meta["flow_reduce"]["kept_flow"]
    assert reduced(once, second).edges == reduced(discretized(ir), max(first, second)).edges


@PROPERTY
@given(search_spaces(), st.floats(0.0, 0.9))
def test_flow_reduce_disabled_keeps_exactly_the_edges_on_each_tasks_paths(ir, budget):
    before = discretized(ir)
    out = FlowReduce(flow_budget=budget, enabled=False).run(before)
    verify(out)
    for task in ir.task_names:
        on_paths = nodes_on_paths(before, task)
        assert kept(out)[task] == {(s, d) for s, d in kept(before)[task] if s in on_paths and d in on_paths}
        assert total_flow(out, task) == total_flow(before, task, gate_weights(before, task))
    assert reduced(out, budget).edges == reduced(before, budget).edges


# -- share-states ---------------------------------------------------------------------------------
def signature(ir: IR, task: str, node: str, memo: dict[Any, Any]) -> Any:
    """The full expression of `task`'s state at `node`: a tree of kept edges down to the input."""
    owner = ir.nodes[node].task or task
    if (owner, node) not in memo:
        on_paths = reached_nodes(ir, owner)
        memo[(owner, node)] = (node, frozenset(
            (edge.src, signature(ir, owner, edge.src, memo) if edge.src in on_paths else None)
            for edge in ir.in_edges()[node] if edge.is_active(owner)))
    return memo[(owner, node)]


def test_share_states_by_hand():
    # Both tasks keep stem -> h1 and stem -> h2; only b keeps h1 -> h2.
    ir = hand_ir([("input", "stem", None), ("stem", "h1", 0.9), ("stem", "h2", 0.9), ("h1", "h2", 0.9),
                  ("h1", "head_a", 0.9), ("h2", "head_a", 0.9), ("h2", "head_b", 0.9)], tasks=("a", "b"),
                 per_task={("h1", "h2", "a"): 0.1})
    out = ShareStates().run(discretized(ir))
    states = out.meta["share_states"]["states"]
    assert states["input"] == states["stem"] == states["h1"] == [["a", "b"]]
    assert states["h2"] == [["a"], ["b"]]
    assert states["head_a"] == [["a"]] and states["head_b"] == [["b"]]
    assert out.meta["share_states"]["distinct_states"] == 7
    assert out.meta["share_states"]["task_states"] == 10


def test_share_states_needs_a_discretised_ir():
    with pytest.raises(UserError, match="discretize"):
        ShareStates().run(hand_ir(DIAMOND))


@PROPERTY
@given(gated_irs(), st.floats(0.0, 0.5))
def test_share_states_merges_exactly_the_structurally_identical_states(ir, budget):
    before = reduced(discretized(ir), budget)
    out = ShareStates().run(before)
    assert out.edges == before.edges and out.nodes == before.nodes
    memo: dict[Any, Any] = {}
    for node, groups in out.meta["share_states"]["states"].items():
        owned = out.nodes[node].task
        users = [owned] if owned else [t for t in ir.task_names if node in
                                       nodes_on_paths(out, t)]
        assert sorted(t for g in groups for t in g) == sorted(users)
        signatures = [{signature(out, t, node, memo) for t in group} for group in groups]
        assert all(len(s) == 1 for s in signatures)  # merged: the same state
        assert len(set().union(*signatures)) == len(groups)  # not merged: different states


@PROPERTY
@given(gated_irs())
def test_share_states_never_merges_tasks_whose_kept_in_edges_differ(ir):
    out = ShareStates().run(discretized(ir))  # without reduction: dead edges and all
    incoming = out.in_edges()
    for node, groups in out.meta["share_states"]["states"].items():
        for group in groups:
            in_edges = {frozenset(e.src for e in incoming[node] if e.is_active(t)) for t in group}
            assert len(in_edges) == 1


@PROPERTY
@given(search_spaces())
def test_the_post_search_pipeline_verifies_after_every_pass(ir):
    manager = PassManager([parse_pass(p) for p in ("discretize", "flow-reduce", "share-states")])
    out = manager.run(ir)
    assert out.discretized and out.reduced and "share_states" in out.meta
    assert [name for name, _ in manager.timings] == ["discretize", "flow-reduce", "share-states"]


# -- fit-budget -----------------------------------------------------------------------------------
def cost_of(ir: IR) -> dict[str, int]:
    from dagir.compact_cost import compact_macs, compact_parameters
    shared = ShareStates().run(ir)
    return {"macs": compact_macs(shared)["total"], "parameters": compact_parameters(shared)["total"]}


def best_paths_only(ir: IR) -> IR:
    """The network that keeps each task's best path and nothing else: the cheapest fit-budget may reach."""
    out = ir.copy()
    paths = {(state_owner(out, key[1], task), key) for task in out.task_names
             for key in best_path(out, task, gate_weights(out, task))}
    for key, edge in list(out.edges.items()):
        for task in edge.active_tasks():
            if (task, key) not in paths:
                out.edges[key] = out.edges[key].with_task_state(task, keep=False)
    return FlowReduce(enabled=False).run(out)


@given(search_spaces(max_nodes=8), st.floats(0.0, 1.2))
@PROPERTY
def test_fit_budget_meets_any_budget_the_best_paths_allow(ir, fraction):
    from dagir.passes.fit_budget import FitBudget
    start = reduced(discretized(ir), 0.0)
    floor, full = cost_of(best_paths_only(start))["macs"], cost_of(start)["macs"]
    budget = max(1, int(floor + fraction * (full - floor)) if fraction <= 1 else int(floor * 0.5))
    fitted = FitBudget(macs=budget).run(start)
    verify(fitted)
    check_task_paths(fitted)
    record = fitted.meta["fit_budget"]
    assert record["cost"] == cost_of(fitted)
    assert record["met"] == (record["cost"]["macs"] <= budget)
    assert record["met"] or budget < floor  # a budget the best paths meet is always met
    for task in fitted.task_names:  # every task keeps its best path, through whichever owners' states
        for key in best_path(start, task, gate_weights(start, task)):
            assert key in gate_weights(fitted, state_owner(start, key[1], task))
    if fraction >= 1.0 and fraction <= 1.2 and budget >= full:
        assert record["removed"] == []  # within budget already: nothing removed


def test_fit_budget_does_nothing_without_a_budget_and_reads_it_from_the_spec():
    from dagir.passes.fit_budget import FitBudget
    ir = reduced(discretized(hand_ir(DIAMOND)), 0.0)
    assert FitBudget().run(ir).to_dict() == ir.to_dict()
    options = spec_options(Spec(tasks=[{"name": "a", "kind": "regression"}],
                                search={"budget": {"macs": 1000, "parameters": None}}), budget=True)
    assert parse_pass("fit-budget", options).macs == 1000


@given(search_spaces(max_nodes=6), st.floats(0.0, 1.0))
@PROPERTY
def test_fit_budget_straight_after_discretize_leaves_an_ir_that_verifies(ir, fraction):
    """No flow-reduce between: fit-budget does the clean-up itself and marks what it reduced."""
    from dagir.passes.fit_budget import FitBudget
    before = discretized(ir)
    full = cost_of(FlowReduce(enabled=False).run(before))["macs"]
    manager = PassManager([Discretize(), FitBudget(macs=max(1, int(fraction * full)))])
    fitted = manager.run(ir)  # verifies after every pass
    assert fitted.reduced and fitted.meta["fit_budget"]["cost"] == cost_of(fitted)
    for task in fitted.task_names:
        for key in best_path(before, task, gate_weights(before, task)):
            assert key in gate_weights(fitted, state_owner(before, key[1], task))
