"""cpg (service 2): byte-exact corosync layouts, hostile input, and group semantics on a simulated
3-node Stack (joins, agreed-order delivery, leave, process down, node down with identical
confchgs on every survivor, node up merge)."""

from __future__ import annotations

import random
import struct

import pytest

from cmanlk.errors import ErrorCode, MalformedPacket, UsageError
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CPG_SERVICE, Notification, SendMessage
from cmanlk.services.cpg import service as cpg
from cmanlk.services.cpg import wire as cw
from cmanlk.services.cpg.service import (
    REASON_JOIN,
    REASON_LEAVE,
    REASON_NODEDOWN,
    REASON_NODEUP,
    REASON_PROCDOWN,
    ClientGone,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    CpgService,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.sim.cluster import Cluster
from cmanlk.stack import (
    LOCAL_REQUEST_ROOM_BYTES,
    RequestResult,
    ServiceRequest,
    Stack,
    StackConfig,
    default_services,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import McastRequested
from cmanlk.totem.totempg import MESSAGE_SIZE_MAX, QUEUE_ENTRY_COST_BYTES
from cmanlk.types import NodeId, RingId, ms

from .test_stack import Recorder

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)
H1, H2 = Handle(11), Handle(12)
G = b"dlm:controld"


# --- wire layouts -------------------------------------------------------------------------------------


def test_struct_sizes_match_corosync():
    join = cw.encode_procjoin(cw.MESSAGE_REQ_EXEC_CPG_PROCJOIN, G, 4242, REASON_JOIN)
    assert len(join) == 168
    header = svcwire.decode_request_header(join)
    assert header.id == (2 << 16) | 0 and header.size == 168
    assert struct.unpack_from("<I", join, 16)[0] == len(G)
    assert join[24 : 24 + len(G)] == G and join[24 + len(G) : 152] == bytes(128 - len(G))
    assert struct.unpack_from("<II", join, 152) == (4242, 0)
    assert struct.unpack_from("<I", join, 160)[0] == REASON_JOIN

    mcast = cw.encode_mcast(G, 7, N2, 0x1122334455667788, b"hello")
    assert len(mcast) == 184 + 5 and svcwire.decode_request_header(mcast).size == 189
    assert struct.unpack_from("<I", mcast, 152)[0] == 5
    assert struct.unpack_from("<I", mcast, 160)[0] == 7
    assert struct.unpack_from("<I", mcast, 168)[0] == 2
    assert struct.unpack_from("<Q", mcast, 176)[0] == 0x1122334455667788
    assert mcast[184:] == b"hello"

    joinlist = cw.encode_joinlist([(1, b"a"), (2, G)])
    assert len(joinlist) == 24 + 2 * 144
    assert svcwire.decode_response_header(joinlist) == ((2 << 16) | 2, 312, 0)
    assert struct.unpack_from("<I", joinlist, 24 + 144)[0] == 2
    assert struct.unpack_from("<I", joinlist, 24 + 144 + 8)[0] == len(G)

    downlist = cw.encode_downlist(3, (N3,))
    assert len(downlist) == 1568
    assert struct.unpack_from("<III", downlist, 16)[0::2] == (3, 1)
    assert struct.unpack_from("<II", downlist, 32) == (3, 0)

    partial = cw.encode_partial_mcast(G, 10, 7, cw.PARTIAL_FIRST, N1, 5, b"abcd")
    assert len(partial) == 200 + 4
    assert struct.unpack_from("<I", partial, 160)[0] == 4 and struct.unpack_from("<I", partial, 176)[0] == 1


def test_codecs_round_trip():
    assert cw.decode_procjoin(cw.encode_procjoin(1, G, 9, REASON_PROCDOWN)) == cw.ProcJoin(G, 9, 5)
    m = cw.decode_mcast(cw.encode_mcast(G, 9, N1, 3, b"x" * 1000))
    assert (m.group, m.pid, m.source_nodeid, m.source_conn, m.payload) == (G, 9, N1, 3, b"x" * 1000)
    assert cw.decode_joinlist(cw.encode_joinlist([(5, G), (6, b"b")])) == [(5, G), (6, b"b")]
    assert cw.decode_joinlist(cw.encode_joinlist([])) == []
    assert cw.decode_downlist(cw.encode_downlist(4, (N2, N3))) == cw.Downlist(4, (N2, N3))
    p = cw.decode_partial_mcast(cw.encode_partial_mcast(G, 10, 7, cw.PARTIAL_LAST, N1, 5, b"ab"))
    assert (p.msglen, p.kind, p.fragment) == (10, cw.PARTIAL_LAST, b"ab")


@pytest.mark.parametrize(
    ("function", "message", "reason"),
    [
        (0, cw.encode_procjoin(0, G, 1, 1)[:167], "cpg_procjoin_short"),
        (0, cw.encode_procjoin(0, G, 1, 1)[:16] + struct.pack("<I", 129) + bytes(148), "cpg_procjoin_name_length"),  # noqa: E501
        (1, cw.encode_procjoin(1, G, 1, 9), "cpg_procleave_reason"),
        (3, cw.encode_mcast(G, 1, N1, 0, b"abc")[:-1], "cpg_mcast_length"),
        (2, cw.encode_joinlist([(1, G)])[:-1], "cpg_joinlist_size"),
        (5, cw.encode_downlist(1, ())[:1000], "cpg_downlist_short"),
        (5, cw.encode_downlist(1, ())[:24] + struct.pack("<I", 385) + bytes(1540), "cpg_downlist_entries"),
        (6, cw.encode_partial_mcast(G, 10, 7, 4, N1, 5, b"ab"), "cpg_partial_type"),
        (6, cw.encode_partial_mcast(G, 1, 7, 1, N1, 5, b"ab"), "cpg_partial_length"),
        (9, cw.encode_procjoin(0, G, 1, 1), "cpg_unknown_function"),
    ],
)
def test_hostile_messages_raise_malformed_packet(function, message, reason):
    svc = CpgService(N1)
    with pytest.raises(MalformedPacket) as info:
        svc.on_message(N2, function, message)
    assert info.value.reason == reason


def test_random_bytes_decode_or_raise_malformed_packet():
    rng = random.Random(7)
    svc = CpgService(N1)
    _synced(svc, (N1, N2))
    for _ in range(2000):
        function = rng.randrange(8)
        data = bytes(rng.randrange(256) for _ in range(rng.choice((8, 24, 160, 168, 200, 400))))
        try:
            svc.on_message(N2, function, data)
        except MalformedPacket:
            pass


# --- the service alone, with a fake agreed order -----------------------------------------------------


def _synced(svc: CpgService, members: tuple[NodeId, ...]) -> list[Notification]:
    svc.sync_init(RingId(4, members[0]), members, members)
    svc.sync_process()
    return [o for o in svc.sync_activate() if isinstance(o, Notification)]


def _sent(outputs) -> list[bytes]:
    return [o.message for o in outputs if isinstance(o, SendMessage)]


def _loop(svc: CpgService, outputs) -> list[Notification]:
    """Deliver our own sends back to us in order (a one-node agreed order)."""
    notes: list[Notification] = []
    queue = list(outputs)
    while queue:
        o = queue.pop(0)
        if isinstance(o, SendMessage):
            queue += svc.on_message(svc.me, o.function, o.message)
        elif isinstance(o, Notification):
            notes.append(o)
    return notes


def test_local_state_machine_error_codes():
    svc = CpgService(N1)
    with pytest.raises(UsageError) as info:
        svc.on_local_request(CpgJoin(H1, G, 100))
    assert info.value.code.wire == "try_again"  # no ring synchronised yet
    _synced(svc, (N1,))
    for group, code in ((b"", "invalid_param"), (b"x" * 129, "name_too_long")):
        with pytest.raises(UsageError) as info:
            svc.on_local_request(CpgJoin(H1, group, 100))
        assert info.value.code.wire == code
    join = svc.on_local_request(CpgJoin(H1, G, 100))
    for request, code in (
        (CpgJoin(H1, G, 100), "exist"),
        (CpgJoin(H2, G, 100), "exist"),
        (CpgLeave(H1, G), "busy"),
        (CpgLeave(H2, G), "not_exist"),
        (CpgMcast(H2, G, b"x"), "not_exist"),
        (CpgMcast(H1, G, bytes(cpg.MAX_MESSAGE_BYTES + 1)), "too_large"),
    ):
        with pytest.raises(UsageError) as info:
            svc.on_local_request(request)
        assert info.value.code.wire == code, request
    # mcast is allowed while the join is in flight (JOIN_STARTED), as in corosync.
    mcast = svc.on_local_request(CpgMcast(H1, G, b"early"))
    notes = _loop(svc, join + mcast)
    confchg = notes[0]
    assert isinstance(confchg, CpgConfchg)
    assert confchg.joined == (CpgAddress(N1, 100, REASON_JOIN),) and confchg.members == (CpgAddress(N1, 100),)
    assert notes[1] == CpgDeliver((H1,), G, N1, 100, b"early")
    leave = svc.on_local_request(CpgLeave(H1, G))
    with pytest.raises(UsageError) as info:
        svc.on_local_request(CpgMcast(H1, G, b"x"))
    assert info.value.code.wire == "not_exist"
    with pytest.raises(UsageError) as info:
        svc.on_local_request(CpgJoin(H1, G, 100))
    assert info.value.code.wire == "exist"  # corosync checks (pid, group) across connections first
    notes = _loop(svc, leave)
    assert notes == [CpgConfchg((H1,), G, (), (CpgAddress(N1, 100, REASON_LEAVE),), ())]
    assert svc.local_processes() == [] and svc.groups() == []
    # After the leave is delivered the connection may join again.
    assert _sent(svc.on_local_request(CpgJoin(H1, G, 100)))


def test_flow_control_refuses_past_in_flight_bound_and_recovers_on_delivery():
    svc = CpgService(N1)
    _synced(svc, (N1,))
    _loop(svc, svc.on_local_request(CpgJoin(H1, G, 1)))
    chunk = bytes(cpg.MAX_MESSAGE_BYTES)
    sends = []
    with pytest.raises(UsageError) as info:
        for _ in range(10):
            sends += svc.on_local_request(CpgMcast(H1, G, chunk))
    assert info.value.code.wire == "try_again"
    assert 0 < svc.in_flight_bytes <= cpg.MAX_IN_FLIGHT_BYTES
    # Delivering the last one settles every older send too.
    svc.on_message(N1, cw.MESSAGE_REQ_EXEC_CPG_MCAST, _sent(sends)[-1])
    assert svc.in_flight_bytes == 0
    assert svc.on_local_request(CpgMcast(H1, G, chunk))


def test_initial_totem_conf_follows_own_join():
    svc = CpgService(N1)
    _synced(svc, (N1,))
    notes = _loop(svc, svc.on_local_request(CpgJoin(H1, G, 1, initial_totem_conf=True)))
    assert isinstance(notes[0], CpgConfchg)
    assert notes[1] == CpgTotemConfchg((H1,), RingId(4, N1), (N1,))


def test_mcast_from_node_without_group_member_is_not_delivered():
    svc = CpgService(N1)
    _synced(svc, (N1, N2))
    _loop(svc, svc.on_local_request(CpgJoin(H1, G, 1)))
    assert svc.on_message(N2, 3, cw.encode_mcast(G, 9, N2, 0, b"x")) == []
    assert svc.stats["mcast_unknown_node"] == 1
    svc.on_message(N2, 0, cw.encode_procjoin(0, G, 9, REASON_JOIN))
    assert svc.on_message(N2, 3, cw.encode_mcast(G, 9, N2, 0, b"x")) == [CpgDeliver((H1,), G, N2, 9, b"x")]


def test_partial_mcast_is_reassembled_and_bounded():
    svc = CpgService(N1)
    _synced(svc, (N1, N2))
    _loop(svc, svc.on_local_request(CpgJoin(H1, G, 1)))
    svc.on_message(N2, 0, cw.encode_procjoin(0, G, 9, REASON_JOIN))
    parts = [(cw.PARTIAL_FIRST, b"abc"), (cw.PARTIAL_CONTINUED, b"def"), (cw.PARTIAL_LAST, b"g")]
    out = []
    for kind, frag in parts:
        out += svc.on_message(N2, 6, cw.encode_partial_mcast(G, 7, 9, kind, N2, 1, frag))
    assert out == [CpgDeliver((H1,), G, N2, 9, b"abcdefg")]
    assert svc.on_message(N2, 6, cw.encode_partial_mcast(G, 7, 9, cw.PARTIAL_LAST, N2, 1, b"x")) == []
    assert svc.stats["partial_without_first"] == 1
    svc.on_message(N2, 6, cw.encode_partial_mcast(G, 4, 9, cw.PARTIAL_FIRST, N2, 1, b"abc"))
    svc.on_message(N2, 6, cw.encode_partial_mcast(G, 4, 9, cw.PARTIAL_CONTINUED, N2, 1, b"de"))
    assert svc.stats["partial_overflow"] == 1


# --- three simulated nodes -----------------------------------------------------------------------------


def make_cluster(n: int, seed: int = 1):
    nodes = tuple(NodeId(i) for i in range(1, n + 1))
    totem = TotemConfig.derive(nodes, token_ms=1000)
    qconf = QuorumConfig.for_nodes(nodes)
    services = default_services(qconf, extra=(CpgService,))
    log: dict[NodeId, list[Notification]] = {}

    def factory(config, me, rng, ring_seq):
        return Recorder(Stack(StackConfig(config, qconf, services=services), me, rng, ring_seq), log)

    return Cluster(totem, seed=seed, factory=factory), nodes, log


def stack(cluster, n) -> Stack:
    return cluster.nodes[n].core.stack


def cpg_of(cluster, n) -> CpgService:
    svc = stack(cluster, n).services[CPG_SERVICE]
    assert isinstance(svc, CpgService)
    return svc


def settled(cluster, nodes):
    return lambda: all(
        cluster.nodes[n].up and stack(cluster, n).members == nodes and not stack(cluster, n).is_synchronising
        for n in nodes
    )


def request(cluster, n, req, request_id=1) -> RequestResult:
    node = cluster.nodes[n]
    before = len(node.core.log)
    cluster._feed(node, ServiceRequest(cluster.now, CPG_SERVICE, req, request_id))
    results = [x for x in node.core.log[before:] if isinstance(x, RequestResult)]
    assert len(results) == 1
    return results[0]


def of(log, kind, since=0):
    return [x for x in log[since:] if isinstance(x, kind)]


def boot_and_join(cluster, nodes):
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes))
    for n in nodes:
        assert request(cluster, n, CpgJoin(Handle(n * 10), G, 1000 + n)).error is None
    members = tuple((n, 1000 + n) for n in nodes)
    assert cluster.run_for(ms(2000), lambda: all(cpg_of(cluster, n).members_of(G) == members for n in nodes))


