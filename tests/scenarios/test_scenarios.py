"""Runs every tests/scenarios/*.txt on the simulator; `pytest --rewrite` regenerates expectations.

Each scenario's output must match its file exactly, the core must not raise, and the
EVS checker must find nothing. A file whose comment header has a line
`# xfail: <reason>` documents a known core bug and is allowed to fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cmanlk.sim.scenario import run_text

HERE = Path(__file__).parent
SCENARIOS = sorted(HERE.glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith("# xfail:"):
            request.applymarker(pytest.mark.xfail(reason=line[8:].strip(), strict=False))
    result = run_text(text)
    rewrite = bool(request.config.getoption("--rewrite"))
    if rewrite:
        path.write_text(result.render())
    assert not result.errors, "\n".join(result.errors)
    assert not result.violations, "\n".join(str(v) for v in result.violations)
    assert rewrite or result.matches, "output differs (pytest --rewrite to accept):\n" + result.diff()


def test_every_scenario_says_what_it_proves() -> None:
    for path in SCENARIOS:
        assert path.read_text().startswith("# "), f"{path.name} must open with a comment"
