"""A libqb IPC client in Python: what corosync's client libraries do, for cmanlk-tool and the tests.

`LibqbClient.connect(service)` opens a connection to a libqb server — cmanlkd, or a real corosync —
on the padded abstract name of `service` ("cmap", "cfg", …), with whichever channel type the
server answers (SHM rings or SOCKET datagrams), exactly as libqb's qb_ipcc_connect does:

- `call(request)` sends one request and waits for its one response (qb_ipcc_sendv_recv);
- `send(request)` sends a request that gets no response (cpg's mcast);
- `event(timeout_s)` takes the next event (qb_ipcc_event_recv), None when none came in time.

Errors raise `LibqbError` with the errno the server refused the connection with (EAGAIN: the
daemon is not ready yet, EACCES: not allowed) or ENOTCONN when the server went away.
Synchronous and single-threaded by design: one call at a time per connection.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import socket
import struct
import time

from cmanlk.runtime.libqb import setup
from cmanlk.runtime.libqb.rings import FC_OFF, Ring, RingError

DEFAULT_MAX_MSG_SIZE = 1 << 20
"""IPC_REQUEST_SIZE of corosync's libraries (lib/util.h): 8192 × 128."""
CALL_TIMEOUT_S = 10.0


class LibqbError(Exception):
    """A libqb operation failed; `errno` says why (EAGAIN, EACCES, ENOTCONN, ETIMEDOUT, …)."""

    def __init__(self, code: int, message: str) -> None:
        self.errno = code
        super().__init__(f"{message}: {os.strerror(code)}")


