#!/usr/bin/env python3
"""Guest side of scenario "three-node-crash": three VMs run cmanlkd, node 3 hard-resets holding a
lock, and the two survivors wait for an administrator's fence acknowledgement before recovering.

Fencing is on (`dlm_fencing: yes`) but no fence device is configured, so only
`cmanlk-tool fence-ack 3` can fence node 3 (dlm_controld's `dlm_tool fence_ack`). Nodes 1, 2, 3
join lockspace lab4 in turn (each join makes the members stop, add the newcomer and start); node
3 takes EX on res1 and hard-resets (sysrq b). Nodes 1 and 2 (quorate: 2 of 3 votes):
- cmanlkd drops node 3 (comms/3 removed), lab4 is stopped and waits for "fencing of node 3";
  `cmanlk-tool --json dlm` lists node 3 among the nodes waiting for fencing, with no device;
- node 2's NOQUEUE EX on res1 blocks;
- node 1 runs `cmanlk-tool fence-ack 3`; both survivors remove nodes/3 and restart; node 2's
  blocked request is granted (the dead node's lock is gone).
Nodes 2 and 1 leave; SIGTERM; the configfs/sysfs writes match dlm_controld's 3-node crash trace.
Usage: three_node_crash.py NODEID
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
    proto_join,
    proto_leave,
    proto_other_joined,
    proto_other_removed,
    run_command,
    wait_for_control_device,
    wait_until,
)

from cmanlk.types import NodeId

LS = "lab4"
N = 3
NODES_DIR = CONFIGFS / f"cluster/spaces/{LS}/nodes"


def kernel_nodes() -> list[str]:
    return sorted(p.name for p in NODES_DIR.iterdir()) if NODES_DIR.exists() else []


def waiting(daemon: Cmanlkd) -> list[str]:
    try:
        return next((ls["waiting_for"] for ls in daemon.dlm()["lockspaces"] if ls["name"] == LS), [])
    except Exception:  # a reply while the daemon is busy: ask again
        return []


async def after_crash(c: Checks, daemon: Cmanlkd, dlm: Libdlm) -> None:
    c.nodes = 2
    await wait_until(lambda: (LAB / "crashing.3").exists(), BARRIER_TIMEOUT_S, "node 3's crash")
    t_crash = time.monotonic()
    await wait_until(lambda: "fencing of node 3" in waiting(daemon), STEP_TIMEOUT_S,
                     "lab4 waits for the fencing of node 3")
    c.say(f"lab4 waits for fencing of node 3, {time.monotonic() - t_crash:.1f}s after the crash")
    c.check(not (CONFIGFS / "cluster/comms/3").exists(), "comms/3 removed")
    code, out = daemon.tool("--json", "dlm")
    body: dict[str, Any] = json.loads(out) if code == 0 else {}
    fencing: dict[str, Any] = body.get("fencing", {})
    v: dict[str, Any] = next((v for v in fencing.get("victims", []) if v["nodeid"] == 3), {})
    c.check(fencing.get("waiting") == [3] and v.get("has_device") is False and v.get("state") == "waiting",
            f"cmanlk-tool --json dlm: node 3 waits for fencing, no device: {fencing}")
    ls: dict[str, Any] = next((ls for ls in body.get("lockspaces", []) if ls["name"] == LS), {})
    c.check(ls.get("stopped") is True and ls.get("members") == [1, 2], f"lab4 stopped, members [1, 2]: {ls}")
    c.check(kernel_nodes() == ["1", "2", "3"], f"nodes/3 kept until fenced: {kernel_nodes()}")
    blocked = None
    if c.me == 2:
        blocked = asyncio.create_task(asyncio.to_thread(dlm.try_lock, LS, b"res1"))
        await asyncio.sleep(1.0)
        c.check(not blocked.done(), "a lock request blocks while node 3 is unfenced")
    await c.barrier("blocked")
    if c.me == 1:
        code, out = daemon.tool("fence-ack", "3")
        c.check(code == 0, f"cmanlk-tool fence-ack 3 -> {code}: {out.strip()}")
    await wait_until(lambda: kernel_nodes() == ["1", "2"], STEP_TIMEOUT_S, "node 3 removed after the ack")
    c.check(True, f"recovered without node 3, {time.monotonic() - t_crash:.1f}s after the crash")
    if blocked is not None:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            status, lkid = await blocked
        c.check(status == 0, f"EX on res1 granted after node 3's fencing was acknowledged (status {status})")
        await asyncio.to_thread(dlm.unlock, LS, lkid)
    await asyncio.to_thread(dlm.close)
    await c.barrier("locked")
    for turn in (2, 1):
        if c.me == turn:
            c.check(await run_command(c, "dlm_tool", "leave", LS) == 0, f"node {turn} left")
        await c.barrier(f"left{turn}")
    await daemon.terminate(c)
    if c.me == 1:
        lockspace = [*proto_join(LS, [1]), *proto_other_joined(LS, 2), *proto_other_joined(LS, 3),
                     *proto_other_removed(LS, 3), *proto_other_removed(LS, 2), *proto_leave(LS, [1])]
    else:
        lockspace = [*proto_join(LS, [1, 2]), *proto_other_joined(LS, 3), *proto_other_removed(LS, 3),
                     *proto_leave(LS, [1, 2])]
    check_protocol(c, daemon.kernel_ops(), comms=[1, 2, 3], removed=[3], lockspaces={LS: lockspace})


async def main(me: NodeId) -> int:
    c = Checks(me, nodes=N)
    daemon = Cmanlkd(me, corosync_conf(N, fencing=True))
    dlm = Libdlm()
    try:
        await daemon.wait_configured(c, [1, 2, 3])
        wait_for_control_device()
        await c.barrier("configured")
        for turn in range(1, N + 1):
            if me == turn:
                c.check(await run_command(c, "dlm_tool", "join", LS) == 0, f"node {me} joined")
            await c.barrier(f"joined{turn}")
        await wait_until(lambda: kernel_nodes() == ["1", "2", "3"], 30.0, "all three in the kernel lockspace")
        if me == 3:
            status, _ = await asyncio.to_thread(dlm.try_lock, LS, b"res1")
            c.check(status == 0, f"node 3 holds EX on res1 (status {status})")
        await c.barrier("held")
        if me == 3:
            crash_now(c)
        await after_crash(c, daemon, dlm)
    except TimeoutError as exc:
        c.check(False, f"timed out: {exc}")
    finally:
        await asyncio.to_thread(daemon.stop)
    return finish(c)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
