"""The D-Bus edge of cmanlkd: `org.cmanlk.Cluster` on the system bus.

One object, `/org/cmanlk/Cluster`, carries the interface `org.cmanlk.Cluster1` (the file
dbus/org.cmanlk.Cluster1.xml is its introspection, docs/dbus.md its manual):

- read-only properties from the daemon's status snapshot (ClusterName, LocalNodeId, RingId,
  Members, Quorate, Votes, ExpectedVotes, TotalVotes, Quorum, Links, Lockspaces), each announced
  with org.freedesktop.DBus.Properties.PropertiesChanged when its value changes;
- signals for the daemon's events (MembershipChanged, NodeJoined, NodeLeft, QuorumChanged,
  LinkStatusChanged, LockspaceStateChanged);
- query methods anyone may call (GetStatus, GetNodes, GetQuorum) and privileged methods
  (SetExpectedVotes, SetVotes, FenceAck) for root only. Root-only is enforced twice: by the bus
  policy (dbus/org.cmanlk.Cluster.conf) and here, by asking the bus for the caller's uid
  (org.freedesktop.DBus.GetConnectionUnixUser) before anything reaches the daemon.

The daemon talks to this module through two calls only: the `ClusterStatusSource` backend it
passes in (a snapshot of the status, `submit()` for privileged requests) and `publish(notice)`
for each change. The ring must never wait for D-Bus, so:

- `publish()` is synchronous and O(1): the notice goes into a bounded queue
  (NOTIFY_QUEUE_BOUND); when the queue is full the oldest notice is dropped and counted, with a
  rate-limited warning. Properties are read from the live snapshot, so they stay right even when
  signals are lost; a client that sees `DroppedSignals` grow should re-read them.
- One drain task turns notices into messages. dbus-fast's writer queue is unbounded, so we keep
  at most MAX_UNSENT_MESSAGES of our signals in it (its send futures tell us when each reached
  the socket); past that the drain task waits, the notice queue fills, and `publish()` drops.
- dbus-fast (like dbus-next) treats EAGAIN on its non-blocking socket as a dead connection:
  a write while the kernel buffer is full raises BlockingIOError inside its writer, which
  finalises the bus. A stalled dbus-daemon would thus cost us the connection and the name.
  We hand its writer a socket whose `send()` reports EAGAIN as "0 bytes written", so the writer
  waits for writability as it does after a partial write.
- Losing the bus (dbus-daemon restart) is logged; we reconnect with exponential backoff,
  re-export and re-acquire the name. Notices published while disconnected are dropped
  (counted): a signal nobody could receive is not replayed later as if it were fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    PropertyAccess,
    RequestNameReply,
    Variant,
)
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from cmanlk.errors import UsageError
from cmanlk.types import NodeId, RingId

log = logging.getLogger(__name__)

BUS_NAME = "org.cmanlk.Cluster"
OBJECT_PATH = "/org/cmanlk/Cluster"
INTERFACE = "org.cmanlk.Cluster1"
ERROR_PREFIX = "org.cmanlk.Cluster1.Error."
ERROR_PERMISSION_DENIED = ERROR_PREFIX + "PermissionDenied"
ERROR_BUSY = ERROR_PREFIX + "Busy"
ERROR_TIMEOUT = ERROR_PREFIX + "Timeout"
ERROR_FAILED = ERROR_PREFIX + "Failed"

PRIVILEGED_UIDS = frozenset({0})
"""Who may call the privileged methods. Root only: a wrong expected-votes value can make two
partitions quorate, and a fence ack for a node that is still running corrupts GFS2. Group
`cmanlk` gets read access to the local API socket, not these (docs/dbus.md)."""

NOTIFY_QUEUE_BOUND = 256
"""Notices waiting for the drain task. A node failure yields about four (membership, quorum,
links, lockspaces); 256 absorbs a burst of many rings re-forming while the bus is slow."""
MAX_UNSENT_MESSAGES = 64
"""Our signals handed to dbus-fast but not yet written to the socket. Beyond it the drain task
waits, so a stalled bus grows the bounded notice queue, not dbus-fast's unbounded writer."""
DRAIN_BATCH = 32
"""Notices taken in one go; their property changes go out as one PropertiesChanged."""
MAX_PENDING_ADMIN_CALLS = 8
"""Privileged calls in progress at once; more get org.cmanlk.Cluster1.Error.Busy."""
ADMIN_CALL_TIMEOUT_S = 10.0
"""A privileged request travels the ring (votequorum messages); 10 s covers several token
timeouts and a membership change, after which the caller gets Error.Timeout."""
UID_LOOKUP_TIMEOUT_S = 5.0
AUTH_TIMEOUT_S = 5.0
"""SASL handshake limit: a stopped dbus-daemon accepts the connection but never answers."""
CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 30.0
RECONNECT_RESET_AFTER_S = 60.0
"""A connection that lived this long resets the backoff to its minimum."""
DROP_WARNING_INTERVAL_S = 10.0
"""At most one warning about dropped notices per interval (the count says how many)."""

