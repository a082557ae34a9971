"""The library face of corosync's services: what local programs send over libqb IPC (docs/libqb.md).

Every corosync client library (libcpg, libquorum, libvotequorum, libcmap, libcfg) sends C structs
through libqb: a 16-byte request header (i32 id, i32 size, each in an 8-byte slot) and the body;
the daemon answers each request with exactly one response (24-byte response header: id, size,
error) that fits the buffer the library passes, and sends events (callbacks) on a second channel.
Each service has one `LibFace` here (`cmanlk/services/<name>/lib.py`): a pure object that decodes
a request, decides as corosync's `message_handler_req_lib_*` does, and returns what to send:

- `Response(handle, data)` — the one answer to the request being served (or, for deferred
  answers such as cfg's try-shutdown, to an earlier request of that connection);
- `Event(handle, data)` — a callback message for connection `handle`;
- `Hold(handle)` — the request could not be taken now (cpg's send window is full or a new ring
  is being synchronised); present the same request again later, read nothing more from that
  connection meanwhile, and tell the client library to back off (libqb's flow-control flag);
- `Disconnect(handle, reason)` — a protocol violation the connection does not survive.

Faces never touch sockets or clocks: the runtime (cmanlk/runtime/libqb/) moves the bytes, and
the node is reached through `NodeView`, a small protocol the runtime implements over the running
Stack (its pure services, the membership, the configuration) and the tests over a twin.

Errors are corosync's `cs_error_t` (include/corosync/corotypes.h), not errno; `result_code()` maps
the codes of cmanlk's UsageError onto them — the one table to switch when ErrorCode lands.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from cmanlk.errors import ErrorCode
from cmanlk.services import wire as svcwire
from cmanlk.services.cpg.service import Handle
from cmanlk.types import Instant, NodeId, RingId

if TYPE_CHECKING:
    from cmanlk.config import ClusterConfig
    from cmanlk.runtime.transport import LinkStatus
    from cmanlk.services.cmap.store import Value
    from cmanlk.services.cpg.service import CpgService
    from cmanlk.services.votequorum.service import VotequorumService
    from cmanlk.stack import Event as StackEvent
    from cmanlk.stack import RequestResult


def result_code(code: ErrorCode | None) -> ErrorCode:
    """What a libqb answer carries for a local request's result (`RequestResult.error`): OK when
    it was taken, else the refusal's code (its cs_error_t is ErrorCode's table)."""
    return ErrorCode.OK if code is None else code


# --- messages ------------------------------------------------------------------------------------

REQUEST_HEADER_SIZE = svcwire.REQUEST_HEADER_SIZE
RESPONSE_HEADER_SIZE = svcwire.RESPONSE_HEADER_SIZE
_REQ_HEADER = struct.Struct("<i4xi4x")
_RES_HEADER = struct.Struct("<i4xi4xi4x")


def response(message_id: int, error: ErrorCode, body: bytes = b"") -> bytes:
    """A response or event: the 24-byte header (its size counts `body`; the error is `error`'s
    cs_error_t) followed by `body`."""
    return _RES_HEADER.pack(message_id, RESPONSE_HEADER_SIZE + len(body), error.cs_error) + body


def padded(body: bytes, size: int) -> bytes:
    """`body` zero-padded to `size` bytes (a fixed-size struct answered whole)."""
    return body + bytes(size - len(body)) if len(body) < size else body


class Malformed(Exception):
    """A request a face cannot decode: `reason` is a counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def request_header(message: bytes) -> tuple[int, int]:
    """(id, size) of a request. Raises Malformed when shorter than a header or inconsistent."""
    if len(message) < REQUEST_HEADER_SIZE:
        raise Malformed("request_short", f"{len(message)} bytes")
    message_id, size = _REQ_HEADER.unpack_from(message, 0)
    if size < REQUEST_HEADER_SIZE or size > len(message):
        raise Malformed("request_size", f"header size {size}, {len(message)} bytes")
    return message_id, size


def need(message: bytes, size: int, what: str) -> None:
    """Raise Malformed(f"{what}_short") unless `message` holds `size` bytes."""
    if len(message) < size:
        raise Malformed(f"{what}_short", f"{len(message)} bytes, {size} needed")


# --- what a face returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """A connection as the faces see it: the client's credentials and the agreed message size."""

    handle: Handle
    pid: int
    uid: int
    gid: int
    max_msg_size: int


@dataclass(frozen=True, slots=True)
class Response:
    """Put `data` on connection `handle`'s response channel."""

    handle: Handle
    data: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """Put `data` on connection `handle`'s event channel."""

    handle: Handle
    data: bytes


