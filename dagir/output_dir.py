"""Writing a command's results into OUT all at once, or not at all.

Everything is first written into a staging folder beside OUT; only when the command succeeds are its
entries moved into OUT (replacing entries of the same name). On any error the staging folder is
deleted, so OUT never holds a half-written result and nothing already there is lost.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextmanager
def staged_output(out: str | Path, *, replace: bool = False, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder; on success its contents land in `out`. With `replace`, whatever else `out`
    held goes then (but the entries named in `keep`), so it holds this command's results alone."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output path exists and is not a folder")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=parent))
    except OSError as err:
        raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
    try:
        yield staging
        _publish(staging, out, replace=replace, keep=keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out: Path, *, replace: bool, keep: tuple[str, ...]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        staged = {entry.name for entry in staging.iterdir()}
        for entry in sorted(out.iterdir()) if replace else ():
            if entry.name not in staged and entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    except OSError as err:
        raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