# --- what the daemon provides ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member of the current ring: node id and node name ("" when the config names none)."""

    nodeid: NodeId
    name: str


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A configured or seen node: `state` is "member", "dead" or "leaving" (votequorum's words)."""

    nodeid: NodeId
    name: str
    state: str
    votes: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """Whether link number `link` towards node `nodeid` is up."""

    nodeid: NodeId
    link: int
    up: bool


@dataclass(frozen=True, slots=True)
class LockspaceInfo:
    """A DLM lockspace and its state as dlmctl names it ("joining", "running", "recovering", …)."""

    name: str
    state: str


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What the daemon knows right now; every property and query method is read from it.

    `votes` are this node's votes; `quorum` the votes needed for quorum; `quorum_flags`
    votequorum's flag names ("two_node", "wait_for_all", …).
    """

    cluster_name: str
    local_nodeid: NodeId
    ring_id: RingId
    members: tuple[MemberInfo, ...]
    quorate: bool
    votes: int
    expected_votes: int
    total_votes: int
    quorum: int
    nodes: tuple[NodeInfo, ...] = ()
    links: tuple[LinkInfo, ...] = ()
    lockspaces: tuple[LockspaceInfo, ...] = ()
    quorum_flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SetExpectedVotes:
    """Privileged: set votequorum's expected votes (corosync-quorumtool -e)."""

    expected_votes: int


@dataclass(frozen=True, slots=True)
class SetVotes:
    """Privileged: set the votes of `nodeid` (0 = this node; corosync-quorumtool -v [-n])."""

    nodeid: NodeId
    votes: int


@dataclass(frozen=True, slots=True)
class FenceAck:
    """Privileged: the admin confirms `nodeid` is off (dlm_tool fence_ack); recovery may go on."""

    nodeid: NodeId


AdminRequest = SetExpectedVotes | SetVotes | FenceAck


class ClusterStatusSource(Protocol):
    """The backend the daemon implements (cmanlk/runtime/node.py)."""

    def snapshot(self) -> ClusterStatus:
        """Return the current status. Called on the event loop, often: keep it cheap."""
        ...

    def submit(self, request: AdminRequest) -> Awaitable[str]:
        """Carry out a privileged request; the awaitable gives a one-line result for the caller.

        The caller is already checked to be root. Raises UsageError(code, message) when the
        request is illegal now (bad value, not quorate, unknown node); `code` becomes the D-Bus
        error org.cmanlk.Cluster1.Error.<Code> (CamelCased). Runs under ADMIN_CALL_TIMEOUT_S.
        """
        ...


@dataclass(frozen=True, slots=True)
class Departure:
    """A node that left the ring and why: "leave" (clean shutdown) or "nodedown" (failed/cut off)."""

    nodeid: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class MembershipNotice:
    """A regular configuration was installed: the new ring, its members, who came and who went."""

    ring_id: RingId
    members: tuple[MemberInfo, ...]
    joined: tuple[MemberInfo, ...] = ()
    left: tuple[Departure, ...] = ()


@dataclass(frozen=True, slots=True)
class QuorumNotice:
    """votequorum's decision changed (quorate, quorum or total votes)."""

    quorate: bool
    quorum: int
    total_votes: int


@dataclass(frozen=True, slots=True)
class LinkNotice:
    """Link number `link` towards `nodeid` went up or down."""

    nodeid: NodeId
    link: int
    up: bool


@dataclass(frozen=True, slots=True)
class LockspaceNotice:
    """A lockspace changed state."""

    name: str
    state: str


@dataclass(frozen=True, slots=True)
class StatusNotice:
    """Something in the snapshot changed without an event of its own (votes, expected votes):
    only PropertiesChanged goes out."""


Notice = MembershipNotice | QuorumNotice | LinkNotice | LockspaceNotice | StatusNotice


@dataclass(frozen=True, slots=True)
class DbusStats:
    """Counters of the D-Bus edge, for status output and tests."""

    connected: bool
    connects: int
    signals_sent: int
    dropped_notices: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    admin_calls: int = 0
    admin_denied: int = 0


# --- D-Bus types -------------------------------------------------------------------------------

RingIdStruct = Annotated[list[int], DBusSignature("(ut)")]
MemberList = Annotated[list[list[Any]], DBusSignature("a(us)")]
NodeList = Annotated[list[list[Any]], DBusSignature("a(ussu)")]
LinkList = Annotated[list[list[Any]], DBusSignature("a(uub)")]
LockspaceList = Annotated[list[list[Any]], DBusSignature("a(ss)")]
VariantDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]

