"""A client connection to cmanlkd's local API (docs/ipc.md) without the socket: pure, sans-I/O.

`Connection` is everything a connection is besides its I/O: request ids, the frame decoder, the
replies being waited for, the event queue, the pipeline of version-2 sends (sequence numbers,
the daemon's window, its refusals), and the daemon's flow state. Bytes go in with `receive()`.

The API's operations (cmanlk/client/operations.py) are generator functions over a Connection,
written once for both flavors of client (cmanlk/client/api.py: the blocking `Client`, the
asyncio `AsyncClient`). An operation yields the I/O it needs — `Write(data, timeout_s)`: put
these bytes on the socket; `Read(until)`: wait until bytes arrive and were handed to
`receive()`, or `until` passes (`POLL`: take what is there, never wait) — and the driver
answers each step with the time (monotonic seconds). So retries, waits for window room and
backoff take their time from the driver, and nothing here reads a clock, touches a socket or
sleeps.

`RetryPolicy` is the one try_again backoff: the client's retries of cpg_join/leave/send, the IPC
server's in-order retries of pipelined MCASTs and the DLM runtime's cpg requests use it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from cmanlk.client import proto as ipcproto
from cmanlk.errors import CmanlkError, ErrorCode

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
"""A reply the daemon owes for longer than this is given up on (the daemon's own bound is 10 s)."""
SEND_RETRY_TIMEOUT_S = 10.0
"""How long cpg_join/cpg_leave/cpg_send retry try_again, and a pipelined send waits for room."""
MAX_BUFFERED_EVENTS = 65536
"""Events kept unread (plus what one read brings); past it the blocking client closes the
connection and the asyncio client stops reading (the daemon then flags, and past its bound
drops, the connection)."""
MAX_SEND_ERRORS = 1024
"""Refusals of pipelined sends kept until the next send raises them (the rest are counted)."""
WRITE_COALESCE_BYTES = 256 * 1024
"""cpg_mcast_many joins frames into writes of about this size."""


# --- errors and events ------------------------------------------------------------------------


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
    """A pipelined send (cpg_mcast) was refused: `seq` names it, `group` its group; `more` counts
    further refusals reported with it."""

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


# --- what an operation asks of its driver ---------------------------------------------------------


# Write and Read are not frozen: one is made per pipelined message, and a frozen dataclass costs
# twice as much to build. Nothing changes one after it is made.


@dataclass(slots=True)
class Write:
    """Put `data` on the socket, reading (into the connection) while it is full; the driver raises
    ClientError(timeout) if the daemon has not taken it within `timeout_s`, ConnectionClosed if
    the socket failed."""

    data: bytes
    timeout_s: float = CALL_TIMEOUT_S


@dataclass(slots=True)
class Read:
    """Wait until bytes came and were handed to `Connection.receive`, or until `until` (None: no
    limit; a time already past: take what is there without waiting). When the daemon has gone the
    driver calls `Connection.close` and returns: operations check `closed` before they wait."""

    until: float | None


POLL = Read(0.0)
"""Take what has arrived, never wait; its answer is the time now."""

Step = Write | Read
Operation = Generator[Step, float, T]
"""An API operation: yields Steps, each answered with the time now; returns its result."""


# --- the try_again backoff --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a try_again refusal is retried: after a pause of `first_s`, doubling up to `longest_s`;
    no try starts later than `limit_s` after the retries began (then the refusal stands)."""

    first_s: float
    longest_s: float
    limit_s: float

    def start(self, now: float) -> Retry:
        """Begin retrying at `now` (the first refusal, or the first try)."""
        return Retry(self, now)


class Retry:
    """One request's retries under a RetryPolicy."""

    __slots__ = ("_deadline", "_longest", "_pause")

    def __init__(self, policy: RetryPolicy, now: float) -> None:
        self._deadline = now + policy.limit_s
        self._pause = policy.first_s
        self._longest = policy.longest_s

    def next_pause(self, now: float) -> float | None:
        """How long to wait before the next try; None when that try would pass the limit."""
        pause = self._pause
        if now + pause > self._deadline:
            return None
        self._pause = min(pause * 2, self._longest)
        return pause


CLIENT_RETRY = RetryPolicy(0.001, 0.1, SEND_RETRY_TIMEOUT_S)
"""The client library's retries of a request refused with try_again."""


# --- the connection ----------------------------------------------------------------------------------


class Connection:
    """One connection's state; see the module docstring. Not thread-safe."""

    def __init__(self) -> None:
        self._decoder = ipcproto.FrameDecoder()
        self._next_id = 0
        self._waiting: set[int] = set()
        self._replies: dict[int, ipcproto.Frame] = {}
        self._events: deque[Event] = deque()
        self._failure: ClientError | None = None
        self.server: dict[str, Any] = {}
        """The daemon's hello result (version, node_id, cluster_name, capabilities, …)."""
        self.slow = False
        """The daemon said our events back up (flow "slow") and has not said "ok" since."""
        # the pipeline of version-2 sends (docs/ipc.md, "Pipelined sends")
        self.pipelined = False
        self._window_messages = ipcproto.MCAST_WINDOW_MESSAGES
        self._window_bytes = ipcproto.MCAST_WINDOW_BYTES
        self._next_seq = 1
        self._unacked: deque[tuple[int, int]] = deque()  # (seq, payload bytes)
        self._unacked_bytes = 0
        self._refusals: deque[tuple[int, str, str, str]] = deque()  # seq, group, code, message
        self._refusals_dropped = 0

    # --- requests and replies ---------------------------------------------------------------------

    def begin_request(self, op: str, args: dict[str, Any] | None, payload: bytes) -> tuple[int, bytes]:
        """Return (request id, frame) of a new request, whose reply is kept until `forget`.

        Raises ClientError(too_large) for a request the daemon could not take.
        """
        self.raise_failure()
        self._next_id += 1
        try:
            data = ipcproto.request(self._next_id, op, args, payload)
        except ipcproto.ProtocolError as exc:
            raise ClientError(exc.code, str(exc)) from None
        self._waiting.add(self._next_id)
        return self._next_id, data

    def take_reply(self, request_id: int) -> dict[str, Any] | None:
        """The result of request `request_id` if its reply came (None: not yet).

        Raises ClientError with the daemon's refusal, or the connection's failure.
        """
        frame = self._replies.pop(request_id, None)
        if frame is None:
            self.raise_failure()
            return None
        self._waiting.discard(request_id)
        if frame.kind == ipcproto.ERROR:
            raise ClientError(str(frame.header.get("code", "unknown")), str(frame.header.get("message", "")))
        result = frame.header.get("result", {})
        return result if isinstance(result, dict) else {}

    def forget(self, request_id: int) -> None:
        """Stop waiting for request `request_id` (a reply that comes later is dropped)."""
        self._waiting.discard(request_id)
        self._replies.pop(request_id, None)

    def configure(self, hello: dict[str, Any]) -> None:
        """Take the daemon's hello result: the version decides compact frames and pipelining."""
        self.server = hello
        version = hello.get("version", 1)
        self.pipelined = isinstance(version, int) and version >= ipcproto.COMPACT_VERSION
        window = hello.get("mcast_window")
        if isinstance(window, dict):
            limit_m, limit_b = ipcproto.MCAST_WINDOW_MESSAGES, ipcproto.MCAST_WINDOW_BYTES
            self._window_messages = max(1, min(_int(window.get("messages"), 1), limit_m))
            self._window_bytes = max(1, min(_int(window.get("bytes"), 1), limit_b))
        # Nothing follows hello's reply until we send again, so the switch cannot split a frame.
        self._decoder.compact = self.pipelined

    # --- what the daemon sends ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take bytes read from the socket. Raises ConnectionClosed for a broken frame."""
        try:
            items = self._decoder.feed(data)
        except ipcproto.ProtocolError as exc:
            self._failure = ConnectionClosed(f"broken frame from the daemon: {exc}")
            raise self._failure from None
        for item in items:
            if isinstance(item, ipcproto.ProtocolError):
                continue  # a daemon bug; the stream is still in step
            self._take(item)

    def close(self, why: ClientError | None = None) -> None:
        """The socket is gone: every wait ends with `why` (ConnectionClosed by default)."""
        if self._failure is None:
            self._failure = why or ConnectionClosed()

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def raise_failure(self) -> None:
        """Raise what ended the connection (a closed socket, a connection-level refusal)."""
        if self._failure is not None:
            raise self._failure

    def pop_event(self) -> Event | None:
        """The oldest unread event (None: none)."""
        return self._events.popleft() if self._events else None

    @property
    def backlogged(self) -> bool:
        """Are MAX_BUFFERED_EVENTS events unread?"""
        return len(self._events) >= MAX_BUFFERED_EVENTS

    def _take(self, frame: ipcproto.Frame) -> None:
        header = frame.header
        kind = header.get("kind")
        if kind == ipcproto.MCAST_ACK:
            seq = header.get("seq")
            if isinstance(seq, int):
                self._on_ack(seq)
        elif kind == ipcproto.EVENT:
            name = str(header.get("event", ""))
            data = header.get("data")
            data = data if isinstance(data, dict) else {}
            if name == ipcproto.EV_CPG_SEND_ERROR:
                self._on_refusal(data)
                return
            if name == ipcproto.EV_FLOW:
                self.slow = data.get("state") == "slow"
            self._events.append(Event(name, data, frame.payload))
        elif kind in (ipcproto.REPLY, ipcproto.ERROR):
            request_id = header.get("id")
            if request_id in self._waiting:
                self._replies[request_id] = frame
            elif request_id is None and kind == ipcproto.ERROR:
                # A connection-level refusal (permission_denied, too_slow, timeout): it answers
                # every request, and the daemon closes the connection after it.
                code, message = str(header.get("code", "unknown")), str(header.get("message", ""))
                self._failure = ClientError(code, message)

    # --- the pipeline ----------------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        """May a pipelined message of `size` bytes be sent now? (One is always allowed when none
        is outstanding.)"""
        unacked = self._unacked
        if not unacked:
            return True
        return len(unacked) < self._window_messages and self._unacked_bytes + size <= self._window_bytes

    def mcast_frame(self, group: str, payload: bytes) -> bytes:
        """Return the MCAST frame of the next pipelined send and count it as outstanding.

        Raises ClientError(too_large / name_too_long) for what the daemon could not take.
        """
        seq = self._next_seq
        try:
            data = ipcproto.mcast(seq, group.encode(), payload)
        except ipcproto.ProtocolError as exc:
            raise ClientError(exc.code, str(exc)) from None
        self._next_seq = (seq + 1) % ipcproto.SEQ_MODULO
        self._unacked.append((seq, len(payload)))
        self._unacked_bytes += len(payload)
        return data

    @property
    def awaiting_acks(self) -> bool:
        """Is a pipelined send not yet acknowledged?"""
        return bool(self._unacked)

    @property
    def outstanding(self) -> tuple[int, int]:
        """(messages, payload bytes) sent pipelined and not yet acknowledged."""
        return len(self._unacked), self._unacked_bytes

    def raise_refusal(self) -> None:
        """Raise the earliest unreported refusal of a pipelined send as SendError (the later ones
        are forgotten, counted in its `more`)."""
        if not self._refusals:
            return
        seq, group, code, message = self._refusals.popleft()
        more = len(self._refusals) + self._refusals_dropped
        self._refusals.clear()
        self._refusals_dropped = 0
        raise SendError(code, message, seq, group, more)

    def _on_ack(self, seq: int) -> None:
        unacked = self._unacked
        while unacked and not ipcproto.seq_after(unacked[0][0], seq):
            self._unacked_bytes -= unacked.popleft()[1]

    def _on_refusal(self, data: dict[str, Any]) -> None:
        if len(self._refusals) >= MAX_SEND_ERRORS:
            self._refusals_dropped += 1
            return
        seq = _int(data.get("seq"), 0)
        group, code = str(data.get("group", "")), str(data.get("code", "unknown"))
        self._refusals.append((seq, group, code, str(data.get("message", ""))))


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
