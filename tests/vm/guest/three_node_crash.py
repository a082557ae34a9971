#!/usr/bin/env python3
"""Guest side of scenario "three-node-crash": three kernels, one lockspace, node 3 dies.

As the lab's 3-node baseline with dlm_controld (fencing disabled): nodes 1, 2, 3 join lockspace
lab4 in turn (each join makes the members stop, add the newcomer and start); node 3 takes EX on
"res1" and hard-resets. Nodes 1 and 2 (still quorate: 2 of 3) see the membership {1,2}
(comms/3 removed, the lockspace stopped) and node 3's NODEDOWN in the group; both send their
start, both remove nodes/3 and restart; node 2's NOQUEUE EX on res1 is then granted: the dead
node's lock is gone. Nodes 2 and 1 leave; nothing is left configured.
Usage: three_node_crash.py NODEID
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

from cmanlk.dlmctl import ClusterChanged, DlmCtl, DlmSettings, ShutdownRequested
from cmanlk.fencing import FencingPolicy
from cmanlk.types import NodeId
from kernel_glue.configfs import clear_stale
from kernel_glue.kmod import ensure_dlm_kernel
from kernel_glue.uevents import DlmUeventWatch

LS = "lab4"
N = 3


def crash_now(c: Checks) -> None:
    c.say("crashing now: sysrq b, no leave")
    Path("/out/exit-code").write_text("0\n")
    (LAB / "crashing").touch()
    os.sync()
    Path("/proc/sysrq-trigger").write_text("b")
    time.sleep(60)


async def main(me: NodeId) -> int:
    c = Checks(me, nodes=N)
    c.say(f"dlm configfs root: {ensure_dlm_kernel()}")
    wait_for_control_device()
    (LAB / f"addr.{me}").write_text(str(eth0_address()))
    await c.barrier("addr")
    ids = tuple(NodeId(n) for n in range(1, N + 1))
    addrs = tuple((n, (ipaddress.ip_address((LAB / f"addr.{n}").read_text()),)) for n in ids)
    bus = FileBus(LAB / "bus", me)
    node = Node(DlmCtl(DlmSettings("cmk", me, fencing=FencingPolicy(enabled=False))), bus,
                Path("/out/protocol.txt"))
    clear_stale(node.ctl)
    node.feed(ClusterChanged(now(), ids, True, addrs))
    watch = DlmUeventWatch()
    await watch.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_bus(node, bus, stop)), asyncio.create_task(answer_uevents(node, watch))]
    dlm = Libdlm()
    try:
        for turn in ids:
            if me == turn:
                c.check(await run_command(c, "dlm_tool", "join", LS) == 0, f"node {me} joined")
            await c.barrier(f"joined{turn}")
        await wait_until(lambda: node.ctl.listdir(f"cluster/spaces/{LS}/nodes") == ["1", "2", "3"], 30.0,
                         "all three nodes in the kernel lockspace")
        if me == 3:
            status, _ = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            c.check(status == 0, f"node 3 holds EX on res1 (status {status})")
        await c.barrier("held")
        if me == 3:
            crash_now(c)
        c.nodes = 2
        await wait_until(lambda: (LAB / "crashing").exists(), BARRIER_TIMEOUT_S, "node 3's crash")
        node.feed(ClusterChanged(now(), ids[:2], True, addrs[:2]))
        c.check(not node.ctl.exists("cluster/comms/3"), "comms/3 removed")
        if me == 1:
            bus.report_down(f"dlm:ls:{LS}", NodeId(3))
        await wait_until(lambda: node.ctl.listdir(f"cluster/spaces/{LS}/nodes") == ["1", "2"], 30.0,
                         "node 3 removed from the kernel lockspace")
        c.check(True, "recovered without node 3")
        await c.barrier("recovered")
        if me == 2:
            status, lkid = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            c.check(status == 0, f"EX on res1 granted after node 3's death (status {status})")
            await asyncio.to_thread(dlm.unlock, LS, lkid)
        await asyncio.to_thread(dlm.close)
        await c.barrier("locked")
        for turn in (2, 1):
            if me == turn:
                c.check(await run_command(c, "dlm_tool", "leave", LS) == 0, f"node {me} left")
            await c.barrier(f"left{turn}")
        await wait_until(lambda: not node.sysfs.lockspaces(), 30.0, "lockspace gone")
        node.feed(ShutdownRequested(now()))
        c.check(node.ctl.listdir("") == [], "nothing left in configfs")
    except TimeoutError as exc:
        c.check(False, f"timed out: {exc}")
    finally:
        stop.set()
        await watch.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    c.say("PASS" if not c.failures else f"FAILED: {c.failures}")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
