"""cmanlk.runtime.dlmd: the DLM companion drives fake kernels from a node's membership and cpg.

Two DlmDaemons, each with its own FakeDlmKernel, share a small in-process cpg bus that plays
the node's Stack: it answers the daemons' cpg requests and delivers every confchg and message
to every member in one total order (virtual synchrony), and publishes MembershipChanged and
QuorumChanged as the Stack does. The kernel operations each daemon carries out are recorded
and compared with dlm_controld's order (shared/reference/dlm-controld-protocol.md §3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cmanlk.dlm.control import DlmSettings, lockspace_global_id, sockaddr_storage
from cmanlk.dlm.fencing import FencingPolicy
from cmanlk.runtime.dlmd import DlmDaemon
from cmanlk.runtime.fence import FenceDevice
from cmanlk.services.cpg.service import (
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    Handle,
)
from cmanlk.services.cpg.wire import REASON_JOIN, REASON_LEAVE, REASON_NODEDOWN
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged, ServiceRequest
from cmanlk.types import Instant, NodeId, RingId
from kernel_glue.fakes import FakeDlmKernel, FakeRequest

Op = tuple[str, ...]
STEP_S = 0.005
WAIT_S = 3.0


# -- the stand-in for the node and its Stack ----------------------------------------------------


class Recorder:
    """Wraps a fake kernel's configfs and sysfs; records every operation in order."""

    def __init__(self, kernel: FakeDlmKernel) -> None:
        self.kernel = kernel
        self.ops: list[Op] = []

    # DlmControl
    def exists(self, path: str) -> bool:
        return self.kernel.configfs.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self.kernel.configfs.listdir(path)

    def mkdir(self, path: str) -> None:
        self.kernel.configfs.mkdir(path)
        self.ops.append(("mkdir", path))

    def rmdir(self, path: str) -> None:
        self.kernel.configfs.rmdir(path)
        self.ops.append(("rmdir", path))

    def read(self, path: str) -> bytes:
        return self.kernel.configfs.read(path)

    def write(self, path: str, value: bytes) -> None:
        self.kernel.configfs.write(path, value)
        self.ops.append(("write", path, value.decode("latin-1") if len(value) < 32 else "<addr>"))


class SysRecorder:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def lockspaces(self) -> list[str]:
        return self.rec.kernel.sysfs.lockspaces()

    def write(self, lockspace: str, attr: str, value: bytes) -> None:
        self.rec.kernel.sysfs.write(lockspace, attr, value)
        self.rec.ops.append(("sysfs", lockspace, attr, value.decode()))

    def read(self, lockspace: str, attr: str) -> bytes:
        return self.rec.kernel.sysfs.read(lockspace, attr)


class FakeNode:
    """`NodeLike`: listeners, and requests answered by the shared bus."""

    def __init__(self, me: int, bus: Bus) -> None:
        self.me = NodeId(me)
        self.bus = bus
        self.listeners: list[Callable[[object], None]] = []

    def add_listener(self, listener: Callable[[object], None]) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[object], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def publish(self, item: object) -> None:
        for listener in list(self.listeners):
            listener(item)

    def request(self, build: Callable[[Instant, int], object], timeout_s: float = 5.0) -> Awaitable[str]:
        event = build(Instant(time.monotonic_ns()), 1)
        assert isinstance(event, ServiceRequest)
        self.bus.on_request(self, event.request)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result("")
        return fut


