"""The local client API of cmanlkd: an asyncio Unix-socket server speaking cmanlk/client/proto.py.

docs/ipc.md is the manual (frames, ops, events, error codes). This module is the edge between
local clients (cmanlk-tool, cmanlk.client, cluster subsystems) and the daemon, which it reaches
only through a `Backend` (cmanlk/runtime/backend.py: NodeBackend over the running node, and
MemoryBackend, the in-memory twin the tests use): the status snapshot its answers are rendered
from, `submit()` for the requests the core answers, the core's notifications, `admin()` for the
rest. What each op does is in ipc_ops.py; this module is connections, frames, flow and events.

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
from dataclasses import dataclass
from pathlib import Path

from cmanlk.client import proto as ipcproto
from cmanlk.client.connection import SEND_RETRY_TIMEOUT_S, Retry, RetryPolicy
from cmanlk.client.proto import ProtocolError
from cmanlk.errors import ErrorCode, UsageError
from cmanlk.runtime.backend import Backend
from cmanlk.runtime.ipc_ops import OPS, Call, ring_fields, track_view
from cmanlk.runtime.node import RequestBuilder, answer_of
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import (
    ClientGone,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgMcast,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged, RequestResult, ServiceRequest
from cmanlk.types import Instant

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

    def __init__(self, backend: Backend, config: IpcConfig | None = None) -> None:
        self.backend = backend
        self.config = config or IpcConfig()
        self._server: asyncio.AbstractServer | None = None
        self._clients: dict[Handle, _Client] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_handle = 0
        self._retry_waiters: list[asyncio.Future[None]] = []  # held pipelined MCASTs (try_again)
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
            gone = ClientGone(client.handle)  # not flow-controlled: nobody could retry it
            with contextlib.suppress(UsageError):  # not running: nobody to tell
                self.backend.submit(lambda t, rid: ServiceRequest(t, CPG_SERVICE, gone, rid, False))

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
            entry = OPS.get(op)
            if entry is None:
                raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
            handler, privileged = entry
            if privileged and client.cred.uid != 0:
                raise ProtocolError(ErrorCode.PERMISSION_DENIED, f"{op} is for root only")
            result = await handler(Call(self, client, args, frame.payload))
        except ProtocolError as exc:
            client.send(ipcproto.error(request_id, exc.code, str(exc)))
            return
        except UsageError as exc:
            client.send(ipcproto.error(request_id, exc.code, str(exc)))
            return
        client.send(ipcproto.reply(request_id, result))
        if op == "track_start":
            self._send_current_view(client)

    async def request(self, build: RequestBuilder) -> None:
        """Hand a local request to the core and wait for its answer.

        Raises UsageError with the core's refusal, `timeout` after request_timeout_s (a core
        that never answers), or as the backend's submit (not_running, busy).
        """
        await answer_of(self.backend.submit(build), self.config.request_timeout_s)

    # --- pipelined sends (version 2) -----------------------------------------------------------------

    async def _on_mcast(self, client: _Client, seq: int, group: bytes, payload: bytes) -> None:
        """Hand one pipelined MCAST to the core; retry try_again in order; report a refusal."""
        request = CpgMcast(client.handle, group, payload)

        def build(t: Instant, rid: int) -> ServiceRequest:
            return ServiceRequest(t, CPG_SERVICE, request, rid)

        retry: Retry | None = None
        while True:
            try:
                answer = self.backend.submit(build)
                if isinstance(answer, asyncio.Future) or answer.error is not None:
                    await answer_of(answer, self.config.request_timeout_s)  # raises the refusal
                # accepted at once (the common case): no coroutine, no await
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

    # --- notifications from the core -----------------------------------------------------------------

    def _on_notification(self, note: object) -> None:
        if isinstance(note, RequestResult):
            return  # answers come back from backend.submit
        if self._retry_waiters:
            self._wake_retries()
        match note:
            case CpgDeliver():
                self._deliver(note)
            case CpgConfchg():
                data: dict[str, object] = {
                    "group": ipcproto.group_text(note.group),
                    "members": [_addr(a) for a in note.members],
                    "left": [_addr(a) for a in note.left],
                    "joined": [_addr(a) for a in note.joined],
                }
                self._to_handles(note.handles, ipcproto.event(ipcproto.EV_CPG_CONFCHG, data))
            case CpgTotemConfchg():
                data = {**ring_fields(note.ring_id), "members": list(note.members)}
                self._to_handles(note.handles, ipcproto.event(ipcproto.EV_CPG_TOTEM_CONFCHG, data))
            case MembershipChanged():
                snapshot = self.backend.snapshot()
                for client in [c for c in self._clients.values() if c.track_membership]:
                    view = track_view(snapshot, note.ring_id, note.members, note.joined, note.left,
                                      client.changes_only, current=False)  # fmt: skip
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

    def _send_current_view(self, client: _Client) -> None:
        if not client.track_membership:
            return
        s = self.backend.snapshot()
        data = track_view(s, s.ring_id, s.members, (), (), changes_only=False, current=True)
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


# --- small helpers ----------------------------------------------------------------------------------------


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


def _addr(a: CpgAddress) -> dict[str, int]:
    return {"nodeid": a.nodeid, "pid": a.pid, "reason": a.reason}


__all__ = ["IpcConfig", "IpcServer", "PeerCred"]
