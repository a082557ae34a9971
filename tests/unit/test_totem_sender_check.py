"""A listed host cannot speak for another node: every packet that can move Totem's membership
state machine is dropped (`spoofed-sender`) when the node it claims to come from is not the node
whose address it came from (PacketReceived.src). The hostile run of 2026-12-02 made one node go
through 923 membership changes in 20 s with JOINs sent from a member's address under another
member's id. Before the check, the JOINs, the merge detect and the foreign MCAST below put node 1
into GATHER and the forged token was taken up; the same packets from the claimed node's own
address still are (the controls)."""

from __future__ import annotations

import pytest

from cmanlk.sim import Cluster, sim_config
from cmanlk.sim.history import Installed
from cmanlk.totem import wire
from cmanlk.totem.actions import ConfigKind, MembState
from cmanlk.totem.core import Totem
from cmanlk.totem.events import PacketReceived
from cmanlk.types import NodeId, RingId, ms

N = NodeId
FOREIGN_RING = RingId(0xFFFF_0000, N(4))


def ring_of_three() -> tuple[Cluster, Totem, RingId]:
    """Nodes 1-3 of a 4-node nodelist form a ring; node 4 (listed) is down."""
    cluster = Cluster(sim_config([1, 2, 3, 4]), seed=5)
    for n in (1, 2, 3):
        cluster.boot(N(n))
    assert cluster.run_for(ms(5000), cluster.is_stable)
    core = cluster.nodes[N(1)].core
    assert isinstance(core, Totem) and core.state is MembState.OPERATIONAL
    ring = [r for r in cluster.histories()[N(1)] if isinstance(r, Installed) and r.kind is ConfigKind.REGULAR]
    return cluster, core, ring[-1].ring_id


def forged(ring: RingId) -> dict[str, wire.Packet]:
    """One packet of each kind, each claiming to come from node 3 (a member) or 4 (listed, down)."""
    blank, next_ring = wire.CommitMemb(ring, 0, 0, 0), RingId(ring.seq + 4, N(1))
    return {
        # node 3 "says" it has seen node 2 fail: a different failed set means a new gather
        "join": wire.MembJoin(N(3), N(3), (N(1), N(2), N(3)), (N(2),), ring.seq + 4),
        "leave-join": wire.MembJoin(N(0), N(3), (N(1), N(2), N(3)), (N(3),), ring.seq + 4),
        "merge-detect": wire.MergeDetect(N(4), N(4), FOREIGN_RING),
        "foreign-mcast": wire.Mcast(N(4), N(4), 1, 1, FOREIGN_RING, 0, b"x"),
        "orf-token": wire.OrfToken(N(3), 90, 1 << 30, 90, N(3), ring, 0, 0, 0),
        "commit-token": wire.CommitToken(N(3), 0, next_ring, 0, 1, (N(1), N(3)), (blank, blank)),
        "hold-cancel": wire.TokenHoldCancel(N(3), ring),
    }


def claimed(packet: wire.Packet) -> NodeId:
    if isinstance(packet, wire.MembJoin | wire.MergeDetect | wire.Mcast):
        return packet.system_from
    return packet.sender


@pytest.mark.parametrize("kind", sorted(forged(RingId(8, N(1)))))
def test_a_packet_claiming_another_nodes_id_is_dropped_in_every_state_it_could_move(kind: str) -> None:
    cluster, core, ring = ring_of_three()
    packet = forged(ring)[kind]
    tokens = core.stats.tokens_seen
    actions = core.handle(PacketReceived(cluster.now, wire.encode(packet), N(2)))  # node 2's address
    assert core.stats.dropped.get("spoofed-sender") == 1, core.stats.dropped
    assert core.state is MembState.OPERATIONAL
    assert core.stats.tokens_seen == tokens
    assert actions == []


@pytest.mark.parametrize("kind", ["join", "leave-join", "merge-detect", "foreign-mcast"])
def test_the_same_packet_from_the_claimed_nodes_address_still_moves_the_membership(kind: str) -> None:
    cluster, core, ring = ring_of_three()
    packet = forged(ring)[kind]
    core.handle(PacketReceived(cluster.now, wire.encode(packet), claimed(packet)))
    assert "spoofed-sender" not in core.stats.dropped
    assert core.state is MembState.GATHER


def test_a_token_from_its_senders_address_is_taken() -> None:
    cluster, core, ring = ring_of_three()
    tokens = core.stats.tokens_seen
    core.handle(PacketReceived(cluster.now, wire.encode(forged(ring)["orf-token"]), N(3)))
    assert core.stats.tokens_seen == tokens + 1
    assert "spoofed-sender" not in core.stats.dropped


def test_an_unknown_source_is_not_checked() -> None:
    """With block_unlisted_ips off the transport hands over datagrams of unknown origin (src None),
    as corosync does; the claim cannot be checked then."""
    cluster, core, ring = ring_of_three()
    core.handle(PacketReceived(cluster.now, wire.encode(forged(ring)["join"]), None))
    assert core.state is MembState.GATHER
