"""dlmctl: the lockspace decisions replay dlm_controld's traced kernel protocol exactly.

The reference traces (shared/kernel-lab/traces/*.protocol.txt, strace of dlm_controld 4.2.0 on
Linux 6.1) are parsed here; the core is driven with the events node 1 saw (cluster membership,
uevents, the lockspace groups' configuration changes and start messages, the fence ack), and
its configfs/sysfs actions must be the same operations with the same bytes in the same order.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cmanlk.dlm.control import (
    CPG_REASON_LEAVE,
    CPG_REASON_NODEDOWN,
    ClusterChanged,
    ClusterSyncing,
    ConfigfsMkdir,
    ConfigfsRmdir,
    ConfigfsWrite,
    DeadlineReached,
    DlmAction,
    DlmCtl,
    DlmEvent,
    DlmSettings,
    DlmTransport,
    FenceAck,
    FenceAgentExited,
    FencedElsewhere,
    GroupConfchg,
    GroupMessage,
    JoinGroup,
    KernelLockspaces,
    LeaveGroup,
    LockspaceOffline,
    LockspaceOnline,
    LockspaceRemoved,
    SendGroupMessage,
    ShutdownRequested,
    SysfsWrite,
    decode_start,
    encode_start,
    lockspace_global_id,
    sockaddr_storage,
)
from cmanlk.dlm.fencing import AnnounceFenced, FencingPolicy, RunFenceAgent
from cmanlk.types import Instant, NodeId, ms
from kernel_glue.configfs import carry_out
from kernel_glue.fakes import FakeDlmKernel

TRACES = Path(__file__).resolve().parents[3] / "shared" / "kernel-lab" / "traces"
CONFIGFS = "/sys/kernel/config/dlm/"
SYSFS = "/sys/kernel/dlm/"
LINE = re.compile(r"^\S+\s+(mkdir|rmdir|write|uevent)\s+(\S+)\s*(.*)$")

def trace_ops(name: str) -> list[tuple[object, ...]]:
    """Return the kernel operations of a trace file, normalized like `kernel_ops` below."""
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"reference trace {path} not available")
    ops: list[tuple[object, ...]] = []
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if not m or m.group(1) == "uevent":
            continue
        op, target, rest = m.groups()
        if op in ("mkdir", "rmdir"):
            ops.append((op, target.removeprefix(CONFIGFS)))
            continue
        if rest.startswith("AF_INET"):
            value = sockaddr_storage(ipaddress.ip_address(rest.split()[1]))
        else:
            value = ast.literal_eval(rest).encode("latin-1")
        if target.startswith(SYSFS):
            ls, attr = target.removeprefix(SYSFS).split("/")
            ops.append(("sysfs", ls, attr, value))
        else:
            ops.append(("write", target.removeprefix(CONFIGFS), value))
    return ops


def kernel_ops(actions: list[DlmAction]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for a in actions:
        match a:
            case ConfigfsMkdir(path):
                out.append(("mkdir", path))
            case ConfigfsRmdir(path):
                out.append(("rmdir", path))
            case ConfigfsWrite(path, value):
                out.append(("write", path, value))
            case SysfsWrite(ls, attr, value):
                out.append(("sysfs", ls, attr, value))
    return out


class Node1:
    """Node 1's core with a loopback for its own group messages; other members' starts are fed."""

    def __init__(self, settings: DlmSettings) -> None:
        self.core = DlmCtl(settings)
        self.actions: list[DlmAction] = []
        self.t = 0

    def now(self) -> Instant:
        self.t += 1
        return Instant(self.t * 1_000_000)

    def feed(self, ev: DlmEvent) -> list[DlmAction]:
        out = self.core.handle(ev)
        self.actions += out
        return out

    def confchg(self, ls: str, members: tuple[int, ...], joined: tuple[int, ...] = (),
                left: tuple[tuple[int, int], ...] = ()) -> None:
        """A group change and then every member's start (our own comes back through cpg)."""
        g = f"dlm:ls:{ls}"
        ids = tuple(NodeId(n) for n in members)
        out = self.feed(GroupConfchg(self.now(), g, ids, tuple(NodeId(n) for n in joined),
                                     tuple((NodeId(n), r) for n, r in left)))
        sends = [a for a in out if isinstance(a, SendGroupMessage)]
        assert sends == [SendGroupMessage(g, encode_start(ids))]
        for n in ids:
            self.feed(GroupMessage(self.now(), g, n, encode_start(ids)))


