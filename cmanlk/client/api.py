"""Python client of cmanlkd's local API (docs/ipc.md), in a blocking and an asyncio flavour.

    with Client.connect() as c:                      # /run/cmanlk/cmanlk.sock
        print(c.membership()["members"])
        c.cpg_join("mygroup")
        c.cpg_send("mygroup", b"hello")
        for ev in c.events(timeout=5):               # cpg_deliver, cpg_confchg, track, quorum, flow
            ...

    async with await AsyncClient.connect() as c:
        async for view in c.track():
            ...

Both flavours have the same methods with the same arguments (an AsyncClient's return
awaitables); each method is written once, as an operation of cmanlk/client/operations.py, and
the two classes here only carry out its reads and writes (operations.py has the bodies). Every call raises
`ClientError(code, message)` with the daemon's stable error code (`code`, and the
cmanlk.errors.ErrorCode as `error`), or `ConnectionClosed` when the daemon goes away. Events that
arrive while a call waits for its reply are kept, in order, for `next_event()` / `events()`.

Flow control: `cpg_send` retries `try_again` (the daemon's send window is full, or membership
is being synchronised) with a growing pause, up to `retry_timeout_s`; then it raises. The
daemon tells a client that reads too slowly with a `flow` event {state: "slow"} and disconnects
it past its queue bound, so read events promptly.

Pipelined sends (protocol version 2, docs/ipc.md): `cpg_mcast` writes one compact frame and
returns without waiting for the daemon; `cpg_mcast_many` writes many in one syscall. At most the
daemon's window (`hello`'s `mcast_window`: 4096 messages / 2 MiB) is outstanding — sent and not
yet acknowledged; past it the call reads the acknowledgements (keeping events) until there is
room, or, with `block=False`, returns False at once (libcpg's CS_ERR_TRY_AGAIN). The daemon
retries its own try_again in order, so a pipelined send is refused only for a real reason
(`not_exist`, `too_large`, ...) or after 10 s of try_again; such a refusal is raised as
`SendError` (naming the message's `seq`) by the next cpg_mcast / cpg_mcast_many / cpg_send /
cpg_flush. `cpg_flush` waits until everything sent is acknowledged. Against a version-1 daemon
`cpg_mcast` falls back to the request/reply `cpg_send`.

    with Client.connect() as c:
        c.cpg_join("g")
        for chunk in chunks:
            c.cpg_mcast("g", chunk)                  # no round trip per message
        c.cpg_flush()                                # raises SendError if one was refused
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from cmanlk.client import operations as ops
from cmanlk.client import proto as ipcproto
from cmanlk.client.connection import (
    MAX_BUFFERED_EVENTS,
    POLL,
    WRITE_COALESCE_BYTES,
    ClientError,
    Connection,
    ConnectionClosed,
    Event,
    Operation,
    SendError,
    Write,
)
from cmanlk.errors import ErrorCode

__all__ = ["AsyncClient", "Client", "ClientError", "ConnectionClosed", "Event", "SendError"]

CONNECT_TIMEOUT_S = 5.0
RECV_BYTES = 256 * 1024

P = ParamSpec("P")
T = TypeVar("T")


class _Method(Generic[P, T]):
    """A method of both clients: the operation `build` run by the instance's own I/O. On a
    Client it returns the result, on an AsyncClient an awaitable of it.

    The bound method is made once per instance and kept in its __dict__ (this descriptor has no
    __set__, so the instance attribute wins from then on): cpg_mcast is called per message.
    """

    def __init__(self, build: Callable[Concatenate[Connection, P], Operation[T]]) -> None:
        self._build = build
        self._name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Method[P, T]: ...

    @overload
    def __get__(self, obj: Client, owner: type[Any]) -> Callable[P, T]: ...

    @overload
    def __get__(self, obj: AsyncClient, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: _Api | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, drive, conn = self._build, obj._drive, obj._conn

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return drive(build(conn, *args, **kwargs))

        obj.__dict__[self._name] = method
        return method


class _Api:
    """What both clients offer; every method's body is an operation in operations.py."""

    _conn: Connection

    def _drive(self, op: Operation[Any]) -> Any:
        raise NotImplementedError

    call = _Method(ops.call)
    status = _Method(ops.status)
    membership = _Method(ops.membership)
    quorum = _Method(ops.quorum)
    nodes = _Method(ops.nodes)
    links = _Method(ops.links)
    stats = _Method(ops.stats)
    groups = _Method(ops.groups)
    dlm = _Method(ops.dlm)
    track_start = _Method(ops.track_start)
    track_stop = _Method(ops.track_stop)
    next_event = _Method(ops.next_event)
    cpg_receive = _Method(ops.cpg_receive)
    cpg_join = _Method(ops.cpg_join)
    cpg_leave = _Method(ops.cpg_leave)
    cpg_send = _Method(ops.cpg_send)
    cpg_mcast = _Method(ops.cpg_mcast)
    cpg_mcast_many = _Method(ops.cpg_mcast_many)
    cpg_flush = _Method(ops.cpg_flush)
    set_expected = _Method(ops.set_expected)
    set_votes = _Method(ops.set_votes)
    leave = _Method(ops.leave)
    kill = _Method(ops.kill)
    fence_ack = _Method(ops.fence_ack)

    @property
    def server(self) -> dict[str, Any]:
        """The daemon's hello result (version, node_id, cluster_name, capabilities, …)."""
        return self._conn.server

    @property
    def slow(self) -> bool:
        """The daemon reported this connection slow (flow "slow") and not "ok" since."""
        return self._conn.slow

    @property
    def mcast_outstanding(self) -> tuple[int, int]:
        """(messages, payload bytes) sent with cpg_mcast and not yet acknowledged by the daemon."""
        return self._conn.outstanding


