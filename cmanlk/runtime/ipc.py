"""The local client API of cmanlkd: an asyncio Unix-socket server speaking cmanlk/client/proto.py.

docs/ipc.md is the manual (frames, ops, events, error codes). This module is the edge between
local clients (cmanlk-tool, cmanlk.client, cluster subsystems) and the daemon, which it reaches
only through `IpcBackend` (implemented by cmanlk/runtime/node.py; `MemoryBackend` below is the
in-memory twin the tests use):

- `status()` — a JSON-able snapshot (schema in IpcBackend's docstring), read for every query;
- `submit(event)` — a Stack event (SetExpectedVotes, SetVotes, ServiceRequest for cpg) carrying a
  request id we allocate; its answer comes back as a `RequestResult` notification;
- `subscribe(listener)` — every notification the core publishes (RequestResult, MembershipChanged,
  QuorumChanged, CpgDeliver/CpgConfchg/CpgTotemConfchg), called on the event loop thread;
- `admin(command)` — requests outside the Stack (leave, kill, fence ack, dlm status).

Access: the peer's credentials come from SO_PEERCRED. Root, the daemon's own uid and members
(primary or supplementary group) of the configured group may connect; anyone else gets a
`permission_denied` error naming the rule and is disconnected. Privileged ops (set_expected,
set_votes, leave, kill, fence_ack) are for root only.

The ring never waits for a client: notifications are queued per client without blocking. Each
client has a bounded outgoing queue (CLIENT_QUEUE_BYTES / CLIENT_QUEUE_FRAMES). Past half the
bound the client is told with a `flow` event {state: "slow"}; when it drains below a quarter,
{state: "ok"}; past the bound it is disconnected (its cpg processes leave with reason 5).
Malformed frames get an error reply; a broken frame length closes only that connection.

The hot path (protocol version 2, docs/ipc.md "Pipelined sends"): a compact MCAST frame is handed
to the core at once, without a reply; the client learns of it from a cumulative MCAST_ACK written
once per read (not per message), and of a refusal from a `cpg_send_error` event naming its seq.
A refusal with `try_again` (cpg's send window full, synchronisation running) is retried here, in
order, with a growing pause: the read loop reads nothing more from that client meanwhile, so
its later messages wait in its own socket (the kernel's backpressure) and never overtake it.
Deliveries to a version-2 client are compact DELIVER frames; the write loop sends every queued
frame of a client in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cmanlk.client import proto as ipcproto
from cmanlk.client.connection import SEND_RETRY_TIMEOUT_S, Retry, RetryPolicy
from cmanlk.client.proto import ProtocolError
from cmanlk.errors import ErrorCode, UsageError
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import (
    ClientGone,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    CpgService,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged, RequestResult, ServiceRequest, SetExpectedVotes, SetVotes
from cmanlk.types import Instant, NodeId, RingId

log = logging.getLogger("cmanlk.ipc")

MAX_CLIENTS = 256
"""Connections served at once; one more is answered `no_resources` and closed."""
ROOT_RESERVED_CLIENTS = 16
"""Of MAX_CLIENTS, the connections only root may take: local users of ipc_group cannot fill every
slot and lock the admin (and cmanlk-tool) out."""
FRAME_DEADLINE_S = 10.0
"""A frame begun must be complete within this long of our waiting for the rest (and `hello` done
within this long of connecting); else the client gets `timeout` and is closed. Without it a client
that sent a header and never the body held its slot forever: 256 of them locked everyone out."""
CLIENT_QUEUE_BYTES = 16 * 1024 * 1024
"""Outgoing bytes queued for one client before it is disconnected: 16 whole cpg messages."""
CLIENT_QUEUE_FRAMES = 8192
"""Outgoing frames queued for one client before it is disconnected (many small events)."""
REQUEST_TIMEOUT_S = 10.0
"""How long a request waits for the core's RequestResult (a Totem-only core never answers)."""
READ_CHUNK_BYTES = 256 * 1024
WRITE_BATCH_BYTES = 1024 * 1024
"""At most this many queued bytes are joined into one write (one syscall for many events)."""
MCAST_RETRY = RetryPolicy(first_s=0.0005, longest_s=0.02, limit_s=SEND_RETRY_TIMEOUT_S)
"""Retrying a pipelined MCAST refused with try_again: pauses from 0.5 ms doubling to 20 ms (each
cut short by a cpg delivery or configuration change); still refused 10 s after the first
refusal, it is reported as refused (the client library's bound for a request/reply cpg_send)."""
CLOSE_GRACE_S = 2.0
"""A client cut off for being too slow gets this long to read its last frames before abort."""

_PEERCRED = struct.Struct("3i")


# --- what the daemon implements --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaveCluster:
    """Privileged: this node leaves the cluster cleanly and the daemon exits (cman_tool leave)."""


@dataclass(frozen=True, slots=True)
class KillNode:
    """Privileged: ask node `nodeid` to leave the cluster (cman_tool kill); `reason` is what the
    target logs (None: the default text)."""

    nodeid: NodeId
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FenceAck:
    """Privileged: the admin confirms `nodeid` is off; DLM recovery may go on (dlm_tool fence_ack)."""

    nodeid: NodeId


