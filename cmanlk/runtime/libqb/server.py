"""The libqb IPC server of cmanlkd: corosync's five local services for unmodified clients (docs/libqb.md).

One listening socket per service face (cmap, cfg, cpg, quorum, votequorum), named as libqb names
them (setup.py). For each connection: the handshake (setup.py), corosync's accept policy, the
channels of the configured type (SHM rings or SOCKET datagrams), then requests go to the face and
its outputs come back here to be written.

Accept policy (corosync's cs_ipcs_connection_accept): until the node has published its first
membership every connection is refused with EAGAIN (libraries answer CS_ERR_TRY_AGAIN and
retry); root (uid or gid 0) is always accepted, anyone else only when cmap says so (uidgid keys,
`allows`); past `max_connections` (a bound corosync does not have) EMFILE. A refused client
gets the connection response with the error and is closed; nothing is created for it.

Batching: on a wake-up every queued request chunk of the connection is taken (up to
MAX_REQUESTS_PER_WAKE, then the loop is given back and the rest follows at once); events are
written into their rings as the faces produce them and announced once per loop iteration
(`_flush`): one semaphore post per event, one `send` of the notification bytes per connection.

Flow control: a request a face cannot take now (`Hold`, cpg's full send window or a sync) stays
at the head of its connection, libqb's flag tells the client library to back off its mcasts, and
the request is offered again when the core moves (`wake`) or after a short pause. A client that
stops reading fills its event ring; its events then wait here, it is throttled (its mcasts get
CS_ERR_TRY_AGAIN) and past `queue_bytes`/`queue_events` it is disconnected.

Housekeeping: every connection's files live in /dev/shm/qb-<server pid>-<client pid>-<fd>-*/ and
are removed when it ends; directories left by an earlier cmanlkd that died are removed at start
(its pid is kept in `pid_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cmanlk.runtime.libqb import setup
from cmanlk.runtime.libqb.connection import Channels, PendingQueue, ShmChannels, remove_directory
from cmanlk.runtime.libqb.rings import FC_MCAST, FC_OFF, RingError
from cmanlk.services.cpg.service import Handle
from cmanlk.services.lib import Disconnect, Event, Hold, LibFace, LibOutput, Peer, Response
from cmanlk.types import Instant

log = logging.getLogger("cmanlk.libqb")

FIRST_HANDLE = 1 << 40
"""libqb connections get handles from here on, apart from the cmanlk IPC server's (which count
from 1): the cpg service keys local processes by handle."""
MAX_CONNECTIONS = 256
MAX_PENDING_SETUPS = 64
"""Connections still in the handshake; more are closed at once."""
SETUP_TIMEOUT_S = 5.0
"""A client that connects and sends no connection request within this is closed."""
MAX_MSG_SIZE = 4 * 1024 * 1024
"""The most buffer a client may ask for (libqb takes any; each SHM connection costs three rings
of this size in /dev/shm). corosync's libraries ask for 1 MiB."""
MIN_MSG_SIZE = setup.CONNECTION_RESPONSE_SIZE
QUEUE_BYTES = 16 * 1024 * 1024
"""Events and responses waiting for a full ring, per connection, before it is disconnected."""
QUEUE_EVENTS = 16_384
MAX_REQUESTS_PER_WAKE = 256
RETRY_PAUSE_S = (0.0005, 0.05)
CHECK_INTERVAL_S = 0.05
"""A connection's files are checked for truncation at most this often (six stat calls each)."""
"""First and longest pause between offers of a held request or flushes of a full ring."""


@dataclass(slots=True)
class _Setup:
    """A connection in the handshake: the request read so far and the credentials it came with."""

    name: str
    conn: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    creds: setup.Credentials | None = None
    fd: int = -1

    def __post_init__(self) -> None:
        self.fd = self.conn.fileno()


@dataclass(slots=True)
class Session:
    """One accepted connection."""

    handle: Handle
    peer: Peer
    face: LibFace
    channels: Channels
    description: Path
    held: bytes | None = None
    events: PendingQueue = field(default_factory=PendingQueue)
    responses: PendingQueue = field(default_factory=PendingQueue)
    pause: float = RETRY_PAUSE_S[0]
    timer: asyncio.TimerHandle | None = None
    closed: bool = False
    writing: bool = False
    fds: tuple[int, ...] = ()
    checked_at: float = 0.0