def test_three_nodes_join_and_see_the_same_messages_in_the_same_order():
    cluster, nodes, log = make_cluster(3)
    boot_and_join(cluster, nodes)
    for n in nodes:
        confs = of(log[n], CpgConfchg)
        # Each node's own handle sees its join and every join after it, identically everywhere.
        assert confs[-1].members == tuple(CpgAddress(m, 1000 + m) for m in nodes)
        assert all(c.handles == (Handle(n * 10),) for c in confs)
    marks = {n: len(log[n]) for n in nodes}
    for i in range(30):
        sender = nodes[i % 3]
        assert request(cluster, sender, CpgMcast(Handle(sender * 10), G, b"m%d" % i)).error is None
    expected_count = 30
    assert cluster.run_for(
        ms(3000), lambda: all(len(of(log[n], CpgDeliver, marks[n])) == expected_count for n in nodes)
    )
    orders = {n: [(d.nodeid, d.pid, d.payload) for d in of(log[n], CpgDeliver, marks[n])] for n in nodes}
    assert orders[N1] == orders[N2] == orders[N3]
    assert sorted(p for _n, _p, p in orders[N1]) == sorted(b"m%d" % i for i in range(30))
    # Per-sender FIFO inside the total order.
    for s in nodes:
        mine = [p for n, _pid, p in orders[N1] if n == s]
        assert mine == [b"m%d" % i for i in range(30) if nodes[i % 3] == s]
    assert all(not cpg_of(cluster, n).stats for n in nodes), [cpg_of(cluster, n).stats for n in nodes]


