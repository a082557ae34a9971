"""Fixtures for system tests: real `cmanlkd` processes in network namespaces (see netns.py).

`cluster_factory(...)` builds a Cluster: a generated corosync.conf per node (small timers so a
test takes seconds), `start(n)`, `kill(n)`, `stop(n)` (SIGTERM), `status(n)` (the daemon's
<run_dir>/status.json) and bounded waits that fail with the tail of every daemon's log.
Everything is removed at the end of the test, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.netns import Lab, address

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.05
DEFAULT_CMANLK_EXTRA = "  dbus: no\n"
"""Daemons under test never touch the host's system bus unless a test gives them a private one."""


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "system tests need root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"system tests need {tool} (scripts/setup.sh installs it)"
    return None


class Cluster:
    """cmanlkd daemons on a Lab; nodes are numbered 1..n (node id = number)."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        nodes: list[int],
        *,
        family: str = "ipv4",
        token_ms: int = 300,
        listed: list[int] | None = None,
        bind_interface: bool = False,
        totem_extra: str = "",
        cmanlk_extra: dict[int, str] | None = None,
    ) -> None:
        self.lab = lab
        self.workdir = workdir
        self.nodes = nodes
        self.family = family
        self.token_ms = token_ms
        self.listed = listed or nodes
        self.bind_interface = bind_interface
        self.totem_extra = totem_extra
        self.cmanlk_extra = cmanlk_extra or {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for n in nodes:
            lab.add_node(n)
            self.write_config(n, self.listed)

    # -- configuration --------------------------------------------------------------------------
    def conf_path(self, node: int) -> Path:
        return self.workdir / f"node{node}.conf"

    def run_dir(self, node: int) -> Path:
        return self.workdir / f"run{node}"

    def state_dir(self, node: int) -> Path:
        return self.workdir / f"state{node}"

    def log_path(self, node: int) -> Path:
        return self.workdir / f"node{node}.log"

    def config_text(self, node: int, listed: list[int]) -> str:
        entries = "".join(
            f"  node {{\n    ring0_addr: {address(n, self.family)}\n    nodeid: {n}\n    name: n{n}\n  }}\n"
            for n in listed
        )
        interface = "  interface {\n    linknumber: 0\n    name: eth0\n  }\n" if self.bind_interface else ""
        return (
            "totem {\n  version: 2\n  cluster_name: systest\n  transport: udpu\n"
            f"  token: {self.token_ms}\n  token_coefficient: 0\n{self.totem_extra}{interface}}}\n"
            f"nodelist {{\n{entries}}}\n"
            "quorum {\n  provider: corosync_votequorum\n}\n"
            "logging {\n  to_stderr: yes\n  timestamp: hires\n}\n"
            f"cmanlk {{\n  state_dir: {self.state_dir(node)}\n  run_dir: {self.run_dir(node)}\n"
            f"{self.cmanlk_extra.get(node, DEFAULT_CMANLK_EXTRA)}}}\n"
        )

    def write_config(self, node: int, listed: list[int]) -> None:
        self.conf_path(node).write_text(self.config_text(node, listed))

    # -- processes -------------------------------------------------------------------------------
    def start(
        self, node: int, *extra: str, env_extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        status = self.run_dir(node) / "status.json"
        status.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env_extra or {})})
        cmd = [sys.executable, "-m", "cmanlk.daemon", "-f", "-c", str(self.conf_path(node)), *extra]
        proc = self.lab.popen(node, cmd, self.log_path(node), env)
        self.procs[node] = proc
        return proc

    def start_all(self) -> None:
        for n in self.nodes:
            self.start(n)

    def pid(self, node: int) -> int:
        """The daemon's own pid (the child of `ip netns exec`, which execs, so the same)."""
        return self.procs[node].pid

    def kill(self, node: int) -> None:
        """kill -9 the daemon and reap it."""
        proc = self.procs[node]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, node: int, timeout_s: float = 10.0) -> int:
        """SIGTERM; return the exit code."""
        proc = self.procs[node]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout_s)

    def signal(self, node: int, sig: int) -> None:
        self.procs[node].send_signal(sig)

    def alive(self, node: int) -> bool:
        return self.procs[node].poll() is None

    # -- observation -----------------------------------------------------------------------------
    def status(self, node: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self.run_dir(node) / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def members(self, node: int) -> list[int] | None:
        st = self.status(node)
        return None if st is None else list(st["members"])

    def ring(self, node: int) -> str | None:
        st = self.status(node)
        return None if st is None else str(st["ring_id"])

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll `predicate` every 50 ms; return the seconds it took, fail with the logs after timeout."""
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return time.monotonic() - start
            for n, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode not in (0, -9) and n in self.nodes:
                    pytest.fail(
                        f"cmanlkd node {n} exited with {proc.returncode} while waiting for {what}\n"
                        + self.logs()
                    )
            time.sleep(POLL_S)
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n" + self.describe() + self.logs())

    def wait_ring(self, nodes: list[int], members: list[int] | None = None, timeout_s: float = 15.0) -> float:
        """Wait until every node in `nodes` is in one ring whose members are `members` (default nodes)."""
        want = sorted(members if members is not None else nodes)

        def same_ring() -> bool:
            rings = {self.ring(n) for n in nodes}
            return len(rings) == 1 and all(self.members(n) == want for n in nodes)

        return self.wait_until(same_ring, timeout_s, f"nodes {nodes} in one ring of {want}")

    def describe(self) -> str:
        lines = []
        for n in self.nodes:
            st = self.status(n)
            if st:
                lines.append(f"node {n}: {st['state']} ring {st['ring_id']} members {st['members']}")
            else:
                lines.append(f"node {n}: no status")
        return "\n".join(lines) + "\n"

    def logs(self, tail: int = 40) -> str:
        out = []
        for n in self.nodes:
            try:
                text = self.log_path(n).read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                text = ["<no log>"]
            out.append(f"--- node {n} log (last {tail} lines) ---\n" + "\n".join(text))
        return "\n".join(out)


@pytest.fixture
def lab() -> Iterator[Lab]:
    why = _missing_requirements()
    if why:
        pytest.skip(why)
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def cluster_factory(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(nodes: list[int], **kwargs: Any) -> Cluster:
        cluster = Cluster(lab, tmp_path, nodes, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        for proc in cluster.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