@dataclass(frozen=True, slots=True)
class DlmStatus:
    """Read: lockspaces and their state (served by the dlm engineer's dlmctl glue)."""


AdminCommand = LeaveCluster | KillNode | FenceAck | DlmStatus


class IpcBackend(Protocol):
    """The daemon as the IPC server sees it. Every method is called on the event loop thread.

    `status()` returns a JSON-able mapping; keys the server reads (missing ones read as empty):
        node_id: int, cluster_name: str, state: str (totem state), version: str,
        ring_id: str, ring_seq: int, ring_rep: int, members: [int],
        nodes: [{nodeid: int, name: str, addresses: [str], votes: int, state: str}],
        quorum: {quorate: bool, quorum: int, total_votes: int, expected_votes: int, ...},
        links: [{nodeid: int, link: int, up: bool, ...}],
        stats: {...},
        cpg_groups: [{name: str, members: [[nodeid, pid], ...]}]
    """

    def status(self) -> Mapping[str, Any]:
        """Return the current snapshot (cheap: called on every query)."""
        ...

    def submit(self, event: object) -> None:
        """Feed a Stack event (it carries our request id). Raises UsageError("not_running", …)."""
        ...

    def subscribe(self, listener: Callable[[object], None]) -> None:
        """Call `listener` with every notification the core publishes from now on."""
        ...

    def unsubscribe(self, listener: Callable[[object], None]) -> None:
        """Stop calling `listener` (no error when absent)."""
        ...

    def admin(self, command: AdminCommand) -> Awaitable[dict[str, Any]]:
        """Carry out a command outside the Stack; the result dict is the reply.

        Raises UsageError(code, message): "not_supported" when this daemon does not serve it.
        """
        ...


@dataclass(frozen=True, slots=True)
class IpcConfig:
    """Where the socket lives and who may use it (corosync.conf `cmanlk { run_dir, ipc_group }`)."""

    path: str = ipcproto.DEFAULT_SOCKET_PATH
    group: str | None = None
    max_clients: int = MAX_CLIENTS
    root_reserved: int = ROOT_RESERVED_CLIENTS
    """Slots of max_clients kept for root (uid 0)."""
    frame_deadline_s: float = FRAME_DEADLINE_S
    queue_bytes: int = CLIENT_QUEUE_BYTES
    queue_frames: int = CLIENT_QUEUE_FRAMES
    request_timeout_s: float = REQUEST_TIMEOUT_S
    mcast_window_messages: int = ipcproto.MCAST_WINDOW_MESSAGES
    """The window of pipelined sends advertised in hello (at most the protocol's)."""
    mcast_window_bytes: int = ipcproto.MCAST_WINDOW_BYTES


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


class _Client:
    """One connection: its credentials, negotiated version, subscriptions and outgoing queue."""

    def __init__(
        self, handle: Handle, cred: PeerCred, writer: asyncio.StreamWriter, config: IpcConfig
    ) -> None:
        self.handle = handle
        self.cred = cred
        self.writer = writer
        self.config = config
        self.version = 0
        self.compact = False  # version 2: compact MCAST/DELIVER/MCAST_ACK frames
        self.mcast_handled = 0  # seq of the last pipelined MCAST handled (accepted or refused)
        self.mcast_acked = 0  # seq last acknowledged with MCAST_ACK
        self.track_membership = False
        self.track_quorum = False
        self.changes_only = False
        self.used_cpg = False
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.slow = False
        self.closed = False
        self.overflowed = False
        self.unread: tuple[int, int] = (0, 0)  # (bytes, frames) not read when it overflowed
        self.dropping = False
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()

    def send(self, frame: bytes) -> bool:
        """Queue `frame`; returns False (and marks the client for closing) past the bound."""
        if self.closed:
            return False
        full = len(self.queue) >= self.config.queue_frames
        if full or self.queued_bytes + len(frame) > self.config.queue_bytes:
            self.unread = (self.queued_bytes + len(frame), len(self.queue) + 1)
            self.overflowed = True
            self.closed = True
            self.wake.set()
            return False
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        if not self.slow and self.queued_bytes > self.config.queue_bytes // 2:
            self.slow = True
            # Straight to the transport, ahead of what we queue: the client hears of it after the
            # frame being written, not after the backlog it is already behind on. Frames are
            # written whole, so this cannot split one.
            note = ipcproto.event(ipcproto.EV_FLOW, {"state": "slow", "queued_bytes": self.queued_bytes})
            self.writer.write(note)
        self.wake.set()
        return True


