"""Authenticated encryption of native-transport datagrams (AES-256-GCM), with replay protection.

Keys. The cluster shares one key file (`cmanlk-keygen`: 32..4096 random bytes). From it, HKDF-SHA256
derives a 32-byte *link key* per purpose (info = "cmanlk/1", purpose, cluster name), so two clusters
sharing a key file by mistake, or two uses of the key, never share cipher keys. Each sender boot
then gets its own *session key*, HKDF-Expand(link key, info = sender id ‖ boot salt ‖ key id): the
boot salt is 8 random bytes drawn when the sealer is made, so a restarted node, whose counter
starts again at 0, uses a fresh key and can never repeat a (key, nonce) pair — the one thing
AES-GCM must never do. The nonce is the sender's 64-bit frame counter.

Frame (little-endian like the rest of the native transport; the header is the GCM associated data):

    u8 version (1) · u8 key id · u16 flags (0) · u32 sender node id · 8 B boot salt · u64 counter
    · ciphertext · 16-byte GCM tag

Replay protection, per (sender, boot salt): a sliding window of REPLAY_WINDOW counters (the scheme
of IPsec, RFC 4303 §3.4.3) accepts each counter at most once and refuses counters that fell behind
the window. A new boot salt from a known sender is a restart and is accepted; each sender keeps the
windows of its MAX_BOOTS_PER_SENDER most recently used boots, and at most MAX_SENDERS senders are
tracked, so nobody — not even a key holder inventing ids or salts — grows our state without bound.
State is created only after a frame authenticates.

What this does not do: every key holder can claim any sender id (the key is shared, as in
corosync/knet); the transport must check the claimed id against the source address. Frames of a
boot older than the last MAX_BOOTS_PER_SENDER of a sender can be replayed once; the totem layer
drops such stale traffic by ring id and token sequence.
"""

from __future__ import annotations

import stat
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from cmanlk.errors import ConfigError, ConfigProblem, MalformedPacket
from cmanlk.totem.wire import PROCESSOR_COUNT_MAX
from cmanlk.types import NodeId

FRAME_VERSION = 1
KEY_MIN_BYTES = 32  # 256 bits: the AES-256 key we derive cannot be stronger than the secret
KEY_MAX_BYTES = 4096  # corosync's authkey bound; anything longer is a wrong file, not a key
DEFAULT_PURPOSE = "transport"
SALT_BYTES = 8
TAG_BYTES = 16
HEADER = struct.Struct("<BBHI8sQ")
HEADER_BYTES = HEADER.size  # 24
SEAL_OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES  # 40

REPLAY_WINDOW = 1024
"""Counters a frame may lag behind the newest one of its sender and still be accepted: links reorder
(passive/active failover re-sends the last 100 ms), a heartbeat of 8 links and a busy ring send
hundreds of frames in that time, 1024 leaves room."""

MAX_BOOTS_PER_SENDER = 4
"""Replay windows kept per sender: the current boot plus a few restarts still in flight."""

MAX_SENDERS = PROCESSOR_COUNT_MAX
"""Senders tracked at once: a ring has at most PROCESSOR_COUNT_MAX (384) members."""

COUNTER_MAX = (1 << 64) - 1
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_LINK_KEY_LABEL = b"cmanlk/1"