def test_node_failure_is_reported_with_reason_3_identically_on_every_survivor():
    cluster, nodes, log = make_cluster(3)
    boot_and_join(cluster, nodes)
    # A second group that only node 3 and node 1 are in.
    assert request(cluster, N1, CpgJoin(Handle(99), b"other", 5)).error is None
    assert request(cluster, N3, CpgJoin(Handle(98), b"other", 6)).error is None
    cluster.run_for(ms(1000))
    marks = {n: len(log[n]) for n in nodes}
    cluster.crash(N3)
    survivors = (N1, N2)
    assert cluster.run_for(ms(10000), settled(cluster, survivors))
    seen = {}
    for n in survivors:
        confs = [c for c in of(log[n], CpgConfchg, marks[n]) if c.group == G]
        assert len(confs) == 1
        c = confs[0]
        assert c.left == (CpgAddress(N3, 1003, REASON_NODEDOWN),) and c.joined == ()
        assert c.members == (CpgAddress(N1, 1001), CpgAddress(N2, 1002))
        seen[n] = (c.members, c.left)
        totem = of(log[n], CpgTotemConfchg, marks[n])[-1]
        assert totem.members == survivors and totem.ring_id == stack(cluster, n).ring_id
        # The confchg comes before the totem confchg, as in cpg_sync_activate.
        kinds = [type(x) for x in log[n][marks[n] :] if isinstance(x, (CpgConfchg, CpgTotemConfchg))]
        assert kinds.index(CpgTotemConfchg) > kinds.index(CpgConfchg)
    assert seen[N1] == seen[N2]
    other = [c for c in of(log[N1], CpgConfchg, marks[N1]) if c.group == b"other"]
    assert other[0].left == (CpgAddress(N3, 6, REASON_NODEDOWN),) and other[0].members == (CpgAddress(N1, 5),)
    assert not of(log[N2], CpgConfchg, marks[N2]) or all(
        c.group == G for c in of(log[N2], CpgConfchg, marks[N2])
    )
    for n in survivors:
        assert cpg_of(cluster, n).groups() == cpg_of(cluster, N1).groups()
        assert "downlist_mismatch" not in cpg_of(cluster, n).stats


