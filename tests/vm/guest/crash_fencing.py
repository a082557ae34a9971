#!/usr/bin/env python3
"""Guest side of scenario "crash-fencing": recovery waits for fencing, then the lock is free.

Two VMs join lockspace lab3 (dlmctl + FileBus as in two_node.py). Node 2 takes EX on "res1"
and hard-resets itself (sysrq b) without leaving. Node 1 plays the membership layer (it sees the
marker file and reports node 2 down: cluster membership {1}, still quorate as with two_node,
and a NODEDOWN confchg of the lockspace group). Then, on node 1, with fencing enabled:
- comms/2 is removed and the lockspace stopped (control 0) at once;
- recovery does not start while node 2 is unfenced: a NOQUEUE EX request on res1 blocks in the
  stopped kernel lockspace, and the core reports it waits for "fencing of node 2";
- the fence agent (fence_lab.py through cmanlk.runtime.fence) fails once, is retried after the
  backoff, and succeeds once node 2 no longer answers ping;
- then nodes/2 is removed, control 1 written, and the blocked request is granted (status 0:
  node 2's lock went away with it). Node 1 leaves and removes its configuration.
Usage: crash_fencing.py NODEID   (1 or 2)
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import (
    BARRIER_TIMEOUT_S,
    LAB,
    STEP_TIMEOUT_S,
    Checks,
    FileBus,
    Libdlm,
    Node,
    answer_uevents,
    eth0_address,
    now,
    run_bus,
    run_command,
    wait_for_control_device,
    wait_until,
)

from cmanlk.dlmctl import (
    ClusterChanged,
    DeadlineReached,
    DlmCtl,
    DlmSettings,
    FenceAgentExited,
    ShutdownRequested,
)
from cmanlk.fencing import FencingPolicy
from cmanlk.runtime.fence import FenceDevice, FenceRunner
from cmanlk.types import NodeId, ms
from kernel_glue.configfs import clear_stale
from kernel_glue.kmod import ensure_dlm_kernel
from kernel_glue.uevents import DlmUeventWatch

LS = "lab3"
N1, N2 = NodeId(1), NodeId(2)
AGENT = Path(__file__).resolve().parent / "fence_lab.py"



async def run_timer(node: Node, stop: asyncio.Event) -> None:
    """The runtime's one timer: feed DeadlineReached when the core's deadline passes."""
    while not stop.is_set():
        due = node.core.next_deadline
        if due is not None and time.monotonic_ns() >= due:
            node.feed(DeadlineReached(now()))
        await asyncio.sleep(0.05)


def crash_now(c: Checks) -> None:
    c.say("crashing now: sysrq b, no leave")
    Path("/out/exit-code").write_text("0\n")  # the harness reads this; we will not get to write it
    (LAB / "crashing").touch()
    os.sync()
    Path("/proc/sysrq-trigger").write_text("b")
    time.sleep(60)


async def after_crash(c: Checks, node: Node, bus: FileBus, dlm: Libdlm) -> None:
    await wait_until(lambda: (LAB / "crashing").exists(), BARRIER_TIMEOUT_S, "node 2's crash")
    c.say("node 2 is gone: membership {1} (quorate, two_node), lockspace group NODEDOWN")
    node.feed(ClusterChanged(now(), (N1,), True, ((N1, (eth0_address(),)),)))
    c.check(not node.ctl.exists("cluster/comms/2"), "comms/2 removed at once")
    bus.report_down(f"dlm:ls:{LS}", N2)
    blocked = asyncio.create_task(asyncio.to_thread(dlm.try_lock, LS, b"res1"))
    await asyncio.sleep(0.5)
    c.check(node.core.waiting_for(LS) == ["fencing of node 2"], f"waiting for {node.core.waiting_for(LS)}")
    c.check(not blocked.done(), "a lock request blocks while node 2 is unfenced")
    kept = sorted(node.ctl.listdir(f"cluster/spaces/{LS}/nodes"))
    c.check(kept == ["1", "2"], f"nodes/2 kept until fenced: {kept}")
    await wait_until(lambda: node.core.fencing.is_fenced(N2), STEP_TIMEOUT_S, "fencing of node 2")
    victim = node.core.fencing.status()[0]
    c.say(f"fencing: {victim}")
    c.check(victim["attempts"] == 2 and victim["how"] == "agent", "fenced by the agent on its 2nd attempt")
    stdin = (LAB / "fence-attempt.1").read_text()
    c.check("action=off\nnodename=node2\n" in stdin, f"agent stdin {stdin!r}")
    async with asyncio.timeout(STEP_TIMEOUT_S):
        status, lkid = await blocked
    c.check(status == 0, f"EX on res1 granted after recovery (status {status})")
    c.check(sorted(node.ctl.listdir(f"cluster/spaces/{LS}/nodes")) == ["1"], "nodes/2 removed after fencing")
    await asyncio.to_thread(dlm.unlock, LS, lkid)
    await asyncio.to_thread(dlm.close)
    c.check(await run_command(c, "dlm_tool", "leave", LS) == 0, "node 1 left")
    for _ in range(50):
        if not node.sysfs.lockspaces():
            break
        await asyncio.sleep(0.1)
    node.feed(ShutdownRequested(now()))
    c.check(node.ctl.listdir("") == [] and node.sysfs.lockspaces() == [], "nothing left in configfs/sysfs")


async def main(me: NodeId) -> int:
    c = Checks(me)
    c.say(f"dlm configfs root: {ensure_dlm_kernel()}")
    wait_for_control_device()
    (LAB / f"addr.{me}").write_text(str(eth0_address()))
    await c.barrier("addr")
    addrs = tuple((NodeId(n), (ipaddress.IPv4Address((LAB / f"addr.{n}").read_text()),)) for n in (1, 2))
    bus = FileBus(LAB / "bus", me)
    policy = FencingPolicy(enabled=True, nodes_with_agent=frozenset({N2}), retry_initial=ms(1000))
    node = Node(DlmCtl(DlmSettings("cmk", me, fencing=policy)), bus, Path("/out/protocol.txt"))
    device = FenceDevice(str(AGENT), "node2", (("ip", str(dict(addrs)[N2][0])), ("flagdir", str(LAB)),
                                               ("fail_first", "1")))
    runner = FenceRunner({N2: device}, lambda n, rc: node.feed(FenceAgentExited(now(), n, rc)))
    node.run_fence_agent = runner.carry_out
    clear_stale(node.ctl)
    node.feed(ClusterChanged(now(), (N1, N2), True, addrs))
    watch = DlmUeventWatch()
    await watch.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_bus(node, bus, stop)), asyncio.create_task(answer_uevents(node, watch)),
             asyncio.create_task(run_timer(node, stop))]
    dlm = Libdlm()
    try:
        await c.barrier("configured")
        if me == 1:
            c.check(await run_command(c, "dlm_tool", "join", LS) == 0, "node 1 joined")
        await c.barrier("joined1")
        if me == 2:
            c.check(await run_command(c, "dlm_tool", "join", LS) == 0, "node 2 joined")
            status, _ = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            c.check(status == 0, f"node 2 holds EX on res1 (status {status})")
        await c.barrier("held")
        if me == 2:
            crash_now(c)
        await after_crash(c, node, bus, dlm)
    except TimeoutError as exc:
        c.check(False, f"timed out: {exc}")
    finally:
        stop.set()
        await runner.close()
        await watch.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    c.say("PASS" if not c.failures else f"FAILED: {c.failures}")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
