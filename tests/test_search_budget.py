"""The budget held inside the search (`search.budget.search_rate`, `dagir.training.budget`): each gate's
share of the cost, the multipliers and when the network is counted, and runs in which the gates, not
fit-budget, bring the network within the budget."""
from __future__ import annotations

import pytest
import torch

from dagir.backends.torch_supernet import lower_supernet
from dagir.training.budget import COUNTS, SearchBudget
from helpers import small_ir
from test_run import dagir, run_quietly, tiny_spec  # noqa: F401  (the fixture)


def test_each_gate_carries_its_share_of_its_edges_parameters():
    """Summed MLP nodes: an edge's parameters are its linear layer's, counted on the lowered module (not
    by the cost rules under test), split evenly among the gates of the tasks it serves."""
    ir = small_ir(tasks=2, image=False, edge_op="mlp", aggregation="sum")
    supernet = lower_supernet(ir)
    table = supernet.gates
    budget = SearchBudget(ir, table.slots, {"parameters": 1}, rate=1.0, recount=dict)
    by_edge: dict[str, list[int]] = {}
    for (edge, _task), slot in table.slots.items():
        by_edge.setdefault(edge, []).append(slot)
    for edge, slots in by_edge.items():
        counted = sum(p.numel() for p in getattr(supernet, edge).parameters())
        assert budget.slot_costs["parameters"][slots].tolist() == pytest.approx([counted / len(slots)] * len(slots))


class Counter:
    """A stand-in for the run's count of the network's cost: `costs` in turn, then the last for ever."""

    def __init__(self, *costs: float) -> None:
        self.costs, self.calls = list(costs), 0

    def __call__(self) -> dict[str, float]:
        self.calls += 1
        return {"parameters": self.costs[min(self.calls, len(self.costs)) - 1]}


def test_the_multipliers_climb_by_the_rate_times_the_overshoot_and_fall_to_zero_within_the_limit():
    ir = small_ir(tasks=2)
    table = lower_supernet(ir).gates
    count = Counter(300, 300, 50, 0)
    budget = SearchBudget(ir, table.slots, {"parameters": 100, "macs": None}, rate=0.5, recount=count)
    assert list(budget.multipliers) == ["parameters"]  # no limit, no multiplier
    for progress in (0.0, 0.25):  # a quarter of the stage at 3x the limit
        budget.progress = progress
        budget.update()
    assert budget.multipliers["parameters"] == pytest.approx(0.5 * 0.25 * (300 / 100 - 1))
    probabilities = torch.full((len(table.slots),), 0.7, requires_grad=True)
    budget.penalty(probabilities).backward()
    expected = budget.multipliers["parameters"] * budget.slot_costs["parameters"].float() / 100
    assert torch.allclose(probabilities.grad, expected)  # each gate pushed down by its share of the cost
    budget.progress = 0.3125
    budget.update()  # back within the limit: μ falls a little, and pushes no more
    assert budget.multipliers["parameters"] > 0 and float(budget.penalty(probabilities)) == 0.0
    budget.progress = 1.0
    budget.update()  # the rest of the stage at nothing: held at 0
    assert budget.multipliers["parameters"] == 0.0


def test_the_network_is_counted_once_every_fraction_of_the_stage_whatever_its_steps():
    ir = small_ir(tasks=2)
    table = lower_supernet(ir).gates
    for steps in (10, 1000):
        count = Counter(200)
        budget = SearchBudget(ir, table.slots, {"parameters": 100}, rate=1.0, recount=count)
        for step in range(steps):
            budget.progress = step / steps
            budget.update()
        assert count.calls == min(steps, COUNTS)
        assert budget.multipliers["parameters"] == pytest.approx((steps - 1) / steps, rel=0.05)  # 1 x overshoot 1


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
    assert held["search_budget"]["cost"]["parameters"] <= limit
    assert plain["search_budget"] is None
    code, _, stderr = dagir("compile", str(tiny_spec), "-o", str(tmp_path / "c"),
                            "--set", "search.budget.search_rate=0.1")
    assert code == 2 and "search.budget.search_rate: holding a budget inside the search needs one" in stderr


