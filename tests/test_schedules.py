"""The stages' schedules (learning rate, temperature, squeeze ramp: pure functions of progress) and optimisers."""
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


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_a_stages_optimiser_is_torchs_fused_kernel_and_steps_as_the_per_tensor_one(kind):
    from dagir.spec import StageSpec
    from dagir.training.loop import make_optimizer
    stage = StageSpec(epochs=1, lr=0.01, optimizer=kind, weight_decay=0.1)
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(3)]
    fused_parameters = [torch.nn.Parameter(t.clone()) for t in start]
    plain_parameters = [torch.nn.Parameter(t.clone()) for t in start]
    fused = make_optimizer(fused_parameters, stage)
    assert fused.defaults["fused"] is True
    options = {"lr": 0.01, "weight_decay": 0.1, "foreach": False}  # torch's per-tensor loop: the oracle
    plain = {"adam": lambda: torch.optim.Adam(plain_parameters, **options),
             "adamw": lambda: torch.optim.AdamW(plain_parameters, **options),
             "sgd": lambda: torch.optim.SGD(plain_parameters, momentum=0.9, **options)}[kind]()
    for _ in range(3):
        for parameters, optimizer in ((fused_parameters, fused), (plain_parameters, plain)):
            for parameter, gradient in zip(parameters, (torch.ones(4, 3), torch.full((3,), -2.0))):
                parameter.grad = gradient.clone()
            optimizer.step()
    for mine, theirs in zip(fused_parameters, plain_parameters):
        torch.testing.assert_close(mine, theirs)
    assert not torch.equal(fused_parameters[0], start[0])  # it stepped
    # a device without the fused kernel keeps torch's default
    assert not make_optimizer([torch.nn.Parameter(torch.zeros(2, device="meta"))], stage).defaults.get("fused")
