"""Pure link logic of the native transport: link table, heartbeats, link choice, dedup, frame codec.

This is what kronosnet gives corosync (corosync-wire.md §1, "knet"), rebuilt in our own shape and
*not* wire-compatible with libknet: up to eight links per node, each link one UDP socket on one
interface; per (peer, link) heartbeats with RTT; a link is declared down when no pong arrived within
the timeout, and up again after `pong_count` consecutive pongs (corosync's `knet_pong_count`,
default 2). Timers derive from the token like corosync does for knet (totemknet.c): ping interval
token/4, timeout token/2, unless configured.

Link choice (corosync `link_mode`): PASSIVE sends on the single up link of highest priority (ties:
lowest link number), ACTIVE duplicates every datagram on every up link, RR spreads datagrams over
the up links in turn. The receiver drops duplicates with a per-sender sliding window over the
transport sequence number (a 64-bit counter per sender incarnation, inside the authenticated
frame), so duplicated or re-sent datagrams are delivered once.

Deviations from knet, and why:
- Local carrier loss is a first-class input (`set_local`): the link goes down at once, without
  waiting for the ping timeout, and the transport tells peers over the remaining links (NOTICE)
  so they fail over at once too. knet learns only from missing pongs.
- Datagrams sent on a link in the last `RECENT_SPAN` are kept (bounded) and re-sent on the next
  link when that link is found dead by carrier loss or a peer's notice; dedup makes this safe.
  That turns a link cut into zero loss instead of a totem retransmission round.
- When no link to a peer is up, traffic goes best-effort over every bound link instead of being
  dropped (knet drops): at start-up heartbeats have not yet succeeded, and totem's JOINs should
  not wait for them.

Nothing here reads a clock or opens a socket: `now` comes from the caller.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field

from cmanlk.errors import MalformedPacket
from cmanlk.types import Duration, Instant, NodeId, ms

MAX_LINKS = 8
"""corosync/knet allow links 0..7 (KNET_MAX_LINK = 8)."""

DEFAULT_PONG_COUNT = 2
"""corosync's knet_pong_count default: pongs in a row before a link is declared up."""

MIN_PING_INTERVAL = ms(10)
"""Floor for derived ping intervals: below this heartbeats cost more than they help."""

DEDUP_WINDOW = 1024
"""Sequence numbers remembered per sender. Covers reordering between links of ~1000 datagrams."""

RECENT_SPAN = ms(100)
"""How far back datagrams are re-sent after a link cut: a cut is seen in < 100 ms (carrier event)."""

RECENT_BOUND = 512
"""Most datagrams kept for re-sending, per transport (a 1455-byte frame each: < 1 MiB)."""

REASSEMBLY_BOUND = 16
"""Partial fragmented messages kept per sender; the oldest is dropped beyond it."""

MAX_FRAGMENTS = 64
"""Most fragments of one message (64 × ~1.3 KiB covers any totem frame on any sane MTU)."""

RTT_SAMPLES = 8
"""RTT samples averaged per (peer, link), like knet's `precision`."""

_EPOCH = Instant(0)


class LinkMode(enum.Enum):
    """How datagrams are spread over up links (corosync `totem.link_mode`)."""

    PASSIVE = "passive"
    ACTIVE = "active"
    RR = "rr"


class DownReason(enum.Enum):
    """Why a (peer, link) path is not up."""

    NEVER_UP = "no pong yet"
    PING_TIMEOUT = "no pong within timeout"
    LOCAL_DOWN = "local interface down"
    PEER_NOTICE = "peer reported its interface down"
    SEND_ERROR = "send failed"


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """Heartbeat timers of every link. Build with `from_token()` for corosync's derivation."""

    ping_interval: Duration
    timeout: Duration
    pong_count: int = DEFAULT_PONG_COUNT

    @classmethod
    def from_token(
        cls,
        token_ms: int,
        *,
        ping_interval_ms: int | None = None,
        timeout_ms: int | None = None,
        pong_count: int = DEFAULT_PONG_COUNT,
    ) -> HeartbeatConfig:
        """Return timers derived from the effective token as corosync does for knet.

        Ping interval token/4 and timeout token/2 (totemknet.c) unless given. Raises ValueError
        when the timeout is not longer than the interval or pong_count < 1.
        """
        interval = ms(ping_interval_ms) if ping_interval_ms is not None else ms(token_ms / 4)
        timeout = ms(timeout_ms) if timeout_ms is not None else ms(token_ms / 2)
        interval = Duration(max(interval, MIN_PING_INTERVAL))
        if timeout <= interval:
            raise ValueError(f"link timeout {timeout} ns must exceed ping interval {interval} ns")
        if pong_count < 1:
            raise ValueError("pong_count must be >= 1")
        return cls(interval, timeout, pong_count)