class IpcServer:
    """The Unix-socket server. `await start()`, later `await close()`."""

    def __init__(self, backend: IpcBackend, config: IpcConfig | None = None) -> None:
        self.backend = backend
        self.config = config or IpcConfig()
        self._server: asyncio.AbstractServer | None = None
        self._clients: dict[Handle, _Client] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_handle = 0
        self._next_request = 0
        self._pending: dict[int, asyncio.Future[RequestResult]] = {}
        self._retry_waiters: list[asyncio.Future[None]] = []  # held pipelined MCASTs (try_again)
        self._sync_request = 0  # the request id whose answer _submit_now is waiting for
        self._sync_result: RequestResult | None = None
        self._gid = self._resolve_group(self.config.group)
        self.stats: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start accepting.

        Raises OSError when the path is held by a live server or cannot be bound.
        """
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        self._server = await asyncio.start_unix_server(
            self._on_connect, path=str(path), limit=READ_CHUNK_BYTES
        )
        os.chmod(path, 0o660 if self._gid is not None else 0o666)
        if self._gid is not None:
            os.chown(path, -1, self._gid)
        self.backend.subscribe(self._on_notification)
        log.info("IPC listening on %s (group %s)", path, self.config.group or "-")

    async def close(self) -> None:
        """Stop accepting, disconnect every client, remove the socket."""
        self.backend.unsubscribe(self._on_notification)
        if self._server is not None:
            self._server.close()
        for client in list(self._clients.values()):
            client.closed = True
            client.wake.set()
            client.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.path)

    @property
    def client_count(self) -> int:
        """Connections currently served."""
        return len(self._clients)

    # --- connections ---------------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close() cancels connection tasks; ending quietly keeps asyncio from logging it
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cred = _peer_cred(writer)
        refusal = self._refusal(cred)
        limit = self.config.max_clients - (0 if cred.uid == 0 else self.config.root_reserved)
        if refusal is None and len(self._clients) >= limit:
            kept = f", {self.config.root_reserved} more for root" if cred.uid != 0 else ""
            refusal = (ErrorCode.NO_RESOURCES, f"too many clients (at most {limit}{kept})")
        if refusal is not None:
            self._count(f"refused_{refusal[0].wire}")
            log.warning("IPC: refused pid %d uid %d: %s", cred.pid, cred.uid, refusal[1])
            with contextlib.suppress(OSError):
                writer.write(ipcproto.error(None, *refusal))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._next_handle += 1
        client = _Client(Handle(self._next_handle), cred, writer, self.config)
        self._clients[client.handle] = client
        writer_task = asyncio.create_task(self._write_loop(client))
        self._tasks.add(writer_task)
        writer_task.add_done_callback(self._tasks.discard)
        try:
            await self._read_loop(client, reader)
        finally:
            self._drop(client)
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await writer_task
            writer.close()

    def _refusal(self, cred: PeerCred) -> tuple[ErrorCode, str] | None:
        if cred.uid in (0, os.geteuid()):
            return None
        if self._gid is not None and (cred.gid == self._gid or self._gid in _supplementary_groups(cred.pid)):
            return None
        rule = f"root or members of group {self.config.group!r}" if self._gid is not None else "root only"
        return ErrorCode.PERMISSION_DENIED, f"uid {cred.uid} may not use {self.config.path} ({rule})"

    def _drop(self, client: _Client) -> None:
        """Forget `client` (idempotent); its cpg processes leave with reason 5 (process down)."""
        client.closed = True
        if self._clients.pop(client.handle, None) is None:
            return
        if client.overflowed:
            self._count("client_overflow")
            log.warning(
                "IPC: client pid %d disconnected: it did not read its events, %d bytes in %d frames "
                "unread (bound %d bytes, %d frames)",
                client.cred.pid, *client.unread, self.config.queue_bytes, self.config.queue_frames,
            )  # fmt: skip
        if client.used_cpg:
            with contextlib.suppress(UsageError):
                self._submit(ServiceRequest(_now(), CPG_SERVICE, ClientGone(client.handle)))

    async def _read_loop(self, client: _Client, reader: asyncio.StreamReader) -> None:
        decoder = ipcproto.FrameDecoder()
        loop = asyncio.get_running_loop()
        hello_by = loop.time() + self.config.frame_deadline_s
        frame_by: float | None = None  # set while a frame begun waits for its rest
        while not client.closed:
            if decoder.buffered and frame_by is None:
                frame_by = loop.time() + self.config.frame_deadline_s  # our own holding not counted
            deadline = frame_by if frame_by is not None else hello_by if client.version == 0 else None
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                await self._stalled(client, "a frame it began" if frame_by is not None else "hello")
                return
            except OSError as exc:  # ECONNRESET: the client died with unread data queued for it
                log.debug("IPC: client pid %d: %s", client.cred.pid, exc)
                return
            if not data:
                return
            try:
                items = decoder.feed(data)
            except ProtocolError as exc:
                self._count("bad_frame")
                client.send(ipcproto.error(None, exc.code, str(exc)))
                await self._flush(client)
                return
            for item in items:
                if client.closed:
                    return
                if isinstance(item, ProtocolError):
                    self._count("bad_request")
                    client.send(ipcproto.error(None, item.code, str(item)))
                    continue
                header = item.header
                if header.get("kind") == ipcproto.MCAST and isinstance(header.get("group"), bytes):
                    await self._on_mcast(client, header["seq"], header["group"], item.payload)
                    continue
                self._ack(client)  # a reply must not overtake the acknowledgement of earlier sends
                await self._on_frame(client, item)
                # Compact frames only after hello's reply: the client waits for it before sending one.
                decoder.compact = client.compact
            if not decoder.buffered:
                frame_by = None
            self._ack(client)

    async def _stalled(self, client: _Client, what: str) -> None:
        """The client did not finish `what` within frame_deadline_s: tell it, close it."""
        self._count("stalled")
        limit = self.config.frame_deadline_s
        log.warning("IPC: client pid %d uid %d closed: %s not complete within %g s",
                    client.cred.pid, client.cred.uid, what, limit)  # fmt: skip
        text = f"{what} not complete within {limit:g} s; closing"
        client.send(ipcproto.error(None, ErrorCode.TIMEOUT, text))
        await self._flush(client)

    async def _write_loop(self, client: _Client) -> None:
        writer = client.writer
        queue = client.queue
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while queue and not client.overflowed:
                    # Everything queued (up to WRITE_BATCH_BYTES) in one write: one syscall for a
                    # burst of deliveries instead of one per event.
                    batch = [queue.popleft()]
                    size = len(batch[0])
                    while queue and size + len(queue[0]) <= WRITE_BATCH_BYTES:
                        frame = queue.popleft()
                        batch.append(frame)
                        size += len(frame)
                    client.queued_bytes -= size
                    writer.write(batch[0] if len(batch) == 1 else b"".join(batch))
                    await writer.drain()
                    if client.slow and client.queued_bytes < self.config.queue_bytes // 4:
                        client.slow = False
                        data = {"state": "ok", "queued_bytes": client.queued_bytes}
                        writer.write(ipcproto.event(ipcproto.EV_FLOW, data))
                if client.closed:
                    await writer.drain()
                    client.drained.set()
                    writer.close()  # ends the read loop too
                    return
        except (ConnectionError, OSError):
            client.closed = True
            writer.close()

    async def _flush(self, client: _Client) -> None:
        """Give the writer up to a second to send what is queued (a final error reply)."""
        client.closed = True
        client.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.drained.wait(), 1.0)

    # --- requests ------------------------------------------------------------------------------------

    async def _on_frame(self, client: _Client, frame: ipcproto.Frame) -> None:
        header = frame.header
        request_id = header.get("id")
        if frame.kind != ipcproto.REQUEST or not isinstance(request_id, int) or isinstance(request_id, bool):
            self._count("bad_request")
            client.send(ipcproto.error(None, ErrorCode.BAD_REQUEST, "expected a request with an integer id"))
            return
        op, args = header.get("op"), header.get("args", {})
        try:
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ProtocolError(ErrorCode.BAD_REQUEST, "op must be a string and args an object")
            if client.version == 0 and op != "hello":
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "the first request must be hello")
            entry = _OPS.get(op)
            if entry is None:
                raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
            handler, privileged = entry
            if privileged and client.cred.uid != 0:
                raise ProtocolError(ErrorCode.PERMISSION_DENIED, f"{op} is for root only")
            result = await handler(_Call(self, client, args, frame.payload))
        except ProtocolError as exc:
            client.send(ipcproto.error(request_id, exc.code, str(exc)))
            return
        except UsageError as exc:
            client.send(ipcproto.error(request_id, exc.code, str(exc)))
            return
        client.send(ipcproto.reply(request_id, result))
        if op == "track_start":
            self._send_current_view(client)

    async def _core_request(self, make: Callable[[int], object]) -> None:
        """Submit a Stack event with a fresh request id; wait for its RequestResult.

        Raises UsageError with the core's code on refusal, `timeout` when no answer comes.
        """
        self._next_request += 1
        request_id = self._next_request
        future: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._submit(make(request_id))
            # the Stack usually answers while handling the event: then no timer, no task
            result = future.result() if future.done() else await self._answer(future)
        finally:
            self._pending.pop(request_id, None)
        if result.error is not None:
            raise UsageError(result.error, result.message or result.error.wire)

    async def _answer(self, future: asyncio.Future[RequestResult]) -> RequestResult:
        """The core's answer to a submitted request; UsageError(timeout) after request_timeout_s."""
        try:
            return await asyncio.wait_for(future, self.config.request_timeout_s)
        except TimeoutError:
            raise UsageError(ErrorCode.TIMEOUT, "the daemon did not answer in time") from None

    # --- pipelined sends (version 2) -----------------------------------------------------------------

    def _submit_now(self, request: CpgMcast) -> tuple[int, RequestResult | None]:
        """Submit a cpg request; return (request id, its answer) — the Stack answers while it
        handles the event, so no future, task or timer is needed (None: answer still owed)."""
        self._next_request += 1
        request_id = self._next_request
        self._sync_request, self._sync_result = request_id, None
        try:
            self._submit(ServiceRequest(_now(), CPG_SERVICE, request, request_id))
        except UsageError as exc:
            return request_id, RequestResult(request_id, exc.code, str(exc))
        finally:
            self._sync_request = 0
        return request_id, self._sync_result

    async def _mcast_once(self, request: CpgMcast) -> None:
        """Hand one MCAST to the core. Raises UsageError with the core's refusal or `timeout`."""
        request_id, result = self._submit_now(request)
        if result is None:  # a backend that answers later (tests' twins, a bare Totem core)
            future: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                result = await self._answer(future)
            finally:
                self._pending.pop(request_id, None)
        if result.error is not None:
            raise UsageError(result.error, result.message or result.error.wire)

    async def _on_mcast(self, client: _Client, seq: int, group: bytes, payload: bytes) -> None:
        """Hand one pipelined MCAST to the core; retry try_again in order; report a refusal."""
        request = CpgMcast(client.handle, group, payload)
        retry: Retry | None = None
        while True:
            try:
                await self._mcast_once(request)
            except UsageError as exc:
                if exc.code is ErrorCode.TRY_AGAIN and not client.closed:
                    now = time.monotonic()
                    retry = retry or MCAST_RETRY.start(now)
                    pause = retry.next_pause(now)
                    if pause is not None:
                        self._ack(client)  # what came before is through: let the client know
                        await self._retry_wait(pause)
                        continue
                self._count(f"mcast_refused_{exc.code.wire}")
                text = ipcproto.group_text(group)
                info = {"seq": seq, "group": text, "code": exc.code.wire, "message": str(exc)}
                client.send(ipcproto.event(ipcproto.EV_CPG_SEND_ERROR, info))
            client.mcast_handled = seq
            return

    async def _retry_wait(self, pause: float) -> None:
        """Wait until a cpg delivery or configuration change (what frees cpg's send window or
        ends a synchronisation), or `pause` seconds at most."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._retry_waiters.append(waiter)
        timer = loop.call_later(pause, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._retry_waiters.remove(waiter)

    def _wake_retries(self) -> None:
        waiters, self._retry_waiters = self._retry_waiters, []
        for waiter in waiters:
            _resolve(waiter)

    def _ack(self, client: _Client) -> None:
        """Acknowledge every pipelined MCAST handled so far (one frame for a whole read's worth)."""
        if client.mcast_handled != client.mcast_acked:
            client.mcast_acked = client.mcast_handled
            self._send_or_drop(client, ipcproto.mcast_ack(client.mcast_handled))

    def _submit(self, event: object) -> None:
        self.backend.submit(event)

    # --- notifications from the core -----------------------------------------------------------------

    def _on_notification(self, note: object) -> None:
        if self._retry_waiters and not isinstance(note, RequestResult):
            self._wake_retries()
        match note:
            case RequestResult():
                if note.request_id == self._sync_request:
                    self._sync_result = note
                    return
                future = self._pending.get(note.request_id)
                if future is not None and not future.done():
                    future.set_result(note)
            case CpgDeliver():
                self._deliver(note)
            case CpgConfchg():
                data: dict[str, Any] = {
                    "group": ipcproto.group_text(note.group),
                    "members": [_addr(a) for a in note.members],
                    "left": [_addr(a) for a in note.left],
                    "joined": [_addr(a) for a in note.joined],
                }
                self._to_handles(note.handles, ipcproto.event(ipcproto.EV_CPG_CONFCHG, data))
            case CpgTotemConfchg():
                data = {"ring_id": str(note.ring_id), **_ring(note.ring_id), "members": list(note.members)}
                self._to_handles(note.handles, ipcproto.event(ipcproto.EV_CPG_TOTEM_CONFCHG, data))
            case MembershipChanged():
                for client in [c for c in self._clients.values() if c.track_membership]:
                    view = self._track_view(client, note)
                    self._send_or_drop(client, ipcproto.event(ipcproto.EV_TRACK, view))
            case QuorumChanged():
                data = {
                    "quorate": note.quorate,
                    "quorum": note.quorum,
                    "total_votes": note.total_votes,
                    "expected_votes": note.expected_votes,
                    "ring_id": str(note.ring_id) if note.ring_id else "",
                }
                frame = ipcproto.event(ipcproto.EV_QUORUM, data)
                for client in [c for c in self._clients.values() if c.track_quorum]:
                    self._send_or_drop(client, frame)

    def _deliver(self, note: CpgDeliver) -> None:
        """One cpg message to its local members: each encoding built once, only if someone needs it."""
        compact = legacy = None
        for handle in note.handles:
            client = self._clients.get(handle)
            if client is None:
                continue
            if client.compact:
                if compact is None:
                    compact = ipcproto.deliver(note.nodeid, note.pid, note.group, note.payload)
                self._send_or_drop(client, compact)
            else:
                if legacy is None:
                    data = {"group": ipcproto.group_text(note.group), "nodeid": note.nodeid, "pid": note.pid}
                    legacy = ipcproto.event(ipcproto.EV_CPG_DELIVER, data, note.payload)
                self._send_or_drop(client, legacy)

    def _to_handles(self, handles: tuple[Handle, ...], frame: bytes) -> None:
        for handle in handles:
            client = self._clients.get(handle)
            if client is not None:
                self._send_or_drop(client, frame)

    def _send_or_drop(self, client: _Client, frame: bytes) -> None:
        if client.send(frame) or not client.overflowed or client.dropping:
            return
        client.dropping = True
        # Past the bound: free the backlog, say why after what is already in the transport (the
        # frame being written and the flow event), close gracefully, and abort after a grace
        # period so a client that reads nothing cannot hold even that.
        client.queue.clear()
        client.queued_bytes = 0
        message = f"more than {self.config.queue_bytes} bytes of events unread; disconnected"
        client.writer.write(ipcproto.error(None, ErrorCode.TOO_SLOW, message))
        client.writer.close()
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_GRACE_S, client.writer.transport.abort)
        # Not from inside this notification: the daemon is still carrying out the core's
        # actions, and ClientGone is a new event for the core.
        loop.call_soon(self._drop, client)

    def _track_view(self, client: _Client, change: MembershipChanged) -> dict[str, Any]:
        names = _node_names(self.backend.status())
        joined = set(change.joined)
        entries = [
            _member(n, names, "joined" if n in joined else "no_change")
            for n in change.members
            if not client.changes_only or n in joined
        ]
        entries += [_member(n, names, "left") for n in change.left]
        return {
            "view_number": change.ring_id.seq,
            "ring_id": str(change.ring_id),
            **_ring(change.ring_id),
            "members": [m for m in entries if m["change"] != "left"],
            "changes": [m for m in entries if m["change"] != "no_change"],
            "current": False,
        }

    def _send_current_view(self, client: _Client) -> None:
        if not client.track_membership:
            return
        status = self.backend.status()
        names = _node_names(status)
        members = [_member(NodeId(n), names, "no_change") for n in _ints(status.get("members"))]
        data = {
            "view_number": status.get("ring_seq", 0),
            "ring_id": status.get("ring_id", ""),
            "ring_seq": status.get("ring_seq", 0),
            "ring_rep": status.get("ring_rep", 0),
            "members": members,
            "changes": [],
            "current": True,
        }
        client.send(ipcproto.event(ipcproto.EV_TRACK, data))

    # --- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _resolve_group(name: str | None) -> int | None:
        if name is None:
            return None
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            log.warning("IPC group %r does not exist; only root may connect", name)
            return None

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1