class Bus:
    """cpg and membership of a small cluster, in one total order."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, FakeNode] = {}
        self.groups: dict[bytes, list[tuple[NodeId, int]]] = {}
        self.ring = 0

    def add(self, me: int) -> FakeNode:
        node = FakeNode(me, self)
        self.nodes[node.me] = node
        return node

    def membership(self, quorate: bool = True, between: Callable[[], None] | None = None) -> None:
        """A new ring, published in the Stack's order for one sync: cpg's confchgs (`between`:
        cpg, service 2, activates first), votequorum's notification (service 5), then
        MembershipChanged once the sync completed."""
        self.ring += 4
        members = tuple(sorted(self.nodes))
        ring = RingId(self.ring, members[0])
        qs = QuorumState(quorate, 2, len(members), 2, 2, False, False, False, False, False, False,
                         ring, members)
        if between is not None:
            between()
        for node in list(self.nodes.values()):
            node.publish(QuorumChanged(quorate, 2, len(members), 2, tuple((m, 1) for m in members), ring, qs))
        for node in list(self.nodes.values()):
            node.publish(MembershipChanged(ring, members, (), (), members))

    def on_request(self, node: FakeNode, req: object) -> None:
        me = node.me
        match req:
            case CpgJoin(handle, group, pid):
                procs = self.groups.setdefault(group, [])
                procs.append((me, pid))
                self._confchg(group, procs, joined=(CpgAddress(me, pid, REASON_JOIN),), left=())
            case CpgLeave(handle, group):
                procs = self.groups.get(group, [])
                gone = [p for p in procs if p[0] == me]
                procs[:] = [p for p in procs if p[0] != me]
                left = tuple(CpgAddress(n, pid, REASON_LEAVE) for n, pid in gone)
                self._confchg(group, procs, joined=(), left=left, also=node)
            case CpgMcast(handle, group, payload):
                for n, pid in self.groups.get(group, []):
                    if n == me:
                        sender_pid = pid
                for n, _ in list(self.groups.get(group, [])):
                    self.nodes[n].publish(CpgDeliver((handle,), group, me, sender_pid, payload))

    def _confchg(self, group: bytes, procs: list[tuple[NodeId, int]], joined: tuple[CpgAddress, ...],
                 left: tuple[CpgAddress, ...], also: FakeNode | None = None) -> None:
        members = tuple(sorted(CpgAddress(n, pid) for n, pid in procs))
        targets = [self.nodes[n] for n, _ in procs if n in self.nodes]
        if also is not None:
            targets.append(also)
        for node in targets:
            node.publish(CpgConfchg((Handle(1 << 48),), group, members, left, joined))

    def crash(self, nodeid: int, quorate: bool = True) -> None:
        """`nodeid` dies: one sync reports it (quorum, cpg NODEDOWN in every group, membership)."""
        dead = NodeId(nodeid)
        del self.nodes[dead]

        def groups_down() -> None:
            for group, procs in self.groups.items():
                gone = [p for p in procs if p[0] == dead]
                if gone:
                    procs[:] = [p for p in procs if p[0] != dead]
                    self._confchg(group, procs, joined=(),
                                  left=tuple(CpgAddress(n, pid, REASON_NODEDOWN) for n, pid in gone))

        self.membership(quorate, between=groups_down)


# -- helpers ----------------------------------------------------------------------------------


ADDRS = {NodeId(1): (ipaddress.ip_address("10.213.9.1"),), NodeId(2): (ipaddress.ip_address("10.213.9.2"),)}


class Site:
    """One node: its daemon, fake kernel and recorded kernel operations."""

    def __init__(self, bus: Bus, me: int, fencing: FencingPolicy, devices: dict[NodeId, FenceDevice]) -> None:
        self.kernel = FakeDlmKernel()
        self.rec = Recorder(self.kernel)
        self.node = bus.add(me)
        settings = DlmSettings(cluster_name="klab", me=NodeId(me), fencing=fencing)
        self.daemon = DlmDaemon(self.node, settings, control=self.rec, sysfs=SysRecorder(self.rec),
                                uevents=self.kernel.uevents(), addrs=ADDRS, fence_devices=devices)

    def ops_since(self, mark: int) -> list[Op]:
        return self.rec.ops[mark:]


async def until(what: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(STEP_S)


@asynccontextmanager
async def cluster(fencing: FencingPolicy | None = None,
                  devices: dict[NodeId, FenceDevice] | None = None) -> AsyncIterator[tuple[Bus, Site, Site]]:
    bus = Bus()
    policy = fencing or FencingPolicy(enabled=True)
    s1 = Site(bus, 1, policy, devices or {})
    s2 = Site(bus, 2, policy, devices or {})
    tasks = [asyncio.create_task(s.daemon.run()) for s in (s1, s2)]
    try:
        await until(lambda: s1.daemon.ready and s2.daemon.ready)
        bus.membership()
        await until(lambda: s1.daemon.ctl.cluster_ready and s2.daemon.ctl.cluster_ready)
        yield bus, s1, s2
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass


async def join(site: Site, name: str) -> FakeRequest:
    req = site.kernel.request_join(name)
    await until(lambda: req.done)
    return req


def node_ops(name: str, n: int) -> list[Op]:
    base = f"cluster/spaces/{name}/nodes/{n}"
    return [("mkdir", base), ("write", f"{base}/nodeid", str(n)), ("write", f"{base}/weight", "1")]


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


# -- tests ------------------------------------------------------------------------------------


def test_quorate_membership_configures_cluster_and_comms_in_dlm_controld_order() -> None:
    async def body() -> None:
        async with cluster() as (_bus, s1, _s2):
            assert s1.rec.ops == [
                ("mkdir", "cluster"), ("write", "cluster/mark", "0"),
                ("write", "cluster/recover_callbacks", "1"), ("write", "cluster/cluster_name", "klab"),
                ("mkdir", "cluster/comms/1"), ("write", "cluster/comms/1/nodeid", "1"),
                ("write", "cluster/comms/1/addr", "<addr>"), ("write", "cluster/comms/1/mark", "0"),
                ("write", "cluster/comms/1/local", "1"),
                ("mkdir", "cluster/comms/2"), ("write", "cluster/comms/2/nodeid", "2"),
                ("write", "cluster/comms/2/addr", "<addr>"), ("write", "cluster/comms/2/mark", "0"),
            ]
            assert s1.kernel.configfs.read("cluster/comms/2/addr_list") == b"AF_INET\t10.213.9.2\n"
            assert sockaddr_storage(ADDRS[NodeId(2)][0])[:2] == b"\x02\x00"

    run(body())


def test_lockspace_join_writes_id_mkdir_nodes_control_event_done_in_reference_order() -> None:
    async def body() -> None:
        async with cluster() as (_bus, s1, s2):
            m1 = len(s1.rec.ops)
            req = await join(s1, "lab1")
            assert req.result == 0
            gid = lockspace_global_id("lab1")
            assert gid == 943331636
            assert s1.ops_since(m1) == [
                ("sysfs", "lab1", "id", f"{gid}\0"), ("mkdir", "cluster/spaces/lab1"),
                *node_ops("lab1", 1),
                ("sysfs", "lab1", "control", "1\0"), ("sysfs", "lab1", "event_done", "0\0"),
            ]
            # the second node joins: it configures both members; node 1 stops, adds 2, starts
            m1, m2 = len(s1.rec.ops), len(s2.rec.ops)
            req2 = await join(s2, "lab1")
            assert req2.result == 0
            assert s2.ops_since(m2) == [
                ("sysfs", "lab1", "id", f"{gid}\0"), ("mkdir", "cluster/spaces/lab1"),
                *node_ops("lab1", 1), *node_ops("lab1", 2),
                ("sysfs", "lab1", "control", "1\0"), ("sysfs", "lab1", "event_done", "0\0"),
            ]
            await until(lambda: len(s1.rec.ops) >= m1 + 5)
            assert s1.ops_since(m1) == [
                ("sysfs", "lab1", "control", "0\0"), *node_ops("lab1", 2),
                ("sysfs", "lab1", "control", "1\0"),
            ]
            status = s1.daemon.status()
            assert [(ls["name"], ls["state"], ls["kernel_nodes"]) for ls in status["lockspaces"]] == [
                ("lab1", "started", [1, 2])]
            assert status["daemon"]["kernel_errors"] == {}

    run(body())


def test_member_failure_stops_lockspace_until_fence_ack_then_restarts_without_it() -> None:
    async def body() -> None:
        async with cluster() as (bus, s1, s2):
            await join(s1, "lab1")
            await join(s2, "lab1")
            await until(lambda: s1.daemon.status()["lockspaces"][0]["kernel_nodes"] == [1, 2])
            mark = len(s1.rec.ops)
            bus.crash(2)
            await until(lambda: len(s1.rec.ops) >= mark + 2)
            await asyncio.sleep(0.1)  # time for a wrong restart to show
            # dlm_controld's order: the cluster (quorum) view drops comms/2, then the group stops
            assert s1.ops_since(mark) == [("rmdir", "cluster/comms/2"), ("sysfs", "lab1", "control", "0\0")]
            ls = s1.daemon.status()["lockspaces"][0]
            assert ls["state"] == "stopped"
            assert "fencing of node 2" in ls["waiting_for"]
            assert s1.daemon.status()["fencing"]["victims"][0]["nodeid"] == 2
            mark = len(s1.rec.ops)
            reply = s1.daemon.fence_ack(NodeId(2))
            assert reply["result"] == "acknowledged"
            assert s1.ops_since(mark) == [("rmdir", "cluster/spaces/lab1/nodes/2"),
                                          ("sysfs", "lab1", "control", "1\0")]
            assert s1.daemon.status()["lockspaces"][0]["state"] == "started"

    run(body())


def agent_for_node2(tmp_path: Path) -> tuple[Path, dict[NodeId, FenceDevice], FencingPolicy]:
    """A fence agent for node 2 that records its stdin and succeeds: (its log, devices, policy)."""
    agent = tmp_path / "fence_ok"
    log = tmp_path / "agent.log"
    agent.write_text(f"#!/bin/sh\ncat > {log}\nexit 0\n")
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    devices = {NodeId(2): FenceDevice(str(agent), "node2")}
    return log, devices, FencingPolicy(enabled=True, nodes_with_agent=frozenset(devices))


def test_member_failure_recovers_after_fence_agent_succeeds(tmp_path: Path) -> None:
    log, devices, policy = agent_for_node2(tmp_path)

    async def body() -> None:
        async with cluster(policy, devices) as (bus, s1, s2):
            await join(s1, "lab1")
            await join(s2, "lab1")
            bus.crash(2)
            await until(lambda: s1.daemon.status()["lockspaces"][0]["state"] == "started")
            assert s1.daemon.status()["lockspaces"][0]["kernel_nodes"] == [1]
            assert s1.daemon.status()["fencing"]["victims"][0]["how"] == "agent"

    run(body())
    assert "action=off\nnodename=node2\n" in log.read_text()


def test_a_node_that_lost_quorum_with_the_failure_does_not_fence(tmp_path: Path) -> None:
    """The quorum of the failure's own ring decides, not the old one: a minority never shoots."""
    log, devices, policy = agent_for_node2(tmp_path)

    async def body() -> None:
        async with cluster(policy, devices) as (bus, s1, s2):
            await join(s1, "lab1")
            await join(s2, "lab1")
            bus.crash(2, quorate=False)
            await until(lambda: s1.daemon.status()["lockspaces"][0]["state"] == "stopped")
            await asyncio.sleep(0.3)  # time for a wrong agent run to show
            status = s1.daemon.status()
            assert status["fencing"]["fencer"] is False
            assert [(v["nodeid"], v["state"], v["attempts"]) for v in status["fencing"]["victims"]] == [
                (2, "waiting", 0)]
            assert "quorum" in status["lockspaces"][0]["waiting_for"]

    run(body())
    assert not log.exists()


