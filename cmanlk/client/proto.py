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

Version 2 adds three *compact* frames for the one hot path, cpg traffic: a fixed binary header
instead of JSON (`COMPACT_FLAG | type` in place of the header length, which a version-1 frame
keeps below 64 KiB, so one field tells the two apart):

    MCAST     client → daemon   u32 seq, u16 group_length, group, payload   (no reply)
    DELIVER   daemon → client   u32 nodeid, u32 pid, u16 group_length, group, payload
    MCAST_ACK daemon → client   u32 seq: every MCAST up to seq is handled

JSON costs 5-10 µs a frame each way in Python and a reply per message a round trip through the
daemon's event loop; at 10k messages/s that is the whole budget. A decoder accepts compact frames
only when built with `compact=True` (after `hello` negotiated version 2); they decode to a Frame
whose header is synthesised: {"kind": "mcast", "seq", "group": bytes}, {"kind": "mcast_ack",
"seq"}, or a `cpg_deliver` event exactly as version 1 sends it.

This module is pure (no sockets): `encode_frame`, the compact encoders and an incremental
`FrameDecoder`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cmanlk.errors import CmanlkError, ErrorCode

PROTOCOL_VERSION = 2
"""The version this code speaks; `hello` negotiates the highest common one."""
SUPPORTED_VERSIONS = (1, 2)
COMPACT_VERSION = 2
"""The first version with compact frames and pipelined sends (docs/ipc.md)."""
CAPABILITIES = ("compact_frames", "pipelined_mcast")
"""What a version-2 daemon lists in `hello`'s result, so later additions can be tested for."""

MAX_HEADER_BYTES = 64 * 1024
"""A JSON header larger than this is refused: requests are small; the largest reply (nodes of a
384-node cluster with names and addresses) stays far below it."""
MAX_PAYLOAD_BYTES = 1024 * 1024
"""The largest binary payload: a whole cpg message (totempg's 1 MiB message bound)."""
MAX_FRAME_BYTES = 8 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES

MCAST_WINDOW_MESSAGES = 4096
"""Pipelined MCASTs a client keeps unacknowledged at most (advertised in `hello`): enough to
cover the daemon's acknowledgement batching (one MCAST_ACK per read of up to 256 KiB)."""
MCAST_WINDOW_BYTES = 2 * 1024 * 1024
"""Pipelined MCAST payload bytes a client keeps unacknowledged at most (a single message up to
MAX_PAYLOAD_BYTES is always allowed when nothing is outstanding)."""

DEFAULT_SOCKET_PATH = "/run/cmanlk/cmanlk.sock"
SOCKET_NAME = "cmanlk.sock"

_U32 = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">II")  # frame_length, header_length or compact tag
_MCAST_HEAD = struct.Struct(">IIIH")  # frame_length, tag, seq, group_length
_DELIVER_HEAD = struct.Struct(">IIIIH")  # frame_length, tag, nodeid, pid, group_length
_ACK = struct.Struct(">III")  # frame_length, tag, seq
_SEQ_GLEN = struct.Struct(">IH")
_NODE_PID_GLEN = struct.Struct(">IIH")
MAX_CACHED_GROUPS = 1024

COMPACT_FLAG = 0x8000_0000
"""Set in the second u32 of a compact frame; a JSON header length never reaches it."""
COMPACT_MCAST = 1
COMPACT_DELIVER = 2
COMPACT_MCAST_ACK = 3
SEQ_MODULO = 1 << 32
MAX_GROUP_BYTES = 0xFFFF

# Kinds of header.
REQUEST = "request"
REPLY = "reply"
ERROR = "error"
EVENT = "event"
MCAST = "mcast"  # a compact MCAST, decoded
MCAST_ACK = "mcast_ack"  # a compact MCAST_ACK, decoded

# Events.
EV_TRACK = "track"  # membership view (SA-Forum CLM track)
EV_QUORUM = "quorum"
EV_CPG_DELIVER = "cpg_deliver"  # payload: the message
EV_CPG_CONFCHG = "cpg_confchg"
EV_CPG_TOTEM_CONFCHG = "cpg_totem_confchg"
EV_FLOW = "flow"  # {"state": "slow"|"ok", "queued_bytes": n}: this client is not keeping up
EV_CPG_SEND_ERROR = "cpg_send_error"  # {seq, group, code, message}: a pipelined MCAST was refused


