"""The squeeze loss: where it pushes a gate, and what its default does to a gate that starts open."""
from __future__ import annotations

import pytest
import torch

from dagir.spec import SqueezeSpec
from dagir.training.squeeze import squeeze_loss


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
