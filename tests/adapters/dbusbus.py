"""Test helpers for the D-Bus edge: a private system-like dbus-daemon and an in-memory backend.

`PrivateBus` runs a real dbus-daemon with `<type>system</type>`, EXTERNAL auth, a socket in a
fresh directory others can reach (so clients may run as an unprivileged uid) and the default-deny
policy of Debian's system.conf, plus either the project's dbus/org.cmanlk.Cluster.conf
("project") or a policy that lets anyone call anything on org.cmanlk.Cluster ("open", to reach
the service's own uid check).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from cmanlk.errors import ErrorCode, UsageError
from cmanlk.runtime.dbus_status import (
    AdminRequest,
    Departure,
    FenceAck,
    LinkNotice,
    MemberInfo,
    MembershipNotice,
    QuorumNotice,
    SetExpectedVotes,
    SetVotes,
)
from cmanlk.runtime.status import LockspaceView, NodeView, PathView, Snapshot
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.types import NodeId, RingId

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "dbus" / "org.cmanlk.Cluster.conf"
NOBODY = 65534
BUS_START_TIMEOUT_S = 10.0

_DEFAULT_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
"""

_OPEN_POLICY = """
  <policy user="root">
    <allow own="org.cmanlk.Cluster"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.cmanlk.Cluster"/>
  </policy>
"""


class PrivateBus:
    """A dbus-daemon of our own; `address` is its D-Bus address. Use as a context manager."""

    def __init__(self, policy: str = "project") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"cmk{os.getpid()}x-dbus-"))
        self.dir.chmod(0o755)  # unprivileged clients must reach the socket
        self.socket = self.dir / "bus"
        self.address = f"unix:path={self.socket}"
        extra = f"<include>{POLICY_FILE}</include>" if policy == "project" else _OPEN_POLICY
        self.config = self.dir / "bus.conf"
        self.config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n  <type>system</type>\n  <auth>EXTERNAL</auth>\n"
            f"  <listen>{self.address}</listen>\n{_DEFAULT_POLICY}\n  {extra}\n</busconfig>\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) dbus-daemon on the same socket path; returns once it listens."""
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={self.config}", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it listens
        if not line.startswith(b"unix:"):
            err = self.proc.stderr.read() if self.proc.stderr else b""
            raise RuntimeError(f"dbus-daemon did not start: {line!r} {err!r}")

    def kill(self) -> None:
        """Stop dbus-daemon (SIGKILL; continue it first if stopped)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def run(*argv: str, as_nobody: bool = False, timeout_s: float = 10.0) -> tuple[int, str, str]:
    """Run a client command without blocking the event loop; returns (status, stdout, stderr)."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def three_node_status() -> Snapshot:
    """A quorate three-node cluster seen from node 1."""
    members = (NodeId(1), NodeId(2), NodeId(3))
    ring = RingId(12, NodeId(1))
    quorum = QuorumState(
        quorate=True, quorum=2, total_votes=3, expected_votes=3, highest_expected=3, two_node=False,
        wait_for_all=True, wait_for_all_status=False, last_man_standing=False, auto_tie_breaker=False,
        allow_downscale=False, ring_id=ring, members=members, node_votes=tuple((m, 1) for m in members),
    )  # fmt: skip
    return Snapshot(
        node_id=NodeId(1),
        cluster_name="alpha",
        ring_id=ring,
        members=members,
        quorum=quorum,
        nodes=tuple(NodeView(m, f"node{m}", (), 1, "member") for m in members),
        paths=tuple(PathView(NodeId(n), 0, True) for n in (2, 3)),
        lockspaces=(LockspaceView("gfs2fs", "running"),),
    )


def with_quorum(s: Snapshot, **changes: object) -> Snapshot:
    """`s` with votequorum's state changed (quorate=..., expected_votes=..., ...)."""
    assert s.quorum is not None
    return replace(s, quorum=replace(s.quorum, **changes))  # type: ignore[arg-type]


class MemoryCluster:
    """In-memory ClusterStatusSource: a status the test changes, and a record of requests."""

    def __init__(self) -> None:
        self.status = three_node_status()
        self.requests: list[AdminRequest] = []
        self.submit_delay_s = 0.0

    def snapshot(self) -> Snapshot:
        return self.status

    async def submit(self, request: AdminRequest) -> str:
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)
        match request:
            case SetExpectedVotes(expected) if expected < 1:
                raise UsageError(ErrorCode.INVALID_PARAM, "expected votes must be at least 1")
            case SetExpectedVotes(expected):
                self.status = with_quorum(self.status, expected_votes=expected)
            case SetVotes(nodeid, votes):
                if nodeid not in (0, *(n.nodeid for n in self.status.nodes)):
                    raise UsageError(ErrorCode.NOT_FOUND, f"node {nodeid} is unknown")
                me = self.status.node_id
                if nodeid in (0, me):
                    nodes = tuple(replace(n, votes=votes) if n.nodeid == me else n for n in self.status.nodes)
                    self.status = replace(self.status, nodes=nodes)
            case FenceAck():
                pass
        self.requests.append(request)
        return f"{request} done"

    def kill(self, nodeid: int) -> tuple[MembershipNotice, QuorumNotice, LinkNotice]:
        """Node `nodeid` fails: new ring without it, fewer votes, its link down; returns the notices."""
        s = self.status
        assert s.quorum is not None
        members = tuple(m for m in s.members if m != nodeid)
        ring = RingId(s.ring_id.seq + 4, members[0])
        total = s.quorum.total_votes - 1
        s = with_quorum(s, total_votes=total, quorate=total >= s.quorum.quorum)
        self.status = replace(
            s,
            ring_id=ring,
            members=members,
            nodes=tuple(replace(n, state="dead") if n.nodeid == nodeid else n for n in s.nodes),
            paths=tuple(replace(x, up=False) if x.nodeid == nodeid else x for x in s.paths),
        )
        gone = (Departure(NodeId(nodeid), "nodedown"),)
        assert self.status.quorum is not None
        named = tuple(MemberInfo(m, s.name_of(m)) for m in members)
        return (
            MembershipNotice(ring, named, (), gone),
            QuorumNotice(self.status.quorum.quorate, self.status.quorum.quorum, total),
            LinkNotice(NodeId(nodeid), 0, False),
        )
