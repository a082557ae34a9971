#!/usr/bin/env python3
"""Guest side of scenario "cmanlkd-dlm": two VMs run the real cmanlkd (udpu on the lab bridge)
instead of corosync + dlm_controld; cmanlkd's own DLM companion (cmanlk.runtime.dlmd) answers
`dlm_tool join`, and a lock conflict crosses the two kernels.

Each VM writes a corosync.conf (udpu, no crypto, token 5000 as the lab uses under TCG) with
`cmanlk { dlm: yes }`, starts `python3 -m cmanlk.daemon -f` from the shared checkout with the
host venv's site-packages on PYTHONPATH, and waits until `cmanlk-tool dlm` reports the kernel
cluster configured (quorate ring of both nodes). Node 1 joins lockspace lab5, then node 2; both
kernels list nodes 1 and 2; node 1 holds EX on res1, node 2's NOQUEUE EX gets EAGAIN, and is
granted after node 1 unlocks. Both leave, `cmanlk-tool --json dlm` shows no lockspace, SIGTERM
stops cmanlkd, which removes comms and cluster from configfs.
Usage: cmanlkd_dlm.py NODEID
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout: cmanlk, kernel_glue
sys.path.insert(0, str(Path(__file__).resolve().parent))  # guestlib

from guestlib import Checks, Libdlm, run_command, wait_for_control_device, wait_until

from cmanlk.types import NodeId

CHECKOUT = Path(__file__).resolve().parents[3]

LS = "lab5"
EAGAIN = 11
CONFIGFS = Path("/sys/kernel/config/dlm")
RUN_DIR = "/run/cmanlk"
SOCKET = f"{RUN_DIR}/cmanlk.sock"
START_TIMEOUT_S = 90.0
"""cmanlkd start (Python imports under TCG) + ring formation with token 5000 + quorum."""

CONF = """totem {{
  version: 2
  cluster_name: cmk
  transport: udpu
  token: 5000
}}
nodelist {{
  node {{
    ring0_addr: 10.213.9.1
    nodeid: 1
    name: cmkvm1
  }}
  node {{
    ring0_addr: 10.213.9.2
    nodeid: 2
    name: cmkvm2
  }}
}}
quorum {{
  provider: corosync_votequorum
}}
logging {{
  to_stderr: yes
  debug: off
}}
cmanlk {{
  state_dir: /var/lib/cmanlk
  run_dir: {run_dir}
  dbus: no
  dlm: yes
  dlm_fencing: no
}}
"""


def env() -> dict[str, str]:
    site = CHECKOUT / ".venv" / "lib" / "python3.11" / "site-packages"
    return {**os.environ, "PYTHONPATH": f"{CHECKOUT}:{site}", "PYTHONDONTWRITEBYTECODE": "1"}


def tool(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "cmanlk.cli", "-s", SOCKET, *args], env=env(),
                          capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout + done.stderr


def dlm_status() -> dict[str, object]:
    from cmanlk.client import Client

    with Client.connect(SOCKET) as c:
        return c.dlm()


def cluster_configured() -> bool:
    try:
        cluster = dlm_status().get("cluster")
    except Exception:  # not listening yet (the daemon is still importing): keep waiting
        return False
    return isinstance(cluster, dict) and bool(cluster.get("configured")) and cluster.get("members") == [1, 2]


def start_daemon(me: NodeId) -> subprocess.Popen[bytes]:
    """Start cmanlkd in the foreground, its log in /out/cmanlkd.log."""
    conf = Path("/tmp/cmanlk.conf")
    conf.write_text(CONF.format(run_dir=RUN_DIR))
    with open("/out/cmanlkd.log", "wb") as logf:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "cmanlk.daemon", "-f", "-c", str(conf),
                                 "--nodeid", str(me)], env=env(), stdout=logf, stderr=subprocess.STDOUT)


def configfs_top() -> list[str]:
    return sorted(p.name for p in CONFIGFS.iterdir())


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait(10)
    print(Path("/out/cmanlkd.log").read_text(errors="replace")[-4000:], flush=True)


async def main(me: NodeId, daemon: subprocess.Popen[bytes], t0: float) -> int:
    s = Checks(me)
    dlm = Libdlm()
    try:
        await wait_until(cluster_configured, START_TIMEOUT_S, "cmanlkd: kernel DLM cluster configured")
        s.say(f"cmanlkd configured the kernel DLM after {time.monotonic() - t0:.1f}s")
        s.check((CONFIGFS / "cluster/cluster_name").read_text().strip() == "cmk", "cluster_name written")
        comms = sorted(p.name for p in (CONFIGFS / "cluster/comms").iterdir())
        s.check(comms == ["1", "2"], f"comms {comms}")
        wait_for_control_device()
        await s.barrier("configured")
        if me == 1:
            t = time.monotonic()
            s.check(await run_command(s, "dlm_tool", "join", LS) == 0, "node 1 joined alone")
            s.say(f"join took {time.monotonic() - t:.2f}s")
        await s.barrier("joined1")
        if me == 2:
            t = time.monotonic()
            s.check(await run_command(s, "dlm_tool", "join", LS) == 0, "node 2 joined beside node 1")
            s.say(f"join took {time.monotonic() - t:.2f}s")
        await s.barrier("joined2")
        nodes_dir = CONFIGFS / f"cluster/spaces/{LS}/nodes"
        await wait_until(lambda: sorted(p.name for p in nodes_dir.iterdir()) == ["1", "2"], 10,
                         "both nodes in the kernel lockspace")
        s.check(True, "kernel lockspace nodes [1, 2]")
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
        code, out = tool("--json", "dlm")
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
        code, out = tool("--json", "dlm")
        s.check(code == 0 and json.loads(out)["lockspaces"] == [], f"no lockspace left: {out.strip()[:200]}")
        daemon.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(daemon.wait, 30)
        s.check(rc == 0, f"cmanlkd exited {rc} after SIGTERM")
        left = await asyncio.to_thread(configfs_top)
        s.check(left == [], f"cmanlkd removed its configfs cluster: {left}")
    except TimeoutError as exc:
        s.check(False, f"timed out: {exc}")
    finally:
        await asyncio.to_thread(stop_daemon, daemon)
    s.say("PASS" if not s.failures else f"FAILED: {s.failures}")
    return 1 if s.failures else 0


if __name__ == "__main__":
    me = NodeId(int(sys.argv[1]))
    started = time.monotonic()
    sys.exit(asyncio.run(main(me, start_daemon(me), started)))
