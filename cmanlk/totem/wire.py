"""The totemsrp wire format of corosync 3 (totem wire version 3), both byte orders on receipt.

Six packet types share a 13-byte packed header (magic, version, type,
encapsulated, nodeid, target_nodeid); see shared/reference/corosync-wire.md §2–3.
Corosync writes native byte order and receivers swap when the magic arrives
swapped; we always write little-endian (every corosync deployment we can meet is
x86 or little-endian ARM) and decode either order.

`decode()` checks every length and count before it reads a body and raises a
single error type, `MalformedPacket(reason)`, for anything it cannot parse; the
core turns that into a counted drop.

Deviations from corosync: none on the wire. We bound list lengths by the same
constants corosync uses (PROCESSOR_COUNT_MAX, RETRANSMIT_ENTRIES_MAX) and reject
larger counts instead of reading past the buffer.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket
from cmanlk.types import NodeId, RingId

MAGIC = 0xC070
MAGIC_SWAPPED = 0x70C0
WIRE_VERSION = 3

PROCESSOR_COUNT_MAX = 384  # corosync's bound on members of a ring; also bounds JOIN and commit lists.
RETRANSMIT_ENTRIES_MAX = 30  # corosync's bound on the token's retransmit request list.
ENCAPSULATED = 1  # MCAST wraps an old-ring message re-originated in RECOVERY.
NOT_ENCAPSULATED = 2

HEADER_SIZE = 13
RING_ID_SIZE = 12
TOKEN_FIXED_SIZE = 57
RTR_ITEM_SIZE = 16
MCAST_HEADER_SIZE = 45
MERGE_DETECT_SIZE = 29
JOIN_FIXED_SIZE = 33
COMMIT_FIXED_SIZE = 41
COMMIT_MEMB_SIZE = 24
HOLD_CANCEL_SIZE = 25


class PacketType(enum.IntEnum):
    ORF_TOKEN = 0
    MCAST = 1
    MEMB_MERGE_DETECT = 2
    MEMB_JOIN = 3
    MEMB_COMMIT_TOKEN = 4
    TOKEN_HOLD_CANCEL = 5


@dataclass(frozen=True, slots=True)
class RtrItem:
    """One retransmit request on the token: a message of `ring_id` with `seq` that someone lacks."""

    ring_id: RingId
    seq: int


@dataclass(frozen=True, slots=True)
class OrfToken:
    sender: NodeId
    seq: int
    token_seq: int
    aru: int
    aru_addr: NodeId
    ring_id: RingId
    backlog: int
    fcc: int
    retrans_flg: int
    rtr_list: tuple[RtrItem, ...] = ()
    target: int = 0


@dataclass(frozen=True, slots=True)
class Mcast:
    sender: NodeId
    system_from: NodeId
    seq: int
    this_seqno: int
    ring_id: RingId
    guarantee: int
    payload: bytes
    encapsulated: int = NOT_ENCAPSULATED
    node_id: int = 0
    target: int = 0


@dataclass(frozen=True, slots=True)
class MergeDetect:
    sender: NodeId
    system_from: NodeId
    ring_id: RingId
    target: int = 0


@dataclass(frozen=True, slots=True)
class MembJoin:
    """A JOIN. `sender` is 0 for the leave JOIN a node sends on clean shutdown."""

    sender: NodeId
    system_from: NodeId
    proc_list: tuple[NodeId, ...]
    failed_list: tuple[NodeId, ...]
    ring_seq: int
    target: int = 0


@dataclass(frozen=True, slots=True)
class CommitMemb:
    """A member's entry in the commit token: what it had of its old ring."""

    ring_id: RingId
    aru: int
    high_delivered: int
    received_flg: int


@dataclass(frozen=True, slots=True)
class CommitToken:
    sender: NodeId
    token_seq: int
    ring_id: RingId
    retrans_flg: int
    memb_index: int
    addr: tuple[NodeId, ...]
    memb_list: tuple[CommitMemb, ...]
    target: int = 0


@dataclass(frozen=True, slots=True)
class TokenHoldCancel:
    sender: NodeId
    ring_id: RingId
    target: int = 0


Packet = OrfToken | Mcast | MergeDetect | MembJoin | CommitToken | TokenHoldCancel


class _Layout:
    """Precompiled struct layouts for one byte order."""

    def __init__(self, order: str) -> None:
        self.header = struct.Struct(order + "HBBBII")
        self.ring_id = struct.Struct(order + "IQ")
        self.token = struct.Struct(order + "IIII" + "IQ" + "IIii")
        self.rtr = struct.Struct(order + "IQI")
        self.mcast = struct.Struct(order + "IIi" + "IQ" + "Ii")
        self.merge = struct.Struct(order + "I" + "IQ")
        self.join = struct.Struct(order + "IIIQ")
        self.commit = struct.Struct(order + "I" + "IQ" + "Iii")
        self.commit_memb = struct.Struct(order + "IQIII")
        self.hold_cancel = struct.Struct(order + "IQ")
        self.order = order


