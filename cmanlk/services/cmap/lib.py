"""libcmap's face of the cmap service (corosync 3.1.7 exec/cmap.c, ipc_cmap.h) and the key tree.

Requests (x86-64; mar_name_t is u16 length @+0 and 256 bytes of text @+8, 264 bytes):

| id | request | size | answer (id), size |
|----|---------|------|-------------------|
| 0 | SET | 296 + len: key @16, value_len u64 @280, type u8 @288, value @296 | SET (0), 24 |
| 1 | DELETE | 280: key @16 | DELETE (1), 24 |
| 2 | GET | 288: key @16, value_len u64 @280 (0: ask) | GET (2), 40 + len: len @24, type @32, value @40 |
| 3 | ADJUST_INT | 288: key @16, step i32 @280 | ADJUST_INT (3), 24 |
| 4 | ITER_INIT | 280: prefix @16 (length 0 = every key) | ITER_INIT (4), 32: handle u64 @24 |
| 5 | ITER_NEXT | 24: handle @16 | ITER_NEXT (5), 304: key @24, len @288, type @296; end: NO_SECTIONS |
| 6 | ITER_FINALIZE | 24: handle @16 | ITER_FINALIZE (6), 24 |
| 7 | TRACK_ADD | 296: key @16, track_type i32 @280, cookie u64 @288 | TRACK_ADD (7), 32: handle @24 |
| 8 | TRACK_DELETE | 24: handle @16 | TRACK_DELETE (8), 32: track_inst_handle @24 |
| 9 | SET_CURRENT_MAP | 24: map i32 @16 (0 icmap, 1 stats) | SET_CURRENT_MAP (10), 24 |

Event NOTIFY_CALLBACK (9): track_inst_handle @24, key @32, event i32 @296, new type u8 @304, old
type u8 @312, new length u64 @320, old length u64 @328, new value @336, old value right after.

Semantics are icmap's (cmanlk.services.cmap.store): GET into a buffer shorter than the value is
CS_ERR_INVALID_PARAM, a missing key CS_ERR_NOT_EXIST (both answered with a bare 40-byte reply);
writes to read-only keys CS_ERR_ACCESS. A GET answer is 40 bytes plus the value (corosync pads it
to the caller's buffer; libcmap reads `value_len` bytes either way). Iterators are snapshots of
the key list taken at ITER_INIT (a key deleted meanwhile is skipped). Handles of one connection
are not valid on another (CS_ERR_BAD_HANDLE). SET_CURRENT_MAP is refused with CS_ERR_BUSY while
the connection has iterators or tracks, as corosync.

The stats map (corosync's stats.* keys) is read-only here: GET and iteration answer from the
snapshot the node gives (NodeView.stats_keys); SET, DELETE, ADJUST_INT answer
CS_ERR_NOT_SUPPORTED and TRACK_ADD on it too (corosync tracks a few stats keys; nothing uses it).

Bounds: MAX_ITERATORS and MAX_TRACKS per connection (CS_ERR_NO_RESOURCES past them); the store's
own bounds on keys and bytes.

The face also keeps the daemon's keys current (corosync's main.c confchg_fn, votequorum.c, cmap.c
sync): `runtime.members.N.{ip,join_count,status}` and `config_version` on each published
membership (corosync sets the first three at the totem configuration change, before its
synchronisation; the Stack publishes memberships once synchronised), `runtime.votequorum.*` on
quorum changes, and the whole configuration part on `reload()`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cmanlk.config import ClusterConfig
from cmanlk.errors import ErrorCode
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CMAP_SERVICE
from cmanlk.services.cmap.keys import config_keys, member_ip_text, start_keys
from cmanlk.services.cmap.store import (
    Change,
    CmapStore,
    Value,
    check_value,
    i32,
    text,
    u8,
    u32,
    u64,
)
from cmanlk.services.cpg.service import Handle
from cmanlk.services.lib import (
    Event,
    FaceBase,
    LibOutput,
    Malformed,
    NodeView,
    Peer,
    Response,
    need,
    response,
)
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged
from cmanlk.types import NodeId

REQ_SET, REQ_DELETE, REQ_GET, REQ_ADJUST_INT = 0, 1, 2, 3
REQ_ITER_INIT, REQ_ITER_NEXT, REQ_ITER_FINALIZE = 4, 5, 6
REQ_TRACK_ADD, REQ_TRACK_DELETE, REQ_SET_CURRENT_MAP = 7, 8, 9
RES_NOTIFY_CALLBACK = 9
RES_SET_CURRENT_MAP = 10

MAP_ICMAP = 0
MAP_STATS = 1
MAX_ITERATORS = 1024
MAX_TRACKS = 1024

RELOADED_PREFIXES = ("logging.", "totem.", "nodelist.", "quorum.", "uidgid.config.", "nozzle.")
"""What a reload replaces: cfg.c's remove_deleted_entries prefixes."""
FIXED_AT_RUN_TIME = frozenset(
    {
        "totem.secauth", "totem.crypto_hash", "totem.crypto_cipher", "totem.keyfile", "totem.key",
        "totem.version", "totem.threads", "totem.ip_version", "totem.rrp_mode", "totem.netmtu",
        "totem.transport", "totem.cluster_name", "quorum.provider",
    }
)  # fmt: skip
"""cfg.c's remove_ro_entries: a reload keeps the running value (and logs it)."""