@dataclass(frozen=True, slots=True)
class Hold:
    """Connection `handle`'s current request cannot be taken now; retry it later, in order."""

    handle: Handle


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close connection `handle` (a protocol violation); `reason` is logged and counted."""

    handle: Handle
    reason: str


LibOutput = Response | Event | Hold | Disconnect


# --- the node as the faces see it ----------------------------------------------------------------


class NodeView(Protocol):
    """The running node, read and driven by the faces (cmanlk.runtime.libqb.glue implements it)."""

    @property
    def me(self) -> NodeId:
        """Our node id."""
        ...

    @property
    def now(self) -> Instant:
        """The time of the request being served (for timers such as cfg's shutdown vote)."""
        ...

    def submit(self, make: Callable[[Instant, int], StackEvent]) -> RequestResult:
        """Feed the Stack event `make(now, request_id)` and return its answer (the Stack answers
        local requests while it handles them)."""
        ...

    def cpg_mcast(self, handle: Handle, group: bytes, payload: bytes) -> ErrorCode | None:
        """Multicast `payload` to `group` for connection `handle`: what submitting
        ServiceRequest(CPG_SERVICE, CpgMcast(handle, group, payload)) answers (its error, None when
        taken), through the Stack's fused send path (Stack.local_mcast)."""
        ...

    def cpg(self) -> CpgService | None:
        """The cpg service, for queries (groups, members, local processes)."""
        ...

    def votequorum(self) -> VotequorumService | None:
        """The votequorum service, for queries (its node table and decision)."""
        ...

    def membership(self) -> tuple[RingId, tuple[NodeId, ...]]:
        """The last membership published (after its synchronisation)."""
        ...

    def config(self) -> ClusterConfig:
        """The configuration in force."""
        ...

    def links(self) -> Sequence[LinkStatus]:
        """The transport's links and per-peer reachability."""
        ...

    def is_quorum_configured(self) -> bool:
        """Is a quorum provider (corosync_votequorum) configured? (quorum's QUORUM_SET)."""
        ...

    def node_ips(self, nodeid: NodeId) -> Sequence[str]:
        """`nodeid`'s addresses as IP text, one per link in link order (host names resolved)."""
        ...

    def reopen_logs(self) -> bool:
        """Reopen the log files (logrotate); False when that failed."""
        ...

    def config_versions(self) -> Mapping[NodeId, int]:
        """totem.config_version each member announced in the last cmap synchronisation."""
        ...

    def stats_keys(self) -> Mapping[str, Value]:
        """A snapshot of corosync's stats map (stats.srp.*, stats.ipcs.*) for cmap map 1."""
        ...


class LibFace(Protocol):
    """One service's library face (see the module docstring)."""

    @property
    def service_id(self) -> int:
        """corosync's service id."""
        ...

    @property
    def name(self) -> str:
        """The service's socket name ("cpg", "cmap", …)."""
        ...

    def connect(self, peer: Peer) -> list[LibOutput]:
        """A connection was accepted (corosync's lib_init_fn)."""
        ...

    def request(self, peer: Peer, message: bytes) -> list[LibOutput]:
        """Serve one request. Never raises for bad input: it answers an error or disconnects."""
        ...

    def disconnect(self, handle: Handle) -> list[LibOutput]:
        """Connection `handle` is gone (corosync's lib_exit_fn); outputs for other connections."""
        ...

    def notify(self, note: object) -> list[LibOutput]:
        """A notification from the Stack (membership, quorum, cpg delivery, …): events to send."""
        ...


# --- a request table shared by the faces ---------------------------------------------------------

Handler = Callable[[Peer, bytes], list[LibOutput]]


class Dispatcher:
    """Request id → (smallest valid size, handler), with corosync's answers for bad requests.

    An id the service does not have is answered with a bare response header, id 0 and
    CS_ERR_INVALID_PARAM (corosync_sending_allowed: "Message ID out of range"); so is a request
    shorter than its struct (corosync would read past it). Requests that get no response
    (`silent_ids`: cpg's MCAST) are dropped and counted instead. Counters are in `stats`.
    """

    def __init__(
        self, handlers: Mapping[int, tuple[int, Handler]], silent_ids: frozenset[int] = frozenset()
    ) -> None:
        self.handlers = dict(handlers)
        self.silent_ids = silent_ids
        self.stats: dict[str, int] = {}

    def __call__(self, peer: Peer, message: bytes) -> list[LibOutput]:
        try:
            message_id, _size = request_header(message)
        except Malformed as exc:
            self.count(exc.reason)
            return [Disconnect(peer.handle, str(exc))]
        entry = self.handlers.get(message_id)
        try:
            if entry is None:
                raise Malformed("request_id_unknown", f"id {message_id}")
            size, handler = entry
            need(message, size, f"id{message_id}")
            return handler(peer, message)
        except Malformed as exc:
            self.count(exc.reason)
            if message_id in self.silent_ids:
                return []
            return [Response(peer.handle, response(0, ErrorCode.INVALID_PARAM))]

    def count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1


ConnT = TypeVar("ConnT")


class FaceBase(Generic[ConnT]):
    """What the faces share: the request table (a Dispatcher, its counters in `stats`) and each
    connection's state by handle.

    A face builds its table and calls `super().__init__(table)`; `new_conn` says what a new
    connection holds. `connect`, `request` and a `disconnect` that forgets the connection come from
    here; a face whose connections hold more (groups, tracks, votes) overrides `disconnect`.
    """

    def __init__(
        self, handlers: Mapping[int, tuple[int, Handler]], silent_ids: frozenset[int] = frozenset()
    ) -> None:
        self._conns: dict[Handle, ConnT] = {}
        self._dispatch = Dispatcher(handlers, silent_ids)
        self.stats = self._dispatch.stats

    def new_conn(self, peer: Peer) -> ConnT | None:
        """The state of a new connection; None keeps nothing for it."""
        return None

    def connect(self, peer: Peer) -> list[LibOutput]:
        """A connection was accepted: keep its `new_conn` state."""
        conn = self.new_conn(peer)
        if conn is not None:
            self._conns[peer.handle] = conn
        return []

    def request(self, peer: Peer, message: bytes) -> list[LibOutput]:
        """Serve one request through the table (each face's module docstring lists it)."""
        return self._dispatch(peer, message)

    def disconnect(self, handle: Handle) -> list[LibOutput]:
        """Forget the connection."""
        self._conns.pop(handle, None)
        return []
