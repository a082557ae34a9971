#!/usr/bin/env python3
"""Guest side of scenarios "cmanlkd-dlm" and "two-node-ipv6": two VMs run the real cmanlkd (udpu
on the lab bridge) instead of corosync + dlm_controld; its DLM companion (cmanlk.runtime.dlmd)
answers `dlm_tool join`, and a lock conflict crosses the two kernels.

Each VM writes a corosync.conf (guestlib.corosync_conf: udpu, token 5000 as the lab uses under
TCG, `cmanlk { dlm: yes }`), starts cmanlkd from the shared checkout and waits until it reports
the kernel cluster configured (quorate ring of both nodes). Node 1 joins lockspace lab5, then
node 2; both kernels list nodes 1 and 2; node 1 holds EX on res1, node 2's NOQUEUE EX gets
EAGAIN, and is granted after node 1 unlocks. Both leave, `cmanlk-tool --json dlm` shows no
lockspace, SIGTERM stops cmanlkd, which removes comms and cluster from configfs. The configfs/
sysfs writes cmanlkd made are compared with dlm_controld's (guestlib.check_protocol).
With "ipv6" the ring runs over the IPv6 ULAs and the kernels connect with sockaddr_in6 comms.
Usage: cmanlkd_dlm.py NODEID [ipv6]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import (
    CONFIGFS,
    Checks,
    Cmanlkd,
    Libdlm,
    check_protocol,
    corosync_conf,
    finish,
    lock_conflict,
    proto_join,
    proto_leave,
    proto_other_joined,
    proto_other_removed,
    run_command,
    wait_for_control_device,
    wait_until,
)

from cmanlk.types import NodeId

LS = "lab5"


async def main(me: NodeId, family: int) -> int:
    s = Checks(me)
    daemon = Cmanlkd(me, corosync_conf(2, family=family))
    dlm = Libdlm()
    try:
        await daemon.wait_configured(s, [1, 2])
        s.check((CONFIGFS / "cluster/cluster_name").read_text().strip() == "cmk", "cluster_name written")
        comms = sorted(p.name for p in (CONFIGFS / "cluster/comms").iterdir())
        s.check(comms == ["1", "2"], f"comms {comms}")
        addr_list = (CONFIGFS / "cluster/comms/2/addr_list").read_text()
        s.check(addr_list.startswith("AF_INET6\t" if family == 6 else "AF_INET\t"), f"comms/2 {addr_list!r}")
        wait_for_control_device()
        await s.barrier("configured")
        for turn in (1, 2):
            if me == turn:
                t = time.monotonic()
                s.check(await run_command(s, "dlm_tool", "join", LS) == 0, f"node {me} joined")
                s.say(f"join took {time.monotonic() - t:.2f}s")
            await s.barrier(f"joined{turn}")
        nodes_dir = CONFIGFS / f"cluster/spaces/{LS}/nodes"
        await wait_until(lambda: sorted(p.name for p in nodes_dir.iterdir()) == ["1", "2"], 10,
                         "both nodes in the kernel lockspace")
        s.check(True, "kernel lockspace nodes [1, 2]")
        await lock_conflict(s, dlm, me, LS)
        code, out = daemon.tool("--json", "dlm")
        s.check(code == 0 and any(ls["name"] == LS for ls in json.loads(out)["lockspaces"]),
                f"cmanlk-tool --json dlm lists {LS}: {out.strip()[:300]}")
        await s.barrier("locksdone")
        if me == 2:
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 2 left")
        await s.barrier("left2")
        if me == 1:
            await wait_until(lambda: sorted(p.name for p in nodes_dir.iterdir()) == ["1"], 10,
                             "node 1 removed node 2 from the lockspace")
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 1 left")
        await s.barrier("left1")
        left = daemon.dlm()["lockspaces"]
        s.check(left == [], f"no lockspace left: {left}")
        await daemon.terminate(s)
        if me == 1:
            lockspace = (proto_join(LS, [1]) + proto_other_joined(LS, 2) + proto_other_removed(LS, 2)
                         + proto_leave(LS, [1]))
        else:
            lockspace = proto_join(LS, [1, 2]) + proto_leave(LS, [1, 2])
        check_protocol(s, daemon.kernel_ops(), comms=[1, 2], removed=[], lockspaces={LS: lockspace})
    except TimeoutError as exc:
        s.check(False, f"timed out: {exc}")
    finally:
        await asyncio.to_thread(daemon.stop)
    return finish(s)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])), 6 if sys.argv[2:] == ["ipv6"] else 4)))
