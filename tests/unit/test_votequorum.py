"""votequorum wire messages (corosync-wire.md §8) and the service's sync behaviour."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmanlk.errors import MalformedPacket, UsageError
from cmanlk.services.base import SendMessage
from cmanlk.services.votequorum.policy import FLAG_FIRST, NodeInfo, QuorumConfig
from cmanlk.services.votequorum.service import (
    QuorumChanged,
    VotequorumService,
    decode_nodeinfo,
    decode_reconfigure,
    encode_nodeinfo,
    encode_reconfigure,
)
from cmanlk.types import NodeId, RingId


def test_nodeinfo_is_32_bytes_packed_after_header():
    raw = encode_nodeinfo(NodeInfo(NodeId(3), 1, 3, FLAG_FIRST))
    assert len(raw) == 32
    assert struct.unpack("<i4xi4xIIII", raw) == (0x50000, 32, 3, 1, 3, 8)
    assert decode_nodeinfo(raw) == NodeInfo(NodeId(3), 1, 3, 8)


def test_reconfigure_is_28_bytes():
    raw = encode_reconfigure(NodeId(1), 2, 1)
    assert len(raw) == 28
    assert struct.unpack("<i4xi4xIIB3x", raw) == (0x50001, 28, 1, 2, 1)
    assert decode_reconfigure(raw) == (1, 2, 1)


@given(st.binary(max_size=40), st.integers(0, 6))
def test_random_messages_are_applied_or_raise_malformed(raw, function):
    svc = VotequorumService(NodeId(1), QuorumConfig.for_nodes([NodeId(1), NodeId(2)]))
    try:
        svc.on_message(NodeId(2), function, raw)
    except MalformedPacket:
        pass


def test_sync_sends_nodeinfo_for_self_and_qdevice_then_notifies():
    svc = VotequorumService(NodeId(1), QuorumConfig.for_nodes([NodeId(1), NodeId(2), NodeId(3)]))
    svc.sync_init(RingId(4, NodeId(1)), (NodeId(1),), ())
    done, out = svc.sync_process()
    assert done and [type(o) for o in out] == [SendMessage, SendMessage]
    infos = [decode_nodeinfo(o.message) for o in out if isinstance(o, SendMessage)]
    assert infos[0] == NodeInfo(NodeId(1), 1, 3, FLAG_FIRST | 0)
    assert infos[1] == NodeInfo(NodeId(0), 0, 0, 0)
    assert svc.sync_process() == (True, [])
    for o in out:
        assert isinstance(o, SendMessage)
        svc.on_message(NodeId(1), 0, o.message)
    (note,) = [n for n in svc.sync_activate() if isinstance(n, QuorumChanged)]
    assert not note.quorate and note.total_votes == 1 and note.quorum == 2


def test_refused_expected_votes_raise_usage_error():
    svc = VotequorumService(NodeId(1), QuorumConfig.for_nodes([NodeId(1), NodeId(2), NodeId(3)]))
    with pytest.raises(UsageError):
        svc.request_set_expected(0)