_LE = _Layout("<")
_BE = _Layout(">")


def _ring(rep: int, seq: int) -> RingId:
    return RingId(seq, NodeId(rep))


def encode(packet: Packet) -> bytes:
    """Return the wire bytes of `packet` (little-endian, as an x86 corosync writes them)."""
    L = _LE
    match packet:
        case OrfToken():
            head = L.header.pack(MAGIC, WIRE_VERSION, PacketType.ORF_TOKEN, 0, packet.sender, packet.target)
            body = L.token.pack(
                packet.seq, packet.token_seq, packet.aru, packet.aru_addr,
                packet.ring_id.rep, packet.ring_id.seq,
                packet.backlog, packet.fcc, packet.retrans_flg, len(packet.rtr_list),
            )  # fmt: skip
            rtr = b"".join(L.rtr.pack(i.ring_id.rep, i.ring_id.seq, i.seq) for i in packet.rtr_list)
            return head + body + rtr
        case Mcast():
            head = L.header.pack(
                MAGIC, WIRE_VERSION, PacketType.MCAST, packet.encapsulated, packet.sender, packet.target
            )
            body = L.mcast.pack(
                packet.system_from, packet.seq, packet.this_seqno,
                packet.ring_id.rep, packet.ring_id.seq, packet.node_id, packet.guarantee,
            )  # fmt: skip
            return head + body + packet.payload
        case MergeDetect():
            head = L.header.pack(
                MAGIC, WIRE_VERSION, PacketType.MEMB_MERGE_DETECT, 0, packet.sender, packet.target
            )
            return head + L.merge.pack(packet.system_from, packet.ring_id.rep, packet.ring_id.seq)
        case MembJoin():
            head = L.header.pack(MAGIC, WIRE_VERSION, PacketType.MEMB_JOIN, 0, packet.sender, packet.target)
            body = L.join.pack(
                packet.system_from, len(packet.proc_list), len(packet.failed_list), packet.ring_seq
            )
            ids = packet.proc_list + packet.failed_list
            return head + body + struct.pack(f"<{len(ids)}I", *ids)
        case CommitToken():
            head = L.header.pack(
                MAGIC, WIRE_VERSION, PacketType.MEMB_COMMIT_TOKEN, 0, packet.sender, packet.target
            )
            body = L.commit.pack(
                packet.token_seq, packet.ring_id.rep, packet.ring_id.seq,
                packet.retrans_flg, packet.memb_index, len(packet.addr),
            )  # fmt: skip
            addrs = struct.pack(f"<{len(packet.addr)}I", *packet.addr)
            membs = b"".join(
                L.commit_memb.pack(m.ring_id.rep, m.ring_id.seq, m.aru, m.high_delivered, m.received_flg)
                for m in packet.memb_list
            )
            return head + body + addrs + membs
        case TokenHoldCancel():
            head = L.header.pack(
                MAGIC, WIRE_VERSION, PacketType.TOKEN_HOLD_CANCEL, 0, packet.sender, packet.target
            )
            return head + L.hold_cancel.pack(packet.ring_id.rep, packet.ring_id.seq)
    raise TypeError(f"not a totem packet: {packet!r}")


def peek_type(data: bytes) -> PacketType:
    """Return the packet type after checking magic and version; raises MalformedPacket."""
    _layout_of(data)
    try:
        return PacketType(data[3])
    except ValueError:
        raise MalformedPacket("bad-type", f"type {data[3]}") from None


def decode(data: bytes) -> Packet:
    """Parse one totem packet. Raises MalformedPacket(reason) on anything it cannot parse."""
    L = _layout_of(data)
    _magic, _version, ptype, encapsulated, sender, target = L.header.unpack_from(data, 0)
    match ptype:
        case PacketType.ORF_TOKEN:
            return _decode_token(L, data, NodeId(sender), target)
        case PacketType.MCAST:
            return _decode_mcast(L, data, NodeId(sender), target, encapsulated)
        case PacketType.MEMB_MERGE_DETECT:
            _need(data, MERGE_DETECT_SIZE, "merge-detect")
            system_from, rep, rseq = L.merge.unpack_from(data, HEADER_SIZE)
            return MergeDetect(NodeId(sender), NodeId(system_from), _ring(rep, rseq), target)
        case PacketType.MEMB_JOIN:
            return _decode_join(L, data, NodeId(sender), target)
        case PacketType.MEMB_COMMIT_TOKEN:
            return _decode_commit(L, data, NodeId(sender), target)
        case PacketType.TOKEN_HOLD_CANCEL:
            _need(data, HOLD_CANCEL_SIZE, "hold-cancel")
            rep, rseq = L.hold_cancel.unpack_from(data, HEADER_SIZE)
            return TokenHoldCancel(NodeId(sender), _ring(rep, rseq), target)
    raise MalformedPacket("bad-type", f"type {ptype}")


