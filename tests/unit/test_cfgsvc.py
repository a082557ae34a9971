"""The cfg service (service 1): KILLNODE wire layout as corosync's exec/cfg.c, the service's
decisions, and a kill carried over totem between Stacks on the simulator."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanlk.errors import ErrorCode, MalformedPacket, UsageError
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CFG_SERVICE, SendMessage
from cmanlk.services.cfg.service import (
    KILLNODE_SIZE,
    MESSAGE_REQ_EXEC_CFG_KILLNODE,
    MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG,
    MESSAGE_REQ_EXEC_CFG_SHUTDOWN,
    CfgService,
    KilledByNode,
    KillNodeRequest,
    KillRequested,
    NodeShutDown,
    ReloadConfigRequest,
    ReloadRequested,
    ShutdownRequest,
    decode_killnode,
    encode_killnode,
    encode_reload_config,
    encode_shutdown,
    printable_reason,
)
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.sim.cluster import Cluster
from cmanlk.stack import RequestResult, ServiceRequest, Stack, StackConfig, default_services
from cmanlk.totem.actions import ConfigKind, DeliverConfiguration
from cmanlk.totem.config import TotemConfig
from cmanlk.types import NodeId, RingId, ms

from .test_stack import Recorder, settled, stack_of


def corosync_killnode(nodeid: int, reason: bytes) -> bytes:
    """struct req_exec_cfg_killnode as gcc lays it out on x86-64, written out field by field."""
    out = bytearray(288)
    struct.pack_into("<i", out, 0, (1 << 16) | 1)  # header.id = SERVICE_ID_MAKE(CFG_SERVICE, 1)
    struct.pack_into("<i", out, 8, 288)  # header.size
    struct.pack_into("<I", out, 16, nodeid)  # nodeid, aligned(8)
    struct.pack_into("<H", out, 24, len(reason) + 1)  # reason.length = strlen + 1 (libcfg)
    out[32 : 32 + len(reason)] = reason  # reason.value, aligned(8), NUL-terminated
    return bytes(out)


def test_killnode_layout_matches_corosync():
    reason = b"Killed by corosync-cfgtool"
    assert KILLNODE_SIZE == 288
    assert encode_killnode(NodeId(3), reason) == corosync_killnode(3, reason)
    decoded = decode_killnode(corosync_killnode(7, reason))
    assert (decoded.nodeid, decoded.reason) == (7, reason)


@settings(max_examples=200, deadline=None)
@given(nodeid=st.integers(1, 2**32 - 1), reason=st.binary(max_size=255).filter(lambda b: b"\0" not in b))
def test_killnode_round_trip(nodeid, reason):
    message = encode_killnode(NodeId(nodeid), reason)
    assert len(message) == KILLNODE_SIZE
    header = svcwire.decode_request_header(message)
    assert svcwire.split_message_id(header.id) == (CFG_SERVICE, MESSAGE_REQ_EXEC_CFG_KILLNODE)
    assert decode_killnode(message) == decode_killnode(corosync_killnode(nodeid, reason))
    assert decode_killnode(message).reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_decode_or_raise_malformed(raw):
    try:
        decode_killnode(raw)
    except MalformedPacket:
        pass


def test_reason_too_long_or_with_nul_is_refused_by_the_encoder():
    with pytest.raises(ValueError):
        encode_killnode(NodeId(1), b"x" * 256)
    with pytest.raises(ValueError):
        encode_killnode(NodeId(1), b"a\0b")


def test_length_past_the_array_is_clamped():
    raw = bytearray(corosync_killnode(2, b"why"))
    struct.pack_into("<H", raw, 24, 0xFFFF)
    assert decode_killnode(bytes(raw)).reason == b"why"


def test_printable_reason_neutralises_control_characters():
    assert printable_reason(b"bad\nline\x1b[31m") == "bad?line?[31m"
    assert printable_reason(b"\xff ok") == "\ufffd ok"


def regular(*members: int) -> DeliverConfiguration:
    return DeliverConfiguration(ConfigKind.REGULAR, RingId(8, NodeId(1)), tuple(NodeId(m) for m in members))


def test_kill_of_a_member_is_multicast_and_a_stranger_refused():
    svc = CfgService(NodeId(1))
    svc.on_configuration(regular(1, 2, 3))
    (out,) = svc.on_local_request(KillNodeRequest(NodeId(3), "maintenance"))
    assert isinstance(out, SendMessage) and out.function == MESSAGE_REQ_EXEC_CFG_KILLNODE
    assert decode_killnode(out.message).nodeid == 3
    with pytest.raises(UsageError) as exc:
        svc.on_local_request(KillNodeRequest(NodeId(9), "x"))
    assert exc.value.code is ErrorCode.NOT_A_MEMBER and "node 9 is not a member" in str(exc.value)
    with pytest.raises(UsageError) as exc:
        svc.on_local_request(KillNodeRequest(NodeId(2), "é" * 200))
    assert exc.value.code is ErrorCode.INVALID_PARAM


def test_transitional_configuration_does_not_change_who_may_be_killed():
    svc = CfgService(NodeId(1))
    svc.on_configuration(regular(1, 2, 3))
    svc.on_configuration(DeliverConfiguration(ConfigKind.TRANSITIONAL, RingId(8, NodeId(1)), (NodeId(1),)))
    assert svc.members == (1, 2, 3)


def test_delivered_kill_names_the_requester_once():
    svc = CfgService(NodeId(3))
    message = corosync_killnode(3, b"Killed by corosync-cfgtool")
    assert svc.on_message(NodeId(1), MESSAGE_REQ_EXEC_CFG_KILLNODE, message) == [
        KilledByNode(NodeId(1), "Killed by corosync-cfgtool")
    ]
    assert svc.on_message(NodeId(2), MESSAGE_REQ_EXEC_CFG_KILLNODE, message) == []
    other = CfgService(NodeId(2))
    assert other.on_message(NodeId(1), MESSAGE_REQ_EXEC_CFG_KILLNODE, message) == [
        KillRequested(NodeId(1), NodeId(3), "Killed by corosync-cfgtool")
    ]


def test_other_cfg_messages():
    svc = CfgService(NodeId(1))
    header_only = svcwire.encode_request_header(svcwire.service_message_id(CFG_SERVICE, 2), 16)
    assert svc.on_message(NodeId(2), MESSAGE_REQ_EXEC_CFG_SHUTDOWN, header_only) == [NodeShutDown(NodeId(2))]
    with pytest.raises(MalformedPacket):  # a RELOAD_CONFIG is 32 bytes (header and message source)
        svc.on_message(NodeId(2), MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG, bytes(24))
    with pytest.raises(MalformedPacket):
        svc.on_message(NodeId(2), 9, bytes(24))
    with pytest.raises(MalformedPacket):
        svc.on_message(NodeId(2), MESSAGE_REQ_EXEC_CFG_KILLNODE, bytes(100))


def test_shutdown_and_reload_requests_travel_as_corosyncs_messages_and_come_back_as_notifications():
    svc = CfgService(NodeId(1))
    (shutdown,) = svc.on_local_request(ShutdownRequest())
    assert isinstance(shutdown, SendMessage) and shutdown.message == encode_shutdown()
    assert len(shutdown.message) == 16
    delivered = svc.on_message(NodeId(1), MESSAGE_REQ_EXEC_CFG_SHUTDOWN, shutdown.message)
    assert delivered == [NodeShutDown(NodeId(1))]
    (reload,) = svc.on_local_request(ReloadConfigRequest(0xDEADBEEF12))
    assert isinstance(reload, SendMessage) and len(reload.message) == 32
    assert reload.message == encode_reload_config(NodeId(1), 0xDEADBEEF12)
    notes = svc.on_message(NodeId(1), MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG, reload.message)
    assert notes == [ReloadRequested(NodeId(1), 0xDEADBEEF12)]
    with pytest.raises(UsageError):
        svc.on_local_request(ReloadConfigRequest(-1))


# --- on the simulator: three Stacks with cfg, a kill from node 1 reaches node 3 ---------------------


def make_cluster(n: int, seed: int = 3):
    nodes = tuple(NodeId(i) for i in range(1, n + 1))
    totem = TotemConfig.derive(nodes, token_ms=1000)
    qconf = QuorumConfig.for_nodes(nodes)
    services = default_services(qconf, extra=(CfgService,))
    log: dict = {}

    def factory(config, me, rng: random.Random, ring_seq):
        return Recorder(Stack(StackConfig(config, qconf, services), me, rng, ring_seq), log)

    return Cluster(totem, seed=seed, factory=factory), nodes, log


def test_kill_request_travels_over_totem_to_the_target():
    cluster, nodes, log = make_cluster(3)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes, nodes))
    # cfg is registered but, as in corosync, not synchronised.
    assert CFG_SERVICE in stack_of(cluster, NodeId(1)).services
    assert CFG_SERVICE not in stack_of(cluster, NodeId(1)).sync.local_service_ids
    node1 = cluster.nodes[NodeId(1)]
    kill = KillNodeRequest(NodeId(3), "disk failing")
    cluster._feed(node1, ServiceRequest(cluster.now, CFG_SERVICE, kill, request_id=41))
    typo = KillNodeRequest(NodeId(8), "typo")
    cluster._feed(node1, ServiceRequest(cluster.now, CFG_SERVICE, typo, request_id=42))

    def everyone_heard() -> bool:
        return all(any(isinstance(x, KilledByNode | KillRequested) for x in log[n]) for n in nodes)

    assert cluster.run_for(ms(2000), everyone_heard)
    results = {r.request_id: r for r in log[NodeId(1)] if isinstance(r, RequestResult)}
    assert results[41].error is None
    assert results[42].error is ErrorCode.NOT_A_MEMBER
    killed = [x for x in log[NodeId(3)] if isinstance(x, KilledByNode)]
    assert killed == [KilledByNode(NodeId(1), "disk failing")]
    for n in (NodeId(1), NodeId(2)):
        assert KillRequested(NodeId(1), NodeId(3), "disk failing") in log[n]
        assert not any(isinstance(x, KilledByNode) for x in log[n])
