"""`table`: a user's own CSV or Parquet table, no code: one row per sample, a column per task (named
after the task), the other columns (or those `options.features` lists) the inputs.

    data: {dataset: table, root: patients.csv}      # or patients.parquet (pip install 'dagir[parquet]')
    tasks: [{name: stay_days, kind: regression}, {name: outcome, kind: classification, classes: 3}]

A task column is classification when its values are text (classes in sorted order) or integers
0..K-1, regression when they are numbers with a fraction (list an integer column in
`options.regression` to regress on it). A feature column of numbers is standardised with the mean
and standard deviation of the training split only; a column of text is one-hot encoded over its
categories (the domain of the feature, from every row; no target is read for it).
The splits are drawn with the run's seed: `test_fraction` for test, `data.val_split` for
validation. The header and the task columns are read when the spec is loaded; a missing value,
a ragged row or a missing column is a `UserError` naming the file, the column and the line (the
row, for Parquet, which has no lines). A Parquet file is read with pyarrow, an optional extra, and
its cells go through the same text path as a CSV's, so both formats read alike.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import DataFieldError, UserError
from .splits import Split, TaskData, seeded_splits

MISSING = {"", "na", "nan", "null", "none", "?"}


@dataclass
class Table:
    """A CSV read as text: its header and each column's values (stripped). `table`, `images` (its
    labels) and `penguins` read theirs this way; numbers are parsed where a column is used."""

    path: Path
    header: list[str]
    columns: dict[str, list[str]]

    def where(self, row: int) -> str:
        """Where data row `row` is: `file:line` of a CSV (the header is line 1), `file, row N` of Parquet."""
        if self.path.suffix.lower() == ".parquet":
            return f"{self.path}, row {row}"
        return f"{self.path}:{row + 2}"


def packaged_file(package: str, relative: str, dataset: str) -> Path:
    """A data file that `package` ships inside it (nothing is downloaded), for built-in data set
    `dataset`; a `UserError` saying what to install if the package is missing."""
    from importlib import resources
    try:
        return Path(str(resources.files(package).joinpath(*relative.split("/"))))
    except ModuleNotFoundError:
        raise UserError(f"data set {dataset!r} needs the {package} package: pip install {package}") from None


def read_table(root: str | None) -> Table:
    if root is None:
        raise UserError("data set 'table' is read from disk: set data.root to a CSV or Parquet file")
    path = Path(root).expanduser()
    if not path.is_file():
        raise UserError(f"data.root: file {str(path)!r} for data set 'table' does not exist")
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark (Excel's) is not the first name
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: cannot read it as CSV ({error})") from None
    if len(rows) < 2:
        raise UserError(f"{path}: a table needs a header line and at least one row")
    header = [name.strip() for name in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(f"{path}:{number}: {len(row)} values, but the header names {len(header)} columns")
    return Table(path, header, {name: [row[i].strip() for row in rows[1:]] for i, name in enumerate(header)})


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'dagir[parquet]' "
                        "(or save the table as CSV)") from None
    try:
        read = parquet.read_table(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid, OSError and more for a bad file
        raise UserError(f"{path}: cannot read it as Parquet ({error})") from None
    if read.num_rows < 1:
        raise UserError(f"{path}: a table needs at least one row")
    columns = {name.strip(): ["" if value is None else str(value).strip() for value in read.column(name).to_pylist()]
               for name in read.column_names}
    return Table(path, list(columns), columns)


IDENTIFIER_ROWS = 20  # from this many rows, a text column with no value repeated is an identifier, not a feature
MOSTLY_NUMBERS = 0.9  # a column this much numbers is a column of numbers with a typo, not text


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _numbers(table: Table, column: str) -> np.ndarray | None:
    """The column as floats, or None when it holds text; a missing value is an error, and so is a
    cell that is not a number in a column of numbers (`1.2.3` would make the column text)."""
    values = table.columns[column]
    for row, value in enumerate(values):
        if value.lower() in MISSING:
            raise UserError(f"{table.where(row)}: column {column!r} has no value; fill or drop "
                            "missing values first")
    numbers = [_number(value) for value in values]
    if all(number is not None for number in numbers):
        return np.array(numbers, dtype=np.float64)
    text = [row for row, number in enumerate(numbers) if number is None]
    if len(text) <= (1 - MOSTLY_NUMBERS) * len(values):
        raise UserError(f"{table.where(text[0])}: column {column!r} holds numbers, but {values[text[0]]!r} is not "
                        f"one ({len(text)} such cell(s)); fix them, or drop those rows")
    return None


def _feature_columns(table: Table, options: Mapping[str, Any], tasks: tuple[str, ...]) -> list[str]:
    """The input columns: `options.features`, or every column that is not one of the spec's tasks."""
    features = options["features"]
    if features is None:
        return [name for name in table.header if name not in tasks]
    missing = [name for name in features if name not in table.columns]
    if missing:
        raise UserError(f"{table.path}: data.options.features names {missing[0]!r}, which is not a column "
                        f"(columns: {', '.join(table.header)})")
    targets = [name for name in features if name in tasks]
    if targets:
        raise UserError(f"{table.path}: data.options.features names {targets[0]!r}, the column of the task of that "
                        "name: a task's target cannot be an input too")
    return list(features)