_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")
_NAME = struct.Struct("<H6x256s")
_GET_HEAD = struct.Struct("<QB7x")
_NEXT_TAIL = struct.Struct("<QB7x")
_NOTIFY_TAIL = struct.Struct("<i4xB7xB7xQQ")


@dataclass(slots=True)
class _Conn:
    map: int = MAP_ICMAP
    iterators: dict[int, tuple[list[str], int]] = field(default_factory=dict)
    tracks: dict[int, tuple[int, int]] = field(default_factory=dict)  # our handle → (store track, cookie)


class CmapLib(FaceBase[_Conn]):
    """Service 0's library face and the key tree (cmanlk.services.lib.LibFace)."""

    service_id = CMAP_SERVICE
    name = "cmap"

    def __init__(self, node: NodeView, config: ClusterConfig) -> None:
        self.node = node
        self.store = CmapStore()
        self._track_owner: dict[int, tuple[Handle, int]] = {}  # store track → (connection, cookie)
        self._next_handle = 1
        self.reloads_refused: list[str] = []
        for key, value in {**config_keys(config), **start_keys(config, node.me)}.items():
            self.store.set(key, value, force=True)
        super().__init__(
            {
                REQ_SET: (296, self._set),
                REQ_DELETE: (280, self._delete),
                REQ_GET: (288, self._get),
                REQ_ADJUST_INT: (284, self._adjust_int),
                REQ_ITER_INIT: (280, self._iter_init),
                REQ_ITER_NEXT: (24, self._iter_next),
                REQ_ITER_FINALIZE: (24, self._iter_finalize),
                REQ_TRACK_ADD: (296, self._track_add),
                REQ_TRACK_DELETE: (24, self._track_delete),
                REQ_SET_CURRENT_MAP: (20, self._set_current_map),
            }
        )

    # --- LibFace ---------------------------------------------------------------------------------

    def new_conn(self, peer: Peer) -> _Conn | None:
        """A new connection uses the icmap map, with no iterators or tracks."""
        return _Conn()

    def disconnect(self, handle: Handle) -> list[LibOutput]:
        """Drop the connection's iterators and tracks."""
        conn = self._conns.pop(handle, None)
        if conn is not None:
            for track, _cookie in conn.tracks.values():
                self.store.track_delete(track)
                self._track_owner.pop(track, None)
        return []

    def notify(self, note: object) -> list[LibOutput]:
        """Keep the runtime keys current; tracks of changed keys get callbacks."""
        if isinstance(note, MembershipChanged):
            out = self._members_changed(note.joined, note.left)
            changes: list[Change] = []
            for nodeid, version in self.node.config_versions().items():
                key = f"runtime.members.{nodeid}.config_version"
                changes += self.store.set(key, u64(version), force=True)[1]
            return out + self._callbacks(changes)
        if isinstance(note, QuorumChanged):
            return self._quorum_changed(note)
        return []

    # --- access (corosync's cs_ipcs_connection_accept) ------------------------------------------

    def allows(self, uid: int, gid: int) -> bool:
        """May a client with effective `uid`/`gid` connect? Root always; others through uidgid keys."""
        if uid == 0 or gid == 0:
            return True
        keys = (
            f"uidgid.uid.{uid}",
            f"uidgid.config.uid.{uid}",
            f"uidgid.gid.{gid}",
            f"uidgid.config.gid.{gid}",
        )
        return any(self.store.get(k) == u8(1) for k in keys)

    # --- daemon-side writes ----------------------------------------------------------------------

    def set_key(self, key: str, value: Value) -> list[LibOutput]:
        """Set a key as the daemon (read-only keys too); callbacks for its tracks."""
        return self._callbacks(self.store.set(key, value, force=True)[1])

    def reload(self, config: ClusterConfig, status: ErrorCode = ErrorCode.OK) -> list[LibOutput]:
        """Replace the configuration keys with `config`'s (cfg reload, SIGHUP), as cfg.c does.

        `status` is the reload's outcome, stored in config.reload_status; keys fixed at run time
        keep their running value (listed in `reloads_refused`).
        """
        changes: list[Change] = []
        changes += self.store.set("config.totemconfig_reload_in_progress", u8(1), force=True)[1]
        changes += self.store.set("config.reload_in_progress", u8(1), force=True)[1]
        if status is ErrorCode.OK:
            changes += self._replace_config(config)
        changes += self.store.set("config.reload_status", i32(status.cs_error), force=True)[1]
        changes += self.store.set("config.totemconfig_reload_in_progress", u8(0), force=True)[1]
        changes += self.store.set("config.reload_in_progress", u8(0), force=True)[1]
        return self._callbacks(changes)

    def _replace_config(self, config: ClusterConfig) -> list[Change]:
        new = {**config_keys(config), **{k: v for k, v in start_keys(config, self.node.me).items()
                                         if k.startswith(RELOADED_PREFIXES)}}  # fmt: skip
        self.reloads_refused = []
        changes: list[Change] = []
        for key in [k for k in self.store.keys() if k.startswith(RELOADED_PREFIXES)]:
            if key not in new and key not in FIXED_AT_RUN_TIME:
                changes += self.store.delete(key, force=True)[1]
        for key, value in new.items():
            current = self.store.get(key)
            if key in FIXED_AT_RUN_TIME and current is not None and current != value:
                self.reloads_refused.append(key)
                continue
            changes += self.store.set(key, value, force=True)[1]
        return changes

    def _members_changed(self, joined: tuple[NodeId, ...], left: tuple[NodeId, ...]) -> list[LibOutput]:
        changes: list[Change] = []
        config = self.node.config()
        for nodeid in joined:
            prefix = f"runtime.members.{nodeid}"
            count = self.store.get(f"{prefix}.join_count")
            if self.store.get(f"{prefix}.ip") is None:
                changes += self.store.set(f"{prefix}.ip", text(member_ip_text(config, nodeid)), force=True)[1]
            number = int(count.python()) + 1 if count is not None else 1
            changes += self.store.set(f"{prefix}.join_count", u32(number & 0xFFFFFFFF), force=True)[1]
            changes += self.store.set(f"{prefix}.status", text("joined"), force=True)[1]
        for nodeid in left:
            changes += self.store.set(f"runtime.members.{nodeid}.status", text("left"), force=True)[1]
        return self._callbacks(changes)

    def _quorum_changed(self, note: QuorumChanged) -> list[LibOutput]:
        state = note.state
        changes = self.store.set("runtime.votequorum.two_node", u8(int(state.two_node)), force=True)[1]
        vq = self.node.votequorum()
        if vq is not None:
            changes += self.store.set("runtime.votequorum.ev_barrier", u32(vq.quorum.ev_barrier), force=True)[
                1
            ]
        if state.wait_for_all:
            wfa = u8(int(state.wait_for_all_status))
            changes += self.store.set("runtime.votequorum.wait_for_all_status", wfa, force=True)[1]
        return self._callbacks(changes)

    def _callbacks(self, changes: list[Change]) -> list[LibOutput]:
        out: list[LibOutput] = []
        for change in changes:
            owner = self._track_owner.get(change.track)
            if owner is not None:
                out.append(Event(owner[0], _notify_event(owner[1], change)))
        return out

    # --- requests: values ------------------------------------------------------------------------

    def _set(self, peer: Peer, message: bytes) -> list[LibOutput]:
        key = _key(message, 16)
        (length,) = _U64.unpack_from(message, 280)
        kind = message[288]
        if length > len(message) - 296:
            raise Malformed("cmap_set_value_short", f"value_len {length}, {len(message) - 296} bytes")
        error, changes = self._write(peer, key, kind, message[296 : 296 + length])
        return [Response(peer.handle, response(REQ_SET, error)), *self._callbacks(changes)]

    def _write(self, peer: Peer, key: str, kind: int, data: bytes) -> tuple[ErrorCode, list[Change]]:
        if self._conn(peer.handle).map == MAP_STATS:
            return ErrorCode.NOT_SUPPORTED, []
        value = check_value(kind, data)
        if value is None:
            return ErrorCode.INVALID_PARAM, []
        return self.store.set(key, value)

    def _delete(self, peer: Peer, message: bytes) -> list[LibOutput]:
        key = _key(message, 16)
        if self._conn(peer.handle).map == MAP_STATS:
            return [Response(peer.handle, response(REQ_DELETE, ErrorCode.NOT_SUPPORTED))]
        error, changes = self.store.delete(key)
        return [Response(peer.handle, response(REQ_DELETE, error)), *self._callbacks(changes)]

    def _get(self, peer: Peer, message: bytes) -> list[LibOutput]:
        key = _key(message, 16)
        (room,) = _U64.unpack_from(message, 280)
        value = self._lookup(peer.handle, key)
        if value is None:
            return [Response(peer.handle, response(REQ_GET, ErrorCode.NOT_EXIST, bytes(16)))]
        if room and room < len(value.data):
            return [Response(peer.handle, response(REQ_GET, ErrorCode.INVALID_PARAM, bytes(16)))]
        body = _GET_HEAD.pack(len(value.data), int(value.type)) + (value.data if room else b"")
        return [Response(peer.handle, response(REQ_GET, ErrorCode.OK, body))]

    def _adjust_int(self, peer: Peer, message: bytes) -> list[LibOutput]:
        key = _key(message, 16)
        (step,) = _I32.unpack_from(message, 280)
        if self._conn(peer.handle).map == MAP_STATS:
            return [Response(peer.handle, response(REQ_ADJUST_INT, ErrorCode.NOT_SUPPORTED))]
        error, changes = self.store.adjust_int(key, step)
        return [Response(peer.handle, response(REQ_ADJUST_INT, error)), *self._callbacks(changes)]

    # --- requests: iteration ---------------------------------------------------------------------

    def _iter_init(self, peer: Peer, message: bytes) -> list[LibOutput]:
        conn = self._conn(peer.handle)
        (length,) = struct.unpack_from("<H", message, 16)
        prefix = _key(message, 16) if length else ""
        if len(conn.iterators) >= MAX_ITERATORS:
            return [Response(peer.handle, response(REQ_ITER_INIT, ErrorCode.NO_RESOURCES, bytes(8)))]
        if conn.map == MAP_STATS:
            keys = sorted(k for k in self.node.stats_keys() if k.startswith(prefix))
        else:
            keys = self.store.keys(prefix)
        handle = self._new_handle()
        conn.iterators[handle] = (keys, 0)
        return [Response(peer.handle, response(REQ_ITER_INIT, ErrorCode.OK, _U64.pack(handle)))]

    def _iter_next(self, peer: Peer, message: bytes) -> list[LibOutput]:
        conn = self._conn(peer.handle)
        (handle,) = _U64.unpack_from(message, 16)
        found = conn.iterators.get(handle)
        empty = bytes(304 - 24)
        if found is None:
            return [Response(peer.handle, response(REQ_ITER_NEXT, ErrorCode.BAD_HANDLE, empty))]
        keys, position = found
        while position < len(keys):
            key = keys[position]
            position += 1
            value = self._lookup(peer.handle, key)
            if value is not None:
                conn.iterators[handle] = (keys, position)
                body = _name(key) + _NEXT_TAIL.pack(len(value.data), int(value.type))
                return [Response(peer.handle, response(REQ_ITER_NEXT, ErrorCode.OK, body))]
        conn.iterators[handle] = (keys, position)
        return [Response(peer.handle, response(REQ_ITER_NEXT, ErrorCode.NO_SECTIONS, empty))]

    def _iter_finalize(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (handle,) = _U64.unpack_from(message, 16)
        found = self._conn(peer.handle).iterators.pop(handle, None)
        error = ErrorCode.OK if found is not None else ErrorCode.BAD_HANDLE
        return [Response(peer.handle, response(REQ_ITER_FINALIZE, error))]

    # --- requests: tracking and maps -------------------------------------------------------------

    def _track_add(self, peer: Peer, message: bytes) -> list[LibOutput]:
        conn = self._conn(peer.handle)
        (length,) = struct.unpack_from("<H", message, 16)
        name = _key(message, 16) if length else ""
        (track_type,) = _I32.unpack_from(message, 280)
        (cookie,) = _U64.unpack_from(message, 288)
        if conn.map == MAP_STATS:
            error, track = ErrorCode.NOT_SUPPORTED, 0
        elif len(conn.tracks) >= MAX_TRACKS:
            error, track = ErrorCode.NO_RESOURCES, 0
        else:
            error, track = self.store.track_add(name, track_type)
        handle = 0
        if error is ErrorCode.OK:
            handle = self._new_handle()
            conn.tracks[handle] = (track, cookie)
            self._track_owner[track] = (peer.handle, cookie)
        return [Response(peer.handle, response(REQ_TRACK_ADD, error, _U64.pack(handle)))]

    def _track_delete(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (handle,) = _U64.unpack_from(message, 16)
        found = self._conn(peer.handle).tracks.pop(handle, None)
        if found is None:
            return [Response(peer.handle, response(REQ_TRACK_DELETE, ErrorCode.BAD_HANDLE, bytes(8)))]
        track, cookie = found
        self.store.track_delete(track)
        self._track_owner.pop(track, None)
        return [Response(peer.handle, response(REQ_TRACK_DELETE, ErrorCode.OK, _U64.pack(cookie)))]

    def _set_current_map(self, peer: Peer, message: bytes) -> list[LibOutput]:
        conn = self._conn(peer.handle)
        (wanted,) = _I32.unpack_from(message, 16)
        if conn.iterators or conn.tracks:
            error = ErrorCode.BUSY
        elif wanted in (MAP_ICMAP, MAP_STATS):
            conn.map, error = wanted, ErrorCode.OK
        else:
            error = ErrorCode.INVALID_PARAM
        return [Response(peer.handle, response(RES_SET_CURRENT_MAP, error))]

    # --- helpers ---------------------------------------------------------------------------------

    def _conn(self, handle: Handle) -> _Conn:
        return self._conns.setdefault(handle, _Conn())

    def _lookup(self, handle: Handle, key: str) -> Value | None:
        if self._conn(handle).map == MAP_STATS:
            return self.node.stats_keys().get(key)
        return self.store.get(key)

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle


def _key(message: bytes, offset: int) -> str:
    """The key of a mar_name_t, read as corosync reads it: the text up to its NUL (length ignored)."""
    need(message, offset + svcwire.MAR_NAME_SIZE, "cmap_key")
    raw = svcwire.c_string(message[offset + 8 : offset + svcwire.MAR_NAME_SIZE])
    return raw.decode("utf-8", "surrogateescape")


def _name(key: str) -> bytes:
    raw = key.encode("utf-8", "surrogateescape")[: svcwire.MAR_NAME_VALUE_MAX]
    return _NAME.pack(len(raw), raw)


def _notify_event(cookie: int, change: Change) -> bytes:
    new = change.new.data if change.new is not None else b""
    old = change.old.data if change.old is not None else b""
    new_type = int(change.new.type) if change.new is not None else 0
    old_type = int(change.old.type) if change.old is not None else 0
    tail = _NOTIFY_TAIL.pack(change.event, new_type, old_type, len(new), len(old))
    body = _U64.pack(cookie) + _name(change.key) + tail + new + old
    return response(RES_NOTIFY_CALLBACK, ErrorCode.OK, body)
