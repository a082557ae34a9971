"""cpg's wire messages (corosync 3.1.7 exec/cpg.c, corosync-wire.md §9): layouts and codecs.

Every field is declared aligned(8) (svcwire.aligned_layout); mar_cpg_name_t is {u32 length;
char value[128]} with value at +8, 136 bytes. Sizes: PROCJOIN/PROCLEAVE 168, MCAST 184 + msglen,
PARTIAL_MCAST 200 + fraglen, JOINLIST 24 (libqb response header) + 144 per entry, DOWNLIST 1568.
Decoders check every length before reading and raise MalformedPacket; nothing else escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CPG_SERVICE
from cmanlk.totem.totempg import MESSAGE_SIZE_MAX
from cmanlk.types import NodeId

# --- wire constants (exec/cpg.c, include/corosync/ipc_cpg.h) --------------------------------------

MESSAGE_REQ_EXEC_CPG_PROCJOIN = 0
MESSAGE_REQ_EXEC_CPG_PROCLEAVE = 1
MESSAGE_REQ_EXEC_CPG_JOINLIST = 2
MESSAGE_REQ_EXEC_CPG_MCAST = 3
MESSAGE_REQ_EXEC_CPG_DOWNLIST_OLD = 4
MESSAGE_REQ_EXEC_CPG_DOWNLIST = 5
MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST = 6

CPG_MAX_NAME_LENGTH = 128  # bytes of a group name (mar_cpg_name_t.value)
PROCESSOR_COUNT_MAX = 384  # the DOWNLIST's fixed nodeid array

# libcpg's confchg reasons (cpg.h, CPG_REASON_*).
REASON_UNDEFINED = 0
REASON_JOIN = 1
REASON_LEAVE = 2
REASON_NODEDOWN = 3
REASON_NODEUP = 4
REASON_PROCDOWN = 5

# libcpg's partial-message fragment types (LIBCPG_PARTIAL_*).
PARTIAL_FIRST = 1
PARTIAL_CONTINUED = 2
PARTIAL_LAST = 3

# Layouts: every field aligned(8) (svcwire.aligned_layout). mar_cpg_name_t is {u32 length; char
# value[128]} with value at +8: 136 bytes.
NAME_SIZE = 136
PROCJOIN_SIZE = 168  # header 16, name 16..152, pid 152, reason 160
MCAST_HEADER_SIZE = 184  # header 16, name 16, msglen 152, pid 160, source {nodeid 168, conn 176}
PARTIAL_HEADER_SIZE = 200  # name 16, msglen 152, fraglen 160, pid 168, type 176, source 184/192
JOINLIST_ENTRY_SIZE = 144  # pid 0, name 8..144
DOWNLIST_SIZE = 16 + 8 + 8 + 4 * PROCESSOR_COUNT_MAX  # 1568

MAX_JOINLIST_ENTRIES = 65536
"""JOINLIST entries accepted in one message (cpg.MAX_PROCESSES: more could not be stored)."""

_NAME = struct.Struct("<I4x128s")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DOWNLIST_HEAD = struct.Struct("<I4xI4x")
_NODEIDS = struct.Struct(f"<{PROCESSOR_COUNT_MAX}I")

# --- decoded messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcJoin:
    """PROCJOIN or PROCLEAVE (same layout)."""

    group: bytes
    pid: int
    reason: int


@dataclass(frozen=True, slots=True)
class Mcast:
    group: bytes
    pid: int
    source_nodeid: NodeId
    source_conn: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class PartialMcast:
    group: bytes
    msglen: int
    pid: int
    kind: int
    source_nodeid: NodeId
    source_conn: int
    fragment: bytes


@dataclass(frozen=True, slots=True)
class Downlist:
    old_members: int
    left_nodes: tuple[NodeId, ...]


def _encode_name(group: bytes) -> bytes:
    return _NAME.pack(len(group), group)


def _decode_name(message: bytes, offset: int, what: str) -> bytes:
    length, value = _NAME.unpack_from(message, offset)
    if length == 0 or length > CPG_MAX_NAME_LENGTH:
        raise MalformedPacket(f"{what}_name_length", f"group name of {length} bytes")
    return bytes(value[:length])


def encode_procjoin(function: int, group: bytes, pid: int, reason: int) -> bytes:
    """Return a 168-byte PROCJOIN (function 0) or PROCLEAVE (function 1)."""
    body = bytearray(PROCJOIN_SIZE)
    message_id = svcwire.service_message_id(CPG_SERVICE, function)
    body[0:16] = svcwire.encode_request_header(message_id, PROCJOIN_SIZE)
    body[16:152] = _encode_name(group)
    _U32.pack_into(body, 152, pid)
    _U32.pack_into(body, 160, reason)
    return bytes(body)


def decode_procjoin(message: bytes) -> ProcJoin:
    """Decode a PROCJOIN/PROCLEAVE. Raises MalformedPacket when short or the name is bad."""
    svcwire.check_size(message, PROCJOIN_SIZE, "cpg_procjoin")
    group = _decode_name(message, 16, "cpg_procjoin")
    (pid,) = _U32.unpack_from(message, 152)
    (reason,) = _U32.unpack_from(message, 160)
    return ProcJoin(group, pid, reason)


def encode_mcast(group: bytes, pid: int, nodeid: NodeId, conn: int, payload: bytes) -> bytes:
    """Return an MCAST: the 184-byte header then `payload`."""
    size = MCAST_HEADER_SIZE + len(payload)
    head = bytearray(MCAST_HEADER_SIZE)
    head[0:16] = svcwire.encode_request_header(
        svcwire.service_message_id(CPG_SERVICE, MESSAGE_REQ_EXEC_CPG_MCAST), size
    )
    head[16:152] = _encode_name(group)
    _U32.pack_into(head, 152, len(payload))
    _U32.pack_into(head, 160, pid)
    _U32.pack_into(head, 168, nodeid)
    _U64.pack_into(head, 176, conn)
    return bytes(head) + payload


def decode_mcast(message: bytes) -> Mcast:
    """Decode an MCAST. Raises MalformedPacket when msglen disagrees with the message length."""
    svcwire.check_size(message, MCAST_HEADER_SIZE, "cpg_mcast")
    group = _decode_name(message, 16, "cpg_mcast")
    (msglen,) = _U32.unpack_from(message, 152)
    if MCAST_HEADER_SIZE + msglen != len(message):
        raise MalformedPacket("cpg_mcast_length", f"msglen {msglen} in {len(message)} bytes")
    (pid,) = _U32.unpack_from(message, 160)
    (nodeid,) = _U32.unpack_from(message, 168)
    (conn,) = _U64.unpack_from(message, 176)
    return Mcast(group, pid, NodeId(nodeid), conn, bytes(message[MCAST_HEADER_SIZE:]))


def encode_partial_mcast(
    group: bytes, msglen: int, pid: int, kind: int, nodeid: NodeId, conn: int, fragment: bytes
) -> bytes:
    """Return a PARTIAL_MCAST (we never send one; tests and interop use this)."""
    head = bytearray(PARTIAL_HEADER_SIZE)
    head[0:16] = svcwire.encode_request_header(
        svcwire.service_message_id(CPG_SERVICE, MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST),
        PARTIAL_HEADER_SIZE + len(fragment),
    )
    head[16:152] = _encode_name(group)
    for offset, value in ((152, msglen), (160, len(fragment)), (168, pid), (176, kind), (184, nodeid)):
        _U32.pack_into(head, offset, value)
    _U64.pack_into(head, 192, conn)
    return bytes(head) + fragment


def decode_partial_mcast(message: bytes) -> PartialMcast:
    """Decode a PARTIAL_MCAST. Raises MalformedPacket on bad lengths or fragment type."""
    svcwire.check_size(message, PARTIAL_HEADER_SIZE, "cpg_partial")
    group = _decode_name(message, 16, "cpg_partial")
    msglen, fraglen, pid, kind, nodeid = (_U32.unpack_from(message, o)[0] for o in (152, 160, 168, 176, 184))
    if PARTIAL_HEADER_SIZE + fraglen != len(message) or fraglen > msglen or msglen > MESSAGE_SIZE_MAX:
        raise MalformedPacket("cpg_partial_length", f"msglen {msglen} fraglen {fraglen} in {len(message)}")
    if kind not in (PARTIAL_FIRST, PARTIAL_CONTINUED, PARTIAL_LAST):
        raise MalformedPacket("cpg_partial_type", f"type {kind}")
    (conn,) = _U64.unpack_from(message, 192)
    return PartialMcast(group, msglen, pid, kind, NodeId(nodeid), conn, bytes(message[PARTIAL_HEADER_SIZE:]))


def encode_joinlist(entries: Iterable[tuple[int, bytes]]) -> bytes:
    """Return a JOINLIST: 24-byte response header, then 144 bytes per (pid, group)."""
    items = list(entries)
    size = svcwire.RESPONSE_HEADER_SIZE + JOINLIST_ENTRY_SIZE * len(items)
    out = bytearray(size)
    out[0:24] = svcwire.encode_response_header(
        svcwire.service_message_id(CPG_SERVICE, MESSAGE_REQ_EXEC_CPG_JOINLIST), size, 0
    )
    offset = svcwire.RESPONSE_HEADER_SIZE
    for pid, group in items:
        _U32.pack_into(out, offset, pid)
        out[offset + 8 : offset + JOINLIST_ENTRY_SIZE] = _encode_name(group)
        offset += JOINLIST_ENTRY_SIZE
    return bytes(out)


def decode_joinlist(message: bytes) -> list[tuple[int, bytes]]:
    """Return the (pid, group) entries of a JOINLIST. Raises MalformedPacket on a bad size."""
    _id, size, _error = svcwire.decode_response_header(message)
    body = len(message) - svcwire.RESPONSE_HEADER_SIZE
    if size != len(message) or body % JOINLIST_ENTRY_SIZE:
        raise MalformedPacket("cpg_joinlist_size", f"size {size} in {len(message)} bytes")
    if body // JOINLIST_ENTRY_SIZE > MAX_JOINLIST_ENTRIES:
        raise MalformedPacket("cpg_joinlist_entries", f"{body // JOINLIST_ENTRY_SIZE} entries")
    out: list[tuple[int, bytes]] = []
    for offset in range(svcwire.RESPONSE_HEADER_SIZE, len(message), JOINLIST_ENTRY_SIZE):
        (pid,) = _U32.unpack_from(message, offset)
        out.append((pid, _decode_name(message, offset + 8, "cpg_joinlist")))
    return out


def encode_downlist(old_members: int, left_nodes: tuple[NodeId, ...]) -> bytes:
    """Return a 1568-byte DOWNLIST (ValueError beyond 384 nodes)."""
    if len(left_nodes) > PROCESSOR_COUNT_MAX:
        raise ValueError(f"{len(left_nodes)} left nodes")
    out = bytearray(DOWNLIST_SIZE)
    out[0:16] = svcwire.encode_request_header(
        svcwire.service_message_id(CPG_SERVICE, MESSAGE_REQ_EXEC_CPG_DOWNLIST), DOWNLIST_SIZE
    )
    _DOWNLIST_HEAD.pack_into(out, 16, old_members, len(left_nodes))
    _NODEIDS.pack_into(out, 32, *(left_nodes + (NodeId(0),) * (PROCESSOR_COUNT_MAX - len(left_nodes))))
    return bytes(out)


def decode_downlist(message: bytes) -> Downlist:
    """Decode a DOWNLIST. Raises MalformedPacket when short or left_nodes exceeds 384."""
    svcwire.check_size(message, DOWNLIST_SIZE, "cpg_downlist")
    old_members, left = _DOWNLIST_HEAD.unpack_from(message, 16)
    if left > PROCESSOR_COUNT_MAX:
        raise MalformedPacket("cpg_downlist_entries", f"{left} left nodes")
    nodeids = _NODEIDS.unpack_from(message, 32)[:left]
    return Downlist(old_members, tuple(NodeId(n) for n in nodeids))
