"""A minimal cmap (service 0) sync participant: corosync's config-version check (exec/cmap.c).

Real corosync nodes list cmap in their SERVICE_BUILD; during cmap's sync_process each multicasts
one cmap MCAST (function 0, reason SYNC) carrying the item `totem.config_version`, and on
activation a node whose own version is non-zero shuts down if, on its *first* sync with others, a
peer announced a different, higher version (corosync-wire.md §7). We take part the same way:

- sync_process sends our `totem.config_version` (value type 0 "does not exist" when unset, as a
  corosync node without the key does; UINT64 otherwise) so peers record it;
- received versions are recorded per node; on our first non-trivial activation a mismatch with
  our non-zero version is reported upward as `ConfigVersionMismatch` (corosync exits; the daemon
  decides what to do with the notification).

Layout of the message (all fields `aligned(8)`): header 16, reason u8 @16, no_items u8 @24,
two reserved u8 @32/@40 → 48 bytes; then items, each: key length u16 @0, key bytes[256] @8,
value_type u8 @264, value_len u64 @272, value @280, item size rounded up to 8.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CMAP_SERVICE, Notification, SendMessage, ServiceOutput
from cmanlk.totem.actions import DeliverConfiguration
from cmanlk.types import NodeId, RingId

MESSAGE_REQ_EXEC_CMAP_MCAST = 0
REASON_SYNC = 0
REASON_NEW_CONFIG_VERSION = 1
VALUETYPE_NOT_EXIST = 0
VALUETYPE_UINT64 = 8
CONFIG_VERSION_KEY = b"totem.config_version"

MCAST_HEADER_SIZE = 48
ITEM_VALUE_OFFSET = 280
KEY_NAME_MAX = 256  # CS_MAX_NAME_LENGTH
MAX_ITEMS = 32  # corosync's MAX_REQ_EXEC_CMAP_MCAST_ITEMS; items beyond are not walked
MAX_VALUE_LEN = 1 << 20  # nothing legitimate comes near; bounds the walk over a hostile message

_HEAD = struct.Struct("<B7xB7xB7xB7x")
_ITEM = struct.Struct("<H6x256sB7xQ")


@dataclass(frozen=True, slots=True)
class ConfigVersionMismatch(Notification):
    """A peer runs another totem.config_version than ours (corosync would exit)."""

    mine: int
    highest_received: int


def encode_config_version_message(config_version: int | None, reason: int = REASON_SYNC) -> bytes:
    """Return the cmap MCAST carrying totem.config_version (328 bytes when unset, 336 when set)."""
    if config_version is None:
        value_type, value = VALUETYPE_NOT_EXIST, b""
    else:
        value_type, value = VALUETYPE_UINT64, struct.pack("<Q", config_version)
    item = _ITEM.pack(len(CONFIG_VERSION_KEY), CONFIG_VERSION_KEY, value_type, len(value)) + value
    item = svcwire.pad_to(item, svcwire.align(len(item)))
    size = MCAST_HEADER_SIZE + len(item)
    header = svcwire.encode_request_header(
        svcwire.service_message_id(CMAP_SERVICE, MESSAGE_REQ_EXEC_CMAP_MCAST), size
    )
    return header + _HEAD.pack(reason, 1, 0, 0) + item


def decode_config_version(message: bytes) -> tuple[int, int | None]:
    """Return (reason, config version or None when absent) of a cmap MCAST.

    Raises MalformedPacket when the message or one of its items is truncated.
    """
    svcwire.check_size(message, MCAST_HEADER_SIZE, "cmap_mcast")
    reason, count, _, _ = _HEAD.unpack_from(message, svcwire.REQUEST_HEADER_SIZE)
    offset = MCAST_HEADER_SIZE
    for _ in range(min(count, MAX_ITEMS)):
        if len(message) < offset + ITEM_VALUE_OFFSET:
            raise MalformedPacket("cmap_item_short", f"item at {offset}")
        key_len, key, value_type, value_len = _ITEM.unpack_from(message, offset)
        if value_len > MAX_VALUE_LEN or len(message) < offset + ITEM_VALUE_OFFSET + value_len:
            raise MalformedPacket("cmap_item_short", f"value of {value_len} bytes at {offset}")
        if key_len == len(CONFIG_VERSION_KEY) and svcwire.c_string(key) == CONFIG_VERSION_KEY:
            if value_type == VALUETYPE_UINT64 and value_len == 8:
                (version,) = struct.unpack_from("<Q", message, offset + ITEM_VALUE_OFFSET)
                return reason, version
            return reason, None
        offset += svcwire.align(ITEM_VALUE_OFFSET + value_len)
    return reason, None


class CmapSync:
    """Service 0: takes part in cmap's sync round and the config-version check, nothing more."""

    service_id = CMAP_SERVICE
    name = "cmap"

    def __init__(self, me: NodeId, config_version: int | None = None) -> None:
        self._me = me
        self.config_version = config_version
        self.versions: dict[NodeId, int] = {}
        self._first_sync = True
        self._trans_entries = 0
        self._highest = 0

    def on_configuration(self, change: DeliverConfiguration) -> list[ServiceOutput]:
        """Forget the versions of nodes that left (bounded by the membership)."""
        for node in change.left:
            self.versions.pop(node, None)
        return []

    def sync_init(
        self, ring_id: RingId, members: tuple[NodeId, ...], transitional_members: tuple[NodeId, ...]
    ) -> list[ServiceOutput]:
        """Remember how many came along; the highest version seen starts at our own."""
        self._trans_entries = len(transitional_members)
        self._highest = self.config_version or 0
        return []

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        """Send our config version (one message), done."""
        message = encode_config_version_message(self.config_version)
        return True, [SendMessage(MESSAGE_REQ_EXEC_CMAP_MCAST, message)]

    def sync_activate(self) -> list[ServiceOutput]:
        """On the first sync with others, report a peer version differing from our non-zero one."""
        if self._trans_entries == 0:
            return []  # corosync: "Single node sync -> no action"
        if not self._first_sync:
            return []
        self._first_sync = False
        mine = self.config_version or 0
        if mine and self._highest != mine:
            return [ConfigVersionMismatch(mine, self._highest)]
        return []

    def sync_abort(self) -> None:
        """Nothing to undo."""

    def on_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        """Record a peer's config version; other functions and reasons are ignored."""
        if function != MESSAGE_REQ_EXEC_CMAP_MCAST:
            return []
        reason, version = decode_config_version(message)
        if reason not in (REASON_SYNC, REASON_NEW_CONFIG_VERSION):
            return []
        value = version or 0
        self.versions[sender] = value
        if sender != self._me and value > self._highest:
            self._highest = value
        return []
