"""corosync's configuration map as a pure store (exec/icmap.c of corosync 3.1.7).

Keys are 3..255 characters of `[A-Za-z0-9._/:-]`; a value has one of twelve types (below) and is
at most 16 KiB (ICMAP_MAX_VALUE_LEN). Integer and float values have their C size exactly;
STRING values are stored with their terminating NUL (the length counts it); BINARY values are
raw. Iteration walks keys in byte order (icmap keeps them in a libqb trie).

Rules kept from icmap: setting a key to the value it already has changes nothing and notifies
nobody; a *new* key with a bad name is CS_ERR_NAME_TOO_LONG (an existing one is not re-checked);
a value of the wrong size is CS_ERR_INVALID_PARAM; a STRING longer than its NUL-terminated text
is cut at the NUL. Writes from clients are refused with CS_ERR_ACCESS on read-only keys and
prefixes (corosync main.c and votequorum.c's icmap_set_ro_access list, `READ_ONLY_*` below);
the daemon itself writes them (`set(..., force=True)`).

Tracking: a track watches one key, or with TRACK_PREFIX every key starting with its name (an
empty name: every key), for the events in its mask (DELETE 1, MODIFY 2, ADD 4). Each change
returns the `Change`s of the tracks it concerns, for the cmap face to turn into callbacks.

Bounds: MAX_KEYS keys and MAX_BYTES of values in all (a client can add keys; past the bound a
new key is CS_ERR_NO_RESOURCES), MAX_TRACKS tracks.
"""

from __future__ import annotations

import bisect
import enum
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cmanlk.errors import ErrorCode


class ValueType(enum.IntEnum):
    """icmap_value_types_t."""

    INT8 = 1
    UINT8 = 2
    INT16 = 3
    UINT16 = 4
    INT32 = 5
    UINT32 = 6
    INT64 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    STRING = 11
    BINARY = 12


_FORMATS: dict[ValueType, struct.Struct] = {
    ValueType.INT8: struct.Struct("<b"),
    ValueType.UINT8: struct.Struct("<B"),
    ValueType.INT16: struct.Struct("<h"),
    ValueType.UINT16: struct.Struct("<H"),
    ValueType.INT32: struct.Struct("<i"),
    ValueType.UINT32: struct.Struct("<I"),
    ValueType.INT64: struct.Struct("<q"),
    ValueType.UINT64: struct.Struct("<Q"),
    ValueType.FLOAT: struct.Struct("<f"),
    ValueType.DOUBLE: struct.Struct("<d"),
}
TYPE_NAMES = {
    ValueType.INT8: "i8",
    ValueType.UINT8: "u8",
    ValueType.INT16: "i16",
    ValueType.UINT16: "u16",
    ValueType.INT32: "i32",
    ValueType.UINT32: "u32",
    ValueType.INT64: "i64",
    ValueType.UINT64: "u64",
    ValueType.FLOAT: "flt",
    ValueType.DOUBLE: "dbl",
    ValueType.STRING: "str",
    ValueType.BINARY: "bin",
}
"""The type names corosync-cmapctl prints and takes."""

KEY_NAME_MIN = 3
KEY_NAME_MAX = 255
MAX_VALUE_LEN = 16 * 1024
MAX_KEYS = 65_536
"""Keys in the map; corosync's own tree holds a few hundred."""
MAX_BYTES = 64 * 1024 * 1024
"""Value bytes in the map (keys counted too)."""
MAX_TRACKS = 16_384
"""Tracks of every client together."""

TRACK_DELETE = 1
TRACK_MODIFY = 2
TRACK_ADD = 4
TRACK_PREFIX = 8
_TRACK_MASK = TRACK_DELETE | TRACK_MODIFY | TRACK_ADD | TRACK_PREFIX

