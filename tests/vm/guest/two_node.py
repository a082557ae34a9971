#!/usr/bin/env python3
"""Guest side of scenario "two-node-lockspace": two kernels, one lockspace, a real lock conflict.

Each VM configures its kernel DLM from cmanlk.dlm.control (comms for both nodes with their eth0
addresses), and the lockspace group runs over guestlib.FileBus (one total order through the
shared /lab folder) until cmanlkd's cpg runs here. Node 1 joins first; node 2's join makes node 1
stop, add node 2 and restart, as dlm_controld does. Then node 1 holds EX on "res1", node 2's
NOQUEUE EX request is refused with EAGAIN (lock traffic between the two kernels over the DLM's
TCP port, on the addresses we configured), and granted after node 1 unlocks. Node 2 leaves
(node 1 removes it), node 1 leaves, both remove their configuration.
Usage: two_node.py NODEID [ipv6]   (NODEID 1 or 2; ipv6: the DLM connects over the IPv6 ULAs)
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import (
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
)

from cmanlk.dlm.control import (
    ClusterChanged,
    DlmCtl,
    DlmSettings,
    ShutdownRequested,
)
from cmanlk.dlm.fencing import FencingPolicy
from cmanlk.types import NodeId
from kernel_glue.configfs import clear_stale
from kernel_glue.kmod import ensure_dlm_kernel
from kernel_glue.uevents import DlmUeventWatch

LS = "lab2"
EAGAIN = 11



async def main(me: NodeId, family: int) -> int:
    s = Checks(me)
    s.say(f"dlm configfs root: {ensure_dlm_kernel()}")
    wait_for_control_device()
    mine = eth0_address(family)
    (LAB / f"addr.{me}").write_text(str(mine))
    await s.barrier("addr")
    addrs = tuple((NodeId(n), (ipaddress.ip_address((LAB / f"addr.{n}").read_text()),)) for n in (1, 2))
    bus = FileBus(LAB / "bus", me)
    node = Node(DlmCtl(DlmSettings("cmk", me, fencing=FencingPolicy(enabled=False))), bus,
                Path("/out/protocol.txt"))
    clear_stale(node.ctl)
    node.feed(ClusterChanged(now(), (NodeId(1), NodeId(2)), True, addrs))
    listed = node.ctl.read("cluster/comms/2/addr_list")
    prefix = b"AF_INET\t" if family == 4 else b"AF_INET6\t"
    s.check(listed.startswith(prefix), f"comms configured: {listed!r}")
    watch = DlmUeventWatch()
    await watch.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_bus(node, bus, stop)), asyncio.create_task(answer_uevents(node, watch))]
    dlm = Libdlm()
    try:
        await s.barrier("configured")
        if me == 1:
            s.check(await run_command(s, "dlm_tool", "join", LS) == 0, "node 1 joined alone")
        await s.barrier("joined1")
        if me == 2:
            s.check(await run_command(s, "dlm_tool", "join", LS) == 0, "node 2 joined beside node 1")
        await s.barrier("joined2")
        await asyncio.sleep(0.5)  # node 1's restart with node 2 completes through the bus
        nodes = sorted(node.ctl.listdir(f"cluster/spaces/{LS}/nodes"))
        s.check(nodes == ["1", "2"], f"kernel lockspace nodes {nodes}")
        lkid = 0
        if me == 1:
            status, lkid = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            s.check(status == 0, f"EX on res1 granted (status {status})")
        await s.barrier("held")
        if me == 2:
            status, _ = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            s.check(status == EAGAIN, f"EX on res1 refused while node 1 holds it (status {status})")
        await s.barrier("refused")
        if me == 1:
            await asyncio.to_thread(dlm.unlock, LS, lkid)
        await s.barrier("unlocked")
        if me == 2:
            status, lkid2 = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            s.check(status == 0, f"EX on res1 granted after node 1's unlock (status {status})")
            await asyncio.to_thread(dlm.unlock, LS, lkid2)
        await asyncio.to_thread(dlm.close)
        await s.barrier("locksdone")
        if me == 2:
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 2 left")
        await s.barrier("left2")
        await asyncio.sleep(0.5)
        if me == 1:
            nodes = sorted(node.ctl.listdir(f"cluster/spaces/{LS}/nodes"))
            s.check(nodes == ["1"], f"node 1 removed node 2 from the lockspace: {nodes}")
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 1 left")
        await s.barrier("left1")
        for _ in range(50):
            if not node.sysfs.lockspaces():
                break
            await asyncio.sleep(0.1)
        node.feed(ShutdownRequested(now()))
        clean = node.ctl.listdir("") == [] and node.sysfs.lockspaces() == []
        s.check(clean, "nothing left in configfs/sysfs")
    except TimeoutError as exc:
        s.check(False, f"timed out: {exc}")
    finally:
        stop.set()
        await watch.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    s.say("PASS" if not s.failures else f"FAILED: {s.failures}")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])), 6 if sys.argv[2:] == ["ipv6"] else 4)))
