"""Data from a user's own code: `data.dataset: "package.module:function"`, or the name of an
installed entry point in the `dagir.datasets` group (`[project.entry-points."dagir.datasets"]`).

The function is called as `function(options, root, val_split, seed)` with the spec's
`data.options` (passed as they are: the plugin checks its own) and returns a `TaskData`
(`dagir.datasets.splits`). The spec is checked against what it returns (task kinds, class
counts, input shape) when the spec is loaded, so the plugin runs then (with val_split 0.1 and
seed 0), and again for the run's own split and seed; each result is cached within a process.
"""
from __future__ import annotations

import importlib
import json
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from ..errors import UserError

GROUP = "dagir.datasets"


def plugin_target(name: str) -> str | None:
    """`module:function` for a plugin name (written out, or an installed entry point), else None."""
    if ":" in name:
        return name
    for point in entry_points(group=GROUP):
        if point.name == name:
            return point.value
    return None


def _function(target: str) -> Callable[..., Any]:
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module: any failure on import is theirs to fix
        raise UserError(f"cannot import the data set's module {module_name!r} ({type(error).__name__}: {error})") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise UserError(f"module {module_name!r} has no function {function!r} returning the data")
    return found


@lru_cache(maxsize=4)
def _load(target: str, options_json: str, root: str | None, val_split: float, seed: int):
    from .splits import TaskData
    try:
        data = _function(target)(json.loads(options_json), root, val_split, seed)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"data set {target!r} failed: {type(error).__name__}: {error}") from None
    if not isinstance(data, TaskData):
        raise UserError(f"data set {target!r} returned {type(data).__name__}, not a dagir TaskData")
    return data


def load(options: Mapping[str, Any], root: str | None, val_split: float = 0.1, seed: int = 0, *, target: str):
    return _load(target, json.dumps(dict(options), sort_keys=True, default=str), root, val_split, seed)


def tasks_for(options: Mapping[str, Any], root: str | None, *, target: str) -> tuple[dict[str, str], dict[str, int]]:
    data = load(options, root, target=target)
    return dict(data.task_kinds), {task: n for task, n in data.task_classes.items() if n is not None}


def shape_for(options: Mapping[str, Any], root: str | None, *, target: str) -> tuple[int, ...]:
    return tuple(load(options, root, target=target).input_shape)
