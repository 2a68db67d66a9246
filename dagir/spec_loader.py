"""Reading a YAML spec safely, remembering where every value came from.

PyYAML composes the document into nodes (which carry line and column); we build plain Python values
from them ourselves, accepting only the standard tags, so no YAML tag can construct an object.
`locations` maps every field path (a tuple of keys and list indices) to its 1-based line and column.

A spec is bounded before it is built: its size in bytes, its nesting depth, and the number of
values it expands to (aliases re-use a node, so a few lines can stand for billions of values).
Each bound is an environment variable a user can raise knowingly (`DAGIR_MAX_SPEC_BYTES`,
`DAGIR_MAX_SPEC_DEPTH`, `DAGIR_MAX_SPEC_VALUES`); the error names the one that was hit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

LIMITS = {"DAGIR_MAX_SPEC_BYTES": 1_000_000, "DAGIR_MAX_SPEC_DEPTH": 32, "DAGIR_MAX_SPEC_VALUES": 100_000}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's composer, when PyYAML has it


def limit(name: str) -> int:
    """A bound on specs: the environment's value of `name`, else the default in `LIMITS`."""
    raw = os.environ.get(name)
    if raw is None:
        return LIMITS[name]
    try:
        return int(raw)
    except ValueError:
        raise SpecError(f"{name}={raw!r} is not a whole number") from None

Location = tuple[int, int]
FieldPath = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}


def read_yaml(text: str, file: str) -> tuple[Any, dict[FieldPath, Location]]:
    """Parse `text`; return the plain value and the location of every field path."""
    _check_depth(text, file)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError(f"malformed YAML: {err.problem or err}", file=file, line=line,
                        column=column) from None
    except yaml.YAMLError as err:
        raise SpecError(f"malformed YAML: {err}", file=file) from None
    locations: dict[FieldPath, Location] = {}
    if root is None:
        return None, locations
    budget = [limit("DAGIR_MAX_SPEC_VALUES")]
    return _construct(root, (), locations, file, budget), locations


def _check_depth(text: str, file: str) -> None:
    """Refuse a document nested deeper than the bound, from the parser's events (no recursion)."""
    bound, depth = limit("DAGIR_MAX_SPEC_DEPTH"), 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > bound:
                    mark = event.start_mark
                    raise SpecError(f"the spec nests deeper than {bound} levels (DAGIR_MAX_SPEC_DEPTH)",
                                    file=file, line=mark.line + 1, column=mark.column + 1)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return  # composing reports malformed YAML, located


def _construct(node: yaml.Node, path: FieldPath, locations: dict[FieldPath, Location], file: str,
               budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _located(f"the spec expands to more than {limit('DAGIR_MAX_SPEC_VALUES'):,} values "
                       "(through YAML aliases?) (DAGIR_MAX_SPEC_VALUES)", node, path, file)
    locations[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        _check_tag(node, "tag:yaml.org,2002:map", path, file)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _located("YAML merge keys (<<) are not supported", key_node, path, file)
            key = _construct(key_node, path, {}, file, budget)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise _located(f"mapping keys must be strings (got {key!r})", key_node, path, file)
            key = str(key)
            if key in result:
                raise _located(f"duplicate key {key!r}", key_node, path, file)
            result[key] = _construct(value_node, path + (key,), locations, file, budget)
            # point a field at its key, where a reader looks for it
            locations[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        _check_tag(node, "tag:yaml.org,2002:seq", path, file)
        return [_construct(item, path + (i,), locations, file, budget) for i, item in enumerate(node.value)]
    if node.tag not in _SCALAR_TAGS:
        raise _located(f"YAML tag {node.tag!r} is not allowed in a spec", node, path, file)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as err:  # an integer of 10,000 digits, say
        raise _located(f"cannot read this value ({str(err).split(';')[0]})", node, path, file) from None
    finally:
        loader.dispose()


def _check_tag(node: yaml.Node, expected: str, path: FieldPath, file: str) -> None:
    if node.tag != expected:
        raise _located(f"YAML tag {node.tag!r} is not allowed in a spec", node, path, file)


def _located(message: str, node: yaml.Node, path: FieldPath, file: str) -> SpecError:
    return SpecError(message, file=file, line=node.start_mark.line + 1,
                     column=node.start_mark.column + 1, field=format_path(path) or None)


def format_path(path: FieldPath) -> str:
    return ".".join(str(p) for p in path)


def locate(path: FieldPath, locations: dict[FieldPath, Location]) -> Location | None:
    """The location of `path`, or of its nearest ancestor present in the file."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in locations:
            return locations[path[:cut]]
    return None


def read_spec_file(path: str | Path) -> tuple[Any, dict[FieldPath, Location], str]:
    """Read and parse a spec file; errors for a missing or unreadable file are `SpecError`s."""
    file = str(path)
    bound = limit("DAGIR_MAX_SPEC_BYTES")
    try:
        size = Path(path).stat().st_size
        if size > bound:
            raise SpecError(f"the spec is {size:,} bytes, more than {bound:,} (DAGIR_MAX_SPEC_BYTES)", file=file)
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", file=file) from None
    except IsADirectoryError:
        raise SpecError("is a folder, not a spec file", file=file) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec: {err}", file=file) from None
    data, locations = read_yaml(text, file)
    return data, locations, file


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set dotted.key=value` to `data` in place; the value is parsed as YAML."""
    where = f"--set {assignment}"
    if "=" not in assignment:
        raise SpecError("expected dotted.key=value", file=where)
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise SpecError(f"bad key {key!r}", file=where)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:  # one line: what YAML found wrong, and where in the value
        mark = getattr(err, "problem_mark", None)
        at = f" at column {mark.column + 1} of {raw!r}" if mark is not None else ""
        raise SpecError(f"bad value: {getattr(err, 'problem', None) or 'not YAML'}{at}", file=where) from None
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        target = _step(target, part, create=True, where=where, prefix=parts[:depth + 1])
    last = parts[-1]
    if isinstance(target, list):
        index = _index(last, target, where, parts)
        target[index] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise SpecError(f"{'.'.join(parts[:-1])} is not a section", file=where)


def _step(target: Any, part: str, *, create: bool, where: str, prefix: list[str]) -> Any:
    if isinstance(target, list):
        return target[_index(part, target, where, prefix)]
    if not isinstance(target, dict):
        raise SpecError(f"{'.'.join(prefix[:-1])} is not a section", file=where)
    if target.get(part) is None and create:
        target[part] = {}
    return target[part]


def _index(part: str, target: list, where: str, prefix: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(target) <= int(part) < len(target):
        raise SpecError(f"{'.'.join(prefix)}: no list item {part!r} (the list has {len(target)})",
                        file=where)
    return int(part)
