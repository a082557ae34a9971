#!/usr/bin/env python3
"""Guest side of scenario "gfs2-two-node": GFS2 mounted on two VMs over a DLM configured by us.

Both VMs see one shared disk (/dev/vda). dlmctl configures each kernel (cluster name "cmk",
recover_callbacks 1: gfs2 needs the recovery callbacks and checks that its lock table's
cluster part matches cluster_name); the group stand-in is guestlib.FileBus. Node 1 runs
mkfs.gfs2 -p lock_dlm -t cmk:gfs0; both mount at once: the kernel's mount joins lockspace
"gfs0" (uevent online, answered by dlmctl), the first mounter replays every journal (gfs2
uevents change RECOVERY=Done, FIRSTMOUNT=Done, read by kernel_glue.uevents). Each node writes a
file and reads the other's; both unmount (the lockspace is left through uevent offline) and
remove their configuration.
Usage: gfs2_two_node.py NODEID
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
from kernel_glue.dlm_protocol import Gfs2Uevent, LockspaceUevent
from kernel_glue.kmod import ensure_dlm_kernel, ensure_module
from kernel_glue.uevents import DlmUeventWatch

MNT = Path("/mnt/gfs")


async def main(me: NodeId) -> int:
    c = Checks(me)
    c.say(f"dlm configfs root: {ensure_dlm_kernel()}; gfs2 loaded now: {ensure_module('gfs2')}")
    wait_for_control_device()
    (LAB / f"addr.{me}").write_text(str(eth0_address()))
    await c.barrier("addr")
    addrs = tuple((NodeId(n), (ipaddress.IPv4Address((LAB / f"addr.{n}").read_text()),)) for n in (1, 2))
    bus = FileBus(LAB / "bus", me)
    node = Node(DlmCtl(DlmSettings("cmk", me, fencing=FencingPolicy(enabled=False))), bus,
                Path("/out/protocol.txt"))
    clear_stale(node.ctl)
    node.feed(ClusterChanged(now(), (NodeId(1), NodeId(2)), True, addrs))
    watch = DlmUeventWatch()
    await watch.start()
    seen: list[object] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_bus(node, bus, stop)),
             asyncio.create_task(answer_uevents(node, watch, seen))]
    try:
        if me == 1:
            rc = await run_command(c, "mkfs.gfs2", "-O", "-p", "lock_dlm", "-t", "cmk:gfs0", "-j", "2",
                                   "-J", "16", "/dev/vda")
            c.check(rc == 0, "mkfs.gfs2")
        await c.barrier("mkfs")
        await run_command(c, "mkdir", "-p", str(MNT))
        c.check(await run_command(c, "mount", "-t", "gfs2", "/dev/vda", str(MNT)) == 0, "mount -t gfs2")
        (MNT / f"from-node{me}").write_text(f"written by node {me}\n")
        await run_command(c, "sync")
        await c.barrier("written")
        other = 3 - me
        text = (MNT / f"from-node{other}").read_text()
        c.check(text == f"written by node {other}\n", f"read node {other}'s file: {text!r}")
        nodes = sorted(node.ctl.listdir("cluster/spaces/gfs0/nodes"))
        c.check(nodes == ["1", "2"], f"lockspace gfs0 nodes {nodes}")
        await c.barrier("read")
        c.check(await run_command(c, "umount", str(MNT)) == 0, "umount")
        await wait_until(lambda: not node.sysfs.lockspaces(), 30.0, "gfs0 lockspace gone")
        await c.barrier("umounted")
        node.feed(ShutdownRequested(now()))
        c.check(node.ctl.listdir("") == [], "nothing left in configfs")
        gfs2 = [e for e in seen if isinstance(e, Gfs2Uevent)]
        online = any(e.action == "online" and e.table == "cmk:gfs0" for e in gfs2)
        c.check(online, "gfs2 online uevent parsed")
        if me == 1:  # the first mounter replays both journals
            recovered = sorted(e.get("JID") or "" for e in gfs2 if e.get("RECOVERY") == "Done")
            c.check(recovered == ["0", "1"], f"journal recovery uevents {recovered}")
        actions = [e.action for e in seen if isinstance(e, LockspaceUevent) and e.lockspace == "gfs0"]
        c.check(actions == ["add", "online", "offline", "remove"], f"gfs0 lockspace uevents {actions}")
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
