"""Task kinds: losses and metrics on hand-computed examples, metric directions, Δ_MTL, task fit."""
from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dagir.datasets import dataset_info
from dagir.errors import UserError
from dagir.spec import TaskSpec
from dagir.tasks import (TASK_KINDS, MetricMeter, _LOSSES, default_loss, delta_mtl,
                         higher_is_better, primary_metric, task_loss, task_metrics, task_misfits)

LOG_2 = math.log(2.0)


# -- the catalogue --------------------------------------------------------------------------------
def test_every_kind_offers_a_loss_and_a_metric_that_exist():
    for kind, info in TASK_KINDS.items():
        assert info.metrics and info.losses
        for loss in info.losses:
            assert (kind, loss) in _LOSSES
    assert {kind for kind, _ in _LOSSES} == set(TASK_KINDS)


@pytest.mark.parametrize("kind, expected", [
    ("classification", ("accuracy", True)), ("multilabel", ("f1", True)), ("regression", ("mae", False)),
    ("segmentation", ("miou", True)), ("depth", ("abs_err", False)), ("normals", ("mean_angle", False)),
])
def test_primary_metrics_and_their_direction(kind, expected):
    assert primary_metric(kind) == expected


def test_chosen_metrics_know_their_direction():
    assert higher_is_better("depth", "delta1") is True
    assert higher_is_better("normals", "within_30") is True
    assert higher_is_better("regression", "rmse") is False
    assert primary_metric("segmentation", "pixel_accuracy") == ("pixel_accuracy", True)
    with pytest.raises(UserError, match="no metric 'miou'"):
        primary_metric("regression", "miou")


def test_default_losses():
    assert [default_loss(kind) for kind in TASK_KINDS] == [
        "cross_entropy", "bce", "mse", "cross_entropy", "l1", "cosine"]
    with pytest.raises(UserError, match="unknown task kind"):
        default_loss("ranking")


# -- losses ---------------------------------------------------------------------------------------
def test_classification_cross_entropy():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    loss = task_loss("classification", logits, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(LOG_2 / 2, abs=1e-6)


def test_multilabel_bce_with_logits():
    assert task_loss("multilabel", torch.zeros(2, 3), torch.ones(2, 3)).item() == pytest.approx(LOG_2)


def test_regression_losses_accept_a_head_shaped_output():
    output, target = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert task_loss("regression", output, target).item() == pytest.approx((1 + 4) / 2)
    assert task_loss("regression", output, target, loss="l1").item() == pytest.approx((1 + 2) / 2)
    with pytest.raises(UserError, match="no loss 'cosine'"):
        task_loss("regression", output, target, loss="cosine")
    with pytest.raises(ValueError, match="does not match"):
        task_loss("regression", torch.zeros(3, 1), target)


def test_segmentation_cross_entropy_ignores_void_pixels():
    output = torch.zeros(1, 2, 1, 3)
    output[0, 0, 0, 0] = 100.0  # confidently right on pixel 0, uncertain (log 2) on pixel 1
    output[0, 1, 0, 2] = -100.0  # pixel 2 is void: its huge error must not count
    target = torch.tensor([[[0, 1, 255]]])
    assert task_loss("segmentation", output, target).item() == pytest.approx(LOG_2 / 2, abs=1e-6)
    negative_void = torch.tensor([[[0, 1, -1]]])
    assert task_loss("segmentation", output, negative_void).item() == pytest.approx(LOG_2 / 2, abs=1e-6)


def test_an_all_void_batch_has_zero_loss_and_a_gradient():
    output = torch.zeros(1, 2, 2, 2, requires_grad=True)
    loss = task_loss("segmentation", output, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and output.grad is not None


def test_depth_l1_counts_valid_pixels_only():
    output = torch.tensor([[[[2.0, 2.0, 9.0]]]])
    target = torch.tensor([[[[1.0, 2.0, 0.0]]]])  # the last pixel has no depth
    assert task_loss("depth", output, target).item() == pytest.approx(0.5)
    assert task_loss("depth", output, target[:, 0]).item() == pytest.approx(0.5)  # target [B, H, W]


def test_normals_cosine_loss():
    target = torch.zeros(1, 3, 1, 3)
    target[0, 0, 0, 0] = 1.0  # (1, 0, 0)
    target[0, 1, 0, 1] = 1.0  # (0, 1, 0); pixel 2 is void (zero vector)
    output = torch.zeros(1, 3, 1, 3)
    output[0, 0, 0, 0] = 5.0  # same direction: loss 0
    output[0, 1, 0, 1] = -2.0  # opposite: loss 2
    output[0, 2, 0, 2] = 1.0
    assert task_loss("normals", output, target).item() == pytest.approx(1.0)


# -- metrics --------------------------------------------------------------------------------------
def test_accuracy_over_batches_is_over_samples():
    meter = MetricMeter("classification")
    meter.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))  # 1 of 1
    meter.update(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([1, 1, 1]))  # 0 of 3
    assert meter.compute() == {"accuracy": 0.25}  # not the mean of batch accuracies, 0.5


