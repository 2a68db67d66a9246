"""The squeeze loss: where it pushes a gate, and what its default does to a gate that starts open."""
from __future__ import annotations

import pytest
import torch

from dagir.spec import SqueezeSpec
from dagir.training.squeeze import cost_compactness, squeeze_loss
from helpers import small_ir


def _slope(gate: float, rho: float) -> float:
    a = torch.tensor([gate], requires_grad=True)
    squeeze_loss(a, kind="binary", weight=1.0, rho=rho).backward()
    return float(a.grad)


@pytest.mark.parametrize("rho", [0.0, 1.0, 2.0, 3.0])
def test_the_squeeze_pushes_a_gate_up_above_its_tipping_point_and_down_below(rho):
    tipping = 0.5 + rho / 8  # where 4 - 8a + rho = 0
    assert _slope(tipping + 0.05, rho) < 0 < _slope(tipping - 0.05, rho)  # descent: up above, down below
    assert _slope(tipping, rho) == pytest.approx(0.0, abs=1e-6)


def test_with_rho_4_every_gate_decays():
    assert all(_slope(gate, 4.0) > 0 for gate in (0.05, 0.5, 0.73, 0.99))


def _gate_after_squeezing(spec: SqueezeSpec, logit: float = 1.0, steps: int = 300) -> float:
    """A lone gate σ(logit) under the squeeze alone, by Adam, as the search steps its gates."""
    logit = torch.tensor([logit], requires_grad=True)
    optimizer = torch.optim.Adam([logit], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        squeeze_loss(torch.sigmoid(logit), kind=spec.kind, weight=spec.weight, rho=spec.rho).backward()
        optimizer.step()
    return float(torch.sigmoid(logit.detach()))


def test_the_default_squeeze_keeps_a_gate_that_starts_open_and_rho_4_closes_it():
    default = SqueezeSpec()
    assert default.rho == 1.0 and default.kind == "binary"
    assert _gate_after_squeezing(default) > 0.95          # σ(1) = 0.73 lies above 0.625
    assert _gate_after_squeezing(default, logit=0.0) < 0.05  # 0.5 lies below it
    assert _gate_after_squeezing(SqueezeSpec(rho=4.0)) < 0.05


def test_the_cost_squeeze_closes_a_costly_gate_and_keeps_a_cheap_one_open():
    # c_e moves a gate's tipping point to 1/2 + ρ·c_e/8: 0.53 for c = 0.25, 0.97 for c = 3.75 (ρ = 1);
    # both gates start at σ(1) = 0.73, between the two
    logits = torch.tensor([1.0, 1.0], requires_grad=True)
    costs = torch.tensor([0.25, 3.75])
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        squeeze_loss(torch.sigmoid(logits), kind="cost", weight=0.5, rho=1.0, compactness_weights=costs).backward()
        optimizer.step()
    cheap, costly = torch.sigmoid(logits.detach()).tolist()
    assert cheap > 0.95 and costly < 0.05
    with pytest.raises(ValueError, match="cost squeeze needs"):
        squeeze_loss(torch.sigmoid(logits), kind="cost", weight=0.5, rho=1.0)


def test_cost_weights_are_each_edges_multiply_accumulates_over_the_mean():
    ir = small_ir(tasks=2, image=False)
    gated = [edge for edge in ir.edges.values() if edge.name in ir.decisions and edge.op is not None]
    slots = {(edge.name, task): i for i, (edge, task) in enumerate((e, t) for e in gated for t in ir.task_names)}
    weights = cost_compactness(ir, slots, len(slots))
    macs = [edge.op.params["d_in"] * edge.op.params["d_out"] for edge in gated for _ in ir.task_names]  # linear ops
    assert len(set(macs)) > 1  # the space has edges of more than one cost
    assert weights.mean().item() == pytest.approx(1.0)
    for (slot, weight), cost in zip(enumerate(weights.tolist()), macs):
        assert weight == pytest.approx(cost / (sum(macs) / len(macs)))