def cluster(now: Instant, members: tuple[int, ...], quorate: bool = True) -> ClusterChanged:
    addrs = tuple((NodeId(n), (ipaddress.IPv4Address(f"10.213.7.{n}"),)) for n in members)
    return ClusterChanged(now, tuple(NodeId(n) for n in members), quorate, addrs)


def settings(fencing: bool, agents: frozenset[NodeId] = frozenset()) -> DlmSettings:
    return DlmSettings("klab", NodeId(1), log_debug=True,
                       fencing=FencingPolicy(enabled=fencing, nodes_with_agent=agents))


def test_global_id_is_crc32_of_the_group_name_with_nul() -> None:
    assert lockspace_global_id("lab1") == 943331636
    assert lockspace_global_id("gfs0") == 3603097754


def test_replays_the_2node_crash_with_fencing_trace() -> None:
    n = Node1(settings(fencing=True))
    n.feed(cluster(n.now(), (1, 2)))
    joins = n.feed(LockspaceOnline(n.now(), "lab1"))
    assert JoinGroup("dlm:ls:lab1") in joins
    n.confchg("lab1", (1,), joined=(1,))
    n.confchg("lab1", (1, 2), joined=(2,))
    n.feed(LockspaceOnline(n.now(), "gfs0"))
    n.confchg("gfs0", (1, 2), joined=(1,))
    n.feed(cluster(n.now(), (1,)))  # node 2 crashed; two_node keeps us quorate
    n.confchg("lab1", (1,), left=((2, CPG_REASON_NODEDOWN),))
    n.confchg("gfs0", (1,), left=((2, CPG_REASON_NODEDOWN),))
    assert n.core.waiting_for("lab1") == ["fencing of node 2"]
    before = len(n.actions)
    status = n.core.status(n.now())
    lockspaces: Any = status["lockspaces"]
    assert [ls["state"] for ls in lockspaces] == ["stopped", "stopped"]
    n.feed(FenceAck(n.now(), NodeId(2)))
    assert AnnounceFenced(NodeId(2), "ack") in n.actions[before:]
    n.feed(LockspaceOffline(n.now(), "gfs0"))
    n.feed(LockspaceOffline(n.now(), "lab1"))
    n.feed(ShutdownRequested(n.now()))
    assert kernel_ops(n.actions) == trace_ops("2node-crash-fencing.node1.protocol.txt")
    assert LeaveGroup("dlm:ls:lab1") in n.actions


def test_replays_the_3node_crash_trace_without_fencing() -> None:
    n = Node1(settings(fencing=False))
    n.feed(cluster(n.now(), (1, 2, 3)))
    n.feed(LockspaceOnline(n.now(), "lab1"))
    n.confchg("lab1", (1, 3), joined=(1,))
    n.confchg("lab1", (1, 2, 3), joined=(2,))
    n.feed(LockspaceOnline(n.now(), "gfs0"))
    n.confchg("gfs0", (1,), joined=(1,))
    n.confchg("gfs0", (1, 2), joined=(2,))
    n.confchg("gfs0", (1, 2, 3), joined=(3,))
    n.feed(cluster(n.now(), (1, 2)))  # node 3 crashed
    n.confchg("gfs0", (1, 2), left=((3, CPG_REASON_NODEDOWN),))  # its starts arrived first
    n.confchg("lab1", (1, 2), left=((3, CPG_REASON_NODEDOWN),))
    n.confchg("gfs0", (1,), left=((2, CPG_REASON_LEAVE),))  # node 2 unmounts
    n.feed(LockspaceOffline(n.now(), "gfs0"))
    n.feed(LockspaceOffline(n.now(), "lab1"))
    n.feed(ShutdownRequested(n.now()))
    assert kernel_ops(n.actions) == trace_ops("3node-crash.node1.protocol.txt")


def test_join_is_refused_before_the_cluster_is_quorate() -> None:
    core = DlmCtl(settings(fencing=True))
    assert core.handle(cluster(Instant(1), (1, 2), quorate=False)) == []
    assert core.handle(LockspaceOnline(Instant(2), "x")) == [SysfsWrite("x", "event_done", b"-107\0")]
    assert core.lockspaces == {}


def _joined_pair(fencing: FencingPolicy) -> Node1:
    n = Node1(DlmSettings("klab", NodeId(1), fencing=fencing))
    n.feed(cluster(n.now(), (1, 2, 3)))
    n.feed(LockspaceOnline(n.now(), "ls"))
    n.confchg("ls", (1, 2, 3), joined=(1,))
    return n


