"""`dagir eval OUT`: rebuild a run's compact network from its files and check its test metrics.

The network is rebuilt from `compact.json` (the IR) and `compact.safetensors` (the weights): no code
or pickle from the folder is loaded.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import UserError


def run_folder_spec(out: Path):
    """The spec of the finished run in `out`; `UserError` when `out` is not one."""
    from .run_folder import unfinished
    from .spec import load_spec

    for name in ("spec.resolved.yaml", "metrics.json", "compact.json", "compact.safetensors"):
        if not (Path(out) / name).is_file():
            raise UserError(f"{out}: not a finished dagir run (missing {name}){unfinished(out)}")
    return load_spec(Path(out) / "spec.resolved.yaml")


def evaluate_run_folder(out: Path) -> dict[str, Any]:
    from dagir.backends.torch_export import load_compact

    from .datasets import load_spec_data
    from .training.loop import evaluate
    from .training.precision import Precision

    out = Path(out)
    spec = run_folder_spec(out)
    try:
        saved = json.loads((out / "metrics.json").read_text())["test"]
        if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
            raise TypeError("test metrics are not a mapping of tasks to metrics")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{out / 'metrics.json'}: not a dagir metrics file") from None
    precision = Precision(spec.train.precision, "cpu")  # the run's weights' dtype and autocast, as it evaluated
    module, _ = load_compact(out, dtype=precision.dtype)
    data = load_spec_data(spec)
    test = evaluate(module, data.test, spec.tasks, data, dtype=precision.dtype, precision=precision)
    differences = [abs(test[t][m] - saved.get(t, {}).get(m, math.nan)) for t in test for m in test[t]]
    largest = max((d for d in differences if not math.isnan(d)), default=0.0)
    matches = all(not math.isnan(d) for d in differences) and largest <= 1e-6
    return {"test": test, "saved": saved, "matches": matches, "largest_difference": largest}
