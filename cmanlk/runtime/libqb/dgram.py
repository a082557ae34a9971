"""libqb's SOCKET channel type (lib/ipc_socket.c of libqb 2.0): datagram sockets, `qb_ipc_type: socket`.

Names, with `base = <description>-<service>` (for example /dev/shm/qb-1-2-9-x/qb-cpg), all in the
abstract namespace (a name that starts with "/" is abstract even when libqb is told to use
filesystem sockets), padded to 108 bytes like the setup socket:

- we bind `base-request` (requests in, responses out, sent to the client's `base-response`) and
  `base-event-tx` (events, sent to the client's `base-event`); the client binds its two after it
  has our connection response, so a send that finds its address missing waits in the queue;
- `<description>-control-<service>` is a 24-byte file of three {sent, flow_control} i32 pairs;
  the client reads the request pair's flow_control before each send (qb_ipcc_send), so our
  flow-control flag goes there. Nobody reads `sent`, so we leave it.

One datagram is one message. Liveness is the setup socket: the client closes it when it goes.
Datagram sizes are capped by the socket buffers: we raise ours with SO_SNDBUFFORCE (root) to
the connection's message size; the client raises its own only up to net.core.wmem_max, as with
corosync (libqb's qb_ipcc_verify_dgram_max_msg_size is for this; corosync does not call it).
That, and pacemaker's refusal of a SOCKET-type provider (docs/libqb.md), is why SHM is the default.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import struct
from pathlib import Path

from cmanlk.runtime.libqb.connection import remove_directory
from cmanlk.runtime.libqb.rings import FC_OFF, RingError
from cmanlk.runtime.libqb.setup import abstract_address

CONTROL_SIZE = 24
_FLOW = struct.Struct("<i")
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class SocketChannels:
    """The SOCKET channel type (module docstring); implements connection.Channels."""

    def __init__(
        self,
        setup: socket.socket,
        directory: Path,
        control_path: str,
        control: mmap.mmap,
        base: str,
        requests: socket.socket,
        events: socket.socket,
        max_msg_size: int,
    ) -> None:
        self.setup = setup
        self.directory = directory
        self.control_path = control_path
        self._control = control
        self.base = base
        self.requests = requests
        self.events = events
        self.max_msg_size = max_msg_size
        self._responses_connected = False
        self._events_connected = False
        self._flow = FC_OFF
        self.closed = False

    @classmethod
    def create(
        cls, setup: socket.socket, directory: Path, service: str, max_msg_size: int, uid: int, gid: int
    ) -> SocketChannels:
        """Create the control file and bind our two sockets. Raises OSError (nothing is left)."""
        description = str(directory / "qb")
        control_path = f"{description}-control-{service}"
        base = f"{description}-{service}"
        made: list[socket.socket] = []
        fd = os.open(control_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, CONTROL_SIZE)
            with contextlib.suppress(OSError):
                os.fchown(fd, uid, gid)
            control = mmap.mmap(fd, CONTROL_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            for suffix in ("request", "event-tx"):
                made.append(_bound(f"{base}-{suffix}", max_msg_size))
        except BaseException:
            for s in made:
                s.close()
            with contextlib.suppress(OSError):
                os.unlink(control_path)
            raise
        finally:
            os.close(fd)
        return cls(setup, directory, control_path, control, base, made[0], made[1], max_msg_size)

    @property
    def names(self) -> tuple[str, str, str]:
        """request (the control file), response (the base name), event (unused by clients)."""
        return self.control_path, self.base, self.base

    def reader_fds(self) -> tuple[int, ...]:
        """The setup socket (liveness) and the request socket."""
        return self.setup.fileno(), self.requests.fileno()

    def take_request(self) -> bytes | None:
        try:
            data = self.requests.recv(self.max_msg_size + 1)
        except BlockingIOError:
            return None
        if len(data) > self.max_msg_size:
            raise RingError(f"a request of more than {self.max_msg_size} bytes")
        return data

    def drain_socket(self) -> bool:
        try:
            return bool(self.setup.recv(4096))
        except BlockingIOError:
            return True
        except OSError:
            return False

    def put_response(self, data: bytes) -> bool:
        if not self._responses_connected:
            self._responses_connected = self._connect(self.requests, f"{self.base}-response")
            if not self._responses_connected:
                return False
        return self._send(self.requests, data)

    def put_event(self, data: bytes) -> bool:
        if not self._events_connected:
            self._events_connected = self._connect(self.events, f"{self.base}-event")
            if not self._events_connected:
                return False
        return self._send(self.events, data)

    def announce(self) -> bool:
        return True  # events are datagrams: nothing to announce

    def set_flow_control(self, level: int) -> None:
        if level != self._flow and not self.closed:
            self._flow = level
            _FLOW.pack_into(self._control, 4, level)

    def check(self) -> None:
        try:
            size = os.stat(self.control_path).st_size
        except OSError as exc:
            raise RingError(f"{self.control_path}: {exc.strerror}") from None
        if size < CONTROL_SIZE:
            raise RingError(f"{self.control_path}: {size} bytes, {CONTROL_SIZE} mapped")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.setup, self.requests, self.events):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(ValueError, BufferError):
            self._control.close()
        with contextlib.suppress(OSError):
            os.unlink(self.control_path)
        remove_directory(self.directory)

    @staticmethod
    def _connect(sock: socket.socket, name: str) -> bool:
        try:
            sock.connect(abstract_address(name))
        except (ConnectionRefusedError, FileNotFoundError):
            return False  # the client has not bound it yet: the message waits
        return True

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOTCONN):
                raise RingError("the client's socket is gone") from exc
            raise
        return True


def _bound(name: str, max_msg_size: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.bind(abstract_address(name))
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, max_msg_size * 2)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, max_msg_size * 2)
    except BaseException:
        sock.close()
        raise
    return sock
