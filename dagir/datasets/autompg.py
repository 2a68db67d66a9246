"""Auto MPG (Quinlan 1993, UCI): 392 cars of the model years 1970-1982, as mlxtend ships the table
(a gzipped CSV inside the package, the 6 cars without horsepower already left out; nothing is
downloaded).

Real measurements with three tasks of mixed relatedness, from the cylinders, displacement,
horsepower, weight and acceleration (standardised on the training split):
- `mpg`: fuel consumption in miles per gallon (regression, reported in mpg), which the engine and
  the weight largely set;
- `origin`: where the car was built, USA, Europe or Japan (3 classes), which the size tells apart
  for American cars and hardly at all between European and Japanese ones;
- `model_year`: 70-82 (regression, reported in years), which shows through the lighter and more
  frugal cars of the later years.
The splits are drawn with the run's seed (`test_fraction`, `data.val_split`).
"""
from __future__ import annotations

import csv
import gzip
from typing import Any, Mapping

from .splits import TaskData
from .table import Table, build, packaged_file

# The file has no header; its columns, in order (the name is not used).
COLUMNS = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year", "origin", "name", "mpg"]
FEATURES = ["cylinders", "displacement", "horsepower", "weight", "acceleration"]
TASKS = ("mpg", "origin", "model_year")  # their kinds and classes: the registry, dagir/datasets/__init__.py
ORIGINS = {"1": "usa", "2": "europe", "3": "japan"}


def read_cars() -> Table:
    path = packaged_file("mlxtend", "data/data/autompg.csv.gz", "autompg")
    with gzip.open(path, "rt", newline="") as handle:
        rows = [[value.strip() for value in row] for row in csv.reader(handle) if row]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
    columns["origin"] = [ORIGINS[value] for value in columns["origin"]]
    return Table(path, COLUMNS, columns)


def load(options: Mapping[str, Any], root: str | None = None, val_split: float = 0.1, seed: int = 0) -> TaskData:
    return build(read_cars(), {**options, "features": FEATURES, "regression": ["mpg", "model_year"]}, val_split, seed,
                 TASKS, name="autompg")