def test_recovery_waits_for_a_failed_agent_retried_with_backoff() -> None:
    n = _joined_pair(FencingPolicy(nodes_with_agent=frozenset({NodeId(3)})))
    n.feed(cluster(n.now(), (1, 2)))
    n.confchg("ls", (1, 2), left=((3, CPG_REASON_NODEDOWN),))
    assert RunFenceAgent(NodeId(3), 1) in n.actions
    t = n.now()
    assert n.feed(FenceAgentExited(t, NodeId(3), 1)) == []
    assert n.core.next_deadline == t + ms(1000)
    assert n.feed(DeadlineReached(Instant(t + ms(999)))) == []
    assert n.feed(DeadlineReached(Instant(t + ms(1000)))) == [RunFenceAgent(NodeId(3), 2)]
    t2 = Instant(t + ms(1500))
    assert n.feed(FenceAgentExited(t2, NodeId(3), 1)) == []
    assert n.core.next_deadline == t2 + ms(2000)  # doubled
    assert n.feed(DeadlineReached(Instant(t2 + ms(2000)))) == [RunFenceAgent(NodeId(3), 3)]
    out = n.feed(FenceAgentExited(Instant(t2 + ms(2500)), NodeId(3), 0))
    assert out[0] == AnnounceFenced(NodeId(3), "agent")
    assert kernel_ops(out[1:]) == [("rmdir", "cluster/spaces/ls/nodes/3"), ("sysfs", "ls", "control", b"1\0")]
    assert n.core.fencing.status()[0]["attempts"] == 3


def test_only_the_lowest_quorate_node_runs_agents_others_wait_for_the_announcement() -> None:
    policy = FencingPolicy(nodes_with_agent=frozenset({NodeId(1)}))
    core = DlmCtl(DlmSettings("klab", NodeId(2), fencing=policy))
    core.handle(cluster(Instant(1), (1, 2, 3)))
    core.handle(LockspaceOnline(Instant(2), "ls"))
    g = "dlm:ls:ls"
    members = (NodeId(1), NodeId(2), NodeId(3))
    core.handle(GroupConfchg(Instant(3), g, members, (NodeId(2),), ()))
    for s in members:
        core.handle(GroupMessage(Instant(4), g, s, encode_start(members)))
    out = core.handle(cluster(Instant(5), (2, 3)))  # node 1, the fencer, dies: 2 takes over
    out += core.handle(GroupConfchg(Instant(6), g, members[1:], (), ((NodeId(1), CPG_REASON_NODEDOWN),)))
    assert RunFenceAgent(NodeId(1), 1) in out
    core2 = DlmCtl(DlmSettings("klab", NodeId(3), fencing=policy))
    core2.handle(cluster(Instant(1), (1, 2, 3)))
    out2 = core2.handle(cluster(Instant(5), (2, 3)))
    assert not any(isinstance(a, RunFenceAgent) for a in out2)


def test_no_recovery_without_quorum_even_when_fenced() -> None:
    n = _joined_pair(FencingPolicy(enabled=True))
    n.feed(cluster(n.now(), (1,), quorate=False))
    n.confchg("ls", (1,), left=((2, CPG_REASON_NODEDOWN), (3, CPG_REASON_NODEDOWN)))
    n.feed(FencedElsewhere(n.now(), NodeId(2), "agent"))
    n.feed(FenceAck(n.now(), NodeId(3)))
    assert n.core.waiting_for("ls") == ["quorum"]
    assert not any(op == ("sysfs", "ls", "control", b"1\0") for op in kernel_ops(n.actions[-3:]))
    out = n.feed(cluster(n.now(), (1, 4), quorate=True))
    assert ("sysfs", "ls", "control", b"1\0") in kernel_ops(out)


def test_several_links_write_every_address_and_choose_sctp() -> None:
    core = DlmCtl(DlmSettings("klab", NodeId(1)))
    a = (ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv6Address("fd00::1"))
    b = (ipaddress.IPv4Address("10.0.0.2"), ipaddress.IPv6Address("fd00::2"))
    out = kernel_ops(core.handle(ClusterChanged(Instant(1), (NodeId(1), NodeId(2)), True,
                                                ((NodeId(1), a), (NodeId(2), b)))))
    assert ("write", "cluster/protocol", b"1") in out
    assert [op for op in out if op[1] == "cluster/comms/2/addr"] == [
        ("write", "cluster/comms/2/addr", sockaddr_storage(b[0])),
        ("write", "cluster/comms/2/addr", sockaddr_storage(b[1]))]
    assert out.index(("write", "cluster/comms/1/local", b"1")) < out.index(("mkdir", "cluster/comms/2"))
    tcp = DlmCtl(DlmSettings("klab", NodeId(1), transport=DlmTransport.TCP, tcp_port=21065))
    out = kernel_ops(tcp.handle(ClusterChanged(Instant(1), (NodeId(1),), True, ((NodeId(1), a),))))
    assert ("write", "cluster/protocol", b"0") in out and ("write", "cluster/tcp_port", b"21065") in out