def test_node_up_merges_joinlists_with_reason_4():
    cluster, nodes, log = make_cluster(3)
    boot_and_join(cluster, nodes)
    cluster.crash(N3)
    survivors = (N1, N2)
    assert cluster.run_for(ms(10000), settled(cluster, survivors))
    marks = {n: len(log[n]) for n in nodes}
    cluster.boot(N3)
    assert cluster.run_for(ms(10000), settled(cluster, nodes))
    assert request(cluster, N3, CpgJoin(Handle(30), G, 1003)).error is None
    assert cluster.run_for(ms(2000), lambda: all(len(cpg_of(cluster, n).members_of(G)) == 3 for n in nodes))
    # Node 3's fresh process learns the others through its own join's confchg (members listed).
    c3 = of(log[N3], CpgConfchg, marks[N3])
    assert c3[0].members == (CpgAddress(N1, 1001), CpgAddress(N2, 1002), CpgAddress(N3, 1003))
    for n in survivors:
        confs = of(log[n], CpgConfchg, marks[n])
        assert confs[-1].joined == (CpgAddress(N3, 1003, REASON_JOIN),)
    for n in survivors:
        assert cpg_of(cluster, n).members_of(G) == cpg_of(cluster, N3).members_of(G)


def test_partition_heal_reports_node_up_from_joinlists():
    cluster, nodes, log = make_cluster(3)
    boot_and_join(cluster, nodes)
    cluster.network.partition([[N1, N2], [N3]])
    apart = settled(cluster, (N1, N2))
    assert cluster.run_for(ms(15000), lambda: apart() and stack(cluster, N3).members == (N3,))
    marks = {n: len(log[n]) for n in nodes}
    cluster.network.heal()
    assert cluster.run_for(ms(15000), settled(cluster, nodes))
    joined1 = [c for c in of(log[N1], CpgConfchg, marks[N1]) if c.joined]
    assert joined1[-1].joined == (CpgAddress(N3, 1003, REASON_NODEUP),)
    joined3 = [c for c in of(log[N3], CpgConfchg, marks[N3]) if c.joined]
    up = {CpgAddress(N1, 1001, REASON_NODEUP), CpgAddress(N2, 1002, REASON_NODEUP)}
    assert set(joined3[-1].joined) == up
    for n in nodes:
        assert cpg_of(cluster, n).members_of(G) == ((N1, 1001), (N2, 1002), (N3, 1003))


