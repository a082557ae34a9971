"""Shared pytest options: `--rewrite` regenerates scenario expectations."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rewrite", action="store_true", help="rewrite expected output of scenario files")