def test_hostile_group_input_is_counted_not_raised() -> None:
    n = _joined_pair(FencingPolicy(enabled=False))
    g = "dlm:ls:ls"
    for payload in (b"", b"garbage", b"cmanlk-dlm-start x,y", b"cmanlk-dlm-start " + b"1," * 5000):
        assert n.feed(GroupMessage(n.now(), g, NodeId(2), payload)) == []
    assert n.feed(GroupMessage(n.now(), g, NodeId(2), encode_start((NodeId(7),)))) == []
    assert n.feed(GroupMessage(n.now(), "dlm:ls:nope", NodeId(2), encode_start((NodeId(1),)))) == []
    assert sum(n.core.dropped.values()) == 6
    assert decode_start(encode_start((NodeId(3), NodeId(1)))) == (NodeId(1), NodeId(3))


def test_shutdown_is_refused_while_lockspaces_exist() -> None:
    n = _joined_pair(FencingPolicy(enabled=False))
    assert n.feed(ShutdownRequested(n.now())) == []
    n.feed(LockspaceOffline(n.now(), "ls"))
    assert kernel_ops(n.feed(ShutdownRequested(n.now()))) == [
        ("rmdir", "cluster/comms/3"), ("rmdir", "cluster/comms/2"), ("rmdir", "cluster/comms/1"),
        ("rmdir", "cluster")]


# -- random histories against the in-memory kernel twin -----------------------------------------

PEERS = (NodeId(2), NodeId(3))
LOCKSPACES = ("a", "b")


class Model:
    """Node 1's world: the fake kernel, cluster membership, group memberships, failed nodes."""

    def __init__(self) -> None:
        self.kernel = FakeDlmKernel()
        self.core = DlmCtl(DlmSettings("klab", NodeId(1), fencing=FencingPolicy(enabled=True)))
        self.t = 0
        self.members: set[NodeId] = {NodeId(1), *PEERS}
        self.quorate = True
        self.groups: dict[str, set[NodeId]] = {}
        self.pending_starts: dict[str, tuple[NodeId, ...]] = {}
        self.unfenced: set[NodeId] = set()
        # victims acknowledged while members again: the administrator switched them off, so their
        # departure at the next membership change is that failure, already fenced (fencing.py)
        self.switched_off: set[NodeId] = set()
        self.joins: dict[str, object] = {}

    def now(self) -> Instant:
        self.t += 1
        return Instant(self.t)

    def feed(self, ev: DlmEvent) -> None:
        pending = [ev]
        while pending:
            for a in self.core.handle(pending.pop(0)):
                pending += self.carry_out(a)

    def carry_out(self, a: DlmAction) -> list[DlmEvent]:
        match a:
            case SysfsWrite(ls, "control", b"1\0"):
                assert self.quorate, "recovery started without quorum"
                assert not self.unfenced, f"recovery started while {self.unfenced} unfenced"
        match a:
            case ConfigfsMkdir() | ConfigfsRmdir() | ConfigfsWrite() | SysfsWrite():
                carry_out(a, self.kernel.configfs, self.kernel.sysfs)  # raises on any inconsistency
            case JoinGroup(group):
                ls = group.removeprefix("dlm:ls:")
                others = {p for p in PEERS if p in self.members and p in self.groups.get(ls, set())}
                self.groups[ls] = others | {NodeId(1)}
                return [self.confchg(ls, joined=(NodeId(1),))]
            case LeaveGroup(group):
                self.groups.pop(group.removeprefix("dlm:ls:"), None)
            case SendGroupMessage(group, payload):
                members = decode_start(payload)
                assert members is not None
                self.pending_starts[group.removeprefix("dlm:ls:")] = members
        return []

    def confchg(self, ls: str, joined: tuple[NodeId, ...] = (),
                left: tuple[tuple[NodeId, int], ...] = ()) -> GroupConfchg:
        return GroupConfchg(self.now(), f"dlm:ls:{ls}", tuple(sorted(self.groups[ls])), joined, left)


