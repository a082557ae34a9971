"""Behaviour of the Totem core that random schedules do not pin down by themselves.

Multi-node tests run the real core on the deterministic simulator (cmanlk.sim) with corosync's
timer derivations on a 200 ms token; single-node tests drive one core directly.
"""

from __future__ import annotations

import random

import pytest

from cmanlk.errors import ErrorCode, QueueFull, TooLarge
from cmanlk.sim import Cluster, sim_config
from cmanlk.sim.history import Delivered, Installed
from cmanlk.totem import wire
from cmanlk.totem.actions import (
    ConfigKind,
    DeliverConfiguration,
    MembState,
    Multicast,
    PersistRingSeq,
    Unicast,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.core import Totem
from cmanlk.totem.events import (
    DeadlineReached,
    Guarantee,
    LeaveRequested,
    McastRequested,
    PacketReceived,
    Started,
)
from cmanlk.totem.totempg import MESSAGE_SIZE_MAX
from cmanlk.types import Instant, NodeId, RingId, ms

N = NodeId


def boot(cluster: Cluster, *nodes: int) -> None:
    for n in nodes:
        cluster.boot(N(n))
    assert cluster.run_for(ms(5000), cluster.is_stable), "ring did not form"


def regulars(cluster: Cluster, n: int) -> list[Installed]:
    return [r for r in cluster.histories()[N(n)] if isinstance(r, Installed) and r.kind is ConfigKind.REGULAR]


def delivered(cluster: Cluster, n: int) -> list[bytes]:
    return [r.payload for r in cluster.histories()[N(n)] if isinstance(r, Delivered)]


def settle(core: Totem, now: Instant, first: list[object] | None = None) -> list[object]:
    """Feed every deadline due by `now` (a singleton ring passes the token to itself by timer)."""
    actions: list[object] = list(first or [])
    for _ in range(1000):
        d = core.next_deadline
        if d is None or d > now:
            break
        actions += core.handle(DeadlineReached(d))
    return actions


def test_single_node_forms_singleton_ring_and_persists_seq_before_any_ring_packet() -> None:
    core = Totem(TotemConfig.derive([N(1), N(2)], token_ms=200), N(1), random.Random(1), ring_seq=40)
    actions = settle(core, Instant(0), core.handle(Started(Instant(0))))
    persist = actions.index(PersistRingSeq(44))  # persisted seq + 4
    for a in actions[:persist]:
        if isinstance(a, Unicast | Multicast):
            assert isinstance(wire.decode(a.data), wire.MembJoin)  # only the JOIN precedes it
    configs = [a for a in actions if isinstance(a, DeliverConfiguration)]
    assert configs == [DeliverConfiguration(ConfigKind.REGULAR, RingId(44, N(1)), (N(1),), (), (N(1),))]
    assert core.state is MembState.OPERATIONAL
    assert core.next_deadline is not None


def test_three_nodes_agree_on_ring_and_total_order_of_large_messages() -> None:
    cluster = Cluster(sim_config([1, 2, 3]), seed=7)
    boot(cluster, 1, 2, 3)
    for i in range(20):
        for n in (1, 2, 3):
            size = 5000 if i % 7 == 0 else 64  # some fragmented over several frames
            assert cluster.send(N(n), cluster.next_payload(N(n), size))
    cluster.run_for(ms(1000))
    orders = [delivered(cluster, n) for n in (1, 2, 3)]
    assert len(orders[0]) == 60
    assert orders[0] == orders[1] == orders[2]
    rings = {regulars(cluster, n)[-1].ring_id for n in (1, 2, 3)}
    assert len(rings) == 1


def test_crash_reforms_within_token_plus_consensus_and_transitional_lists_survivors() -> None:
    config = sim_config([1, 2, 3])
    cluster = Cluster(config, seed=3)
    boot(cluster, 1, 2, 3)
    t0 = cluster.now
    cluster.crash(N(3))
    assert cluster.run_for(ms(3 * (config.token_ms + config.consensus_ms)), cluster.is_stable)
    elapsed = cluster.now - t0
    assert elapsed <= ms(config.token_ms + config.consensus_ms + 4 * config.join_ms + 100)
    hist = [r for r in cluster.histories()[N(1)] if isinstance(r, Installed)]
    assert hist[-2].kind is ConfigKind.TRANSITIONAL and hist[-2].members == (N(1), N(2))
    assert hist[-2].left == (N(3),)
    assert hist[-1].members == (N(1), N(2)) and hist[-1].left == (N(3),)


def test_leave_lets_peers_reform_well_before_the_token_timeout() -> None:
    config = sim_config([1, 2, 3], token_ms=1000)
    cluster = Cluster(config, seed=5)
    boot(cluster, 1, 2, 3)
    t0 = cluster.now
    cluster.leave(N(2))
    assert cluster.run_for(ms(config.token_ms), cluster.is_stable)
    assert cluster.now - t0 < ms(config.token_ms / 4)
    assert regulars(cluster, 1)[-1].members == (N(1), N(3))


def test_restart_rejoins_with_a_higher_ring_seq() -> None:
    cluster = Cluster(sim_config([1, 2]), seed=11)
    boot(cluster, 1, 2)
    before = regulars(cluster, 1)[-1].ring_id
    cluster.crash(N(2))
    assert cluster.run_for(ms(3000), cluster.is_stable)
    cluster.boot(N(2))
    assert cluster.run_for(ms(3000), cluster.is_stable)
    after = regulars(cluster, 2)[-1]
    assert after.members == (N(1), N(2))
    assert after.ring_id.seq > before.seq


def test_partition_makes_two_rings_and_heal_merges_them() -> None:
    cluster = Cluster(sim_config([1, 2, 3, 4]), seed=13)
    boot(cluster, 1, 2, 3, 4)
    cluster.network.partition([[1, 2], [3, 4]])
    assert cluster.run_for(ms(5000), cluster.is_stable)
    assert regulars(cluster, 1)[-1].members == (N(1), N(2))
    assert regulars(cluster, 4)[-1].members == (N(3), N(4))
    cluster.network.heal()
    assert cluster.run_for(ms(5000), cluster.is_stable)
    assert {regulars(cluster, n)[-1].ring_id for n in (1, 2, 3, 4)} == {regulars(cluster, 1)[-1].ring_id}
    assert regulars(cluster, 3)[-1].members == (N(1), N(2), N(3), N(4))


def test_heavy_loss_loses_no_ordered_message() -> None:
    cluster = Cluster(sim_config([1, 2, 3]), seed=17)
    boot(cluster, 1, 2, 3)
    cluster.network.model.loss = 0.2
    sent = 0
    for _ in range(30):
        for n in (1, 2, 3):
            sent += cluster.send(N(n), cluster.next_payload(N(n)))
        cluster.run_for(ms(20))
    cluster.network.model.loss = 0.0
    cluster.run_for(ms(3000), cluster.is_stable)
    cluster.run_for(ms(500))
    orders = [delivered(cluster, n) for n in (1, 2, 3)]
    assert len(orders[0]) == sent == 90
    assert orders[0] == orders[1] == orders[2]


def test_safe_messages_are_delivered_in_the_same_order_as_agreed_ones() -> None:
    cluster = Cluster(sim_config([1, 2, 3]), seed=19)
    boot(cluster, 1, 2, 3)
    for n in (1, 2, 3):
        cluster.send(N(n), cluster.next_payload(N(n)), Guarantee.SAFE)
        cluster.send(N(n), cluster.next_payload(N(n)))
    cluster.run_for(ms(1000))
    assert delivered(cluster, 1) == delivered(cluster, 2) == delivered(cluster, 3)
    assert len(delivered(cluster, 1)) == 6


def test_malformed_and_foreign_packets_are_counted_never_raised() -> None:
    core = Totem(TotemConfig.derive([N(1), N(2)], token_ms=200), N(1), random.Random(2))
    settle(core, Instant(0), core.handle(Started(Instant(0))))
    rng = random.Random(99)
    garbage = [b"", b"\x70\xc0", bytes(rng.getrandbits(8) for _ in range(60))]
    token = wire.OrfToken(N(2), 5, 9, 0, N(0), RingId(999, N(2)), 0, 0, 0, ())
    garbage.append(wire.encode(token))  # a token of a ring we are not in
    garbage.append(wire.encode(token)[:30])  # truncated
    for data in garbage:
        core.handle(PacketReceived(Instant(0), data, N(2)))
    dropped = core.stats.dropped
    assert sum(dropped.values()) >= len(garbage)
    assert core.state is MembState.OPERATIONAL


def test_send_queue_full_is_refused_with_try_again_and_too_large_with_too_large() -> None:
    """The refusals are typed: QueueFull carries try_again (the code every retry loop looks
    for: IPC server, client, dlmd), TooLarge too_large; a refused message is not queued."""
    core = Totem(TotemConfig.derive([N(1), N(2)], token_ms=200), N(1), random.Random(3))
    core.handle(Started(Instant(0)))
    refused = []
    for _ in range(10):
        free = core.send_queue_free_bytes
        try:
            core.handle(McastRequested(Instant(0), b"x" * 1_000_000))
        except QueueFull as e:
            refused.append(e)
            assert core.send_queue_free_bytes == free  # nothing queued
    assert refused and all(e.code is ErrorCode.TRY_AGAIN for e in refused)
    assert refused[0].code.wire == "try_again"
    with pytest.raises(TooLarge) as big:
        core.handle(McastRequested(Instant(0), bytes(MESSAGE_SIZE_MAX + 1)))
    assert big.value.code is ErrorCode.TOO_LARGE


def test_idle_ring_holds_the_token_and_stays_stable() -> None:
    config = sim_config([1, 2, 3])
    cluster = Cluster(config, seed=23)
    boot(cluster, 1, 2, 3)
    rings = {n: regulars(cluster, n)[-1].ring_id for n in (1, 2, 3)}
    cluster.run_for(ms(10 * config.token_ms))
    assert cluster.is_stable()
    assert {n: regulars(cluster, n)[-1].ring_id for n in (1, 2, 3)} == rings


def test_leave_request_stops_the_core() -> None:
    core = Totem(TotemConfig.derive([N(1), N(2)], token_ms=200), N(1), random.Random(4))
    core.handle(Started(Instant(0)))
    actions = core.handle(LeaveRequested(Instant(10)))
    leaves = [wire.decode(a.data) for a in actions if isinstance(a, Multicast)]
    assert any(isinstance(p, wire.MembJoin) and p.sender == 0 and N(1) in p.failed_list for p in leaves)
    assert core.state is MembState.LEFT
    assert core.next_deadline is None
    assert core.handle(DeadlineReached(Instant(10**9))) == []


def test_after_the_sync_new_messages_go_to_the_first_queue_not_behind_its_leftovers():
    """bench.chaos --mixed seed 1616: client messages queued behind the last sync's leftovers in
    the second queue went out during the next ring's sync. corosync's totemsrp_mcast queues to the
    first queue as soon as the trans ack came."""
    import random as _random

    from cmanlk.totem.config import TotemConfig as _TC
    from cmanlk.totem.core import Totem as _Totem
    from cmanlk.totem.events import McastRequested as _M
    from cmanlk.totem.events import TransAck as _A
    from cmanlk.types import Instant as _I
    from cmanlk.types import NodeId as _N

    t = _Totem(_TC.derive((_N(1), _N(2)), token_ms=1000), _N(1), _random.Random(1))
    t.hold_for_sync()
    t.handle(_M(_I(0), b"sync-leftover"))  # queued while waiting: the second queue
    t.handle(_A(_I(1), t.ring.ring_id))  # sync done before it went out
    t.handle(_M(_I(2), b"client"))
    assert t.packer_trans.pending_messages == 1 and t.packer.pending_messages == 1


def test_a_trans_ack_between_two_frames_of_one_batch_switches_assembly_for_the_next_frame():
    """corosync assembles each frame inside its delivery callback, and the handler of the last sync
    barrier calls totempg_trans_ack there: the very next frame goes to the regular assembly set. Our
    core returns a batch of actions, so a Totem that holds for sync leaves assembly to its consumer
    in stream order (DeliverFrame, Totem.assemble). Found by the stack simulator (seed 11): the
    batch after the barrier was assembled in the second set, the sender's next frame in the first,
    and the receiver threw five of node 1's messages away that the others delivered."""
    from cmanlk.totem.actions import DeliverFrame
    from cmanlk.totem.events import TransAck
    from cmanlk.totem.totempg import Packer

    config = TotemConfig.derive((NodeId(1), NodeId(2)), token_ms=1000)
    totem = Totem(config, NodeId(1), random.Random(1))
    totem.hold_for_sync()
    ring = totem.ring.ring_id
    packer = Packer(config.max_frame_bytes)
    big = b"m" * (config.max_frame_bytes * 2)
    packer.push(big)
    frames = []
    while (f := packer.pop_frame()) is not None:
        frames.append(f[0])
    assert len(frames) == 3

    def deliver(seq: int, frame: bytes) -> list:
        totem._deliver_frame(ring, wire.Mcast(NodeId(2), NodeId(2), seq, seq, ring, 0, frame, 0))
        batch, totem._out = totem._out, []
        assert all(isinstance(a, DeliverFrame) for a in batch)
        return batch

    batch = deliver(1, frames[0])  # delivered in one batch after the barrier ...
    totem.handle(TransAck(Instant(0), ring))  # ... which the consumer handles first
    got = [d.payload for step in batch for d in totem.assemble(step)]
    for seq, frame in enumerate(frames[1:], 2):  # the rest in later batches, after the ack
        got += [d.payload for step in deliver(seq, frame) for d in totem.assemble(step)]
    assert got == [big]
    assert not totem.waiting_trans_ack


def test_an_ack_for_an_older_ring_does_not_end_the_new_rings_wait():
    """A sync whose last barrier is among the old ring's messages delivered at a ring change
    completes before the new ring's configuration in the stream; our consumer hands the ack to Totem
    after Totem entered the new ring. corosync sets the new ring's waiting_trans_ack after that ack:
    the new ring still waits."""
    from cmanlk.totem.events import TransAck

    config = TotemConfig.derive((NodeId(1), NodeId(2)), token_ms=1000)
    totem = Totem(config, NodeId(1), random.Random(1))
    totem.hold_for_sync()
    older = RingId(totem.ring.ring_id.seq - 1 if totem.ring.ring_id.seq else 99, NodeId(2))
    totem.handle(TransAck(Instant(0), older))
    assert totem.waiting_trans_ack
    assert totem.queueing_to_second_queue
    totem.handle(TransAck(Instant(0), totem.ring.ring_id))
    assert not totem.waiting_trans_ack