# --- op handlers: (server, client, args, payload) -> result dict ----------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """One request being served: who asked, its args and payload."""

    server: IpcServer
    client: _Client
    args: dict[str, Any]
    payload: bytes


Handler = Callable[[_Call], Awaitable[dict[str, Any]]]


async def _op_hello(call: _Call) -> dict[str, Any]:
    call.client.version = ipcproto.negotiate(call.args.get("versions"))
    call.client.compact = call.client.version >= ipcproto.COMPACT_VERSION
    status = call.server.backend.status()
    extra: dict[str, Any] = {}
    if call.client.compact:
        extra["capabilities"] = list(ipcproto.CAPABILITIES)
        config = call.server.config
        extra["mcast_window"] = {"messages": config.mcast_window_messages, "bytes": config.mcast_window_bytes}
    return {
        **extra,
        "version": call.client.version,
        "server": "cmanlkd",
        "server_version": status.get("version", ""),
        "node_id": status.get("node_id", 0),
        "cluster_name": status.get("cluster_name", ""),
        "uid": call.client.cred.uid,
        "privileged": call.client.cred.uid == 0,
    }


async def _op_status(call: _Call) -> dict[str, Any]:
    status = call.server.backend.status()
    keys = ("node_id", "cluster_name", "version", "state", "ring_id", "ring_seq", "ring_rep", "members")
    out: dict[str, Any] = {k: status.get(k) for k in keys}
    quorum = status.get("quorum") or {}
    out["quorate"] = quorum.get("quorate") if isinstance(quorum, Mapping) else None
    out["clients"] = call.server.client_count
    return out


