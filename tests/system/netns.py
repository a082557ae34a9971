"""A private network of network namespaces for cmanlkd system tests.

Layout: one "switch" namespace holding bridge br0; per node a namespace with `eth0`, a veth
whose peer is plugged into br0. Each node gets IPv4 10.77.0.N/24, IPv6 ULA fd77::N/64 and the
link-local fe80::N/64 (all without DAD, so they are usable at once). Extra "outsider" namespaces
(an attacker, a node that is in nobody's nodelist) are plugged in the same way.

Faults are nftables rules inside one node's namespace (table `inet cmk`): a partition drops
traffic to and from given addresses; loss drops a random share of incoming packets with
`numgen random mod 100 < N`.

Cleanup is guaranteed: `Lab` is a context manager; `destroy()` kills every process started
through it and deletes every namespace it created (deleting a namespace removes its veths and
its nftables tables); `reap_stale()` removes namespaces of earlier runs whose pid is gone.
Names are `cmk<pid>d…` so concurrent runs never collide.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CMD_TIMEOUT_S = 15


def sh(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (bounded in time); raise CalledProcessError with its stderr when check fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=input_text)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


def ipv4(node: int) -> str:
    return f"10.77.0.{node}"


def ipv6(node: int) -> str:
    return f"fd77::{node:x}"


def link_local(node: int) -> str:
    return f"fe80::{node:x}"


def address(node: int, family: str) -> str:
    """The nodelist address of `node` for family "ipv4", "ipv6" or "link-local" (with %eth0)."""
    if family == "ipv4":
        return ipv4(node)
    if family == "ipv6":
        return ipv6(node)
    return f"{link_local(node)}%eth0"


def reap_stale() -> None:
    """Delete namespaces named cmk<pid>d… whose creating process no longer exists."""
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^cmk(\d+)d", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Lab:
    """The private network; see the module docstring. Use as a context manager."""

    prefix: str = field(default_factory=lambda: f"cmk{os.getpid()}d")
    created: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = self.prefix + f"{int(time.monotonic() * 1000) % 100000}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def ns(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def __enter__(self) -> Lab:
        reap_stale()
        try:
            self._add_namespace(self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            # The bridge forwards at once (no STP listening delay) and does not filter multicast.
            sh("ip", "-n", self.switch, "link", "set", "br0", "type", "bridge", "forward_delay", "0")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def add_node(self, node: int) -> str:
        """Create node `node`'s namespace, NIC eth0 and its three addresses; return the namespace."""
        name = self.ns(node)
        self._add_namespace(name)
        port = f"p{node}"
        sh(
            "ip",
            "-n",
            name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.switch,
        )
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "addr", "add", f"{ipv4(node)}/24", "dev", "eth0")
        sh("ip", "-n", name, "addr", "add", f"{ipv6(node)}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", name, "addr", "add", f"{link_local(node)}/64", "dev", "eth0", "nodad")
        return name

    def run(self, node: int, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command inside node's namespace."""
        return sh("ip", "netns", "exec", self.ns(node), *cmd, check=check)

    def popen(
        self, node: int, cmd: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in node's namespace, stdout+stderr to `log`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    # -- faults ---------------------------------------------------------------------------------
    def partition(self, node: int, peers: list[int]) -> None:
        """Drop every packet between `node` and `peers` (all their addresses), both directions."""
        v4 = ", ".join(ipv4(p) for p in peers)
        v6 = ", ".join(f"{ipv6(p)}, {link_local(p)}" for p in peers)
        self._nft(
            node,
            f"add rule inet cmk input ip saddr {{ {v4} }} drop\n"
            f"add rule inet cmk input ip6 saddr {{ {v6} }} drop\n"
            f"add rule inet cmk output ip daddr {{ {v4} }} drop\n"
            f"add rule inet cmk output ip6 daddr {{ {v6} }} drop\n",
        )

    def loss(self, node: int, percent: int) -> None:
        """Drop `percent` % of the UDP packets `node` receives, at random."""
        self._nft(node, f"add rule inet cmk input meta l4proto udp numgen random mod 100 < {percent} drop\n")

    def heal(self, node: int) -> None:
        """Remove every fault rule of `node`."""
        sh("ip", "netns", "exec", self.ns(node), "nft", "delete", "table", "inet", "cmk", check=False)

    def _nft(self, node: int, rules: str) -> None:
        script = (
            "add table inet cmk\n"
            "add chain inet cmk input { type filter hook input priority 0; policy accept; }\n"
            "add chain inet cmk output { type filter hook output priority 0; policy accept; }\n" + rules
        )
        sh("ip", "netns", "exec", self.ns(node), "nft", "-f", "-", input_text=script)

    # -- cleanup -------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Kill every process we started, then delete every namespace we created. Never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self.created):
            _kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()

    def _add_namespace(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")


def _kill_namespace_processes(name: str) -> None:
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
