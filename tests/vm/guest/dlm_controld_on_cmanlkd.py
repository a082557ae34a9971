#!/usr/bin/env python3
"""Guest side of scenario "dlm-controld": Debian's dlm_controld 4.2, unchanged, on cmanlkd.

Each VM starts cmanlkd (udpu on the lab bridge, `cmanlk { dlm: no }`: cmanlkd does not drive the
DLM itself) and waits for a quorate ring of both nodes, which `corosync-quorumtool -s` reads over
cmanlkd's libqb IPC. Then Debian's dlm_controld runs on it (fencing off: no fence device) and
finds through libcmap, libcfg, libquorum and libcpg what it finds on corosync: the cluster name,
the nodes and their addresses, quorum, its "dlm:controld" group. It configures the kernel
(configfs cluster and comms); node 1 joins lockspace lab6 with dlm_tool, then node 2 (dlm_controld
runs the "dlm:ls:lab6" group over cmanlkd's cpg); both kernels list nodes 1 and 2; node 1 holds EX
on res1, node 2's NOQUEUE EX gets EAGAIN and is granted after node 1 unlocks. corosync-cpgtool
shows dlm_controld's groups. Both leave; SIGTERM stops dlm_controld (it removes the configfs
cluster) and then cmanlkd.
Usage: dlm_controld_on_cmanlkd.py NODEID
"""

from __future__ import annotations

import asyncio
import subprocess
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
    corosync_conf,
    finish,
    lock_conflict,
    run_command,
    wait_for_control_device,
    wait_until,
)

from cmanlk.types import NodeId

LS = "lab6"
DLMC_LOG = Path("/out/dlm_controld.log")
START_S = 240.0


def _ok(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def _out(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


def _start_dlm_controld() -> subprocess.Popen[bytes]:
    """Debian's dlm_controld in the foreground, fencing off, debug log in /out/dlm_controld.log."""
    with open(DLMC_LOG, "wb") as logf:  # the child keeps its own descriptor
        argv = ["dlm_controld", "--foreground", "1", "--enable_fencing", "0", "--daemon_debug", "1",
                "--log_debug", "1"]  # fmt: skip
        return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)


def _log_tail() -> str:
    return DLMC_LOG.read_text(errors="replace")[-4000:] if DLMC_LOG.exists() else ""


def _kernel_nodes() -> list[str]:
    nodes = CONFIGFS / f"cluster/spaces/{LS}/nodes"
    return sorted(p.name for p in nodes.iterdir()) if nodes.is_dir() else []


async def main(me: NodeId) -> int:
    s = Checks(me)
    for module in ("configfs", "dlm"):
        s.check(await run_command(s, "modprobe", module) == 0, f"modprobe {module}")
    if not _ok("mountpoint", "-q", "/sys/kernel/config"):
        mounted = await run_command(s, "mount", "-t", "configfs", "none", "/sys/kernel/config")
        s.check(mounted == 0, "configfs mounted")
    daemon = Cmanlkd(me, corosync_conf(2, dlm="no"))
    dlmc: subprocess.Popen[bytes] | None = None
    dlm = Libdlm()
    try:
        await wait_until(lambda: _ok("corosync-quorumtool", "-s"), START_S, "quorate (corosync-quorumtool)")
        s.say(f"cmanlkd quorate after {time.monotonic() - daemon.t0:.1f}s")
        quorum = _out("corosync-quorumtool", "-s")
        s.check("Quorate:          Yes" in quorum and "Nodes:            2" in quorum, quorum[-400:])
        await s.barrier("ring")
        t = time.monotonic()
        dlmc = await asyncio.to_thread(_start_dlm_controld)
        # dlm_tool status exits 0 even when it cannot connect: wait for its real answer
        await wait_until(lambda: "cluster nodeid" in _out("dlm_tool", "status"), START_S, "dlm_controld up")
        s.say(f"dlm_controld up after {time.monotonic() - t:.1f}s")
        await wait_until(lambda: "quorate 1" in _out("dlm_tool", "status"), 60, "dlm_controld sees quorum")
        status = _out("dlm_tool", "status")
        s.check(f"cluster nodeid {me} quorate 1" in status, f"dlm_tool status: {status.strip()[:300]}")
        await wait_until(lambda: (CONFIGFS / "cluster/comms").is_dir()
                         and sorted(p.name for p in (CONFIGFS / "cluster/comms").iterdir()) == ["1", "2"],
                         60, "dlm_controld wrote comms 1 and 2")  # fmt: skip
        name = (CONFIGFS / "cluster/cluster_name").read_text().strip()
        s.check(name == "cmk", f"dlm_controld wrote cluster_name {name!r} (from cmap totem.cluster_name)")
        addr_list = (CONFIGFS / f"cluster/comms/{3 - me}/addr_list").read_text()
        s.check(addr_list.startswith("AF_INET\t"), f"comms/{3 - me} addr_list {addr_list!r}")
        wait_for_control_device()
        await s.barrier("dlmup")
        for turn in (1, 2):
            if me == turn:
                t = time.monotonic()
                s.check(await run_command(s, "dlm_tool", "join", LS) == 0, f"node {me} joined {LS}")
                s.say(f"join took {time.monotonic() - t:.2f}s")
            await s.barrier(f"joined{turn}")
        await wait_until(lambda: _kernel_nodes() == ["1", "2"], 30, "both nodes in the kernel lockspace")
        s.check(True, "kernel lockspace nodes [1, 2]")
        groups = _out("corosync-cpgtool", "-e")
        found = "dlm:controld" in groups and f"dlm:ls:{LS}" in groups
        s.check(found, f"corosync-cpgtool -e: {groups.strip()[:400]}")
        await lock_conflict(s, dlm, me, LS)
        s.say("dlm_tool ls: " + _out("dlm_tool", "ls").strip()[:400])
        await s.barrier("locksdone")
        if me == 2:
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 2 left")
        await s.barrier("left2")
        if me == 1:
            await wait_until(lambda: _kernel_nodes() == ["1"], 30, "node 1's kernel dropped node 2")
            s.check(await run_command(s, "dlm_tool", "leave", LS) == 0, "node 1 left")
        await s.barrier("left1")
        dlmc.terminate()
        rc = await asyncio.to_thread(dlmc.wait, 30)
        s.check(rc == 0, f"dlm_controld exited {rc} after SIGTERM")
        await s.barrier("dlmdown")
        await daemon.terminate(s)
    except TimeoutError as exc:
        s.check(False, f"timed out: {exc}")
    finally:
        if dlmc is not None and dlmc.poll() is None:
            dlmc.kill()
            dlmc.wait(10)
        print(await asyncio.to_thread(_log_tail), flush=True)
        await asyncio.to_thread(daemon.stop)
    return finish(s)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(NodeId(int(sys.argv[1])))))