def test_leave_then_shutdown_removes_everything_it_created() -> None:
    async def body() -> tuple[Site, Site]:
        async with cluster() as (_bus, s1, s2):
            await join(s1, "lab1")
            await join(s2, "lab1")
            mark = len(s1.rec.ops)
            req = s1.kernel.request_leave("lab1")
            await until(lambda: req.done)
            assert s1.ops_since(mark) == [
                ("sysfs", "lab1", "control", "0\0"), ("rmdir", "cluster/spaces/lab1/nodes/2"),
                ("rmdir", "cluster/spaces/lab1/nodes/1"), ("rmdir", "cluster/spaces/lab1"),
                ("sysfs", "lab1", "event_done", "0\0")]
            # node 2 sees node 1 leave cleanly: no fencing, restart without it
            await until(lambda: s2.daemon.status()["lockspaces"][0]["kernel_nodes"] == [2])
            assert s2.daemon.status()["fencing"]["victims"] == []
            return s1, s2

    s1, s2 = asyncio.run(asyncio.wait_for(body(), 20))
    assert not s1.kernel.configfs.exists("cluster")  # no lockspace left: comms and cluster removed
    assert s2.kernel.configfs.exists("cluster")  # its lockspace still exists: the kernel needs it


def test_auto_without_a_kernel_dlm_disables_itself_without_stopping_the_node() -> None:
    from cmanlk.errors import KernelError

    def no_dlm() -> None:
        raise KernelError("dlm", 2, "module not found")

    async def body() -> None:
        bus = Bus()
        kernel = FakeDlmKernel()
        node = bus.add(1)
        daemon = DlmDaemon(node, DlmSettings("klab", NodeId(1)), control=kernel.configfs, sysfs=kernel.sysfs,
                           uevents=kernel.uevents(), addrs=ADDRS, prepare=no_dlm, optional=True)
        await daemon.run()  # returns: disabled
        assert not daemon.ready
        assert node.listeners == []

    run(body())


