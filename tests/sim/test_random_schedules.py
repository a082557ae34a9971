"""Random fault schedules on the real Totem core, each judged by the EVS checker.

A failing seed prints its violations and the command that replays it exactly
(`cmanlk-sim check --seed S --nodes 2-7 --faults all -v`). The big run (2000
seeds) is the CLI that scripts/test.sh calls; this is the quick slice for pytest.
Seeds of known core bugs are listed in KNOWN_FAILING with the bug they show, and
are xfail(strict=False) until the core is fixed.
"""

from __future__ import annotations

import importlib.util

import pytest

from cmanlk.sim.schedule import FAULT_KINDS, run_schedule

HAVE_CORE = importlib.util.find_spec("cmanlk.totem.core") is not None
SEEDS = range(100)
NODES = (2, 7)
KNOWN_FAILING: dict[int, str] = {}

pytestmark = pytest.mark.skipif(not HAVE_CORE, reason="no Totem core (cmanlk/totem/core.py) yet")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_schedule_keeps_evs_invariants(seed: int, request: pytest.FixtureRequest) -> None:
    if seed in KNOWN_FAILING:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILING[seed], strict=False))
    res = run_schedule(seed, NODES, FAULT_KINDS)
    report = [*res.errors, *(str(v) for v in res.violations)]
    replay = f"replay: cmanlk-sim check --seed {seed} --nodes 2-7 --faults all -v"
    assert not report, "\n".join([*res.schedule, *report, replay])
    assert res.configs > 0


def test_same_seed_same_history_on_the_real_core() -> None:
    a = run_schedule(3, NODES, FAULT_KINDS)
    b = run_schedule(3, NODES, FAULT_KINDS)
    assert a.digest == b.digest
    assert (a.events, a.delivered, a.configs) == (b.events, b.delivered, b.configs)