class ProtocolError(CmanlkError):
    """A frame or header that breaks the protocol; `code` is the result to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
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
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, _too_large(len(payload)))
    return _U32.pack(4 + len(head) + len(payload)) + _U32.pack(len(head)) + head + payload


def request(request_id: int, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> bytes:
    """Return a request frame."""
    return encode_frame({"kind": REQUEST, "id": request_id, "op": op, "args": args or {}}, payload)


def reply(request_id: int, result: dict[str, Any] | None = None) -> bytes:
    """Return a reply frame."""
    return encode_frame({"kind": REPLY, "id": request_id, "result": result or {}})


def error(request_id: int | None, code: ErrorCode, message: str) -> bytes:
    """Return an error frame (`request_id` None when the request could not be read); its
    `code` is the member's stable wire string."""
    return encode_frame({"kind": ERROR, "id": request_id, "code": code.wire, "message": message})


def event(name: str, data: dict[str, Any], payload: bytes = b"") -> bytes:
    """Return an event frame."""
    return encode_frame({"kind": EVENT, "event": name, "data": data}, payload)


def mcast(seq: int, group: bytes, payload: bytes) -> bytes:
    """Return a compact MCAST frame (version 2). Raises ProtocolError(too_large) past the bounds."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, _too_large(len(payload)))
    if len(group) > MAX_GROUP_BYTES:
        raise ProtocolError(ErrorCode.NAME_TOO_LONG, f"group name of {len(group)} bytes")
    length = 4 + 4 + 2 + len(group) + len(payload)
    return _MCAST_HEAD.pack(length, COMPACT_FLAG | COMPACT_MCAST, seq, len(group)) + group + payload


def deliver(nodeid: int, pid: int, group: bytes, payload: bytes) -> bytes:
    """Return a compact DELIVER frame (version 2): a cpg message for a client."""
    length = 4 + 4 + 4 + 2 + len(group) + len(payload)
    head = _DELIVER_HEAD.pack(length, COMPACT_FLAG | COMPACT_DELIVER, nodeid, pid, len(group))
    return head + group + payload


def mcast_ack(seq: int) -> bytes:
    """Return a compact MCAST_ACK frame: every MCAST up to `seq` is handled."""
    return _ACK.pack(8, COMPACT_FLAG | COMPACT_MCAST_ACK, seq)


def seq_after(a: int, b: int) -> bool:
    """Is u32 sequence number `a` later than `b` (wrap-around compare)?"""
    return 0 < (a - b) % SEQ_MODULO < SEQ_MODULO // 2


@dataclass(slots=True)
class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the frames completed so far.

    Raises ProtocolError(bad_frame) when a length is out of bounds (the stream cannot be
    resynchronised: close it) and ProtocolError(bad_request) for a complete frame whose header
    is not a JSON object (the stream is still in sync: the caller may answer and go on). A
    decoder holds at most one frame's bytes (MAX_FRAME_BYTES) plus what one read returned.
    Compact frames (version 2) are accepted only when `compact` is true; otherwise their tag is an
    out-of-bounds header length (bad_frame), as a version-1 peer sees it.
    """

    _buffer: bytearray = field(default_factory=bytearray)
    compact: bool = False
    _groups: dict[bytes, str] = field(default_factory=dict)

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        """Add `data`; return complete frames in order, with header errors in place of frames."""
        buf = self._buffer
        view: bytes | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data  # the common case: a read of whole frames is decoded without a copy
        out: list[Frame | ProtocolError] = []
        pos = 0
        try:
            while True:
                item, pos = self._next(view, pos)
                if item is None:
                    break
                out.append(item)
        finally:
            if view is buf:
                del buf[:pos]
            else:
                buf += data[pos:]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def _next(self, buf: bytes | bytearray, pos: int) -> tuple[Frame | ProtocolError | None, int]:
        if len(buf) - pos < 8:
            return None, pos
        length, head_len = _FRAME_HEAD.unpack_from(buf, pos)
        if length < 4 or length > MAX_FRAME_BYTES - 4:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"frame length {length} out of bounds")
        if head_len & COMPACT_FLAG and self.compact:
            if len(buf) - pos < 4 + length:
                return None, pos
            return self._compact(buf, pos, length, head_len & ~COMPACT_FLAG), pos + 4 + length
        if head_len > MAX_HEADER_BYTES or head_len > length - 4:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"header length {head_len} in a frame of {length}")
        if length - 4 - head_len > MAX_PAYLOAD_BYTES:
            size = length - 4 - head_len
            raise ProtocolError(ErrorCode.BAD_FRAME, f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
        if len(buf) - pos < 4 + length:
            return None, pos
        head = bytes(buf[pos + 8 : pos + 8 + head_len])
        payload = bytes(buf[pos + 8 + head_len : pos + 4 + length])
        return _json_frame(head, payload), pos + 4 + length

    def _compact(self, buf: bytes | bytearray, pos: int, length: int, kind: int) -> Frame | ProtocolError:
        """Decode one compact frame; a malformed one (the length was in bounds, so the stream is
        still in step) is returned as ProtocolError(bad_request), like a bad JSON header."""
        end = pos + 4 + length
        if kind == COMPACT_MCAST and length >= 10:
            seq, glen = _SEQ_GLEN.unpack_from(buf, pos + 8)
            start = pos + 14 + glen
            if start <= end and end - start <= MAX_PAYLOAD_BYTES:
                group = bytes(buf[pos + 14 : start])
                return Frame({"kind": MCAST, "seq": seq, "group": group}, bytes(buf[start:end]))
        elif kind == COMPACT_DELIVER and length >= 14:
            nodeid, pid, glen = _NODE_PID_GLEN.unpack_from(buf, pos + 8)
            start = pos + 18 + glen
            if start <= end and end - start <= MAX_PAYLOAD_BYTES:
                data = {"group": self._group_text(bytes(buf[pos + 18 : start])), "nodeid": nodeid, "pid": pid}
                header = {"kind": EVENT, "event": EV_CPG_DELIVER, "data": data}
                return Frame(header, bytes(buf[start:end]))
        elif kind == COMPACT_MCAST_ACK and length == 8:
            return Frame({"kind": MCAST_ACK, "seq": _U32.unpack_from(buf, pos + 8)[0]})
        text = f"compact frame of type {kind} and {length} bytes is malformed"
        return ProtocolError(ErrorCode.BAD_REQUEST, text)

    def _group_text(self, group: bytes) -> str:
        text = self._groups.get(group)
        if text is None:
            if len(self._groups) >= MAX_CACHED_GROUPS:  # a bound: the cache is only a shortcut
                self._groups.clear()
            text = self._groups[group] = group_text(group)
        return text


def _too_large(size: int) -> str:
    return f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}"


