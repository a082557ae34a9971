"""One private network of network namespaces, shared by the system tests, the benchmarks and the
chaos soak (each configures its own address plan and names on top of `NetLab`).

Layout: a "switch" namespace holds one bridge per link (`br0`, `br1`, …; forwarding at once, no
STP listening delay). Each node N gets its own namespace with one veth per link (`eth0`, `eth1`,
…) whose peer is plugged into that link's bridge. The addresses of node N on link L come from
`NetLab.plan(N, L)`; IPv6 addresses are added without DAD so they are bindable at once.

Faults, all inside a node's namespace or on its switch port:
- `carrier(node, link, up)`: the bridge-side peer goes down/up, so the node's NIC loses carrier
  (what a pulled cable looks like to the node: IFF_LOWER_UP clears, rtnetlink reports it);
- `partition(node, peers)`, `loss(node, percent)`: nftables rules in one table of the node's
  namespace (`NetLab.nft_table`); `heal(node)` deletes that table.

Cleanup is guaranteed: `NetLab` is a context manager, and `destroy()` (idempotent, never raises)
kills every process started through it, then every process left in its namespaces, and deletes
every namespace it created (which removes their veths and nftables tables). With
`trap_signals=True` SIGINT, SIGTERM and SIGHUP become KeyboardInterrupt while the lab is open, so
a kill of a long runner also leaves the machine clean. `reap_stale()` removes namespaces of
earlier runs whose creating process is gone. Names are `cmk<pid><tag>…`, so concurrent runs never
collide and each kind of user reaps only its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Self

CMD_TIMEOUT_S = 20
"""An `ip`/`nft` command that takes longer than this is stuck."""
MAX_NODES = 200
"""A bound on what one lab may build (the bench's address plan stays unique well past it)."""


def sh(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command bounded in time; raise CalledProcessError (with stderr) when `check` fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=input_text)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


def reap_stale(tag: str) -> None:
    """Delete namespaces `cmk<pid><tag>…` whose creating process no longer exists."""
    pattern = re.compile(rf"^cmk(\d+){re.escape(tag)}")
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = pattern.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)