def test_multilabel_f1_and_accuracy():
    output = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # tp 1, fp 1, fn 1, tn 1
    assert task_metrics("multilabel", output, target) == {"f1": pytest.approx(0.5), "accuracy": 0.5}


def test_regression_errors_are_reported_in_natural_units():
    output, target = torch.tensor([[0.5], [1.0]]), torch.tensor([[0.0], [1.0]])
    metrics = task_metrics("regression", output, target, scale=18.0)
    assert metrics["mae"] == pytest.approx(0.25 * 18)
    assert metrics["rmse"] == pytest.approx(math.sqrt(0.125) * 18)


def test_miou_ignores_void_and_comes_from_the_confusion_matrix():
    output = torch.zeros(1, 2, 1, 4)
    predicted = torch.tensor([0, 1, 1, 0])
    output[0, 1, 0] = predicted.float()  # class 1 wins where predicted is 1
    output[0, 0, 0] = 0.5 * (1 - predicted.float())
    target = torch.tensor([[[0, 0, 1, 255]]])
    metrics = task_metrics("segmentation", output, target)
    # confusion over the three valid pixels: (0->0), (0->1), (1->1); IoU 1/2 for both classes.
    assert metrics == {"miou": pytest.approx(0.5), "pixel_accuracy": pytest.approx(2 / 3)}


def test_miou_skips_classes_neither_present_nor_predicted():
    output = torch.zeros(1, 3, 1, 2)
    output[0, 0] = 1.0  # always class 0
    metrics = task_metrics("segmentation", output, torch.tensor([[[0, 0]]]))
    assert metrics["miou"] == 1.0  # classes 1 and 2 never appear: they do not drag the mean to 1/3


def test_miou_accumulates_over_the_split_not_per_batch():
    first_output, first_target = torch.zeros(1, 2, 1, 1), torch.tensor([[[0]]])  # right
    second_output, second_target = torch.zeros(1, 2, 1, 3), torch.tensor([[[1, 1, 1]]])  # all wrong
    meter = MetricMeter("segmentation")
    meter.update(first_output, first_target)
    meter.update(second_output, second_target)
    # confusion: (0->0) 1, (1->0) 3. IoU class 0 = 1/4, class 1 = 0.
    assert meter.compute()["miou"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="not void"):
        meter.update(first_output, torch.tensor([[[7]]]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), cut=st.integers(1, 5))
def test_segmentation_metrics_do_not_depend_on_batching(seed, cut):
    generator = torch.Generator().manual_seed(seed)
    output = torch.randn(6, 3, 2, 2, generator=generator)
    target = torch.randint(0, 4, (6, 2, 2), generator=generator)
    target[target == 3] = 255
    meter = MetricMeter("segmentation")
    meter.update(output[:cut], target[:cut])
    meter.update(output[cut:], target[cut:])
    whole = task_metrics("segmentation", output, target)
    for name, value in meter.compute().items():
        assert value == pytest.approx(whole[name], nan_ok=True)


def test_depth_metrics_on_valid_pixels():
    output = torch.tensor([[[[2.0, 2.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 2.0, 0.0]]]])
    assert task_metrics("depth", output, target) == {
        "abs_err": pytest.approx(0.5), "rel_err": pytest.approx(0.5), "delta1": pytest.approx(0.5)}


def test_normals_angles_in_degrees():
    target = torch.zeros(1, 3, 1, 3)
    target[0, 0] = 1.0  # every pixel (1, 0, 0)
    output = torch.zeros(1, 3, 1, 3)
    output[0, 0, 0, 0] = 1.0  # 0 degrees
    output[0, 1, 0, 1] = 1.0  # 90 degrees
    output[0, 0, 0, 2], output[0, 1, 0, 2] = 1.0, 1.0  # 45 degrees
    metrics = task_metrics("normals", output, target)
    assert metrics["mean_angle"] == pytest.approx(45.0)
    assert metrics["median_angle"] == pytest.approx(45.0, abs=0.01)
    assert metrics["within_11_25"] == pytest.approx(1 / 3)
    assert metrics["within_30"] == pytest.approx(1 / 3)