READ_ONLY_PREFIXES = (
    "internal_configuration.",
    "runtime.services.",
    "runtime.config.",
    "runtime.totem.",
    "uidgid.config.",
    "system.",
    "nodelist.",
)
READ_ONLY_KEYS = frozenset(
    {
        "totem.crypto_cipher",
        "totem.crypto_hash",
        "totem.crypto_model",
        "totem.keyfile",
        "totem.key",
        "totem.secauth",
        "totem.ip_version",
        "totem.rrp_mode",
        "totem.transport",
        "totem.cluster_name",
        "totem.netmtu",
        "totem.threads",
        "totem.version",
        "totem.nodeid",
        "totem.clear_node_high_bit",
        "config.reload_in_progress",
        "config.totemconfig_reload_in_progress",
        "nodelist.local_node_pos",
        "quorum.allow_downscale",
        "quorum.wait_for_all",
        "quorum.last_man_standing",
        "quorum.last_man_standing_window",
        "quorum.expected_votes_tracking",
        "quorum.auto_tie_breaker",
        "quorum.auto_tie_breaker_node",
    }
)

_KEY_RE = re.compile(r"^[A-Za-z0-9._/:-]+$")


@dataclass(frozen=True, slots=True)
class Value:
    """A typed value as icmap stores it (strings with their NUL)."""

    type: ValueType
    data: bytes

    @classmethod
    def of(cls, kind: ValueType, value: int | float | str | bytes) -> Value:
        """Encode a Python value (ValueError when it does not fit the type)."""
        fmt = _FORMATS.get(kind)
        if fmt is not None:
            try:
                return cls(kind, fmt.pack(value))
            except struct.error as exc:
                raise ValueError(f"{value!r} is no {TYPE_NAMES[kind]}: {exc}") from None
        if kind is ValueType.STRING:
            text = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
            return cls(kind, text.split(b"\0", 1)[0] + b"\0")
        return cls(kind, value.encode() if isinstance(value, str) else bytes(value))  # type: ignore[arg-type]

    def python(self) -> int | float | str | bytes:
        """The value as Python sees it (a string without its NUL)."""
        fmt = _FORMATS.get(self.type)
        if fmt is not None:
            return fmt.unpack(self.data)[0]  # type: ignore[no-any-return]
        if self.type is ValueType.STRING:
            return self.data.rstrip(b"\0").decode("utf-8", "replace")
        return self.data


def u8(value: int) -> Value:
    return Value.of(ValueType.UINT8, value)


def u16(value: int) -> Value:
    return Value.of(ValueType.UINT16, value)


def u32(value: int) -> Value:
    return Value.of(ValueType.UINT32, value)


def u64(value: int) -> Value:
    return Value.of(ValueType.UINT64, value)


def i32(value: int) -> Value:
    return Value.of(ValueType.INT32, value)


def text(value: str) -> Value:
    return Value.of(ValueType.STRING, value)


@dataclass(frozen=True, slots=True)
class Change:
    """A change seen by track `track`: `event` is TRACK_ADD/MODIFY/DELETE; absent values are None."""

    track: int
    event: int
    key: str
    new: Value | None
    old: Value | None


@dataclass(frozen=True, slots=True)
class _Track:
    name: str
    track_type: int


def is_valid_key(key: str) -> bool:
    """icmap_check_key_name: 3..255 characters of [A-Za-z0-9._/:-]."""
    return KEY_NAME_MIN <= len(key) <= KEY_NAME_MAX and _KEY_RE.match(key) is not None


def is_read_only(key: str) -> bool:
    """Does corosync refuse client writes to `key` (icmap_is_key_ro)?"""
    return key in READ_ONLY_KEYS or key.startswith(READ_ONLY_PREFIXES)


def check_value(kind: int, data: bytes) -> Value | None:
    """icmap_check_value_len and the STRING cut: the value to store, or None when invalid."""
    try:
        vtype = ValueType(kind)
    except ValueError:
        return None
    if len(data) > MAX_VALUE_LEN:
        return None
    fmt = _FORMATS.get(vtype)
    if fmt is not None:
        return Value(vtype, bytes(data)) if len(data) == fmt.size else None
    if vtype is ValueType.STRING:
        nul = data.find(b"\0")
        if nul < 0:
            return Value(vtype, bytes(data) + b"\0")  # value_len may be shorter than the text
        if len(data) > nul + 1:
            return None  # value_len longer than strlen + 1
        return Value(vtype, bytes(data[: nul + 1]))
    return Value(vtype, bytes(data))


