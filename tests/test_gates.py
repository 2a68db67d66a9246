"""dagir.gates and the decisions in the IR: numbers safe at any logit, relaxations, log-probabilities,
lossless JSON, the verifier's decision checks, and flow over task states."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dagir import gates
from dagir.backends.graphviz_dot import to_dot
from dagir.errors import VerificationError
from dagir.flow import gate_weights, task_flow
from dagir.ir import IR, SHARED, Decision
from dagir.ir_text import format_ir
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.training.plots import plot_gate_heatmaps
from dagir.verify import verify
from helpers import small_ir
from test_lowering import task_owned_chains


def test_scalar_functions_are_safe_at_any_logit():
    for logit in (-1e308, -800.0, -40.0, 0.0, 40.0, 800.0, 1e308):
        p = gates.sigmoid(logit)
        assert 0.0 <= p <= 1.0
        assert math.isfinite(gates.log_sigmoid(logit)) or logit == -1e308
    assert gates.log_sigmoid(-800.0) == pytest.approx(-800.0)
    assert gates.log_sigmoid(800.0) == 0.0
    assert gates.softmax([1000.0, 0.0]) == [1.0, 0.0]
    assert gates.argmax([1.0, 3.0, 3.0]) == 1  # ties to the first


def test_tensor_relaxations_and_log_probabilities():
    logits = torch.tensor([-800.0, -2.0, 0.0, 3.0, 800.0], dtype=torch.float64)
    soft = gates.relax_bernoulli(logits, relaxation="sigmoid", tau=0.5)
    torch.testing.assert_close(soft, torch.tensor([1 / (1 + math.exp(-2 * v)) if v > -400 else 0.0
                                                   for v in logits.tolist()], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    relaxed = gates.relax_bernoulli(logits, relaxation="relaxed-bernoulli", tau=0.5, generator=generator)
    assert torch.all((relaxed >= 0) & (relaxed <= 1)) and torch.isfinite(relaxed).all()
    noise = torch.zeros_like(logits)  # with no noise the relaxed sample is the sigmoid
    torch.testing.assert_close(gates.relax_bernoulli(logits, relaxation="relaxed-bernoulli", tau=0.5, noise=noise), soft)
    sample = gates.relax_bernoulli(logits, relaxation="sample", generator=generator)
    assert set(sample.tolist()) <= {0.0, 1.0} and sample[0] == 0.0 and sample[-1] == 1.0
    log_p = gates.bernoulli_log_prob(logits, sample)
    assert torch.isfinite(log_p).all()
    assert log_p[0].item() == pytest.approx(0.0) and log_p[-1].item() == pytest.approx(0.0)
    # categorical: a sample's log-probability is its option's log-softmax
    rows = torch.tensor([[0.0, 1.0, -800.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    one_hot = gates.relax_categorical(rows, relaxation="sample", generator=generator)
    assert one_hot.sum(dim=-1).tolist() == [1.0, 1.0] and one_hot[0, 2] == 0.0
    expected = torch.log_softmax(rows, dim=-1)[one_hot.bool()]
    torch.testing.assert_close(gates.categorical_log_prob(rows, one_hot), expected)
    assert gates.hard_categorical(rows).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="unknown relaxation"):
        gates.relax_bernoulli(logits, relaxation="gumbel")


def test_bernoulli_samples_follow_their_probability():
    generator = torch.Generator().manual_seed(1)
    logits = torch.full((20000,), math.log(0.3 / 0.7))
    drawn = gates.relax_bernoulli(logits, relaxation="sample", generator=generator)
    assert drawn.mean().item() == pytest.approx(0.3, abs=0.015)


def extreme(ir: IR, logit: float) -> IR:
    out = ir.copy()
    for name, decision in out.decisions.items():
        out.decisions[name] = decision.with_logits({owner: [logit] for owner in decision.logits})
    return out


def test_text_drawings_and_plots_survive_extreme_logits(tmp_path):
    for logit in (-800.0, 800.0):
        ir = extreme(small_ir(tasks=2, image=False), logit)
        text = format_ir(ir)
        assert ("=0.00" if logit < 0 else "=1.00") in text
        assert "p=" in to_dot(ir)
        plot_gate_heatmaps(ir, tmp_path / f"gates{logit}.png")
        assert (tmp_path / f"gates{logit}.png").stat().st_size > 0


def test_decisions_round_trip_through_json():
    ir = small_ir(tasks=2, image=False)
    keys = [key for key, edge in ir.edges.items() if edge.kind == "read_out" and edge.dst == "head_t0"][:3]
    for key in keys:  # a categorical over three read-outs replaces their bernoullis
        del ir.decisions[ir.edges[key].name]
    ir.add_decision(Decision("route_head_t0", "categorical", tuple((key,) for key in keys), ("t0",),
                             {"t0": (0.1, -800.0, 1e-17)}))
    ir.decisions["edge_h1_h2"] = replace(ir.decisions["edge_h1_h2"], scope="shared", logits={SHARED: (0.25,)})
    verify(ir)
    again = IR.from_json(ir.to_json())
    assert again.decisions == ir.decisions and again.to_json() == ir.to_json()


def test_the_verifier_checks_decisions():
    ir = small_ir(tasks=2, image=False)
    verify(ir)
    bad = ir.copy()
    bad.add_decision(Decision("ghost", "bernoulli", ((("h1", "nowhere"),),), ("t0",), {"t0": (0.0,)}))
    with pytest.raises(VerificationError, match="does not exist"):
        verify(bad)
    lonely = ir.copy()
    lonely.add_decision(Decision("one", "categorical", ((("h1", "h2"),),), ("t0",), {"t0": (0.0,)}))
    with pytest.raises(VerificationError, match="at least two options"):
        verify(lonely)
    twice = ir.copy()
    twice.add_decision(replace(ir.decisions["edge_h1_h2"], name="again"))
    with pytest.raises(VerificationError, match="governed by decision"):
        verify(twice)
    infinite = ir.copy()
    infinite.decisions["edge_h1_h2"] = ir.decisions["edge_h1_h2"].with_logits({"t0": [math.inf], "t1": [0.0]})
    with pytest.raises(VerificationError, match="finite"):
        verify(infinite)


def test_discretize_keeps_exactly_the_chosen_options():
    ir = small_ir(tasks=2, image=False)
    reads = [key for key, edge in ir.edges.items() if edge.kind == "read_out" and edge.dst == "head_t0"]
    for key in reads:
        del ir.decisions[ir.edges[key].name]
    options = ((reads[0],), (reads[1], reads[2]), tuple(reads[3:]))
    ir.add_decision(Decision("route", "categorical", options, ("t0",), {"t0": (0.0, 2.0, 1.0)}))
    out = PassManager(parse_pipeline(["discretize"], needs_build=False)).run(ir)
    assert out.decisions["route"].chosen == {"t0": 1}
    assert {key for key in reads if out.edges[key].is_active("t0")} == {reads[1], reads[2]}
    tampered = out.copy()
    tampered.edges[reads[0]] = tampered.edges[reads[0]].with_task_state("t0", keep=True)
    with pytest.raises(VerificationError, match="chosen option"):
        verify(tampered)


def test_a_cross_edge_carries_flow_for_the_task_that_reads_it():
    ir = task_owned_chains()
    for name, decision in list(ir.decisions.items()):
        ir.decisions[name] = decision.with_logits({owner: [5.0] for owner in decision.logits})
    flow = task_flow(ir, "a")
    cross = ("b1", "a2")
    assert cross in gate_weights(ir, "a") and ("stem", "b1") not in gate_weights(ir, "a"), "b1 is b's"
    assert flow.instances[(("stem", "b1"), "b")] == pytest.approx(gates.sigmoid(5.0)), "b's chain carries a's flow"
    assert flow.edge[cross] == pytest.approx(gates.sigmoid(5.0))
    assert flow.total == pytest.approx(2 * gates.sigmoid(5.0))
    reduced = PassManager(parse_pipeline(["discretize", "flow-reduce{flow_budget=0.05}"], needs_build=False)).run(ir)
    assert cross in reduced.edges and reduced.edges[cross].is_active("a")
    assert ("a1", "b2") in reduced.edges, "with every gate high, flow-reduce keeps every cross edge"


def test_the_curves_draw_a_squeeze_only_for_the_stages_that_have_one(tmp_path, monkeypatch):
    """The warm-up and fine-tune have no squeeze: their zeros were drawn as a flat line beside the search's."""
    import dagir.training.plots as plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    history = [{"stage": stage, "epoch_global": epoch, "train/loss": 1.0 / epoch, "train/squeeze": squeeze,
                "val/t/accuracy": 0.5}
               for epoch, (stage, squeeze) in enumerate([("warmup", 0.0), ("warmup", 0.0), ("search", 0.2),
                                                         ("search", 0.3), ("finetune", 0.0)], start=1)]
    plots.plot_curves(history, tmp_path / "curves.png")
    by_title = {axis.get_title(): axis for axis in figures[0].axes}
    assert [line.get_label() for line in by_title["train/squeeze"].get_lines()] == ["search"]
    assert [line.get_label() for line in by_title["train/loss"].get_lines()] == ["warmup", "search", "finetune"]
