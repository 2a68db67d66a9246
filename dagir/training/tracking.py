"""MLflow tracking for a run (`dagir run ... --mlflow URI`), for teams whose runs live in MLflow.

What TensorBoard gets (`dagir.training.board`), MLflow gets too, through the same calls: the
resolved spec as parameters (flattened, `train.search.lr`), every scalar of an epoch's history row
as metrics at that epoch, the test metrics, the drawings as artifacts (the pass drawings under
`passes/`, the gate heatmaps and curves under `run/`), texts (the compact architecture, the spec)
as text artifacts, and at the end the run's `metrics.json` and `compact.json`. The MLflow run id is
kept in `OUT/mlflow.json`, so `--resume` goes on logging into the same MLflow run.

Needs `mlflow` or `mlflow-skinny` (`pip install 'dagir[mlflow]'`). The tracking URI is MLflow's
own: a server (`http://host:5000`), a database (`sqlite:///mlflow.db`, with the full `mlflow`
package), or a folder (`file:./mlruns`, which MLflow 3 accepts only with `MLFLOW_ALLOW_FILE_STORE=true`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import UserError


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": "0.1"}` (MLflow parameters are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]  # MLflow's limit on a parameter's value
    return flat


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking server answers within `timeout` seconds, or a `UserError` says so at once
    (MLflow's own client retries an unreachable server for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # a server answered, whatever it said
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"--mlflow {uri}: no tracking server answers there ({reason})") from None


class MlflowBoard:
    """One dagir run as one MLflow run (resumed by the id in `OUT/mlflow.json`)."""

    def __init__(self, uri: str, out: Path, spec_values: Mapping[str, Any], name: str, *, resume: bool) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError("--mlflow needs MLflow: pip install 'dagir[mlflow]'") from None
        self.mlflow, self.record = mlflow, Path(out) / "mlflow.json"
        try:
            mlflow.set_tracking_uri(uri)
            previous = json.loads(self.record.read_text()) if resume and self.record.is_file() else None
            if previous is not None and previous.get("uri") == uri:
                self.run = mlflow.start_run(run_id=previous["run_id"])
            else:
                mlflow.set_experiment(name)
                self.run = mlflow.start_run(run_name=Path(out).name)
                mlflow.log_params(flatten(spec_values))
        except mlflow.exceptions.MlflowException as error:
            raise UserError(f"--mlflow {uri}: {str(error).strip().splitlines()[0]}") from None
        self.record.write_text(json.dumps({"uri": uri, "run_id": self.run.info.run_id, "experiment": name}))

    def epoch(self, row: dict[str, Any], step: int, optimizers: Sequence[torch.optim.Optimizer],
              model: torch.nn.Module) -> None:
        from .board import epoch_scalars
        self.mlflow.log_metrics(epoch_scalars(row, optimizers, model), step=step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.mlflow.log_metric(tag, float(value), step=step)

    def image(self, tag: str, path: Path, step: int = 0) -> None:
        if Path(path).is_file():
            self.mlflow.log_artifact(str(path), artifact_path=str(Path(tag).parent))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.mlflow.log_text(text, f"{tag}.txt")

    def artifact(self, path: Path) -> None:
        if Path(path).is_file():
            self.mlflow.log_artifact(str(path))

    def close(self, failed: bool = False) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
