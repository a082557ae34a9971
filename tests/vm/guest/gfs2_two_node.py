#!/usr/bin/env python3
"""Guest side of scenario "gfs2-two-node": GFS2 on one shared disk, mounted on two VMs over the
kernel DLM that the real cmanlkd configures (no corosync, no dlm_controld).

Both VMs see the disk as /dev/vda and run cmanlkd (`dlm: yes`, cluster name "cmk":
recover_callbacks 1 is what gfs2 needs, and gfs2 checks that its lock table's cluster part
equals cluster_name). Node 1 runs mkfs.gfs2 -p lock_dlm -t cmk:gfs0 and mounts first (the
kernel's mount joins lockspace "gfs0": uevent online, answered by cmanlkd's dlmd; as the first
mounter it replays every journal: gfs2 uevents RECOVERY=Done), then node 2 mounts. Each node
writes a file and reads the other's; node 2 unmounts, then node 1 (lockspace left through
uevent offline). SIGTERM stops cmanlkd, which removes its configfs cluster; the configfs/sysfs
writes are compared with dlm_controld's.
Usage: gfs2_two_node.py NODEID
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import (
    CONFIGFS,
    Checks,
    Cmanlkd,
    check_protocol,
    corosync_conf,
    finish,
    mkfs_gfs2,
    mount_gfs2,
    proto_join,
    proto_leave,
    proto_other_joined,
    proto_other_removed,
    record_uevents,
    run_command,
    wait_until,
)

from cmanlk.types import NodeId
from kernel_glue.dlm_protocol import Gfs2Uevent, LockspaceUevent
from kernel_glue.kmod import ensure_module
from kernel_glue.uevents import DlmUeventWatch

MNT = Path("/mnt/gfs")
LS = "gfs0"
SYSFS_LS = Path(f"/sys/kernel/dlm/{LS}")


async def main(me: NodeId) -> int:
    c = Checks(me)
    daemon = Cmanlkd(me, corosync_conf(2))
    watch = DlmUeventWatch()
    seen: list[object] = []
    recorder: asyncio.Task[None] | None = None
    try:
        await daemon.wait_configured(c, [1, 2])
        c.say(f"gfs2 loaded now: {await asyncio.to_thread(ensure_module, 'gfs2')}")
        await watch.start()
        recorder = asyncio.create_task(record_uevents(watch, seen))
        if me == 1:
            c.check(await mkfs_gfs2(c, "cmk:gfs0", 2), "mkfs.gfs2 -p lock_dlm -t cmk:gfs0")
        await c.barrier("mkfs")
        for turn in (1, 2):
            if me == turn:
                c.check(await mount_gfs2(c, mnt=MNT), f"node {me}: mount -t gfs2")
            await c.barrier(f"mounted{turn}")
        (MNT / f"from-node{me}").write_text(f"written by node {me}\n")
        await run_command(c, "sync")
        await c.barrier("written")
        other = 3 - me
        text = (MNT / f"from-node{other}").read_text()
        c.check(text == f"written by node {other}\n", f"read node {other}'s file: {text!r}")
        nodes = sorted(p.name for p in (CONFIGFS / f"cluster/spaces/{LS}/nodes").iterdir())
        c.check(nodes == ["1", "2"], f"lockspace gfs0 nodes {nodes}")
        await c.barrier("read")
        for turn in (2, 1):
            if me == turn:
                c.check(await run_command(c, "umount", str(MNT)) == 0, f"node {me}: umount")
                await wait_until(lambda: not SYSFS_LS.exists(), 30.0, "gfs0 lockspace gone")
            await c.barrier(f"umounted{turn}")
        await daemon.terminate(c)
        gfs2 = [e for e in seen if isinstance(e, Gfs2Uevent)]
        online = any(e.action == "online" and e.table == "cmk:gfs0" for e in gfs2)
        c.check(online, "gfs2 online uevent parsed")
        if me == 1:  # the first mounter replays both journals
            recovered = sorted(e.get("JID") or "" for e in gfs2 if e.get("RECOVERY") == "Done")
            c.check(recovered == ["0", "1"], f"journal recovery uevents {recovered}")
        actions = [e.action for e in seen if isinstance(e, LockspaceUevent) and e.lockspace == LS]
        c.check(actions == ["add", "online", "offline", "remove"], f"gfs0 lockspace uevents {actions}")
        if me == 1:
            expected = proto_join(LS, [1]) + proto_other_joined(LS, 2) + proto_other_removed(LS, 2) \
                + proto_leave(LS, [1])
        else:
            expected = proto_join(LS, [1, 2]) + proto_leave(LS, [1, 2])
        check_protocol(c, daemon.kernel_ops(), comms=[1, 2], removed=[], lockspaces={LS: expected})
    except TimeoutError as exc:
        c.check(False, f"timed out: {exc}")
    finally:
        if recorder is not None:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
        await watch.close()
        await asyncio.to_thread(daemon.stop)
    return finish(c)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
