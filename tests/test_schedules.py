"""The stage schedules: learning rate, temperature, squeeze ramp — pure functions of progress."""
from __future__ import annotations

import pytest
import torch

from dagir.training.schedules import learning_rate_factor, set_learning_rates, squeeze_ramp, temperature


def test_cosine_learning_rate_falls_from_the_stage_lr_to_zero():
    assert learning_rate_factor(0.0, schedule="cosine") == 1.0
    assert learning_rate_factor(1.0, schedule="cosine") == pytest.approx(0.0)
    factors = [learning_rate_factor(p / 10, schedule="cosine") for p in range(11)]
    assert factors == sorted(factors, reverse=True)
    assert all(learning_rate_factor(p / 10, schedule="constant") == 1.0 for p in range(11))
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        learning_rate_factor(0.5, schedule="step")


def test_set_learning_rates_scales_each_group_from_its_own_stage_lr():
    weights, heads = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([{"params": [weights], "lr": 0.1}, {"params": [heads], "lr": 0.01}])
    set_learning_rates([optimizer], 0.5, schedule="cosine")
    set_learning_rates([optimizer], 0.5, schedule="cosine")  # applied twice: still from the stage lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    # the stage lr travels in the optimizer's state, so a resumed optimizer follows the same schedule
    resumed = torch.optim.Adam([{"params": [weights], "lr": 0.1}, {"params": [heads], "lr": 0.01}])
    resumed.load_state_dict(optimizer.state_dict())
    set_learning_rates([resumed], 0.75, schedule="cosine")
    set_learning_rates([optimizer], 0.75, schedule="cosine")
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_temperature_and_squeeze_ramp_end_where_they_say():
    assert temperature(0.0, start=1.0, end=0.2, schedule="exponential") == 1.0
    assert temperature(1.0, start=1.0, end=0.2, schedule="exponential") == pytest.approx(0.2)
    assert temperature(0.5, start=1.0, end=0.2, schedule="linear") == pytest.approx(0.6)
    assert temperature(0.9, start=1.0, end=0.2, schedule="constant") == 1.0
    assert squeeze_ramp(0.0, ramp=0.5) == 0.0 and squeeze_ramp(0.7, ramp=0.5) == 1.0
    assert squeeze_ramp(0.0, ramp=0.0) == 1.0