def test_client_gone_leaves_with_reason_5_everywhere():
    cluster, nodes, log = make_cluster(3)
    boot_and_join(cluster, nodes)
    marks = {n: len(log[n]) for n in nodes}
    assert request(cluster, N2, ClientGone(Handle(20))).error is None
    assert cluster.run_for(ms(2000), lambda: all(len(cpg_of(cluster, n).members_of(G)) == 2 for n in nodes))
    for n in (N1, N3):
        (c,) = of(log[n], CpgConfchg, marks[n])
        assert c.left == (CpgAddress(N2, 1002, REASON_PROCDOWN),)
    assert of(log[N2], CpgConfchg, marks[N2]) == []  # the gone handle is not told


def two_nodes_with_node1s_totem_queue_filled(room: int | None = None):
    """A 2-node ring joined to G whose node 1 has 3 MiB (or all but `room` bytes) in Totem's send
    queue; nothing leaves before the next token. Returns (cluster, nodes, log, node 1's Totem)."""
    cluster, nodes, log = make_cluster(2)
    boot_and_join(cluster, nodes)
    node1, totem = cluster.nodes[N1], stack(cluster, N1).totem
    for _ in range(3):
        cluster._feed(node1, McastRequested(cluster.now, bytes(MESSAGE_SIZE_MAX)))
    if room is not None:
        rest = totem.send_queue_free_bytes - QUEUE_ENTRY_COST_BYTES - room
        cluster._feed(node1, McastRequested(cluster.now, bytes(rest)))
    assert totem.send_queue_free_bytes < LOCAL_REQUEST_ROOM_BYTES
    return cluster, nodes, log, totem