class CmapStore:
    """The map (module docstring)."""

    def __init__(self) -> None:
        self._values: dict[str, Value] = {}
        self._sorted: list[str] = []
        self._bytes = 0
        self._tracks: dict[int, _Track] = {}
        self._next_track = 1

    # --- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> Value | None:
        """The value of `key`, or None."""
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, in byte order (a snapshot)."""
        start = bisect.bisect_left(self._sorted, prefix)
        out: list[str] = []
        for key in self._sorted[start:]:
            if not key.startswith(prefix):
                break
            out.append(key)
        return out

    def items(self, prefix: str = "") -> Iterator[tuple[str, Value]]:
        """(key, value) for keys starting with `prefix`, in byte order."""
        for key in self.keys(prefix):
            yield key, self._values[key]

    # --- writing -------------------------------------------------------------------------------

    def set(self, key: str, value: Value, *, force: bool = False) -> tuple[ErrorCode, list[Change]]:
        """Store `value` (a client's write unless `force`); return the error and the changes."""
        if not force and is_read_only(key):
            return ErrorCode.PERMISSION_DENIED, []
        old = self._values.get(key)
        if old == value:
            return ErrorCode.OK, []
        if old is None:
            if not is_valid_key(key):
                return ErrorCode.NAME_TOO_LONG, []
            if len(self._values) >= MAX_KEYS or self._bytes + len(key) + len(value.data) > MAX_BYTES:
                return ErrorCode.NO_RESOURCES, []
            bisect.insort(self._sorted, key)
            self._bytes += len(key)
        else:
            self._bytes -= len(old.data)
        self._values[key] = value
        self._bytes += len(value.data)
        return ErrorCode.OK, self._changes(TRACK_ADD if old is None else TRACK_MODIFY, key, value, old)

    def delete(self, key: str, *, force: bool = False) -> tuple[ErrorCode, list[Change]]:
        """Remove `key`; CS_ERR_NOT_EXIST when absent, CS_ERR_ACCESS when read-only for a client."""
        if not force and is_read_only(key):
            return ErrorCode.PERMISSION_DENIED, []
        old = self._values.pop(key, None)
        if old is None:
            return ErrorCode.NOT_EXIST, []
        index = bisect.bisect_left(self._sorted, key)
        del self._sorted[index]
        self._bytes -= len(key) + len(old.data)
        return ErrorCode.OK, self._changes(TRACK_DELETE, key, None, old)

    def adjust_int(self, key: str, step: int) -> tuple[ErrorCode, list[Change]]:
        """icmap_adjust_int: add `step` to an integer value, wrapping as C unsigned arithmetic."""
        if is_read_only(key):
            return ErrorCode.PERMISSION_DENIED, []
        old = self._values.get(key)
        if old is None:
            return ErrorCode.NOT_EXIST, []
        fmt = _FORMATS.get(old.type)
        if fmt is None or old.type in (ValueType.FLOAT, ValueType.DOUBLE):
            return ErrorCode.INVALID_PARAM, []
        bits = fmt.size * 8
        unsigned = int.from_bytes(old.data, "little") + step
        return self.set(key, Value(old.type, (unsigned % (1 << bits)).to_bytes(fmt.size, "little")))

    # --- tracking ------------------------------------------------------------------------------

    def track_add(self, name: str, track_type: int) -> tuple[ErrorCode, int]:
        """Watch `name` (a prefix with TRACK_PREFIX); returns (error, track id)."""
        if track_type & ~_TRACK_MASK:
            return ErrorCode.INVALID_PARAM, 0
        if len(self._tracks) >= MAX_TRACKS:
            return ErrorCode.NO_RESOURCES, 0
        track = self._next_track
        self._next_track += 1
        self._tracks[track] = _Track(name, track_type)
        return ErrorCode.OK, track

    def track_delete(self, track: int) -> bool:
        """Stop track `track`; False when unknown."""
        return self._tracks.pop(track, None) is not None

    def _changes(self, event: int, key: str, new: Value | None, old: Value | None) -> list[Change]:
        out: list[Change] = []
        for track_id, track in self._tracks.items():
            if not track.track_type & event:
                continue
            if track.track_type & TRACK_PREFIX:
                if not key.startswith(track.name):
                    continue
            elif key != track.name:
                continue
            out.append(Change(track_id, event, key, new, old))
        return out
