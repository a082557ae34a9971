"""Wire helpers of corosync's service layer: totempg group header, libqb headers, 8-byte alignment.

Layouts (corosync-wire.md §4, §6), all little endian as x86 corosync writes them natively:

- group header, in front of every application message totempg delivers: u16 group count g,
  g × u16 name lengths, the names without terminator, then the body. corosync uses exactly one
  group per message, "a" (services, 5-byte prefix) or "sync" (sync v2, 8-byte prefix);
- libqb request header (16 bytes): i32 id at 0, 4 pad, i32 size (whole message) at 8, 4 pad.
  For group "a", id = (service << 16) | function;
- libqb response header (24 bytes): i32 id, i32 size, i32 error, each in an 8-byte slot (cpg's
  JOINLIST travels with it).

Service structs declare every field `aligned(8)`: a field starts at the next multiple of 8 and the
struct's size is rounded up to 8 (`aligned_layout`). Structs marked packed (votequorum's) do not.

Deviation: a byte-swapped peer (other endianness) is not supported on the service layer, as in
corosync's sync messages which are never converted; totem-level swapping is done by totem/wire.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket

GROUP_A = b"a"
GROUP_SYNC = b"sync"

# corosync never sends more than one group per message; a bound keeps a hostile header from making
# us walk 65535 lengths. 32 is totempg's own limit on groups joined by one handle.
MAX_GROUPS = 32
# Group names are short (corosync: "a", "sync"); totempg allows names up to 256 bytes in a join.
MAX_GROUP_NAME_BYTES = 256

REQUEST_HEADER_SIZE = 16
RESPONSE_HEADER_SIZE = 24
ALIGNMENT = 8

_REQ_HEADER = struct.Struct("<i4xi4x")
_RES_HEADER = struct.Struct("<i4xi4xi4x")
_U16 = struct.Struct("<H")


def encode_group_message(group: bytes, body: bytes) -> bytes:
    """Return `body` behind a one-group header naming `group` (what totempg_groups_mcast_joined builds)."""
    if not group or len(group) > MAX_GROUP_NAME_BYTES:
        raise ValueError(f"group name of {len(group)} bytes")
    return _U16.pack(1) + _U16.pack(len(group)) + group + body


def decode_group_message(payload: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """Split a delivered application message into (group names, body).

    Raises MalformedPacket when the header is truncated or names too many or too long groups.
    """
    if len(payload) < 2:
        raise MalformedPacket("group_header_short", f"{len(payload)} bytes")
    (count,) = _U16.unpack_from(payload, 0)
    if count == 0 or count > MAX_GROUPS:
        raise MalformedPacket("group_count", f"{count} groups")
    lengths_end = 2 + 2 * count
    if len(payload) < lengths_end:
        raise MalformedPacket("group_header_short", f"{len(payload)} bytes for {count} groups")
    lengths = struct.unpack_from(f"<{count}H", payload, 2)
    if any(n == 0 or n > MAX_GROUP_NAME_BYTES for n in lengths):
        raise MalformedPacket("group_name_length", f"lengths {lengths}")
    end = lengths_end + sum(lengths)
    if len(payload) < end:
        raise MalformedPacket("group_header_short", f"{len(payload)} bytes, names end at {end}")
    names: list[bytes] = []
    offset = lengths_end
    for n in lengths:
        names.append(bytes(payload[offset : offset + n]))
        offset += n
    return tuple(names), bytes(payload[end:])


def service_message_id(service: int, function: int) -> int:
    """Return the libqb header id of `function` of `service` (corosync's SERVICE_ID_MAKE)."""
    if not 0 <= service <= 0x7FFF or not 0 <= function <= 0xFFFF:
        raise ValueError(f"service {service} function {function}")
    return (service << 16) | function


def split_message_id(message_id: int) -> tuple[int, int]:
    """Return (service, function) of a group "a" header id."""
    return (message_id >> 16) & 0xFFFF, message_id & 0xFFFF


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """libqb's `qb_ipc_request_header`: id and size of the whole message."""

    id: int
    size: int


def encode_request_header(message_id: int, size: int) -> bytes:
    """Return the 16-byte request header (pad bytes zero)."""
    return _REQ_HEADER.pack(message_id, size)


def decode_request_header(message: bytes) -> RequestHeader:
    """Read the request header of `message`. Raises MalformedPacket when shorter than 16 bytes."""
    if len(message) < REQUEST_HEADER_SIZE:
        raise MalformedPacket("service_header_short", f"{len(message)} bytes")
    message_id, size = _REQ_HEADER.unpack_from(message, 0)
    return RequestHeader(message_id, size)


def encode_response_header(message_id: int, size: int, error: int) -> bytes:
    """Return the 24-byte response header (id, size, error, each in an 8-byte slot)."""
    return _RES_HEADER.pack(message_id, size, error)


def decode_response_header(message: bytes) -> tuple[int, int, int]:
    """Return (id, size, error) of a response header. Raises MalformedPacket when short."""
    if len(message) < RESPONSE_HEADER_SIZE:
        raise MalformedPacket("response_header_short", f"{len(message)} bytes")
    message_id, size, error = _RES_HEADER.unpack_from(message, 0)
    return message_id, size, error


def check_size(message: bytes, expected: int, what: str) -> RequestHeader:
    """Check a fixed-size message: at least `expected` bytes and a header size of at least that.

    corosync trusts lengths; we insist the message holds the whole struct before reading it, so a
    short message from a hostile or buggy peer is dropped instead of read past its end.
    Returns the header; raises MalformedPacket(f"{what}_short") otherwise.
    """
    header = decode_request_header(message)
    if len(message) < expected:
        raise MalformedPacket(f"{what}_short", f"{len(message)} bytes, {expected} needed")
    return header


def align(offset: int, alignment: int = ALIGNMENT) -> int:
    """Round `offset` up to the next multiple of `alignment`."""
    return (offset + alignment - 1) // alignment * alignment


def aligned_layout(field_sizes: list[int], start: int = REQUEST_HEADER_SIZE) -> tuple[list[int], int]:
    """Return (offsets, total size) of fields each declared `aligned(8)`, after `start` bytes.

    Example: four u8 fields after the header → offsets [16, 24, 32, 40], size 48.
    """
    offsets: list[int] = []
    offset = start
    for size in field_sizes:
        offset = align(offset)
        offsets.append(offset)
        offset += size
    return offsets, align(offset)


def pad_to(data: bytes, size: int) -> bytes:
    """Return `data` zero-padded to `size` bytes (ValueError when longer)."""
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes do not fit in {size}")
    return data + bytes(size - len(data))


def c_string(raw: bytes) -> bytes:
    """Return a fixed-size C char array's contents up to its first NUL."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


# mar_name_t (corosync include/corosync/mar_gen.h): u16 length in an 8-byte slot, then
# value[CS_MAX_NAME_LENGTH] starting at offset 8, 264 bytes in all. Writers store the length of
# the text plus its NUL (libcfg: strlen + 1) and NUL-terminate the value.
MAR_NAME_VALUE_MAX = 256  # CS_MAX_NAME_LENGTH
MAR_NAME_SIZE = 8 + MAR_NAME_VALUE_MAX
_MAR_NAME = struct.Struct(f"<H6x{MAR_NAME_VALUE_MAX}s")


def encode_mar_name(text: bytes) -> bytes:
    """Return the 264-byte mar_name_t holding `text` (ValueError past 255 bytes or with a NUL)."""
    if len(text) >= MAR_NAME_VALUE_MAX or b"\0" in text:
        raise ValueError(f"name of {len(text)} bytes does not fit a mar_name_t")
    return _MAR_NAME.pack(len(text) + 1, text)


def decode_mar_name(raw: bytes, offset: int = 0) -> bytes:
    """Return the text of the mar_name_t at `offset`: up to its length and first NUL.

    A length past the value array is clamped to it (corosync's marshall_from_mar_name_t copies
    at most CS_MAX_NAME_LENGTH). Raises MalformedPacket when fewer than 264 bytes remain.
    """
    if len(raw) < offset + MAR_NAME_SIZE:
        raise MalformedPacket("mar_name_short", f"{len(raw) - offset} bytes")
    length, value = _MAR_NAME.unpack_from(raw, offset)
    return c_string(value[: min(length, MAR_NAME_VALUE_MAX)])