@dataclass(frozen=True, slots=True)
class PathStatus:
    """Public view of one (peer, link) path."""

    node: NodeId
    link: int
    up: bool
    local_up: bool
    reason: str
    rtt_ns: int | None
    pings_sent: int
    pongs_received: int
    down_count: int


@dataclass(slots=True)
class _Path:
    up: bool = False
    reason: DownReason = DownReason.NEVER_UP
    last_pong: Instant | None = None
    pongs_in_row: int = 0
    next_ping: Instant = _EPOCH
    rtts: deque[int] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
    pings_sent: int = 0
    pongs_received: int = 0
    down_count: int = 0


@dataclass(frozen=True, slots=True)
class PathChange:
    """A (peer, link) path went up or down; `now_up` says which."""

    node: NodeId
    link: int
    now_up: bool
    reason: str


class LinkTable:
    """Link state of one node towards every peer.

    `links` maps link number → priority (higher is preferred in PASSIVE mode).
    """

    def __init__(
        self,
        me: NodeId,
        links: dict[int, int],
        peers: tuple[NodeId, ...],
        heartbeat: HeartbeatConfig,
        mode: LinkMode = LinkMode.PASSIVE,
    ) -> None:
        bad = [n for n in links if not 0 <= n < MAX_LINKS]
        if bad or not links:
            raise ValueError(f"links: 1..{MAX_LINKS} numbers in 0..{MAX_LINKS - 1}, got {sorted(links)}")
        self.me = me
        self.heartbeat = heartbeat
        self.mode = mode
        self._priority = dict(links)
        self._local_up = dict.fromkeys(links, False)
        self._paths: dict[tuple[NodeId, int], _Path] = {}
        self._rr_next: dict[NodeId, int] = {}
        self.set_peers(peers, Instant(0))

    # -- configuration ------------------------------------------------------------------------
    def set_peers(self, peers: tuple[NodeId, ...], now: Instant) -> None:
        """Replace the peer set (SIGHUP nodelist reload); paths of kept peers keep their state."""
        wanted = {p for p in peers if p != self.me}
        for key in [k for k in self._paths if k[0] not in wanted]:
            del self._paths[key]
        for peer in sorted(wanted):
            for link in self._priority:
                self._paths.setdefault((peer, link), _Path(next_ping=now))

    @property
    def peers(self) -> tuple[NodeId, ...]:
        """Return the configured peers (never me), sorted."""
        return tuple(sorted({p for p, _ in self._paths}))

    @property
    def link_numbers(self) -> tuple[int, ...]:
        """Return the configured link numbers, sorted."""
        return tuple(sorted(self._priority))

    # -- inputs ---------------------------------------------------------------------------------
    def set_local(self, link: int, up: bool, now: Instant) -> list[PathChange]:
        """Record that the local interface of `link` is usable (bound, carrier) or not.

        Going down takes every path over it down at once (no waiting for the ping timeout).
        Returns the paths that changed.
        """
        if self._local_up.get(link) == up:
            return []
        self._local_up[link] = up
        changes: list[PathChange] = []
        for (peer, lk), path in self._paths.items():
            if lk != link:
                continue
            if not up:
                changes += self._down(peer, link, path, DownReason.LOCAL_DOWN)
            else:
                path.next_ping = now  # ping at once so the link can come back quickly
                path.pongs_in_row = 0
        return changes

    def is_local_up(self, link: int) -> bool:
        """Is the local side of `link` bound and with carrier?"""
        return self._local_up.get(link, False)

    def on_ping_sent(self, peer: NodeId, link: int, now: Instant) -> None:
        """Count a ping and schedule the next one."""
        path = self._paths.get((peer, link))
        if path is not None:
            path.pings_sent += 1
            path.next_ping = Instant(now + self.heartbeat.ping_interval)

    def on_pong(self, peer: NodeId, link: int, ping_sent_at: Instant, now: Instant) -> list[PathChange]:
        """Record a pong answering our ping sent at `ping_sent_at`; returns the paths that changed.

        A pong older than the timeout is stale (it says nothing about the link now) and ignored.
        """
        path = self._paths.get((peer, link))
        if path is None or not self._local_up.get(link, False):
            return []
        rtt = now - ping_sent_at
        if rtt < 0 or rtt > self.heartbeat.timeout:
            return []
        path.pongs_received += 1
        path.last_pong = now
        path.rtts.append(rtt)
        path.pongs_in_row += 1
        if not path.up and path.pongs_in_row >= self.heartbeat.pong_count:
            path.up = True
            return [PathChange(peer, link, True, "pongs received")]
        return []

    def on_peer_notice(self, peer: NodeId, link: int, peer_link_up: bool) -> list[PathChange]:
        """A peer told us (over another link) that its side of `link` went down; fail over at once."""
        path = self._paths.get((peer, link))
        if path is None or peer_link_up:
            return []
        return self._down(peer, link, path, DownReason.PEER_NOTICE)

    def on_send_error(self, peer: NodeId, link: int) -> list[PathChange]:
        """A send to `peer` on `link` failed (ENETDOWN, EADDRNOTAVAIL...): the path is down now."""
        path = self._paths.get((peer, link))
        if path is None:
            return []
        return self._down(peer, link, path, DownReason.SEND_ERROR)

    def tick(self, now: Instant) -> list[PathChange]:
        """Declare down every path without a pong within the timeout; returns the changes."""
        changes: list[PathChange] = []
        for (peer, link), path in self._paths.items():
            if path.up and (path.last_pong is None or now - path.last_pong > self.heartbeat.timeout):
                changes += self._down(peer, link, path, DownReason.PING_TIMEOUT)
        return changes

    # -- outputs ------------------------------------------------------------------------------
    def due_pings(self, now: Instant) -> list[tuple[NodeId, int]]:
        """Return the (peer, link) paths whose ping is due now (local side up), in stable order."""
        return [
            key
            for key, path in sorted(self._paths.items())
            if self._local_up.get(key[1], False) and path.next_ping <= now
        ]

    def next_deadline(self) -> Instant | None:
        """Return when `due_pings`/`tick` next have work, or None when nothing is scheduled."""
        times: list[int] = []
        for (_, link), path in self._paths.items():
            if self._local_up.get(link, False):
                times.append(path.next_ping)
            if path.up and path.last_pong is not None:
                times.append(path.last_pong + self.heartbeat.timeout + 1)
        return Instant(min(times)) if times else None

    def is_up(self, peer: NodeId, link: int) -> bool:
        """Is the path to `peer` over `link` up?"""
        path = self._paths.get((peer, link))
        return path is not None and path.up

    def choose(self, peer: NodeId) -> tuple[int, ...]:
        """Return the links to send a datagram for `peer` on, per the link mode.

        No up path: every locally-up link (best effort, see the module docstring); nothing at
        all when no local link is up.
        """
        up = [lk for lk in self._by_preference() if self.is_up(peer, lk)]
        if not up:
            return tuple(lk for lk in self._by_preference() if self._local_up[lk])
        match self.mode:
            case LinkMode.PASSIVE:
                return (up[0],)
            case LinkMode.ACTIVE:
                return tuple(up)
            case LinkMode.RR:
                turn = self._rr_next.get(peer, 0)
                self._rr_next[peer] = turn + 1
                return (up[turn % len(up)],)
        raise AssertionError(self.mode)  # pragma: no cover - exhaustive match

    def status(self) -> list[PathStatus]:
        """Return every path's status, sorted by peer then link."""
        out = []
        for (peer, link), p in sorted(self._paths.items()):
            rtt = sum(p.rtts) // len(p.rtts) if p.rtts else None
            out.append(
                PathStatus(
                    peer, link, p.up, self._local_up[link], "up" if p.up else p.reason.value,
                    rtt, p.pings_sent, p.pongs_received, p.down_count,
                )
            )
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _by_preference(self) -> list[int]:
        return sorted(self._priority, key=lambda lk: (-self._priority[lk], lk))

    def _down(self, peer: NodeId, link: int, path: _Path, reason: DownReason) -> list[PathChange]:
        path.pongs_in_row = 0
        if not path.up:
            if path.reason is DownReason.NEVER_UP or reason is DownReason.LOCAL_DOWN:
                path.reason = reason
            return []
        path.up = False
        path.reason = reason
        path.down_count += 1
        return [PathChange(peer, link, False, reason.value)]


