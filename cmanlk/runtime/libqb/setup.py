"""libqb's connection setup (lib/ipc_setup.c, ipc_int.h, include/qb/qbipc_common.h of libqb 2.0).

One SOCK_STREAM Unix socket per service. On Linux its name is in the abstract namespace and
*padded*: sun_path is a NUL, the service name, then NULs up to 108 bytes, and bind/connect pass
the whole sockaddr_un (110 bytes) — the unpadded name is a different socket. When the file
/etc/libqb/force-filesystem-sockets exists, libqb uses /var/run/<name> instead.

The exchange on that socket (both sides set SO_PASSCRED):
1. client → `qb_ipc_connection_request` (24 bytes): header id -1 (AUTHENTICATE), size 24,
   max_msg_size u32 at 16. The kernel attaches SCM_CREDENTIALS (pid, uid, gid);
2. server → `qb_ipc_connection_response` (12 328 bytes, one send: libqb 2.0.6 fails a connect
   on a partial read): header id -1, size, error (0 or −errno) at 16, connection_type at 24,
   max_msg_size at 28, an opaque non-zero `connection` at 32, and three PATH_MAX names (the
   request, response and event channels) at 40, 4136 and 8232.

After setup the same socket carries one notification byte per SHM request (client → server) and
per SHM event (server → client), and its hang-up is how each side learns the other is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmanlk.runtime.libqb.rings import Ring

MSG_AUTHENTICATE = -1
MSG_NEW_EVENT_SOCK = -2
MSG_DISCONNECT = -3

IPC_SOCKET = 0
IPC_SHM = 1
IPC_POSIX_MQ = 2
IPC_SYSV_MQ = 3
IPC_NATIVE = 4

CONNECTION_REQUEST_SIZE = 24
CONNECTION_RESPONSE_SIZE = 12_328
PATH_MAX = 4096
SUN_PATH_BYTES = 108
SERVER_BACKLOG = 128
FORCE_FILESYSTEM_SOCKETS = Path("/etc/libqb/force-filesystem-sockets")
SOCKET_DIR = Path("/var/run")

_REQUEST = struct.Struct("<i4xi4xI4x")
_RESPONSE_HEAD = struct.Struct("<i4xi4xi4xiIq")
_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """What the client asks for: its header id (must be AUTHENTICATE) and buffer size."""

    message_id: int
    size: int
    max_msg_size: int


def decode_request(raw: bytes) -> ConnectionRequest:
    """Decode the 24-byte connection request. Raises ValueError when shorter."""
    if len(raw) < CONNECTION_REQUEST_SIZE:
        raise ValueError(f"connection request of {len(raw)} bytes")
    message_id, size, max_msg_size = _REQUEST.unpack_from(raw, 0)
    return ConnectionRequest(message_id, size, max_msg_size)


def encode_request(max_msg_size: int) -> bytes:
    """Return the connection request a client sends (qb_ipcc_us_setup_connect)."""
    return _REQUEST.pack(MSG_AUTHENTICATE, CONNECTION_REQUEST_SIZE, max_msg_size)


@dataclass(frozen=True, slots=True)
class ConnectionResponse:
    """The server's answer: error 0 or −errno; on success the type, size and channel names."""

    error: int
    connection_type: int = IPC_SHM
    max_msg_size: int = 0
    connection: int = 0
    request: str = ""
    response: str = ""
    event: str = ""


def encode_response(res: ConnectionResponse) -> bytes:
    """Return the 12 328-byte response. Raises ValueError for a name of PATH_MAX bytes or more."""
    head = _RESPONSE_HEAD.pack(
        MSG_AUTHENTICATE,
        CONNECTION_RESPONSE_SIZE,
        res.error,
        res.connection_type,
        res.max_msg_size,
        res.connection,
    )
    return head + _path(res.request) + _path(res.response) + _path(res.event)


def decode_response(raw: bytes) -> ConnectionResponse:
    """Decode a connection response. Raises ValueError when short."""
    if len(raw) < CONNECTION_RESPONSE_SIZE:
        raise ValueError(f"connection response of {len(raw)} bytes")
    _id, _size, error, kind, max_msg_size, connection = _RESPONSE_HEAD.unpack_from(raw, 0)
    names = [_text(raw[off : off + PATH_MAX]) for off in (40, 40 + PATH_MAX, 40 + 2 * PATH_MAX)]
    return ConnectionResponse(error, kind, max_msg_size, connection, *names)


def _path(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"channel name of {len(raw)} bytes")
    return raw + bytes(PATH_MAX - len(raw))


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


# --- addresses and credentials ----------------------------------------------------------------------


def uses_filesystem_sockets() -> bool:
    """Does libqb on this host use /var/run/<name> instead of the abstract namespace?"""
    return FORCE_FILESYSTEM_SOCKETS.exists()


def service_address(name: str, filesystem: bool | None = None) -> bytes | str:
    """The address libqb's clients connect to for service `name` (padded abstract by default)."""
    if filesystem if filesystem is not None else uses_filesystem_sockets():
        return str(SOCKET_DIR / name)
    return abstract_address(name)


def abstract_address(name: str) -> bytes:
    """The padded abstract name: NUL, `name`, NULs to 108 bytes (what libqb binds and connects)."""
    raw = name.encode("utf-8")
    if not raw or len(raw) > SUN_PATH_BYTES - 2:
        raise ValueError(f"socket name {name!r}")
    return (b"\0" + raw).ljust(SUN_PATH_BYTES, b"\0")


def listen_socket(name: str, filesystem: bool | None = None) -> socket.socket:
    """Bind and listen on service `name` as qb_ipcs_us_publish does (non-blocking, SO_PASSCRED).

    Raises OSError (EADDRINUSE: another server — a running corosync — holds the name).
    """
    fs = uses_filesystem_sockets() if filesystem is None else filesystem
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        address = service_address(name, fs)
        if isinstance(address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        sock.bind(address)
        if isinstance(address, str):
            os.chmod(address, 0o777)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.listen(SERVER_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_socket(name: str, filesystem: bool | None = None) -> socket.socket:
    """Connect to service `name` as qb_ipcc_stream_sock_connect does (blocking; SO_PASSCRED on)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(service_address(name, filesystem))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class Credentials:
    """The peer's pid, uid and gid as the kernel reported them."""

    pid: int
    uid: int
    gid: int


def credentials_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> Credentials | None:
    """The SCM_CREDENTIALS of a recvmsg, or None when absent."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(data, 0)
            return Credentials(pid, uid, gid)
    return None


def peer_credentials(sock: socket.socket) -> Credentials:
    """SO_PEERCRED of a connected socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Credentials(pid, uid, gid)


CMSG_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def close_connection(sock: socket.socket, rings: Iterable[Ring]) -> None:
    """End a connection on either side: shut its setup socket down (the peer sees the end at once),
    close it, and unmap its rings, each best effort (the peer may have closed or truncated its side)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    for ring in rings:
        with contextlib.suppress(OSError, ValueError, BufferError):
            ring.close()
