"""libcpg's face of the cpg service (corosync 3.1.7 exec/cpg.c message_handler_req_lib_cpg_*, ipc_cpg.h).

Requests (x86-64; mar_cpg_name_t is u32 length @+0, 128 bytes @+8, 136 bytes in all):

| id | request | size | answer (id), size |
|----|---------|------|-------------------|
| 0 | JOIN | 168: group @16, pid @152, flags @160 | JOIN (0), 24 |
| 1 | LEAVE | 160: group @16, pid @152 | LEAVE (1), 24 |
| 2 | MCAST | 40 + n: *response* header, guarantee @24, msglen @32, data @40 | none |
| 3 | MEMBERSHIP | 152: group @16 | MEMBERSHIP (3), 9 248: count @24, 384 × {nodeid, pid, reason} @32 |
| 4 | LOCAL_GET | 16 | LOCAL_GET (7), 32: nodeid @24 |
| 5 | ITERATIONINITIALIZE | 160: group @16, type @152 (1 names, 2 one group, 3 all) | 9, 32: handle @24 |
| 6 | ITERATIONNEXT | 24: handle @16 | 10, 168: group @24, nodeid @160, pid @164; end: NO_SECTIONS |
| 7 | ITERATIONFINALIZE | 24: handle @16 | 11, 24 |
| 8 | FINALIZE | 16 | FINALIZE (12), 24 |
| 9–11 | ZC_ALLOC, ZC_FREE, ZC_EXECUTE | | CS_ERR_NOT_SUPPORTED (below) |
| 12 | PARTIAL_MCAST | 56 + n: msglen @32, fraglen @40, type @48, data @56 | PARTIAL_SEND (18), 24 |

Events: DELIVER_CALLBACK (5: group @24, msglen @160, nodeid @168, pid @176, data @184),
PARTIAL_DELIVER_CALLBACK (17: group, msglen, fraglen @168, nodeid @176, pid @184, type @192,
data @200) when a message does not fit the connection's buffer, CONFCHG_CALLBACK (4: group,
counts of members @160, joined @168 and left @176, then 24-byte {nodeid, pid, reason} entries:
members, left, joined) and TOTEM_CONFCHG_CALLBACK (13: ring id {nodeid @24, seq @32}, n @40,
node ids @44; size 48 + 4n).

Semantics (cmanlk.services.cpg.service does the group logic; this face adds libcpg's):
- one group per connection: JOIN on a connection already in a group is CS_ERR_EXIST (joining or
  joined) or CS_ERR_BUSY (leaving); LEAVE leaves the connection's group;
- MCAST gets no answer (corosync special-cases it). One the cpg service cannot take now (its send
  window is full, or a new ring is being synchronised) is held: the runtime stops reading that
  connection and tells libcpg to back off (cpg_mcast_joined returns CS_ERR_TRY_AGAIN) until the
  held message is taken, so nothing is dropped and the order is kept. Other refusals are
  counted, as corosync logs them;
- PARTIAL_MCAST fragments (libcpg's messages over its 1 MiB buffer) are gathered on the
  connection and multicast as one MCAST once the last arrives; a message over the cpg service's
  MAX_MESSAGE_BYTES is CS_ERR_TOO_BIG at its first fragment, and a configuration change between
  its fragments CS_ERR_INTERRUPT (corosync's transition counter);
- every connection gets the TOTEM_CONFCHG of each new ring (libcpg drops it without a totem
  callback), joined or not, as corosync's notify_lib_totem_membership;
- the zero-copy calls would make the daemon map a file the client names; no Debian program uses
  them (pacemaker, dlm_controld, sbd, corosync's tools do not), so they answer
  CS_ERR_NOT_SUPPORTED (ZC_FREE, which has nothing to free, CS_OK);
- lists are cut to libcpg's array sizes (CPG_MEMBERS_MAX 128 per confchg list and totem confchg,
  384 for MEMBERSHIP): libcpg copies them into fixed arrays without a bound;
- with `cmanlk { dlm: yes|auto }` cmanlkd drives the kernel DLM itself, in groups named as
  dlm_controld's ("dlm:ls:<lockspace>"): a JOIN of a group named "dlm:…" (dlm_controld's
  "dlm:controld" and its lockspaces) is CS_ERR_ACCESS, logged — one kernel DLM, one controller
  (dlm_controld then exits: "cpg_join error").
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from cmanlk.errors import ErrorCode
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import (
    MAX_MESSAGE_BYTES,
    ClientGone,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    CpgTotemConfchg,
    Handle,
    LocalState,
)
from cmanlk.services.cpg.wire import CPG_MAX_NAME_LENGTH, PARTIAL_CONTINUED, PARTIAL_FIRST, PARTIAL_LAST
from cmanlk.services.lib import (
    Event,
    FaceBase,
    Handler,
    Hold,
    LibOutput,
    Malformed,
    NodeView,
    Peer,
    Response,
    padded,
    response,
    result_code,
)
from cmanlk.stack import MembershipChanged, RequestResult, ServiceRequest
from cmanlk.types import NodeId, RingId

log = logging.getLogger("cmanlk.libqb")
DLM_GROUPS = b"dlm:"
"""The cpg groups of dlm_controld, which cmanlkd's own DLM control uses too (`cmanlk { dlm }`)."""

