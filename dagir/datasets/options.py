"""Data set options: what each loader accepts, checked before any data is read (no torch here).

The registry (`dagir.datasets`) declares each data set's `Option`s; `read_options` checks a spec's
`data.options` against them and fills in the defaults, so `load_spec` rejects a bad option, or
validation and test fractions that leave no training data, before any work starts. A failure is a
`DataOptionError`, which carries the spec field it is about so the spec can locate it.

    >>> read_options("toy", {"size": 3}, {"size": Option(8, int, at_least(1)), "test_fraction": Option(0.2, float)})
    {'size': 3, 'test_fraction': 0.2}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import UserError


class DataOptionError(UserError):
    """A bad data option or split fraction; `field` is its spec path, such as ("data", "options", "canvas")."""

    def __init__(self, dataset: str, field: tuple[str, ...], message: str) -> None:
        self.dataset, self.field, self.message = dataset, field, message
        super().__init__(f"{'.'.join(field)} (data set '{dataset}'): {message}")


@dataclass(frozen=True)
class Option:
    """A loader option: its default, its type, and a check returning an error text or None."""

    default: Any
    kind: type
    check: Callable[[Any], str | None] = lambda value: None


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be >= {low}"


def between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def check_size(value: Any) -> str | None:
    """`resize` is null or [height, width] of positive integers."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in value):
        return "must be [height, width] with positive integers, or null for the native size"
    return None


def check_limit(value: Any) -> str | None:
    """`limit` is null (every sample) or a positive integer."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return "must be a positive integer, or null for every sample"


def read_options(dataset: str, options: Mapping[str, Any] | None,
                 known: Mapping[str, Option]) -> dict[str, Any]:
    """Check `options` against a data set's `known` options and fill in the defaults.

    Raises `DataOptionError` naming the option for an unknown key, a value of the wrong type, or a
    value out of range.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(known), key=str)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        shown = ", ".join(repr(name)[:60] for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataOptionError(dataset, ("data", "options", str(unknown[0])[:60]),
                              f"unknown option(s) {shown} (its options: {listed})")
    return {name: _coerce(dataset, name, options.get(name, option.default), option)
            for name, option in known.items()}


def _coerce(dataset: str, name: str, value: Any, option: Option) -> Any:
    where = ("data", "options", name)
    shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:60]}…"
    if option.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataOptionError(dataset, where, f"must be an integer (got {shown})")
    elif option.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
            raise DataOptionError(dataset, where, f"must be a finite number (got {shown})")
        value = float(value)
    elif not isinstance(value, option.kind):
        raise DataOptionError(dataset, where, f"must be of type {option.kind.__name__} (got {shown})")
    problem = option.check(value)
    if problem:
        raise DataOptionError(dataset, where, f"{problem} (got {shown})")
    return value


def check_split_fractions(dataset: str, val_split: float, test_fraction: float) -> None:
    """The validation and test fractions must leave a training set."""
    if not 0 < val_split < 1:
        raise DataOptionError(dataset, ("data", "val_split"), f"must be between 0 and 1 (got {val_split!r})")
    if val_split + test_fraction >= 1:
        raise DataOptionError(dataset, ("data", "val_split"),
                              f"val_split ({val_split}) plus data.options.test_fraction ({test_fraction}) "
                              "leave no training data; their sum must be < 1")
