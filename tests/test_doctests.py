"""Every example in the package's docstrings runs and prints what it says.

The modules are imported by their package names (`dagir.passes.*`, not `passes.*`), so each pass
registers once.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dagir
import dagir.backends
import dagir.passes

MODULES = sorted({info.name for package in (dagir, dagir.passes, dagir.backends)
                  for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"


def test_the_readmes_python_api_example_runs(monkeypatch):
    """The README's Python API block, run as written from the repository's root."""
    from pathlib import Path

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## The Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(root)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert set(namespace["outputs"]) == {"left", "right", "sum"}
