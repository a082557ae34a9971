"""The corosync.conf examples in the docs are corosync.conf: every indented or fenced block of
docs/*.md and README.md that opens with a section (`name {`) parses without a syntax error, and a
block that is a whole file (totem and nodelist, no elisions) parses without any error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmanlk.config import parse_config
from cmanlk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])
SYNTAX = ("expected 'key: value'", "without an open section", "is not closed", "one word followed by")


def conf_blocks(text: str) -> list[str]:
    """Indented (4 spaces) and ``` blocks whose first line opens a section."""
    blocks = [m.group(1) for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.DOTALL)]
    current: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
            continue
        if current:
            blocks.append("\n".join(current))
        current = []
    return [b for b in blocks if b.strip() and re.match(r"[A-Za-z_]+ \{", b.strip().splitlines()[0])]


EXAMPLES = [(doc.name, i, block) for doc in DOCS for i, block in enumerate(conf_blocks(doc.read_text()))]


@pytest.mark.parametrize(("doc", "index", "block"), EXAMPLES, ids=[f"{d}#{i}" for d, i, _ in EXAMPLES])
def test_docs_config_examples_parse(doc: str, index: int, block: str) -> None:
    trailing = [line for line in block.splitlines() if re.match(r"\s*[^#\s].*\s#", line)]
    assert not trailing, f"{doc} example {index}: corosync.conf has no trailing comments: {trailing}"
    try:
        parse_config(block, f"{doc}#{index}")
    except ConfigError as exc:
        syntax = [str(p) for p in exc.problems if any(s in p.message for s in SYNTAX)]
        assert not syntax, f"{doc} example {index} is not corosync.conf syntax:\n" + "\n".join(syntax)
        whole = "totem {" in block and "nodelist {" in block and "..." not in block
        assert not whole, f"{doc} example {index} is a whole file but does not load:\n{exc}"


def test_there_are_examples_to_check() -> None:
    assert {d for d, _, _ in EXAMPLES} >= {"links.md", "config.md"}
