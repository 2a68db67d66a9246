"""A run folder, as `dagir run` and `dagir bench` both use it: atomic writes, and the checks made
before a run starts in OUT (is it this spec's run; would a new run clobber one)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .spec import Spec


def write_text(path: Path, text: str) -> None:
    """Replace `path` atomically, so an interrupted run never leaves half a file; a failed write is
    a `UserError` that leaves the previous file as it was."""
    temporary = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({err.strerror or err})") from None


def same_run_spec(resolved_file: Path, spec: Spec) -> bool:
    """Whether the resolved spec a run folder recorded describes the same run as `spec`.

    The `bench` section is left out: it says how many seeds and methods a bench runs, not how one
    run trains, so a bench given more seeds can take up the runs it already finished.
    """
    def run_part(resolved: Any) -> Any:
        return {k: v for k, v in resolved.items() if k != "bench"} if isinstance(resolved, dict) else resolved
    return run_part(yaml.safe_load(resolved_file.read_text())) == run_part(spec.resolved_dict())


def prepare_run_folder(spec: Spec, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check OUT before a run starts: a folder (or nothing yet); a resumed run must be this spec's;
    a new one must not clobber."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: exists and is not a folder; give -o a folder for the run")
    checkpoint = Path(out) / "checkpoints" / "latest.pt"
    if resume:
        resolved = Path(out) / "spec.resolved.yaml"
        if not resolved.is_file():
            raise UserError(f"{out}: not a dagir run folder (no spec.resolved.yaml); nothing to resume")
        if not same_run_spec(resolved, spec):
            raise UserError(f"{out}: the run there was started from a different spec; resume it with the "
                            f"same spec and --set options")
    elif overwrite:  # a fresh run: no checkpoint to resume from, no finished result left from before
        checkpoint.unlink(missing_ok=True)
        (Path(out) / "metrics.json").unlink(missing_ok=True)
