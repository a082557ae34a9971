"""Sync v2 (corosync-wire.md §7): sizes, service order, unknown services, barriers, old rings, abort."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire
from cmanlk.services.base import SendMessage
from cmanlk.services.cmap.service import CmapSync, decode_config_version, encode_config_version_message
from cmanlk.services.sync import (
    BARRIER_SIZE,
    SERVICE_BUILD_SIZE,
    Barrier,
    SendSync,
    ServiceBuild,
    Sync,
    SyncCompleted,
    SyncState,
    decode_sync_message,
    encode_barrier,
    encode_service_build,
)
from cmanlk.types import NodeId, RingId

R1 = RingId(0x13D, NodeId(1))
R2 = RingId(0x141, NodeId(1))


def test_service_build_is_552_bytes_with_the_whole_list():
    raw = encode_service_build(R1, (0, 2, 3, 5))
    assert len(raw) == SERVICE_BUILD_SIZE == 552
    assert struct.unpack_from("<i4xi4x", raw) == (1, 552)
    assert struct.unpack_from("<IQ", raw, 16) == (1, 0x13D)
    assert struct.unpack_from("<i", raw, 32) == (4,)
    assert struct.unpack_from("<4i", raw, 40) == (0, 2, 3, 5)
    assert decode_sync_message(raw) == ServiceBuild(R1, (0, 2, 3, 5))


def test_barrier_is_32_bytes():
    raw = encode_barrier(R1)
    assert len(raw) == BARRIER_SIZE == 32
    assert struct.unpack_from("<i4xi4x", raw) == (0, 32)
    assert decode_sync_message(raw) == Barrier(R1)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        encode_barrier(R1)[:20],
        encode_service_build(R1, (0,))[:500],
        svcwire.encode_request_header(7, 32) + bytes(16),
        encode_service_build(R1, ())[:32] + struct.pack("<i", 129) + bytes(516),
        encode_service_build(R1, ())[:32] + struct.pack("<i4xi", 1, 999) + bytes(508),
    ],
)
def test_bad_sync_messages_raise_malformed(raw):
    with pytest.raises(MalformedPacket):
        decode_sync_message(raw)


@given(st.binary(max_size=600))
def test_random_sync_bytes_decode_or_raise_malformed(raw):
    try:
        decode_sync_message(raw)
    except MalformedPacket:
        pass


@dataclass
class FakeService:
    service_id: int
    name: str
    log: list[str]
    process_calls_needed: int = 1
    calls: int = 0
    aborted: int = 0
    inits: list[tuple] = field(default_factory=list)

    def on_configuration(self, change):
        return []

    def sync_init(self, ring_id, members, transitional_members):
        self.calls = 0
        self.inits.append((ring_id, members, transitional_members))
        self.log.append(f"init {self.service_id}")
        return []

    def sync_process(self):
        self.calls += 1
        done = self.calls >= self.process_calls_needed
        self.log.append(f"process {self.service_id}")
        msg = svcwire.encode_request_header(svcwire.service_message_id(self.service_id, 0), 16)
        return done, [SendMessage(0, msg)]

    def sync_activate(self):
        self.log.append(f"activate {self.service_id}")
        return []

    def sync_abort(self):
        self.aborted += 1

    def on_message(self, sender, function, message):
        return []


class Bus:
    """Total-order bus over several Sync instances: every SendSync is delivered to all, in order."""

    def __init__(self, nodes: dict[NodeId, Sync]) -> None:
        self.nodes = nodes
        self.queue: list[tuple[NodeId, bytes]] = []
        self.completed: dict[NodeId, list[SyncCompleted]] = {n: [] for n in nodes}
        self.service_msgs: dict[NodeId, list[bytes]] = {n: [] for n in nodes}
        self.order: list[tuple[NodeId, str]] = []

    def take(self, node: NodeId, outputs) -> None:
        for o in outputs:
            if isinstance(o, SendSync):
                self.queue.append((node, o.message))
                self.order.append((node, "barrier" if len(o.message) == 32 else "build"))
            elif isinstance(o, SyncCompleted):
                self.completed[node].append(o)
            elif isinstance(o, SendMessage):
                self.service_msgs[node].append(o.message)
                self.order.append((node, f"svc {o.message[2]}"))

    def run(self, limit: int = 1000) -> None:
        steps = 0
        while self.queue and steps < limit:
            sender, msg = self.queue.pop(0)
            for node, sync in self.nodes.items():
                self.take(node, sync.on_message(sender, msg))
            for node, sync in self.nodes.items():
                self.take(node, sync.poll())
            steps += 1
        assert not self.queue


def make(ids, service_ids_per_node, log=None):
    log = [] if log is None else log
    return {
        NodeId(n): Sync(NodeId(n), [FakeService(s, f"s{s}", log) for s in service_ids_per_node[i]])
        for i, n in enumerate(ids)
    }


def test_three_nodes_complete_in_ascending_service_order():
    log: list[str] = []
    nodes = make([1, 2, 3], [[5, 0, 2]] * 3, log)
    bus = Bus(nodes)
    members = (NodeId(1), NodeId(2), NodeId(3))
    for n, s in nodes.items():
        bus.take(n, s.start(R1, members))
    bus.run()
    for n in nodes:
        assert bus.completed[n] == [SyncCompleted(R1, members, ())]
        assert not nodes[n].is_synchronising
    activations = [line for line in log if line.startswith("activate")]
    assert activations == ["activate 0"] * 3 + ["activate 2"] * 3 + ["activate 5"] * 3


def test_unknown_services_get_dummy_rounds_so_corosync_lists_interoperate():
    # A corosync node lists cmap, cpg, quorum, votequorum; ours lists only votequorum and cmap.
    nodes = make([1, 2], [[0, 5], [0, 2, 3, 5]])
    bus = Bus(nodes)
    members = (NodeId(1), NodeId(2))
    for n, s in nodes.items():
        bus.take(n, s.start(R1, members))
    bus.run()
    assert all(len(c) == 1 for c in bus.completed.values())
    # One barrier per service in the union from each node: 4 services x 2 nodes.
    assert sum(1 for _, what in bus.order if what == "barrier") == 8


def test_barrier_for_next_service_only_after_round_completes():
    nodes = make([1, 2, 3], [[0, 5]] * 3)
    bus = Bus(nodes)
    members = (NodeId(1), NodeId(2), NodeId(3))
    for n, s in nodes.items():
        bus.take(n, s.start(R1, members))
    bus.run()
    barriers = [n for n, what in bus.order if what == "barrier"]
    # the first three barriers (service 0) come from distinct nodes, then the next three.
    assert sorted(barriers[:3]) == [1, 2, 3] and sorted(barriers[3:]) == [1, 2, 3]


def test_no_services_completes_after_service_build_round():
    nodes = make([1, 2], [[], []])
    bus = Bus(nodes)
    members = (NodeId(1), NodeId(2))
    for n, s in nodes.items():
        bus.take(n, s.start(R1, members))
    bus.run()
    assert all(len(c) == 1 for c in bus.completed.values())


def test_slow_sync_process_is_retried_by_poll():
    log: list[str] = []
    svc = FakeService(5, "slow", log, process_calls_needed=40)
    sync = Sync(NodeId(1), [svc])
    out = sync.start(R1, (NodeId(1),))
    build = out[0]
    assert isinstance(build, SendSync)
    out = sync.on_message(NodeId(1), build.message)
    assert not any(isinstance(o, SendSync) for o in out)  # 16 calls per poll, not done yet
    assert sync.state is SyncState.PROCESS
    out = sync.poll() + sync.poll()
    barriers = [o for o in out if isinstance(o, SendSync)]
    assert len(barriers) == 1 and svc.calls == 40


def test_old_ring_messages_are_discarded_and_abort_calls_current_service():
    log: list[str] = []
    svc = FakeService(5, "vq", log, process_calls_needed=10**6)
    sync = Sync(NodeId(1), [svc])
    members = (NodeId(1), NodeId(2))
    sync.start(R1, members)
    sync.on_message(NodeId(1), encode_service_build(R1, (5,)))
    sync.on_message(NodeId(2), encode_service_build(R1, (5,)))
    assert sync.state is SyncState.PROCESS
    sync.abort()
    assert svc.aborted == 1 and not sync.is_synchronising
    assert sync.on_message(NodeId(2), encode_barrier(R1)) == []
    sync.start(R2, members)
    assert sync.on_message(NodeId(2), encode_service_build(R1, (5,))) == []
    assert sync.stats["old_ring"] == 2


def test_transitional_members_are_intersected_with_new_members():
    log: list[str] = []
    svc = FakeService(5, "vq", log)
    sync = Sync(NodeId(1), [svc])
    sync.save_transitional((NodeId(1), NodeId(3)))
    sync.start(R1, (NodeId(1), NodeId(2)))
    assert svc.inits == [(R1, (NodeId(1), NodeId(2)), (NodeId(1),))]


def test_messages_from_non_members_are_ignored():
    sync = Sync(NodeId(1), [])
    sync.start(R1, (NodeId(1), NodeId(2)))
    assert sync.on_message(NodeId(9), encode_service_build(R1, ())) == []
    assert sync.stats["not_member"] == 1


def test_cmap_participant_sends_config_version_and_flags_mismatch():
    cmap = CmapSync(NodeId(1), config_version=3)
    cmap.sync_init(R1, (NodeId(1), NodeId(2)), (NodeId(1),))
    done, out = cmap.sync_process()
    assert done and isinstance(out[0], SendMessage)
    assert decode_config_version(out[0].message) == (0, 3)
    cmap.on_message(NodeId(2), 0, encode_config_version_message(4))
    (mismatch,) = cmap.sync_activate()
    assert (mismatch.mine, mismatch.highest_received) == (3, 4)


def test_cmap_unset_version_message_is_328_bytes_as_captured():
    raw = encode_config_version_message(None)
    assert len(raw) == 328
    assert struct.unpack_from("<i4xi4x", raw) == (0, 328)