@pytest.mark.parametrize("stop_at", [8 + 11, 8 + 32 + 4], ids=["search", "finetune"])
def test_a_run_resumed_with_the_budget_held_reaches_the_uninterrupted_multipliers(tmp_path, monkeypatch, stop_at):
    """The multipliers (and the progress they were last moved at) are checkpointed with the search, and
    what they ended at with the fine-tuning: a run stopped while its gates close (search step 11, a
    checkpoint at 9), or in its fine-tuning (step 4, a checkpoint at 3), and resumed ends with the multipliers, gates and metrics
    of one never stopped."""
    from test_run import TINY, Interrupt, patch_loss
    from dagir.training import loop as training_loop

    spec = tmp_path / "held.yaml"
    held = TINY.replace("budget: {macs: null, parameters: null}", "budget: {macs: null, parameters: 3500, search_rate: 8}")
    spec.write_text(held.replace("search: {epochs: 2, steps_per_epoch: 4", "search: {epochs: 2, steps_per_epoch: 16"))
    whole = run_quietly(spec, tmp_path / "whole")
    real_loss, calls = training_loop.multitask_loss, {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:  # after warm-up's 8 steps and (in the fine-tuning) the search's 32
            raise Interrupt()
        return real_loss(*args, **kwargs)

    patch_loss(monkeypatch, flaky_loss)
    with pytest.raises(Interrupt):
        run_quietly(spec, tmp_path / "resumed")
    patch_loss(monkeypatch, real_loss)
    resumed = run_quietly(spec, tmp_path / "resumed", resume=True)
    assert whole["search_budget"]["cost"]["parameters"] <= 3500
    assert resumed["search_budget"] == whole["search_budget"]
    assert resumed["test"] == whole["test"]


def test_the_policy_gradient_search_holds_the_budget_too(tmp_path, monkeypatch):
    """MTNAS's sampled search over routes (categorical decisions) adds the budget's term to its logits'
    loss, on the probabilities the squeeze reads, and counts the network as the gradient search does."""
    from test_routing import MTNAS_TINY

    terms = []
    real_penalty = SearchBudget.penalty

    def recorded(self, slot_values):
        terms.append(slot_values.requires_grad)
        return real_penalty(self, slot_values)

    monkeypatch.setattr(SearchBudget, "penalty", recorded)
    spec = tmp_path / "mtnas.yaml"
    spec.write_text(MTNAS_TINY.replace('"flow-reduce{enabled=false}", share-states]',
                                       '"flow-reduce{enabled=false}", fit-budget, share-states]').replace(
        "search:\n", "search:\n  budget: {macs: 210, parameters: null, search_rate: 8}\n"))  # just over the floor (208)
    held = run_quietly(spec, tmp_path / "held")["search_budget"]
    assert terms and all(terms)  # every policy step, on probabilities the logits' gradient flows through
    assert held["limits"] == {"macs": 210} and held["cost"]["macs"] > 210 and held["multipliers"]["macs"] > 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("image", [True, False])
def test_no_compact_network_costs_less_than_the_floor_a_budget_is_checked_against(seed, image):
    """`cost_floor` of the space is a lower bound on every compact network the search can leave:
    checked against the compact cost (counted by the compact pipeline's own code) of random searches,
    from gates that keep nearly everything to gates that keep next to nothing."""
    from dagir.compact_cost import compact_macs, compact_parameters, cost_floor
    from helpers import with_random_logits
    from test_compact import post_search

    space = small_ir(tasks=3, nodes=5, stages=1 if not image else 2, image=image)
    floor = cost_floor(space)
    for low, high in ((-3.0, 3.0), (-6.0, -1.0), (1.0, 6.0)):
        compact = post_search(with_random_logits(space, seed, low, high), flow_budget=0.5)
        assert floor["macs"] <= compact_macs(compact)["total"]
        assert floor["parameters"] <= compact_parameters(compact)["total"]
    assert floor["macs"] > 0 and floor["parameters"] > 0


def test_a_budget_below_any_network_of_the_space_is_refused_before_training(tmp_path, tiny_spec):  # noqa: F811
    from dagir.errors import SpecError
    from dagir.spec import load_spec

    with pytest.raises(SpecError, match=r"search.budget.parameters: 10 parameters is less than any network of "
                                        r"this space costs: its stem and each task's head"):
        load_spec(tiny_spec, ["search.budget.parameters=10"])
    load_spec(tiny_spec, ["search.budget.parameters=100000"])  # a reachable one passes