_PROPERTIES: dict[str, tuple[str, Callable[[ClusterStatus], Any]]] = {
    "ClusterName": ("s", lambda s: s.cluster_name),
    "LocalNodeId": ("u", lambda s: int(s.local_nodeid)),
    "RingId": ("(ut)", lambda s: _ring(s.ring_id)),
    "Members": ("a(us)", lambda s: _members(s.members)),
    "Quorate": ("b", lambda s: s.quorate),
    "Votes": ("u", lambda s: s.votes),
    "ExpectedVotes": ("u", lambda s: s.expected_votes),
    "TotalVotes": ("u", lambda s: s.total_votes),
    "Quorum": ("u", lambda s: s.quorum),
    "Links": ("a(uub)", lambda s: [[int(x.nodeid), x.link, x.up] for x in s.links]),
    "Lockspaces": ("a(ss)", lambda s: [[x.name, x.state] for x in s.lockspaces]),
}
"""Every property: D-Bus signature and how its value is read from a snapshot. The getters, the
change detection and GetStatus all use this one table, so they cannot disagree."""


def _ring(ring_id: RingId) -> list[int]:
    return [int(ring_id.rep), ring_id.seq]


def _members(members: tuple[MemberInfo, ...]) -> list[list[Any]]:
    return [[int(m.nodeid), m.name] for m in members]


_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "GetStatus": ("status",),
    "GetNodes": ("nodes",),
    "GetQuorum": ("quorum",),
    "SetExpectedVotes": ("result",),
    "SetVotes": ("result",),
    "FenceAck": ("result",),
    "MembershipChanged": ("ring_id", "members", "joined", "left"),
    "NodeJoined": ("nodeid", "name"),
    "NodeLeft": ("nodeid", "reason"),
    "QuorumChanged": ("quorate", "quorum", "total_votes"),
    "LinkStatusChanged": ("nodeid", "link", "up"),
    "LockspaceStateChanged": ("name", "state"),
}
"""Names of out and signal arguments in the introspection data (clients show them)."""

_KEEP = object()


def _named(arg: intr.Arg, names: tuple[str, ...], i: int, direction: Any = _KEEP) -> intr.Arg:
    name = names[i] if i < len(names) else arg.name
    return intr.Arg(arg.signature, arg.direction if direction is _KEEP else direction, name)


def property_values(status: ClusterStatus) -> dict[str, Any]:
    """Return every property's D-Bus value for `status` (name → value)."""
    return {name: read(status) for name, (_, read) in _PROPERTIES.items()}


