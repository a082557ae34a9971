"""The native transport of cmanlkd: what kronosnet gives corosync, in our own (not knet) format.

Up to eight links, each one UDP socket bound (SO_BINDTODEVICE) to a named interface and to that
interface's address as rtnetlink reports it (IPv4 or IPv6 alike; an IPv6 link-local address is
bound with the interface index as scope id). The pure logic (heartbeats, up/down, link choice,
dedup, frame codec) is in `cmanlk.runtime.linkstate`; this module does the I/O around it.

Datagram layout: `seal(inner)` with the cluster's FrameSealer (authenticated encryption, ON by
default), where `inner` is linkstate's 24-byte header + body. Nothing of a totem frame crosses the
wire in clear.

PMTU: sockets set IP(V6)_MTU_DISCOVER=DO, so the kernel never fragments and an oversize send
fails with EMSGSIZE instead of vanishing. Per link, the payload that fits is
    link MTU - IP header (20 IPv4 / 40 IPv6) - UDP 8 - seal overhead - inner header 24
(seal overhead is measured at start as len(seal(b""))). `max_payload_bytes` reports the smallest
over the configured links so the daemon can set totem's netmtu = max_payload_bytes + 45 and never
fragment; a larger payload is still carried, split into fragments that each fit (linkstate's
Reassembler joins them).

Failover: rtnetlink's carrier loss (IFF_LOWER_UP cleared) or admin down takes the link down at
once and the next link carries traffic; peers are told over the surviving links (NOTICE), and
datagrams sent on the dead link in the last 100 ms are re-sent on the new one (duplicates are
dropped by the receiver), so a cut loses nothing. An address that disappears closes the socket;
when it (or the interface, renamed back or re-created) returns, the link is bound again. A link is
never bound to a loopback device or address: that is refused and logged.

Rebinding is also triggered by kernel uevents (kernel_glue.udev) and by touching the trigger file
(default /run/cmanlk/rebind: an administrator's `touch`, docs/links.md).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import ipaddress
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cmanlk.errors import ConfigError, ConfigProblem, MalformedPacket
from cmanlk.runtime.datagrams import Deliver, Inbox
from cmanlk.runtime.linkstate import (
    INNER_HEADER_BYTES,
    MAX_LINKS,
    DedupWindow,
    FrameType,
    HeartbeatConfig,
    InnerFrame,
    LinkMode,
    LinkTable,
    PathChange,
    PathStatus,
    Reassembler,
    RecentSends,
    decode_inner,
    encode_inner,
    heartbeat_body,
    notice_body,
    parse_heartbeat,
    parse_notice,
    split_payload,
)
from cmanlk.types import Instant, NodeId
from kernel_glue.netlink import (
    AddressAdded,
    AddressRemoved,
    InterfaceAddress,
    InterfaceInfo,
    LinkDown,
    LinkRemoved,
    LinkRenamed,
    LinkUp,
    NetEvent,
    NetlinkWatch,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 5405
"""corosync's default totem port, used for every link (each link binds its own address)."""

IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_DO = 2
UDP_HEADER = 8
IP_HEADER = {socket.AF_INET: 20, socket.AF_INET6: 40}

MAX_DATAGRAM = 65535
RECV_BATCH = 64
"""Datagrams read per wake-up of one socket, so one busy link cannot starve the loop."""

AUTH_LOG_INTERVAL_S = 10.0
"""At most one log line per drop reason per interval, carrying the count since the last one."""

IDLE_WAKE_S = 1.0
"""Longest sleep of the heartbeat loop (also how often the rebind trigger file is checked)."""

DEFAULT_REBIND_TRIGGER = "/run/cmanlk/rebind"

"""deliver(data, source node id or None, link number) — called for each datagram received."""


class Sealer(Protocol):
    """cmanlk.runtime.crypto.FrameSealer: authenticated encryption of one frame."""

    def seal(self, payload: bytes) -> bytes: ...


class Opener(Protocol):
    """cmanlk.runtime.crypto.FrameOpener: returns (sender, payload) or raises MalformedPacket."""

    def open(self, frame: bytes) -> tuple[NodeId, bytes]: ...


