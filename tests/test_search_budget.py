"""The budget held inside the search (`search.budget.search_rate`, `dagir.training.budget`): its count of
what the discretised gates cost, checked against the compact network the post-search passes build;
its multipliers; and a run in which the gates, not fit-budget, bring the network within the budget."""
from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dagir.backends.torch_supernet import lower_supernet
from dagir.compact_cost import compact_macs, compact_parameters
from dagir.pass_manager import PassManager, parse_pipeline
from dagir.training.budget import SearchBudget
from dagir.pipeline import compile_spec
from dagir.spec import Spec
from helpers import make_spec, small_ir
from test_run import dagir, run_quietly, tiny_spec  # noqa: F401  (the fixture)

SPACES = {
    "shared nodes, summed": dict(aggregation="sum"),
    "shared nodes, nddr": dict(aggregation="nddr"),
    "task copies beside, summed": dict(aggregation="sum", task_stages=1, task_copies="beside"),
    "MTL-NAS's chains": dict(pipeline=["build-cross-task{window=2}", "legalize-types", "attach-gates"]),
}


def _space(tasks: int, pipeline: list[str] | None = None, **network):
    spec = make_spec(tasks=tasks, **network)
    if pipeline is not None:
        spec = Spec(**{**spec.model_dump(), "pipeline": {"before_search": pipeline}})
    return compile_spec(spec)


def _with_logits(ir, seed: int, agree: bool):
    """`ir` with a random gate logit in [-3, 3] per gated edge, the same for every task (`agree`) or one each."""
    rng, out = random.Random(seed), ir.copy()
    for key, edge in list(out.edges.items()):
        if edge.gated:
            shared = rng.uniform(-3, 3)
            for task in edge.tasks:
                out.set_bernoulli_logit(key, task, shared if agree else rng.uniform(-3, 3))
    return out


def _estimate_and_exact(space: dict, seed: int, agree: bool):
    ir = _space(3, **space)
    searched = _with_logits(ir, seed, agree)
    table = lower_supernet(searched).gates
    budget = SearchBudget(ir, table.slots, {"macs": 1, "parameters": 1}, rate=0.0)
    estimate = budget.hard_cost(table.slot_values(table.option_values("hard")),
                                table.slot_values(table.probabilities()))
    compact = PassManager(parse_pipeline(["discretize", "share-states"], needs_build=False)).run(searched)
    exact = {"macs": compact_macs(compact)["total"], "parameters": compact_parameters(compact)["total"]}
    return estimate, exact


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_where_the_tasks_agree_the_estimate_is_the_compact_networks_cost(space, seed):
    """Tasks that keep the same edges share every state, so each kept edge is computed once, as the
    estimate counts it; edges no input-to-head path uses are dropped by both."""
    estimate, exact = _estimate_and_exact(space, seed, agree=True)
    assert estimate == pytest.approx(exact)


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_where_the_tasks_differ_the_estimate_never_exceeds_the_compact_networks_cost(space, seed):
    """Tasks whose states differ compute an edge once per state: the estimate counts it once."""
    estimate, exact = _estimate_and_exact(space, seed, agree=False)
    for quantity in ("macs", "parameters"):
        assert estimate[quantity] <= exact[quantity] + 1e-6


def test_the_multipliers_grow_while_over_the_budget_and_fall_to_zero_within_it():
    ir = small_ir(tasks=2)
    table = lower_supernet(ir).gates
    everything = SearchBudget(ir, table.slots, {"parameters": 1}, rate=0.0).hard_cost(
        torch.ones(len(table.slots)))["parameters"]
    budget = SearchBudget(ir, table.slots, {"parameters": int(everything / 2), "macs": None}, rate=0.1)
    assert list(budget.multipliers) == ["parameters"]  # no limit, no multiplier
    opened, closed = torch.ones(len(table.slots)), torch.zeros(len(table.slots))
    for progress in (0.1, 0.3):  # the rate is per search stage: over 0.3 of it, μ climbs 0.3 x rate x overshoot
        budget.progress = progress
        budget.update(opened)
    assert budget.multipliers["parameters"] == pytest.approx(0.3 * 0.1 * (everything / int(everything / 2) - 1))
    probabilities = torch.full((len(table.slots),), 0.7, requires_grad=True)
    budget.penalty(probabilities).backward()
    assert (probabilities.grad > 0).all()  # every gate is pushed down, the costly ones hardest
    for step in range(1, 8):
        budget.progress = 0.3 + step / 10
        budget.update(closed)
    assert budget.multipliers["parameters"] == 0.0
    assert budget.state_dict()["updated_at"] == pytest.approx(1.0)