def _hello_name() -> str:
    return f"cmanlk.client pid {os.getpid()}"


def _cannot_connect(path: str, exc: OSError) -> ConnectionClosed:
    return ConnectionClosed(f"cannot connect to {path}: {exc.strerror} (is cmanlkd running?)")


class Client(_Api):
    """A blocking connection to cmanlkd. Not thread-safe: use one per thread.

    Every wait is a poll() of our own on a non-blocking socket, so a send that cannot go on reads
    meanwhile (the daemon may be writing to us) and no call blocks past its bound.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._conn = Connection()

    @classmethod
    def connect(
        cls,
        path: str = ipcproto.DEFAULT_SOCKET_PATH,
        timeout: float = CONNECT_TIMEOUT_S,
        *,
        versions: tuple[int, ...] = ipcproto.SUPPORTED_VERSIONS,
    ) -> Client:
        """Connect and negotiate the protocol version (the highest of `versions` the daemon speaks).

        Raises ConnectionClosed when nobody listens at `path` (ENOENT/ECONNREFUSED) and
        ClientError for a refusal (permission_denied, version_unsupported, no_resources).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise _cannot_connect(path, exc) from None
        except PermissionError as exc:
            sock.close()
            raise ClientError(ErrorCode.PERMISSION_DENIED, f"{path}: {exc.strerror}") from None
        client = cls(sock)
        try:
            client._drive(ops.hello(client._conn, _hello_name(), versions))
        except BaseException:
            client.close()
            raise
        return client

    def fileno(self) -> int:
        """The socket's descriptor, for select/poll loops (readable: call `next_event(0)`)."""
        return self._sock.fileno()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the daemon makes our cpg processes leave with reason 5)."""
        self._conn.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def track(self, *, quorum: bool = False, changes_only: bool = False) -> Iterator[Event]:
        """Subscribe and yield events (current view first) until the connection closes."""
        self.track_start(quorum=quorum, changes_only=changes_only)
        while (event := self.next_event(None)) is not None:
            yield event

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until none arrives for `timeout` seconds (None: forever)."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    # --- the I/O of an operation ------------------------------------------------------------------

    def _drive(self, op: Operation[T]) -> T:
        send, monotonic, write, recv_once = op.send, time.monotonic, self._write, self._recv_once
        try:
            step = next(op)
            while True:
                try:
                    if isinstance(step, Write):
                        write(step.data, step.timeout_s)
                    elif not recv_once() and step is not POLL:
                        self._read(step.until)
                except BaseException:
                    op.close()
                    raise
                step = send(monotonic())
        except StopIteration as done:
            result: T = done.value
            return result

    def _read(self, until: float | None) -> None:
        """Wait for the socket to be readable until `until` (after a read that found nothing)."""
        if self._conn.closed:
            return
        left = None if until is None else until - time.monotonic()
        if left is not None and left <= 0:
            return
        self._poll.poll(None if left is None else max(1, int(left * 1000 + 0.999)))
        self._recv_once()

    def _write(self, data: bytes, timeout_s: float) -> None:
        """Send `data`, reading (into the connection) while the socket is full.

        Raises ClientError(timeout) past `timeout_s`; ConnectionClosed (or the refusal the daemon
        sent before it hung up, such as permission_denied) when the socket fails.
        """
        sock = self._sock
        try:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            self._write_rest(memoryview(data)[sent:], time.monotonic() + timeout_s)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if not self._recv_once():  # a refusal it sent before hanging up?
                    self._read(time.monotonic() + 1.0)
            self._conn.close(ConnectionClosed(f"send failed: {exc}"))
            self._conn.raise_failure()

    def _write_rest(self, view: memoryview, deadline: float) -> None:
        sock = self._sock
        self._poll.modify(sock.fileno(), select.POLLIN | select.POLLOUT)
        try:
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(ErrorCode.TIMEOUT, "the daemon did not read our request in time")
                ready = self._poll.poll(left * 1000)
                if any(ev & (select.POLLIN | select.POLLHUP | select.POLLERR) for _, ev in ready):
                    self._recv_once()
                with contextlib.suppress(BlockingIOError):
                    view = view[sock.send(view) :]
        finally:
            self._poll.modify(sock.fileno(), select.POLLIN)

    def _recv_once(self) -> bool:
        """Read what the socket holds (never waits); returns False when it held nothing."""
        conn = self._conn
        if conn.closed:
            return False
        try:
            data = self._sock.recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            conn.close(ConnectionClosed(f"receive failed: {exc}"))
            return False
        if not data:
            conn.close()
            return False
        conn.receive(data)
        if conn.backlogged:
            message = f"more than {MAX_BUFFERED_EVENTS} unread events; read events() sooner"
            conn.close(ConnectionClosed(message))
            with contextlib.suppress(OSError):
                self._sock.close()
        return True


class AsyncClient(_Api):
    """An asyncio connection to cmanlkd. One reader task hands what the daemon sends to the
    connection; operations wait for it. Calls from several tasks may run at once.

    While MAX_BUFFERED_EVENTS events are unread the reader stops: the socket fills and the daemon
    flags, then drops, this client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = Connection()
        self._waiters: list[asyncio.Future[None]] = []
        self._room = asyncio.Event()  # set when the application has read events again
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        path: str = ipcproto.DEFAULT_SOCKET_PATH,
        connect_s: float = CONNECT_TIMEOUT_S,
        *,
        versions: tuple[int, ...] = ipcproto.SUPPORTED_VERSIONS,
    ) -> AsyncClient:
        """Connect and negotiate the protocol version (see Client.connect)."""
        try:
            opening = asyncio.open_unix_connection(path, limit=2**20)
            reader, writer = await asyncio.wait_for(opening, connect_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _cannot_connect(path, exc) from None
        client = cls(reader, writer)
        try:
            await client._drive(ops.hello(client._conn, _hello_name(), versions))
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and stop the reader task."""
        self._conn.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def track(self, *, quorum: bool = False, changes_only: bool = False) -> AsyncIterator[Event]:
        """Subscribe and yield events (current view first) until the connection closes."""
        await self.track_start(quorum=quorum, changes_only=changes_only)
        while (event := await self.next_event(None)) is not None:
            yield event

    # --- the I/O of an operation ------------------------------------------------------------------

    async def _drive(self, op: Operation[T]) -> T:
        try:
            step = next(op)
            while True:
                try:
                    if isinstance(step, Write):
                        await self._write(step.data, step.timeout_s)
                    elif step.until is None or step.until > time.monotonic():
                        await self._read(step.until)
                except BaseException:
                    op.close()
                    raise
                if not self._conn.backlogged:
                    self._room.set()
                step = op.send(time.monotonic())
        except StopIteration as done:
            result: T = done.value
            return result

    async def _read(self, until: float | None) -> None:
        """Wait until the reader hands over more, the connection ends, or `until`."""
        if self._conn.closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            left = None if until is None else until - time.monotonic()
            await asyncio.wait_for(waiter, left)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _write(self, data: bytes, timeout_s: float) -> None:
        self._conn.raise_failure()
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size() > WRITE_COALESCE_BYTES:
                # only when the kernel is behind: no yield per message
                await asyncio.wait_for(self._writer.drain(), timeout_s)
        except TimeoutError:
            raise ClientError(ErrorCode.TIMEOUT, "the daemon did not read our request in time") from None
        except OSError as exc:
            self._conn.close(ConnectionClosed(f"send failed: {exc}"))
            self._conn.raise_failure()

    async def _read_loop(self) -> None:
        conn = self._conn
        try:
            while True:
                while conn.backlogged:
                    self._room.clear()
                    await self._room.wait()
                data = await self._reader.read(RECV_BYTES)
                if not data:
                    return
                conn.receive(data)
                self._wake()
        except (ConnectionClosed, OSError):
            return
        finally:
            conn.close()
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
