"""Errors dagir reports to its users.

`UserError` and its subclasses are bad input: the command line prints their message and exits
with status 2, without a traceback. Anything else escaping the CLI is an internal error (exit 1).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a spec, a file, a flag. Printed as is, exit code 2."""


class SpecError(UserError):
    """A problem in a spec, located by file, line, column and field path.

    >>> str(SpecError("must be >= 1 (got 0)", file="spec.yaml", line=14, column=5, field="network.central.nodes"))
    'spec.yaml:14:5: network.central.nodes: must be >= 1 (got 0)'
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, field: str | None = None) -> None:
        self.message, self.file, self.line, self.column, self.field = message, file, line, column, field
        where = ":".join(str(part) for part in (file, line, column) if part is not None)
        prefix = f"{where}: " if where else ""
        subject = f"{field}: " if field else ""
        super().__init__(f"{prefix}{subject}{message}")


class DataFieldError(UserError):
    """Data on disk that do not fit one field of the spec (`field`, its path: `("tasks", 1, "name")`);
    the spec's checks point the error at that field rather than at `data.root`."""

    def __init__(self, message: str, field: tuple) -> None:
        super().__init__(message)
        self.field = field


class VerificationError(Exception):
    """The IR broke one of the verifier's invariants; names the pass, the invariant and the nodes.

    This is a bug in a pass (exit code 1), unless the pipeline came from the user's spec, in which
    case the command line reports it as bad input.
    """

    def __init__(self, invariant: str, message: str, *, pass_name: str | None = None,
                 offending: list[str] | None = None) -> None:
        self.invariant, self.pass_name = invariant, pass_name
        self.offending = list(offending or [])
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        after = f"after pass '{self.pass_name}'" if self.pass_name else "in the input IR"
        shown = ", ".join(self.offending[:10]) + (" ..." if len(self.offending) > 10 else "")
        nodes = f" [offending: {shown}]" if self.offending else ""
        return f"IR verification failed {after}: invariant '{self.invariant}': {self.detail}{nodes}"

    def blame(self, pass_name: str) -> "VerificationError":
        """Return the same error attributed to `pass_name`."""
        return VerificationError(self.invariant, self.detail, pass_name=pass_name, offending=self.offending)
