"""dagir.flow: forward, backward and edge flow, and the path of largest gate product.

Unit tests on hand-built IRs with numbers worked out by hand; property tests on random gated search
spaces against brute-force path enumeration. `gated_irs` and `hand_ir` are reused by
test_post_search_passes.py.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagir.flow import best_path, gate_weights, path_product, task_flow, total_flow
from dagir.gates import sigmoid
from dagir.ir import IR, Decision, Edge, EdgeTaskState, Node, Task, TensorType, edge_name
from dagir.pipeline import compile_spec
from dagir.spec import Spec

PROPERTY = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])


# -- builders -------------------------------------------------------------------------------------
def logit(gate: float) -> float:
    return math.log(gate / (1.0 - gate))


def hand_ir(edges: list[tuple[str, str, float | None]], tasks: tuple[str, ...] = ("a",),
            per_task: dict[tuple[str, str, str], float] | None = None) -> IR:
    """An IR from `(src, dst, gate)` triples (gate None: ungated). Nodes: `input`, `stem`, `h<i>`,
    `head_<task>`; every edge serves every task whose head it does not avoid; `per_task` overrides a
    gate for one `(src, dst, task)`."""
    ir = IR(name="hand", tasks=[Task(t, "regression", 1) for t in tasks])
    vector = TensorType((4,))
    names = {n for src, dst, _ in edges for n in (src, dst)}
    for name in sorted(names):
        if name == "input":
            ir.add_node(Node(name, "input", vector))
        elif name == "stem":
            ir.add_node(Node(name, "stem", vector))
        elif name.startswith("head_"):
            ir.add_node(Node(name, "head", vector, task=name[len("head_"):]))
        else:
            ir.add_node(Node(name, "hidden", vector, index=int(name[1:]), stage=0))
    for src, dst, gate in edges:
        served = [dst[len("head_"):]] if dst.startswith("head_") else list(tasks)
        logits = {}
        for task in served:
            value = (per_task or {}).get((src, dst, task), gate)
            if value is not None:
                logits[task] = (logit(value),)
        kind = "stem" if src == "input" else "read_out" if dst.startswith("head_") else "internal"
        ir.add_edge(Edge(src, dst, kind, None, {task: EdgeTaskState() for task in served}, gated=gate is not None))
        if logits:
            ir.add_decision(Decision(edge_name(src, dst), "bernoulli", (((src, dst),),), tuple(logits), logits))
    return ir


@lru_cache(maxsize=None)
def _supernet(nodes: int, stages: int, max_span: int | None, tasks: int, read_in: bool, read_out: bool,
              image: bool) -> IR:
    spec = Spec(tasks=[{"name": f"t{i}", "kind": "regression"} for i in range(tasks)],
                network={"input": {"shape": [1, 8, 8] if image else [5]},
                         "central": {"nodes": nodes, "stages": stages, "channels": [4] * stages},
                         "flow_restriction": {"max_span": max_span}, "read_in": read_in, "read_out": read_out})
    return compile_spec(spec)


@st.composite
def gated_irs(draw, max_nodes: int = 12) -> IR:
    """A compiled search space (random N, stages, max_span, 1-4 tasks, read-in/out) with random gate
    logits: continuous, from a few values (so products tie), or with some gates that underflow to 0."""
    nodes = draw(st.integers(1, max_nodes))
    stages = draw(st.integers(1, min(3, nodes)))
    max_span = draw(st.one_of(st.none(), st.integers(1, nodes)))
    ir = _supernet(nodes, stages, max_span, draw(st.integers(1, 4)), draw(st.booleans()),
                   draw(st.booleans()), draw(st.booleans())).copy()
    style = draw(st.sampled_from(["continuous", "ties", "extreme"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def draw_logit() -> float:
        if style == "ties":
            return rng.choice([-2.0, 0.0, 1.0, 3.0])
        if style == "extreme" and rng.random() < 0.2:
            return rng.choice([-800.0, 800.0])
        return rng.gauss(0.0, 3.0)

    for key, edge in ir.edges.items():
        for task in edge.tasks if edge.gated else ():
            ir.set_bernoulli_logit(key, task, draw_logit())
    return ir


@lru_cache(maxsize=None)
def _cross_task_space(nodes: int, stages: int, tasks: int, window: int, aggregation: str, image: bool) -> IR:
    spec = Spec(tasks=[{"name": f"t{i}", "kind": "regression"} for i in range(tasks)],
                network={"input": {"shape": [1, 8, 8] if image else [5]}, "stem": {"channels": 3},
                         "central": {"nodes": nodes, "stages": stages, "channels": [2 + s for s in range(stages)]},
                         "heads": {"hidden": 4}},
                pipeline={"before_search": [f"build-cross-task{{window={window}, aggregation={aggregation}}}",
                                            "legalize-types", "attach-gates"]})
    return compile_spec(spec)


@st.composite
def cross_task_irs(draw, max_nodes: int = 6) -> IR:
    """An MTL-NAS space (`build-cross-task`: one chain per task, 2-4 tasks, gated cross edges within a
    window, `sum` or `nddr` nodes) with random gate logits: a task's flow runs through the chains of
    the tasks it reads (task-owned nodes), unlike `gated_irs`."""
    nodes = draw(st.integers(2, max_nodes))
    ir = _cross_task_space(nodes, draw(st.integers(1, min(2, nodes))), draw(st.integers(2, 4)),
                           draw(st.integers(1, 3)), draw(st.sampled_from(["sum", "nddr"])), draw(st.booleans())).copy()
    style = draw(st.sampled_from(["continuous", "ties", "high"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def draw_logit() -> float:
        if style == "ties":
            return rng.choice([-2.0, 0.0, 1.0, 3.0])
        if style == "high":  # most cross edges kept: flows run through several chains
            return rng.uniform(-0.5, 4.0)
        return rng.gauss(0.0, 3.0)

    for name, decision in ir.decisions.items():
        ir.decisions[name] = decision.with_logits({owner: (draw_logit(),) for owner in decision.logits})
    return ir


def search_spaces(max_nodes: int = 12) -> st.SearchStrategy[IR]:
    """Central spaces (`gated_irs`) and cross-task spaces (`cross_task_irs`), both with random gates."""
    return st.one_of(gated_irs(max_nodes), cross_task_irs(min(max_nodes, 6)))


def enumerate_paths(ir: IR, task: str, start: str, end: str) -> list[list[tuple[str, str]]]:
    """Every path start -> end on the edges active for `task` (exponential: small graphs only)."""
    outgoing: dict[str, list[str]] = {}
    for src, dst in gate_weights(ir, task):
        outgoing.setdefault(src, []).append(dst)
    paths, stack = [], [(start, [])]
    while stack:
        node, path = stack.pop()
        if node == end:
            paths.append(path)
            continue
        stack.extend((nxt, path + [(node, nxt)]) for nxt in outgoing.get(node, []))
    return paths


# -- unit tests -----------------------------------------------------------------------------------
# input -> stem -> {h1, h2} -> head, plus h1 -> h2: three paths.
DIAMOND = [("input", "stem", None), ("stem", "h1", 0.5), ("stem", "h2", 0.25), ("h1", "h2", 0.8),
           ("h1", "head_a", 0.6), ("h2", "head_a", 0.9)]


def test_flows_of_a_diamond_by_hand():
    flow = task_flow(hand_ir(DIAMOND), "a")
    assert flow.forward["h2"] == pytest.approx(0.25 + 0.5 * 0.8)
    assert flow.backward["h1"] == pytest.approx(0.6 + 0.8 * 0.9)
    paths = 0.5 * 0.6 + 0.5 * 0.8 * 0.9 + 0.25 * 0.9
    assert flow.total == pytest.approx(paths)
    assert flow.backward["input"] == pytest.approx(paths)
    assert flow.edge[("h1", "h2")] == pytest.approx(0.5 * 0.8 * 0.9)
    assert flow.edge[("input", "stem")] == pytest.approx(paths)


def test_best_path_is_the_largest_product():
    ir = hand_ir(DIAMOND)
    # 0.5*0.6 = 0.30, 0.5*0.8*0.9 = 0.36, 0.25*0.9 = 0.225
    assert best_path(ir, "a") == [("input", "stem"), ("stem", "h1"), ("h1", "h2"), ("h2", "head_a")]
    assert path_product(gate_weights(ir, "a"), best_path(ir, "a")) == pytest.approx(0.36)


def test_best_path_breaks_ties_by_node_and_survives_sub_graphs():
    ir = hand_ir([("input", "stem", None), ("stem", "h1", 0.5), ("stem", "h2", 0.5),
                  ("h1", "head_a", 0.5), ("h2", "head_a", 0.5)])
    assert best_path(ir, "a")[1] == ("stem", "h1")
    without_h2 = {k: w for k, w in gate_weights(ir, "a").items() if "h2" not in k}
    assert best_path(ir, "a", without_h2) == best_path(ir, "a")


def test_best_path_with_zero_gates_still_returns_a_path():
    ir = hand_ir([("input", "stem", None), ("stem", "h1", 0.5), ("h1", "head_a", 0.5)])
    weights = {key: 0.0 if key == ("stem", "h1") else w for key, w in gate_weights(ir, "a").items()}
    assert best_path(ir, "a", weights) == [("input", "stem"), ("stem", "h1"), ("h1", "head_a")]
    assert total_flow(ir, "a", weights) == 0.0


def test_best_path_without_a_path_raises():
    ir = hand_ir([("input", "stem", None), ("stem", "h1", 0.5), ("h1", "head_a", 0.5)])
    with pytest.raises(ValueError, match="no path"):
        best_path(ir, "a", {("input", "stem"): 1.0})


def test_only_the_given_edges_carry_flow_and_ungated_edges_weigh_one():
    ir = hand_ir(DIAMOND)
    assert gate_weights(ir, "a")[("input", "stem")] == 1.0
    only_h2 = {("input", "stem"): 1.0, ("stem", "h2"): 0.25, ("h2", "head_a"): 0.9}
    assert total_flow(ir, "a", only_h2) == pytest.approx(0.225)
    assert task_flow(ir, "a", only_h2).forward["h1"] == 0.0


def test_sigmoid_is_stable():
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
    assert sigmoid(logit(0.3)) == pytest.approx(0.3)


# -- properties -----------------------------------------------------------------------------------
@PROPERTY
@given(gated_irs(max_nodes=6))
def test_flows_equal_path_enumeration(ir):
    source = ir.input_node().name
    for task in ir.task_names:
        weights, flow = gate_weights(ir, task), task_flow(ir, task)
        head = ir.head_of(task).name

        def summed(paths: list) -> object:
            return pytest.approx(math.fsum(path_product(weights, p) for p in paths), rel=1e-9, abs=1e-300)

        paths = enumerate_paths(ir, task, source, head)
        assert flow.total == summed(paths) and flow.backward[source] == summed(paths)
        for node in ir.nodes:
            assert flow.forward[node] == summed(enumerate_paths(ir, task, source, node))
            assert flow.backward[node] == summed(enumerate_paths(ir, task, node, head))
        for key, value in flow.edge.items():
            assert value == summed([p for p in paths if key in p])
        best = path_product(weights, best_path(ir, task))
        assert best == pytest.approx(max(path_product(weights, p) for p in paths), rel=1e-12, abs=0)


@PROPERTY
@given(gated_irs())
def test_flow_across_every_topological_cut_is_the_total(ir):
    order = ir.topological_order()
    for task in ir.task_names:
        flow = task_flow(ir, task)
        head = ir.head_of(task).name
        for size in range(1, order.index(head) + 1):
            prefix = set(order[:size])
            crossing = [value for (src, dst), value in flow.edge.items() if src in prefix and dst not in prefix]
            assert math.fsum(crossing) == pytest.approx(flow.total, rel=1e-9, abs=1e-300)


@PROPERTY
@given(gated_irs(), st.data())
def test_best_path_is_chosen_again_on_any_sub_graph_that_contains_it(ir, data):
    for task in ir.task_names:
        weights = gate_weights(ir, task)
        path = best_path(ir, task, weights)
        dropped = data.draw(st.sets(st.sampled_from(sorted(weights))), label="dropped")
        sub = {key: w for key, w in weights.items() if key in path or key not in dropped}
        assert best_path(ir, task, sub) == path


@PROPERTY
@given(gated_irs(), st.data())
def test_removing_edges_never_raises_a_flow(ir, data):
    for task in ir.task_names:
        weights = gate_weights(ir, task)
        dropped = data.draw(st.sets(st.sampled_from(sorted(weights))), label="dropped")
        full = task_flow(ir, task, weights)
        sub = task_flow(ir, task, {key: w for key, w in weights.items() if key not in dropped})
        assert all(sub.forward[n] <= full.forward[n] and sub.backward[n] <= full.backward[n] for n in ir.nodes)