def test_real_node_on_loopback_answers_a_join_through_its_own_cpg(tmp_path: Path) -> None:
    """A one-node cmanlkd Node (udpu on 127.0.0.1, the real Stack and cpg) drives a fake kernel."""
    import random
    import socket

    from cmanlk.config import parse_config
    from cmanlk.runtime.backend import DlmStatus, FenceAck, NodeBackend
    from cmanlk.runtime.node import Node

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = parse_config(f"""
totem {{
  version: 2
  cluster_name: klab
  transport: udpu
  token: 300
  interface {{
    linknumber: 0
    mcastport: {port}
  }}
}}
nodelist {{
  node {{
    ring0_addr: 127.0.0.1
    nodeid: 1
  }}
}}
quorum {{
  provider: corosync_votequorum
}}
cmanlk {{
  state_dir: {tmp_path}/state
  run_dir: {tmp_path}/run
  dbus: no
}}
""")
    kernel = FakeDlmKernel()

    async def body() -> None:
        node = Node(config, NodeId(1), rng=random.Random(1))
        daemon = DlmDaemon(node, DlmSettings("klab", NodeId(1)), control=kernel.configfs, sysfs=kernel.sysfs,
                           uevents=kernel.uevents(), addrs={NodeId(1): (ipaddress.ip_address("127.0.0.1"),)})
        node.companions = (daemon.run,)
        running = asyncio.create_task(node.run())
        try:
            await until(lambda: daemon.ctl.cluster_ready, 10)
            req = kernel.request_join("lab1")
            await until(lambda: req.done, 5)
            assert req.result == 0
            backend = NodeBackend(node, daemon)
            reply = await backend.admin(DlmStatus())
            assert [(ls["name"], ls["state"]) for ls in reply["lockspaces"]] == [("lab1", "started")]
            assert reply["daemon"]["kernel_errors"] == {}
            groups = {g.name for g in backend.snapshot().groups}
            assert {"dlm:ls:lab1", "cmanlk:dlm"} <= groups
            assert (await backend.admin(FenceAck(NodeId(7))))["result"] == "acknowledged"
            leave = kernel.request_leave("lab1")
            await until(lambda: leave.done, 5)
        finally:
            node.request_leave()
            await asyncio.wait_for(running, 5)
        assert not kernel.configfs.exists("cluster")

    asyncio.run(asyncio.wait_for(body(), 30))
