"""cpg across a ring change: what two members of the same new ring tell their clients.

Found by bench.chaos (seed 7, udpu, 60 s): nodes 2 and 3, each alone in its own ring with a
group member, merge into ring R. Messages each had queued under its old ring are delivered in R
during R's synchronisation (our Totem had one send queue then; corosync keeps them behind the sync
messages until sync completes). Applied at once, node 3 dropped node 2's messages ("unknown node":
it learns node 2's process only from node 2's JOINLIST) and node 2 dropped node 3's — each client
delivered only its own old-ring messages in R, a virtual-synchrony and agreed-order violation.
"""

from __future__ import annotations

from cmanlk.services.base import Notification, SendMessage
from cmanlk.services.cpg import wire as cw
from cmanlk.services.cpg.service import (
    ClientGone,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgMcast,
    CpgService,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.types import NodeId, RingId, ms

N2, N3 = NodeId(2), NodeId(3)
G = b"chaos"
R = RingId(0x50, N2)


def _alone(me: NodeId, handle: Handle, pid: int) -> CpgService:
    """A node synchronised alone in its own ring, with one local group member."""
    svc = CpgService(me)
    svc.sync_init(RingId(0x40, me), (me,), (me,))
    svc.sync_process()
    svc.sync_activate()
    for o in svc.on_local_request(CpgJoin(handle, G, pid)):
        assert isinstance(o, SendMessage)
        svc.on_message(me, o.function, o.message)
    return svc


def _mcast(svc: CpgService, handle: Handle, payload: bytes) -> tuple[int, bytes]:
    (o,) = svc.on_local_request(CpgMcast(handle, G, payload))
    assert isinstance(o, SendMessage)
    return o.function, o.message


def _merge(
    nodes: dict[NodeId, CpgService],
    during_sync: list[tuple[NodeId, int, bytes]],
    ring: RingId,
    members: tuple[NodeId, ...],
) -> dict[NodeId, list[Notification]]:
    """Run one synchronisation of `ring` with `during_sync` delivered (in this agreed order, to
    every node) right after sync_init, then every node's DOWNLIST/JOINLIST, then activation."""
    out: dict[NodeId, list[Notification]] = {n: [] for n in nodes}
    for n, svc in nodes.items():
        out[n] += [o for o in svc.sync_init(ring, members, (n,)) if isinstance(o, Notification)]
    sync_msgs: list[tuple[NodeId, int, bytes]] = []
    for n, svc in nodes.items():
        _done, outs = svc.sync_process()
        sync_msgs += [(n, o.function, o.message) for o in outs if isinstance(o, SendMessage)]
    for sender, function, message in during_sync + sync_msgs:
        for n, svc in nodes.items():
            out[n] += [o for o in svc.on_message(sender, function, message) if isinstance(o, Notification)]
    for n, svc in nodes.items():
        out[n] += [o for o in svc.sync_activate() if isinstance(o, Notification)]
    return out


def test_old_ring_messages_delivered_during_sync_reach_every_member_after_the_confchg() -> None:
    h2, h3 = Handle(20), Handle(30)
    svc2, svc3 = _alone(N2, h2, 1002), _alone(N3, h3, 1003)
    # Queued under the old rings, delivered in R during its sync (agreed order: node 3's first).
    during = [(N3, *_mcast(svc3, h3, b"n3-old")), (N2, *_mcast(svc2, h2, b"n2-old"))]
    notes = _merge({N2: svc2, N3: svc3}, during, R, (N2, N3))
    for n, h in ((N2, h2), (N3, h3)):
        kinds = [type(x).__name__ for x in notes[n]]
        assert kinds == ["CpgConfchg", "CpgTotemConfchg", "CpgDeliver", "CpgDeliver"], (n, kinds)
        assert notes[n][1] == CpgTotemConfchg((h,), R, (N2, N3))
        delivered = [(d.nodeid, d.payload) for d in notes[n] if isinstance(d, CpgDeliver)]
        assert delivered == [(N3, b"n3-old"), (N2, b"n2-old")]
        conf = notes[n][0]
        assert isinstance(conf, CpgConfchg)
        assert conf.members == (CpgAddress(N2, 1002), CpgAddress(N3, 1003))
    assert "mcast_unknown_node" not in svc2.stats and "mcast_unknown_node" not in svc3.stats


def test_messages_deferred_by_an_aborted_sync_go_out_under_the_last_view_at_the_next_sync() -> None:
    """bench.chaos seed 11: ring 1.64 of nodes 1 and 4 delivered node 1's queued messages during
    its sync, which was aborted by ring 1.68 (adding node 3, never in 1.64 and so never given them).
    Released after 1.68's confchg they looked like messages of 1.68 that node 3 missed. They belong
    to the clients' last view, before the next ring's."""
    h2, h3 = Handle(20), Handle(30)
    svc2, svc3 = _alone(N2, h2, 1002), _alone(N3, h3, 1003)
    nodes = {N2: svc2, N3: svc3}
    early = [(N3, *_mcast(svc3, h3, b"n3-old"))]
    seen: dict[NodeId, list[Notification]] = {n: [] for n in nodes}
    for n, svc in nodes.items():
        seen[n] += [o for o in svc.sync_init(R, (N2, N3), (n,)) if isinstance(o, Notification)]
    for sender, function, message in early:
        for n, svc in nodes.items():
            seen[n] += [o for o in svc.on_message(sender, function, message) if isinstance(o, Notification)]
    for svc in nodes.values():
        svc.sync_abort()  # R never completes: clients are not told of R
    assert seen == {N2: [], N3: []}
    r2 = RingId(0x54, N2)
    notes = _merge(nodes, [], r2, (N2, N3))
    # Node 3's client gets its message under its last view (its own ring), before r2's confchg;
    # node 2 never knew node 3's process in its last view: nothing to deliver there.
    kinds3 = [type(x).__name__ for x in notes[N3]]
    assert kinds3[0] == "CpgDeliver" and kinds3.index("CpgTotemConfchg") > 0
    assert [(d.nodeid, d.payload) for d in notes[N3] if isinstance(d, CpgDeliver)] == [(N3, b"n3-old")]
    assert [d for d in notes[N2] if isinstance(d, CpgDeliver)] == []
    assert svc2.stats["deferred_sender_not_in_view"] == 1
    for n in nodes:
        totems = [x for x in notes[n] if isinstance(x, CpgTotemConfchg)]
        assert [t.ring_id for t in totems] == [r2]


def test_members_of_an_aborted_ring_with_the_same_last_view_deliver_its_messages_alike() -> None:
    """Both were in the same activated ring, then in ring R whose sync was aborted: the same
    messages, at the same point, before the next ring's confchg."""
    h2, h3 = Handle(20), Handle(30)
    svc2, svc3 = CpgService(N2), CpgService(N3)
    both = (N2, N3)
    notes0 = _merge({N2: svc2, N3: svc3}, [], RingId(0x40, N2), both)
    assert notes0 == {N2: [], N3: []}
    joins = []
    for svc, h, pid in ((svc2, h2, 1002), (svc3, h3, 1003)):
        (o,) = svc.on_local_request(CpgJoin(h, G, pid))
        assert isinstance(o, SendMessage)
        joins.append((svc.me, o.function, o.message))
    for sender, function, message in joins:
        for svc in (svc2, svc3):
            svc.on_message(sender, function, message)
    queued = [(N3, *_mcast(svc3, h3, b"a")), (N2, *_mcast(svc2, h2, b"b"))]
    notes: dict[NodeId, list[Notification]] = {N2: [], N3: []}
    for svc in (svc2, svc3):
        svc.sync_init(R, both, both)
    for sender, function, message in queued:
        for svc in (svc2, svc3):
            assert svc.on_message(sender, function, message) == []
    for svc in (svc2, svc3):
        svc.sync_abort()
    after = _merge({N2: svc2, N3: svc3}, [], RingId(0x58, N2), both)
    for n in both:
        delivered = [(d.nodeid, d.payload) for d in after[n] if isinstance(d, CpgDeliver)]
        assert delivered == [(N3, b"a"), (N2, b"b")]
        assert isinstance(after[n][-1], CpgTotemConfchg) and after[n][-1].ring_id == RingId(0x58, N2)
    assert notes == {N2: [], N3: []}


def test_procjoin_delivered_during_sync_completes_after_activation_with_the_new_ring() -> None:
    h2 = Handle(20)
    svc2 = _alone(N2, h2, 1002)
    svc3 = CpgService(N3)
    svc3.sync_init(RingId(0x40, N3), (N3,), (N3,))
    svc3.sync_process()
    svc3.sync_activate()
    h3 = Handle(30)
    (join,) = svc3.on_local_request(CpgJoin(h3, G, 1003, initial_totem_conf=True))
    assert isinstance(join, SendMessage)
    notes = _merge({N2: svc2, N3: svc3}, [(N3, join.function, join.message)], R, (N2, N3))
    # Node 3's JOINLIST did not name the process (its join was not applied yet); both nodes apply
    # the join after activation, and node 3's client gets its initial view as the new ring.
    for svc in (svc2, svc3):
        assert svc.members_of(G) == ((N2, 1002), (N3, 1003))
    joined2 = [c for c in notes[N2] if isinstance(c, CpgConfchg)]
    assert joined2[-1].joined == (CpgAddress(N3, 1003, cw.REASON_JOIN),)
    assert notes[N3][-1] == CpgTotemConfchg((h3,), R, (N2, N3))


def test_merge_with_messages_queued_during_gather_delivers_the_same_everywhere() -> None:
    """The seed-7 chaos fault on the simulated Stack: a partition heals while both sides have group
    members sending; what each side queued while its ring was re-forming is delivered in the merged
    ring during its sync. Every node's client must deliver the same messages in the same order."""
    from cmanlk.totem.actions import MembState
    from tests.unit.test_cpg import boot_and_join, cpg_of, make_cluster, of, request, settled, stack

    cluster, nodes, log = make_cluster(3, seed=7)
    n1, _n2, n3 = nodes
    boot_and_join(cluster, nodes)
    cluster.network.partition([[n1, NodeId(2)], [n3]])
    apart = settled(cluster, (n1, NodeId(2)))
    assert cluster.run_for(ms(15000), lambda: apart() and stack(cluster, n3).members == (n3,))
    marks = {n: len(log[n]) for n in nodes}
    cluster.network.heal()
    # Wait until both sides have left their rings (merge detected), then send from both sides:
    # cpg is not synchronising yet, so the sends are accepted and wait in totem's queue.
    assert cluster.run_for(
        ms(15000), lambda: all(stack(cluster, n).state is not MembState.OPERATIONAL for n in (n1, n3))
    )
    sent = 0
    for i in range(5):
        for n in (n1, n3):
            req = CpgMcast(Handle(n * 10), b"dlm:controld", b"q%d-%d" % (n, i))
            result = request(cluster, n, req, 100 + i)
            sent += result.error is None
    assert sent == 10
    assert cluster.run_for(ms(15000), settled(cluster, nodes))
    cluster.run_for(ms(2000))
    orders = {n: [(d.nodeid, d.payload) for d in of(log[n], CpgDeliver, marks[n])] for n in nodes}
    assert len(orders[n1]) == 10
    assert orders[n1] == orders[NodeId(2)] == orders[n3]
    for n in nodes:
        assert "mcast_unknown_node" not in cpg_of(cluster, n).stats
        # Each delivery comes after the client was told the merged ring.
        notes = log[n][marks[n] :]
        last_view = max(i for i, x in enumerate(notes) if isinstance(x, CpgTotemConfchg))
        first_delivery = next(i for i, x in enumerate(notes) if isinstance(x, CpgDeliver))
        assert last_view < first_delivery


def test_an_aborted_rings_messages_from_outside_the_last_view_are_dropped() -> None:
    """bench.chaos seed 11 (second run): node 4's last view was (1,3,4); in a ring with node 2
    whose sync was aborted, node 2's new client joined and sent. Applied under (1,3,4), node 4's
    client got node 2's messages in a configuration without node 2. They are dropped; the next
    completed sync tells node 4 of node 2's process (JOINLIST) as usual."""
    h2, h3 = Handle(20), Handle(30)
    svc2 = CpgService(N2)
    svc2.sync_init(RingId(0x40, N2), (N2,), (N2,))
    svc2.sync_process()
    svc2.sync_activate()
    svc3 = _alone(N3, h3, 1003)
    (join,) = svc2.on_local_request(CpgJoin(h2, G, 1002))
    assert isinstance(join, SendMessage)
    svc2.on_message(N2, join.function, join.message)
    # Ring R of both: node 2's message is delivered during R's sync, which is then aborted.
    function, message = _mcast(svc2, h2, b"from-2")
    for n, svc in ((N2, svc2), (N3, svc3)):
        svc.sync_init(R, (N2, N3), (n,))
    for svc in (svc2, svc3):
        assert svc.on_message(N2, function, message) == []
        svc.sync_abort()
    # Node 3 goes on alone: node 2 was never in its view.
    notes3 = svc3.sync_init(RingId(0x58, N3), (N3,), (N3,))
    assert [o for o in notes3 if isinstance(o, CpgDeliver)] == []
    assert svc3.stats["deferred_sender_not_in_view"] == 1
    # Node 2 applies its own message under its own last view.
    notes2 = svc2.sync_init(RingId(0x58, N2), (N2,), (N2,))
    assert [(d.nodeid, d.payload) for d in notes2 if isinstance(d, CpgDeliver)] == [(N2, b"from-2")]


def test_a_client_gone_before_its_join_was_delivered_leaves_after_the_join() -> None:
    """cmanlk-sim --stack seed 1711: node 1's client joined (PROCJOIN queued, not yet sent when the
    ring changed) and went away during the next sync, whose PROCLEAVE (second queue, as corosync's
    new_message_queue_trans) was delivered before the PROCJOIN (first queue, after sync). Applied in
    that order every member kept the gone process for good. Node 1 now sends the PROCLEAVE only once
    its own PROCJOIN is delivered, and a new join of that pid in that group waits for it."""
    from cmanlk.errors import UsageError

    h2, h3 = Handle(20), Handle(30)
    svc2 = _alone(N2, h2, 1002)
    svc3 = CpgService(N3)
    svc3.sync_init(RingId(0x40, N3), (N3,), (N3,))
    svc3.sync_process()
    svc3.sync_activate()
    (join,) = svc3.on_local_request(CpgJoin(h3, G, 1003))
    assert isinstance(join, SendMessage)
    assert svc3.on_local_request(ClientGone(h3)) == []  # the PROCJOIN is not delivered yet
    try:
        svc3.on_local_request(CpgJoin(Handle(31), G, 1003))
        raise AssertionError("a join of the same pid must wait for the leave")
    except UsageError as e:
        assert e.code.wire == "try_again"
    _merge({N2: svc2, N3: svc3}, [], R, (N2, N3))
    # After the sync, node 3's PROCJOIN is delivered at last; node 3 then sends the PROCLEAVE.
    leaves: list[SendMessage] = []
    for svc in (svc2, svc3):
        outs = svc.on_message(N3, join.function, join.message)
        leaves += [o for o in outs if isinstance(o, SendMessage)]
    (leave,) = leaves
    assert leave.function == cw.MESSAGE_REQ_EXEC_CPG_PROCLEAVE
    for svc in (svc2, svc3):
        svc.on_message(N3, leave.function, leave.message)
        assert svc.members_of(G) == ((N2, 1002),)