@dataclass(frozen=True, slots=True)
class NativeLink:
    """One local link (corosync's `interface { linknumber }` + this node's `ringX_addr`).

    `interface` names the device to bind; when None, the device holding `local_address` is used.
    `local_address` pins the address; when None the interface's address of the peers' family is
    chosen (global scope preferred over link-local).
    """

    link: int
    interface: str | None = None
    local_address: str | None = None
    port: int = DEFAULT_PORT
    priority: int = 0


@dataclass(frozen=True, slots=True)
class NativeConfig:
    """Everything the native transport needs. `peers[node][link]` is that node's ringX_addr."""

    me: NodeId
    links: tuple[NativeLink, ...]
    peers: Mapping[NodeId, Mapping[int, str]]
    heartbeat: HeartbeatConfig
    mode: LinkMode = LinkMode.PASSIVE
    crypto: bool = True
    key: bytes | None = None
    cluster_name: str = ""
    rebind_trigger: str | None = DEFAULT_REBIND_TRIGGER

    def check(self) -> None:
        """Raise ConfigError listing every problem (links out of range, addresses, missing key)."""
        problems: list[str] = []
        numbers = [lk.link for lk in self.links]
        if not self.links or len(self.links) > MAX_LINKS or len(set(numbers)) != len(numbers):
            problems.append(f"1..{MAX_LINKS} distinct links needed, got {numbers}")
        for lk in self.links:
            if not 0 <= lk.link < MAX_LINKS:
                problems.append(f"link {lk.link}: number must be 0..{MAX_LINKS - 1}")
            if lk.interface is None and lk.local_address is None:
                problems.append(f"link {lk.link}: needs an interface or a local address")
            if lk.local_address is not None and _is_loopback_text(lk.local_address):
                problems.append(f"link {lk.link}: refusing loopback address {lk.local_address}")
        for node, addrs in self.peers.items():
            for link, text in addrs.items():
                try:
                    ipaddress.ip_address(text.split("%")[0])
                except ValueError:
                    problems.append(f"nodelist node {node} link {link}: bad address {text!r}")
        if self.crypto and not self.key:
            problems.append("crypto is on (the default) but no key was given")
        if problems:
            raise ConfigError([ConfigProblem("native transport", 0, "totem", p) for p in problems])


@dataclass
class TransportStats:
    """Counters of the native transport.

    The plain fields are transport-wide. `per_link[link]` counts the same events by the link they
    happened on ("sent", "received", "delivered", "duplicates", "dropped_<reason>"; sent and
    received include heartbeats, delivered is totem data only); `per_link[None]` holds the
    drops that belong to no link (too-large, unknown-destination). Summing `per_link` over every
    key gives the transport-wide sent/received/duplicates/dropped.
    """

    sent: int = 0
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    resent_after_cut: int = 0
    fragments_sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    per_link: dict[int | None, Counter[str]] = field(default_factory=dict)

    def count(self, link: int | None, key: str) -> None:
        """Add one to `key` of `link` (the per-link view only)."""
        self.per_link.setdefault(link, Counter())[key] += 1


@dataclass
class _Bound:
    sock: socket.socket
    ifindex: int
    ifname: str
    address: InterfaceAddress
    mtu: int