def _step(m: Model, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["cluster", "online", "offline", "peer", "starts", "ack"]))
    ls = data.draw(st.sampled_from(LOCKSPACES))
    peer = data.draw(st.sampled_from(PEERS))
    joined = ls in m.core.lockspaces
    if kind == "cluster":
        members = {NodeId(1)} | set(data.draw(st.sets(st.sampled_from(PEERS))))
        quorate = data.draw(st.booleans())
        lost = m.members - members
        m.members, m.quorate = members, quorate
        m.feed(cluster(m.now(), tuple(sorted(members)), quorate))
        off, m.switched_off = m.switched_off & lost, set()
        for g, gm in list(m.groups.items()):
            for n in sorted(lost & gm):
                gm.discard(n)
                if n not in off:
                    m.unfenced.add(n)
                m.feed(m.confchg(g, left=((n, CPG_REASON_NODEDOWN),)))
    elif kind == "online" and not joined and m.core.cluster_ready:
        m.joins[ls] = m.kernel.request_join(ls)
        m.feed(LockspaceOnline(m.now(), ls))
    elif kind == "offline" and joined and not m.kernel.sysfs.lockspaces() == []:
        if ls in m.kernel.sysfs.lockspaces() and m.joins[ls].done:  # type: ignore[attr-defined]
            m.kernel.request_leave(ls)
            m.feed(LockspaceOffline(m.now(), ls))
    elif kind == "peer" and ls in m.groups and peer in m.members:
        if peer in m.groups[ls]:
            m.groups[ls].discard(peer)
            m.feed(m.confchg(ls, left=((peer, CPG_REASON_LEAVE),)))
        else:
            m.groups[ls].add(peer)
            m.feed(m.confchg(ls, joined=(peer,)))
    elif kind == "starts" and ls in m.pending_starts and ls in m.groups:
        starting = m.pending_starts[ls]
        for n in data.draw(st.permutations(list(starting))):
            m.feed(GroupMessage(m.now(), f"dlm:ls:{ls}", n, encode_start(starting)))
    elif kind == "ack":
        if peer in m.unfenced and peer in m.members:
            m.switched_off.add(peer)
        m.unfenced.discard(peer)
        m.feed(FenceAck(m.now(), peer))


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_histories_keep_the_kernel_tree_consistent_and_never_recover_unsafely(
        data: st.DataObject) -> None:
    m = Model()
    m.feed(cluster(m.now(), (1, 2, 3)))
    for _ in range(data.draw(st.integers(1, 40))):
        _step(m, data)
    assert json.loads(json.dumps(m.core.status(m.now())))["cluster"]["configured"] is True


def test_lost_uevents_are_recovered_from_the_kernel_lockspace_list() -> None:
    n = _joined_pair(FencingPolicy(enabled=False))
    out = n.feed(KernelLockspaces(n.now(), ("ls", "missed")))
    assert kernel_ops(out) == [("sysfs", "missed", "id", f"{lockspace_global_id('missed')}\0".encode()),
                               ("mkdir", "cluster/spaces/missed")]
    assert JoinGroup("dlm:ls:missed") in out


def test_status_is_plain_data_with_what_each_lockspace_waits_for() -> None:
    n = _joined_pair(FencingPolicy(enabled=True))
    n.feed(cluster(n.now(), (1, 2)))
    n.confchg("ls", (1, 2), left=((3, CPG_REASON_NODEDOWN),))
    status = json.loads(json.dumps(n.core.status(Instant(n.t * 1_000_000 + 5_000_000))))
    (ls,) = status["lockspaces"]
    assert ls["state"] == "stopped" and ls["waiting_for"] == ["fencing of node 3"]
    assert ls["members"] == [1, 2] and ls["kernel_nodes"] == [1, 2, 3] and ls["for_ns"] > 0
    victim = status["fencing"]["victims"][0]
    assert victim["nodeid"] == 3 and victim["state"] == "waiting"
    assert status["cluster"] == {"configured": True, "quorate": True, "members": [1, 2], "comms": [1, 2]}


