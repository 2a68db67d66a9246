"""The synthetic regression benchmark of MMoE (Ma et al., KDD 2018): two tasks of controlled correlation.

Generated in memory, nothing read from disk. With `d` = `dim`, `c` = `scale`, `p` = `correlation`:

1. draw two orthogonal unit vectors u1, u2 in R^d;
2. the task weights are w_a = c·u1 and w_b = c·(p·u1 + sqrt(1 - p²)·u2), so cos(w_a, w_b) = p;
3. draw x ~ N(0, I_d);
4. y_t = w_tᵀx + Σ_{i=1..m} sin(α_i·w_tᵀx + β_i) + ε_t, with ε_t ~ N(0, noise_std²) and m = `sin_terms`.

Since x is standard normal, the linear parts w_aᵀx and w_bᵀx have correlation exactly p; the sine
terms make the tasks non-linear, and with p = 1 the two labels differ only by their noise. The paper
leaves α_i and β_i unspecified and shares them between the tasks; as in Google Research's
reimplementation (`generate_task_pairs`), α_i = i and β_i = (i - 1)².

Tasks `a` and `b`: regression, targets [N, 1] float32; inputs [N, dim] float32. `generator_seed`
fixes the data (so runs with different seeds see the same tasks); `seed` fixes the split:
`test_fraction` for test, `val_split` for validation, the rest for training.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from .splits import Split, TaskData, seeded_splits, seeded_rng

TASK_KINDS = {"a": "regression", "b": "regression"}


def task_weights(dim: int, correlation: float, scale: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """w_a = c·u1 and w_b = c·(p·u1 + sqrt(1 - p²)·u2) for random orthonormal u1, u2 (Gram-Schmidt)."""
    first, second = rng.standard_normal((2, dim))
    first /= np.linalg.norm(first)
    second -= (second @ first) * first
    second /= np.linalg.norm(second)
    return scale * first, scale * (correlation * first + math.sqrt(max(0.0, 1.0 - correlation ** 2)) * second)


def generate(samples: int, dim: int, correlation: float, sin_terms: int = 10, scale: float = 1.0,
             noise_std: float = 0.01, generator_seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs `x` [samples, dim], labels `a` and `b` [samples], and the task weights `w_a`, `w_b` [dim].

    >>> data = generate(2000, 10, correlation=1.0, noise_std=0.0)
    >>> bool(np.allclose(data["a"], data["b"]))
    True
    """
    rng = seeded_rng(generator_seed)
    weights_a, weights_b = task_weights(dim, correlation, scale, rng)
    inputs = rng.standard_normal((samples, dim))
    alphas = np.arange(1, sin_terms + 1, dtype=np.float64)
    betas = np.arange(sin_terms, dtype=np.float64) ** 2
    labels = {}
    for task, weights in (("a", weights_a), ("b", weights_b)):
        linear = inputs @ weights
        waves = np.sin(linear[:, None] * alphas + betas).sum(axis=1)
        labels[task] = linear + waves + noise_std * rng.standard_normal(samples)
    return {"x": inputs.astype(np.float32), "a": labels["a"].astype(np.float32),
            "b": labels["b"].astype(np.float32), "w_a": weights_a, "w_b": weights_b}


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
         seed: int = 0) -> TaskData:
    """The MMoE synthetic tasks `a` and `b`; `root` is not used (the data is generated).

    >>> data = load({"correlation": 0.9, "dim": 16, "samples": 1000})  # doctest: +SKIP
    >>> data.train.inputs.shape, data.train.targets["a"].shape  # doctest: +SKIP
    (torch.Size([700, 16]), torch.Size([700, 1]))
    """
    test_fraction = options["test_fraction"]
    data = generate(options["samples"], options["dim"], options["correlation"], options["sin_terms"],
                    options["scale"], options["noise_std"], options["generator_seed"])
    parts = seeded_splits(options["samples"], test_fraction, val_split, seed)
    splits = {name: Split(torch.from_numpy(data["x"][rows]),
                          {task: torch.from_numpy(data[task][rows]).unsqueeze(1) for task in TASK_KINDS},
                          torch.from_numpy(rows.astype(np.int64)).unsqueeze(1))
              for name, rows in parts.items()}
    return TaskData("mmoe_synthetic", splits["train"], splits["val"], splits["test"],
                    input_shape=(options["dim"],), task_kinds=dict(TASK_KINDS),
                    task_classes={"a": None, "b": None})