async def _op_membership(call: _Call) -> dict[str, Any]:
    status = call.server.backend.status()
    names = _node_names(status)
    nodes = {int(n.get("nodeid", 0)): n for n in _dicts(status.get("nodes"))}
    members = []
    for nodeid in _ints(status.get("members")):
        node = nodes.get(nodeid, {})
        addresses = node.get("addresses", [])
        members.append({"nodeid": nodeid, "name": names.get(nodeid, ""), "addresses": addresses})
    return {
        "ring_id": status.get("ring_id", ""),
        "ring_seq": status.get("ring_seq", 0),
        "ring_rep": status.get("ring_rep", 0),
        "members": members,
    }


async def _op_quorum(call: _Call) -> dict[str, Any]:
    status = call.server.backend.status()
    quorum = status.get("quorum")
    out = dict(quorum) if isinstance(quorum, Mapping) else {}
    out.setdefault("quorate", False)
    out["node_id"] = status.get("node_id", 0)
    out["ring_id"] = status.get("ring_id", "")
    out["members"] = list(_ints(status.get("members")))
    return _plain_dict(out)


async def _op_nodes(call: _Call) -> dict[str, Any]:
    status = call.server.backend.status()
    members = set(_ints(status.get("members")))
    nodes = _dicts(status.get("nodes"))
    if not nodes:
        nodes = [{"nodeid": n, "name": ""} for n in sorted(members)]
    out = []
    for node in nodes:
        entry = dict(node)
        entry.setdefault("state", "member" if entry.get("nodeid") in members else "dead")
        entry["local"] = entry.get("nodeid") == status.get("node_id")
        out.append(entry)
    return _plain_dict({"nodes": out})


