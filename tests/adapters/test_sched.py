"""cmanlk.runtime.sched against the real kernel: policies, the fallback when real-time is
refused, reset-on-fork for children, locked memory. Each case runs in a child process so the test
runner's own scheduling is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cmanlk.runtime.sched import nice_of

PROBE = r"""
import json, os, sys, subprocess
from cmanlk.runtime import sched
if len(sys.argv) > 3:
    os.setgid(65534); os.setuid(65534)
out = sched.apply(sys.argv[1] == "yes", sys.argv[2])
kid = subprocess.Popen(["sleep", "10"])
child = [os.sched_getscheduler(kid.pid), os.getpriority(os.PRIO_PROCESS, kid.pid)]
kid.kill(); kid.wait()
vmlck = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmLck:")][0]
print(json.dumps({"policy": out.policy, "rt": out.rt_priority, "nice": out.nice,
    "locked": out.memory_locked, "notes": list(out.notes),
    "kernel_policy": os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK,
    "reset_on_fork": bool(os.sched_getscheduler(0) & os.SCHED_RESET_ON_FORK),
    "kernel_nice": os.getpriority(os.PRIO_PROCESS, 0),
    "child_policy": int(child[0]), "child_nice": int(child[1]), "vmlck_kib": vmlck}))
"""


def probe(sched_rr: str, priority: str, unprivileged: bool = False) -> dict[str, object]:
    args = [sys.executable, "-c", PROBE, sched_rr, priority] + (["nobody"] if unprivileged else [])
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_nice_of_settings() -> None:
    assert (nice_of("max"), nice_of("min"), nice_of("-5"), nice_of("7")) == (-20, 19, -5, 7)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_NICE, CAP_IPC_LOCK)")


@needs_root
def test_sched_rr_at_top_priority_children_reset_memory_locked() -> None:
    r = probe("yes", "max")
    assert r["policy"] == "rr" and r["kernel_policy"] == os.SCHED_RR and r["reset_on_fork"]
    assert r["rt"] == os.sched_get_priority_max(os.SCHED_RR)
    # SCHED_RESET_ON_FORK: a fence agent started by the daemon runs with ordinary scheduling
    assert r["child_policy"] == os.SCHED_OTHER and r["child_nice"] == 0
    assert r["locked"] is True and isinstance(r["vmlck_kib"], int) and r["vmlck_kib"] > 0
    assert r["notes"] == []


@needs_root
def test_sched_rr_off_uses_the_priority_setting() -> None:
    r = probe("no", "max")
    assert r["policy"] == "other" and r["kernel_policy"] == os.SCHED_OTHER
    assert r["nice"] == -20 and r["kernel_nice"] == -20
    assert r["child_nice"] == 0  # a negative nice is not inherited either
    r = probe("no", "11")
    assert r["kernel_nice"] == 11 and r["notes"] == []


@needs_root
def test_refused_realtime_falls_back_with_a_warning_and_never_fails() -> None:
    r = probe("yes", "max", unprivileged=True)
    assert r["policy"] == "other" and r["kernel_policy"] == os.SCHED_OTHER
    notes = " ".join(str(n) for n in r["notes"])  # type: ignore[attr-defined]
    assert "cannot use SCHED_RR" in notes and "falling back to system.priority max" in notes
    assert "cannot set nice -20" in notes
    assert r["locked"] is False