def column_kind(table: Table, column: str, options: Mapping[str, Any]) -> tuple[str, list[str] | None, int | None]:
    """`(kind, labels, classes)` of a task column: text or integers are classification (text labels
    in sorted order), numbers with a fraction (or listed in `options.regression`) regression."""
    numbers = _numbers(table, column)
    if numbers is None:
        labels = sorted(set(table.columns[column]))
        return "classification", labels, len(labels)
    if not np.all(np.isfinite(numbers)):
        row = int(np.argmax(~np.isfinite(numbers)))
        raise UserError(f"{table.where(row)}: column {column!r} is not finite")
    if column in options["regression"] or not np.all(numbers == np.round(numbers)):
        return "regression", None, None
    if numbers.min() < 0:
        row = int(np.argmax(numbers < 0))
        raise UserError(f"{table.where(row)}: column {column!r} has label {int(numbers[row])}; integer "
                        "labels are 0..K-1 (or list the column in data.options.regression)")
    return "classification", None, int(numbers.max()) + 1


def tasks_for(options: Mapping[str, Any], root: str | None,
              tasks: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, int]]:
    """The spec's task columns (those the table has), their kinds and class counts."""
    table = read_table(root)
    absent = [column for column in tasks if column not in table.columns]
    if absent:
        raise DataFieldError(f"{table.path} has no column {absent[0]!r} (a task's targets are the column named after "
                             f"it; columns: {', '.join(table.header)})", ("tasks", tasks.index(absent[0]), "name"))
    kinds, classes = {}, {}
    for column in tasks:
        kinds[column], _, count = column_kind(table, column, options)
        if count is not None:
            classes[column] = count
    return kinds, classes


def encoded_features(table: Table, columns: list[str]) -> list[tuple[str, np.ndarray | None, list[str] | None]]:
    """Each feature column as `(name, numbers, None)` or, for text, `(name, None, categories)`."""
    if not columns:
        raise UserError(f"{table.path}: no feature columns left once the task columns are taken")
    encoded = []
    for column in columns:
        numbers = _numbers(table, column)
        if numbers is not None and not np.all(np.isfinite(numbers)):
            row = int(np.argmax(~np.isfinite(numbers)))
            raise UserError(f"{table.where(row)}: column {column!r} is not finite")
        categories = None if numbers is not None else sorted(set(table.columns[column]))
        rows = len(table.columns[column])
        if categories is not None and rows >= IDENTIFIER_ROWS and len(categories) == rows:
            raise UserError(f"{table.path}: column {column!r} holds a different text in every row (an identifier?), "
                            f"which would be {rows} one-hot inputs seen once each; leave it out of the inputs "
                            "(list the ones to use in data.options.features)")
        encoded.append((column, numbers, categories))
    return encoded


def shape_for(options: Mapping[str, Any], root: str | None, tasks: tuple[str, ...] = ()) -> tuple[int, ...]:
    """The input width: one per number column, one per category of a text column."""
    table = read_table(root)
    features = encoded_features(table, _feature_columns(table, options, tasks))
    return (sum(1 if categories is None else len(categories) for _, _, categories in features),)


def load(options: Mapping[str, Any], root: str | None, val_split: float = 0.1, seed: int = 0,
         tasks: tuple[str, ...] = ()) -> TaskData:
    return build(read_table(root), options, val_split, seed, tasks)


def build(table: Table, options: Mapping[str, Any], val_split: float, seed: int, tasks: tuple[str, ...],
          name: str = "table") -> TaskData:
    """The `TaskData` of a read table: seeded splits, encoded features, the tasks' targets."""
    count = len(table.columns[table.header[0]])
    test = options["test_fraction"]
    parts = seeded_splits(count, test, val_split, seed)
    blocks = []
    for column, numbers, categories in encoded_features(table, _feature_columns(table, options, tasks)):
        if categories is None:  # standardised with the training split's statistics only
            mean, std = numbers[parts["train"]].mean(), numbers[parts["train"]].std()
            blocks.append(((numbers - mean) / (std if std > 0 else 1.0))[:, None])
        else:
            values = table.columns[column]
            blocks.append(np.array([[value == category for category in categories] for value in values], dtype=np.float64))
    inputs = torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))
    targets = task_targets(table, tasks, options, parts["train"])
    return split_task_data(name, inputs, targets, parts)


@dataclass
class Targets:
    """The tasks' targets of a table, with their kinds and classes; a regression target is stored
    standardised with the training split's mean (`offsets`) and deviation (`scales`), and the
    metrics convert it back (`TaskData.target_scales`)."""

    values: dict[str, torch.Tensor]
    kinds: dict[str, str]
    classes: dict[str, int | None]
    scales: dict[str, float]
    offsets: dict[str, float]


def task_targets(table: Table, tasks: tuple[str, ...], options: Mapping[str, Any], train: np.ndarray) -> Targets:
    out = Targets({}, {}, {}, {}, {})
    for column in tasks:
        kind, labels, out.classes[column] = column_kind(table, column, options)
        out.kinds[column] = kind
        if kind == "regression":
            numbers = _numbers(table, column)
            mean, std = float(numbers[train].mean()), float(numbers[train].std()) or 1.0
            out.values[column] = torch.tensor((numbers - mean) / std, dtype=torch.float32)[:, None]
            out.scales[column], out.offsets[column] = std, mean
        elif labels is not None:
            index = {label: i for i, label in enumerate(labels)}
            out.values[column] = torch.tensor([index[value] for value in table.columns[column]], dtype=torch.long)
        else:
            out.values[column] = torch.tensor(_numbers(table, column), dtype=torch.long)
    return out


def split_task_data(name: str, inputs: torch.Tensor, targets: Targets, parts: dict[str, np.ndarray]) -> TaskData:
    splits = {part: Split(inputs[torch.as_tensor(rows)], {t: v[torch.as_tensor(rows)] for t, v in targets.values.items()},
                          torch.as_tensor(rows)[:, None]) for part, rows in parts.items()}
    return TaskData(name, splits["train"], splits["val"], splits["test"], input_shape=tuple(inputs.shape[1:]),
                    task_kinds=targets.kinds, task_classes=targets.classes, target_scales=targets.scales,
                    target_offsets=targets.offsets)