def _removed_by_fit_budget(folder) -> list[str]:
    return json.loads((folder / "metrics.json").read_text())["fit_budget"]["removed"]


def test_held_inside_the_search_the_gates_meet_the_budget_themselves(tmp_path, tiny_spec):  # noqa: F811
    """At 60% of the open network's parameters, fit-budget has to remove edges after a plain search;
    with the budget held inside the search the gates close enough of them first, and the run records
    the multipliers it ended with in metrics.json."""
    longer = ["train.search.steps_per_epoch=16"]  # 16 architecture steps in all (alternating)
    free = run_quietly(tiny_spec, tmp_path / "free", overrides=longer)["compact"]["parameters"]
    limit = int(free * 0.6)
    plain = run_quietly(tiny_spec, tmp_path / "plain", overrides=longer + [f"search.budget.parameters={limit}"])
    held = run_quietly(tiny_spec, tmp_path / "held", overrides=longer + [f"search.budget.parameters={limit}",
                                                                          "search.budget.search_rate=8"])
    assert plain["fit_budget"]["removed"] and not held["fit_budget"]["removed"]
    assert held["compact"]["parameters"] <= limit
    assert held["search_budget"]["estimated_cost"]["parameters"] <= limit
    assert plain["search_budget"] is None
    code, _, stderr = dagir("compile", str(tiny_spec), "-o", str(tmp_path / "c"),
                            "--set", "search.budget.search_rate=0.1")
    assert code == 2 and "search.budget.search_rate: holding a budget inside the search needs one" in stderr


def test_a_search_resumed_with_the_budget_held_reaches_the_uninterrupted_multipliers(tmp_path, monkeypatch):
    """The multipliers (and the progress they were last moved at) are checkpointed with the search: a run
    stopped while its gates close and resumed ends with the multipliers,
    gates and metrics of one never stopped."""
    from test_run import TINY, Interrupt, patch_loss
    from dagir.training import loop as training_loop

    spec = tmp_path / "held.yaml"
    spec.write_text(TINY.replace("search:\n", "search:\n  budget: {parameters: 3500, search_rate: 8}\n").replace(
        "search: {epochs: 2, steps_per_epoch: 4", "search: {epochs: 2, steps_per_epoch: 16"))
    whole = run_quietly(spec, tmp_path / "whole")
    real_loss, calls = training_loop.multitask_loss, {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8 + 11:  # warm-up's 8 steps, then search step 11, as the gates close (a checkpoint at 9)
            raise Interrupt()
        return real_loss(*args, **kwargs)

    patch_loss(monkeypatch, flaky_loss)
    with pytest.raises(Interrupt):
        run_quietly(spec, tmp_path / "resumed")
    patch_loss(monkeypatch, real_loss)
    resumed = run_quietly(spec, tmp_path / "resumed", resume=True)
    assert whole["search_budget"]["estimated_cost"]["parameters"] <= 3500  # from 5844 with every gate open
    assert resumed["search_budget"] == whole["search_budget"]
    assert resumed["test"] == whole["test"]


def test_the_policy_gradient_search_holds_the_budget_too(tmp_path):
    """MTNAS's sampled search over routes (categorical decisions) adds the budget's term to its logits'
    loss, on the probabilities the squeeze reads: a limit under the routed network's cost raises the
    multipliers, and the run records them."""
    from test_routing import MTNAS_TINY

    spec = tmp_path / "mtnas.yaml"
    spec.write_text(MTNAS_TINY.replace('"flow-reduce{enabled=false}", share-states]',
                                       '"flow-reduce{enabled=false}", fit-budget, share-states]').replace(
        "search:\n", "search:\n  budget: {macs: 100, search_rate: 8}\n"))
    held = run_quietly(spec, tmp_path / "held")["search_budget"]
    assert held["limits"] == {"macs": 100} and held["estimated_cost"]["macs"] > 100
    assert held["multipliers"]["macs"] > 0
