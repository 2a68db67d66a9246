"""Jacobian descent (`train.loss_weighting.aggregator`, dagir.training.descent): each task's gradient is
computed here by plain autograd, the oracle the aggregated update is checked against."""
from __future__ import annotations

import pytest
import torch

from dagir.errors import SpecError
from dagir.spec import load_spec
from dagir.training.descent import AGGREGATORS, Descent
from dagir.training.precision import Precision


def conflicting_losses(parameter: torch.Tensor) -> list[torch.Tensor]:
    """Two losses whose gradients conflict (cosine −0.45) and differ in size (1 and 4.5)."""
    return [(parameter * torch.tensor([1.0, 0.0])).sum(),
            (parameter * torch.tensor([-2.0, 4.0])).sum()]


def not_against(update: torch.Tensor, gradient: torch.Tensor) -> bool:
    """Whether `update` lowers the loss of `gradient` or leaves it, up to the QP solvers' regularisation
    (1% of the two lengths; the summed gradient is 24% against the first task's)."""
    return float(torch.dot(update, gradient)) >= -1e-2 * float(update.norm() * gradient.norm())


def task_gradients(parameter: torch.Tensor) -> list[torch.Tensor]:
    return [torch.autograd.grad(loss, parameter)[0] for loss in conflicting_losses(parameter)]


@pytest.mark.parametrize("aggregator", ["upgrad", "dualproj", "mgda"])
def test_the_update_conflicts_with_no_task_where_the_sum_does(aggregator):
    parameter = torch.tensor([0.2, 0.1], requires_grad=True)
    first, second = task_gradients(parameter)
    assert torch.dot(first + second, first) < 0  # the summed gradient would raise the first task's loss
    terms = conflicting_losses(parameter)
    Descent(aggregator, Precision()).backward(terms[0] + terms[1], terms, [parameter])
    assert not_against(parameter.grad, first) and not_against(parameter.grad, second)
    assert parameter.grad.norm() > 1e-3


def test_without_an_aggregator_the_gradient_is_the_combined_losss():
    parameter = torch.tensor([0.2, 0.1], requires_grad=True)
    first, second = task_gradients(parameter)
    terms = conflicting_losses(parameter)
    Descent("none", Precision()).backward(terms[0] + terms[1], terms, [parameter])
    assert torch.allclose(parameter.grad, first + second)


def test_the_rows_carry_the_weightings_factors():
    """PCGrad leaves rows that do not conflict as they are and sums them, so with two tasks on disjoint
    weights the update is the weighted loss's gradient: 2·∇L_a + 0.5·∇L_b, not ∇L_a + ∇L_b."""
    a = torch.tensor([0.5, -1.0], requires_grad=True)
    b = torch.tensor([2.0], requires_grad=True)
    terms = [a.pow(2).sum(), (b - 1).pow(2).sum()]
    loss = (torch.stack(terms) * torch.tensor([2.0, 0.5])).sum()  # a weighting's combination of the terms
    Descent("pcgrad", Precision()).backward(loss, terms, [a, b])
    assert torch.allclose(a.grad, 2 * 2 * a.detach()) and torch.allclose(b.grad, 0.5 * 2 * (b.detach() - 1))


def test_leaves_outside_the_trained_weights_keep_the_combined_losss_gradient():
    weight = torch.tensor([0.2, 0.1], requires_grad=True)
    gate = torch.tensor(0.7, requires_grad=True)
    terms = [gate * loss for loss in conflicting_losses(weight)]
    squeeze = (gate - 1).pow(2)
    loss = terms[0] + terms[1] + squeeze
    expected_gate = torch.autograd.grad(loss, gate, retain_graph=True)[0]
    first = torch.autograd.grad(terms[0], weight, retain_graph=True)[0]
    Descent("upgrad", Precision()).backward(loss, terms, [weight], others=True)
    assert torch.allclose(gate.grad, expected_gate)
    assert not_against(weight.grad, first)  # the weights' gradient is the aggregated one, not the sum's


def test_every_aggregator_the_spec_names_runs():
    from typing import get_args

    from dagir.spec import LossWeightingSpec
    assert set(get_args(LossWeightingSpec.model_fields["aggregator"].annotation)) == {"none", *AGGREGATORS}
    for aggregator in AGGREGATORS:
        parameter = torch.tensor([0.2, 0.1], requires_grad=True)
        terms = conflicting_losses(parameter)
        Descent(aggregator, Precision()).backward(terms[0] + terms[1], terms, [parameter])
        assert torch.isfinite(parameter.grad).all(), aggregator


SPEC = """
name: s
data: {dataset: digits}
tasks:
  - {name: digit, kind: classification, classes: 10}
  - {name: parity, kind: classification, classes: 2}
network: {central: {nodes: 2, stages: 1, channels: 8}}
train:
  loss_weighting: {kind: KIND, aggregator: upgrad}
  precision: PRECISION
"""


@pytest.mark.parametrize("kind, precision, message", [
    ("uw", "float32", "weighting without parameters of its own"),
    ("dwa", "float16", "float16 gradient scaling"),
])
def test_an_aggregator_the_run_could_not_apply_is_refused_where_it_is_written(tmp_path, kind, precision, message):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("KIND", kind).replace("PRECISION", precision))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert message in str(error.value) and "spec.yaml" in str(error.value)


def test_the_default_is_no_aggregator_and_the_resolved_spec_says_so(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("KIND", "dwa").replace("PRECISION", "float32").replace(", aggregator: upgrad", ""))
    spec = load_spec(path)
    assert spec.train.loss_weighting.aggregator == "none"
    assert "aggregator: none" in spec.resolved_yaml()
