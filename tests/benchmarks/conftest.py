"""Benchmarks: outside the default run (pyproject's testpaths), run with
`python -m pytest tests/benchmarks -s`. Each prints its figures and a ratio against a
reference measured in the same run; none asserts a timing."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.benchmark)
