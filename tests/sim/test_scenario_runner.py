"""The scenario format: parsing, rewriting, commands, and violations showing up in the output.

Runs on the naive core (tests/sim/naive.py); the real scenarios are tests/scenarios/*.txt.
"""

from __future__ import annotations

import pytest

from cmanlk.sim.scenario import ScenarioError, parse, run_text
from tests.sim.naive import naive_factory

TEXT = """\
# Proves nothing about Totem; exercises the runner.
start 1 2 3
----
stale expectation

# a comment kept in place
send 1 2
run 10ms
----
1 2 3: delivered 2: m1.1 m1.2
sent 2

show members
expect members (1,2,3)
----
1 2 3: OPERATIONAL ring=1.4 members=(1,2,3)
"""


def test_parse_keeps_comments_and_blocks() -> None:
    blocks, trailer = parse(TEXT)
    assert [b.commands for b in blocks] == [
        ["start 1 2 3"],
        ["send 1 2", "run 10ms"],
        ["show members", "expect members (1,2,3)"],
    ]
    assert blocks[0].comments == ["# Proves nothing about Totem; exercises the runner."]
    assert blocks[1].comments == ["# a comment kept in place"]
    assert trailer == []


def test_run_reports_mismatch_and_rewrite_fixes_it() -> None:
    result = run_text(TEXT, naive_factory)
    assert not result.matches
    assert "stale expectation" in result.diff()
    assert result.blocks[1].actual == result.blocks[1].expected
    again = run_text(result.render(), naive_factory)
    assert again.matches
    assert again.render() == result.render()


def test_violations_appear_in_the_output() -> None:
    text = "# x\nstart 1 2 3\n----\n\nreorder 0.9\nsend 1 5\nsend 2 5\nsend 3 5\nrun 50ms\n----\n"
    result = run_text(text, naive_factory)
    assert result.violations
    assert any(line.startswith("VIOLATION total-order") for line in result.blocks[1].actual)


def test_unknown_command_names_the_line() -> None:
    with pytest.raises(ScenarioError, match="line 2"):
        run_text("# x\nfrobnicate 3\n----\n", naive_factory)


def test_block_without_separator_is_refused() -> None:
    with pytest.raises(ScenarioError):
        parse("# x\nstart 1\n")