REQ_JOIN, REQ_LEAVE, REQ_MCAST, REQ_MEMBERSHIP, REQ_LOCAL_GET = 0, 1, 2, 3, 4
REQ_ITER_INIT, REQ_ITER_NEXT, REQ_ITER_FINALIZE, REQ_FINALIZE = 5, 6, 7, 8
REQ_ZC_ALLOC, REQ_ZC_FREE, REQ_ZC_EXECUTE, REQ_PARTIAL_MCAST = 9, 10, 11, 12

RES_JOIN, RES_LEAVE, RES_MCAST, RES_MEMBERSHIP = 0, 1, 2, 3
RES_CONFCHG, RES_DELIVER, RES_LOCAL_GET = 4, 5, 7
RES_ITER_INIT, RES_ITER_NEXT, RES_ITER_FINALIZE, RES_FINALIZE = 9, 10, 11, 12
RES_TOTEM_CONFCHG, RES_PARTIAL_DELIVER, RES_PARTIAL_SEND = 13, 17, 18

ITERATION_NAME_ONLY, ITERATION_ONE_GROUP, ITERATION_ALL = 1, 2, 3
CPG_MEMBERS_MAX = 128
MEMBERSHIP_MAX = 384
MEMBERSHIP_SIZE = 9248
DELIVER_HEADER = 184
PARTIAL_DELIVER_HEADER = 200
MAX_ITERATIONS = 256
"""Iterations open on one connection (CS_ERR_NO_RESOURCES past it)."""
INITIAL_TOTEM_CONF = 0x01

_NAME = struct.Struct("<I4x128s")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ADDRESS = struct.Struct("<I4xI4xI4x")
_DELIVER = struct.Struct("<I4xI4xI4x")
_PARTIAL = struct.Struct("<I4xI4xI4xI4xI4x")


@dataclass(slots=True)
class _Conn:
    max_msg_size: int
    group: bytes | None = None
    finalized: bool = False
    confchgs: int = 0
    iterations: dict[int, tuple[list[tuple[bytes, int, int]], int]] = field(default_factory=dict)
    partial: list[bytes] = field(default_factory=list)
    partial_total: int = 0
    partial_size: int = 0
    partial_confchgs: int = 0