class DedupWindow:
    """Per-sender sliding window over transport sequence numbers (duplicate suppression).

    A new `epoch` (the sender restarted: fresh random incarnation) resets the window. Returns of
    `accept`: True the first time a (epoch, seq) is seen within the window, False for a duplicate
    or a number older than the window.
    """

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self.size = size
        self._state: dict[NodeId, tuple[int, int, int]] = {}  # sender → (epoch, highest, bitmap)

    def accept(self, sender: NodeId, epoch: int, seq: int) -> bool:
        """Return whether (sender, epoch, seq) is new; records it when it is."""
        state = self._state.get(sender)
        if state is None or state[0] != epoch:
            self._state[sender] = (epoch, seq, 1)
            return True
        _, high, bits = state
        if seq > high:
            shift = seq - high
            bits = ((bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._state[sender] = (epoch, seq, bits)
            return True
        age = high - seq
        if age >= self.size or bits >> age & 1:
            return False
        self._state[sender] = (epoch, high, bits | (1 << age))
        return True

    def forget(self, sender: NodeId) -> None:
        """Drop a sender's window (it left the nodelist)."""
        self._state.pop(sender, None)


@dataclass(frozen=True, slots=True)
class _Recent:
    at: Instant
    peer: NodeId
    link: int
    frame: bytes


class RecentSends:
    """Bounded record of the inner frames sent lately, to re-send after a link cut."""

    def __init__(self, span: Duration = RECENT_SPAN, bound: int = RECENT_BOUND) -> None:
        self.span = span
        self._items: deque[_Recent] = deque(maxlen=bound)

    def record(self, now: Instant, peer: NodeId, link: int, frame: bytes) -> None:
        """Remember that `frame` (inner, unsealed) went to `peer` over `link` at `now`."""
        self._items.append(_Recent(now, peer, link, frame))

    def take(self, now: Instant, link: int, peer: NodeId | None = None) -> list[tuple[NodeId, bytes]]:
        """Return (peer, frame) sent over `link` (to `peer`, or anyone) within the span, oldest first.

        Returned entries are removed, so one cut never re-sends a frame twice.
        """
        keep: deque[_Recent] = deque(maxlen=self._items.maxlen)
        out: list[tuple[NodeId, bytes]] = []
        for item in self._items:
            if now - item.at > self.span:
                continue
            if item.link == link and (peer is None or item.peer == peer):
                out.append((item.peer, item.frame))
            else:
                keep.append(item)
        self._items = keep
        return out


# ---------------------------------------------------------------------------------------------
# Inner frame codec. Every datagram is `seal(inner)` when crypto is on, else `inner` itself.
#   magic u16 'KL' | version u8 | type u8 | src u32 | epoch u32 | link u8 | frag_index u8 |
#   frag_count u8 | flags u8 | seq u64       — 24 bytes, little endian (as corosync, x86 order)
# DATA: totem frame follows (or a fragment of it). PING/PONG: ping's send time u64 (sender's
# clock, echoed back verbatim) + ping seq u64. NOTICE: link u8, up u8.
# ---------------------------------------------------------------------------------------------

INNER_MAGIC = 0x4B4C
INNER_VERSION = 1
_HEADER = struct.Struct("<HBBIIBBBBQ")
INNER_HEADER_BYTES = _HEADER.size
_HEARTBEAT = struct.Struct("<QQ")
_NOTICE = struct.Struct("<BB")


class FrameType(enum.IntEnum):
    """Inner frame types of the native transport."""

    DATA = 1
    PING = 2
    PONG = 3
    NOTICE = 4


@dataclass(frozen=True, slots=True)
class InnerFrame:
    """A decoded inner frame. `body` is the payload (DATA) or the type-specific fields."""

    type: FrameType
    src: NodeId
    epoch: int
    link: int
    seq: int
    body: bytes
    frag_index: int = 0
    frag_count: int = 1


def encode_inner(frame: InnerFrame) -> bytes:
    """Return the bytes of `frame`."""
    return (
        _HEADER.pack(
            INNER_MAGIC, INNER_VERSION, frame.type, frame.src, frame.epoch, frame.link,
            frame.frag_index, frame.frag_count, 0, frame.seq,
        )
        + frame.body
    )


def decode_inner(data: bytes) -> InnerFrame:
    """Return the frame in `data`; raises MalformedPacket with a stable reason otherwise."""
    if len(data) < INNER_HEADER_BYTES:
        raise MalformedPacket("short-frame", f"{len(data)} bytes")
    magic, version, ftype, src, epoch, link, fi, fc, _flags, seq = _HEADER.unpack_from(data)
    if magic != INNER_MAGIC:
        raise MalformedPacket("bad-magic", f"0x{magic:04x}")
    if version != INNER_VERSION:
        raise MalformedPacket("bad-version", str(version))
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise MalformedPacket("bad-type", str(ftype)) from None
    if src == 0 or link >= MAX_LINKS or not (1 <= fc <= MAX_FRAGMENTS and fi < fc):
        raise MalformedPacket("bad-header", f"src {src} link {link} frag {fi}/{fc}")
    body = data[INNER_HEADER_BYTES:]
    need = {FrameType.PING: _HEARTBEAT.size, FrameType.PONG: _HEARTBEAT.size, FrameType.NOTICE: _NOTICE.size}
    if kind in need and len(body) != need[kind]:
        raise MalformedPacket("bad-length", f"{kind.name} body {len(body)} bytes")
    return InnerFrame(kind, NodeId(src), epoch, link, seq, body, fi, fc)


def heartbeat_body(sent_at: Instant, ping_seq: int) -> bytes:
    """Return the body of a PING (or the PONG echoing it)."""
    return _HEARTBEAT.pack(sent_at, ping_seq)


def parse_heartbeat(body: bytes) -> tuple[Instant, int]:
    """Return (sent_at, ping_seq) of a PING/PONG body (length already checked by decode)."""
    sent_at, seq = _HEARTBEAT.unpack(body)
    return Instant(sent_at), seq


def notice_body(link: int, up: bool) -> bytes:
    """Return the body of a NOTICE saying the sender's side of `link` is up/down."""
    return _NOTICE.pack(link, int(up))


def parse_notice(body: bytes) -> tuple[int, bool]:
    """Return (link, up) of a NOTICE body; raises MalformedPacket for a bad link number."""
    link, up = _NOTICE.unpack(body)
    if link >= MAX_LINKS:
        raise MalformedPacket("bad-notice", f"link {link}")
    return link, bool(up)


def split_payload(payload: bytes, max_piece: int) -> list[bytes]:
    """Return `payload` cut into pieces of at most `max_piece` bytes (one piece if it fits).

    Raises ValueError when more than MAX_FRAGMENTS pieces would be needed.
    """
    if max_piece <= 0:
        raise ValueError("no room for payload in the link MTU")
    pieces = [payload[i : i + max_piece] for i in range(0, len(payload), max_piece)] or [b""]
    if len(pieces) > MAX_FRAGMENTS:
        raise ValueError(f"payload of {len(payload)} bytes needs {len(pieces)} fragments")
    return pieces


class Reassembler:
    """Rebuilds fragmented DATA frames. Fragments of one message carry consecutive seqs; the
    message is keyed by the seq of its first fragment (seq - frag_index). Bounded per sender.
    """

    def __init__(self, bound: int = REASSEMBLY_BOUND) -> None:
        self.bound = bound
        self._parts: dict[NodeId, dict[tuple[int, int], dict[int, bytes]]] = {}
        self.dropped = 0

    def feed(self, frame: InnerFrame) -> bytes | None:
        """Return the whole payload once every fragment of its message is in, else None."""
        if frame.frag_count == 1:
            return frame.body
        per_sender = self._parts.setdefault(frame.src, {})
        key = (frame.epoch, frame.seq - frame.frag_index)
        parts = per_sender.setdefault(key, {})
        parts[frame.frag_index] = frame.body
        if len(parts) == frame.frag_count:
            del per_sender[key]
            return b"".join(parts[i] for i in range(frame.frag_count))
        while len(per_sender) > self.bound:
            del per_sender[next(iter(per_sender))]
            self.dropped += 1
        return None