async def _op_links(call: _Call) -> dict[str, Any]:
    return _plain_dict({"links": _dicts(call.server.backend.status().get("links"))})


async def _op_stats(call: _Call) -> dict[str, Any]:
    stats = call.server.backend.status().get("stats")
    daemon = dict(stats) if isinstance(stats, Mapping) else {}
    return _plain_dict({"daemon": daemon, "ipc": dict(call.server.stats)})


async def _op_groups(call: _Call) -> dict[str, Any]:
    return _plain_dict({"groups": _dicts(call.server.backend.status().get("cpg_groups"))})


async def _op_track_start(call: _Call) -> dict[str, Any]:
    call.client.track_membership = bool(call.args.get("membership", True))
    call.client.track_quorum = bool(call.args.get("quorum", False))
    call.client.changes_only = bool(call.args.get("changes_only", False))
    return {}


async def _op_track_stop(call: _Call) -> dict[str, Any]:
    call.client.track_membership = call.client.track_quorum = False
    return {}


async def _op_cpg_join(call: _Call) -> dict[str, Any]:
    group = ipcproto.group_name(call.args.get("group"))
    pid = call.args.get("pid", call.client.cred.pid)
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "pid must be an integer")
    initial = bool(call.args.get("initial_totem_conf", False))
    call.client.used_cpg = True
    request = CpgJoin(call.client.handle, group, pid, initial)
    await call.server._core_request(lambda rid: ServiceRequest(_now(), CPG_SERVICE, request, rid))
    return {"group": ipcproto.group_text(group), "pid": pid}


