"""Protocol cores stay pure: no clocks, sockets, event loops, threads, processes or global random.

STYLE.md: cores take time from events and randomness from an injected `random.Random`, so the
simulator can replay them exactly. Modules are discovered by glob, so files added later are covered.
The simulator (cmanlk/sim) is not checked here: its driver legitimately reads the wall clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cmanlk"

FORBIDDEN_MODULES = frozenset({"time", "socket", "asyncio", "os", "threading", "subprocess", "selectors"})
CORE_PACKAGES = ("totem", "services", "dlm")
"""Every module under these packages is a pure core (searched recursively)."""
CORE_SINGLE_MODULES = ("stack.py", "client/proto.py", "client/connection.py", "client/operations.py")
"""Pure modules outside those packages: the Stack, and the client side's protocol, connection
state and operations (api.py and cli.py, which do the I/O, are not)."""


def core_modules() -> list[Path]:
    found = [path for pkg in CORE_PACKAGES for path in sorted((PACKAGE / pkg).rglob("*.py"))]
    # A listed module that is gone is a rename this test must follow, not a module to skip.
    found += [PACKAGE / name for name in CORE_SINGLE_MODULES]
    return found


def impurities(source: str, filename: str = "<source>") -> list[str]:
    """Return one line per impure construct in `source`: forbidden imports and global-random use."""
    tree = ast.parse(source, filename)
    problems: list[str] = []
    random_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    problems.append(f"{filename}:{node.lineno}: import {alias.name}")
                if alias.name == "random":
                    random_aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_MODULES:
                problems.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            if node.module == "random":
                for alias in node.names:
                    if alias.name != "Random":
                        problems.append(f"{filename}:{node.lineno}: from random import {alias.name}")
    problems += _global_random_uses(tree, random_aliases, filename)
    return problems


def _global_random_uses(tree: ast.AST, aliases: set[str], filename: str) -> list[str]:
    """Every use of the `random` module other than the attribute `random.Random`."""
    allowed: set[int] = set()  # ids of Name nodes that are the `random` in `random.Random`
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr == "Random"
        ):
            allowed.add(id(node.value))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in aliases and id(node) not in allowed:
            problems.append(f"{filename}:{node.lineno}: uses module random other than random.Random")
    return problems


def test_core_modules_are_discovered():
    names = {str(p.relative_to(PACKAGE)) for p in core_modules()}
    assert {"totem/wire.py", "totem/core.py", "services/cpg/service.py", "services/sync.py",
            "services/votequorum/policy.py", "dlm/control.py", "stack.py"} <= names
    assert all(p.exists() for p in core_modules())


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_is_pure(path):
    assert impurities(path.read_text(), str(path.relative_to(ROOT))) == []


# --- the checker itself catches what it should ----------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from os import path",
        "import asyncio as aio",
        "from socket import socket",
        "import threading",
        "import subprocess",
        "import selectors",
        "from time import monotonic_ns",
        "import random\nx = random.random()",
        "import random\nrandom.choice([1])",
        "import random\nrandom.seed(1)",
        "import random as r\nr.shuffle([])",
        "from random import choice",
        "import random\nf(random)",
    ],
)
def test_checker_flags_impure_source(source):
    assert impurities(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import random\ndef f(rng: random.Random) -> None: ...",
        "import random\nrng = random.Random(4)",
        "from random import Random\nrng = Random(4)",
        "import struct, enum\nfrom dataclasses import dataclass",
        "from cmanlk.types import NodeId\nrng.random()",
        "from . import time_helpers",
    ],
)
def test_checker_accepts_pure_source(source):
    assert impurities(source) == []
