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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import (
    BusType,
    DBusFastError,
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
)
from dbus_fast.aio import MessageBus

from cmanlk.errors import UsageError
from cmanlk.runtime.dbus_interface import (
    BUS_NAME,
    ERROR_BUSY,
    ERROR_FAILED,
    ERROR_PERMISSION_DENIED,
    ERROR_PREFIX,
    ERROR_TIMEOUT,
    INTERFACE,
    OBJECT_PATH,
    ClusterInterface,
    properties_changed,
    property_values,
    signals_for,
)
from cmanlk.runtime.dbus_status import (
    AdminRequest,
    ClusterStatusSource,
    FenceAck,
    Notice,
    SetExpectedVotes,
    SetVotes,
)
from cmanlk.types import NodeId

__all__ = ["BUS_NAME", "INTERFACE", "OBJECT_PATH", "DbusService", "DbusStats"]

log = logging.getLogger(__name__)

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

    def __init__(
        self,
        source: ClusterStatusSource,
        *,
        queue_bound: int = NOTIFY_QUEUE_BOUND,
        admin_timeout_s: float = ADMIN_CALL_TIMEOUT_S,
    ) -> None:
        """Serve `source`; `queue_bound` notices may wait for the bus, privileged calls get
        `admin_timeout_s` to finish. Nothing connects before `start()` or `run()`."""
        self._source = source
        self._admin_timeout_s = admin_timeout_s
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=queue_bound)
        self._drops = _DropCounter()
        self._outbox: _Outbox | None = None
        self._announced: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._admin_tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._connects = 0
        self._signals_sent = 0
        self._admin_calls = 0
        self._admin_denied = 0

    # -- lifecycle --

    async def start(self, bus_address: str | None = None, *, wait_s: float = CONNECT_TIMEOUT_S) -> bool:
        """Start serving on `bus_address` (None: the system bus) in a background task.

        Returns whether the name was acquired within `wait_s`; when not, the service keeps
        retrying with backoff. Raises RuntimeError when already started.
        """
        if self._task is not None:
            raise RuntimeError("DbusService already started")
        self._task = asyncio.create_task(self.run(bus_address), name="dbus-service")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._connected.wait()
        return self._connected.is_set()

    async def stop(self) -> None:
        """Stop serving and leave the bus (the name is released with the connection)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self) -> None:
        """Return once the service owns its name on the bus (at once when it does now)."""
        await self._connected.wait()

    async def run(self, bus_address: str | None) -> None:
        """Serve until cancelled: keep a bus connection (reconnecting with backoff) and drain notices.

        For a daemon that runs its own TaskGroup; `start()` runs it as a task. Never returns
        normally; a missing or restarting bus is logged and retried, not raised.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_connected(bus_address), name="dbus-connection")
                tasks.create_task(self._drain(), name="dbus-drain")
        finally:
            for task in list(self._admin_tasks):
                task.cancel()

    async def _keep_connected(self, bus_address: str | None) -> None:
        backoff = RECONNECT_MIN_S
        loop = asyncio.get_running_loop()
        where = bus_address or "the system bus"
        while True:
            try:
                bus = await self._connect(bus_address)
            except (OSError, TimeoutError, DBusFastError, _NameUnavailable) as err:
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
            log.warning("D-Bus: connection to %s lost; reconnecting in %.1f s", where, backoff)
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
            bus.export(OBJECT_PATH, ClusterInterface(self._source, lambda: self._drops.total))
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
        except Exception as err:  # whatever ended the connection, we reconnect; say what it was
            log.warning("D-Bus: bus connection failed: %r", err)
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
                    for msg in signals_for(notice):
                        await outbox.send(msg)
                        self._signals_sent += 1
                changed = self._changed_properties()
                if changed:
                    await outbox.send(properties_changed(changed))
                    self._signals_sent += 1
                self._drops.maybe_summarise()
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
            async with asyncio.timeout(self._admin_timeout_s):
                result = await self._source.submit(request)
        except UsageError as err:
            reply = Message.new_error(msg, ERROR_PREFIX + _error_suffix(err.code.wire), str(err))
        except TimeoutError:
            text = f"no outcome within {self._admin_timeout_s:g} s"
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
        self._maybe_warn(reason)

    def maybe_summarise(self) -> None:
        """After the bus caught up: report drops not yet warned about (rate limit permitting)."""
        if self._since_warning:
            self._maybe_warn("bus caught up")

    def _maybe_warn(self, context: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_INTERVAL_S:
            log.warning(
                "D-Bus: dropped %d notice(s) since the last warning (%s; %d in total): "
                "bus clients missed signals, properties stay current",
                self._since_warning,
                context,
                self.total,
            )
            self._since_warning = 0
            self._last_warning = now


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
    except Exception as err:  # fail closed: whatever went wrong, an unknown caller is refused
        log.warning("D-Bus: cannot learn the uid of %s: %r", sender, err)
        return None
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN or reply.signature != "u":
        return None
    return int(reply.body[0])


def _reply(bus: MessageBus, call: Message, reply: Message) -> None:
    if call.flags & MessageFlag.NO_REPLY_EXPECTED or not bus.connected:
        return
    bus.send(reply)


def _error_suffix(code: str) -> str:
    """An error code's wire string → last element of a D-Bus error name ("try_again" → "TryAgain")."""
    words = re.split(r"[^A-Za-z0-9]+", code)
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    return name if name and not name[0].isdigit() else "Failed"
