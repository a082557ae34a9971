"""libvotequorum's face of the votequorum service (corosync 3.1.7 exec/votequorum.c, ipc_votequorum.h).

Requests (x86-64 layouts, checked with gcc against ipc_votequorum.h; the request bodies are plain
4-byte fields, not 8-byte slots):

| id | request | size | answer (id) |
|----|---------|------|-------------|
| 0 | GETINFO | 24: nodeid i32 @16 (0: this node) | GETINFO (1), 320 bytes |
| 1 | SETEXPECTED | 24: expected u32 @16 | STATUS (0), 24 |
| 2 | SETVOTES | 24: votes u32 @16, nodeid i32 @20 | STATUS |
| 3 | TRACKSTART | 32: context u64 @16, flags u32 @24 | events, then STATUS |
| 4 | TRACKSTOP | 16 | STATUS (CS_ERR_NOT_EXIST when not tracking) |
| 5–9 | QDEVICE_REGISTER, _UNREGISTER, _UPDATE, _POLL, _MASTER_WINS | 272, 272, 528, 296, 280 | STATUS |

GETINFO answers nodeid @24, state @28, votes @32, expected @36, highest expected @40, total votes
@44, quorum @48, flags @52, qdevice votes @56, qdevice name @60 (NUL-terminated, 255 bytes);
CS_ERR_NOT_EXIST for a node votequorum has never heard of. SETEXPECTED and SETVOTES are checked
here as the library handlers check them (cmanlk.services.votequorum.policy) and multicast as
RECONFIGURE through the Stack, so every node applies them in the same total order; a node
unknown to SETVOTES is CS_ERR_NAME_NOT_FOUND, as in corosync.

Events: QUORUM_NOTIFICATION (3: quorate @24, context @32, n @40, {nodeid, state} × n @48, size
48 + 8n — every node of the table with its state), NODELIST_NOTIFICATION (5: context @24, ring id
{nodeid @32, seq @40}, n @48, ids @56, size 56 + 4n — the ring's members), and
EXPECTEDVOTES_NOTIFICATION (4: context @24, expected @32, 40 bytes). TRACKSTART with
CS_TRACK_CURRENT or CS_TRACK_CHANGES sends the nodelist and then the quorum notification with the
request's context, then records tracking (CHANGES or CHANGES_ONLY; CS_ERR_EXIST when already).
After a ring change trackers get the nodelist, then the quorum notification (corosync sends its
nodelist during sync and its quorum notification at activation: the same order).

Quorum devices: cmanlkd does not take part in qdevice voting, so it answers as a corosync whose
configuration disables the device (qdevice_can_operate 0): REGISTER, POLL and MASTER_WINS get
CS_ERR_ACCESS, UNREGISTER and UPDATE CS_ERR_NOT_EXIST (no device is registered).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cmanlk.errors import ErrorCode
from cmanlk.services.base import VOTEQUORUM_SERVICE
from cmanlk.services.lib import (
    Event,
    FaceBase,
    Handler,
    LibOutput,
    NodeView,
    Peer,
    Response,
    padded,
    response,
    result_code,
)
from cmanlk.services.votequorum.policy import QDEVICE_NODEID, NodeRecord, QuorumState
from cmanlk.services.votequorum.service import ExpectedVotesChanged, QuorumChanged
from cmanlk.stack import MembershipChanged, SetExpectedVotes, SetVotes
from cmanlk.types import NO_RING, NodeId, RingId

REQ_GETINFO = 0
REQ_SETEXPECTED = 1
REQ_SETVOTES = 2
REQ_TRACKSTART = 3
REQ_TRACKSTOP = 4
REQ_QDEVICE_REGISTER = 5
REQ_QDEVICE_UNREGISTER = 6
REQ_QDEVICE_UPDATE = 7
REQ_QDEVICE_POLL = 8
REQ_QDEVICE_MASTER_WINS = 9

RES_STATUS = 0
RES_GETINFO = 1
RES_TRACKSTART = 2
RES_QUORUM_NOTIFICATION = 3
RES_EXPECTEDVOTES_NOTIFICATION = 4
RES_NODELIST_NOTIFICATION = 5

INFO_TWONODE = 1
INFO_QUORATE = 2
INFO_WAIT_FOR_ALL = 4
INFO_LAST_MAN_STANDING = 8
INFO_AUTO_TIE_BREAKER = 16
INFO_ALLOW_DOWNSCALE = 32

CS_TRACK_CURRENT = 1
CS_TRACK_CHANGES = 2
CS_TRACK_CHANGES_ONLY = 4

GETINFO_SIZE = 320
QDEVICE_NAME_LEN = 255
MAX_LIST_ENTRIES = 386
"""PROCESSOR_COUNT_MAX + 2: the node table's bound (policy.NODE_TABLE_MAX)."""