def _json_frame(head: bytes, payload: bytes) -> Frame | ProtocolError:
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ProtocolError(ErrorCode.BAD_REQUEST, f"header is not JSON: {exc}")
    if not isinstance(header, dict):
        return ProtocolError(ErrorCode.BAD_REQUEST, "header is not a JSON object")
    return Frame(header, payload)


def negotiate(versions: object) -> int:
    """Return the highest version in `versions` we support.

    Raises ProtocolError(bad_request) when `versions` is not a list of ints, and
    ProtocolError(version_unsupported) when none is supported.
    """
    if not isinstance(versions, list) or not all(type(v) is int for v in versions):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "hello needs versions: a list of integers")
    common: set[int] = set(versions) & set(SUPPORTED_VERSIONS)
    if not common:
        ours = list(SUPPORTED_VERSIONS)
        text = f"client speaks versions {versions}, this daemon {ours}"
        raise ProtocolError(ErrorCode.VERSION_UNSUPPORTED, text)
    return max(common)


def group_name(raw: object) -> bytes:
    """Return a cpg group name given as a JSON string (UTF-8, 1..128 bytes).

    Raises ProtocolError(bad_request) for a non-string, (name_too_long/invalid_param are the cpg
    service's to raise, so every client sees the same codes as a cpg_join from libcpg).
    """
    if not isinstance(raw, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "group must be a string")
    return raw.encode()


def group_text(group: bytes) -> str:
    """Return a group name for a JSON header (invalid UTF-8 shown as \\x escapes)."""
    return group.decode("utf-8", errors="backslashreplace")
