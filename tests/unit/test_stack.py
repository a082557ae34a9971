"""The Stack on the deterministic simulator: sync v2 completes, membership is published after
sync, votequorum decides on 3 nodes, node loss, two_node, expected-votes change everywhere."""

from __future__ import annotations

import random

from cmanlk.errors import ErrorCode
from cmanlk.services.base import Notification
from cmanlk.services.sync import SyncState
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.sim.cluster import Cluster
from cmanlk.stack import (
    MembershipChanged,
    RequestResult,
    SetExpectedVotes,
    Stack,
    StackConfig,
    SyncStarting,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.types import NodeId, ms


class Recorder:
    """A Stack that remembers every notification it returned (the runtime would send them up)."""

    def __init__(self, stack: Stack, log: dict[NodeId, list[Notification]]) -> None:
        self.stack = stack
        self.log = log.setdefault(stack.me, [])

    def handle(self, event):
        actions = self.stack.handle(event)
        self.log.extend(a for a in actions if isinstance(a, Notification))
        return actions

    @property
    def next_deadline(self):
        return self.stack.next_deadline


def make_cluster(n: int, seed: int = 1, **quorum):
    nodes = tuple(NodeId(i) for i in range(1, n + 1))
    totem = TotemConfig.derive(nodes, token_ms=1000)
    qconf = QuorumConfig.for_nodes(nodes, **quorum)
    log: dict[NodeId, list[Notification]] = {}

    def factory(config, me, rng: random.Random, ring_seq):
        return Recorder(Stack(StackConfig(config, qconf), me, rng, ring_seq), log)

    cluster = Cluster(totem, seed=seed, factory=factory)
    return cluster, nodes, log


def stack_of(cluster, node) -> Stack:
    return cluster.nodes[node].core.stack


def settled(cluster, nodes, members):
    def check():
        return all(
            cluster.nodes[n].up
            and stack_of(cluster, n).members == members
            and not stack_of(cluster, n).is_synchronising
            for n in nodes
        )

    return check


def last(log, kind):
    found = [x for x in log if isinstance(x, kind)]
    return found[-1] if found else None


def test_three_nodes_sync_publish_membership_and_are_quorate():
    cluster, nodes, log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    for n in nodes:
        stack = stack_of(cluster, n)
        assert stack.sync.state is SyncState.IDLE and stack.sync.stats["completed"] >= 1
        change = last(log[n], MembershipChanged)
        assert change.members == nodes and change.ring_id == stack.ring_id
        q = last(log[n], QuorumChanged)
        assert q.quorate and q.quorum == 2 and q.total_votes == 3 and q.expected_votes == 3
        assert dict(q.members) == {1: 1, 2: 1, 3: 1}
        # The membership notification comes only after sync: the QuorumChanged of this ring
        # (sent at votequorum's activation) precedes the MembershipChanged.
        idx_m = max(i for i, x in enumerate(log[n]) if isinstance(x, MembershipChanged))
        idx_q = max(i for i, x in enumerate(log[n]) if isinstance(x, QuorumChanged))
        assert idx_q < idx_m
        assert not stack.stats, stack.stats


def test_sync_starting_precedes_the_rings_quorum_and_membership():
    cluster, nodes, log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    for n in nodes:
        ring = stack_of(cluster, n).ring_id
        starts = [i for i, x in enumerate(log[n]) if isinstance(x, SyncStarting) and x.ring_id == ring]
        assert starts and log[n][starts[-1]].members == nodes
        # published in delivery order, before this ring's quorum and membership notifications
        q = min(i for i, x in enumerate(log[n]) if isinstance(x, QuorumChanged) and x.ring_id == ring)
        m = min(i for i, x in enumerate(log[n]) if isinstance(x, MembershipChanged) and x.ring_id == ring)
        assert starts[-1] < q < m


def test_losing_two_of_three_nodes_loses_quorum():
    cluster, nodes, log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    cluster.crash(NodeId(2))
    cluster.crash(NodeId(3))
    one = (NodeId(1),)
    assert cluster.run_for(ms(10000), settled(cluster, one, one))
    q = stack_of(cluster, NodeId(1)).quorum
    assert q is not None and not q.quorate and q.total_votes == 1 and q.quorum == 2
    change = last(log[NodeId(1)], MembershipChanged)
    assert change.left == (NodeId(2), NodeId(3))
    assert not last(log[NodeId(1)], QuorumChanged).quorate


def test_two_node_survivor_keeps_quorum():
    cluster, nodes, _log = make_cluster(2, two_node=True)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    assert stack_of(cluster, NodeId(1)).quorum.quorate
    cluster.crash(NodeId(2))
    one = (NodeId(1),)
    assert cluster.run_for(ms(10000), settled(cluster, one, one))
    q = stack_of(cluster, NodeId(1)).quorum
    assert q.quorate and q.quorum == 1


def test_two_node_waits_for_all_at_start():
    cluster, _nodes, _log = make_cluster(2, two_node=True)
    cluster.boot(NodeId(1))
    one = (NodeId(1),)
    assert cluster.run_for(ms(5000), settled(cluster, one, one))
    q = stack_of(cluster, NodeId(1)).quorum
    assert not q.quorate and q.wait_for_all_status


def test_expected_votes_change_reaches_every_node():
    cluster, nodes, log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    cluster.crash(NodeId(3))
    two = (NodeId(1), NodeId(2))
    assert cluster.run_for(ms(10000), settled(cluster, two, two))
    node1 = cluster.nodes[NodeId(1)]
    # A local request: refused below the votes present, accepted at 2.
    cluster._feed(node1, SetExpectedVotes(cluster.now, 1, request_id=7))
    refused = last(log[NodeId(1)], RequestResult)
    assert (refused.request_id, refused.error) == (7, ErrorCode.INVALID_PARAM)
    cluster._feed(node1, SetExpectedVotes(cluster.now, 2, request_id=8))
    assert last(log[NodeId(1)], RequestResult) == RequestResult(8)
    cluster.run_for(ms(3000))
    for n in two:
        q = stack_of(cluster, n).quorum
        assert q.expected_votes == 2 and q.quorum == 2 and q.quorate


def test_garbage_application_messages_are_counted_not_raised():
    from cmanlk.totem.actions import Deliver
    from cmanlk.types import RingId

    cluster, _nodes, _ = make_cluster(1)
    cluster.boot(NodeId(1))
    stack = stack_of(cluster, NodeId(1))
    from collections import deque

    unknown_service = (9 << 16).to_bytes(4, "little") + bytes(12)
    pending = deque(
        [
            Deliver(RingId(4, NodeId(1)), NodeId(1), b"\x01"),
            Deliver(RingId(4, NodeId(1)), NodeId(1), b"\x01\x00\x01\x00a" + bytes(3)),
            Deliver(RingId(4, NodeId(1)), NodeId(1), b"\x01\x00\x01\x00a" + unknown_service),
        ]
    )
    out: list = []
    stack._run(pending, [], out)
    assert stack.stats == {"group_header_short": 1, "service_header_short": 1, "service_9_unknown": 1}


def _probe(service: int, i: int) -> bytes:
    """A group "a" message for a service nobody runs (delivered, then counted as unknown)."""
    from cmanlk.services import wire as svcwire

    body = svcwire.encode_request_header(service << 16, 16 + 8) + i.to_bytes(8, "little")
    # (a longer probe keeps the size field of 24: the service is unknown, nobody parses it)
    return svcwire.encode_group_message(svcwire.GROUP_A, body)


def test_messages_queued_before_a_ring_change_wait_for_its_sync_as_corosyncs_second_queue():
    """corosync's totemsrp sends a new ring's sync from new_message_queue_trans and holds what was
    queued before the ring change until totempg_trans_ack (sync completed). A corosync peer drops a
    cpg message of a node its cpg has not synchronised ("Unknown node") and its clients see the
    messages of that window before the new view: ours must not go out during the sync either."""
    cluster, nodes, _log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    seen: dict[NodeId, list[tuple[int, bool]]] = {n: [] for n in nodes}
    for n in nodes:
        stack = stack_of(cluster, n)
        original = stack._on_deliver

        def spy(action, stack=stack, original=original, got=seen[n]):
            body, head = action.payload, len(_probe(9, 0)) - 8
            if body.startswith(_probe(9, 0)[:head]):
                got.append((int.from_bytes(body[head : head + 8], "little"), stack.is_synchronising))
            return original(action)

        stack._on_deliver = spy  # type: ignore[method-assign]
    cluster.crash(NodeId(1))
    cluster.run_for(ms(300))
    # The token was lost with node 1: node 3's messages queue up under the old ring (more than a
    # few token visits carry, fragmented across frames) and go out on the next ring.
    for i in range(200):
        assert cluster.send(NodeId(3), _probe(9, i) + b"F" * (1000 if i != 100 else 5000))
    assert cluster.run_for(ms(15000), settled(cluster, (2, 3), (2, 3)))
    cluster.run_for(ms(3000))
    for n in (2, 3):
        assert [i for i, _ in seen[n]] == list(range(200)), n
        during = [i for i, syncing in seen[n] if syncing]
        assert not during, f"node {n} delivered {len(during)} old-queue messages during the sync"


def test_cpg_requests_get_try_again_until_every_service_is_synchronised():
    """corosync_sending_allowed answers a flow-controlled cpg call (join, leave, mcast)
    CS_ERR_TRY_AGAIN while sync_in_process: from the configuration change until the last service
    (votequorum, after cpg) is synchronised — not only while cpg itself synchronises."""
    from cmanlk.services.cpg.service import CpgJoin, CpgService
    from cmanlk.stack import ServiceRequest, default_services

    nodes = (NodeId(1), NodeId(2), NodeId(3))
    totem = TotemConfig.derive(nodes, token_ms=1000)
    qconf = QuorumConfig.for_nodes(nodes)
    services = default_services(qconf, extra=(CpgService,))

    def factory(config, me, rng: random.Random, ring_seq):
        return Stack(StackConfig(config, qconf, services), me, rng, ring_seq)

    cluster = Cluster(totem, seed=3, factory=factory)
    for n in nodes:
        cluster.boot(n)

    def stack(n):
        return cluster.nodes[n].core

    assert cluster.run_for(ms(5000), lambda: all(stack(n).members == nodes for n in nodes))
    cluster.crash(NodeId(1))
    # cpg (service 2) is synchronised and activated; votequorum (5) is not yet.
    assert cluster.run_for(ms(10000), lambda: stack(2).sync.current_service_id == 5)
    out = stack(2).handle(ServiceRequest(cluster.now, 2, CpgJoin(1, b"g", 42), request_id=7))
    (result,) = [a for a in out if isinstance(a, RequestResult)]
    assert result.error is ErrorCode.TRY_AGAIN, result
    assert cluster.run_for(ms(5000), lambda: not stack(2).is_synchronising)
    out = stack(2).handle(ServiceRequest(cluster.now, 2, CpgJoin(1, b"g", 42), request_id=8))
    (result,) = [a for a in out if isinstance(a, RequestResult)]
    assert result.error is None, result