_GETINFO = struct.Struct("<9I")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")


@dataclass(slots=True)
class _Conn:
    tracking: bool = False
    context: int = 0


class VotequorumLib(FaceBase[_Conn]):
    """Service 5's library face (cmanlk.services.lib.LibFace)."""

    service_id = VOTEQUORUM_SERVICE
    name = "votequorum"

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self._ring: RingId = NO_RING
        self._members: tuple[NodeId, ...] = ()
        self._held: QuorumChanged | None = None
        qdevice_access = self._status(ErrorCode.PERMISSION_DENIED)
        qdevice_none = self._status(ErrorCode.NOT_EXIST)
        super().__init__(
            {
                REQ_GETINFO: (24, self._getinfo),
                REQ_SETEXPECTED: (24, self._setexpected),
                REQ_SETVOTES: (24, self._setvotes),
                REQ_TRACKSTART: (32, self._trackstart),
                REQ_TRACKSTOP: (16, self._trackstop),
                REQ_QDEVICE_REGISTER: (16 + QDEVICE_NAME_LEN, qdevice_access),
                REQ_QDEVICE_UNREGISTER: (16 + QDEVICE_NAME_LEN, qdevice_none),
                REQ_QDEVICE_UPDATE: (16 + 2 * QDEVICE_NAME_LEN, qdevice_none),
                REQ_QDEVICE_POLL: (296, qdevice_access),
                REQ_QDEVICE_MASTER_WINS: (276, qdevice_access),
            }
        )

    # --- LibFace ---------------------------------------------------------------------------------

    def new_conn(self, peer: Peer) -> _Conn | None:
        """votequorum_initialize sends nothing; a connection starts untracked."""
        return _Conn()

    def notify(self, note: object) -> list[LibOutput]:
        """Ring, quorum and expected-votes changes become events for trackers."""
        if isinstance(note, MembershipChanged):
            self._ring, self._members = note.ring_id, note.members
            out = self._to_trackers(self._nodelist_event)
            held, self._held = self._held, None
            if held is not None and held.ring_id == note.ring_id:
                out += self._to_trackers(self._quorum_event)
            return out
        if isinstance(note, QuorumChanged):
            if note.ring_id is not None and note.ring_id != self._ring:
                self._held = note  # sent after that ring's nodelist (module docstring)
                return []
            return self._to_trackers(self._quorum_event)
        if isinstance(note, ExpectedVotesChanged):
            return self._to_trackers(lambda ctx: self._expected_event(ctx, note.expected_votes))
        return []

    # --- requests --------------------------------------------------------------------------------

    def _getinfo(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (nodeid,) = _I32.unpack_from(message, 16)
        vq = self.node.votequorum()
        want = self.node.me if nodeid == QDEVICE_NODEID else NodeId(nodeid & 0xFFFFFFFF)
        record = vq.quorum.node(want) if vq is not None else None
        if vq is None or record is None:
            body = padded(b"", GETINFO_SIZE - 24)
            return [Response(peer.handle, response(RES_GETINFO, ErrorCode.NOT_EXIST, body))]
        body = _getinfo_body(record, vq.state, vq.quorum.qdevice_votes)
        return [Response(peer.handle, response(RES_GETINFO, ErrorCode.OK, body))]

    def _setexpected(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (expected,) = _U32.unpack_from(message, 16)
        result = self.node.submit(lambda now, rid: SetExpectedVotes(now, expected, rid))
        return [Response(peer.handle, response(RES_STATUS, result_code(result.error)))]

    def _setvotes(self, peer: Peer, message: bytes) -> list[LibOutput]:
        votes, nodeid = struct.unpack_from("<Ii", message, 16)
        target = NodeId(nodeid & 0xFFFFFFFF)
        result = self.node.submit(lambda now, rid: SetVotes(now, target, votes, rid))
        error = result_code(result.error)  # an unknown node: NOT_FOUND, CS_ERR_NAME_NOT_FOUND as corosync
        return [Response(peer.handle, response(RES_STATUS, error))]

    def _trackstart(self, peer: Peer, message: bytes) -> list[LibOutput]:
        context, flags = struct.unpack_from("<QI", message, 16)
        conn = self._conns.setdefault(peer.handle, _Conn())
        out: list[LibOutput] = []
        if flags & (CS_TRACK_CURRENT | CS_TRACK_CHANGES):
            out.append(Event(peer.handle, self._nodelist_event(context)))
            out.append(Event(peer.handle, self._quorum_event(context)))
        error = ErrorCode.OK
        if conn.tracking:
            error = ErrorCode.EXIST
        elif flags & (CS_TRACK_CHANGES | CS_TRACK_CHANGES_ONLY):
            conn.tracking, conn.context = True, context
        out.append(Response(peer.handle, response(RES_STATUS, error)))
        return out

    def _trackstop(self, peer: Peer, message: bytes) -> list[LibOutput]:
        conn = self._conns.setdefault(peer.handle, _Conn())
        error = ErrorCode.OK if conn.tracking else ErrorCode.NOT_EXIST
        conn.tracking = False
        return [Response(peer.handle, response(RES_STATUS, error))]

    @staticmethod
    def _status(error: ErrorCode) -> Handler:
        def handler(peer: Peer, message: bytes) -> list[LibOutput]:
            return [Response(peer.handle, response(RES_STATUS, error))]

        return handler

    # --- events ----------------------------------------------------------------------------------

    def _to_trackers(self, make: Callable[[int], bytes]) -> list[LibOutput]:
        return [Event(h, make(c.context)) for h, c in self._conns.items() if c.tracking]

    def _nodelist_event(self, context: int) -> bytes:
        ring, ring_members = self._ring, self._members
        if ring == NO_RING:  # before our first published ring: what votequorum is syncing
            vq = self.node.votequorum()
            state = vq.state if vq is not None else None
            ring = state.ring_id if state is not None and state.ring_id is not None else NO_RING
            ring_members = state.members if state is not None else ()
        ids = ring_members[:MAX_LIST_ENTRIES]
        head = struct.pack("<QI4xQI4x", context, ring.rep, ring.seq, len(ids))
        return response(RES_NODELIST_NOTIFICATION, ErrorCode.OK, head + struct.pack(f"<{len(ids)}I", *ids))

    def _quorum_event(self, context: int) -> bytes:
        vq = self.node.votequorum()
        nodes = vq.quorum.nodes()[:MAX_LIST_ENTRIES] if vq is not None else ()
        quorate = vq.state.quorate if vq is not None else False
        head = struct.pack("<I4xQI4x", int(quorate), context, len(nodes))
        entries = b"".join(struct.pack("<II", n.nodeid, int(n.state)) for n in nodes)
        return response(RES_QUORUM_NOTIFICATION, ErrorCode.OK, head + entries)

    @staticmethod
    def _expected_event(context: int, expected_votes: int) -> bytes:
        return response(
            RES_EXPECTEDVOTES_NOTIFICATION, ErrorCode.OK, struct.pack("<QI4x", context, expected_votes)
        )


def _getinfo_body(record: NodeRecord, state: QuorumState, qdevice_votes: int) -> bytes:
    flags = 0
    if state.two_node:
        flags |= INFO_TWONODE
    if state.quorate:
        flags |= INFO_QUORATE
    if state.wait_for_all:
        flags |= INFO_WAIT_FOR_ALL
    if state.last_man_standing:
        flags |= INFO_LAST_MAN_STANDING
    if state.auto_tie_breaker:
        flags |= INFO_AUTO_TIE_BREAKER
    if state.allow_downscale:
        flags |= INFO_ALLOW_DOWNSCALE
    fields = _GETINFO.pack(
        record.nodeid,
        int(record.state),
        record.votes,
        record.expected_votes,
        state.highest_expected,
        state.total_votes,
        state.quorum,
        flags,
        qdevice_votes,
    )
    return padded(fields, GETINFO_SIZE - 24)


__all__ = ["VotequorumLib"]
