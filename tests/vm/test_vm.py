"""Real-kernel scenarios in QEMU VMs (marker `vm`).

Each scenario of tests/vm/scenarios.py is one test. They boot VMs (~8 s each under TCG, about
35 s for all), so they run only when asked: `CMANLK_VM_TESTS=1 pytest -m vm tests/vm` once the
lab exists, or scripts/vm-tests.sh, which also builds the lab.
"""

from __future__ import annotations

import os

import pytest

from tests.vm.harness import Lab, LabMissing, run_scenario
from tests.vm.scenarios import SCENARIOS

pytestmark = pytest.mark.vm


def _lab_problem() -> str | None:
    if os.environ.get("CMANLK_VM_TESTS") != "1":
        return "VM scenarios run with CMANLK_VM_TESTS=1 (or scripts/vm-tests.sh)"
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
    run = run_scenario(s.name, s.vms, s.timeout_s, shared_disk_mb=s.shared_disk_mb)
    report = "\n".join(f"--- {r.name}: exit {r.exit_code} timeout={r.timed_out} in {r.seconds:.1f}s\n"
                       f"{r.console_tail()}" for r in run.results)
    assert run.ok, f"scenario {name} failed (results in {run.folder}):\n{report}"