async def _op_cpg_leave(call: _Call) -> dict[str, Any]:
    request = CpgLeave(call.client.handle, ipcproto.group_name(call.args.get("group")))
    await call.server._core_request(lambda rid: ServiceRequest(_now(), CPG_SERVICE, request, rid))
    return {}


async def _op_cpg_send(call: _Call) -> dict[str, Any]:
    request = CpgMcast(call.client.handle, ipcproto.group_name(call.args.get("group")), call.payload)
    await call.server._core_request(lambda rid: ServiceRequest(_now(), CPG_SERVICE, request, rid))
    return {}


async def _op_set_expected(call: _Call) -> dict[str, Any]:
    expected = _int_arg(call.args, "expected_votes")
    await call.server._core_request(lambda rid: SetExpectedVotes(_now(), expected, rid))
    return {"expected_votes": expected}


async def _op_set_votes(call: _Call) -> dict[str, Any]:
    votes = _int_arg(call.args, "votes")
    nodeid = call.args.get("nodeid", 0) or call.server.backend.status().get("node_id", 0)
    if not isinstance(nodeid, int):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "nodeid must be an integer")
    await call.server._core_request(lambda rid: SetVotes(_now(), NodeId(nodeid), votes, rid))
    return {"nodeid": nodeid, "votes": votes}


def _admin_op(make: Callable[[dict[str, Any]], AdminCommand]) -> Handler:
    async def handler(call: _Call) -> dict[str, Any]:
        return _plain_dict(await call.server.backend.admin(make(call.args)))

    return handler


_OPS: dict[str, tuple[Handler, bool]] = {
    "hello": (_op_hello, False),
    "status": (_op_status, False),
    "membership": (_op_membership, False),
    "quorum": (_op_quorum, False),
    "nodes": (_op_nodes, False),
    "links": (_op_links, False),
    "stats": (_op_stats, False),
    "groups": (_op_groups, False),
    "track_start": (_op_track_start, False),
    "track_stop": (_op_track_stop, False),
    "cpg_join": (_op_cpg_join, False),
    "cpg_leave": (_op_cpg_leave, False),
    "cpg_send": (_op_cpg_send, False),
    "dlm": (_admin_op(lambda a: DlmStatus()), False),
    "set_expected": (_op_set_expected, True),
    "set_votes": (_op_set_votes, True),
    "leave": (_admin_op(lambda a: LeaveCluster()), True),
    "kill": (_admin_op(lambda a: KillNode(NodeId(_int_arg(a, "nodeid")), _reason_arg(a))), True),
    "fence_ack": (_admin_op(lambda a: FenceAck(NodeId(_int_arg(a, "nodeid")))), True),
}


# --- the in-memory twin of the daemon ----------------------------------------------------------------------


