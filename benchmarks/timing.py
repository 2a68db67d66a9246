"""Timing shared by the benchmarks: best-of-N, interleaved, in one process."""
from __future__ import annotations

import time
from typing import Callable


def best_times(steps: dict[str, Callable[[], None]], repeats: int, inner: int) -> dict[str, float]:
    """Seconds per call of each step: two warm-up calls, then the best of `repeats` rounds of `inner`
    calls, the steps interleaved so load from other processes hits them all alike."""
    for step in steps.values():
        step()
        step()
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / inner)
    return best
