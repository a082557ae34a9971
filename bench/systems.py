"""The systems under test and how to configure and start them on a bench Lab.

A `System` is one daemon/transport pair: corosync 3 (Debian) with udpu or knet, cmanlkd with
udpu or its native multi-link transport ("knet" in corosync.conf). Both read the same
corosync.conf text except for the section that says where state lives, so token settings are equal
by construction.

Corosync keeps a fixed lock file (/run/corosync.pid) and one IPC name ("cpg", an abstract unix
socket, which is per network namespace). `ip netns exec` already runs its command in a private
mount namespace, so each corosync gets its own tmpfs on /run there; its state dir is per node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.netns import Lab, addr

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class System:
    """One daemon + transport pair under test."""

    name: str  # e.g. "corosync-udpu"
    daemon: str  # "corosync" | "cmanlk"
    transport: str  # "udpu" | "knet" (cmanlk: its native transport)
    client: str = "py"  # the bench's group client: "py" (bench/driver.py) or "c" (bench/cpgbench.c)

    @property
    def links(self) -> int:
        return 2 if self.transport == "knet" else 1


COROSYNC_UDPU = System("corosync-udpu", "corosync", "udpu")
COROSYNC_KNET = System("corosync-knet", "corosync", "knet")
CMANLK_UDPU = System("cmanlk-udpu", "cmanlk", "udpu")
CMANLK_NATIVE = System("cmanlk-native", "cmanlk", "knet")
ALL_SYSTEMS = (COROSYNC_UDPU, COROSYNC_KNET, CMANLK_UDPU, CMANLK_NATIVE)
# The systems of bench.run: each names the client that drives it. Corosync is driven by the C
# libcpg client (bench/cpgbench.c), cmanlk by its Python client and by the same C binary (cmanlkd
# serves libqb IPC). "corosync-py" is the old Python (ctypes) driver of corosync, kept labelled.
COROSYNC_C = System("corosync-c", "corosync", "udpu", "c")
COROSYNC_PY = System("corosync-py", "corosync", "udpu", "py")
CMANLK_PY = System("cmanlk-py", "cmanlk", "udpu", "py")
CMANLK_C = System("cmanlk-c", "cmanlk", "udpu", "c")
COROSYNC_KNET_C = System("corosync-knet-c", "corosync", "knet", "c")
CMANLK_NATIVE_PY = System("cmanlk-native-py", "cmanlk", "knet", "py")
CMANLK_NATIVE_C = System("cmanlk-native-c", "cmanlk", "knet", "c")
RUN_DEFAULT = (COROSYNC_C, CMANLK_PY, CMANLK_C, COROSYNC_KNET_C, CMANLK_NATIVE_PY, CMANLK_NATIVE_C)
RUN_SYSTEMS = (*RUN_DEFAULT, COROSYNC_PY)
RUN_QUICK = (COROSYNC_C, CMANLK_PY, CMANLK_C)
# The corosync system (always driven by the C client) each system of bench.run is compared against.
BASELINE = {
    CMANLK_PY.name: COROSYNC_C.name,
    CMANLK_C.name: COROSYNC_C.name,
    COROSYNC_PY.name: COROSYNC_C.name,
    CMANLK_NATIVE_PY.name: COROSYNC_KNET_C.name,
    CMANLK_NATIVE_C.name: COROSYNC_KNET_C.name,
}


def config_text(
    system: System, node: int, nodes: list[int], workdir: Path, token_ms: int, extra_totem: str = ""
) -> str:
    """Return corosync.conf for `node`; equal totem/nodelist text for both daemons."""
    totem = [
        "  version: 2",
        "  cluster_name: bench",
        f"  transport: {system.transport}",
        f"  token: {token_ms}",
        "  crypto_cipher: none",
        "  crypto_hash: none",
    ]
    if system.transport == "knet":
        totem.append("  link_mode: passive")
        # Link 0 preferred: the failover measurement pulls its cable.
        totem.append("  interface {\n    linknumber: 0\n    knet_link_priority: 2\n  }")
        totem.append("  interface {\n    linknumber: 1\n    knet_link_priority: 1\n  }")
    if extra_totem:
        totem.append(extra_totem)
    entries = []
    for n in nodes:
        rings = "".join(f"    ring{lk}_addr: {addr(n, lk)}\n" for lk in range(system.links))
        entries.append(f"  node {{\n{rings}    nodeid: {n}\n    name: n{n}\n  }}\n")
    state = workdir / f"state{node}"
    text = (
        "totem {\n" + "\n".join(totem) + "\n}\n"
        "nodelist {\n" + "".join(entries) + "}\n"
        "quorum {\n  provider: corosync_votequorum\n}\n"
        "logging {\n  to_stderr: yes\n  to_syslog: no\n  to_logfile: no\n  timestamp: hires\n}\n"
    )
    if system.daemon == "corosync":
        text += f"system {{\n  state_dir: {state}\n}}\n"
    else:
        text += f"cmanlk {{\n  state_dir: {state}\n  run_dir: {run_dir(workdir, node)}\n  dbus: no\n}}\n"
    return text


def run_dir(workdir: Path, node: int) -> Path:
    return workdir / f"run{node}"


def python_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    return env


def start_daemon(lab: Lab, system: System, node: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Start the daemon of `node` (config must be written); its pid is the daemon's own."""
    conf = workdir / f"node{node}.conf"
    (workdir / f"state{node}").mkdir(exist_ok=True)
    log = workdir / f"node{node}.log"
    if system.daemon == "corosync":
        cmd = ["sh", "-c", f"mount -t tmpfs bench /run && exec corosync -f -c {conf}"]
        return lab.popen(node, cmd, log)
    cmd = [sys.executable, "-m", "cmanlk.daemon", "-f", "-c", str(conf), "--nodeid", str(node)]
    return lab.popen(node, cmd, log, env=python_env())


def write_config(
    system: System, node: int, nodes: list[int], workdir: Path, token_ms: int, extra_totem: str = ""
) -> None:
    (workdir / f"node{node}.conf").write_text(
        config_text(system, node, nodes, workdir, token_ms, extra_totem)
    )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 the daemon and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (all threads), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds on CPU of every thread of `pid` (schedstat: finer than utime+stime's ticks)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended
    except OSError:
        return None
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB; empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out