class NativeTransport:
    """The native transport. Construct, `await start(deliver)`, then unicast/multicast; `close()`."""

    def __init__(
        self,
        config: NativeConfig,
        *,
        netlink: NetlinkWatch | None = None,
        udev: Any = None,
        sealer: Sealer | None = None,
        opener: Opener | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        rng: random.Random | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.me = config.me
        self.stats = TransportStats()
        self._clock = clock
        self._rng = rng or random.Random()
        self._netlink = netlink
        self._udev = udev
        self._sealer = sealer
        self._opener = opener
        self._spec = {lk.link: lk for lk in config.links}
        self._peer_addrs: dict[NodeId, dict[int, str]] = {}
        self._table = LinkTable(
            config.me, {lk.link: lk.priority for lk in config.links}, (), config.heartbeat, config.mode
        )
        self._set_peer_addrs(config.peers)
        self._bound: dict[int, _Bound] = {}
        self._refusal: dict[int, str] = {}
        self._dedup = DedupWindow()
        self._reasm = Reassembler()
        self._recent = RecentSends()
        self._epoch = self._rng.getrandbits(32)
        self._seq = 0
        self._ping_seq = 0
        self._seal_overhead = 0
        self._deliver: Deliver | None = None
        self._inbox: Inbox | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log_at: dict[str, float] = {}
        self._log_pending: Counter[str] = Counter()
        self._trigger_mtime: float | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, deliver: Deliver) -> None:
        """Open netlink/udev watches, bind every link that can be bound, start heartbeats.

        Links whose interface or address is missing stay down and are bound when they appear.
        Raises KernelError when rtnetlink cannot be watched, ConfigError when crypto cannot be set up.
        """
        self._deliver = deliver
        self._inbox = Inbox(deliver)
        self._setup_crypto()
        if self._netlink is None:
            from kernel_glue.netlink import RtnlWatch

            self._netlink = RtnlWatch()
        await self._netlink.start()
        if self._udev is None:
            from kernel_glue.udev import open_watch

            self._udev = open_watch()
        try:
            await self._udev.start()
        except OSError as exc:  # KernelError included: udev is a nicety, netlink is the truth
            log.warning("udev watch unavailable (%s); relying on rtnetlink alone", exc)
            self._udev = None
        self._trigger_mtime = self._read_trigger()
        for link in self._spec:
            self._reconcile(link)
        self._tasks = [
            asyncio.create_task(self._netlink_loop(), name="native-netlink"),
            asyncio.create_task(self._heartbeat_loop(), name="native-heartbeat"),
        ]
        if self._udev is not None:
            self._tasks.append(asyncio.create_task(self._udev_loop(), name="native-udev"))

    async def close(self) -> None:
        """Stop tasks, close sockets and watches. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for link in list(self._bound):
            self._unbind(link, "transport closed")
        if self._udev is not None:
            await self._udev.close()
        if self._netlink is not None:
            await self._netlink.close()

    # -- public API -----------------------------------------------------------------------------
    def unicast(self, to: NodeId, data: bytes) -> None:
        """Send `data` to node `to` over the link(s) the link mode picks. Never raises for the network."""
        self._send_data((to,), data)

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        """Send `data` to every node in `to` (one sealed frame, one datagram per node and link)."""
        self._send_data(to, data)

    def links(self) -> list[PathStatus]:
        """Return the status of every (peer, link) path."""
        return self._table.status()

    def local_links(self) -> dict[int, str]:
        """Return, per link number, a one-line description of the local side (bound or why not)."""
        out = {}
        for link in sorted(self._spec):
            b = self._bound.get(link)
            if b is not None:
                state = "up" if self._table.is_local_up(link) else "no carrier"
                out[link] = f"{b.ifname} {b.address.address} mtu {b.mtu} {state}"
            else:
                out[link] = f"unbound: {self._refusal.get(link, 'not yet bound')}"
        return out

    def set_nodes(self, peers: Mapping[NodeId, Mapping[int, str]]) -> None:
        """Replace the nodelist (SIGHUP reload). Paths to kept nodes keep their state."""
        self._set_peer_addrs(peers)
        self._wake.set()

    def rebind(self) -> None:
        """Re-check every link against the interfaces now, re-binding each (the trigger file)."""
        for link in self._spec:
            self._reconcile(link, force=True)

    @property
    def max_payload_bytes(self) -> int:
        """Largest payload one datagram carries on every bound link (see the module docstring)."""
        budgets = [self._payload_budget(b) for b in self._bound.values()]
        return min(budgets) if budgets else 1500 - 40 - UDP_HEADER - self._seal_overhead - INNER_HEADER_BYTES

    # -- crypto -------------------------------------------------------------------------------
    def _setup_crypto(self) -> None:
        if self.config.crypto and self._sealer is None:
            # engineer "codec"'s module; imported late so a crypto-less build still runs the tests
            crypto: Any = importlib.import_module("cmanlk.runtime.crypto")

            assert self.config.key is not None  # NativeConfig.check() ensured it
            self._sealer = crypto.FrameSealer(self.config.key, self.config.cluster_name, self.me, os.urandom)
            self._opener = crypto.FrameOpener(self.config.key, self.config.cluster_name)
        if not self.config.crypto:
            log.warning("native transport: crypto is OFF; traffic is neither encrypted nor authenticated")
            self._sealer = self._opener = None
        self._seal_overhead = len(self._seal(b"")) if self._sealer is not None else 0

    def _seal(self, inner: bytes) -> bytes:
        return self._sealer.seal(inner) if self._sealer is not None else inner

    # -- sending --------------------------------------------------------------------------------
    def _send_data(self, dests: tuple[NodeId, ...], payload: bytes) -> None:
        now = Instant(self._clock())
        try:
            pieces = split_payload(payload, self.max_payload_bytes)
        except ValueError as exc:
            self._drop("too-large", f"{len(payload)} bytes: {exc}")
            return
        first = self._seq + 1
        sealed = []
        for i, piece in enumerate(pieces):
            self._seq += 1
            frame = InnerFrame(FrameType.DATA, self.me, self._epoch, 0, self._seq, piece, i, len(pieces))
            sealed.append(frame)
        if len(pieces) > 1:
            self.stats.fragments_sent += len(pieces)
        assert sealed[0].seq == first
        for peer in dests:
            if peer == self.me or peer not in self._peer_addrs:
                self._drop("unknown-destination", f"node {peer}")
                continue
            for link in self._table.choose(peer):
                for frame in sealed:
                    self._send_frame(peer, link, frame, now, record=True)

    def _send_frame(
        self, peer: NodeId, link: int, frame: InnerFrame, now: Instant, record: bool,
        tried: frozenset[int] = frozenset(),
    ) -> bool:
        """Seal `frame` for `link` and send it; on a link-level error fail over to a link not yet
        tried (DATA only). Returns whether some link took it.
        """
        inner = encode_inner(InnerFrame(frame.type, frame.src, frame.epoch, link, frame.seq, frame.body,
                                        frame.frag_index, frame.frag_count))
        if self._sendto(peer, link, self._seal(inner)):
            if record and frame.type is FrameType.DATA:
                self._recent.record(now, peer, link, encode_inner(frame))
            return True
        tried = tried | {link}
        if frame.type is FrameType.DATA:
            for other in self._table.choose(peer):
                if other not in tried:
                    return self._send_frame(peer, other, frame, now, record, tried)
        return False

    def _sendto(self, peer: NodeId, link: int, datagram: bytes) -> bool:
        bound = self._bound.get(link)
        addr = self._peer_sockaddr(peer, link)
        if bound is None or addr is None:
            self._drop("no-link", f"node {peer} link {link}", link=link)
            return False
        try:
            bound.sock.sendto(datagram, addr)
        except BlockingIOError:
            self._drop("send-buffer-full", f"link {link}", link=link)
            return False
        except OSError as exc:
            self._on_send_error(peer, link, exc)
            return False
        self.stats.sent += 1
        self.stats.count(link, "sent")
        return True

    def _on_send_error(self, peer: NodeId, link: int, exc: OSError) -> None:
        if exc.errno == errno.EMSGSIZE:
            self._drop("emsgsize", f"link {link}: datagram exceeds the path MTU", link=link)
            return
        self._drop("send-error", f"node {peer} link {link}: {exc}", link=link)
        if exc.errno in (errno.ENETDOWN, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENXIO):
            self._apply(self._table.on_send_error(peer, link))
            self._reconcile(link)

    def _send_control(self, peer: NodeId, link: int, ftype: FrameType, seq: int, body: bytes) -> None:
        frame = InnerFrame(ftype, self.me, self._epoch, link, seq, body)
        self._send_frame(peer, link, frame, Instant(self._clock()), record=False)

    # -- receiving ------------------------------------------------------------------------------
    def _readable(self, link: int) -> None:
        try:
            self._drain(link)
        finally:
            if self._inbox is not None:
                self._inbox.flush()  # the wake-up's messages reach the node as one batch

    def _drain(self, link: int) -> None:
        bound = self._bound.get(link)
        for _ in range(RECV_BATCH):
            if bound is None or self._bound.get(link) is not bound:
                return
            try:
                data, addr = bound.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop("recv-error", f"link {link}: {exc}", link=link)
                return
            self._on_datagram(link, data, addr)

    def _on_datagram(self, link: int, data: bytes, addr: Any) -> None:
        """Authenticate, decode and dispatch one datagram. Remote input never raises out of here."""
        self.stats.received += 1
        self.stats.count(link, "received")
        now = Instant(self._clock())
        try:
            if self._opener is not None:
                sender, inner = self._opener.open(data)
            else:
                sender, inner = None, data
            frame = decode_inner(inner)
        except MalformedPacket as exc:
            if exc.reason == "replay":  # the same sealed frame over two links: a duplicate, not an attack
                self.stats.duplicates += 1
                self.stats.count(link, "duplicates")
                return
            detail = exc.detail or exc.reason
            self._drop(exc.reason, f"from {_host(addr)} on link {link}: {detail}", loud=True, link=link)
            return
        if not self._is_listed(frame, sender, link, addr):
            return
        match frame.type:
            case FrameType.DATA:
                self._on_data(frame, link)
            case FrameType.PING:
                self._send_control(frame.src, link, FrameType.PONG, frame.seq, frame.body)
            case FrameType.PONG:
                sent_at, _ = parse_heartbeat(frame.body)
                self._apply(self._table.on_pong(frame.src, link, sent_at, now))
            case FrameType.NOTICE:
                self._on_notice(frame, now, link)

    def _is_listed(self, frame: InnerFrame, sender: NodeId | None, link: int, addr: Any) -> bool:
        if sender is not None and sender != frame.src:
            mismatch = f"sealed by {sender}, header says {frame.src}"
            self._drop("sender-mismatch", mismatch, loud=True, link=link)
            return False
        expected = self._peer_addrs.get(frame.src, {}).get(link)
        if expected is None or frame.link != link:
            where = f"node {frame.src} link {frame.link} from {_host(addr)}"
            self._drop("unlisted-source", where, loud=True, link=link)
            return False
        if ipaddress.ip_address(_host(addr)) != ipaddress.ip_address(expected.split("%")[0]):
            where = f"node {frame.src} from {_host(addr)}, expected {expected}"
            self._drop("unlisted-source", where, loud=True, link=link)
            return False
        return True

    def _on_data(self, frame: InnerFrame, link: int) -> None:
        if not self._dedup.accept(frame.src, frame.epoch, frame.seq):
            self.stats.duplicates += 1
            self.stats.count(link, "duplicates")
            return
        payload = self._reasm.feed(frame)
        if payload is None:
            return
        self.stats.delivered += 1
        self.stats.count(link, "delivered")
        if self._inbox is not None:
            self._inbox.add(payload, frame.src, link)  # flushed at the end of the wake-up

    def _on_notice(self, frame: InnerFrame, now: Instant, via: int) -> None:
        try:
            link, up = parse_notice(frame.body)
        except MalformedPacket as exc:
            self._drop(exc.reason, f"from node {frame.src}", loud=True, link=via)
            return
        changes = self._table.on_peer_notice(frame.src, link, up)
        self._apply(changes)
        if changes:
            self._resend(link, now, frame.src)

    # -- link state -------------------------------------------------------------------------------
    def _apply(self, changes: list[PathChange]) -> None:
        for c in changes:
            log.info("link %d to node %d %s: %s", c.link, c.node, "up" if c.now_up else "down", c.reason)
        if changes:
            self._wake.set()

    def _set_local(self, link: int, up: bool, why: str) -> None:
        now = Instant(self._clock())
        was_up = self._table.is_local_up(link)
        changes = self._table.set_local(link, up, now)
        if was_up != up:
            log.info("link %d local side %s: %s", link, "up" if up else "down", why)
        self._apply(changes)
        if was_up and not up:
            # Tell peers over the surviving links so they fail over without waiting for the timeout,
            # then re-send what may have died on the cut link (receivers drop duplicates).
            for peer in self._table.peers:
                for other in self._table.choose(peer):
                    self._send_control(peer, other, FrameType.NOTICE, 0, notice_body(link, False))
            self._resend(link, now, None)
        self._wake.set()

    def _resend(self, link: int, now: Instant, peer: NodeId | None) -> None:
        for dest, inner in self._recent.take(now, link, peer):
            try:
                frame = decode_inner(inner)
            except MalformedPacket:  # pragma: no cover - our own frames
                continue
            for other in self._table.choose(dest):
                if other != link and self._send_frame(dest, other, frame, now, record=True):
                    self.stats.resent_after_cut += 1

    def _reconcile(self, link: int, force: bool = False) -> None:
        """Bring link `link`'s socket in line with the interfaces rtnetlink reports now."""
        assert self._netlink is not None
        spec = self._spec[link]
        info, address, why = self._choose_binding(spec)
        bound = self._bound.get(link)
        if bound is not None and (
            force or info is None or address is None
            or info.index != bound.ifindex or info.name != bound.ifname or address != bound.address
        ):
            self._unbind(link, why or ("rebind requested" if force else "interface changed"))
            bound = None
        if bound is None and info is not None and address is not None:
            bound = self._bind(spec, info, address)
        if bound is not None and info is not None:
            bound.mtu = info.mtu
            self._set_local(link, info.is_usable, "carrier" if info.is_usable else "no carrier / admin down")
        else:
            why = why or self._refusal.get(link) or "cannot bind"
            if self._refusal.get(link) != why:
                log.warning("link %d not bound: %s", link, why)
            self._refusal[link] = why
            self._set_local(link, False, why)

    def _choose_binding(self, spec: NativeLink) -> tuple[InterfaceInfo | None, InterfaceAddress | None, str]:
        assert self._netlink is not None
        infos = self._netlink.interfaces()
        if spec.interface is not None:
            info = next((i for i in infos if i.name == spec.interface), None)
        else:
            holders = (i for i in infos for a in i.addresses if _same_ip(a.address, spec.local_address))
            info = next(holders, None)
        if info is None:
            return None, None, f"interface {spec.interface or 'with ' + str(spec.local_address)} not present"
        if info.is_loopback:
            return None, None, f"refusing to bind link {spec.link} to loopback device {info.name}"
        candidates = [a for a in info.addresses if not _is_loopback_text(a.address)]
        if spec.local_address is not None:
            candidates = [a for a in candidates if _same_ip(a.address, spec.local_address)]
        else:
            family = self._peer_family(spec.link)
            candidates = [a for a in candidates if family is None or a.family == family]
            candidates.sort(key=lambda a: (a.is_link_local, a.family != socket.AF_INET))
        if not candidates:
            return info, None, f"no usable address on {info.name}"
        return info, candidates[0], ""

    def _bind(self, spec: NativeLink, info: InterfaceInfo, address: InterfaceAddress) -> _Bound | None:
        family = address.family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, info.name.encode())
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_DO)
                sock.bind((address.address, spec.port))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_DO)
                scope = info.index if address.is_link_local else 0
                sock.bind((address.address, spec.port, 0, scope))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._refusal[spec.link] = f"bind {info.name} {address.address}:{spec.port}: {exc}"
            log.warning("link %d: %s", spec.link, self._refusal[spec.link])
            return None
        bound = _Bound(sock, info.index, info.name, address, info.mtu)
        self._bound[spec.link] = bound
        self._refusal.pop(spec.link, None)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, spec.link)
        log.info("link %d bound to %s [%s]:%d (mtu %d, payload %d)", spec.link, info.name,
                 address.address, spec.port, info.mtu, self._payload_budget(bound))
        return bound

    def _unbind(self, link: int, why: str) -> None:
        bound = self._bound.pop(link, None)
        if bound is None:
            return
        log.info("link %d unbound from %s %s: %s", link, bound.ifname, bound.address.address, why)
        try:
            asyncio.get_running_loop().remove_reader(bound.sock.fileno())
        except RuntimeError:  # no running loop during interpreter shutdown
            pass
        bound.sock.close()

    def _payload_budget(self, bound: _Bound) -> int:
        ip_header = IP_HEADER[socket.AddressFamily(bound.address.family)]
        return bound.mtu - ip_header - UDP_HEADER - self._seal_overhead - INNER_HEADER_BYTES

    # -- loops ----------------------------------------------------------------------------------
    async def _netlink_loop(self) -> None:
        assert self._netlink is not None
        async for ev in self._netlink.events():
            self._on_net_event(ev)

    def _on_net_event(self, ev: NetEvent) -> None:
        match ev:
            case LinkDown(ifindex=index) | LinkRemoved(ifindex=index):
                # Carrier loss: act before anything else so traffic moves at once (< 100 ms target).
                for link, b in list(self._bound.items()):
                    if b.ifindex == index:
                        self._set_local(link, False, f"{type(ev).__name__} on {b.ifname}")
            case LinkUp() | LinkRenamed() | AddressAdded() | AddressRemoved():
                pass
        for link in self._spec:
            self._reconcile(link)

    async def _udev_loop(self) -> None:
        async for ev in self._udev.events():
            log.debug("udev: %s", ev)
            for link in self._spec:
                self._reconcile(link)

    async def _heartbeat_loop(self) -> None:
        while True:
            now = Instant(self._clock())
            self._apply(self._table.tick(now))
            for peer, link in self._table.due_pings(now):
                self._ping_seq += 1
                body = heartbeat_body(now, self._ping_seq)
                self._send_control(peer, link, FrameType.PING, self._ping_seq, body)
                self._table.on_ping_sent(peer, link, now)
            self._check_trigger()
            self._flush_logs()
            deadline = self._table.next_deadline()
            delay = IDLE_WAKE_S if deadline is None else max(0.0, (deadline - self._clock()) / 1e9)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(delay, IDLE_WAKE_S))
            except TimeoutError:
                pass

    # -- helpers ----------------------------------------------------------------------------------
    def _set_peer_addrs(self, peers: Mapping[NodeId, Mapping[int, str]]) -> None:
        self._peer_addrs = {n: dict(a) for n, a in peers.items() if n != self.me}
        self._table.set_peers(tuple(self._peer_addrs), Instant(self._clock()))

    def _peer_family(self, link: int) -> int | None:
        for addrs in self._peer_addrs.values():
            if link in addrs:
                ip = ipaddress.ip_address(addrs[link].split("%")[0])
                return socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return None

    def _peer_sockaddr(self, peer: NodeId, link: int) -> tuple[Any, ...] | None:
        text = self._peer_addrs.get(peer, {}).get(link)
        bound = self._bound.get(link)
        if text is None or bound is None:
            return None
        ip = ipaddress.ip_address(text.split("%")[0])
        port = self._spec[link].port
        if ip.version == 4:
            return (str(ip), port)
        scope = bound.ifindex if ip.is_link_local else 0
        return (str(ip), port, 0, scope)

    def _read_trigger(self) -> float | None:
        path = self.config.rebind_trigger
        if path is None:
            return None
        try:
            return os.stat(path).st_mtime
        except OSError:
            return None

    def _check_trigger(self) -> None:
        mtime = self._read_trigger()
        if mtime is not None and mtime != self._trigger_mtime:
            log.info("rebind requested (%s touched)", self.config.rebind_trigger)
            self._trigger_mtime = mtime
            self.rebind()

    def _drop(self, reason: str, detail: str, loud: bool = False, link: int | None = None) -> None:
        """Count a drop (also under `link`); `loud` ones (authentication, unlisted sources) get a
        rate-limited log line."""
        self.stats.dropped[reason] += 1
        self.stats.count(link, f"dropped_{reason}")
        if not loud:
            return
        self._log_pending[reason] += 1
        last = self._log_at.get(reason)
        if last is None or time.monotonic() - last >= AUTH_LOG_INTERVAL_S:
            log.warning("dropped %d datagram(s): %s (%s; total %d)", self._log_pending[reason], reason,
                        detail, self.stats.dropped[reason])
            self._log_at[reason] = time.monotonic()
            self._log_pending[reason] = 0

    def _flush_logs(self) -> None:
        for reason, count in list(self._log_pending.items()):
            if count and time.monotonic() - self._log_at.get(reason, 0.0) >= AUTH_LOG_INTERVAL_S:
                total = self.stats.dropped[reason]
                log.warning("dropped %d more datagram(s): %s (total %d)", count, reason, total)
                self._log_at[reason] = time.monotonic()
                self._log_pending[reason] = 0


def _host(addr: Any) -> str:
    return str(addr[0]).split("%")[0] if isinstance(addr, tuple) and addr else "?"


def _same_ip(a: str, b: str | None) -> bool:
    if b is None:
        return False
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return False


def _is_loopback_text(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False
