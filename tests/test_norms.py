"""Batch norm's statistics around the search (dagir.training.norms): `select_norm_batches` scores the
discretised network with statistics re-estimated for it, and leaves training untouched."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dagir.datasets.splits import Split
from dagir.training.loop import epoch_batches
from dagir.training.norms import recalibrated_norms
from test_run import CONV_TINY, run_quietly


def test_recalibrated_norms_hold_the_calibration_batches_statistics_and_restore_the_old_ones():
    torch.manual_seed(0)
    inputs = torch.randn(96, 3, 5, 5) * 3 + 2
    split = Split(inputs, {"y": torch.zeros(96)}, torch.arange(96)[:, None])
    conv, norm = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.3)
    module = nn.Sequential(conv, norm, nn.ReLU()).train()
    module[2].eval()  # a child in its own mode: the block must give it back as it was
    norm.running_mean.fill_(7.0)
    norm.running_var.fill_(9.0)
    norm.num_batches_tracked.fill_(123)
    # the oracle: the batches the block takes (the same seed), through the convolution alone
    batches = epoch_batches(split, 32, seed=5)
    with torch.no_grad():
        outputs = [conv(batches[i][0]) for i in range(2)]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    with recalibrated_norms(module, module, split, batches=2, batch_size=32, seed=5, device=torch.device("cpu")):
        assert torch.allclose(norm.running_mean, expected_mean, atol=1e-5)
        assert torch.allclose(norm.running_var, expected_var, rtol=1e-4)
        assert not norm.training  # the evaluation inside normalises with them
    assert torch.all(norm.running_mean == 7.0) and torch.all(norm.running_var == 9.0)
    assert int(norm.num_batches_tracked) == 123 and norm.momentum == 0.3
    assert module.training and norm.training and conv.training and not module[2].training


def test_zero_batches_change_nothing():
    norm = nn.BatchNorm1d(2)
    norm.running_mean.fill_(1.0)
    split = Split(torch.randn(8, 2), {"y": torch.zeros(8)}, torch.arange(8)[:, None])
    with recalibrated_norms(norm, norm, split, batches=0, batch_size=4, seed=0, device=torch.device("cpu")):
        assert torch.all(norm.running_mean == 1.0) and norm.training


@pytest.fixture()
def conv_spec(tmp_path):
    path = tmp_path / "conv.yaml"
    path.write_text(CONV_TINY)
    return path


def test_select_norm_batches_changes_what_select_scores_and_nothing_the_search_trains(tmp_path, conv_spec):
    overrides = ["train.search.select=best", "train.search.train_weights=true", "train.search.mode=alternating",
                 "train.search.epochs=3", "train.finetune.epochs=0"]
    histories = {}
    for batches in (0, 4):
        out = tmp_path / f"n{batches}"
        run_quietly(conv_spec, out, overrides=overrides + [f"train.search.select_norm_batches={batches}"])
        rows = [row for row in json.loads((out / "history.json").read_text()) if row["stage"] == "search"]
        histories[batches] = rows
    plain, recalibrated = histories[0], histories[4]
    for before, after in zip(plain, recalibrated):  # the search itself is the same run
        assert before["train/loss"] == after["train/loss"]
        assert {k: v for k, v in before.items() if k.startswith("val/")} == \
               {k: v for k, v in after.items() if k.startswith("val/")}
    scored = [{k: row[k] for k in row if k.startswith("select/")} for row in (plain[-1], recalibrated[-1])]
    assert scored[0] and scored[0] != scored[1]  # the discretised network scored with other statistics


def test_select_norm_batches_needs_select_best(conv_spec):
    from test_cli import dagir
    code, _, stderr = dagir("compile", str(conv_spec), "-o", str(conv_spec.parent / "c"), "--set",
                            "train.search.select_norm_batches=8")
    assert code == 2 and "train.search.select_norm_batches" in stderr and "select: best" in stderr, stderr