class ClusterInterface(ServiceInterface):
    """org.cmanlk.Cluster1, the exported object's interface (dbus-fast declarations).

    Signals are declared here for introspection; `DbusService` emits them itself so it can
    bound what waits in dbus-fast's writer. The privileged methods are answered by the
    `DbusService` gate before dbus-fast dispatches; their bodies here refuse, so a call that
    somehow bypasses the gate is denied rather than carried out unchecked.
    """

    def __init__(self, source: ClusterStatusSource, stats: Callable[[], DbusStats]) -> None:
        super().__init__(INTERFACE)
        self._source = source
        self._stats = stats

    def _value(self, name: str) -> Any:
        return _PROPERTIES[name][1](self._source.snapshot())

    def introspect(self) -> intr.Interface:
        """Return the introspection data, with names for the out and signal arguments.

        dbus-fast derives those from return annotations, which carry types but no names.
        """
        iface = super().introspect()
        for method in iface.methods:
            names = _ARG_NAMES.get(method.name, ())
            method.out_args = [_named(arg, names, i) for i, arg in enumerate(method.out_args)]
        for sig in iface.signals:
            names = _ARG_NAMES.get(sig.name, ())
            sig.args = [_named(arg, names, i, direction=None) for i, arg in enumerate(sig.args)]
        return iface

    @dbus_property(access=PropertyAccess.READ)
    def ClusterName(self) -> DBusStr:
        return str(self._value("ClusterName"))

    @dbus_property(access=PropertyAccess.READ)
    def LocalNodeId(self) -> DBusUInt32:
        return int(self._value("LocalNodeId"))

    @dbus_property(access=PropertyAccess.READ)
    def RingId(self) -> RingIdStruct:
        return list(self._value("RingId"))

    @dbus_property(access=PropertyAccess.READ)
    def Members(self) -> MemberList:
        return list(self._value("Members"))

    @dbus_property(access=PropertyAccess.READ)
    def Quorate(self) -> DBusBool:
        return bool(self._value("Quorate"))

    @dbus_property(access=PropertyAccess.READ)
    def Votes(self) -> DBusUInt32:
        return int(self._value("Votes"))

    @dbus_property(access=PropertyAccess.READ)
    def ExpectedVotes(self) -> DBusUInt32:
        return int(self._value("ExpectedVotes"))

    @dbus_property(access=PropertyAccess.READ)
    def TotalVotes(self) -> DBusUInt32:
        return int(self._value("TotalVotes"))

    @dbus_property(access=PropertyAccess.READ)
    def Quorum(self) -> DBusUInt32:
        return int(self._value("Quorum"))

    @dbus_property(access=PropertyAccess.READ)
    def Links(self) -> LinkList:
        return list(self._value("Links"))

    @dbus_property(access=PropertyAccess.READ)
    def Lockspaces(self) -> LockspaceList:
        return list(self._value("Lockspaces"))

    @dbus_method()
    def GetStatus(self) -> VariantDict:
        status = self._source.snapshot()
        out = {name: Variant(sig, read(status)) for name, (sig, read) in _PROPERTIES.items()}
        out["QuorumFlags"] = Variant("as", list(status.quorum_flags))
        out["DroppedSignals"] = Variant("t", self._stats().dropped_notices)
        return out

    @dbus_method()
    def GetNodes(self) -> NodeList:
        return [[int(n.nodeid), n.name, n.state, n.votes] for n in self._source.snapshot().nodes]

    @dbus_method()
    def GetQuorum(self) -> VariantDict:
        s = self._source.snapshot()
        return {
            "Quorate": Variant("b", s.quorate),
            "Quorum": Variant("u", s.quorum),
            "Votes": Variant("u", s.votes),
            "ExpectedVotes": Variant("u", s.expected_votes),
            "TotalVotes": Variant("u", s.total_votes),
            "Flags": Variant("as", list(s.quorum_flags)),
        }

    @dbus_method()
    def SetExpectedVotes(self, expected_votes: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_method()
    def SetVotes(self, nodeid: DBusUInt32, votes: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_method()
    def FenceAck(self, nodeid: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_signal()
    def MembershipChanged(
        self,
    ) -> Annotated[tuple[list[int], list[Any], list[Any], list[Any]], DBusSignature("(ut)a(us)a(us)a(us)")]:
        raise NotImplementedError  # declaration only: DbusService emits it

    @dbus_signal()
    def NodeJoined(self) -> Annotated[tuple[int, str], DBusSignature("us")]:
        raise NotImplementedError

    @dbus_signal()
    def NodeLeft(self) -> Annotated[tuple[int, str], DBusSignature("us")]:
        raise NotImplementedError

    @dbus_signal()
    def QuorumChanged(self) -> Annotated[tuple[bool, int, int], DBusSignature("buu")]:
        raise NotImplementedError

    @dbus_signal()
    def LinkStatusChanged(self) -> Annotated[tuple[int, int, bool], DBusSignature("uub")]:
        raise NotImplementedError

    @dbus_signal()
    def LockspaceStateChanged(self) -> Annotated[tuple[str, str], DBusSignature("ss")]:
        raise NotImplementedError


# --- the service -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AdminMethod:
    signature: str
    build: Callable[[list[Any]], AdminRequest]


_ADMIN_METHODS: dict[str, _AdminMethod] = {
    "SetExpectedVotes": _AdminMethod("u", lambda body: SetExpectedVotes(int(body[0]))),
    "SetVotes": _AdminMethod("uu", lambda body: SetVotes(NodeId(int(body[0])), int(body[1]))),
    "FenceAck": _AdminMethod("u", lambda body: FenceAck(NodeId(int(body[0])))),
}


class DbusService:
    """Publishes the daemon's status on D-Bus and passes root's privileged calls to the backend.

    Typical use inside the daemon's TaskGroup::

        service = DbusService(backend)
        await service.start(None)          # None: the system bus; or "unix:path=/run/…"
        ...
        service.publish(MembershipNotice(...))   # never blocks, never raises
        ...
        await service.stop()

    `start()` never fails because the bus is missing: the service keeps trying in the background.
    """

    def __init__(self, source: ClusterStatusSource, *, queue_bound: int = NOTIFY_QUEUE_BOUND) -> None:
        self._source = source
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=queue_bound)
        self._drops = _DropCounter()
        self._outbox: _Outbox | None = None
        self._announced: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._admin_tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._connects = 0
        self._signals_sent = 0
        self._admin_calls = 0
        self._admin_denied = 0

    # -- lifecycle --

    async def start(self, bus_address: str | None = None, *, wait_s: float = CONNECT_TIMEOUT_S) -> bool:
        """Start serving on `bus_address` (None: the system bus) in background tasks.

        Returns whether the name was acquired within `wait_s`; when not, the service keeps
        retrying with backoff. Raises RuntimeError when already started.
        """
        if self._tasks:
            raise RuntimeError("DbusService already started")
        self._tasks = [
            asyncio.create_task(self.run(bus_address), name="dbus-connection"),
            asyncio.create_task(self._drain(), name="dbus-drain"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._connected.wait()
        return self._connected.is_set()

    async def stop(self) -> None:
        """Stop the tasks and leave the bus (the name is released with the connection)."""
        tasks = [*self._tasks, *self._admin_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run(self, bus_address: str | None) -> None:
        """Keep a connection to the bus until cancelled: connect, serve, reconnect with backoff.

        For callers that run their own TaskGroup; `start()` uses it too (with the drain task).
        """
        backoff = RECONNECT_MIN_S
        loop = asyncio.get_running_loop()
        while True:
            try:
                bus = await self._connect(bus_address)
            except (OSError, DBusError, TimeoutError, _NameUnavailable) as err:
                where = bus_address or "the system bus"
                log.warning(
                    "D-Bus: cannot serve %s on %s: %s; retrying in %.1f s", BUS_NAME, where, err, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            since = loop.time()
            await self._serve(bus)
            if loop.time() - since >= RECONNECT_RESET_AFTER_S:
                backoff = RECONNECT_MIN_S
            log.warning("D-Bus: connection lost; reconnecting in %.1f s", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    # -- the daemon's side --

    def publish(self, notice: Notice) -> None:
        """Queue `notice` for the bus. O(1); never blocks or raises.

        When the queue is full the oldest queued notice is dropped and counted.
        """
        if self._outbox is None:
            self._drops.drop("not connected")
            return
        if self._queue.full():
            self._queue.get_nowait()
            self._drops.drop("queue full")
        self._queue.put_nowait(notice)

    @property
    def stats(self) -> DbusStats:
        """Return the current counters."""
        return DbusStats(
            connected=self._outbox is not None,
            connects=self._connects,
            signals_sent=self._signals_sent,
            dropped_notices=self._drops.total,
            dropped_by_reason=dict(self._drops.by_reason),
            admin_calls=self._admin_calls,
            admin_denied=self._admin_denied,
        )

    # -- connection --

    async def _connect(self, bus_address: str | None) -> MessageBus:
        if bus_address is None:
            bus = MessageBus(bus_type=BusType.SYSTEM, auth_timeout=AUTH_TIMEOUT_S)
        else:
            bus = MessageBus(bus_address=bus_address, auth_timeout=AUTH_TIMEOUT_S)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await bus.connect()
        try:
            _guard_writer(bus)
            bus.export(OBJECT_PATH, ClusterInterface(self._source, lambda: self.stats))
            bus.add_message_handler(lambda msg: self._gate(bus, msg))
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise _NameUnavailable(f"{BUS_NAME} is owned by another connection ({reply.name})")
        except BaseException:
            bus.disconnect()
            raise
        return bus

    async def _serve(self, bus: MessageBus) -> None:
        self._connects += 1
        self._announced = property_values(self._source.snapshot())
        self._outbox = _Outbox(bus, MAX_UNSENT_MESSAGES)
        self._connected.set()
        log.info("D-Bus: serving %s as %s", BUS_NAME, bus.unique_name)
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except (OSError, DBusError, EOFError) as err:
            log.warning("D-Bus: bus connection failed: %s", err)
        finally:
            self._outbox.close()
            self._outbox = None
            self._connected.clear()
            self._drops.drop("not connected", self._flush_queue())
            if bus.connected:
                bus.disconnect()

    def _flush_queue(self) -> int:
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped

    # -- notices → signals --

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < DRAIN_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            outbox = self._outbox
            if outbox is None:
                self._drops.drop("not connected", len(batch))
                continue
            try:
                for notice in batch:
                    for msg in _signals_for(notice):
                        await outbox.send(msg)
                        self._signals_sent += 1
                changed = self._changed_properties()
                if changed:
                    await outbox.send(_properties_changed(changed))
                    self._signals_sent += 1
            except _OutboxClosed:
                self._drops.drop("not connected", len(batch))

    def _changed_properties(self) -> dict[str, Any]:
        current = property_values(self._source.snapshot())
        changed = {k: v for k, v in current.items() if self._announced.get(k) != v}
        self._announced = current
        return changed

    # -- privileged calls --

    def _gate(self, bus: MessageBus, msg: Message) -> bool | None:
        """Take privileged calls away from dbus-fast's dispatch: they need an async uid check."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != OBJECT_PATH:
            return None
        if msg.interface not in (INTERFACE, None):
            return None
        method = _ADMIN_METHODS.get(msg.member or "")
        if method is None or msg.signature != method.signature:
            return None
        if len(self._admin_tasks) >= MAX_PENDING_ADMIN_CALLS:
            _reply(bus, msg, Message.new_error(msg, ERROR_BUSY, "too many privileged calls in progress"))
            return True
        task = asyncio.create_task(self._admin_call(bus, msg, method))
        self._admin_tasks.add(task)
        task.add_done_callback(self._admin_tasks.discard)
        return True

    async def _admin_call(self, bus: MessageBus, msg: Message, method: _AdminMethod) -> None:
        self._admin_calls += 1
        request = method.build(msg.body)
        uid = await _caller_uid(bus, msg.sender)
        if uid not in PRIVILEGED_UIDS:
            self._admin_denied += 1
            who = "unknown uid" if uid is None else f"uid {uid}"
            log.warning("D-Bus: refused %s from %s (%s): root only", request, who, msg.sender)
            text = f"{msg.member} is for root only (caller is {who})"
            _reply(bus, msg, Message.new_error(msg, ERROR_PERMISSION_DENIED, text))
            return
        log.info("D-Bus: %s requested by uid %d (%s)", request, uid, msg.sender)
        try:
            async with asyncio.timeout(ADMIN_CALL_TIMEOUT_S):
                result = await self._source.submit(request)
        except UsageError as err:
            reply = Message.new_error(msg, ERROR_PREFIX + _error_suffix(err.code), str(err))
        except TimeoutError:
            text = f"no outcome within {ADMIN_CALL_TIMEOUT_S:.0f} s"
            reply = Message.new_error(msg, ERROR_TIMEOUT, text)
        except Exception:  # a backend bug must not take the bus edge down; the caller learns it failed
            log.exception("D-Bus: %s failed inside the daemon", request)
            reply = Message.new_error(msg, ERROR_FAILED, "internal error; see the cmanlkd log")
        else:
            reply = Message.new_method_return(msg, "s", [str(result)])
        _reply(bus, msg, reply)


class _NameUnavailable(Exception):
    """Another connection owns org.cmanlk.Cluster (a second cmanlkd?)."""


class _OutboxClosed(Exception):
    """The connection of an outbox went away while a signal waited for room."""


class _Outbox:
    """Sends our signals through dbus-fast keeping at most `bound` of them unwritten."""

    def __init__(self, bus: MessageBus, bound: int) -> None:
        self._bus = bus
        self._bound = bound
        self._unsent = 0
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    async def send(self, msg: Message) -> None:
        """Hand `msg` to the bus, first waiting while `bound` messages are unwritten.

        Raises _OutboxClosed when the connection is (or goes) away.
        """
        while self._unsent >= self._bound and not self._closed:
            self._room.clear()
            await self._room.wait()
        if self._closed or not self._bus.connected:
            raise _OutboxClosed
        self._unsent += 1
        self._bus.send(msg).add_done_callback(self._written)

    def close(self) -> None:
        self._closed = True
        self._room.set()

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._unsent -= 1
        self._room.set()
        if not fut.cancelled() and fut.exception() is not None:
            log.debug("D-Bus: signal not sent: %s", fut.exception())


class _EagainTolerantSocket:
    """The bus socket as dbus-fast's writer sees it: a full send buffer is 0 bytes written.

    dbus-fast's writer calls `send()` directly when it queues a message and takes any exception
    for a dead connection (see the module docstring); with 0 it waits for writability instead.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _guard_writer(bus: MessageBus) -> None:
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if isinstance(sock, socket.socket):
        writer.sock = _EagainTolerantSocket(sock)  # type: ignore[union-attr]
    else:  # a dbus-fast whose writer looks different: run unguarded, but say so
        log.warning("D-Bus: cannot guard dbus-fast's writer; a stalled bus may drop the connection")


class _DropCounter:
    """Counts dropped notices by reason and warns at most once per DROP_WARNING_INTERVAL_S."""

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self._since_warning = 0
        self._last_warning = -DROP_WARNING_INTERVAL_S

    def drop(self, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.total += count
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        self._since_warning += count
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_INTERVAL_S:
            log.warning(
                "D-Bus: dropped %d notice(s) (%s; %d in total): bus clients missed signals, "
                "properties stay current",
                self._since_warning,
                reason,
                self.total,
            )
            self._since_warning = 0
            self._last_warning = now


def _signals_for(notice: Notice) -> list[Message]:
    match notice:
        case MembershipNotice(ring_id, members, joined, left):
            departures = [[int(d.nodeid), d.reason] for d in left]
            body = [_ring(ring_id), _members(members), _members(joined), departures]
            out = [_signal("MembershipChanged", "(ut)a(us)a(us)a(us)", body)]
            out += [_signal("NodeLeft", "us", [int(d.nodeid), d.reason]) for d in left]
            out += [_signal("NodeJoined", "us", [int(m.nodeid), m.name]) for m in joined]
            return out
        case QuorumNotice(quorate, quorum, total_votes):
            return [_signal("QuorumChanged", "buu", [quorate, quorum, total_votes])]
        case LinkNotice(nodeid, link, up):
            return [_signal("LinkStatusChanged", "uub", [int(nodeid), link, up])]
        case LockspaceNotice(name, state):
            return [_signal("LockspaceStateChanged", "ss", [name, state])]
        case StatusNotice():
            return []


def _signal(member: str, signature: str, body: list[Any]) -> Message:
    return Message.new_signal(OBJECT_PATH, INTERFACE, member, signature, body)


def _properties_changed(changed: dict[str, Any]) -> Message:
    variants = {name: Variant(_PROPERTIES[name][0], value) for name, value in changed.items()}
    body = [INTERFACE, variants, []]
    return Message.new_signal(
        OBJECT_PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as", body
    )


async def _caller_uid(bus: MessageBus, sender: str | None) -> int | None:
    """Return the uid of connection `sender` as the bus daemon knows it, None when it cannot say."""
    if not sender:
        return None
    query = Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="GetConnectionUnixUser",
        signature="s",
        body=[sender],
    )
    try:
        async with asyncio.timeout(UID_LOOKUP_TIMEOUT_S):
            reply = await bus.call(query)
    except (TimeoutError, OSError, DBusError) as err:
        log.warning("D-Bus: cannot learn the uid of %s: %s", sender, err)
        return None
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN or reply.signature != "u":
        return None
    return int(reply.body[0])


def _reply(bus: MessageBus, call: Message, reply: Message) -> None:
    if call.flags & MessageFlag.NO_REPLY_EXPECTED or not bus.connected:
        return
    bus.send(reply)


def _error_suffix(code: str) -> str:
    """UsageError code → last element of a D-Bus error name ("not_quorate" → "NotQuorate")."""
    words = re.split(r"[^A-Za-z0-9]+", code)
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    return name if name and not name[0].isdigit() else "Failed"
