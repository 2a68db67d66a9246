"""How fast a spec is read, checked and rejected (issue 13): every example, the largest spec the
default limits accept, a 5 MB spec (rejected by size before it is parsed, and, with the size limit
raised, by the parser and the value count), and an alias bomb.

    .venv/bin/python benchmarks/spec_load.py

Prints the milliseconds of each case's first load in this process (imports included for the first).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dagir.errors import UserError  # noqa: E402
from dagir.spec import load_spec  # noqa: E402
from dagir.spec_loader import LIMITS  # noqa: E402


def best_of(function, repeats: int = 3) -> tuple[float, str]:
    """The first call's seconds (what a command pays) and the outcome; later calls only confirm it."""
    first, outcome = None, ""
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            function()
            outcome = "accepted"
        except UserError as err:
            outcome = f"rejected: {str(err).split(': ', 1)[-1][:80]}"
        first = time.perf_counter() - start if first is None else first
    return first, outcome


def padded_spec(base: str, size: int) -> str:
    """`base` with a comment block that brings it to about `size` bytes (a spec that is valid but large)."""
    line = "# " + "x" * 97 + "\n"
    return base + line * max(0, (size - len(base)) // len(line))


def values_spec(base: str, count: int) -> str:
    """`base` plus a bench method list of `count` entries: `count` values for the composer to build."""
    return base + "bench: {methods: [" + ", ".join(["searched"] * count) + "]}\n"


def main() -> None:
    rows: list[tuple[str, float, str]] = []
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        seconds, outcome = best_of(lambda: load_spec(example))
        rows.append((f"example {example.name}", seconds, outcome))
    base = (ROOT / "examples" / "multimnist.yaml").read_text()
    with tempfile.TemporaryDirectory() as folder:
        def case(name: str, text: str, env: dict[str, str] | None = None) -> None:
            path = Path(folder) / "spec.yaml"
            path.write_text(text)
            saved = {key: os.environ.get(key) for key in (env or {})}
            os.environ.update(env or {})
            try:
                seconds, outcome = best_of(lambda: load_spec(path))
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            rows.append((f"{name} ({len(text):,} bytes)", seconds, outcome))

        case("largest accepted (size limit, comments)", padded_spec(base, LIMITS["DAGIR_MAX_SPEC_BYTES"] - 200))
        case("largest accepted (value limit, list)", values_spec(base, LIMITS["DAGIR_MAX_SPEC_VALUES"] // 2))
        case("5 MB spec", padded_spec(base, 5_000_000))
        case("5 MB spec, size limit raised", values_spec(base, 5_000_000 // 10),
             {"DAGIR_MAX_SPEC_BYTES": "10000000"})
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
        case("alias bomb (9^10 values)", bomb + base)
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, outcome in rows:
        print(f"{name:<{width}}  {seconds * 1000:8.1f} ms  {outcome}")


if __name__ == "__main__":
    main()
