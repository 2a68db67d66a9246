"""Reading IR dumps given by users, with clear errors for anything that is not one."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError, VerificationError
from .ir import IR
from .verify import verify


def read_ir(path: str | Path, *, check: bool = True) -> IR:
    """Load an IR JSON dump; with `check`, also verify it. Bad files raise `UserError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    try:
        ir = IR.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise UserError(f"{path}: not a dagir IR dump ({detail})") from None
    if check:
        try:
            verify(ir)
        except VerificationError as err:
            raise UserError(f"{path}: {err}") from None
    return ir
