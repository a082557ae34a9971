"""The simulator itself: determinism, the network model, crash/restart, and that the checker bites.

These run a deliberately naive core (tests/sim/naive.py), so they test the
simulator, not Totem; tests/sim/test_random_schedules.py runs the real core.
"""

from __future__ import annotations

import random

from cmanlk.sim.cluster import Cluster, Traffic, sim_config
from cmanlk.sim.history import Booted, Crashed, Delivered, Installed, history_digest
from cmanlk.sim.invariants import check
from cmanlk.sim.network import LinkModel, Network
from cmanlk.sim.schedule import make_schedule, run_schedule
from cmanlk.types import Instant, NodeId, ms
from tests.sim.naive import naive_factory

IDS = tuple(NodeId(i) for i in (1, 2, 3))


def run_naive(seed: int, model: LinkModel | None = None) -> Cluster:
    cluster = Cluster(sim_config(IDS), seed=seed, factory=naive_factory, model=model)
    for n in IDS:
        cluster.boot(n)
    cluster.start_traffic(Traffic(200.0, Instant(ms(500))))
    cluster.at(ms(200), lambda: cluster.crash(NodeId(3)))
    cluster.at(ms(300), lambda: cluster.boot(NodeId(3)))
    cluster.run_until(ms(700))
    return cluster


def test_same_seed_replays_the_same_history() -> None:
    model = LinkModel(loss=0.1, dup=0.1, reorder=0.3)
    a = run_naive(7, LinkModel(**{k: getattr(model, k) for k in ("loss", "dup", "reorder")}))
    b = run_naive(7, LinkModel(**{k: getattr(model, k) for k in ("loss", "dup", "reorder")}))
    assert a.stats.delivered > 100
    assert history_digest(a.histories()) == history_digest(b.histories())
    c = run_naive(8, LinkModel(loss=0.1, dup=0.1, reorder=0.3))
    assert history_digest(a.histories()) != history_digest(c.histories())


def test_random_schedule_replays_exactly() -> None:
    r1 = run_schedule(11, (3, 5), factory=naive_factory)
    r2 = run_schedule(11, (3, 5), factory=naive_factory)
    assert r1.digest == r2.digest and r1.delivered == r2.delivered and r1.events == r2.events
    same = [make_schedule(11, (3, 5), ("crash",), 1.0).describe() for _ in range(2)]
    assert same[0] == same[1]


def test_restart_gets_persisted_ring_seq_and_new_incarnation() -> None:
    cluster = run_naive(1)
    boots = [r for r in cluster.nodes[NodeId(3)].history if isinstance(r, Booted)]
    assert [b.ring_seq for b in boots] == [0, 4]
    assert any(isinstance(r, Crashed) for r in cluster.nodes[NodeId(3)].history)
    rings = [r.ring_id.seq for r in cluster.nodes[NodeId(3)].history if isinstance(r, Installed)]
    assert rings == [4, 8]


def test_checker_catches_a_core_without_total_order() -> None:
    cluster = run_naive(3, LinkModel(reorder=0.5))
    props = {v.prop for v in check(cluster.histories())}
    assert "total-order" in props


def test_clean_network_delivers_everything_in_send_order_per_sender() -> None:
    cluster = Cluster(sim_config(IDS), seed=5, factory=naive_factory)
    for n in IDS:
        cluster.boot(n)
    for _ in range(20):
        cluster.send(NodeId(1), cluster.next_payload(NodeId(1)))
    cluster.run_for(ms(10))
    got = [r.payload for r in cluster.nodes[NodeId(2)].history if isinstance(r, Delivered)]
    assert got == [b"m1.%d|" % k for k in range(1, 21)]


def test_network_loss_dup_and_partition() -> None:
    net = Network(random.Random(1), LinkModel(loss=0.5, dup=0.5))
    fates = [net.transit(NodeId(1), NodeId(2), 0, 10) for _ in range(2000)]
    lost = sum(1 for f in fates if not f)
    dup = sum(1 for f in fates if len(f) == 2)
    assert 800 < lost < 1200 and 300 < dup < 700
    assert all(0 < t <= net.model.max_delay for f in fates for t in f)
    net = Network(random.Random(1))
    net.partition([(NodeId(1), NodeId(2)), (NodeId(3),)])
    assert net.connected(NodeId(1), NodeId(2)) and not net.connected(NodeId(1), NodeId(3))
    assert net.transit(NodeId(1), NodeId(3), 0, 10) == ()
    assert net.groups([NodeId(1), NodeId(2), NodeId(3)]) == [(NodeId(1), NodeId(2)), (NodeId(3),)]
    net.heal()
    assert net.connected(NodeId(1), NodeId(3))


def test_core_exception_is_reported_not_raised() -> None:
    class Broken:
        next_deadline = None

        def handle(self, event: object) -> list[object]:
            raise RuntimeError("boom")

    cluster = Cluster(sim_config(IDS), seed=1, factory=lambda *a: Broken())
    cluster.boot(NodeId(1))
    assert not cluster.nodes[NodeId(1)].up
    assert "boom" in cluster.errors[0]


def test_no_false_alarm_on_a_correct_fault_free_run() -> None:
    from cmanlk.sim.invariants import LivenessSpec
    from cmanlk.types import Duration
    from tests.sim.naive import sequencer_factory

    cluster = Cluster(sim_config(IDS), seed=2, factory=sequencer_factory)
    for n in IDS:
        cluster.boot(n)
    cluster.start_traffic(Traffic(300.0, Instant(ms(900)), safe_fraction=0.3, large_fraction=0.1))
    cluster.run_until(ms(1000))
    assert cluster.stats.delivered > 2000
    spec = LivenessSpec(Instant(0), Duration(ms(10)), Instant(ms(900)))
    assert check(cluster.histories(), liveness=spec) == []