def derive_link_key(key: bytes, cluster_name: str, purpose: str = DEFAULT_PURPOSE) -> bytes:
    """Return the 32-byte key for one purpose of one cluster. Raises ValueError for a bad key length."""
    _check_key(key)
    info = b"\0".join((_LINK_KEY_LABEL, purpose.encode(), cluster_name.encode()))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def load_key_file(path: str | Path) -> bytes:
    """Return the key in `path`. Raises ConfigError if it is unreadable, of a bad size, or readable
    or writable by group or others (fix: `chmod 0400`)."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), 0, "", f"cannot read key file: {exc.strerror}")]) from exc
    problems = []
    if stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(f"key file mode is {stat.S_IMODE(st.st_mode):04o}; it must be 0400 or 0600")
    if not KEY_MIN_BYTES <= len(data) <= KEY_MAX_BYTES:
        problems.append(f"key is {len(data)} bytes; it must be {KEY_MIN_BYTES}..{KEY_MAX_BYTES}")
    if problems:
        raise ConfigError([ConfigProblem(str(path), 0, "", p) for p in problems])
    return data


class FrameSealer:
    """Seals this node's frames. Make one per boot: its boot salt is drawn from `rng_bytes` here."""

    def __init__(
        self,
        key: bytes,
        cluster_name: str,
        me: NodeId,
        rng_bytes: Callable[[int], bytes],
        *,
        purpose: str = DEFAULT_PURPOSE,
        key_id: int = 0,
    ) -> None:
        """Raises ValueError for a key of bad length, a node id or key id out of range, or an rng
        that returns the wrong number of bytes."""
        if not 0 < me <= 0xFFFF_FFFF or not 0 <= key_id <= 0xFF:
            raise ValueError(f"node id {me} or key id {key_id} out of range")
        salt = rng_bytes(SALT_BYTES)
        if len(salt) != SALT_BYTES:
            raise ValueError(f"rng_bytes({SALT_BYTES}) returned {len(salt)} bytes")
        self.me = me
        self.key_id = key_id
        self.boot_salt = salt
        self._aead = AESGCM(_session_key(derive_link_key(key, cluster_name, purpose), me, salt, key_id))
        self._counter = 0

    @property
    def frames_sealed(self) -> int:
        """How many frames this sealer has produced (the next counter value)."""
        return self._counter

    def seal(self, payload: bytes) -> bytes:
        """Return the sealed frame carrying `payload`. Raises OverflowError after 2**64 - 1 frames."""
        if self._counter >= COUNTER_MAX:
            raise OverflowError("frame counter exhausted; make a new FrameSealer")
        counter = self._counter
        self._counter += 1
        header = HEADER.pack(FRAME_VERSION, self.key_id, 0, self.me, self.boot_salt, counter)
        return header + self._aead.encrypt(_nonce(counter), payload, header)


class FrameOpener:
    """Opens frames of every sender (this node's own included), refusing forgeries and replays."""

    def __init__(
        self, key: bytes, cluster_name: str, *, purpose: str = DEFAULT_PURPOSE, key_id: int = 0
    ) -> None:
        """Raises ValueError for a key of bad length or a key id out of range."""
        self._cluster_name = cluster_name
        self._purpose = purpose
        self._link_keys: dict[int, bytes] = {}
        self._senders: dict[NodeId, OrderedDict[tuple[int, bytes], _Boot]] = {}
        self.stats = OpenerStats()
        self.add_key(key, key_id)

    def add_key(self, key: bytes, key_id: int) -> None:
        """Also accept frames sealed with `key` under `key_id` (key rotation). Raises ValueError."""
        if not 0 <= key_id <= 0xFF:
            raise ValueError(f"key id {key_id} out of range")
        self._link_keys[key_id] = derive_link_key(key, self._cluster_name, self._purpose)

    def remove_key(self, key_id: int) -> None:
        """Stop accepting frames sealed under `key_id` (after a rotation completed)."""
        self._link_keys.pop(key_id, None)
        for boots in self._senders.values():
            for boot_id in [b for b in boots if b[0] == key_id]:
                del boots[boot_id]

    def forget(self, sender: NodeId) -> None:
        """Drop the replay state of `sender` (it left the nodelist)."""
        self._senders.pop(sender, None)

    def open(self, frame: bytes) -> tuple[NodeId, bytes]:
        """Return (claimed sender, payload) of an authentic, fresh frame.

        Raises MalformedPacket with reason short-frame, bad-version, bad-flags, unknown-key,
        auth-failed, replay or too-many-senders; nothing is remembered of a refused frame.
        """
        try:
            return self._open(frame)
        except MalformedPacket as exc:
            self.stats.refused[exc.reason] = self.stats.refused.get(exc.reason, 0) + 1
            raise

    def _open(self, frame: bytes) -> tuple[NodeId, bytes]:
        if len(frame) < SEAL_OVERHEAD_BYTES:
            raise MalformedPacket("short-frame", f"{len(frame)} < {SEAL_OVERHEAD_BYTES} bytes")
        version, key_id, flags, sender_raw, salt, counter = HEADER.unpack_from(frame, 0)
        if version != FRAME_VERSION:
            raise MalformedPacket("bad-version", f"sealed frame version {version}")
        if flags != 0:
            raise MalformedPacket("bad-flags", f"flags 0x{flags:04x}")
        link_key = self._link_keys.get(key_id)
        if link_key is None:
            raise MalformedPacket("unknown-key", f"key id {key_id}")
        sender = NodeId(sender_raw)
        boots = self._senders.get(sender)
        boot = boots.get((key_id, salt)) if boots is not None else None
        if boot is not None and not boot.window.is_fresh(counter):
            raise MalformedPacket(
                "replay", f"node {sender} counter {counter} ({boot.window.describe(counter)})"
            )
        if boots is None and len(self._senders) >= MAX_SENDERS:
            raise MalformedPacket("too-many-senders", f"{len(self._senders)} tracked")
        aead = boot.aead if boot is not None else AESGCM(_session_key(link_key, sender, salt, key_id))
        header = frame[:HEADER_BYTES]
        try:
            payload = aead.decrypt(_nonce(counter), frame[HEADER_BYTES:], header)
        except InvalidTag:
            raise MalformedPacket("auth-failed", f"claimed sender {sender}") from None
        if boot is None:
            boot = self._new_boot(sender, key_id, salt, aead)
        else:
            self._senders[sender].move_to_end((key_id, salt))
        boot.window.mark(counter)
        self.stats.opened += 1
        return sender, payload

    def _new_boot(self, sender: NodeId, key_id: int, salt: bytes, aead: AESGCM) -> _Boot:
        boots = self._senders.setdefault(sender, OrderedDict())
        if len(boots) >= MAX_BOOTS_PER_SENDER:
            boots.popitem(last=False)  # the least recently used boot: long restarted
        if boots:
            self.stats.restarts_seen += 1
        boot = _Boot(aead, ReplayWindow())
        boots[(key_id, salt)] = boot
        return boot