class CpgLib(FaceBase[_Conn]):
    """Service 2's library face (cmanlk.services.lib.LibFace)."""

    service_id = CPG_SERVICE
    name = "cpg"

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self._next_iteration = 1
        self._totem_sent: set[Handle] = set()
        zc_unsupported = self._bare(0, ErrorCode.NOT_SUPPORTED)
        super().__init__(
            {
                REQ_JOIN: (168, self._join),
                REQ_LEAVE: (160, self._leave),
                REQ_MCAST: (40, self._mcast),
                REQ_MEMBERSHIP: (152, self._membership),
                REQ_LOCAL_GET: (16, self._local_get),
                REQ_ITER_INIT: (160, self._iter_init),
                REQ_ITER_NEXT: (24, self._iter_next),
                REQ_ITER_FINALIZE: (24, self._iter_finalize),
                REQ_FINALIZE: (16, self._finalize),
                REQ_ZC_ALLOC: (16, zc_unsupported),
                REQ_ZC_FREE: (16, self._bare(0, ErrorCode.OK)),
                REQ_ZC_EXECUTE: (16, self._bare(RES_MCAST, ErrorCode.NOT_SUPPORTED)),
                REQ_PARTIAL_MCAST: (56, self._partial_mcast),
            },
            silent_ids=frozenset({REQ_MCAST}),
        )

    # --- LibFace ---------------------------------------------------------------------------------

    def new_conn(self, peer: Peer) -> _Conn | None:
        """A new connection, not in a group."""
        return _Conn(peer.max_msg_size)

    def disconnect(self, handle: Handle) -> list[LibOutput]:
        """The connection closed: its process leaves its group with reason PROCDOWN."""
        conn = self._conns.pop(handle, None)
        self._totem_sent.discard(handle)
        if conn is not None and conn.group is not None:
            self._submit(ClientGone(handle))
        return []

    def notify(self, note: object) -> list[LibOutput]:
        """cpg deliveries and configuration changes become events for the connections named."""
        if isinstance(note, CpgDeliver):
            return self._deliver(note)
        if isinstance(note, CpgConfchg):
            return self._confchg(note)
        if isinstance(note, CpgTotemConfchg):
            self._totem_sent.update(note.handles)
            data = _totem_event(note.ring_id, note.members)
            return [Event(h, data) for h in note.handles if self._live(h)]
        if isinstance(note, MembershipChanged):
            # The cpg service told its joined connections (CpgTotemConfchg); corosync tells all.
            sent, self._totem_sent = self._totem_sent, set()
            others = [h for h, c in self._conns.items() if h not in sent and not c.finalized]
            if not others:
                return []
            data = _totem_event(note.ring_id, note.members)
            return [Event(h, data) for h in others]
        return []

    # --- requests: membership --------------------------------------------------------------------

    def _join(self, peer: Peer, message: bytes) -> list[LibOutput]:
        length, value = _NAME.unpack_from(message, 16)
        (pid,) = _U32.unpack_from(message, 152)
        (flags,) = _U32.unpack_from(message, 160)
        if length > CPG_MAX_NAME_LENGTH:
            return self._answer(peer, RES_JOIN, ErrorCode.NAME_TOO_LONG)
        conn = self._conn(peer)
        error = self._joined_state_error(peer.handle, conn)
        if error is not None:
            return self._answer(peer, RES_JOIN, error)
        group = bytes(value[:length])
        dlm = self.node.config().cmanlk.dlm
        if group.startswith(DLM_GROUPS) and dlm != "no":
            log.error("libcpg: pid %d may not join %r: cmanlkd drives the kernel DLM (cmanlk { dlm: %s })",
                      pid, group.decode("ascii", "replace"), dlm)  # fmt: skip
            return self._answer(peer, RES_JOIN, ErrorCode.PERMISSION_DENIED)
        result = self._submit(CpgJoin(peer.handle, group, pid, bool(flags & INITIAL_TOTEM_CONF)))
        if result.error is None:
            conn.group = group
        return self._answer(peer, RES_JOIN, result_code(result.error))

    def _joined_state_error(self, handle: Handle, conn: _Conn) -> ErrorCode | None:
        """corosync's cpd_state test: one group per connection."""
        cpg = self.node.cpg()
        if conn.group is None or cpg is None:
            return None
        current = cpg.local_process(handle, conn.group)
        if current is None:
            conn.group = None  # its leave completed (or it was removed with its node)
            return None
        return ErrorCode.BUSY if current.state is LocalState.LEAVE_STARTED else ErrorCode.EXIST

    def _leave(self, peer: Peer, message: bytes) -> list[LibOutput]:
        length, value = _NAME.unpack_from(message, 16)
        conn = self._conn(peer)
        group = conn.group if conn.group is not None else bytes(value[: min(length, CPG_MAX_NAME_LENGTH)])
        result = self._submit(CpgLeave(peer.handle, group))
        return self._answer(peer, RES_LEAVE, result_code(result.error))

    def _finalize(self, peer: Peer, message: bytes) -> list[LibOutput]:
        self._conn(peer).finalized = True  # no more callbacks; the client closes next
        return self._answer(peer, RES_FINALIZE, ErrorCode.OK)

    # --- requests: messages ----------------------------------------------------------------------

    def _mcast(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (msglen,) = _U32.unpack_from(message, 32)
        if 40 + msglen > len(message):
            raise Malformed("cpg_mcast_length", f"msglen {msglen} in {len(message)} bytes")
        conn = self._conn(peer)
        if conn.group is None:
            self._dispatch.count("mcast_not_joined")
            return []
        error = self.node.cpg_mcast(peer.handle, conn.group, message[40 : 40 + msglen])
        if error is ErrorCode.TRY_AGAIN:
            return [Hold(peer.handle)]
        if error is not None:
            self._dispatch.count(f"mcast_refused_{error}")
        return []

    def _partial_mcast(self, peer: Peer, message: bytes) -> list[LibOutput]:
        msglen, fraglen, kind = (_U32.unpack_from(message, o)[0] for o in (32, 40, 48))
        if 56 + fraglen > len(message) or kind not in (PARTIAL_FIRST, PARTIAL_CONTINUED, PARTIAL_LAST):
            raise Malformed("cpg_partial_mcast", f"fraglen {fraglen} type {kind} in {len(message)} bytes")
        conn = self._conn(peer)
        if conn.group is None:
            return self._answer(peer, RES_PARTIAL_SEND, ErrorCode.NOT_EXIST)
        if kind == PARTIAL_FIRST:
            conn.partial, conn.partial_total, conn.partial_size = [], msglen, 0
            conn.partial_confchgs = conn.confchgs
            if msglen > MAX_MESSAGE_BYTES:
                conn.partial_total = -1
                return self._answer(peer, RES_PARTIAL_SEND, ErrorCode.TOO_LARGE)
        error = self._partial_error(conn, fraglen)
        if error is not None:
            conn.partial, conn.partial_total = [], -1
            return self._answer(peer, RES_PARTIAL_SEND, error)
        conn.partial.append(message[56 : 56 + fraglen])
        conn.partial_size += fraglen
        if kind != PARTIAL_LAST:
            return self._answer(peer, RES_PARTIAL_SEND, ErrorCode.OK)
        return self._partial_last(peer, conn)

    def _partial_error(self, conn: _Conn, fraglen: int) -> ErrorCode | None:
        if conn.partial_total < 0:
            return ErrorCode.TOO_LARGE
        if conn.confchgs != conn.partial_confchgs:
            return ErrorCode.INTERRUPT
        if conn.partial_size + fraglen > conn.partial_total:
            return ErrorCode.INVALID_PARAM
        return None

    def _partial_last(self, peer: Peer, conn: _Conn) -> list[LibOutput]:
        assert conn.group is not None
        if conn.partial_size != conn.partial_total:
            conn.partial, conn.partial_total = [], -1
            return self._answer(peer, RES_PARTIAL_SEND, ErrorCode.INVALID_PARAM)
        result = self._submit(CpgMcast(peer.handle, conn.group, b"".join(conn.partial)))
        if result.error is ErrorCode.TRY_AGAIN:
            last = conn.partial.pop()  # presented again: take it off so it is not counted twice
            conn.partial_size -= len(last)
            return [Hold(peer.handle)]
        conn.partial, conn.partial_total, conn.partial_size = [], -1, 0
        return self._answer(peer, RES_PARTIAL_SEND, result_code(result.error))

    # --- requests: queries -----------------------------------------------------------------------

    def _membership(self, peer: Peer, message: bytes) -> list[LibOutput]:
        length, value = _NAME.unpack_from(message, 16)
        cpg = self.node.cpg()
        members = cpg.members_of(bytes(value[: min(length, CPG_MAX_NAME_LENGTH)])) if cpg is not None else ()
        members = members[:MEMBERSHIP_MAX]
        body = padded(_U32.pack(len(members)), 8) + b"".join(_ADDRESS.pack(n, p, 0) for n, p in members)
        return [
            Response(peer.handle, response(RES_MEMBERSHIP, ErrorCode.OK, padded(body, MEMBERSHIP_SIZE - 24)))
        ]

    def _local_get(self, peer: Peer, message: bytes) -> list[LibOutput]:
        body = padded(_U32.pack(self.node.me), 8)
        return [Response(peer.handle, response(RES_LOCAL_GET, ErrorCode.OK, body))]

    def _iter_init(self, peer: Peer, message: bytes) -> list[LibOutput]:
        length, value = _NAME.unpack_from(message, 16)
        (kind,) = _U32.unpack_from(message, 152)
        conn = self._conn(peer)
        if len(conn.iterations) >= MAX_ITERATIONS:
            return [Response(peer.handle, response(RES_ITER_INIT, ErrorCode.NO_RESOURCES, bytes(8)))]
        cpg = self.node.cpg()
        processes = cpg.process_list() if cpg is not None else []
        entries = _iteration(processes, kind, bytes(value[: min(length, CPG_MAX_NAME_LENGTH)]))
        handle = self._next_iteration
        self._next_iteration += 1
        conn.iterations[handle] = (entries, 0)
        return [Response(peer.handle, response(RES_ITER_INIT, ErrorCode.OK, _U64.pack(handle)))]

    def _iter_next(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (handle,) = _U64.unpack_from(message, 16)
        conn = self._conn(peer)
        found = conn.iterations.get(handle)
        if found is None:
            return [Response(peer.handle, response(RES_ITER_NEXT, ErrorCode.LIBRARY, bytes(144)))]
        entries, position = found
        if position >= len(entries):
            return [Response(peer.handle, response(RES_ITER_NEXT, ErrorCode.NO_SECTIONS, bytes(144)))]
        conn.iterations[handle] = (entries, position + 1)
        group, nodeid, pid = entries[position]
        body = _NAME.pack(len(group), group) + struct.pack("<II", nodeid, pid)
        return [Response(peer.handle, response(RES_ITER_NEXT, ErrorCode.OK, body))]

    def _iter_finalize(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (handle,) = _U64.unpack_from(message, 16)
        found = self._conn(peer).iterations.pop(handle, None)
        error = ErrorCode.OK if found is not None else ErrorCode.LIBRARY
        return self._answer(peer, RES_ITER_FINALIZE, error)

    # --- events ----------------------------------------------------------------------------------

    def deliveries(self, notes: list[CpgDeliver]) -> list[LibOutput]:
        """`notify` of each CpgDeliver in turn, in one list (the libqb glue's runs of deliveries)."""
        out: list[LibOutput] = []
        for note in notes:
            self._deliver(note, out)
        return out

    def _deliver(self, note: CpgDeliver, out: list[LibOutput] | None = None) -> list[LibOutput]:
        if out is None:
            out = []
        whole: bytes | None = None
        conns = self._conns
        for handle in note.handles:
            conn = conns.get(handle)
            if conn is None or conn.finalized:
                continue
            if DELIVER_HEADER + len(note.payload) <= conn.max_msg_size:
                if whole is None:
                    whole = _deliver_event(note)
                out.append(Event(handle, whole))
            else:
                out += [Event(handle, part) for part in _partial_deliver_events(note, conn.max_msg_size)]
        return out

    def _confchg(self, note: CpgConfchg) -> list[LibOutput]:
        data = _confchg_event(note)
        out: list[LibOutput] = []
        for handle in note.handles:
            conn = self._conns.get(handle)
            if conn is None or conn.finalized:
                continue
            conn.confchgs += 1
            out.append(Event(handle, data))
        return out

    # --- helpers ---------------------------------------------------------------------------------

    def _conn(self, peer: Peer) -> _Conn:
        conn = self._conns.get(peer.handle)
        if conn is None:
            conn = self._conns[peer.handle] = _Conn(peer.max_msg_size)
        return conn

    def _live(self, handle: Handle) -> bool:
        conn = self._conns.get(handle)
        return conn is not None and not conn.finalized

    def _submit(self, request: object) -> RequestResult:
        return self.node.submit(lambda now, rid: ServiceRequest(now, CPG_SERVICE, request, rid))

    @staticmethod
    def _answer(peer: Peer, message_id: int, error: ErrorCode) -> list[LibOutput]:
        return [Response(peer.handle, response(message_id, error))]

    @staticmethod
    def _bare(message_id: int, error: ErrorCode) -> Handler:
        def handler(peer: Peer, message: bytes) -> list[LibOutput]:
            return [Response(peer.handle, response(message_id, error))]

        return handler


# --- encodings -----------------------------------------------------------------------------------


def _name(group: bytes) -> bytes:
    return _NAME.pack(len(group), group)


_DELIVER_EVENT = struct.Struct("<i4xi4xi4x" + "I4x128s" + "I4xI4xI4x")
"""A DELIVER event's 184 bytes before the message: the response header, the group's cpg_name and
(msglen, nodeid, pid); one pack instead of three and their concatenations (the hot path)."""
_CS_OK = ErrorCode.OK.cs_error


def _deliver_event(note: CpgDeliver) -> bytes:
    payload = note.payload
    size = len(payload)
    group = note.group
    return (
        _DELIVER_EVENT.pack(
            RES_DELIVER, DELIVER_HEADER + size, _CS_OK, len(group), group, size, note.nodeid, note.pid
        )
        + payload
    )


def _partial_deliver_events(note: CpgDeliver, max_msg_size: int) -> list[bytes]:
    """The message cut into PARTIAL_DELIVER events that fit a `max_msg_size` buffer."""
    room = max(1, max_msg_size - PARTIAL_DELIVER_HEADER)
    payload = note.payload
    out: list[bytes] = []
    for start in range(0, len(payload), room):
        fragment = payload[start : start + room]
        if start == 0:
            kind = PARTIAL_FIRST
        elif start + room >= len(payload):
            kind = PARTIAL_LAST
        else:
            kind = PARTIAL_CONTINUED
        head = _name(note.group) + _PARTIAL.pack(len(payload), len(fragment), note.nodeid, note.pid, kind)
        out.append(response(RES_PARTIAL_DELIVER, ErrorCode.OK, head + fragment))
    return out


def _confchg_event(note: CpgConfchg) -> bytes:
    members = note.members[:CPG_MEMBERS_MAX]
    left = note.left[:CPG_MEMBERS_MAX]
    joined = note.joined[:CPG_MEMBERS_MAX]
    head = _name(note.group) + _ADDRESS.pack(len(members), len(joined), len(left))
    entries = b"".join(_address(a) for a in (*members, *left, *joined))
    return response(RES_CONFCHG, ErrorCode.OK, head + entries)


def _address(a: CpgAddress) -> bytes:
    return _ADDRESS.pack(a.nodeid, a.pid, a.reason)


def _totem_event(ring_id: RingId, members: tuple[NodeId, ...]) -> bytes:
    ids = members[:CPG_MEMBERS_MAX]
    head = struct.pack("<I4xQI", ring_id.rep, ring_id.seq, len(ids))
    return response(RES_TOTEM_CONFCHG, ErrorCode.OK, head + struct.pack(f"<{len(ids)}I", *ids) + bytes(4))


def _iteration(
    processes: list[tuple[NodeId, int, bytes]], kind: int, wanted: bytes
) -> list[tuple[bytes, int, int]]:
    """corosync's iteration copy: "grouped by" name, each new group in front, NAME_ONLY unique.

    Each process is inserted right after the first entry of its group, or at the front when the
    group is new (qb_list_add after the entry found, or after the list head).
    """
    items: list[tuple[bytes, int, int]] = []
    for nodeid, pid, group in processes:
        if kind == ITERATION_NAME_ONLY and any(g == group for g, _, _ in items):
            continue
        if kind == ITERATION_ONE_GROUP and group != wanted:
            continue
        entry = (group, 0, 0) if kind == ITERATION_NAME_ONLY else (group, int(nodeid), pid)
        first = next((i for i, (g, _, _) in enumerate(items) if g == group), None)
        items.insert(0 if first is None else first + 1, entry)
    return items