def test_a_message_totem_cannot_queue_is_refused_with_try_again_and_none_is_lost():
    """cpg's own send window restarts at each ring change while Totem's send queue does not, so
    cpg may accept a message Totem has no room for. The Stack answers such a request try_again
    before cpg sees it — the code every retry loop (IPC server, client, dlmd) retries — where it
    used to accept it and then drop it at Totem (counted as send_try-again, never delivered)."""
    cluster, nodes, log, totem = two_nodes_with_node1s_totem_queue_filled(room=100)
    assert totem.send_queue_free_bytes == 100  # less than the message below: it could not be queued
    marks = {n: len(log[n]) for n in nodes}
    refused = request(cluster, N1, CpgMcast(Handle(10), G, b"m" * 1000))
    assert refused.error is ErrorCode.TRY_AGAIN, refused
    assert cpg_of(cluster, N1).in_flight_bytes == 0  # refused before cpg changed anything
    # Once the token has drained the queue, the same request is taken and delivered everywhere.
    assert cluster.run_for(ms(5000), lambda: totem.send_queue_free_bytes >= LOCAL_REQUEST_ROOM_BYTES)
    assert request(cluster, N1, CpgMcast(Handle(10), G, b"m" * 1000), request_id=2).error is None
    assert cluster.run_for(ms(3000), lambda: all(of(log[n], CpgDeliver, marks[n]) for n in nodes))
    for n in nodes:
        assert [d.payload for d in of(log[n], CpgDeliver, marks[n])] == [b"m" * 1000]
    assert not [k for k in stack(cluster, N1).stats if k.startswith("send_")], stack(cluster, N1).stats


def test_a_departed_clients_leaves_are_not_flow_controlled():
    """ClientGone (flow_control=False) goes out even when Totem's queue is short of room for a
    client request: nobody could retry it, and the other nodes must see the process leave."""
    cluster, _nodes, _log, _totem = two_nodes_with_node1s_totem_queue_filled()
    node1 = cluster.nodes[N1]
    assert request(cluster, N1, CpgJoin(Handle(11), b"other", 77)).error is ErrorCode.TRY_AGAIN
    before = len(node1.core.log)
    gone = ServiceRequest(cluster.now, CPG_SERVICE, ClientGone(Handle(10)), 5, flow_control=False)
    cluster._feed(node1, gone)
    assert [r.error for r in of(node1.core.log, RequestResult, before)] == [None]
    assert cluster.run_for(ms(3000), lambda: cpg_of(cluster, N2).members_of(G) == ((N2, 1002),))