def test_metrics_of_nothing_are_nan():
    assert math.isnan(MetricMeter("regression").compute()["mae"])
    assert math.isnan(task_metrics("depth", torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))["abs_err"])


# -- delta_mtl ------------------------------------------------------------------------------------
KINDS = {"left": "classification", "sum": "regression"}


def test_delta_mtl_is_positive_when_multi_task_learning_helps():
    better = delta_mtl({"left": {"accuracy": 0.9}, "sum": {"mae": 0.5, "rmse": 9.0}},
                       {"left": {"accuracy": 0.8}, "sum": {"mae": 1.0, "rmse": 1.0}}, KINDS)
    # accuracy +12.5 %, MAE halved (lower is better: +50 %); RMSE is not the primary metric.
    assert better == pytest.approx((12.5 + 50.0) / 2)


def test_delta_mtl_is_negative_when_it_hurts_and_zero_when_equal():
    worse = delta_mtl({"left": 0.7, "sum": 1.5}, {"left": 0.8, "sum": 1.0}, KINDS)
    assert worse == pytest.approx((-12.5 - 50) / 2)
    assert delta_mtl({"left": 0.8, "sum": 1.0}, {"left": 0.8, "sum": 1.0}, KINDS) == 0.0


def test_delta_mtl_uses_the_chosen_metric_and_rejects_a_zero_baseline():
    metrics = {"sum": {"mae": 1.0, "rmse": 2.0}}
    single = {"sum": {"mae": 1.0, "rmse": 1.0}}
    assert delta_mtl(metrics, single, {"sum": "regression"}, {"sum": "rmse"}) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="undefined"):
        delta_mtl({"sum": 1.0}, {"sum": 0.0}, {"sum": "regression"})
    with pytest.raises(ValueError, match="no metrics for task 'left'"):
        delta_mtl({}, single, {"left": "classification"})


# -- tasks against a data set ---------------------------------------------------------------------
def test_multimnist_tasks_fit():
    tasks = [TaskSpec(name="left", kind="classification", classes=10),
             TaskSpec(name="right", kind="classification", classes=10, metric="accuracy"),
             TaskSpec(name="sum", kind="regression", loss="l1")]
    assert task_misfits(dataset_info("multimnist"), tasks) == []


def test_a_segmentation_task_on_digits_does_not_fit():
    tasks = [TaskSpec(name="digit", kind="segmentation", classes=10)]
    message = "\n".join(str(misfit) for misfit in task_misfits(dataset_info("digits"), tasks))
    assert "tasks[0].kind" in message and "'digit'" in message and "classification" in message
    assert "no per-pixel targets" in message


def test_unknown_task_names_list_the_data_sets_tasks():
    (misfit,) = task_misfits(dataset_info("multimnist"), [TaskSpec(name="depth", kind="regression")])
    assert re.search(r"tasks\[0\].name: .*no task 'depth'.*left \(classification\)", str(misfit))


def test_every_misfit_is_reported_with_its_field():
    tasks = [TaskSpec(name="left", kind="classification", classes=5),
             TaskSpec(name="sum", kind="regression", loss="cross_entropy", metric="miou")]
    misfits = task_misfits(dataset_info("multimnist"), tasks)
    where = [(misfit.index, misfit.field) for misfit in misfits]
    assert where == [(0, "classes"), (1, "loss"), (1, "metric")]
    assert "has 10 classes" in misfits[0].message


def test_unlabelled_classification_samples_are_ignored():
    import torch

    from dagir.tasks import IGNORED_CLASS, MetricMeter, task_loss

    output = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    target = torch.tensor([0, IGNORED_CLASS, IGNORED_CLASS])
    assert float(task_loss("classification", output, target)) == float(task_loss("classification", output[:1], target[:1]))
    assert float(task_loss("classification", output, torch.full((3,), IGNORED_CLASS))) == 0.0
    meter = MetricMeter("classification")
    meter.update(output, target)
    assert meter.compute() == {"accuracy": 1.0}


def test_a_tasks_chosen_loss_is_the_one_trained_on():
    import torch

    from dagir.spec import TaskSpec
    from dagir.training.loop import multitask_loss

    outputs, targets = {"y": torch.tensor([[0.0], [0.0]])}, {"y": torch.tensor([[1.0], [3.0]])}
    mse, _ = multitask_loss(outputs, targets, [TaskSpec(name="y", kind="regression")])
    l1, _ = multitask_loss(outputs, targets, [TaskSpec(name="y", kind="regression", loss="l1")])
    assert float(mse) == pytest.approx(5.0) and float(l1) == pytest.approx(2.0)
