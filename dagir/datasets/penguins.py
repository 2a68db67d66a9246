"""Palmer penguins (Gorman, Williams & Fraser 2014): 344 penguins of three species on three islands
of the Palmer Archipelago, as the `palmerpenguins` package ships them (a CSV inside it; nothing is
downloaded, and pandas is not imported: the CSV is read as the `table` data set reads a user's).

Real measurements with three related tasks: `species` (3 classes), `sex` (2) and `body_mass_g`
(regression, reported in grams), from the island (one-hot) and the bill length, bill depth and
flipper length (standardised on the training split). The 11 rows with a missing value are
dropped, leaving 333. The splits are drawn with the run's seed (`test_fraction`, `data.val_split`).
The same file runs through the generic `table` format too: `examples/penguins_table.py` writes it
out and runs it that way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .splits import TaskData
from .table import MISSING, Table, build, packaged_file, read_table

FEATURES = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm"]
TASKS = {"species": "classification", "sex": "classification", "body_mass_g": "regression"}


def packaged_csv() -> Path:
    return packaged_file("palmerpenguins", "data/penguins.csv", "penguins")


def complete_rows(table: Table) -> Table:
    """The table without the rows that miss a value in a feature or task column."""
    used = FEATURES + list(TASKS)
    keep = [row for row in range(len(table.columns[used[0]]))
            if all(table.columns[column][row].lower() not in MISSING for column in used)]
    return Table(table.path, table.header, {name: [values[row] for row in keep] for name, values in table.columns.items()})


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1, seed: int = 0) -> TaskData:
    table = complete_rows(read_table(str(packaged_csv())))
    return build(table, {**options, "features": FEATURES, "regression": ["body_mass_g"]}, val_split, seed,
                 tuple(TASKS), name="penguins")
