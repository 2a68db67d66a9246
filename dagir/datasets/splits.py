"""What every loader returns, and the plumbing loaders share.

A loader returns a `TaskData`: three `Split`s (train, validation, test) plus what the rest of
dagir needs to know about the tasks (kind, number of classes, target scale). A split's inputs are an
in-memory tensor, or `MappedRows` over a memory-mapped array when the data may be larger than
memory: rows are then read from disk a batch at a time. Training iterates minibatches straight from
the split (`EpochBatches`, `Split.batches`) instead of going through a `DataLoader`, which would
cost a Python call per sample.

`partition` splits indices deterministically; a loader's options are declared and checked in
`dagir.datasets.options`, before the loader runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import UserError

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class MappedRows:
    """Rows `rows` of an array on disk (a read-only `numpy.memmap` [N, ...]), read only when a batch
    asks for them: the inputs of a split larger than memory. Indexing with a slice or index tensor
    returns those rows as a float32 tensor; `select` returns a lazy view of some rows.

    >>> rows = MappedRows(np.arange(12, dtype=np.float64).reshape(6, 2), np.array([5, 0, 3]))
    >>> len(rows), rows.shape, rows[torch.tensor([2, 0])].tolist(), len(rows.select(torch.tensor([1])))
    (3, (3, 2), [[6.0, 7.0], [10.0, 11.0]], 1)
    """

    device = torch.device("cpu")

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.array = array
        self.rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def select(self, rows: torch.Tensor | np.ndarray) -> "MappedRows":
        return MappedRows(self.array, self.rows[np.asarray(rows, dtype=np.int64)])

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor:
        wanted = self.rows[rows] if isinstance(rows, slice) else self.rows[rows.cpu().numpy()]
        if np.all(wanted[1:] >= wanted[:-1]):  # in file order (a whole split): read straight into one array
            return torch.from_numpy(np.asarray(self.array[wanted], dtype=np.float32))
        order = np.argsort(wanted, kind="stable")  # read the file in ascending order, then restore the batch's
        values = np.empty((len(wanted), *self.array.shape[1:]), dtype=np.float32)
        values[order] = self.array[wanted[order]]
        return torch.from_numpy(values)

    def to(self, device: torch.device | str) -> "MappedRows":
        """Stays on disk: each batch is moved to `device` as it is read."""
        return self


Inputs = torch.Tensor | MappedRows


@dataclass
class Split:
    """One split: `inputs` [N, *input_shape] float32 and one target tensor [N, ...] per task.

    `source_ids` [N, k] names the source examples each sample was built from (row indices into the
    loader's raw data), so tests can check that no source example appears in two splits.
    """

    inputs: Inputs
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
        inputs = (self.inputs.select(rows) if isinstance(self.inputs, MappedRows)
                  else self.inputs[rows.to(self.inputs.device)])
        return Split(inputs,
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
    return iter(EpochBatches(split, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last))


class EpochBatches(Sequence[Batch]):
    """One epoch's minibatches of `split`, cut when asked for (batch `i` is read when indexed, so an
    epoch of a split larger than memory is never held at once). The order is fixed when the epoch
    is made: a permutation from `generator` with `shuffle`, else the split's own order."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 shard: Callable[[Any], Any] | None = None) -> None:
        """`shard(rows)`: the part of each batch's rows this process takes (a run on several
        processes takes every `world size`-th row of the batch the 1-process run would take)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.split, self.batch_size, self.shard = split, batch_size, shard
        self.order = torch.randperm(len(split), generator=generator).to(split.inputs.device) if shuffle else None
        self.count = len(split) // batch_size if drop_last else -(-len(split) // batch_size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Batch:  # type: ignore[override]
        if not -self.count <= index < self.count:
            raise IndexError(f"batch {index} of {self.count}")
        start = (index % self.count) * self.batch_size
        rows: slice | torch.Tensor = (slice(start, start + self.batch_size) if self.order is None
                                      else self.order[start:start + self.batch_size])
        if self.shard is not None:
            if isinstance(rows, slice):
                rows = torch.arange(rows.start, min(rows.stop, len(self.split)))
            rows = self.shard(rows)
        return self.split.inputs[rows], {name: target[rows] for name, target in self.split.targets.items()}


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
