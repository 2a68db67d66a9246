"""What every loader returns, and the plumbing loaders share.

A loader returns a `TaskData`: three `Split`s (train, validation, test) held as in-memory tensors,
plus what the rest of dagir needs to know about the tasks (kind, number of classes, target scale).
The data sets here are small, so training iterates minibatches straight from the tensors
(`Split.batches`) instead of going through a `DataLoader`, which would cost a Python call per sample.

`partition` splits indices deterministically; a loader's options are declared and checked in
`dagir.datasets.options`, before the loader runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch

from ..errors import UserError

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class Split:
    """One split: `inputs` [N, *input_shape] float32 and one target tensor [N, ...] per task.

    `source_ids` [N, k] names the source examples each sample was built from (row indices into the
    loader's raw data), so tests can check that no source example appears in two splits.
    """

    inputs: torch.Tensor
    targets: dict[str, torch.Tensor]
    source_ids: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {len(self.inputs), len(self.source_ids), *(len(t) for t in self.targets.values())}
        if len(sizes) != 1:
            raise ValueError(f"a split's inputs, targets and source ids differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """Minibatches `(inputs, {task: target})`, see `iterate_batches`."""
        return iterate_batches(self, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)

    def subset(self, rows: torch.Tensor | np.ndarray) -> "Split":
        """The samples at `rows`, in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Split(self.inputs[rows.to(self.inputs.device)],
                     {name: t[rows.to(t.device)] for name, t in self.targets.items()}, self.source_ids[rows])

    def hold_out(self, fraction: float, seed: int) -> tuple["Split", "Split"]:
        """`(rest, held)`: a seeded `fraction` of the samples held out, disjoint from the rest
        (MTL-NAS's two search splits: weights train on the rest, the architecture on the held part).

        >>> rest, held = Split(torch.zeros(10, 1), {"t": torch.arange(10)}, torch.arange(10)[:, None]).hold_out(0.3, 0)
        >>> len(rest), len(held), set(rest.targets["t"].tolist()) & set(held.targets["t"].tolist())
        (7, 3, set())
        """
        parts = partition(len(self), {"held": fraction, "rest": 1.0 - fraction}, seed)
        if not len(parts["held"]) or not len(parts["rest"]):
            raise UserError(f"holding out {fraction} of {len(self)} training samples leaves one side empty")
        return self.subset(parts["rest"]), self.subset(parts["held"])

    def to(self, device: torch.device | str) -> "Split":
        """The same split on `device` (move it once, then batch on the device)."""
        return Split(self.inputs.to(device), {name: t.to(device) for name, t in self.targets.items()},
                     self.source_ids)


@dataclass
class TaskData:
    """A loaded data set: its splits and what each task's targets are.

    `target_scales[task]` and `target_offsets[task]` convert a regression target back to its
    natural unit: the loader stored `(raw - offset) / scale`, so `target * scale + offset` is the raw
    value and an error on the stored target times the scale is the error in natural units (pass the
    scale to `task_metrics(..., scale=...)`). Tasks without an entry have scale 1 and offset 0.
    """

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    task_kinds: dict[str, str]
    task_classes: dict[str, int | None]
    target_scales: dict[str, float] = field(default_factory=dict)
    target_offsets: dict[str, float] = field(default_factory=dict)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def scale(self, task: str) -> float:
        return self.target_scales.get(task, 1.0)


def iterate_batches(split: Split, batch_size: int, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
    """Yield `(inputs, {task: target})` minibatches of `split`, by slicing its tensors.

    With `shuffle`, the order is a permutation drawn from `generator` (pass a seeded one for
    reproducible epochs); the permutation is drawn on the CPU and moved to the split's device.

    >>> split = Split(torch.zeros(5, 2), {"t": torch.arange(5)}, torch.arange(5)[:, None])
    >>> [len(x) for x, _ in iterate_batches(split, 2)]
    [2, 2, 1]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    count = len(split)
    order = torch.randperm(count, generator=generator) if shuffle else None
    if order is not None:
        order = order.to(split.inputs.device)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        if order is None:
            rows: slice | torch.Tensor = slice(start, start + batch_size)
        else:
            rows = order[start:start + batch_size]
        yield split.inputs[rows], {name: target[rows] for name, target in split.targets.items()}


# -- helpers for loaders --------------------------------------------------------------------------
def partition(count: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split `range(count)` at random into disjoint index sets of the given fractions.

    The last named part takes the remainder, so every index lands in exactly one part; the order
    within each part is sorted, which keeps the result independent of how parts are consumed.

    >>> parts = partition(10, {"test": 0.2, "val": 0.1, "train": 0.7}, seed=0)
    >>> [len(parts[name]) for name in ("train", "val", "test")]
    [7, 1, 2]
    """
    order = seeded_rng(seed).permutation(count)
    parts: dict[str, np.ndarray] = {}
    start = 0
    names = list(fractions)
    for index, name in enumerate(names):
        size = count - start if index == len(names) - 1 else int(round(fractions[name] * count))
        parts[name] = np.sort(order[start:start + size])
        start += size
    return parts


def seeded_splits(count: int, test_fraction: float, val_split: float, seed: int) -> dict[str, np.ndarray]:
    """The seeded test, validation and training rows of `count` samples (the training part takes the rest)."""
    return partition(count, {"test": test_fraction, "val": val_split, "train": 1.0 - test_fraction - val_split},
                     seed=seed)


def seeded_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator for `seed` (any integer, negative too); `stream` gives independent draws."""
    return np.random.default_rng([seed % 2**63, stream])
