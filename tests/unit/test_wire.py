"""The totemsrp codec: round trips, both byte orders, the sizes captured from corosync, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanlk.errors import MalformedPacket
from cmanlk.totem.wire import (
    ENCAPSULATED,
    NOT_ENCAPSULATED,
    PROCESSOR_COUNT_MAX,
    RETRANSMIT_ENTRIES_MAX,
    CommitMemb,
    CommitToken,
    Mcast,
    MembJoin,
    MergeDetect,
    OrfToken,
    Packet,
    PacketType,
    RtrItem,
    TokenHoldCancel,
    decode,
    encode,
    peek_type,
)
from cmanlk.types import NodeId, RingId

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
node_ids = u32.map(NodeId)
ring_ids = st.builds(RingId, seq=u64, rep=node_ids)

tokens = st.builds(
    OrfToken,
    sender=node_ids,
    seq=u32,
    token_seq=u32,
    aru=u32,
    aru_addr=node_ids,
    ring_id=ring_ids,
    backlog=u32,
    fcc=u32,
    retrans_flg=i32,
    rtr_list=st.lists(st.builds(RtrItem, ring_id=ring_ids, seq=u32), max_size=RETRANSMIT_ENTRIES_MAX).map(
        tuple
    ),
    target=u32,
)
mcasts = st.builds(
    Mcast,
    sender=node_ids,
    system_from=node_ids,
    seq=u32,
    this_seqno=i32,
    ring_id=ring_ids,
    guarantee=i32,
    payload=st.binary(max_size=1500),
    encapsulated=st.sampled_from([ENCAPSULATED, NOT_ENCAPSULATED]),
    node_id=u32,
    target=u32,
)
merges = st.builds(MergeDetect, sender=node_ids, system_from=node_ids, ring_id=ring_ids, target=u32)
joins = st.builds(
    MembJoin,
    sender=node_ids,
    system_from=node_ids,
    proc_list=st.lists(node_ids, max_size=40).map(tuple),
    failed_list=st.lists(node_ids, max_size=40).map(tuple),
    ring_seq=u64,
    target=u32,
)
commit_membs = st.builds(CommitMemb, ring_id=ring_ids, aru=u32, high_delivered=u32, received_flg=u32)


@st.composite
def commits(draw: st.DrawFn) -> CommitToken:
    n = draw(st.integers(1, 40))
    return CommitToken(
        sender=draw(node_ids),
        token_seq=draw(u32),
        ring_id=draw(ring_ids),
        retrans_flg=draw(u32),
        memb_index=draw(st.integers(0, n)),
        addr=tuple(draw(st.lists(node_ids, min_size=n, max_size=n))),
        memb_list=tuple(draw(st.lists(commit_membs, min_size=n, max_size=n))),
        target=draw(u32),
    )


hold_cancels = st.builds(TokenHoldCancel, sender=node_ids, ring_id=ring_ids, target=u32)
packets = st.one_of(tokens, mcasts, merges, joins, commits(), hold_cancels)


# --- big-endian encoder written independently with '>' layouts, as a big-endian corosync would ---


def be_header(ptype: int, sender: int, target: int, encapsulated: int = 0) -> bytes:
    return struct.pack(">HBBBII", 0xC070, 3, ptype, encapsulated, sender, target)


def be_ring(r: RingId) -> bytes:
    return struct.pack(">IQ", r.rep, r.seq)


def encode_big_endian(p: Packet) -> bytes:
    if isinstance(p, OrfToken):
        return (
            be_header(0, p.sender, p.target)
            + struct.pack(">IIII", p.seq, p.token_seq, p.aru, p.aru_addr)
            + be_ring(p.ring_id)
            + struct.pack(">IIii", p.backlog, p.fcc, p.retrans_flg, len(p.rtr_list))
            + b"".join(be_ring(i.ring_id) + struct.pack(">I", i.seq) for i in p.rtr_list)
        )
    if isinstance(p, Mcast):
        return (
            be_header(1, p.sender, p.target, p.encapsulated)
            + struct.pack(">IIi", p.system_from, p.seq, p.this_seqno)
            + be_ring(p.ring_id)
            + struct.pack(">Ii", p.node_id, p.guarantee)
            + p.payload
        )
    if isinstance(p, MergeDetect):
        return be_header(2, p.sender, p.target) + struct.pack(">I", p.system_from) + be_ring(p.ring_id)
    if isinstance(p, MembJoin):
        ids = p.proc_list + p.failed_list
        return (
            be_header(3, p.sender, p.target)
            + struct.pack(">IIIQ", p.system_from, len(p.proc_list), len(p.failed_list), p.ring_seq)
            + struct.pack(f">{len(ids)}I", *ids)
        )
    if isinstance(p, CommitToken):
        return (
            be_header(4, p.sender, p.target)
            + struct.pack(">I", p.token_seq)
            + be_ring(p.ring_id)
            + struct.pack(">Iii", p.retrans_flg, p.memb_index, len(p.addr))
            + struct.pack(f">{len(p.addr)}I", *p.addr)
            + b"".join(
                be_ring(m.ring_id) + struct.pack(">III", m.aru, m.high_delivered, m.received_flg)
                for m in p.memb_list
            )
        )
    assert isinstance(p, TokenHoldCancel)
    return be_header(5, p.sender, p.target) + be_ring(p.ring_id)


@settings(max_examples=400, deadline=None)
@given(packets)
def test_decode_encode_round_trip(p):
    data = encode(p)
    assert data[:3] == b"\x70\xc0\x03"  # magic 0xC070 little-endian, wire version 3
    assert decode(data) == p


@settings(max_examples=300, deadline=None)
@given(packets)
def test_big_endian_packets_decode_to_the_same_values(p):
    data = encode_big_endian(p)
    assert data[:2] == b"\xc0\x70"
    assert len(data) == len(encode(p))
    assert decode(data) == p


@pytest.mark.parametrize("cls", [OrfToken, Mcast, MergeDetect, MembJoin, CommitToken, TokenHoldCancel])
def test_peek_type_names_every_packet_type(cls):
    sample = {
        OrfToken: OrfToken(NodeId(1), 0, 0, 0, NodeId(1), RingId(4, NodeId(1)), 0, 0, 0),
        Mcast: Mcast(NodeId(1), NodeId(1), 1, 1, RingId(4, NodeId(1)), 0, b"x"),
        MergeDetect: MergeDetect(NodeId(1), NodeId(1), RingId(4, NodeId(1))),
        MembJoin: MembJoin(NodeId(1), NodeId(1), (NodeId(1),), (), 4),
        CommitToken: CommitToken(
            NodeId(1),
            1,
            RingId(8, NodeId(1)),
            0,
            0,
            (NodeId(1),),
            (CommitMemb(RingId(4, NodeId(1)), 0, 0, 0),),
        ),
        TokenHoldCancel: TokenHoldCancel(NodeId(1), RingId(4, NodeId(1))),
    }[cls]
    expected = {
        OrfToken: PacketType.ORF_TOKEN,
        Mcast: PacketType.MCAST,
        MergeDetect: PacketType.MEMB_MERGE_DETECT,
        MembJoin: PacketType.MEMB_JOIN,
        CommitToken: PacketType.MEMB_COMMIT_TOKEN,
        TokenHoldCancel: PacketType.TOKEN_HOLD_CANCEL,
    }[cls]
    assert peek_type(encode(sample)) is expected


# --- sizes seen in the corosync capture (reference §10) --------------------------------------------

RING = RingId(0x13D, NodeId(1))
N = NodeId


def test_captured_sizes():
    assert len(encode(OrfToken(N(1), 5, 9, 5, N(1), RING, 0, 0, 0))) == 57
    rtr = (RtrItem(RING, 3), RtrItem(RING, 4))
    assert len(encode(OrfToken(N(1), 5, 9, 5, N(1), RING, 0, 0, 1, rtr))) == 57 + 2 * 16
    assert len(encode(MembJoin(N(3), N(3), (N(3),), (), 0x139))) == 37
    assert len(encode(MembJoin(N(1), N(1), (N(1), N(2), N(3)), (), 0x139))) == 45
    assert len(encode(MembJoin(N(1), N(1), (N(1), N(2), N(3)), (N(3),), 0x13D))) == 49
    memb = CommitMemb(RingId(0x135, N(1)), 17, 17, 1)
    three = CommitToken(N(1), 1, RING, 0, 1, (N(1), N(2), N(3)), (memb, memb, memb))
    two = CommitToken(N(1), 1, RING, 0, 1, (N(1), N(2)), (memb, memb))
    assert len(encode(three)) == 125
    assert len(encode(two)) == 97
    assert len(encode(MergeDetect(N(1), N(1), RING))) == 29
    assert len(encode(TokenHoldCancel(N(2), RING))) == 25
    payload = b"\x00" * 1410
    assert len(encode(Mcast(N(1), N(1), 7, 7, RING, 0, payload))) == 45 + 1410 == 1455


def test_commit_token_layout_is_byte_exact():
    memb = CommitMemb(RingId(0x135, N(1)), 17, 16, 1)
    data = encode(CommitToken(N(1), 6, RING, 0, 3, (N(1), N(2)), (memb, memb)))
    assert data[:13] == bytes.fromhex("70c0030400") + struct.pack("<II", 1, 0)
    assert struct.unpack_from("<IIQIii", data, 13) == (6, 1, 0x13D, 0, 3, 2)
    assert struct.unpack_from("<II", data, 41) == (1, 2)
    assert struct.unpack_from("<IQIII", data, 49) == (1, 0x135, 17, 16, 1)


def test_leave_join_has_sender_zero():
    leave = MembJoin(N(0), N(2), (N(1), N(2)), (), 8)
    assert decode(encode(leave)).sender == 0


# --- hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short-header"),
        (b"\x70\xc0\x03" + b"\x00" * 9, "short-header"),
        (b"\xff\xff\x03" + b"\x00" * 10, "bad-magic"),
        (b"\xfe\xfe\x03" + b"\x00" * 10, "bad-magic"),
        (b"\x01\x00\x03" + b"\x00" * 10, "bad-magic"),
        (b"\x70\xc0\x02" + b"\x00" * 10, "bad-version"),
        (b"\x70\xc0\x03\x06" + b"\x00" * 9, "bad-type"),
        (b"\x70\xc0\x03\x00" + b"\x00" * 9, "short-token"),
        (b"\x70\xc0\x03\x01\x02" + b"\x00" * 8, "short-mcast"),
        (b"\x70\xc0\x03\x02" + b"\x00" * 9, "short-merge-detect"),
        (b"\x70\xc0\x03\x03" + b"\x00" * 9, "short-join"),
        (b"\x70\xc0\x03\x04" + b"\x00" * 9, "short-commit"),
        (b"\x70\xc0\x03\x05" + b"\x00" * 9, "short-hold-cancel"),
    ],
)
def test_malformed_headers_raise_with_reason(data, reason):
    with pytest.raises(MalformedPacket) as err:
        decode(data)
    assert err.value.reason == reason


def test_counts_beyond_corosync_bounds_are_refused():
    token = bytearray(encode(OrfToken(N(1), 0, 0, 0, N(1), RING, 0, 0, 0)))
    struct.pack_into("<i", token, 53, RETRANSMIT_ENTRIES_MAX + 1)
    with pytest.raises(MalformedPacket, match="bad-rtr-count"):
        decode(bytes(token))
    struct.pack_into("<i", token, 53, -1)
    with pytest.raises(MalformedPacket, match="bad-rtr-count"):
        decode(bytes(token))
    join = bytearray(encode(MembJoin(N(1), N(1), (N(1),), (), 0)))
    struct.pack_into("<I", join, 17, PROCESSOR_COUNT_MAX + 1)
    with pytest.raises(MalformedPacket, match="bad-join-count"):
        decode(bytes(join))
    struct.pack_into("<I", join, 17, 2)  # claims two ids, carries one
    with pytest.raises(MalformedPacket, match="short-join-lists"):
        decode(bytes(join))
    memb = CommitMemb(RING, 0, 0, 0)
    commit = bytearray(encode(CommitToken(N(1), 1, RING, 0, 0, (N(1),), (memb,))))
    struct.pack_into("<i", commit, 37, 0)
    with pytest.raises(MalformedPacket, match="bad-commit-count"):
        decode(bytes(commit))
    struct.pack_into("<i", commit, 37, 1)
    struct.pack_into("<i", commit, 33, 2)
    with pytest.raises(MalformedPacket, match="bad-commit-index"):
        decode(bytes(commit))


def test_bad_encapsulation_value_is_refused():
    data = bytearray(encode(Mcast(N(1), N(1), 1, 1, RING, 0, b"x")))
    data[4] = 0
    with pytest.raises(MalformedPacket, match="bad-encapsulation"):
        decode(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_malformed(data):
    try:
        decode(data)
    except MalformedPacket:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_behind_a_valid_header_decode_or_raise_malformed(body):
    for ptype in range(7):
        for prefix in (b"\x70\xc0\x03", b"\xc0\x70\x03"):
            try:
                decode(prefix + bytes([ptype]) + body)
            except MalformedPacket:
                pass


@settings(max_examples=400, deadline=None)
@given(p=packets, data=st.data())
def test_mutated_packets_decode_or_raise_malformed(p, data):
    raw = bytearray(encode(p) if data.draw(st.booleans()) else encode_big_endian(p))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(u8)
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        decoded = decode(bytes(raw))
    except MalformedPacket:
        return
    # Whatever decodes re-encodes to a packet of the same type (the codec never invents garbage types).
    assert type(decoded) in (OrfToken, Mcast, MergeDetect, MembJoin, CommitToken, TokenHoldCancel)
