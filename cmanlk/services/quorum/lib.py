"""libquorum's face of the quorum service (corosync 3.1.7 exec/vsf_quorum.c, ipc_quorum.h).

Requests (all answered; x86-64 layouts, every size checked with gcc against ipc_quorum.h):

| id | request | size | response |
|----|---------|------|----------|
| 0 | GETQUORATE | 16 | id 0, 32 bytes: quorate u32 @24 |
| 1 | TRACKSTART | 24: track_flags u32 @16 | events first (below), then id 1, 24 bytes |
| 2 | TRACKSTOP | 16 | id 2, 24 bytes, always CS_OK (as corosync) |
| 3 | GETTYPE | 16 | id 4, 32 bytes: quorum_type u32 @24 |
| 4 | MODEL_GETTYPE | 24: model u32 @16 | id 5, 32 bytes; sets the connection's model (0 or 1) |

Events: model V0 gets NOTIFICATION (id 3: quorate i32 @24, ring seq u64 @32, n u32 @40, node ids
@44, size 48 + 4n); model V1 gets V1_QUORUM_NOTIFICATION (id 6: quorate @24, ring id {nodeid @32,
seq @40}, n @48, ids @52, size 56 + 4n) and V1_NODELIST_NOTIFICATION (id 7: ring id @24/@32,
member/joined/left counts @40/@48/@56, ids @60 members then joined then left, size 64 + 4·all).

TRACKSTART with CS_TRACK_CURRENT or CS_TRACK_CHANGES sends the current nodelist (V1, empty
joined and left lists) and quorum notification first, then records tracking when CHANGES or
CHANGES_ONLY is set (CS_ERR_EXIST when already tracking), then answers.

After each synchronised ring, trackers get the nodelist (joined and left as corosync's
quorum_sync_init computes them: a node missing from the transitional configuration left, and
joined again when it is back in the new one) and then the quorum notification, in that order
(vsf_quorum's sync_activate runs before votequorum's). The Stack publishes votequorum's
QuorumChanged during activation, before MembershipChanged; a QuorumChanged for a ring not yet
published is therefore held and sent right after that ring's nodelist.

Without a quorum provider (`quorum_type` QUORUM_FREE) every node reports quorate, as corosync's
primary_designated = 1; pacemaker insists on QUORUM_SET.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cmanlk.errors import ErrorCode
from cmanlk.services.base import QUORUM_SERVICE
from cmanlk.services.cpg.service import Handle
from cmanlk.services.lib import (
    Event,
    FaceBase,
    LibOutput,
    NodeView,
    Peer,
    Response,
    padded,
    response,
)
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged
from cmanlk.types import NO_RING, NodeId, RingId

REQ_GETQUORATE = 0
REQ_TRACKSTART = 1
REQ_TRACKSTOP = 2
REQ_GETTYPE = 3
REQ_MODEL_GETTYPE = 4

RES_GETQUORATE = 0
RES_TRACKSTART = 1
RES_TRACKSTOP = 2
RES_NOTIFICATION = 3
RES_GETTYPE = 4
RES_MODEL_GETTYPE = 5
RES_V1_QUORUM_NOTIFICATION = 6
RES_V1_NODELIST_NOTIFICATION = 7

QUORUM_FREE = 0
QUORUM_SET = 1
MODEL_V0 = 0
MODEL_V1 = 1

CS_TRACK_CURRENT = 1
CS_TRACK_CHANGES = 2
CS_TRACK_CHANGES_ONLY = 4

MAX_VIEW_ENTRIES = 384
"""PROCESSOR_COUNT_MAX: the most node ids a notification carries."""

_U32 = struct.Struct("<I")


@dataclass(slots=True)
class _Conn:
    model: int = MODEL_V0
    tracking: bool = False


@dataclass(slots=True)
class _View:
    """What the notifications carry: the quorum view and the last synchronised node list."""

    quorate: bool = False
    quorum_ring: RingId = NO_RING
    quorum_members: tuple[NodeId, ...] = ()
    nodelist_ring: RingId = NO_RING
    members: tuple[NodeId, ...] = ()
    joined: tuple[NodeId, ...] = ()
    left: tuple[NodeId, ...] = ()
    held: QuorumChanged | None = None
    published: set[RingId] = field(default_factory=set)


class QuorumLib(FaceBase[_Conn]):
    """Service 3's library face (cmanlk.services.lib.LibFace)."""

    service_id = QUORUM_SERVICE
    name = "quorum"

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self._view = _View()
        super().__init__(
            {
                REQ_GETQUORATE: (16, self._getquorate),
                REQ_TRACKSTART: (24, self._trackstart),
                REQ_TRACKSTOP: (16, self._trackstop),
                REQ_GETTYPE: (16, self._gettype),
                REQ_MODEL_GETTYPE: (24, self._model_gettype),
            }
        )

    # --- LibFace ---------------------------------------------------------------------------------

    def new_conn(self, peer: Peer) -> _Conn | None:
        """A new connection starts with model V0, not tracking."""
        return _Conn()

    def notify(self, note: object) -> list[LibOutput]:
        """Quorum and membership changes become notifications for trackers."""
        if isinstance(note, QuorumChanged):
            if note.ring_id is not None and note.ring_id not in self._view.published:
                self._view.held = note  # sent after its ring's nodelist (module docstring)
                return []
            self._take_quorum(note)
            return self._to_trackers(quorum=True)
        if isinstance(note, MembershipChanged):
            self._take_membership(note)
            out = self._to_trackers(nodelist=True)
            held, self._view.held = self._view.held, None
            if held is not None and held.ring_id == note.ring_id:
                self._take_quorum(held)
                out += self._to_trackers(quorum=True)
            return out
        return []

    # --- requests --------------------------------------------------------------------------------

    def _getquorate(self, peer: Peer, message: bytes) -> list[LibOutput]:
        body = padded(_U32.pack(int(self._quorate())), 8)
        return [Response(peer.handle, response(RES_GETQUORATE, ErrorCode.OK, body))]

    def _trackstart(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (flags,) = _U32.unpack_from(message, 16)
        conn = self._conn(peer.handle)
        out: list[LibOutput] = []
        if flags & (CS_TRACK_CURRENT | CS_TRACK_CHANGES):
            if conn.model == MODEL_V1:
                out.append(Event(peer.handle, self._nodelist_event(with_changes=False)))
            out.append(Event(peer.handle, self._quorum_event(conn.model)))
        error = ErrorCode.OK
        if conn.tracking:
            error = ErrorCode.EXIST
        elif flags & (CS_TRACK_CHANGES | CS_TRACK_CHANGES_ONLY):
            conn.tracking = True
        out.append(Response(peer.handle, response(RES_TRACKSTART, error)))
        return out

    def _trackstop(self, peer: Peer, message: bytes) -> list[LibOutput]:
        self._conn(peer.handle).tracking = False
        return [Response(peer.handle, response(RES_TRACKSTOP, ErrorCode.OK))]

    def _gettype(self, peer: Peer, message: bytes) -> list[LibOutput]:
        body = padded(_U32.pack(self._quorum_type()), 8)
        return [Response(peer.handle, response(RES_GETTYPE, ErrorCode.OK, body))]

    def _model_gettype(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (model,) = _U32.unpack_from(message, 16)
        error = ErrorCode.OK
        if model in (MODEL_V0, MODEL_V1):
            self._conn(peer.handle).model = model
        else:
            error = ErrorCode.INVALID_PARAM
        body = padded(_U32.pack(self._quorum_type()), 8)
        return [Response(peer.handle, response(RES_MODEL_GETTYPE, error, body))]

    # --- state -----------------------------------------------------------------------------------

    def _conn(self, handle: Handle) -> _Conn:
        return self._conns.setdefault(handle, _Conn())

    def _quorum_type(self) -> int:
        return QUORUM_SET if self.node.is_quorum_configured() else QUORUM_FREE

    def _quorate(self) -> bool:
        return self._view.quorate if self._quorum_type() == QUORUM_SET else True

    def _take_quorum(self, note: QuorumChanged) -> None:
        self._view.quorate = note.quorate
        self._view.quorum_ring = note.ring_id or NO_RING
        self._view.quorum_members = tuple(note.state.members)

    def _take_membership(self, note: MembershipChanged) -> None:
        view = self._view
        old = set(view.members)
        new = set(note.members)
        kept = set(note.transitional)
        left = tuple(n for n in view.members if n not in kept or n not in new)
        joined = tuple(n for n in note.members if n not in old or n in left)
        view.nodelist_ring, view.members, view.joined, view.left = note.ring_id, note.members, joined, left
        view.published.add(note.ring_id)
        if len(view.published) > 8:
            view.published = {note.ring_id}

    # --- events ----------------------------------------------------------------------------------

    def _to_trackers(self, *, quorum: bool = False, nodelist: bool = False) -> list[LibOutput]:
        out: list[LibOutput] = []
        encoded: dict[int, bytes] = {}  # each encoding built once, only if a tracker needs it
        for handle, conn in self._conns.items():
            if not conn.tracking:
                continue
            if nodelist and conn.model == MODEL_V1:
                if -1 not in encoded:
                    encoded[-1] = self._nodelist_event(with_changes=True)
                out.append(Event(handle, encoded[-1]))
            if quorum:
                if conn.model not in encoded:
                    encoded[conn.model] = self._quorum_event(conn.model)
                out.append(Event(handle, encoded[conn.model]))
        return out

    def _quorum_event(self, model: int) -> bytes:
        view = self._view
        ids = view.quorum_members[:MAX_VIEW_ENTRIES]
        id_bytes = struct.pack(f"<{len(ids)}I", *ids)
        if model == MODEL_V0:
            head = struct.pack("<i4xQI", int(self._quorate()), view.quorum_ring.seq, len(ids))
            return response(RES_NOTIFICATION, ErrorCode.OK, head + id_bytes + bytes(4))
        head = struct.pack(
            "<i4xI4xQI", int(self._quorate()), view.quorum_ring.rep, view.quorum_ring.seq, len(ids)
        )
        return response(RES_V1_QUORUM_NOTIFICATION, ErrorCode.OK, head + id_bytes + bytes(4))

    def _nodelist_event(self, *, with_changes: bool) -> bytes:
        view = self._view
        members = view.members[:MAX_VIEW_ENTRIES]
        joined = view.joined[:MAX_VIEW_ENTRIES] if with_changes else ()
        left = view.left[:MAX_VIEW_ENTRIES] if with_changes else ()
        ids = (*members, *joined, *left)
        ring = view.nodelist_ring
        head = struct.pack("<I4xQI4xI4xI", ring.rep, ring.seq, len(members), len(joined), len(left))
        return response(
            RES_V1_NODELIST_NOTIFICATION, ErrorCode.OK, head + struct.pack(f"<{len(ids)}I", *ids) + bytes(4)
        )