class LibqbServer:
    """The server (module docstring). `await start()`, later `await close()`."""

    def __init__(
        self,
        faces: Iterable[LibFace],
        *,
        allows: Callable[[int, int], bool],
        ready: Callable[[], bool],
        ipc_type: str = "native",
        shm_dir: str = "/dev/shm",
        pid_file: Path | None = None,
        max_connections: int = MAX_CONNECTIONS,
        filesystem_sockets: bool | None = None,
        names: Mapping[str, str] | None = None,
        queue_bytes: int = QUEUE_BYTES,
        queue_events: int = QUEUE_EVENTS,
    ) -> None:
        """`names` replaces the socket name of a face (tests run beside a real corosync);
        `queue_bytes`/`queue_events` bound what waits for one slow client."""
        self.faces = {f.name: f for f in faces}
        self._timed = frozenset(name for name, f in self.faces.items() if hasattr(f, "next_deadline"))
        self.names = dict(names or {})
        self.queue_bytes = queue_bytes
        self.queue_events = queue_events
        self.allows = allows
        self.ready = ready
        self.ipc_type = ipc_type
        self.shm_dir = Path(shm_dir)
        self.pid_file = pid_file
        self.max_connections = max_connections
        self.filesystem_sockets = filesystem_sockets
        self.sessions: dict[Handle, Session] = {}
        self.stats: dict[str, int] = {}
        self._listeners: dict[str, socket.socket] = {}
        self._setups: dict[int, _Setup] = {}
        self._next_handle = FIRST_HANDLE
        self._dirty: set[Handle] = set()
        self._held: set[Handle] = set()
        self._flush_scheduled = False
        self._face_timers: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Clean stale files, then listen on every face's name.

        Raises OSError naming the service when a name is taken (another corosync or cmanlkd in
        this network namespace).
        """
        self._loop = asyncio.get_running_loop()
        self._clean_stale()
        for name in self.faces:
            try:
                sock = setup.listen_socket(self.names.get(name, name), self.filesystem_sockets)
            except OSError as exc:
                await self.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(
                        exc.errno, f"libqb service {name!r} is already served here (corosync?)"
                    ) from exc
                raise
            self._listeners[name] = sock
            self._loop.add_reader(sock.fileno(), self._accept, name)
        log.info("libqb IPC: serving %s (%s)", ", ".join(self.faces), self.channel_type)

    async def close(self) -> None:
        """Stop listening and end every connection (their files are removed)."""
        loop = self._loop
        for sock in self._listeners.values():
            if loop is not None:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for pending in list(self._setups.values()):
            self._drop_setup(pending)
            pending.conn.close()
        for session in list(self.sessions.values()):
            self._end(session, "server closing")
        for timer in self._face_timers.values():
            timer.cancel()
        self._face_timers.clear()
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    @property
    def channel_type(self) -> str:
        """ "shm" or "socket": what `system.qb_ipc_type` selects (native is shm)."""
        return "socket" if self.ipc_type == "socket" else "shm"

    # --- routing outputs ---------------------------------------------------------------------------

    def deliver(self, outputs: Iterable[LibOutput]) -> None:
        """Carry out what a face returned (responses, events, holds, disconnects)."""
        for out in outputs:
            session = self.sessions.get(out.handle)
            if session is None or session.closed:
                continue
            match out:
                case Response(data=data):
                    self._respond(session, data)
                case Event(data=data):
                    self._event(session, data)
                case Hold():
                    pass  # handled by the request loop that got it
                case Disconnect(reason=reason):
                    self._count("disconnect_protocol")
                    self._end(session, reason)

    def wake(self) -> None:
        """The core moved (a delivery, a new ring): offer held requests again now."""
        if not self._held:
            return
        for handle in list(self._held):
            session = self.sessions.get(handle)
            if session is not None and session.held is not None and not session.closed:
                self._retry_soon(session, 0.0)

    def face_timer(self, face: LibFace) -> None:
        """(Re)arm `face`'s timer from its `next_deadline`, if it has one."""
        deadline = getattr(face, "next_deadline", None)
        timer = self._face_timers.pop(face.name, None)
        if timer is not None:
            timer.cancel()
        if deadline is None or self._loop is None:
            return
        self._face_timers[face.name] = self._loop.call_at(deadline / 1e9, self._on_face_timer, face)

    def _on_face_timer(self, face: LibFace) -> None:
        self._face_timers.pop(face.name, None)
        advance = getattr(face, "advance", None)
        if advance is not None:
            self.deliver(advance(Instant(time.monotonic_ns())))
        self.face_timer(face)

    # --- accepting -------------------------------------------------------------------------------

    def _accept(self, name: str) -> None:
        sock = self._listeners.get(name)
        if sock is None:
            return
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._count("accept_failed")
            log.warning("libqb %s: accept failed: %s", name, exc)
            return
        if len(self._setups) >= MAX_PENDING_SETUPS:
            self._count("refused_setup_backlog")
            conn.close()
            return
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        pending = _Setup(name, conn)
        self._setups[conn.fileno()] = pending
        assert self._loop is not None
        self._loop.add_reader(conn.fileno(), self._on_setup, pending)
        self._loop.call_later(SETUP_TIMEOUT_S, self._setup_timeout, pending)

    def _setup_timeout(self, pending: _Setup) -> None:
        if self._setups.get(pending.fd) is pending:
            self._count("setup_timeout")
            self._drop_setup(pending)
            pending.conn.close()

    def _drop_setup(self, pending: _Setup) -> None:
        if self._setups.get(pending.fd) is pending:
            del self._setups[pending.fd]
            if self._loop is not None:
                self._loop.remove_reader(pending.fd)

    def _on_setup(self, pending: _Setup) -> None:
        conn = pending.conn
        try:
            data, ancdata, _flags, _addr = conn.recvmsg(
                setup.CONNECTION_REQUEST_SIZE - len(pending.buffer), setup.CMSG_CREDENTIALS_SPACE
            )
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_setup(pending)
            conn.close()
            return
        pending.buffer += data
        if pending.creds is None:
            pending.creds = setup.credentials_from_ancillary(ancdata) or setup.peer_credentials(conn)
        if len(pending.buffer) < setup.CONNECTION_REQUEST_SIZE:
            return
        self._drop_setup(pending)
        self._handshake(pending.name, conn, bytes(pending.buffer), pending.creds)

    def _handshake(self, name: str, conn: socket.socket, raw: bytes, creds: setup.Credentials) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        request = setup.decode_request(raw)
        if request.message_id != setup.MSG_AUTHENTICATE:
            self._count("setup_not_authenticate")
            conn.close()
            return
        refusal = self._refusal(creds)
        if refusal is not None:
            self._count(f"refused_{errno.errorcode.get(refusal, refusal)}")
            if refusal == errno.EACCES:
                log.warning("libqb %s: denied connection from pid %d uid %d gid %d", name, *_ids(creds))
            self._send_response(conn, setup.ConnectionResponse(-refusal))
            conn.close()
            return
        try:
            session = self._open(name, conn, request, creds)
        except OSError as exc:
            self._count("setup_failed")
            log.error("libqb %s: cannot set up a connection for pid %d: %s", name, creds.pid, exc)
            self._send_response(conn, setup.ConnectionResponse(-(exc.errno or errno.EIO)))
            conn.close()
            return
        self._started(session)

    def _refusal(self, creds: setup.Credentials) -> int | None:
        if not self.ready():
            return errno.EAGAIN
        if not self.allows(creds.uid, creds.gid):
            return errno.EACCES
        if len(self.sessions) >= self.max_connections:
            return errno.EMFILE
        return None

    def _open(
        self, name: str, conn: socket.socket, request: setup.ConnectionRequest, creds: setup.Credentials
    ) -> Session:
        size = min(max(request.max_msg_size, MIN_MSG_SIZE), MAX_MSG_SIZE)
        prefix = f"qb-{os.getpid()}-{creds.pid}-{conn.fileno()}-"
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir=self.shm_dir))
        try:
            os.chmod(directory, 0o770)
            with contextlib.suppress(OSError):
                os.chown(directory, creds.uid, creds.gid)
            channels, names = self._channels(conn, directory, name, size, creds)
        except BaseException:
            remove_directory(directory)
            raise
        handle = Handle(self._next_handle)
        self._next_handle += 1
        peer = Peer(handle, creds.pid, creds.uid, creds.gid, size)
        session = Session(handle, peer, self.faces[name], channels, directory)
        response = setup.ConnectionResponse(0, self._type_code(), size, handle, *names)
        if not self._send_response(conn, response):
            channels.close()
            raise OSError(errno.EIO, "the connection response could not be sent whole")
        return session

    def _channels(
        self, conn: socket.socket, directory: Path, name: str, size: int, creds: setup.Credentials
    ) -> tuple[Channels, tuple[str, str, str]]:
        if self.channel_type == "socket":
            from cmanlk.runtime.libqb.dgram import SocketChannels

            sockets = SocketChannels.create(conn, directory, name, size, creds.uid, creds.gid)
            return sockets, sockets.names
        shm = ShmChannels.create(conn, directory, name, size, creds.uid, creds.gid)
        return shm, shm.names

    def _type_code(self) -> int:
        return setup.IPC_SOCKET if self.channel_type == "socket" else setup.IPC_SHM

    @staticmethod
    def _send_response(conn: socket.socket, response: setup.ConnectionResponse) -> bool:
        data = setup.encode_response(response)
        try:
            return conn.send(data, socket.MSG_NOSIGNAL) == len(data)  # one send: libqb 2.0.6 needs it whole
        except OSError:
            return False

    def _started(self, session: Session) -> None:
        self.sessions[session.handle] = session
        self._count("connections")
        assert self._loop is not None
        session.fds = session.channels.reader_fds()
        for fd in session.fds:
            self._loop.add_reader(fd, self._on_readable, session)
        log.debug("libqb %s: connection %d from pid %d", session.face.name, session.handle, session.peer.pid)
        self.deliver(session.face.connect(session.peer))

    # --- requests --------------------------------------------------------------------------------

    def _on_readable(self, session: Session) -> None:
        if session.closed:
            return
        if not session.channels.drain_socket():
            self._end(session, "client closed the connection")
            return
        self._serve(session)

    def _serve(self, session: Session) -> None:
        """Take queued requests until none is left, one is held, or the batch bound is reached."""
        if session.held is not None or session.closed:
            return
        try:
            now = time.monotonic()
            if now - session.checked_at >= CHECK_INTERVAL_S:
                session.channels.check()
                session.checked_at = now
            for _ in range(MAX_REQUESTS_PER_WAKE):
                chunk = session.channels.take_request()
                if chunk is None:
                    return
                if not self._request(session, chunk) or session.closed:
                    return
        except (RingError, OSError) as exc:
            self._count("channel_broken")
            self._end(session, f"channel broken: {exc}")
            return
        assert self._loop is not None
        self._loop.call_soon(self._serve, session)  # more queued: after the others had a turn

    def _request(self, session: Session, chunk: bytes) -> bool:
        """Serve one chunk; False when it is held (the connection waits)."""
        if len(chunk) >= 16 and int.from_bytes(chunk[0:4], "little", signed=True) == setup.MSG_DISCONNECT:
            self._end(session, "client asked to disconnect")
            return False
        outputs = session.face.request(session.peer, chunk)
        if outputs and any(isinstance(o, Hold) and o.handle == session.handle for o in outputs):
            session.held = chunk
            self._held.add(session.handle)
            session.channels.set_flow_control(FC_MCAST)
            self._retry_soon(session, session.pause)
        self.deliver(outputs)
        if session.face.name in self._timed:
            self.face_timer(session.face)
        return session.held is None

    def _retry_soon(self, session: Session, delay: float) -> None:
        if session.timer is not None:
            session.timer.cancel()
        assert self._loop is not None
        session.timer = self._loop.call_later(delay, self._retry, session)

    def _retry(self, session: Session) -> None:
        session.timer = None
        if session.closed:
            return
        if session.events or session.responses:
            self._drain_pending(session)
        held, session.held = session.held, None
        self._held.discard(session.handle)
        if held is not None and not self._request(session, held):
            session.pause = min(session.pause * 2, RETRY_PAUSE_S[1])
            return
        session.pause = RETRY_PAUSE_S[0]
        if session.held is None and not session.events:
            session.channels.set_flow_control(FC_OFF)
        self._serve(session)

    # --- responses and events --------------------------------------------------------------------

    def _respond(self, session: Session, data: bytes) -> None:
        if session.responses or not session.channels.put_response(data):
            session.responses.append(data)
            self._queued(session)

    def _event(self, session: Session, data: bytes) -> None:
        if session.events or not session.channels.put_event(data):
            session.events.append(data)
            self._queued(session)
        self._dirty.add(session.handle)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _queued(self, session: Session) -> None:
        """A ring was full: throttle the client, bound what waits, retry later."""
        waiting = session.events.bytes + session.responses.bytes
        if waiting > self.queue_bytes or len(session.events) + len(session.responses) > self.queue_events:
            self._count("disconnect_too_slow")
            log.warning(
                "libqb %s: pid %d reads nothing: %d bytes of events waiting; disconnected",
                session.face.name, session.peer.pid, waiting,
            )  # fmt: skip
            self._end(session, "too slow")
            return
        session.channels.set_flow_control(FC_MCAST)
        if session.timer is None:
            self._retry_soon(session, session.pause)

    def _drain_pending(self, session: Session) -> None:
        while session.responses and session.channels.put_response(session.responses.items[0]):
            session.responses.popleft()
        while session.events and session.channels.put_event(session.events.items[0]):
            session.events.popleft()
        self._dirty.add(session.handle)
        self._flush()
        if (session.events or session.responses) and session.timer is None:
            session.pause = min(session.pause * 2, RETRY_PAUSE_S[1])
            self._retry_soon(session, session.pause)

    def _flush(self) -> None:
        """Announce the events written since the last flush (module docstring, "Batching")."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for handle in dirty:
            session = self.sessions.get(handle)
            if session is None or session.closed:
                continue
            try:
                complete = session.channels.announce()
            except OSError as exc:
                self._end(session, f"notification failed: {exc}")
                continue
            if not complete and not session.writing and self._loop is not None:
                session.writing = True
                self._loop.add_writer(session.channels.setup.fileno(), self._on_writable, session)

    def _on_writable(self, session: Session) -> None:
        if session.closed:
            return
        if session.channels.announce():
            session.writing = False
            assert self._loop is not None
            self._loop.remove_writer(session.channels.setup.fileno())

    # --- ending ----------------------------------------------------------------------------------

    def _end(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.handle, None)
        self._dirty.discard(session.handle)
        self._held.discard(session.handle)
        if session.timer is not None:
            session.timer.cancel()
        if self._loop is not None:
            for fd in session.fds:
                self._loop.remove_reader(fd)
            if session.writing:
                self._loop.remove_writer(session.fds[0])
        session.channels.close()
        log.debug("libqb %s: connection %d (pid %d) ended: %s", session.face.name, session.handle,
                  session.peer.pid, reason)  # fmt: skip
        self.deliver(session.face.disconnect(session.handle))
        if session.face.name in self._timed:
            self.face_timer(session.face)

    def _clean_stale(self) -> None:
        """Remove connection directories of an earlier cmanlkd that is gone; record our pid."""
        if self.pid_file is None:
            return
        with contextlib.suppress(OSError, ValueError):
            old = int(self.pid_file.read_text().strip())
            if old != os.getpid() and not _alive(old):
                for path in self.shm_dir.glob(f"qb-{old}-*"):
                    if path.is_dir():
                        remove_directory(path)
                        self._count("stale_removed")
        with contextlib.suppress(OSError):
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{os.getpid()}\n")

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1

    def counters(self) -> Mapping[str, int]:
        """Server counters plus every face's (prefixed with the face's name)."""
        out = dict(self.stats)
        out["active"] = len(self.sessions)
        for face in self.faces.values():
            for key, value in getattr(face, "stats", {}).items():
                out[f"{face.name}.{key}"] = value
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ids(creds: setup.Credentials) -> tuple[int, int, int]:
    return creds.pid, creds.uid, creds.gid
