#!/usr/bin/env python3
"""Guest side of scenario "lockspace-join": cmanlk.dlm.control + kernel_glue answer `dlm_tool join`.

No corosync, no dlm_controld: one node, ourselves. The kernel DLM is loaded and configfs mounted
by kernel_glue.kmod, the cluster is configured from dlmctl's actions, the lockspace's process
group is a local loopback (a single member gets its own confchg and start message back, as cpg
would deliver them), and uevents come from kernel_glue.uevents. Checks: `dlm_tool join lab1`
succeeds, the kernel shows the global id, a lock can be taken through libdlm, `dlm_tool leave`
succeeds, and at the end nothing is left in configfs or sysfs. The kernel protocol carried out
is written to /out/protocol.txt and compared with the operations dlm_controld does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import Libdlm, LoopbackBus, Node, eth0_address, log, now, wait_for_control_device

from cmanlk.dlm.control import (
    ClusterChanged,
    DlmCtl,
    DlmSettings,
    LockspaceOffline,
    LockspaceOnline,
    ShutdownRequested,
)
from cmanlk.dlm.fencing import FencingPolicy
from cmanlk.types import NodeId
from kernel_glue.configfs import clear_stale
from kernel_glue.dlm_protocol import LockspaceUevent
from kernel_glue.kmod import ensure_dlm_kernel
from kernel_glue.uevents import DlmUeventWatch

ME = NodeId(1)
LS = "lab1"
STEP_TIMEOUT_S = 60.0
OUT = Path("/out")

EXPECTED = [
    ("mkdir", "cluster"), ("write", "cluster/mark", b"0"), ("write", "cluster/recover_callbacks", b"1"),
    ("write", "cluster/cluster_name", b"cmk"), ("mkdir", "cluster/comms/1"),
    ("write", "cluster/comms/1/nodeid", b"1"), ("write", "cluster/comms/1/addr", None),
    ("write", "cluster/comms/1/mark", b"0"), ("write", "cluster/comms/1/local", b"1"),
    ("sysfs", "lab1", "id", b"943331636\0"), ("mkdir", "cluster/spaces/lab1"),
    ("mkdir", "cluster/spaces/lab1/nodes/1"), ("write", "cluster/spaces/lab1/nodes/1/nodeid", b"1"),
    ("write", "cluster/spaces/lab1/nodes/1/weight", b"1"), ("sysfs", "lab1", "control", b"1\0"),
    ("sysfs", "lab1", "event_done", b"0\0"),
    ("sysfs", "lab1", "control", b"0\0"), ("rmdir", "cluster/spaces/lab1/nodes/1"),
    ("rmdir", "cluster/spaces/lab1"), ("sysfs", "lab1", "event_done", b"0\0"),
    ("rmdir", "cluster/comms/1"), ("rmdir", "cluster"),
]


def say(msg: str) -> None:
    log("lockspace-join", msg)


def take_lock() -> int:
    """Take and release an EX lock on res1 through libdlm; return the lock status (0 = granted)."""
    dlm = Libdlm()
    try:
        status, lkid = dlm.try_lock(LS, b"res1")
        if status == 0:
            dlm.unlock(LS, lkid)
        return status
    finally:
        dlm.close()


async def run_tool(node: Node, events: object, *args: str, expect: str) -> int:
    """Run dlm_tool, answering the uevent `expect` through the core while it waits."""
    proc = await asyncio.create_subprocess_exec("dlm_tool", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        async for ev in events:  # type: ignore[attr-defined]
            if isinstance(ev, LockspaceUevent) and ev.lockspace == LS:
                say(f"uevent {ev.action}@{ev.lockspace}")
                if ev.action == "online":
                    node.feed(LockspaceOnline(now(), LS))
                elif ev.action == "offline":
                    node.feed(LockspaceOffline(now(), LS))
                if ev.action == expect:
                    break
        out, _ = await proc.communicate()
    say(f"dlm_tool {' '.join(args)} -> {proc.returncode}: {out.decode(errors='replace').strip()}")
    return proc.returncode if proc.returncode is not None else -1


async def main() -> int:
    say(f"dlm configfs root: {ensure_dlm_kernel()}")
    wait_for_control_device()
    node = Node(DlmCtl(DlmSettings("cmk", ME, fencing=FencingPolicy(enabled=False))), LoopbackBus(ME),
                OUT / "protocol.txt")
    say(f"stale state removed: {clear_stale(node.ctl)}")
    node.feed(ClusterChanged(now(), (ME,), True, ((ME, (eth0_address(),)),)))
    watch = DlmUeventWatch()
    await watch.start()
    events = watch.events()
    failures: list[str] = []
    try:
        t0 = time.monotonic()
        if await run_tool(node, events, "join", LS, expect="online") != 0:
            failures.append("dlm_tool join failed")
        say(f"join took {time.monotonic() - t0:.2f}s; /sys/kernel/dlm: {node.sysfs.lockspaces()}")
        if node.sysfs.read(LS, "id") != b"943331636\n":
            failures.append(f"id {node.sysfs.read(LS, 'id')!r}")
        status = await asyncio.to_thread(take_lock)
        say(f"EX lock on res1: status {status}")
        if status != 0:
            failures.append(f"lock status {status}")
        if await run_tool(node, events, "leave", LS, expect="offline") != 0:
            failures.append("dlm_tool leave failed")
        for _ in range(50):
            if not node.sysfs.lockspaces():
                break
            await asyncio.sleep(0.1)
        node.feed(ShutdownRequested(now()))
    finally:
        await watch.close()
    if node.sysfs.lockspaces() or node.ctl.listdir(""):
        failures.append(f"left over: sysfs {node.sysfs.lockspaces()} configfs {node.ctl.listdir('')}")
    if node.done != EXPECTED:
        failures.append("kernel protocol differs from dlm_controld's:\n  "
                        + "\n  ".join(repr(x) for x in node.done))
    for f in failures:
        say(f"FAIL: {f}")
    say("PASS" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