@dataclass(slots=True)
class OpenerStats:
    """Counters of a FrameOpener."""

    opened: int = 0
    restarts_seen: int = 0  # new boot salts of senders already known
    refused: dict[str, int] = field(default_factory=dict)  # by MalformedPacket reason


class ReplayWindow:
    """A sliding window over 64-bit counters (RFC 4303 §3.4.3): each accepted at most once."""

    __slots__ = ("_bits", "_top")

    def __init__(self) -> None:
        self._top = -1  # the highest counter marked; -1 before the first
        self._bits = 0  # bit i set: counter top - i was marked

    def is_fresh(self, counter: int) -> bool:
        """Would `counter` be accepted (neither seen nor behind the window)?"""
        if counter > self._top:
            return True
        behind = self._top - counter
        return behind < REPLAY_WINDOW and not (self._bits >> behind) & 1

    def mark(self, counter: int) -> None:
        """Record `counter` as seen (call only after the frame authenticated)."""
        if counter > self._top:
            shift = counter - self._top
            self._bits = ((self._bits << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self._top = counter
        else:
            self._bits |= 1 << (self._top - counter)

    def describe(self, counter: int) -> str:
        """Why `counter` is not fresh, for the log line."""
        return "behind the window" if self._top - counter >= REPLAY_WINDOW else "duplicate"


@dataclass(slots=True)
class _Boot:
    aead: AESGCM
    window: ReplayWindow


def _check_key(key: bytes) -> None:
    if not KEY_MIN_BYTES <= len(key) <= KEY_MAX_BYTES:
        raise ValueError(f"key is {len(key)} bytes; it must be {KEY_MIN_BYTES}..{KEY_MAX_BYTES}")


def _session_key(link_key: bytes, sender: int, salt: bytes, key_id: int) -> bytes:
    info = b"session" + struct.pack("<I", sender) + salt + bytes([key_id])
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(link_key)


def _nonce(counter: int) -> bytes:
    # 96-bit GCM nonce: the counter, zero-padded. Unique because each (sender, boot) has its own key.
    return counter.to_bytes(12, "little")
