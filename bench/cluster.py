"""An N-node cluster of one System on a bench Lab, with one group-client driver per node.

Shared by bench/run.py, bench/scale.py and bench/chaos.py. Everything it starts belongs to the Lab,
so leaving the Lab's `with` block removes it all.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import systems
from bench.netns import Lab
from bench.systems import System

CONNECT_TIMEOUT_S = 60.0  # a daemon that takes longer to accept clients is broken
CONNECT_RETRY_S = 0.05


class DriverError(RuntimeError):
    """A driver died, timed out or answered ok=false."""


class DriverHandle:
    """The orchestrator's end of one bench/driver.py process (JSON lines over pipes)."""

    def __init__(self, node: int, proc: subprocess.Popen[bytes]) -> None:
        self.node = node
        self.proc = proc
        self._buf = b""

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise DriverError(f"driver {self.node} is gone") from exc

    def recv(self, timeout_s: float) -> dict[str, Any]:
        """Return the next answer; raise DriverError after `timeout_s` or if the driver exited."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError(f"driver {self.node}: no answer within {timeout_s} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = self.proc.stdout.read1(1 << 20)  # type: ignore[attr-defined]
                if not chunk:
                    raise DriverError(f"driver {self.node} exited ({self.proc.poll()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, cmd: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        self.send(cmd)
        return self.recv(timeout_s)


class BenchCluster:
    """Daemons and drivers of `system` on nodes 1..n of `lab` (the lab must have system.links links).

    `per_node` runs some nodes on another system of the same transport (a mixed ring: Debian's
    corosync on some nodes, cmanlkd on the others, each node's driver with its daemon's client
    library); the others run `system`.
    """

    def __init__(
        self,
        lab: Lab,
        system: System,
        nodes: list[int],
        workdir: Path,
        token_ms: int,
        extra_totem: str = "",
        cbin: Path | None = None,
        per_node: dict[int, System] | None = None,
    ) -> None:
        self.lab = lab
        self.cbin = cbin  # the C client (bench/cpgbench.c) when system.client is "c"
        self.system = system
        self.nodes = list(nodes)
        self.workdir = workdir
        self.token_ms = token_ms
        self.per_node = dict(per_node or {})
        if any(s.transport != system.transport for s in self.per_node.values()):
            raise ValueError("a mixed ring needs one transport on every node")
        self.daemons: dict[int, subprocess.Popen[bytes]] = {}
        self.drivers: dict[int, DriverHandle] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        for n in nodes:
            lab.add_node(n)
            systems.write_config(self.system_of(n), n, nodes, workdir, token_ms, extra_totem)

    def system_of(self, node: int) -> System:
        """The system `node` runs."""
        return self.per_node.get(node, self.system)

    # -- daemons ---------------------------------------------------------------------------------
    def start(self, node: int) -> int:
        """Start node's daemon; return the monotonic ns just before the spawn."""
        t = time.monotonic_ns()
        self.daemons[node] = systems.start_daemon(self.lab, self.system_of(node), node, self.workdir)
        return t

    def kill(self, node: int) -> int:
        """kill -9 node's daemon; return the monotonic ns just before the signal."""
        t = time.monotonic_ns()
        systems.kill9(self.daemons[node])
        return t

    def alive(self, node: int) -> bool:
        proc = self.daemons.get(node)
        return proc is not None and proc.poll() is None

    def pid(self, node: int) -> int:
        return self.daemons[node].pid

    # -- drivers ---------------------------------------------------------------------------------
    def start_driver(self, node: int) -> DriverHandle:
        daemon = self.system_of(node).daemon
        cmd = [sys.executable, "-m", "bench.driver", "--backend", daemon]
        if daemon == "cmanlk":
            cmd += ["--socket", str(systems.run_dir(self.workdir, node) / "cmanlk.sock")]
        if self.system_of(node).client == "c":
            if self.cbin is None:
                raise DriverError(f"{self.system_of(node).name} needs the C client (bench/cbuild.py)")
            cmd += ["--cbin", str(self.cbin)]
        proc = self.lab.popen(
            node, cmd, self.workdir / f"driver{node}.log", env=systems.python_env(), pipes=True
        )
        handle = DriverHandle(node, proc)
        self.drivers[node] = handle
        return handle

    def connect(self, node: int, timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
        """Connect node's driver to its daemon, retrying while the daemon starts up."""
        drv = self.drivers.get(node) or self.start_driver(node)
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = drv.call({"op": "connect"})
            if last.get("ok"):
                return last
            if not self.alive(node):
                raise DriverError(
                    f"node {node}: daemon exited ({self.daemons[node].poll()}):\n{self.log_tail(node)}"
                )
            time.sleep(CONNECT_RETRY_S)
        raise DriverError(
            f"node {node}: could not connect within {timeout_s} s: {last}\n{self.log_tail(node)}"
        )

    def wait_members(
        self, nodes: list[int], members: list[int], since: int, timeout_s: float
    ) -> dict[int, int]:
        """Wait until every driver of `nodes` saw a configuration of exactly `members` after `since`.

        Returns node → monotonic ns of that configuration change. Raises DriverError on timeout.
        """
        for n in nodes:
            self.drivers[n].send(
                {"op": "wait_members", "members": members, "since": since, "timeout": timeout_s}
            )
        out: dict[int, int] = {}
        errors = []
        for n in nodes:
            ans = self.drivers[n].recv(timeout_s + 10)
            if ans.get("ok"):
                out[n] = int(ans["t"])
            else:
                errors.append(f"node {n}: {ans}")
        if errors:
            raise DriverError(f"members {members} not seen: " + "; ".join(errors) + "\n" + self.describe())
        return out

    def up(self, timeout_s: float = 60.0) -> float:
        """Start every daemon and driver, wait until every client sees the full ring; return seconds."""
        t0 = time.monotonic_ns()
        for n in self.nodes:
            self.start(n)
        for n in self.nodes:
            self.start_driver(n)
        for n in self.nodes:
            self.connect(n)
        self.wait_members(self.nodes, self.nodes, 0, timeout_s)
        return (time.monotonic_ns() - t0) / 1e9

    def call_all(self, nodes: list[int], cmd: dict[str, Any], timeout_s: float) -> dict[int, dict[str, Any]]:
        """Send `cmd` to the drivers of `nodes` at once, then collect every answer."""
        for n in nodes:
            self.drivers[n].send(cmd)
        return {n: self.drivers[n].recv(timeout_s) for n in nodes}

    # -- diagnostics -------------------------------------------------------------------------------
    def log_tail(self, node: int, lines: int = 25) -> str:
        try:
            text = (self.workdir / f"node{node}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return f"--- node {node} log ---\n" + "\n".join(text[-lines:])

    def describe(self) -> str:
        return "\n".join(self.log_tail(n, 8) for n in self.nodes)
