"""Real-kernel scenarios in QEMU VMs (marker `vm`; skipped where the kernel lab is not built).

Each scenario of tests/vm/scenarios.py is one test. Build the lab and run them all with
scripts/vm-tests.sh, or `pytest -m vm tests/vm` once the lab exists.
"""

from __future__ import annotations

import os

import pytest

from tests.vm.harness import Lab, LabMissing, run_scenario
from tests.vm.scenarios import SCENARIOS

pytestmark = pytest.mark.vm


def _lab_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, 9p shares)"
    try:
        Lab().check()
    except LabMissing as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    problem = _lab_problem()
    if problem:
        pytest.skip(problem)
    s = SCENARIOS[name]
    run = run_scenario(s.name, s.vms, s.timeout_s)
    report = "\n".join(f"--- {r.name}: exit {r.exit_code} timeout={r.timed_out} in {r.seconds:.1f}s\n"
                       f"{r.console_tail()}" for r in run.results)
    assert run.ok, f"scenario {name} failed (results in {run.folder}):\n{report}"
