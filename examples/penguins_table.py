"""The built-in penguins data set through the generic `table` format, as a user's own CSV runs.

    .venv/bin/python examples/penguins_table.py [OUT]     # default runs/penguins-table

Writes OUT/penguins.csv (the packaged table without its incomplete rows) and OUT/spec.yaml (the
penguins example with `dataset: table`), then runs `dagir run` on them. The data the run trains on
is the built-in data set's, row for row (tests/test_user_data.py checks it).
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def write_table_example(out: Path) -> Path:
    """The CSV and the spec in `out`; returns the spec's path."""
    from dagir.datasets.penguins import FEATURES, TASKS, complete_rows, packaged_csv
    from dagir.datasets.table import read_table

    out.mkdir(parents=True, exist_ok=True)
    table = complete_rows(read_table(str(packaged_csv())))
    columns = FEATURES + list(TASKS)
    with open(out / "penguins.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*(table.columns[column] for column in columns)))
    spec = yaml.safe_load((HERE / "penguins.yaml").read_text())
    spec["name"] = "penguins-table"
    spec["data"] = {"dataset": "table", "root": str(out / "penguins.csv"), "batch_size": spec["data"]["batch_size"],
                    "options": {"regression": ["body_mass_g"]}}
    (out / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "spec.yaml"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/penguins-table")
    spec = write_table_example(out)
    sys.exit(subprocess.call([sys.executable, "-m", "dagir.cli", "run", str(spec), "-o", str(out / "run"), "--overwrite"]))