def kill_namespace_processes(name: str) -> None:
    """SIGKILL every process still running inside namespace `name`."""
    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class NetLab:
    """The private network (see the module docstring). Subclasses set the address plan."""

    links: int = 1
    tag: str = "l"
    """Letter(s) after `cmk<pid>` in every namespace name; `reap_stale` matches on it."""
    nft_table: str = "cmklab"
    trap_signals: bool = False
    prefix: str = ""
    created: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)
    _old_handlers: dict[int, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = f"cmk{os.getpid()}{self.tag}{int(time.monotonic() * 1000) % 100000}"

    # -- naming and addresses (override in subclasses) -------------------------------------------
    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def ns(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def port(self, node: int, link: int) -> str:
        """The switch-side name of node's veth on `link`."""
        return f"l{link}n{node}"

    def plan(self, node: int, link: int) -> list[tuple[str, int]]:
        """The (address, prefix length) pairs of node's NIC on `link`."""
        return [(f"10.{90 + link}.{node // 250}.{node % 250 + 1}", 16)]

    def peer_addresses(self, node: int) -> list[str]:
        """Every address of `node` on every link (what a partition from it must drop)."""
        return [a for link in range(self.links) for a, _ in self.plan(node, link)]

    # -- building --------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        reap_stale(self.tag)
        if self.trap_signals:
            # SIGINT too: a runner started in the background by a non-interactive shell inherits
            # SIGINT ignored, and Python then installs no handler of its own.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        try:
            self._add_namespace(self.switch)
            for link in range(self.links):
                self.add_bridge(link)
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def add_bridge(self, link: int) -> None:
        """Create bridge br<link> in the switch namespace (forwarding at once)."""
        sh("ip", "-n", self.switch, "link", "add", f"br{link}", "type", "bridge", "forward_delay", "0")
        sh("ip", "-n", self.switch, "link", "set", f"br{link}", "up")

    def add_node(self, node: int) -> str:
        """Create node `node`'s namespace and one NIC per link with its addresses; return the namespace."""
        if len(self.nodes) >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes per lab")
        name = self.ns(node)
        self._add_namespace(name)
        for link in range(self.links):
            self.add_nic(node, link)
        self.nodes.append(node)
        return name

    def add_nic(self, node: int, link: int, name: str | None = None) -> None:
        """(Re)create node's NIC of `link` (default name eth<link>) with its addresses, plugged into
        br<link> — also after a test deleted it."""
        name = name or f"eth{link}"
        port = self.port(node, link)
        sh("ip", "-n", self.switch, "link", "del", port, check=False)
        sh("ip", "-n", self.ns(node), "link", "add", name, "type", "veth", "peer", "name", port,
           "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", port, "master", f"br{link}", "up")
        for address, plen in self.plan(node, link):
            extra = ["nodad"] if ":" in address else []
            sh("ip", "-n", self.ns(node), "addr", "add", f"{address}/{plen}", "dev", name, *extra)
        sh("ip", "-n", self.ns(node), "link", "set", name, "up")

    # -- processes -------------------------------------------------------------------------------
    def run(self, node: int, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command inside node's namespace (bounded in time)."""
        return sh("ip", "netns", "exec", self.ns(node), *cmd, check=check)

    def ip(self, node: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n <node's namespace> ARGS`."""
        return sh("ip", "-n", self.ns(node), *args, check=check)

    def popen(
        self,
        node: int,
        cmd: list[str],
        log: Path | None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a process in node's namespace in its own session: stdout+stderr to `log`, or
        stdin/stdout pipes (stderr to `log`) with `pipes`. `destroy()` kills it."""
        full = ["ip", "netns", "exec", self.ns(node), *cmd]
        with open(log or os.devnull, "ab") as out:
            if pipes:
                proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
                                        env=env, start_new_session=True)
            else:
                proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    # -- faults ----------------------------------------------------------------------------------
    def carrier(self, node: int, link: int, up: bool) -> None:
        """Pull (up=False) or plug back (up=True) the cable of node's `link`."""
        sh("ip", "-n", self.switch, "link", "set", self.port(node, link), "up" if up else "down")

    def partition(self, node: int, peers: list[int]) -> None:
        """Drop every packet between `node` and `peers` (all their addresses), both directions."""
        addrs = [a for p in peers for a in self.peer_addresses(p)]
        rules = ""
        v4 = [a for a in addrs if ":" not in a]
        v6 = [a for a in addrs if ":" in a]
        for family, chosen in (("ip", v4), ("ip6", v6)):
            if chosen:
                s = ", ".join(chosen)
                rules += (f"add rule inet {self.nft_table} input {family} saddr {{ {s} }} drop\n"
                          f"add rule inet {self.nft_table} output {family} daddr {{ {s} }} drop\n")
        if rules:
            self._nft(node, rules)

    def loss(self, node: int, percent: int) -> None:
        """Drop `percent` % of the UDP packets `node` receives, at random."""
        rule = f"input meta l4proto udp numgen random mod 100 < {percent} drop"
        self._nft(node, f"add rule inet {self.nft_table} {rule}\n")

    def heal(self, node: int) -> None:
        """Remove every nftables fault of `node` (carrier is separate)."""
        self.run(node, "nft", "delete", "table", "inet", self.nft_table, check=False)

    def _nft(self, node: int, rules: str) -> None:
        t = self.nft_table
        script = (
            f"add table inet {t}\n"
            f"add chain inet {t} input {{ type filter hook input priority 0; policy accept; }}\n"
            f"add chain inet {t} output {{ type filter hook output priority 0; policy accept; }}\n" + rules
        )
        sh("ip", "netns", "exec", self.ns(node), "nft", "-f", "-", input_text=script)

    # -- cleanup ---------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Kill every process we started, delete every namespace we created. Idempotent, never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for name in reversed(self.created):
            kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()
        self.nodes.clear()
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()

    def _add_namespace(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
