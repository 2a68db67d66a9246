"""Passes, their registry, pipeline text, and the pass manager that runs them.

A pass is a frozen pydantic model with a kebab-case `name`, typed fields that double as its options
(`flow-restrict{max_span=3}`), and `run(ir) -> ir`, which never mutates its input. A pass's options
come from the pipeline text, over defaults given per pass name (`dagir.pipeline.spec_options`
says what a spec sets). The pass manager
runs a pipeline, verifies the IR after every pass, times each pass and reports each result to a
callback (the CLI writes the dumps from there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError, VerificationError
from .ir import IR
from .verify import verify


class Pass(BaseModel):
    """Base of every pass. Subclasses set `name` and implement `run`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = ""
    builds: ClassVar[bool] = False  # a build pass makes the graph from the seed IR

    def run(self, ir: IR) -> IR:
        raise NotImplementedError

    def __str__(self) -> str:
        options = ", ".join(f"{k}={_format_value(v)}" for k, v in self.model_dump().items())
        return f"{self.name}{{{options}}}" if options else self.name


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its name in pipelines."""
    assert cls.name and cls.name not in PASSES, f"pass name {cls.name!r} missing or taken"
    PASSES[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    import dagir.passes  # noqa: F401  (registers every pass)
    return dict(sorted(PASSES.items()))


class PipelineError(UserError):
    """A pipeline written by the user is malformed: unknown pass, bad option, builds nothing."""


Options = Mapping[str, Mapping[str, Any]]
"""Option values per pass name, for those the pipeline text does not give."""


def pass_name(text: str) -> str:
    """The pass an entry of pipeline text names: `flow-reduce` of `flow-reduce{enabled=false}`."""
    return text.strip().partition("{")[0].strip()


def names_pass(entries: Sequence[Any], name: str) -> bool:
    """Whether pipeline text `entries` has a pass `name` (with any options)."""
    return any(pass_name(str(entry)) == name for entry in entries)


def parse_pass(text: str, options: Options | None = None) -> Pass:
    """Parse `name{key=value, ...}` into a pass; options absent from the text come from `options`.

    >>> str(parse_pass("flow-restrict{max_span=3}"))
    'flow-restrict{max_span=3}'
    """
    passes = registered_passes()
    text = text.strip()
    name = pass_name(text)
    _, brace, rest = text.partition("{")
    if name not in passes:
        raise PipelineError(f"unknown pass {name!r} (known: {', '.join(passes)})")
    given: dict[str, Any] = {}
    if brace:
        if not rest.endswith("}"):
            raise PipelineError(f"pass {text!r}: options must end with '}}'")
        for item in _split_options(rest[:-1]):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise PipelineError(f"pass {name!r}: option {item!r} is not key=value")
            try:
                given[key.strip()] = _read_value(raw)
            except yaml.YAMLError:
                raise PipelineError(f"pass {name!r}: cannot read value of {key.strip()!r}: {raw!r}") from None
    cls = passes[name]
    values = {**(options or {}).get(name, {}), **given}
    try:
        return cls(**values)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise PipelineError(f"pass {name!r}: option {field!r}: {message}" if field else f"pass {name!r}: {message}") from None


def _read_value(raw: str) -> Any:
    """An option value: YAML, with `none` (as `str(pass)` prints it) meaning null."""
    raw = raw.strip()
    return None if raw.lower() in ("", "none") else yaml.safe_load(raw)


def _split_options(body: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, current = [], 0, ""
    for char in body:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current)
    return [i.strip() for i in items if i.strip()]


def parse_pipeline(entries: Sequence[str], options: Options | None = None, *,
                   needs_build: bool = True) -> list[Pass]:
    """The passes of a pipeline written as text, one entry per pass (see `parse_pass`)."""
    if not entries:
        raise PipelineError("the pipeline is empty")
    pipeline = [parse_pass(entry, options) for entry in entries]
    builders = [p.name for p in pipeline if p.builds]
    if len(builders) > 1 or (builders and not pipeline[0].builds):
        raise PipelineError(f"a pipeline builds once, with its first pass; this one builds with "
                            f"{', '.join(builders)}")
    if needs_build and not pipeline[0].builds:
        builders = [n for n, c in registered_passes().items() if c.builds]
        raise PipelineError(f"the pipeline builds nothing: its first pass must be a build pass "
                            f"({', '.join(builders)}), not {pipeline[0].name!r}")
    return pipeline


@dataclass
class PassResult:
    index: int
    pass_: Pass
    ir: IR
    seconds: float


PassCallback = Callable[[PassResult], None]


class PassManager:
    """Runs passes in order; verifies after each one (unless `verify_each=False`) and times it."""

    def __init__(self, passes: Sequence[Pass], *, verify_each: bool = True,
                 on_pass: PassCallback | None = None) -> None:
        self.passes, self.verify_each, self.on_pass = list(passes), verify_each, on_pass
        self.timings: list[tuple[str, float]] = []

    def run(self, ir: IR) -> IR:
        for index, pass_ in enumerate(self.passes, start=1):
            start = time.perf_counter()
            result = pass_.run(ir)
            if result is ir:
                raise RuntimeError(f"pass {pass_.name!r} returned its input; passes must return a new IR")
            result.provenance.append(str(pass_))
            seconds = time.perf_counter() - start
            if self.verify_each:
                try:
                    verify(result)
                except VerificationError as err:
                    raise err.blame(pass_.name) from None
            self.timings.append((pass_.name, seconds))
            if self.on_pass is not None:
                self.on_pass(PassResult(index, pass_, result, seconds))
            ir = result
        return ir