class LibqbClient:
    """One connection to one service (module docstring)."""

    def __init__(self, service: str, sock: socket.socket, response: setup.ConnectionResponse) -> None:
        self.service = service
        self.setup = sock
        self.max_msg_size = response.max_msg_size
        self.kind = response.connection_type
        self._rings: tuple[Ring, Ring, Ring] | None = None
        self._dgram: tuple[socket.socket, socket.socket] | None = None
        self._control: mmap.mmap | None = None
        self.closed = False
        if self.kind == setup.IPC_SHM:
            request = Ring.open(response.request, self.max_msg_size, user_data_size=4)
            replies = Ring.open(response.response, self.max_msg_size)
            events = Ring.open(response.event, self.max_msg_size)
            self._rings = (request, replies, events)
        elif self.kind == setup.IPC_SOCKET:
            self._open_sockets(response)
        else:
            raise LibqbError(errno.ENOTSUP, f"{service}: channel type {self.kind}")

    @classmethod
    def connect(
        cls, service: str, max_msg_size: int = DEFAULT_MAX_MSG_SIZE, filesystem: bool | None = None
    ) -> LibqbClient:
        """Connect and set up. Raises LibqbError (server refusal, missing server, setup failure)."""
        try:
            sock = setup.connect_socket(service, filesystem)
        except OSError as exc:
            raise LibqbError(exc.errno or errno.ECONNREFUSED, f"cannot reach {service}") from None
        try:
            sock.settimeout(CALL_TIMEOUT_S)
            sock.sendall(setup.encode_request(max(max_msg_size, setup.CONNECTION_RESPONSE_SIZE)))
            raw = _recv_exactly(sock, setup.CONNECTION_RESPONSE_SIZE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
            response = setup.decode_response(raw)
            if response.error:
                raise LibqbError(-response.error, f"{service} refused the connection")
            return cls(service, sock, response)
        except BaseException:
            sock.close()
            raise

    # --- talking ---------------------------------------------------------------------------------

    def call(self, request: bytes, timeout_s: float = CALL_TIMEOUT_S) -> bytes:
        """Send `request`, return its response. Raises LibqbError."""
        self.send(request)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._rings is not None:
                data = self._rings[1].read_wait(min(0.2, max(0.0, deadline - time.monotonic())))
            else:
                data = self._dgram_recv(0, deadline)
            if data is not None:
                return data
            self._check_alive()
            if time.monotonic() >= deadline:
                raise LibqbError(errno.ETIMEDOUT, f"{self.service}: no response")

    def send(self, request: bytes) -> None:
        """Send a request without waiting for a response; raises LibqbError(EAGAIN) when the
        server's flow control or a full channel says to come back later."""
        if len(request) > self.max_msg_size:
            raise LibqbError(errno.EMSGSIZE, f"{self.service}: {len(request)} bytes")
        if self.flow_control != FC_OFF:
            raise LibqbError(errno.EAGAIN, f"{self.service}: flow control")
        if self._rings is not None:
            if not self._rings[0].write(request):
                raise LibqbError(errno.EAGAIN, f"{self.service}: request ring full")
            self._notify_server()
            return
        assert self._dgram is not None
        try:
            self._dgram[0].send(request)
        except BlockingIOError:
            raise LibqbError(errno.EAGAIN, f"{self.service}: socket full") from None
        except OSError as exc:
            raise LibqbError(errno.ENOTCONN, f"{self.service}: {exc}") from None

    def event(self, timeout_s: float) -> bytes | None:
        """The next event, or None after `timeout_s`. Raises LibqbError(ENOTCONN) when closed."""
        deadline = time.monotonic() + timeout_s
        if self._dgram is not None:
            return self._dgram_recv(1, deadline)
        assert self._rings is not None
        ready, _, _ = select.select([self.setup], [], [], max(0.0, timeout_s))
        if not ready:
            return None
        data = self._rings[2].read_wait(max(0.0, deadline - time.monotonic()) + 0.01)
        if data is None:
            self._check_alive()
            return None
        if _recv_exactly(self.setup, 1) == b"":
            raise LibqbError(errno.ENOTCONN, f"{self.service}: closed")
        return data

    def fileno(self) -> int:
        """The descriptor to poll for events (the setup socket with SHM, as qb_ipcc_fd_get)."""
        return self._dgram[1].fileno() if self._dgram is not None else self.setup.fileno()

    @property
    def flow_control(self) -> int:
        """The server's flow-control flag for our requests."""
        if self._rings is not None:
            return self._rings[0].flow_control
        if self._control is not None:
            return int(struct.unpack_from("<i", self._control, 4)[0])
        return FC_OFF

    def close(self) -> None:
        """Close the connection (the server removes its files)."""
        if self.closed:
            return
        self.closed = True
        setup.close_connection(self.setup, self._rings or ())
        for sock in self._dgram or ():
            sock.close()
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> LibqbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------------

    def _notify_server(self) -> None:
        try:
            self.setup.send(b"\1", socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise LibqbError(errno.ENOTCONN, f"{self.service}: {exc}") from None

    def _check_alive(self) -> None:
        ready, _, _ = select.select([self.setup], [], [], 0)
        if ready:
            try:
                peek = self.setup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                peek = b""
            if not peek:
                raise LibqbError(errno.ENOTCONN, f"{self.service}: the server closed the connection")

    def _open_sockets(self, response: setup.ConnectionResponse) -> None:
        fd = os.open(response.request, os.O_RDWR)
        try:
            self._control = mmap.mmap(fd, 24)
        finally:
            os.close(fd)
        base = response.response
        made: list[socket.socket] = []
        for local, remote in (("response", "request"), ("event", "event-tx")):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            made.append(sock)
            sock.bind(setup.abstract_address(f"{base}-{local}"))
            sock.connect(setup.abstract_address(f"{base}-{remote}"))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.max_msg_size)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.max_msg_size)
        self._dgram = (made[0], made[1])

    def _dgram_recv(self, which: int, deadline: float) -> bytes | None:
        assert self._dgram is not None
        sock = self._dgram[which]
        ready, _, _ = select.select([sock], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        if not ready:
            return None
        return sock.recv(self.max_msg_size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        try:
            data = sock.recv(remaining)
        except OSError as exc:
            raise LibqbError(exc.errno or errno.ENOTCONN, "receiving") from None
        if not data:
            raise LibqbError(errno.ENOTCONN, "the server closed the connection")
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


__all__ = ["LibqbClient", "LibqbError", "RingError"]
