"""One libqb client connection's channels, as libqb's server side (lib/ipcs.c, ipc_shm.c, ipc_socket.c).

A `Channels` object moves chunks; the server (server.py) decides what to do with them. Two kinds:

- `ShmChannels`: three rings in /dev/shm (request, response, event) plus the setup socket, which
  carries one notification byte per request (client → us) and per event (us → client).
  Requests are taken while the request semaphore has units; responses are posted at once (the
  library waits for them); events are written into the event ring as they come and announced
  together — one semaphore post per event and one `send` of all their notification bytes per
  batch (`announce`), bytes the socket cannot take yet are sent when it becomes writable.
- `SocketChannels` (dgram.py): datagram sockets, one message per datagram.

When a ring is full the chunk waits in the connection's own queue (`pending_events`,
`pending_responses`), bounded by the server: past the bound the client is disconnected, never
the daemon's memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
from collections import deque
from pathlib import Path
from typing import Protocol

from cmanlk.runtime.libqb.rings import FC_OFF, Ring, RingError
from cmanlk.runtime.libqb.setup import close_connection


class Channels(Protocol):
    """What the server needs of a connection's channels (SHM or SOCKET)."""

    setup: socket.socket

    def reader_fds(self) -> tuple[int, ...]:
        """The descriptors to watch for requests and for the client going away."""
        ...

    def take_request(self) -> bytes | None:
        """The next request chunk, or None. Raises RingError/OSError for a broken channel."""
        ...

    def drain_socket(self) -> bool:
        """Read what the setup socket holds; False when the client hung up."""
        ...

    def put_response(self, data: bytes) -> bool:
        """Send a response; False when the channel is full (try again later)."""
        ...

    def put_event(self, data: bytes) -> bool:
        """Queue an event for `announce`; False when the channel is full."""
        ...

    def announce(self) -> bool:
        """Make the events put since the last call visible; False while notification bytes wait
        for the socket to become writable."""
        ...

    def set_flow_control(self, level: int) -> None:
        """Set libqb's request flow-control flag (rings.FC_OFF, FC_ALL, FC_MCAST)."""
        ...

    def check(self) -> None:
        """Raise RingError when the client damaged the channel's files."""
        ...

    def close(self) -> None:
        """Release everything (files of SHM rings are unlinked, the directory removed)."""
        ...


class ShmChannels:
    """The SHM channel type over three `Ring`s (module docstring)."""

    def __init__(
        self, setup: socket.socket, directory: Path, request: Ring, response: Ring, event: Ring
    ) -> None:
        self.setup = setup
        self.directory = directory
        self.request = request
        self.response = response
        self.event = event
        self._unposted = 0
        self._owed_bytes = 0  # notification bytes not yet accepted by the socket
        self._flow = FC_OFF
        self.closed = False

    @classmethod
    def create(
        cls, setup: socket.socket, directory: Path, service: str, max_msg_size: int, uid: int, gid: int
    ) -> ShmChannels:
        """Create the three rings in `directory` named as libqb names them. Raises OSError."""
        base = str(directory / "qb")
        made: list[Ring] = []
        try:
            for kind in ("request", "response", "event"):
                made.append(Ring.create(f"{base}-{kind}-{service}", max_msg_size, uid, gid))
        except BaseException:
            for ring in made:
                ring.close()
            raise
        return cls(setup, directory, made[0], made[1], made[2])

    @property
    def names(self) -> tuple[str, str, str]:
        """The request, response and event names for the connection response."""
        request, response, event = (r.paths.header.removesuffix("-header") for r in self._rings())
        return request, response, event

    def _rings(self) -> tuple[Ring, Ring, Ring]:
        return self.request, self.response, self.event

    def reader_fds(self) -> tuple[int, ...]:
        return (self.setup.fileno(),)

    def take_request(self) -> bytes | None:
        return self.request.read()

    def drain_socket(self) -> bool:
        while True:
            try:
                data = self.setup.recv(65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            if len(data) < 65536:
                return True

    def put_response(self, data: bytes) -> bool:
        return self.response.write(data)

    def put_event(self, data: bytes) -> bool:
        if not self.event.write_nopost(data):
            return False
        self._unposted += 1
        return True

    def announce(self) -> bool:
        while self._unposted:
            self.event.sem.post()
            self._unposted -= 1
            self._owed_bytes += 1
        return self.send_owed()

    def send_owed(self) -> bool:
        """Send the notification bytes owed; True when none is left."""
        while self._owed_bytes:
            try:
                sent = self.setup.send(b"\1" * min(self._owed_bytes, 65536), socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    self._owed_bytes = 0
                    return True
                raise
            self._owed_bytes -= sent
        return True

    @property
    def owes_bytes(self) -> bool:
        """Are notification bytes waiting for the socket?"""
        return self._owed_bytes > 0

    def set_flow_control(self, level: int) -> None:
        if level != self._flow:
            self._flow = level
            self.request.flow_control = level

    def check(self) -> None:
        for ring in (self.request, self.response, self.event):
            ring.check_files()
        if self.request.ref_count < 1:
            raise RingError(f"request ring reference count {self.request.ref_count}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close_connection(self.setup, (self.request, self.response, self.event))
        remove_directory(self.directory)


def remove_directory(directory: Path) -> None:
    """Remove a connection's description directory and whatever is left in it."""
    with contextlib.suppress(OSError):
        os.rmdir(directory)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)


class PendingQueue:
    """Chunks waiting for room in a full ring, with their total size (for the server's bound)."""

    __slots__ = ("bytes", "items")

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.bytes = 0

    def append(self, data: bytes) -> None:
        self.items.append(data)
        self.bytes += len(data)

    def popleft(self) -> bytes:
        data = self.items.popleft()
        self.bytes -= len(data)
        return data

    def appendleft(self, data: bytes) -> None:
        self.items.appendleft(data)
        self.bytes += len(data)

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0