def _layout_of(data: bytes) -> _Layout:
    if len(data) < HEADER_SIZE:
        raise MalformedPacket("short-header", f"{len(data)} bytes")
    magic = data[0] | (data[1] << 8)
    if magic == MAGIC:
        layout = _LE
    elif magic == MAGIC_SWAPPED:
        layout = _BE
    else:
        raise MalformedPacket("bad-magic", f"0x{magic:04x} ({_guess_sender(data)})")
    if data[2] != WIRE_VERSION:
        raise MalformedPacket("bad-version", f"version {data[2]}")
    return layout


def _guess_sender(data: bytes) -> str:
    """A guess at what sent a packet with a foreign magic, for the log line."""
    magic = data[0] | (data[1] << 8)
    if magic == 0xFFFF:
        return "corosync 2.2 or older?"
    if magic == 0xFEFE:
        return "corosync 2.3+ with crypto?"
    if data[0] <= 5:
        return "kronosnet or corosync 1.x?"
    return "not totem"


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise MalformedPacket("short-" + what, f"{len(data)} < {size} bytes")


def _decode_token(L: _Layout, data: bytes, sender: NodeId, target: int) -> OrfToken:
    _need(data, TOKEN_FIXED_SIZE, "token")
    seq, token_seq, aru, aru_addr, rep, rseq, backlog, fcc, retrans_flg, n = L.token.unpack_from(
        data, HEADER_SIZE
    )
    if not 0 <= n <= RETRANSMIT_ENTRIES_MAX:
        raise MalformedPacket("bad-rtr-count", f"{n} entries")
    _need(data, TOKEN_FIXED_SIZE + RTR_ITEM_SIZE * n, "token-rtr")
    rtr = tuple(
        RtrItem(_ring(r, s), q)
        for r, s, q in (L.rtr.unpack_from(data, TOKEN_FIXED_SIZE + RTR_ITEM_SIZE * i) for i in range(n))
    )
    ring_id = _ring(rep, rseq)
    aru_node = NodeId(aru_addr)
    return OrfToken(sender, seq, token_seq, aru, aru_node, ring_id, backlog, fcc, retrans_flg, rtr, target)


def _decode_mcast(L: _Layout, data: bytes, sender: NodeId, target: int, encapsulated: int) -> Mcast:
    _need(data, MCAST_HEADER_SIZE, "mcast")
    if encapsulated not in (ENCAPSULATED, NOT_ENCAPSULATED):
        raise MalformedPacket("bad-encapsulation", f"encapsulated={encapsulated}")
    system_from, seq, this_seqno, rep, rseq, node_id, guarantee = L.mcast.unpack_from(data, HEADER_SIZE)
    return Mcast(
        sender, NodeId(system_from), seq, this_seqno, _ring(rep, rseq), guarantee,
        bytes(data[MCAST_HEADER_SIZE:]), encapsulated, node_id, target,
    )  # fmt: skip


def _decode_join(L: _Layout, data: bytes, sender: NodeId, target: int) -> MembJoin:
    _need(data, JOIN_FIXED_SIZE, "join")
    system_from, n_proc, n_failed, ring_seq = L.join.unpack_from(data, HEADER_SIZE)
    if n_proc > PROCESSOR_COUNT_MAX or n_failed > PROCESSOR_COUNT_MAX:
        raise MalformedPacket("bad-join-count", f"proc {n_proc} failed {n_failed}")
    _need(data, JOIN_FIXED_SIZE + 4 * (n_proc + n_failed), "join-lists")
    ids = struct.unpack_from(f"{L.order}{n_proc + n_failed}I", data, JOIN_FIXED_SIZE)
    return MembJoin(
        sender,
        NodeId(system_from),
        tuple(NodeId(i) for i in ids[:n_proc]),
        tuple(NodeId(i) for i in ids[n_proc:]),
        ring_seq,
        target,
    )


def _decode_commit(L: _Layout, data: bytes, sender: NodeId, target: int) -> CommitToken:
    _need(data, COMMIT_FIXED_SIZE, "commit")
    token_seq, rep, rseq, retrans_flg, memb_index, n = L.commit.unpack_from(data, HEADER_SIZE)
    if not 0 < n <= PROCESSOR_COUNT_MAX:
        raise MalformedPacket("bad-commit-count", f"{n} members")
    if not 0 <= memb_index <= n:
        raise MalformedPacket("bad-commit-index", f"memb_index {memb_index} of {n}")
    _need(data, COMMIT_FIXED_SIZE + (4 + COMMIT_MEMB_SIZE) * n, "commit-lists")
    addr = tuple(NodeId(i) for i in struct.unpack_from(f"{L.order}{n}I", data, COMMIT_FIXED_SIZE))
    base = COMMIT_FIXED_SIZE + 4 * n
    membs = []
    for i in range(n):
        orep, oseq, aru, high, flg = L.commit_memb.unpack_from(data, base + COMMIT_MEMB_SIZE * i)
        membs.append(CommitMemb(_ring(orep, oseq), aru, high, flg))
    return CommitToken(
        sender, token_seq, _ring(rep, rseq), retrans_flg, memb_index, addr, tuple(membs), target
    )
