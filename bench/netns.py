"""A private network of namespaces for benchmarks, scale runs and the chaos soak.

Layout: a "switch" namespace holds one bridge per link (`br0`, `br1`, …). Each node N gets its own
namespace with one veth per link (`eth0`, `eth1`, …) whose peer (`l<link>n<N>`) is plugged into
that link's bridge. Addresses: link L of node N is 10.(80+L).(N // 250).(N % 250 + 1)/16, so 32
nodes and more fit; nothing is configured outside the namespaces we create.

Faults, all inside a node's namespace or on its switch port:
- `carrier(node, link, up)`: set the bridge-side peer down/up, so the node's NIC loses carrier
  (what a pulled cable looks like to the node: IFF_LOWER_UP clears, netlink reports it);
- `partition`, `loss`: nftables rules in table `inet cmkbench` of the node's namespace.

Cleanup is guaranteed: `Lab` is a context manager, and `destroy()` (idempotent, never raises)
kills every process started through it and deletes every namespace it created. SIGINT, SIGTERM and
SIGHUP are turned into KeyboardInterrupt while a Lab is open, so Ctrl-C, a kill of the runner and
exceptions all leave the machine clean. `reap_stale()` removes namespaces of earlier runs whose
process is gone (a runner killed with SIGKILL).
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

CMD_TIMEOUT_S = 20  # an `ip`/`nft` command that takes longer than this is stuck
NAME_RE = re.compile(r"^cmk(\d+)b")
MAX_NODES = 200  # addresses below stay unique well past this; a bound on what a run may build


def sh(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command bounded in time; raise CalledProcessError (with stderr) when `check` fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=input_text)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


def addr(node: int, link: int = 0) -> str:
    """The IPv4 address of `node` on `link`."""
    return f"10.{80 + link}.{node // 250}.{node % 250 + 1}"


def reap_stale() -> None:
    """Delete bench namespaces (cmk<pid>b…) whose creating process no longer exists."""
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NAME_RE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Lab:
    """The private network (see the module docstring). Use as a context manager."""

    links: int = 1
    prefix: str = field(default_factory=lambda: f"cmk{os.getpid()}b{int(time.monotonic() * 1000) % 100000}")
    created: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)
    _old_handlers: dict[int, object] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def ns(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def __enter__(self) -> Lab:
        reap_stale()
        # SIGINT too: a runner started in the background by a non-interactive shell inherits
        # SIGINT ignored, and Python then installs no handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        try:
            self._add_namespace(self.switch)
            for link in range(self.links):
                sh(
                    "ip",
                    "-n",
                    self.switch,
                    "link",
                    "add",
                    f"br{link}",
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                )
                sh("ip", "-n", self.switch, "link", "set", f"br{link}", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def add_node(self, node: int) -> str:
        """Create node `node`'s namespace and one NIC per link with its address; return the namespace."""
        if len(self.nodes) >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes per lab")
        name = self.ns(node)
        self._add_namespace(name)
        for link in range(self.links):
            port = f"l{link}n{node}"
            sh(
                "ip",
                "-n",
                name,
                "link",
                "add",
                f"eth{link}",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            sh("ip", "-n", self.switch, "link", "set", port, "master", f"br{link}", "up")
            sh("ip", "-n", name, "addr", "add", f"{addr(node, link)}/16", "dev", f"eth{link}")
            sh("ip", "-n", name, "link", "set", f"eth{link}", "up")
        self.nodes.append(node)
        return name

    def popen(
        self,
        node: int,
        cmd: list[str],
        log: Path | None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a process in node's namespace: output to `log`, or stdin/stdout pipes with `pipes`."""
        full = ["ip", "netns", "exec", self.ns(node), *cmd]
        if pipes:
            err = open(log, "ab") if log else subprocess.DEVNULL
            try:
                proc = subprocess.Popen(
                    full,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                )
            finally:
                if log:
                    err.close()  # type: ignore[union-attr]
        else:
            with open(log or os.devnull, "ab") as out:
                proc = subprocess.Popen(
                    full,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
        self.procs.append(proc)
        return proc

    # -- faults ---------------------------------------------------------------------------------
    def carrier(self, node: int, link: int, up: bool) -> None:
        """Pull (up=False) or plug back (up=True) the cable of node's `link`."""
        sh("ip", "-n", self.switch, "link", "set", f"l{link}n{node}", "up" if up else "down")

    def partition(self, node: int, peers: list[int]) -> None:
        """Drop every packet between `node` and `peers` on every link, both directions."""
        if not peers:
            return
        ips = ", ".join(addr(p, lk) for p in peers for lk in range(self.links))
        self._nft(
            node,
            f"add rule inet cmkbench input ip saddr {{ {ips} }} drop\n"
            f"add rule inet cmkbench output ip daddr {{ {ips} }} drop\n",
        )

    def loss(self, node: int, percent: int) -> None:
        """Drop `percent` % of the UDP packets `node` receives, at random."""
        self._nft(
            node, f"add rule inet cmkbench input meta l4proto udp numgen random mod 100 < {percent} drop\n"
        )

    def heal(self, node: int) -> None:
        """Remove every nftables fault of `node` (carrier is separate)."""
        sh("ip", "netns", "exec", self.ns(node), "nft", "delete", "table", "inet", "cmkbench", check=False)

    def _nft(self, node: int, rules: str) -> None:
        script = (
            "add table inet cmkbench\n"
            "add chain inet cmkbench input { type filter hook input priority 0; policy accept; }\n"
            "add chain inet cmkbench output { type filter hook output priority 0; policy accept; }\n" + rules
        )
        sh("ip", "netns", "exec", self.ns(node), "nft", "-f", "-", input_text=script)

    # -- cleanup -------------------------------------------------------------------------------
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
            _kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()

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
