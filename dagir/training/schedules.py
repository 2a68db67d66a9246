"""Schedules over a stage: the gate temperature τ, the squeeze weight λ, the learning rate.

`progress` runs from 0 at the stage's first step to 1 at its last. Each is a pure function of
progress, so a resumed run follows the same schedule as an uninterrupted one.

>>> round(temperature(0.5, start=1.0, end=0.25, schedule="exponential"), 3)
0.5
>>> squeeze_ramp(0.25, ramp=0.5)
0.5
>>> learning_rate_factor(0.5, schedule="cosine")
0.5
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

LR_SCHEDULES = ("constant", "cosine")


def temperature(progress: float, *, start: float, end: float, schedule: str) -> float:
    """τ annealed from `start` to `end`: exponentially, linearly, quadratically (`end + (start -
    end)(1 - progress)²`, MTL-NAS's τ = (1 - t/T)² for start 1 and end → 0), or held at `start`."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "quadratic":
        return end + (start - end) * (1.0 - progress) ** 2
    if schedule == "exponential":
        return start * (end / start) ** progress
    raise ValueError(f"unknown temperature schedule {schedule!r}")


def squeeze_ramp(progress: float, *, ramp: float) -> float:
    """The share of λ in force: rises linearly over the first `ramp` of the search, then stays 1."""
    if ramp <= 0:
        return 1.0
    return min(1.0, max(progress, 0.0) / ramp)


def learning_rate_factor(progress: float, *, schedule: str) -> float:
    """The share of a stage's learning rate in force: 1 throughout, or cosine from 1 down to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (known: {', '.join(LR_SCHEDULES)})")


def set_learning_rates(optimizers: Iterable[torch.optim.Optimizer], progress: float, *, schedule: str) -> None:
    """Set every parameter group's lr to its stage lr (kept as `initial_lr`) times the schedule's factor."""
    factor = learning_rate_factor(progress, schedule=schedule)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
