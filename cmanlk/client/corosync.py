"""libcmap's and libcfg's calls over `cmanlk.client.libqb`: one implementation for cmanlk-tool and tests.

`Cmap.connect()` talks to the cmap service exactly as libcmap does (same request layouts, the
size probe before a string is read), so `cmanlk-tool cmap …` works against cmanlkd and against a
real corosync alike, and sees the same key tree corosync-cmapctl shows. `Cfg.reload()` is
corosync_cfg_reload_config (corosync-cfgtool -R): every node re-reads its configuration.

Every call raises `CmapError` (with corosync's cs_error_t) when the service refuses it and
`LibqbError` when the connection fails.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cmanlk.client.libqb import LibqbClient, LibqbError
from cmanlk.errors import ErrorCode
from cmanlk.services.cmap.store import TRACK_ADD, TRACK_DELETE, TRACK_MODIFY, TRACK_PREFIX, Value, ValueType

_REQ = struct.Struct("<i4xi4x")
_NAME = struct.Struct("<H6x256s")


class CmapError(Exception):
    """A cmap or cfg call was refused; `error` is the cs_error_t number the daemon answered,
    `code` its ErrorCode (None for a number corosync does not define)."""

    def __init__(self, what: str, error: int | ErrorCode) -> None:
        self.error = error.cs_error if isinstance(error, ErrorCode) else error
        self.code = error if isinstance(error, ErrorCode) else ErrorCode.from_cs_error(error)
        name = self.code.cs_name if self.code is not None else "cs_error_t"
        super().__init__(f"{what}: {name} ({self.error})")


@dataclass(frozen=True, slots=True)
class CmapChange:
    """One tracking callback: `event` is TRACK_ADD, TRACK_MODIFY or TRACK_DELETE."""

    event: int
    key: str
    new: Value | None
    old: Value | None
    cookie: int


def _name(key: str) -> bytes:
    raw = key.encode()
    if len(raw) > 255:
        raise CmapError(f"key {key[:40]}…", ErrorCode.NAME_TOO_LONG)
    return _NAME.pack(len(raw), raw)


def _check(what: str, reply: bytes) -> bytes:
    if len(reply) < 24:
        raise CmapError(what, ErrorCode.LIBRARY)
    (error,) = struct.unpack_from("<i", reply, 16)
    if error != ErrorCode.OK.cs_error:
        raise CmapError(what, error)
    return reply


class Cmap:
    """A cmap connection (map 0, icmap, unless `stats`)."""

    def __init__(self, client: LibqbClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, stats: bool = False) -> Cmap:
        """cmap_initialize / cmap_initialize_map. Raises LibqbError or CmapError."""
        cmap = cls(LibqbClient.connect("cmap"))
        if stats:
            _check("set map", cmap.client.call(_REQ.pack(9, 24) + struct.pack("<i4x", 1)))
        return cmap

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Cmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> Value | None:
        """The value of `key`, None when it does not exist (cmap_get with the size probe)."""
        probe = self.client.call(_REQ.pack(2, 288) + _name(key) + struct.pack("<Q", 0))
        if len(probe) >= 24 and struct.unpack_from("<i", probe, 16)[0] == ErrorCode.NOT_EXIST.cs_error:
            return None
        _check(f"get {key}", probe)
        length, kind = struct.unpack_from("<QB", probe, 24)
        reply = _check(
            f"get {key}", self.client.call(_REQ.pack(2, 288) + _name(key) + struct.pack("<Q", length))
        )
        length, kind = struct.unpack_from("<QB", reply, 24)
        return Value(ValueType(kind), reply[40 : 40 + length])

    def set(self, key: str, value: Value) -> None:
        """cmap_set. Raises CmapError (CS_ERR_ACCESS for a read-only key, …)."""
        head = _REQ.pack(0, 296 + len(value.data)) + _name(key)
        _check(
            f"set {key}",
            self.client.call(head + struct.pack("<QB7x", len(value.data), int(value.type)) + value.data),
        )

    def delete(self, key: str) -> None:
        """cmap_delete. Raises CmapError (CS_ERR_NOT_EXIST when absent)."""
        _check(f"delete {key}", self.client.call(_REQ.pack(1, 280) + _name(key)))

    def keys(self, prefix: str = "") -> Iterator[tuple[str, ValueType, int]]:
        """(key, type, length) of every key starting with `prefix`, in corosync's order."""
        init = _check("iter_init", self.client.call(_REQ.pack(4, 280) + _name(prefix)))
        (handle,) = struct.unpack_from("<Q", init, 24)
        try:
            while True:
                reply = self.client.call(_REQ.pack(5, 24) + struct.pack("<Q", handle))
                if struct.unpack_from("<i", reply, 16)[0] == ErrorCode.NO_SECTIONS.cs_error:
                    return
                _check("iter_next", reply)
                (length,) = struct.unpack_from("<H", reply, 24)
                key = reply[32 : 32 + length].decode("utf-8", "replace")
                size, kind = struct.unpack_from("<QB", reply, 288)
                yield key, ValueType(kind), size
        finally:
            self.client.call(_REQ.pack(6, 24) + struct.pack("<Q", handle))

    def items(self, prefix: str = "") -> list[tuple[str, Value]]:
        """Every (key, value) starting with `prefix` (a key deleted meanwhile is skipped)."""
        out: list[tuple[str, Value]] = []
        for key, _kind, _size in list(self.keys(prefix)):
            value = self.get(key)
            if value is not None:
                out.append((key, value))
        return out

    def track(self, key: str, prefix: bool = True, cookie: int = 1) -> int:
        """cmap_track_add for additions, changes and deletions; returns the track handle."""
        kinds = TRACK_ADD | TRACK_DELETE | TRACK_MODIFY | (TRACK_PREFIX if prefix else 0)
        reply = self.client.call(_REQ.pack(7, 296) + _name(key) + struct.pack("<i4xQ", kinds, cookie))
        return int(struct.unpack_from("<Q", _check(f"track {key}", reply), 24)[0])

    def changes(self, timeout_s: float) -> Iterator[CmapChange]:
        """Tracking callbacks as they come; stops after `timeout_s` without one."""
        while True:
            data = self.client.event(timeout_s)
            if data is None:
                return
            if len(data) < 336 or struct.unpack_from("<i", data, 0)[0] != 9:
                continue
            (cookie,) = struct.unpack_from("<Q", data, 24)
            (length,) = struct.unpack_from("<H", data, 32)
            key = data[40 : 40 + length].decode("utf-8", "replace")
            event, new_type, old_type, new_len, old_len = struct.unpack_from("<i4xB7xB7xQQ", data, 296)
            new = Value(ValueType(new_type), data[336 : 336 + new_len]) if new_type else None
            old_at = 336 + new_len
            old = Value(ValueType(old_type), data[old_at : old_at + old_len]) if old_type else None
            yield CmapChange(event, key, new, old, cookie)


class Cfg:
    """A cfg connection."""

    def __init__(self, client: LibqbClient) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Cfg:
        return cls(LibqbClient.connect("cfg"))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Cfg:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload(self, timeout_s: float = 30.0) -> None:
        """corosync_cfg_reload_config: every node re-reads its file; raises CmapError on failure."""
        _check("reload", self.client.call(_REQ.pack(7, 16), timeout_s))

    def local_nodeid(self) -> int:
        """corosync_cfg_local_get."""
        return int(struct.unpack_from("<I", _check("local_get", self.client.call(_REQ.pack(6, 16))), 24)[0])


__all__ = ["Cfg", "Cmap", "CmapChange", "CmapError", "LibqbError"]