def test_a_lockspace_removed_behind_our_back_is_cleaned_up() -> None:
    n = _joined_pair(FencingPolicy(enabled=False))
    out = n.feed(LockspaceRemoved(n.now(), "ls"))
    assert kernel_ops(out) == [("rmdir", "cluster/spaces/ls/nodes/3"), ("rmdir", "cluster/spaces/ls/nodes/2"),
                               ("rmdir", "cluster/spaces/ls/nodes/1"), ("rmdir", "cluster/spaces/ls")]
    assert LeaveGroup("dlm:ls:ls") in out and n.core.lockspaces == {}
    assert n.feed(LockspaceRemoved(n.now(), "ls")) == []  # after a normal leave: nothing to do


def test_a_join_while_our_leave_is_in_flight_waits_for_the_leave() -> None:
    """cmanlk-sim --stack seed 1756: node 5 left ls0 and joined it again before its cpg leave was
    delivered. The group join then was refused (the leave still in flight: cpg's `exist`, as
    corosync's) and the kernel waited for event_done forever. The join now waits for our own
    leave's confchg, then goes as a fresh join."""
    n = _joined_pair(FencingPolicy(enabled=False))
    out = n.feed(LockspaceOffline(n.now(), "ls"))
    assert LeaveGroup("dlm:ls:ls") in out
    assert n.feed(LockspaceOnline(n.now(), "ls")) == []  # waits for the leave
    g = "dlm:ls:ls"
    out = n.feed(GroupConfchg(n.now(), g, (NodeId(2), NodeId(3)), (), ((NodeId(1), 2),)))
    assert out[-1] == JoinGroup(g) and SysfsWrite("ls", "id", _sys_id("ls")) in out
    n.confchg("ls", (1, 2, 3), joined=(1,))
    assert n.core.lockspaces["ls"].state.value == "started"
    assert ("sysfs", "ls", "event_done", b"0\0") in kernel_ops(n.actions[-6:])


def _sys_id(name: str) -> bytes:
    from cmanlk.dlm.control import lockspace_global_id
    return f"{lockspace_global_id(name)}".encode() + b"\0"


def test_a_failure_reported_while_our_leave_is_in_flight_is_still_ours_to_fence() -> None:
    """cmanlk-sim --stack --seed 5 --nodes 2-4: node 1 left ls0 while partitioned; the merged ring's
    change of the group still had node 1 in it and reported node 2 failed, so nodes 3 and 4 counted
    node 1, the lowest witness, as the fencer, but node 1 ignored the change (its lockspace was gone)
    and nobody fenced node 2: ls0 stayed stopped for ever."""
    n = _joined_pair(FencingPolicy(nodes_with_agent=frozenset({NodeId(2)})))
    n.feed(LockspaceOffline(n.now(), "ls"))
    g = "dlm:ls:ls"
    n.feed(cluster(n.now(), (1, 3)))
    out = n.feed(GroupConfchg(n.now(), g, (NodeId(1), NodeId(3)), (), ((NodeId(2), CPG_REASON_NODEDOWN),)))
    assert out == [RunFenceAgent(NodeId(2), 1)]
    out = n.feed(FenceAgentExited(n.now(), NodeId(2), 0))
    assert out == [AnnounceFenced(NodeId(2), "agent")]
    out = n.feed(GroupConfchg(n.now(), g, (NodeId(3),), (), ((NodeId(1), 2),)))  # our leave completes
    assert out == [] and "ls" not in n.core.leaving and n.core.lockspaces == {}


def test_nothing_starts_or_is_shot_on_an_older_rings_quorum_while_a_sync_runs() -> None:
    """cmanlk-sim --stack --seed 3831: an administrator's fence-ack during a new ring's sync
    restarted ls0 on the previous ring's quorum, and the new ring turned out inquorate."""
    n = _joined_pair(FencingPolicy(nodes_with_agent=frozenset({NodeId(3)})))
    n.feed(cluster(n.now(), (1, 2)))
    n.confchg("ls", (1, 2), left=((3, CPG_REASON_NODEDOWN),))
    assert RunFenceAgent(NodeId(3), 1) in n.actions
    assert n.feed(FenceAgentExited(n.now(), NodeId(3), 1)) == []  # failed: retried later
    assert n.feed(ClusterSyncing(n.now())) == []
    assert n.core.next_deadline is None  # no retry while the quorum is unknown
    assert n.feed(FenceAck(n.now(), NodeId(3))) == [AnnounceFenced(NodeId(3), "ack")]
    assert n.core.waiting_for("ls") == ["quorum"]
    out = n.feed(cluster(n.now(), (1, 2)))  # the new ring's quorum: quorate
    assert ("sysfs", "ls", "control", b"1\0") in kernel_ops(out)
