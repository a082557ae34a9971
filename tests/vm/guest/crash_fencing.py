#!/usr/bin/env python3
"""Guest side of scenario "crash-fencing": a node hard-resets with GFS2 mounted and a lock held;
the survivor's cmanlkd fences it with the configured agent, recovers, and the filesystem and the
lock are usable again.

Both VMs run cmanlkd (two_node: 1, so node 1 stays quorate alone; `dlm_fencing: yes`; fence
devices from `cmanlk { fence {} }`: a defaults block names tests/vm/guest/fence_lab.py and its
shared options, node 2's own block its address). GFS2 (cmk:gfs0) is mounted on both, both join
lockspace lab3, node 2 takes EX on res1, writes a file to GFS2 and syncs, then hard-resets
(sysrq b: no leave, no unmount; QEMU exits). On node 1:
- cmanlkd drops node 2 from the ring, removes comms/2 and stops both lockspaces;
- node 2 is a fencing victim: recovery waits (nodes/2 stays, a NOQUEUE EX on res1 blocks), the
  lockspaces show what they wait for;
- the agent fails once (fail_first: 1, retried with backoff) and succeeds when node 2 no longer
  answers ping; `cmanlk-tool --json dlm` then shows node 2 fenced by the agent on attempt 2 with
  the agent's last result;
- nodes/2 is removed and both lockspaces restart: the blocked request is granted (node 2's lock
  went with it), gfs2 replays node 2's journal (uevent JID=1 RECOVERY=Done), node 2's file is
  read and a new file written;
- unmount, leave, SIGTERM; the configfs/sysfs writes match dlm_controld's fencing trace.
With "ipv6" (scenario "crash-fencing-ipv6") the ring, the DLM's comms and the agent's `ip` use
the IPv6 ULAs.
Usage: crash_fencing.py NODEID [ipv6]   (NODEID 1 or 2)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import (
    BARRIER_TIMEOUT_S,
    CONFIGFS,
    LAB,
    STEP_TIMEOUT_S,
    Checks,
    Cmanlkd,
    Libdlm,
    check_protocol,
    corosync_conf,
    crash_now,
    finish,
    mkfs_gfs2,
    mount_gfs2,
    node_address,
    proto_join,
    proto_leave,
    proto_other_joined,
    proto_other_removed,
    record_uevents,
    run_command,
    wait_for_control_device,
    wait_until,
)

from cmanlk.types import NodeId
from kernel_glue.dlm_protocol import Gfs2Uevent
from kernel_glue.kmod import ensure_module
from kernel_glue.uevents import DlmUeventWatch

LS = "lab3"
GFS = "gfs0"
MNT = Path("/mnt/gfs")
SYSFS = Path("/sys/kernel/dlm")
AGENT = Path(__file__).resolve().parent / "fence_lab.py"
FAMILY = 4
"""4, or 6 for scenario "crash-fencing-ipv6" (ring, DLM comms and the agent's address on the ULAs)."""


def fence_blocks() -> tuple[dict[str, str], ...]:
    return ({"agent": str(AGENT), "flagdir": str(LAB), "fail_first": "1"},
            {"node": "2", "ip": node_address(2, FAMILY)})


def victim(daemon: Cmanlkd, nodeid: int) -> dict[str, object] | None:
    try:
        victims = daemon.dlm()["fencing"]["victims"]
    except Exception:  # a reply while the daemon is busy: ask again
        return None
    return next((v for v in victims if v["nodeid"] == nodeid), None)


async def before_crash(c: Checks, dlm: Libdlm) -> None:
    if c.me == 1:
        c.check(await mkfs_gfs2(c, f"cmk:{GFS}", 2), "mkfs.gfs2")
    await c.barrier("mkfs")
    for turn in (1, 2):
        if c.me == turn:
            c.check(await mount_gfs2(c, mnt=MNT), f"node {turn}: mount -t gfs2")
            c.check(await run_command(c, "dlm_tool", "join", LS) == 0, f"node {turn} joined {LS}")
        await c.barrier(f"joined{turn}")
    if c.me == 2:
        status, _ = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
        c.check(status == 0, f"node 2 holds EX on res1 (status {status})")
        (MNT / "from-node2").write_text("written by node 2 before its crash\n")
        c.check(await run_command(c, "sync") == 0, "node 2's file synced")
    await c.barrier("held")


async def after_crash(c: Checks, daemon: Cmanlkd, dlm: Libdlm, seen: list[object]) -> None:
    await wait_until(lambda: (LAB / "crashing.2").exists(), BARRIER_TIMEOUT_S, "node 2's crash")
    t_crash = time.monotonic()
    await wait_until(lambda: victim(daemon, 2) is not None, STEP_TIMEOUT_S, "node 2 a fencing victim")
    c.say(f"node 2 a fencing victim {time.monotonic() - t_crash:.1f}s after the crash: {victim(daemon, 2)}")
    blocked = asyncio.create_task(asyncio.to_thread(dlm.try_lock, LS, b"res1"))
    status = daemon.dlm()
    c.check(not (CONFIGFS / "cluster/comms/2").exists(), "comms/2 removed")
    waits = {ls["name"]: ls["waiting_for"] for ls in status["lockspaces"]}
    fenced_now = victim(daemon, 2) or {}
    if fenced_now.get("state") != "fenced":  # window: failed 1st attempt + backoff (~5 s)
        c.check(all("fencing of node 2" in w for w in waits.values()) and len(waits) == 2,
                f"both lockspaces wait for fencing: {waits}")
        kept = sorted(p.name for p in (CONFIGFS / f"cluster/spaces/{LS}/nodes").iterdir())
        c.check(kept == ["1", "2"], f"nodes/2 kept until fenced: {kept}")
        await asyncio.sleep(0.3)
        c.check(not blocked.done(), "a lock request blocks while node 2 is unfenced")
    await wait_until(lambda: (victim(daemon, 2) or {}).get("state") == "fenced", STEP_TIMEOUT_S,
                     "fencing of node 2")
    c.say(f"fenced {time.monotonic() - t_crash:.1f}s after the crash")
    code, out = daemon.tool("--json", "dlm")
    fencing: dict[str, Any] = json.loads(out)["fencing"] if code == 0 else {}
    v: dict[str, Any] = next((v for v in fencing.get("victims", []) if v["nodeid"] == 2), {})
    c.check(v.get("how") == "agent" and v.get("attempts") == 2 and v.get("last_exit") == 0
            and "is off" in str((v.get("agent") or {}).get("output_tail")),
            f"cmanlk-tool --json dlm: node 2 fenced by its agent on attempt 2: {v}")
    stdin = (LAB / "fence-attempt.1").read_text()
    want = f"action=off\nnodename=cmkvm2\nflagdir={LAB}\nfail_first=1\nip={node_address(2, FAMILY)}\n"
    c.check(stdin == want, f"agent stdin {stdin!r}")
    async with asyncio.timeout(STEP_TIMEOUT_S):
        status_code, lkid = await blocked
    c.check(status_code == 0, f"EX on res1 granted after recovery (status {status_code})")
    await wait_until(lambda: any(isinstance(e, Gfs2Uevent) and e.get("RECOVERY") == "Done"
                                 and e.get("JID") == "1" for e in seen), STEP_TIMEOUT_S,
                     "gfs2 replayed node 2's journal")
    c.check(True, "gfs2 replayed node 2's journal (JID=1 RECOVERY=Done)")
    text = (MNT / "from-node2").read_text()
    c.check(text == "written by node 2 before its crash\n", f"node 2's file after recovery: {text!r}")
    (MNT / "after-crash").write_text("written by node 1 after recovery\n")
    c.check(await run_command(c, "sync") == 0, "GFS2 writable after recovery")
    await asyncio.to_thread(dlm.unlock, LS, lkid)
    await asyncio.to_thread(dlm.close)
    c.check(await run_command(c, "dlm_tool", "leave", LS) == 0, "node 1 left lab3")
    c.check(await run_command(c, "umount", str(MNT)) == 0, "umount")
    await wait_until(lambda: not any(SYSFS.iterdir()), 30.0, "lockspaces gone")
    await daemon.terminate(c)
    check_protocol(c, daemon.kernel_ops(), comms=[1, 2], removed=[2], lockspaces={
        ls: [*proto_join(ls, [1]), *proto_other_joined(ls, 2), *proto_other_removed(ls, 2),
             *proto_leave(ls, [1])]
        for ls in (LS, GFS)})


async def main(me: NodeId) -> int:
    c = Checks(me)
    daemon = Cmanlkd(me, corosync_conf(2, family=FAMILY, two_node=True, fencing=True,
                                       fence_blocks=fence_blocks()))
    watch = DlmUeventWatch()
    seen: list[object] = []
    recorder: asyncio.Task[None] | None = None
    dlm = Libdlm()
    try:
        await daemon.wait_configured(c, [1, 2])
        await asyncio.to_thread(ensure_module, "gfs2")
        wait_for_control_device()
        await watch.start()
        recorder = asyncio.create_task(record_uevents(watch, seen))
        await c.barrier("configured")
        await before_crash(c, dlm)
        if me == 2:
            crash_now(c)
        await after_crash(c, daemon, dlm, seen)
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
    FAMILY = 6 if sys.argv[2:] == ["ipv6"] else 4
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
