"""The local client protocol of cmanlkd (docs/ipc.md is its manual): frames, versions, error codes.

A frame is

    u32 frame_length   big endian: bytes that follow this field (4 + header_length + payload)
    u32 header_length  big endian
    header             UTF-8 JSON object
    payload            raw bytes (cpg messages), frame_length - 4 - header_length of them

Why a JSON header with a binary tail rather than a compact binary format: requests and replies
are small, rare and evolve (new fields, new ops) — JSON keeps them self-describing, lets old
clients ignore fields they do not know, and makes a capture readable with `socat -x`. The one
high-volume item, a cpg message of up to 1 MiB, travels as raw bytes after the header, so there
is no base64 cost or size inflation where it matters. Lengths are checked before anything is
allocated: a header is at most MAX_HEADER_BYTES, a payload at most MAX_PAYLOAD_BYTES.

Header kinds: `request` {id, op, args}, `reply` {id, result}, `error` {id, code, message},
`event` {event, data}. The first request must be `hello` {versions: [..]}; the server answers
with the highest version both know (or error `version_unsupported`).

This module is pure (no sockets): `encode_frame` and an incremental `FrameDecoder`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cmanlk.errors import CmanlkError

PROTOCOL_VERSION = 1
"""The version this code speaks; `hello` negotiates the highest common one."""
SUPPORTED_VERSIONS = (1,)

MAX_HEADER_BYTES = 64 * 1024
"""A JSON header larger than this is refused: requests are small; the largest reply (nodes of a
384-node cluster with names and addresses) stays far below it."""
MAX_PAYLOAD_BYTES = 1024 * 1024
"""The largest binary payload: a whole cpg message (totempg's 1 MiB message bound)."""
MAX_FRAME_BYTES = 8 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES

DEFAULT_SOCKET_PATH = "/run/cmanlk/cmanlk.sock"
SOCKET_NAME = "cmanlk.sock"

_U32 = struct.Struct(">I")

# Kinds of header.
REQUEST = "request"
REPLY = "reply"
ERROR = "error"
EVENT = "event"

# Stable error codes (docs/ipc.md). Service refusals (cpg, votequorum) pass their own codes
# through; those are listed in the manual too.
E_BAD_FRAME = "bad_frame"  # framing broken: the connection is closed after the reply
E_BAD_REQUEST = "bad_request"  # framed but not a valid request (JSON, fields, types)
E_UNKNOWN_OP = "unknown_op"
E_HELLO_REQUIRED = "hello_required"
E_VERSION_UNSUPPORTED = "version_unsupported"
E_PERMISSION_DENIED = "permission_denied"
E_NOT_SUPPORTED = "not_supported"  # the daemon does not serve this request (yet)
E_NOT_RUNNING = "not_running"
E_TIMEOUT = "timeout"
E_INTERNAL = "internal"
E_INVALID_PARAM = "invalid_param"
E_TRY_AGAIN = "try_again"
E_TOO_LARGE = "too_large"
E_TOO_SLOW = "too_slow"  # the client did not read its events; it is disconnected after this
E_NO_RESOURCES = "no_resources"

# Events.
EV_TRACK = "track"  # membership view (SA-Forum CLM track)
EV_QUORUM = "quorum"
EV_CPG_DELIVER = "cpg_deliver"  # payload: the message
EV_CPG_CONFCHG = "cpg_confchg"
EV_CPG_TOTEM_CONFCHG = "cpg_totem_confchg"
EV_FLOW = "flow"  # {"state": "slow"|"ok", "queued_bytes": n}: this client is not keeping up


class ProtocolError(CmanlkError):
    """A frame or header that breaks the protocol; `code` is the error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its JSON header (a dict) and binary payload."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def kind(self) -> str:
        """The header's `kind` ("" when absent)."""
        value = self.header.get("kind", "")
        return value if isinstance(value, str) else ""


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Return one frame. Raises ProtocolError(too_large) when header or payload exceed the bounds."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return _U32.pack(4 + len(head) + len(payload)) + _U32.pack(len(head)) + head + payload


def request(request_id: int, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> bytes:
    """Return a request frame."""
    return encode_frame({"kind": REQUEST, "id": request_id, "op": op, "args": args or {}}, payload)


def reply(request_id: int, result: dict[str, Any] | None = None) -> bytes:
    """Return a reply frame."""
    return encode_frame({"kind": REPLY, "id": request_id, "result": result or {}})


def error(request_id: int | None, code: str, message: str) -> bytes:
    """Return an error frame (`request_id` None when the request could not be read)."""
    return encode_frame({"kind": ERROR, "id": request_id, "code": code, "message": message})


def event(name: str, data: dict[str, Any], payload: bytes = b"") -> bytes:
    """Return an event frame."""
    return encode_frame({"kind": EVENT, "event": name, "data": data}, payload)


@dataclass(slots=True)
class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the frames completed so far.

    Raises ProtocolError(bad_frame) when a length is out of bounds (the stream cannot be
    resynchronised: close it) and ProtocolError(bad_request) for a complete frame whose header
    is not a JSON object (the stream is still in sync: the caller may answer and go on). A
    decoder holds at most one frame's bytes (MAX_FRAME_BYTES) plus what one read returned.
    """

    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        """Add `data`; return complete frames in order, with header errors in place of frames."""
        self._buffer += data
        out: list[Frame | ProtocolError] = []
        while True:
            frame = self._next()
            if frame is None:
                return out
            out.append(frame)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def _next(self) -> Frame | ProtocolError | None:
        buf = self._buffer
        if len(buf) < 8:
            return None
        (length,) = _U32.unpack_from(buf, 0)
        (head_len,) = _U32.unpack_from(buf, 4)
        if length < 4 or length > MAX_FRAME_BYTES - 4:
            raise ProtocolError(E_BAD_FRAME, f"frame length {length} out of bounds")
        if head_len > MAX_HEADER_BYTES or head_len > length - 4:
            raise ProtocolError(E_BAD_FRAME, f"header length {head_len} in a frame of {length}")
        if length - 4 - head_len > MAX_PAYLOAD_BYTES:
            size = length - 4 - head_len
            raise ProtocolError(E_BAD_FRAME, f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
        if len(buf) < 4 + length:
            return None
        head = bytes(buf[8 : 8 + head_len])
        payload = bytes(buf[8 + head_len : 4 + length])
        del buf[: 4 + length]
        try:
            header = json.loads(head)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return ProtocolError(E_BAD_REQUEST, f"header is not JSON: {exc}")
        if not isinstance(header, dict):
            return ProtocolError(E_BAD_REQUEST, "header is not a JSON object")
        return Frame(header, payload)


def negotiate(versions: object) -> int:
    """Return the highest version in `versions` we support.

    Raises ProtocolError(bad_request) when `versions` is not a list of ints, and
    ProtocolError(version_unsupported) when none is supported.
    """
    if not isinstance(versions, list) or not all(type(v) is int for v in versions):
        raise ProtocolError(E_BAD_REQUEST, "hello needs versions: a list of integers")
    common: set[int] = set(versions) & set(SUPPORTED_VERSIONS)
    if not common:
        ours = list(SUPPORTED_VERSIONS)
        raise ProtocolError(E_VERSION_UNSUPPORTED, f"client speaks versions {versions}, this daemon {ours}")
    return max(common)


def group_name(raw: object) -> bytes:
    """Return a cpg group name given as a JSON string (UTF-8, 1..128 bytes).

    Raises ProtocolError(bad_request) for a non-string, (name_too_long/invalid_param are the cpg
    service's to raise, so every client sees the same codes as a cpg_join from libcpg).
    """
    if not isinstance(raw, str):
        raise ProtocolError(E_BAD_REQUEST, "group must be a string")
    return raw.encode()


def group_text(group: bytes) -> str:
    """Return a group name for a JSON header (invalid UTF-8 shown as \\x escapes)."""
    return group.decode("utf-8", errors="backslashreplace")
