"""Process scheduling and memory locking of cmanlkd, as corosync does for itself.

Totem's timers are tight (a token is declared lost after `token` ms of silence) and every node
forwards the token, so a daemon that waits for a CPU behind ordinary work slows the whole ring and,
on a busy host, can make it reform. corosync therefore runs with SCHED_RR at the highest real-time
priority (`system.sched_rr: yes`, its default) and, when that is refused, falls back to the
highest ordinary priority (`system.priority: max`); it also locks its memory so that paging never
delays the token. cmanlkd does the same with the same keys:

- `sched_rr: yes` → SCHED_RR at `sched_get_priority_max(SCHED_RR)`; if refused (no CAP_SYS_NICE,
  RLIMIT_RTPRIO, or a cgroup without real-time budget) → the `priority` fallback, logged;
- `sched_rr: no` → only `priority`: `max` (nice -20), `min` (nice 19) or a nice value;
- the policy is set with SCHED_RESET_ON_FORK, so fence agents and helpers the daemon starts run
  with ordinary scheduling (a hung agent must never hold a CPU at real-time priority);
- memory is locked with mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) when the process may lock
  without limit (CAP_IPC_LOCK or RLIMIT_MEMLOCK unlimited): ON_FAULT locks pages as they are
  touched instead of populating every mapping (a Python thread's 8 MiB stack stays mostly
  unbacked), so the resident size stays what it was.

Every step is best effort: a refusal is a warning naming the errno, never a failure to start.
The kernel's real-time throttling (sched_rt_runtime_us, 95 % by default) still bounds a runaway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("cmanlk.sched")

MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
CAP_IPC_LOCK = 14


@dataclass(frozen=True, slots=True)
class SchedOutcome:
    """What was applied: `policy` "rr" or "other", the real-time priority or the nice value, and
    whether memory is locked. `notes` are the warnings logged on the way."""

    policy: str
    rt_priority: int
    nice: int
    memory_locked: bool
    notes: tuple[str, ...] = ()


def nice_of(priority: str) -> int:
    """The nice value of a `system.priority` setting (max → -20, min → 19, else the number)."""
    if priority == "max":
        return -20
    if priority == "min":
        return 19
    return int(priority)


def apply(sched_rr: bool, priority: str, lock_memory: bool = True) -> SchedOutcome:
    """Set this process's scheduling and lock its memory as the module docstring says; log what
    was done. Returns the outcome; never raises for a refusal by the kernel."""
    notes: list[str] = []
    policy, rt_priority = "other", 0
    if sched_rr:
        try:
            rt_priority = os.sched_get_priority_max(os.SCHED_RR)
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(rt_priority))
            policy = "rr"
        except OSError as exc:
            rt_priority = 0
            notes.append(f"cannot use SCHED_RR ({errno.errorcode.get(exc.errno or 0, exc.errno)}: "
                         f"{exc.strerror}); falling back to system.priority {priority}")
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if policy == "other":
        wanted = nice_of(priority)
        try:
            # reset-on-fork for the ordinary policy too: a negative nice is not inherited by agents
            os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
            nice = wanted
        except OSError as exc:
            notes.append(f"cannot set nice {wanted} ({exc.strerror}); keeping {nice}")
    locked = False
    if lock_memory:
        locked, note = _lock_memory()
        if note:
            notes.append(note)
    for note in notes:
        log.warning("scheduling: %s", note)
    where = f"SCHED_RR priority {rt_priority}" if policy == "rr" else f"SCHED_OTHER nice {nice}"
    log.info("scheduling: %s, memory %s", where, "locked" if locked else "not locked")
    return SchedOutcome(policy, rt_priority, nice, locked, tuple(notes))


def may_lock_without_limit() -> bool:
    """True when mlockall cannot run into RLIMIT_MEMLOCK: CAP_IPC_LOCK is effective or the limit
    is unlimited (then MCL_FUTURE can never make a later allocation fail)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except OSError:
        pass
    return False


def _lock_memory() -> tuple[bool, str]:
    if not may_lock_without_limit():
        return False, "memory not locked: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is limited"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return True, ""
    err = ctypes.get_errno()
    return False, f"mlockall failed: {os.strerror(err)}"
