"""A run folder, as `dagir run` and `dagir bench` both use it: atomic writes, a lock so one command
at a time works in it, and the checks made before a run starts in OUT (is it this spec's run; would
a new run clobber one)."""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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

    The recorded spec is read through today's spec model first, so a field added since (with its
    default) does not make an old run folder look like another spec's. The `bench` section is left
    out: it says how many seeds and methods a bench runs, not how one run trains, so a bench given
    more seeds can take up the runs it already finished.
    """
    from pydantic import ValidationError

    def run_part(resolved: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resolved.items() if k != "bench"}

    recorded = yaml.safe_load(resolved_file.read_text())
    if not isinstance(recorded, dict):
        return False
    try:
        recorded = Spec.model_validate(recorded).resolved_dict()
    except ValidationError:
        return False
    return run_part(recorded) == run_part(spec.resolved_dict())


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


LOCK_FILE = ".dagir.lock"


@contextmanager
def locked_folder(out: Path, command: str) -> Iterator[None]:
    """Hold OUT for one command: a second `dagir run` (or bench, or compile) into the same folder
    refuses at once, naming the first. The lock is an advisory `flock` on `OUT/.dagir.lock`, which
    the operating system releases when its process ends, however it ends: a killed run leaves no
    stale lock behind (the file stays, saying who held it last)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give -o a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")
    except OSError as err:
        raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another dagir command"
            raise UserError(f"{out}: in use by {holder}; wait for it to finish, or use another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"dagir {command} (pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holds_a_run(out: Path) -> bool:
    """Whether OUT holds a `dagir run` (started or finished)."""
    return (Path(out) / "checkpoints" / "latest.pt").is_file() or (Path(out) / "metrics.json").is_file()
