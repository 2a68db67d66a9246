"""Checkpoints: what a run needs to continue exactly where it stopped.

A checkpoint is one file written with `torch.save` and read back with `torch.load(weights_only=True)`
(tensors, numbers, strings, lists and dicts only: loading never runs code from the file). It holds
the model and optimiser states, the position (stage, epoch, step within the epoch) and the history
of the curves. Files are replaced atomically, so an interrupted write never spoils the last good one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

FORMAT = "dagir-checkpoint-1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (plus a format tag) to `path` atomically; a failed write (a full disk, a
    read-only folder) is a `UserError` that leaves the previous checkpoint as it was."""
    temporary = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, **payload}, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        temporary.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written before"
        raise UserError(f"{path}: cannot write the checkpoint ({reason}); {kept}") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a `UserError`."""
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code in it, not a torch file at all
        raise UserError(f"{path}: not a readable dagir checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a dagir checkpoint (expected format {FORMAT!r})")
    return payload
