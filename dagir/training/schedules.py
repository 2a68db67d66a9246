"""Schedules over the search stage: the gate temperature τ and the squeeze weight λ.

`progress` runs from 0 at the first search step to 1 at the last.

>>> round(temperature(0.5, start=1.0, end=0.25, schedule="exponential"), 3)
0.5
>>> squeeze_ramp(0.25, ramp=0.5)
0.5
"""
from __future__ import annotations


def temperature(progress: float, *, start: float, end: float, schedule: str) -> float:
    """τ annealed from `start` to `end`: exponentially, linearly, or held at `start`."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "exponential":
        return start * (end / start) ** progress
    raise ValueError(f"unknown temperature schedule {schedule!r}")


def squeeze_ramp(progress: float, *, ramp: float) -> float:
    """The share of λ in force: rises linearly over the first `ramp` of the search, then stays 1."""
    if ramp <= 0:
        return 1.0
    return min(1.0, max(progress, 0.0) / ramp)
