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