class MemoryBackend:
    """An IpcBackend without a network: one node, a real CpgService looped back in order.

    For tests and client development. Requests are answered like the Stack answers them
    (RequestResult first, then the notifications); votequorum requests are checked for range
    only and applied to `quorum`. `publish()` injects any notification (membership, quorum).
    """

    def __init__(self, node_id: int = 1, cluster_name: str = "memory") -> None:
        self.node_id = NodeId(node_id)
        self.cpg = CpgService(self.node_id)
        self.ring_id = RingId(4, self.node_id)
        self.members: tuple[NodeId, ...] = (self.node_id,)
        self.names: dict[int, str] = {node_id: f"node{node_id}"}
        self.quorum: dict[str, Any] = {"quorate": True, "quorum": 1, "total_votes": 1, "expected_votes": 1}
        self.links: list[dict[str, Any]] = []
        self.cluster_name = cluster_name
        self.submitted: list[object] = []
        self.admin_log: list[AdminCommand] = []
        self.admin_results: dict[type, dict[str, Any]] = {}
        self._listeners: list[Callable[[object], None]] = []
        self.cpg.sync_init(self.ring_id, self.members, self.members)
        self.cpg.sync_process()
        self.cpg.sync_activate()

    def status(self) -> Mapping[str, Any]:
        return {
            "node_id": self.node_id,
            "cluster_name": self.cluster_name,
            "version": "memory",
            "state": "OPERATIONAL",
            "ring_id": str(self.ring_id),
            "ring_seq": self.ring_id.seq,
            "ring_rep": self.ring_id.rep,
            "members": list(self.members),
            "nodes": [
                {"nodeid": n, "name": self.names.get(n, ""), "addresses": [f"192.0.2.{n}"], "votes": 1}
                for n in sorted(set(self.members) | set(self.names))
            ],
            "quorum": dict(self.quorum),
            "links": list(self.links),
            "stats": {"submitted": len(self.submitted)},
            "cpg_groups": [
                {"name": ipcproto.group_text(g.name), "members": [list(m) for m in g.members]}
                for g in self.cpg.groups()
            ],
        }

    def submit(self, event: object) -> None:
        self.submitted.append(event)
        request_id = getattr(event, "request_id", 0)
        try:
            outputs = self._outputs(event)
        except UsageError as exc:
            self.publish(RequestResult(request_id, exc.code, str(exc)))
            return
        self.publish(RequestResult(request_id))
        queue = list(outputs)
        while queue:  # a one-node agreed order: our own messages come straight back
            item = queue.pop(0)
            if hasattr(item, "function") and hasattr(item, "message"):
                queue += self.cpg.on_message(self.node_id, item.function, item.message)
            else:
                self.publish(item)

    def _outputs(self, event: object) -> list[Any]:
        if isinstance(event, ServiceRequest) and event.service_id == CPG_SERVICE:
            return list(self.cpg.on_local_request(event.request))
        if isinstance(event, SetExpectedVotes):
            if event.expected_votes < 1:
                raise UsageError(ErrorCode.INVALID_PARAM, "expected votes must be at least 1")
            self.quorum["expected_votes"] = event.expected_votes
            return []
        if isinstance(event, SetVotes):
            if event.votes < 0:
                raise UsageError(ErrorCode.INVALID_PARAM, "votes must not be negative")
            return []
        raise UsageError(ErrorCode.NOT_SUPPORTED, f"{type(event).__name__} is not served")

    def subscribe(self, listener: Callable[[object], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[object], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def admin(self, command: AdminCommand) -> dict[str, Any]:
        self.admin_log.append(command)
        result = self.admin_results.get(type(command))
        if result is None:
            what = type(command).__name__
            raise UsageError(ErrorCode.NOT_SUPPORTED, f"{what} is not supported by this daemon")
        return result

    def publish(self, note: object) -> None:
        """Hand `note` to every subscriber, as the daemon does with the core's notifications."""
        for listener in list(self._listeners):
            listener(note)

    def change_membership(self, ring_id: RingId, members: tuple[NodeId, ...]) -> MembershipChanged:
        """Install a new membership and publish its MembershipChanged (and the cpg sync's output)."""
        old = set(self.members)
        change = MembershipChanged(
            ring_id, members, tuple(sorted(set(members) - old)), tuple(sorted(old - set(members))), ()
        )
        self.ring_id, self.members = ring_id, members
        self.publish(change)
        return change


# --- small helpers ----------------------------------------------------------------------------------------


def _now() -> Instant:
    return Instant(time.monotonic_ns())


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _peer_cred(writer: asyncio.StreamWriter) -> PeerCred:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:] if g.isdigit()}
    return set()


def _remove_stale_socket(path: Path) -> None:
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left behind by a daemon that died
        return
    finally:
        probe.close()
    raise OSError(f"{path} is served by another running daemon")


def _int_arg(args: Mapping[str, Any], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} must be an integer")
    return value


def _reason_arg(args: Mapping[str, Any]) -> str | None:
    """The optional `reason` of a kill (its length is checked by the cfg service: 255 bytes)."""
    value = args.get("reason")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(ErrorCode.BAD_REQUEST, "reason must be a non-empty string")
    return value


def _ints(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else []


def _dicts(value: object) -> list[dict[str, Any]]:
    return [dict(v) for v in value if isinstance(v, Mapping)] if isinstance(value, list | tuple) else []


def _node_names(status: Mapping[str, Any]) -> dict[int, str]:
    return {int(n.get("nodeid", 0)): str(n.get("name", "")) for n in _dicts(status.get("nodes"))}


def _member(nodeid: NodeId, names: Mapping[int, str], change: str) -> dict[str, Any]:
    return {"nodeid": nodeid, "name": names.get(nodeid, ""), "change": change}


def _ring(ring_id: RingId) -> dict[str, int]:
    return {"ring_seq": ring_id.seq, "ring_rep": ring_id.rep}


def _addr(a: CpgAddress) -> dict[str, int]:
    return {"nodeid": a.nodeid, "pid": a.pid, "reason": a.reason}


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    """A JSON-able copy: tuples become lists, ring ids strings, other objects their str()."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


__all__ = [
    "AdminCommand",
    "DlmStatus",
    "FenceAck",
    "IpcBackend",
    "IpcConfig",
    "IpcServer",
    "KillNode",
    "LeaveCluster",
    "MemoryBackend",
    "PeerCred",
]
