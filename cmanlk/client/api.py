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
(cmanlk.errors.ErrorCode's wire strings, docs/ipc.md), or `ConnectionClosed` when the daemon goes
away. Events that arrive while a call waits for its reply are kept, in order, for `events()`.

Flow control: `cpg_send` retries `try_again` (the daemon's send window is full, or membership
is being synchronised) with a growing pause, up to `retry_timeout_s`; then it raises. The
daemon tells a client that reads too slowly with a `flow` event {state: "slow"} and disconnects
it past its queue bound, so read events promptly (`events()`, or `AsyncClient`'s queue).

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
import os
import select
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cmanlk.client import proto as ipcproto
from cmanlk.errors import CmanlkError, ErrorCode

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0
"""A reply the daemon owes for longer than this is given up on (the daemon's own bound is 10 s)."""
SEND_RETRY_TIMEOUT_S = 10.0
RETRY_PAUSE_S = (0.001, 0.1)
"""First and longest pause between try_again retries; the pause doubles each time."""
MAX_BUFFERED_EVENTS = 65536
"""Events kept while a call waits (blocking client); past it the connection is closed."""
MAX_SEND_ERRORS = 1024
"""Refusals of pipelined sends kept until the next send raises them (the rest are counted)."""
RECV_BYTES = 256 * 1024
WRITE_COALESCE_BYTES = 256 * 1024
"""cpg_mcast_many joins frames into writes of about this size."""


class ClientError(CmanlkError):
    """The daemon refused a request: `code` is its stable wire string (docs/ipc.md, "Error
    codes"), `error` the ErrorCode it names (None for a code this library does not know)."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        if isinstance(code, ErrorCode):
            self.error: ErrorCode | None = code
            self.code = code.wire
        else:
            self.error = ErrorCode.from_wire(code)
            self.code = code
        super().__init__(f"{self.code}: {message}")


class SendError(ClientError):
    """A pipelined send (cpg_mcast) was refused: `seq` names it (the `seq` cpg_mcast returned),
    `group` its group; `more` counts further refusals reported with it."""

    def __init__(self, code: str, message: str, seq: int, group: str, more: int = 0) -> None:
        self.seq = seq
        self.group = group
        self.more = more
        also = f" (and {more} later sends)" if more else ""
        super().__init__(code, f"pipelined send {seq} to {group!r} refused{also}: {message}")


class ConnectionClosed(ClientError):
    """The daemon closed the connection (or it was never open)."""

    def __init__(self, message: str = "connection closed by the daemon") -> None:
        super().__init__(ErrorCode.CONNECTION_CLOSED, message)


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


class _Pipeline:
    """Bookkeeping of pipelined sends shared by both clients: seqs, the window, refusals."""

    def __init__(self) -> None:
        self.enabled = False
        self.window_messages = ipcproto.MCAST_WINDOW_MESSAGES
        self.window_bytes = ipcproto.MCAST_WINDOW_BYTES
        self.next_seq = 1
        self.unacked: deque[tuple[int, int]] = deque()  # (seq, payload bytes)
        self.unacked_bytes = 0
        self.errors: deque[tuple[int, str, str, str]] = deque()  # seq, group, code, message
        self.errors_dropped = 0

    def configure(self, server: dict[str, Any]) -> bool:
        """Take the daemon's hello result; returns whether compact frames are on."""
        version = server.get("version", 1)
        self.enabled = isinstance(version, int) and version >= ipcproto.COMPACT_VERSION
        window = server.get("mcast_window")
        if isinstance(window, dict):
            self.window_messages = max(1, min(int(window.get("messages", 1)), ipcproto.MCAST_WINDOW_MESSAGES))
            self.window_bytes = max(1, min(int(window.get("bytes", 1)), ipcproto.MCAST_WINDOW_BYTES))
        return self.enabled

    def has_room(self, size: int) -> bool:
        """May a message of `size` bytes be sent now? (One is always allowed when none is out.)"""
        unacked = self.unacked
        if not unacked:
            return True
        return len(unacked) < self.window_messages and self.unacked_bytes + size <= self.window_bytes

    def frame(self, group: str, payload: bytes) -> tuple[int, bytes]:
        """Return (seq, MCAST frame) for the next send and count it as outstanding.

        Raises ClientError(too_large / name_too_long) for what the daemon could not take.
        """
        seq = self.next_seq
        try:
            data = ipcproto.mcast(seq, group.encode(), payload)
        except ipcproto.ProtocolError as exc:
            raise ClientError(exc.code, str(exc)) from None
        self.next_seq = (seq + 1) % ipcproto.SEQ_MODULO
        self.unacked.append((seq, len(payload)))
        self.unacked_bytes += len(payload)
        return seq, data

    def on_ack(self, seq: int) -> None:
        unacked = self.unacked
        while unacked and not ipcproto.seq_after(unacked[0][0], seq):
            self.unacked_bytes -= unacked.popleft()[1]

    def on_error(self, data: dict[str, Any]) -> None:
        if len(self.errors) >= MAX_SEND_ERRORS:
            self.errors_dropped += 1
            return
        seq = data.get("seq", 0)
        self.errors.append(
            (
                seq if isinstance(seq, int) else 0,
                str(data.get("group", "")),
                str(data.get("code", "unknown")),
                str(data.get("message", "")),
            )
        )

    def raise_error(self) -> None:
        """Raise the earliest unreported refusal as SendError (and forget the rest, counted in it)."""
        if not self.errors:
            return
        seq, group, code, message = self.errors.popleft()
        more = len(self.errors) + self.errors_dropped
        self.errors.clear()
        self.errors_dropped = 0
        raise SendError(code, message, seq, group, more)

    def consume(self, frame: ipcproto.Frame) -> bool:
        """Take an MCAST_ACK or a cpg_send_error event; returns False for any other frame."""
        kind = frame.header.get("kind")
        if kind == ipcproto.MCAST_ACK:
            seq = frame.header.get("seq")
            if isinstance(seq, int):
                self.on_ack(seq)
            return True
        if kind == ipcproto.EVENT and frame.header.get("event") == ipcproto.EV_CPG_SEND_ERROR:
            data = frame.header.get("data")
            self.on_error(data if isinstance(data, dict) else {})
            return True
        return False


class Client:
    """A blocking connection to cmanlkd. Not thread-safe: use one per thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Non-blocking from here on: every wait is a poll() of our own, so a send that cannot go
        # on reads meanwhile (the daemon may be writing to us) and no call blocks past its bound.
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._decoder = ipcproto.FrameDecoder()
        self._frames: deque[ipcproto.Frame | ipcproto.ProtocolError] = deque()
        self._events: deque[Event] = deque()
        self._next_id = 0
        self._pipe = _Pipeline()
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
            raise ClientError(ErrorCode.PERMISSION_DENIED, f"{path}: {exc.strerror}") from None
        client = cls(sock)
        try:
            client.server = client.call("hello", _hello_args())
        except BaseException:
            client.close()
            raise
        client._decoder.compact = client._pipe.configure(client.server)
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
        with contextlib.suppress(OSError):
            self._sock.close()

    # --- the generic call ------------------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> dict[str, Any]:
        """Send one request and return its result. Raises ClientError / ConnectionClosed."""
        self._next_id += 1
        request_id = self._next_id
        deadline = time.monotonic() + CALL_TIMEOUT_S
        try:
            self._send_all(ipcproto.request(request_id, op, args, payload), deadline)
        except ipcproto.ProtocolError as exc:
            raise ClientError(exc.code, str(exc)) from None
        except OSError as exc:
            self._raise_refusal()
            raise ConnectionClosed(f"send failed: {exc}") from None
        while True:
            frame = self._next_frame(deadline - time.monotonic())
            if frame is None:
                raise ClientError(ErrorCode.TIMEOUT, f"no reply to {op} in {CALL_TIMEOUT_S} s")
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
                return _as_event(frame)
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
        """Multicast `payload` to `group` in agreed order, waiting for the daemon's acceptance
        (one request/reply round trip; retries try_again up to `retry_timeout_s`).

        Raises SendError first if an earlier pipelined send was refused, ClientError otherwise.
        """
        self._pipe.raise_error()
        self._retrying("cpg_send", {"group": group}, payload, retry_timeout_s)

    def cpg_mcast(
        self, group: str, payload: bytes, *, block: bool = True, timeout_s: float = SEND_RETRY_TIMEOUT_S
    ) -> bool:
        """Pipelined multicast of `payload` to `group` in agreed order: no reply is awaited.

        Returns True once the message is written. When the window of unacknowledged sends is full
        it reads acknowledgements until there is room (up to `timeout_s`, then ClientError
        try_again) or, with `block=False`, returns False at once. Raises SendError when an
        earlier pipelined send was refused, ClientError(too_large / name_too_long) for a message
        the daemon could not take. Against a version-1 daemon this is `cpg_send`.
        """
        pipe = self._pipe
        if pipe.unacked:
            self._recv_once()  # take acknowledgements and refusals that came (never waits)
        pipe.raise_error()
        if not pipe.enabled:
            try:
                self.cpg_send(group, payload, retry_timeout_s=timeout_s if block else 0)
            except ClientError as exc:
                if exc.error is ErrorCode.TRY_AGAIN and not block:
                    return False
                raise
            return True
        if self.slow and not self._wait_until_not_slow(block, timeout_s):
            return False
        if not pipe.has_room(len(payload)) and not self._wait_for_room(len(payload), block, timeout_s):
            return False
        _, frame = pipe.frame(group, payload)
        self._send_all(frame, time.monotonic() + CALL_TIMEOUT_S)
        return True

    def cpg_mcast_many(
        self, group: str, payloads: Iterable[bytes], *, timeout_s: float = SEND_RETRY_TIMEOUT_S
    ) -> int:
        """Pipelined multicast of every payload, in order, joined into few large writes.

        Returns how many were sent (all of them). Waits for window room as cpg_mcast does;
        raises as cpg_mcast (a ClientError after some were sent leaves those sent).
        """
        pipe = self._pipe
        pipe.raise_error()
        if not pipe.enabled:
            count = 0
            for payload in payloads:
                self.cpg_send(group, payload, retry_timeout_s=timeout_s)
                count += 1
            return count
        batch: list[bytes] = []
        size = count = 0
        for payload in payloads:
            if not pipe.has_room(len(payload)):
                if batch:
                    self._send_all(b"".join(batch), time.monotonic() + CALL_TIMEOUT_S)
                    batch, size = [], 0
                self._wait_for_room(len(payload), True, timeout_s)
            _, frame = pipe.frame(group, payload)
            batch.append(frame)
            size += len(frame)
            count += 1
            if size >= WRITE_COALESCE_BYTES:
                self._send_all(b"".join(batch), time.monotonic() + CALL_TIMEOUT_S)
                batch, size = [], 0
        if batch:
            self._send_all(b"".join(batch), time.monotonic() + CALL_TIMEOUT_S)
        return count

    def cpg_flush(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Wait until the daemon has handled every pipelined send; raise the first refusal.

        Raises SendError for a refused send, ClientError(timeout) when acknowledgements do not
        come within `timeout_s`, ConnectionClosed when the daemon goes away.
        """
        deadline = time.monotonic() + timeout_s
        while self._pipe.unacked:
            if not self._pump_frames(deadline - time.monotonic()):
                n = len(self._pipe.unacked)
                message = f"{n} pipelined sends not acknowledged in {timeout_s} s"
                raise ClientError(ErrorCode.TIMEOUT, message)
        self._pipe.raise_error()

    @property
    def mcast_outstanding(self) -> tuple[int, int]:
        """(messages, payload bytes) sent with cpg_mcast and not yet acknowledged by the daemon."""
        return len(self._pipe.unacked), self._pipe.unacked_bytes

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

    def kill(self, nodeid: int, reason: str | None = None) -> None:
        """Ask node `nodeid` to leave the cluster (root); `reason` is logged by the target."""
        self.call("kill", {"nodeid": nodeid, **({"reason": reason} if reason else {})})

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
                if exc.error is not ErrorCode.TRY_AGAIN or time.monotonic() + pause > deadline:
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

    def _pump_frames(self, timeout: float) -> bool:
        """Read what arrives within `timeout` (acknowledgements are taken, other frames kept for
        their readers); returns False when nothing came."""
        if self._recv_once():
            return True
        if timeout <= 0:
            return False
        self._poll.poll(max(1, int(timeout * 1000 + 0.999)))
        return self._recv_once()

    def _wait_for_room(self, size: int, block: bool, timeout_s: float) -> bool:
        """Read acknowledgements until `size` more bytes fit the window; see cpg_mcast."""
        pipe = self._pipe
        return self._pump_until(
            lambda: pipe.has_room(size), block, timeout_s,
            lambda: f"{len(pipe.unacked)} pipelined sends unacknowledged for {timeout_s} s",
        )

    def _wait_until_not_slow(self, block: bool, timeout_s: float) -> bool:
        """The daemon said our events back up (flow "slow"): read them (kept for events()) until it
        says "ok", rather than add to its queue. False at once with `block=False`."""
        return self._pump_until(
            lambda: not self.slow, block, timeout_s,
            lambda: f"the daemon reports this connection slow for {timeout_s} s: read events",
        )

    def _pump_until(
        self, done: Callable[[], bool], block: bool, timeout_s: float, why: Callable[[], str]
    ) -> bool:
        """Read frames until `done()`; False when it is not (at once with `block=False`); raises
        ClientError(try_again, why()) when `timeout_s` passes while blocking."""
        deadline = time.monotonic() + (timeout_s if block else 0.0)
        while not done():
            if not self._pump_frames(deadline - time.monotonic()):
                if not block:
                    return False
                if time.monotonic() >= deadline:
                    raise ClientError(ErrorCode.TRY_AGAIN, why())
        return True

    def _send_all(self, data: bytes, deadline: float) -> None:
        """Write `data`, reading (and keeping) what the daemon sends while the socket is full.

        Raises ClientError(timeout) past `deadline`, ConnectionClosed/OSError when the socket fails.
        """
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        self._poll.modify(sock.fileno(), select.POLLIN | select.POLLOUT)
        try:
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(ErrorCode.TIMEOUT, "the daemon did not read our request in time")
                ready = self._poll.poll(left * 1000)
                if any(ev & (select.POLLIN | select.POLLHUP | select.POLLERR) for _, ev in ready):
                    self._recv_once()
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    pass
        finally:
            self._poll.modify(sock.fileno(), select.POLLIN)

    def _recv_once(self) -> bool:
        """Read what the socket holds (never waits); returns False when it held nothing."""
        try:
            data = self._sock.recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ConnectionClosed(f"receive failed: {exc}") from None
        if not data:
            raise ConnectionClosed()
        try:
            items = self._decoder.feed(data)
        except ipcproto.ProtocolError as exc:
            self.close()
            raise ConnectionClosed(f"broken frame from the daemon: {exc}") from None
        # Acknowledgements and refusals are the pipeline's, taken at once (they are not events);
        # everything else waits, in order, for whoever reads frames.
        consume, frames = self._pipe.consume, self._frames
        for item in items:
            if isinstance(item, ipcproto.ProtocolError) or not consume(item):
                frames.append(item)
                if isinstance(item, ipcproto.Frame) and item.header.get("event") == ipcproto.EV_FLOW:
                    info = item.header.get("data")
                    self.slow = isinstance(info, dict) and info.get("state") == "slow"
        if len(frames) + len(self._events) > MAX_BUFFERED_EVENTS:
            self.close()
            raise ConnectionClosed(f"more than {MAX_BUFFERED_EVENTS} unread events; read events() sooner")
        return True

    def _raise_refusal(self) -> None:
        """After a failed send: raise the daemon's refusal (permission_denied …) if it sent one."""
        with contextlib.suppress(ConnectionClosed, OSError):
            frame = self._next_frame(1.0)
            if frame is not None and frame.kind == ipcproto.ERROR:
                _result(frame)

    def _keep(self, event: Event) -> None:
        if len(self._events) >= MAX_BUFFERED_EVENTS:
            self.close()
            raise ConnectionClosed(f"more than {MAX_BUFFERED_EVENTS} unread events; read events() sooner")
        self._events.append(event)

    def _next_frame(self, timeout: float | None) -> ipcproto.Frame | None:
        """The next frame for the caller, waiting up to `timeout` (None: forever, 0: no wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        frames = self._frames
        while not frames:
            if self._recv_once():
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._poll.poll(None if left is None else max(1, int(left * 1000 + 0.999)))
        item = frames.popleft()
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
        self._decoder = ipcproto.FrameDecoder()
        self._pipe = _Pipeline()
        self._room = asyncio.Event()  # set by the reader whenever an acknowledgement arrives
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
        # Nothing follows hello's reply until we send again, so the switch cannot split a frame.
        client._decoder.compact = client._pipe.configure(client.server)
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
                raise ClientError(ErrorCode.TIMEOUT, f"no reply to {op} in {CALL_TIMEOUT_S} s") from None
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
        """Multicast `payload` to `group`, waiting out flow control (try_again) up to the timeout.

        One request/reply per message; raises SendError first for a refused pipelined send.
        """
        self._pipe.raise_error()
        await self._retrying("cpg_send", {"group": group}, payload, retry_timeout_s)

    async def cpg_mcast(self, group: str, payload: bytes, *, timeout_s: float = SEND_RETRY_TIMEOUT_S) -> None:
        """Pipelined multicast (see Client.cpg_mcast): waits only while the window is full.

        Raises SendError for an earlier refused pipelined send, ClientError(try_again) when the
        window stays full for `timeout_s`, ClientError(too_large / name_too_long).
        """
        pipe = self._pipe
        pipe.raise_error()
        if not pipe.enabled:
            await self.cpg_send(group, payload, timeout_s)
            return
        if not pipe.has_room(len(payload)):
            await self._wait_for_room(len(payload), timeout_s)
        _, frame = pipe.frame(group, payload)
        await self._write(frame)

    async def cpg_mcast_many(
        self, group: str, payloads: Iterable[bytes], *, timeout_s: float = SEND_RETRY_TIMEOUT_S
    ) -> int:
        """Pipelined multicast of every payload in order, in few writes; returns how many."""
        pipe = self._pipe
        pipe.raise_error()
        count = 0
        if not pipe.enabled:
            for payload in payloads:
                await self.cpg_send(group, payload, timeout_s)
                count += 1
            return count
        batch: list[bytes] = []
        for payload in payloads:
            if not pipe.has_room(len(payload)):
                if batch:
                    await self._write(b"".join(batch))
                    batch = []
                await self._wait_for_room(len(payload), timeout_s)
            batch.append(pipe.frame(group, payload)[1])
            count += 1
        if batch:
            await self._write(b"".join(batch))
        return count

    async def cpg_flush(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Wait until every pipelined send is acknowledged; raise the first refusal (SendError).

        Raises ClientError(timeout) after `timeout_s`, ConnectionClosed when the daemon goes away.
        """
        deadline = time.monotonic() + timeout_s
        while self._pipe.unacked:
            if self._closed:
                raise ConnectionClosed()
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                n = len(self._pipe.unacked)
                raise ClientError(ErrorCode.TIMEOUT, f"{n} pipelined sends not acknowledged") from None
        self._pipe.raise_error()

    @property
    def mcast_outstanding(self) -> tuple[int, int]:
        """(messages, payload bytes) sent with cpg_mcast and not yet acknowledged."""
        return len(self._pipe.unacked), self._pipe.unacked_bytes

    async def _wait_for_room(self, size: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._pipe.has_room(size):
            if self._closed:
                raise ConnectionClosed()
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                n = len(self._pipe.unacked)
                raise ClientError(ErrorCode.TRY_AGAIN, f"{n} pipelined sends unacknowledged") from None

    async def _write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionClosed()
        try:
            self._writer.write(data)
            transport = self._writer.transport
            if transport.get_write_buffer_size() > WRITE_COALESCE_BYTES:
                await self._writer.drain()  # only when the kernel is behind: no yield per message
        except OSError as exc:
            raise ConnectionClosed(f"send failed: {exc}") from None

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

    async def kill(self, nodeid: int, reason: str | None = None) -> None:
        await self.call("kill", {"nodeid": nodeid, **({"reason": reason} if reason else {})})

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
                if exc.error is not ErrorCode.TRY_AGAIN or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_S[1])

    async def _read_loop(self) -> None:
        decoder = self._decoder
        pipe = self._pipe
        try:
            while True:
                data = await self._reader.read(RECV_BYTES)
                if not data:
                    return
                for item in decoder.feed(data):
                    if isinstance(item, ipcproto.ProtocolError):
                        continue
                    if pipe.consume(item):
                        self._room.set()
                        continue
                    await self._dispatch(item)
        except (ipcproto.ProtocolError, OSError):
            return
        finally:
            self._closed = True
            self._room.set()
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
