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

Every call raises `ClientError(code, message)` with the daemon's stable error code
(ipcproto.E_* and the service codes in docs/ipc.md), or `ConnectionClosed` when the daemon goes
away. Events that arrive while a call waits for its reply are kept, in order, for `events()`.

Flow control: `cpg_send` retries `try_again` (the daemon's send window is full, or membership
is being synchronised) with a growing pause, up to `retry_timeout_s`; then it raises. The
daemon tells a client that reads too slowly with a `flow` event {state: "slow"} and disconnects
it past its queue bound, so read events promptly (`events()`, or `AsyncClient`'s queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cmanlk import ipcproto
from cmanlk.errors import CmanlkError

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0
"""A reply the daemon owes for longer than this is given up on (the daemon's own bound is 10 s)."""
SEND_RETRY_TIMEOUT_S = 10.0
RETRY_PAUSE_S = (0.001, 0.1)
"""First and longest pause between try_again retries; the pause doubles each time."""
MAX_BUFFERED_EVENTS = 65536
"""Events kept while a call waits (blocking client); past it the connection is closed."""


class ClientError(CmanlkError):
    """The daemon refused a request: `code` is its stable error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class ConnectionClosed(ClientError):
    """The daemon closed the connection (or it was never open)."""

    def __init__(self, message: str = "connection closed by the daemon") -> None:
        super().__init__("connection_closed", message)


@dataclass(frozen=True, slots=True)
class Event:
    """An event from the daemon: `name` (track, quorum, cpg_deliver, cpg_confchg,
    cpg_totem_confchg, flow), its `data` and, for cpg_deliver, the message in `payload`."""

    name: str
    data: dict[str, Any]
    payload: bytes = b""


def _cannot_connect(path: str, exc: OSError) -> str:
    return f"cannot connect to {path}: {exc.strerror} (is cmanlkd running?)"


def _hello_args() -> dict[str, Any]:
    return {"versions": list(ipcproto.SUPPORTED_VERSIONS), "client": f"cmanlk.client pid {os.getpid()}"}


def _result(frame: ipcproto.Frame) -> dict[str, Any]:
    if frame.kind == ipcproto.ERROR:
        raise ClientError(str(frame.header.get("code", "unknown")), str(frame.header.get("message", "")))
    result = frame.header.get("result", {})
    return result if isinstance(result, dict) else {}


def _as_event(frame: ipcproto.Frame) -> Event:
    data = frame.header.get("data", {})
    return Event(str(frame.header.get("event", "")), data if isinstance(data, dict) else {}, frame.payload)


class Client:
    """A blocking connection to cmanlkd. Not thread-safe: use one per thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = ipcproto.FrameDecoder()
        self._frames: deque[ipcproto.Frame | ipcproto.ProtocolError] = deque()
        self._events: deque[Event] = deque()
        self._next_id = 0
        self.server: dict[str, Any] = {}
        self.slow = False

    @classmethod
    def connect(cls, path: str = ipcproto.DEFAULT_SOCKET_PATH, timeout: float = CONNECT_TIMEOUT_S) -> Client:
        """Connect and negotiate the protocol version.

        Raises ConnectionClosed when nobody listens at `path` (ENOENT/ECONNREFUSED) and
        ClientError for a refusal (permission_denied, version_unsupported).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise ConnectionClosed(_cannot_connect(path, exc)) from None
        except PermissionError as exc:
            sock.close()
            raise ClientError(ipcproto.E_PERMISSION_DENIED, f"{path}: {exc.strerror}") from None
        client = cls(sock)
        try:
            client.server = client.call("hello", _hello_args())
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the daemon makes our cpg processes leave with reason 5)."""
        with contextlib.suppress(OSError):
            self._sock.close()

    # --- the generic call ------------------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> dict[str, Any]:
        """Send one request and return its result. Raises ClientError / ConnectionClosed."""
        self._next_id += 1
        request_id = self._next_id
        try:
            self._sock.settimeout(CALL_TIMEOUT_S)
            self._sock.sendall(ipcproto.request(request_id, op, args, payload))
        except ipcproto.ProtocolError as exc:
            raise ClientError(exc.code, str(exc)) from None
        except OSError as exc:
            self._raise_refusal()
            raise ConnectionClosed(f"send failed: {exc}") from None
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            frame = self._next_frame(deadline - time.monotonic())
            if frame is None:
                raise ClientError(ipcproto.E_TIMEOUT, f"no reply to {op} in {CALL_TIMEOUT_S} s")
            if frame.kind == ipcproto.EVENT:
                self._keep(_as_event(frame))
                continue
            if frame.header.get("id") in (request_id, None):
                return _result(frame)

    # --- queries ----------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Node id, cluster name, totem state, ring id, members, quorate."""
        return self.call("status")

    def membership(self) -> dict[str, Any]:
        """{ring_id, ring_seq, ring_rep, members: [{nodeid, name, addresses}]}."""
        return self.call("membership")

    def quorum(self) -> dict[str, Any]:
        """votequorum's state: quorate, quorum, total_votes, expected_votes, flags, …."""
        return self.call("quorum")

    def nodes(self) -> list[dict[str, Any]]:
        """Configured and seen nodes: nodeid, name, addresses, votes, state, local."""
        return list(self.call("nodes").get("nodes", []))

    def links(self) -> list[dict[str, Any]]:
        """Per node and link: up/down and counters."""
        return list(self.call("links").get("links", []))

    def stats(self) -> dict[str, Any]:
        """Daemon and IPC counters."""
        return self.call("stats")

    def groups(self) -> list[dict[str, Any]]:
        """cpg groups: [{name, members: [[nodeid, pid], …]}]."""
        return list(self.call("groups").get("groups", []))

    def dlm(self) -> dict[str, Any]:
        """DLM lockspaces (ClientError not_supported when the daemon has no DLM glue)."""
        return self.call("dlm")

    # --- tracking and events --------------------------------------------------------------------------

    def track_start(
        self, *, membership: bool = True, quorum: bool = False, changes_only: bool = False
    ) -> None:
        """Subscribe: the current view comes first as a `track` event, then every change."""
        self.call("track_start", {"membership": membership, "quorum": quorum, "changes_only": changes_only})

    def track_stop(self) -> None:
        """Stop membership and quorum events."""
        self.call("track_stop")

    def track(self, *, quorum: bool = False, changes_only: bool = False) -> Iterator[Event]:
        """Subscribe and yield events (current view first) until the connection closes."""
        self.track_start(quorum=quorum, changes_only=changes_only)
        while True:
            event = self.next_event(None)
            if event is not None:
                yield event

    def next_event(self, timeout: float | None = None) -> Event | None:
        """Return the next event, waiting up to `timeout` seconds (None: forever); None on timeout."""
        if self._events:
            return self._events.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            frame = self._next_frame(left)
            if frame is None:
                return None
            if frame.kind == ipcproto.EVENT:
                event = _as_event(frame)
                self._note_flow(event)
                return event
            if frame.kind == ipcproto.ERROR and frame.header.get("id") is None:
                _result(frame)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until none arrives for `timeout` seconds (None: forever)."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    # --- cpg ----------------------------------------------------------------------------------------------

    def cpg_join(self, group: str, pid: int | None = None, *, initial_totem_conf: bool = False) -> None:
        """Join `group` as `pid` (default: this process). Retries try_again (sync in progress)."""
        args: dict[str, Any] = {"group": group, "initial_totem_conf": initial_totem_conf}
        if pid is not None:
            args["pid"] = pid
        self._retrying("cpg_join", args, b"", SEND_RETRY_TIMEOUT_S)

    def cpg_leave(self, group: str) -> None:
        """Leave `group`; the confchg naming us as left (reason 2) follows as an event."""
        self._retrying("cpg_leave", {"group": group}, b"", SEND_RETRY_TIMEOUT_S)

    def cpg_send(self, group: str, payload: bytes, retry_timeout_s: float = SEND_RETRY_TIMEOUT_S) -> None:
        """Multicast `payload` to `group` in agreed order, waiting out flow control."""
        self._retrying("cpg_send", {"group": group}, payload, retry_timeout_s)

    def cpg_receive(self, timeout: float | None = None) -> Event | None:
        """Return the next cpg event (cpg_deliver, cpg_confchg, cpg_totem_confchg); others are skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.next_event(left)
            if event is None or event.name.startswith("cpg_"):
                return event

    # --- privileged ---------------------------------------------------------------------------------------

    def set_expected(self, expected_votes: int) -> None:
        """Set expected votes cluster-wide (root)."""
        self.call("set_expected", {"expected_votes": expected_votes})

    def set_votes(self, votes: int, nodeid: int = 0) -> None:
        """Set the votes of `nodeid` (0: this node) cluster-wide (root)."""
        self.call("set_votes", {"votes": votes, "nodeid": nodeid})

    def leave(self) -> None:
        """Make this node leave the cluster cleanly (root)."""
        self.call("leave")

    def kill(self, nodeid: int) -> None:
        """Ask node `nodeid` to leave the cluster (root)."""
        self.call("kill", {"nodeid": nodeid})

    def fence_ack(self, nodeid: int) -> None:
        """Confirm node `nodeid` is fenced/off so DLM recovery may go on (root)."""
        self.call("fence_ack", {"nodeid": nodeid})

    # --- internals ----------------------------------------------------------------------------------------

    def _retrying(self, op: str, args: dict[str, Any], payload: bytes, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        pause = RETRY_PAUSE_S[0]
        while True:
            try:
                return self.call(op, args, payload)
            except ClientError as exc:
                if exc.code != ipcproto.E_TRY_AGAIN or time.monotonic() + pause > deadline:
                    raise
            self._pump(pause)
            pause = min(pause * 2, RETRY_PAUSE_S[1])

    def _pump(self, seconds: float) -> None:
        """Wait `seconds`, keeping the events that arrive (so our daemon-side queue drains)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            frame = self._next_frame(left)
            if frame is not None and frame.kind == ipcproto.EVENT:
                self._keep(_as_event(frame))

    def _raise_refusal(self) -> None:
        """After a failed send: raise the daemon's refusal (permission_denied …) if it sent one."""
        with contextlib.suppress(ConnectionClosed, OSError):
            frame = self._next_frame(1.0)
            if frame is not None and frame.kind == ipcproto.ERROR:
                _result(frame)

    def _keep(self, event: Event) -> None:
        self._note_flow(event)
        if len(self._events) >= MAX_BUFFERED_EVENTS:
            self.close()
            raise ConnectionClosed(f"more than {MAX_BUFFERED_EVENTS} unread events; read events() sooner")
        self._events.append(event)

    def _note_flow(self, event: Event) -> None:
        if event.name == ipcproto.EV_FLOW:
            self.slow = event.data.get("state") == "slow"

    def _next_frame(self, timeout: float | None) -> ipcproto.Frame | None:
        while not self._frames:
            if timeout is not None and timeout <= 0:
                return None
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(256 * 1024)
            except TimeoutError:
                return None
            except OSError as exc:
                raise ConnectionClosed(f"receive failed: {exc}") from None
            if not data:
                raise ConnectionClosed()
            try:
                self._frames.extend(self._decoder.feed(data))
            except ipcproto.ProtocolError as exc:
                self.close()
                raise ConnectionClosed(f"broken frame from the daemon: {exc}") from None
        item = self._frames.popleft()
        if isinstance(item, ipcproto.ProtocolError):
            raise ClientError(item.code, str(item))
        return item


class AsyncClient:
    """An asyncio connection to cmanlkd. One reader task dispatches replies and queues events.

    The event queue is bounded (MAX_BUFFERED_EVENTS): when the application stops reading, the
    reader stops too, the socket fills and the daemon flags, then drops, this client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[ipcproto.Frame]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(MAX_BUFFERED_EVENTS)
        self._next_id = 0
        self._closed = False
        self._task = asyncio.create_task(self._read_loop())
        self.server: dict[str, Any] = {}
        self.slow = False

    @classmethod
    async def connect(
        cls, path: str = ipcproto.DEFAULT_SOCKET_PATH, connect_s: float = CONNECT_TIMEOUT_S
    ) -> AsyncClient:
        """Connect and negotiate the protocol version (see Client.connect for errors)."""
        try:
            opening = asyncio.open_unix_connection(path, limit=2**20)
            reader, writer = await asyncio.wait_for(opening, connect_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionClosed(_cannot_connect(path, exc)) from None
        client = cls(reader, writer)
        try:
            client.server = await client.call("hello", _hello_args())
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
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def call(self, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> dict[str, Any]:
        """Send one request and return its result. Raises ClientError / ConnectionClosed."""
        if self._closed:
            raise ConnectionClosed()
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[ipcproto.Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                self._writer.write(ipcproto.request(request_id, op, args, payload))
                await self._writer.drain()
            except ipcproto.ProtocolError as exc:
                raise ClientError(exc.code, str(exc)) from None
            except OSError as exc:
                raise ConnectionClosed(f"send failed: {exc}") from None
            try:
                frame = await asyncio.wait_for(future, CALL_TIMEOUT_S)
            except TimeoutError:
                raise ClientError(ipcproto.E_TIMEOUT, f"no reply to {op} in {CALL_TIMEOUT_S} s") from None
        finally:
            self._pending.pop(request_id, None)
        return _result(frame)

    async def status(self) -> dict[str, Any]:
        return await self.call("status")

    async def membership(self) -> dict[str, Any]:
        return await self.call("membership")

    async def quorum(self) -> dict[str, Any]:
        return await self.call("quorum")

    async def nodes(self) -> list[dict[str, Any]]:
        return list((await self.call("nodes")).get("nodes", []))

    async def groups(self) -> list[dict[str, Any]]:
        return list((await self.call("groups")).get("groups", []))

    async def track(self, *, quorum: bool = False, changes_only: bool = False) -> AsyncIterator[Event]:
        """Subscribe and yield events (current view first) until the connection closes."""
        await self.call("track_start", {"membership": True, "quorum": quorum, "changes_only": changes_only})
        while (event := await self.next_event()) is not None:
            yield event

    async def next_event(self, wait_s: float | None = None) -> Event | None:
        """The next event, waiting up to `wait_s` (None: forever); None on timeout or close."""
        try:
            return await asyncio.wait_for(self._events.get(), wait_s)
        except TimeoutError:
            return None

    async def cpg_join(self, group: str, pid: int | None = None, *, initial_totem_conf: bool = False) -> None:
        args: dict[str, Any] = {"group": group, "initial_totem_conf": initial_totem_conf}
        if pid is not None:
            args["pid"] = pid
        await self._retrying("cpg_join", args, b"", SEND_RETRY_TIMEOUT_S)

    async def cpg_leave(self, group: str) -> None:
        await self._retrying("cpg_leave", {"group": group}, b"", SEND_RETRY_TIMEOUT_S)

    async def cpg_send(
        self, group: str, payload: bytes, retry_timeout_s: float = SEND_RETRY_TIMEOUT_S
    ) -> None:
        """Multicast `payload` to `group`, waiting out flow control (try_again) up to the timeout."""
        await self._retrying("cpg_send", {"group": group}, payload, retry_timeout_s)

    async def cpg_receive(self, wait_s: float | None = None) -> Event | None:
        """The next cpg event (others are skipped); None on timeout."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = await self.next_event(left)
            if event is None or event.name.startswith("cpg_"):
                return event

    async def set_expected(self, expected_votes: int) -> None:
        await self.call("set_expected", {"expected_votes": expected_votes})

    async def set_votes(self, votes: int, nodeid: int = 0) -> None:
        await self.call("set_votes", {"votes": votes, "nodeid": nodeid})

    async def leave(self) -> None:
        await self.call("leave")

    async def kill(self, nodeid: int) -> None:
        await self.call("kill", {"nodeid": nodeid})

    async def fence_ack(self, nodeid: int) -> None:
        await self.call("fence_ack", {"nodeid": nodeid})

    async def _retrying(
        self, op: str, args: dict[str, Any], payload: bytes, timeout_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        pause = RETRY_PAUSE_S[0]
        while True:
            try:
                return await self.call(op, args, payload)
            except ClientError as exc:
                if exc.code != ipcproto.E_TRY_AGAIN or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_S[1])

    async def _read_loop(self) -> None:
        decoder = ipcproto.FrameDecoder()
        try:
            while True:
                data = await self._reader.read(256 * 1024)
                if not data:
                    return
                for item in decoder.feed(data):
                    if isinstance(item, ipcproto.ProtocolError):
                        continue
                    await self._dispatch(item)
        except (ipcproto.ProtocolError, OSError):
            return
        finally:
            self._closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionClosed())
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(None)

    async def _dispatch(self, frame: ipcproto.Frame) -> None:
        if frame.kind == ipcproto.EVENT:
            event = _as_event(frame)
            if event.name == ipcproto.EV_FLOW:
                self.slow = event.data.get("state") == "slow"
            await self._events.put(event)
            return
        request_id = frame.header.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is not None and not future.done():
            future.set_result(frame)
        elif request_id is None and frame.kind == ipcproto.ERROR:
            for pending in self._pending.values():  # a connection-level refusal answers everything
                if not pending.done():
                    pending.set_result(frame)
