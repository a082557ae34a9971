"""The udpu transport, as corosync 3 does it (exec/totemudpu.c; corosync-wire.md §1).

- One receive socket bound to `ring0_addr:mcastport` (5405). Tokens and commit tokens
  (`unicast`) are sent *from* it, so they leave with source port 5405.
- "Multicast" is one unicast per member, each from a per-member socket bound to `ring0_addr:0`
  (an ephemeral source port), as totemudpu keeps one socket per member.
- A datagram is exactly one totem message: no header, no trailer, no crypto.
- Datagrams whose source IP is not a nodelist address are dropped and counted
  (`block_unlisted_ips`, on by default in corosync).
- IPv4 and IPv6 alike; an IPv6 link-local address carries its `%scope` (interface name or
  index). With an interface name configured (`totem.interface.name`) every socket is bound to
  that device (SO_BINDTODEVICE), so traffic cannot leave through another route.

Receiving runs on the loop's reader callback and drains up to RECV_BATCH datagrams per wake-up
with `recvfrom_into` into one buffer: no task and no large allocation per datagram; the
wake-up's datagrams reach the node as one batch (`cmanlk.runtime.datagrams.Inbox`). The source
address text of a listed node is mapped to its node id once (`_src_cache`), the clock is read and
the counters are updated once per wake-up, not per datagram.

Deviation: corosync's udpu also sends each MCAST to nodelist entries outside the ring at least
every 2 × merge ms; our Totem core sends MERGE_DETECTs to them instead, which serves the same
purpose (discovering new nodes and partitions), so this transport sends exactly what it is given.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmanlk.config import ADDRESS_FAMILIES, LinkConfig, NodeAddresses
from cmanlk.runtime.datagrams import Deliver, Inbox, LinkStatus, PeerReachability
from cmanlk.types import NodeId

log = logging.getLogger("cmanlk.udpu")

RECV_BATCH = 64
"""Datagrams read per wake-up, so a flood on this socket cannot starve the loop's timers."""
RECV_BUFFER_BYTES = 65_536
"""Largest UDP payload plus one: anything bigger is impossible, so nothing is ever truncated."""
SOCKET_RCVBUF_BYTES = 4 << 20
"""Kernel receive buffer asked for (SO_RCVBUFFORCE as root): bursts of MCASTs during recovery."""
SOCKET_SNDBUF_BYTES = 1 << 20
REACHABLE_WINDOW_NS = 10_000_000_000
"""A peer counts as reachable in `links()` if it is a member of the current ring (the node tells
us, `set_ring_members`) or a datagram came from it within this span (udpu has no probes; this is
for status output only). On an idle ring a node hears only its token predecessor, so "heard
recently" alone would show the other members as disconnected."""
DROP_LOG_INTERVAL_S = 10.0
"""At most one log line per drop reason per interval (a hostile sender costs a counter)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved address: family, socket address for sendto/bind, and the key used to match sources."""

    family: int
    sockaddr: tuple[object, ...]
    key: bytes
    text: str


def resolve(text: str, port: int, ip_version: str = "ipv6-4") -> Endpoint:
    """Resolve an address (IPv4, IPv6 with optional %scope, or a host name) for `port`.

    `ip_version` orders the families tried for a host name (corosync's totem.ip_version).
    Returns an Endpoint; raises OSError when it cannot be resolved.
    """
    host = text.partition("%")[0]
    try:
        ipaddress.ip_address(host)
        flags = int(socket.AI_NUMERICHOST)
    except ValueError:
        flags = 0
    order = ADDRESS_FAMILIES.get(ip_version, ADDRESS_FAMILIES["ipv6-4"])
    last: OSError | None = None
    for family in order:
        try:
            infos = socket.getaddrinfo(text, port, family, socket.SOCK_DGRAM, 0, flags)
        except OSError as exc:  # socket.gaierror is an OSError
            last = exc
            continue
        fam, _, _, _, sockaddr = infos[0]
        return Endpoint(fam, tuple(sockaddr), _key(fam, str(sockaddr[0])), text)
    raise last or OSError(errno.EADDRNOTAVAIL, f"cannot resolve {text!r}")


def _key(family: int, host: str) -> bytes:
    """The bytes a source address is matched on (the IP only; scope and port do not matter)."""
    return socket.inet_pton(family, host.partition("%")[0])


def is_local_address(endpoint: Endpoint) -> bool:
    """Is this address configured on this host (can a socket bind to it)?"""
    try:
        with socket.socket(endpoint.family, socket.SOCK_DGRAM) as sock:
            sock.bind((*endpoint.sockaddr[:1], 0, *endpoint.sockaddr[2:]))
    except OSError:
        return False
    return True


def find_local_node(
    nodes: Mapping[NodeId, Mapping[int, str]], link: int = 0, ip_version: str = "ipv6-4"
) -> NodeId | None:
    """Return the node whose address on `link` is one of this host's addresses, as corosync does.

    When several match (all nodes on one host, e.g. 127.0.0.x), None is returned: the caller
    must be told which (cmanlkd --nodeid). Unresolvable addresses are skipped.
    """
    found = local_candidates(nodes, link, ip_version)
    return found[0] if len(found) == 1 else None


def local_candidates(
    nodes: Mapping[NodeId, Mapping[int, str]], link: int = 0, ip_version: str = "ipv6-4"
) -> list[NodeId]:
    """Return, in id order, every node whose address on `link` can be bound on this host."""
    found: list[NodeId] = []
    for node, addrs in sorted(nodes.items()):
        text = addrs.get(link)
        if text is None:
            continue
        try:
            endpoint = resolve(text, 0, ip_version)
        except OSError:
            continue
        if is_local_address(endpoint):
            found.append(node)
    return found


class UdpuTransport:
    """corosync 3's udpu transport; see the module docstring. Implements `Transport`."""

    def __init__(
        self,
        me: NodeId,
        nodes: Mapping[NodeId, Mapping[int, str]],
        link: LinkConfig,
        *,
        block_unlisted_ips: bool = True,
        ip_version: str = "ipv6-4",
    ) -> None:
        """Resolve the nodelist. Raises OSError when this node's own address cannot be resolved."""
        if me not in nodes or 0 not in nodes[me]:
            raise OSError(errno.EADDRNOTAVAIL, f"node {me} has no ring0_addr in the nodelist")
        self.me = me
        self.link = link
        self.block_unlisted_ips = block_unlisted_ips
        self.ip_version = ip_version
        self.local = resolve(nodes[me][0], link.port, ip_version)
        self.counters: Counter[str] = Counter()
        self._peers: dict[NodeId, Endpoint] = {}
        self._by_key: dict[bytes, NodeId] = {}
        self._send_socks: dict[NodeId, socket.socket] = {}
        self._recv: socket.socket | None = None
        self._deliver: Deliver | None = None
        self._inbox: Inbox | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._last_heard: dict[NodeId, int] = {}
        self._ring_members: frozenset[NodeId] = frozenset()
        self._src_cache: dict[str, NodeId] = {}  # source IP text → node id, listed nodes only
        self._drop_logged: dict[str, float] = {}
        self._closed = False
        self._set_peers(nodes)

    # -- Transport ------------------------------------------------------------------------------
    async def start(self, deliver: Deliver) -> None:
        """Bind the receive socket and the per-member sockets. Raises OSError if the bind fails."""
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._inbox = Inbox(deliver)
        self._recv = self._socket(self.local.sockaddr)
        for node in self._peers:
            self._open_send_socket(node)
        self._loop.add_reader(self._recv.fileno(), self._readable)
        log.info(
            "udpu link 0 bound to %s port %d%s, %d peers",
            self.local.text,
            self.link.port,
            f" on {self.link.interface}" if self.link.interface else "",
            len(self._peers),
        )

    def unicast(self, to: NodeId, data: bytes) -> None:
        """Send from the receive socket (source port = mcastport), as corosync sends the token."""
        peer = self._peers.get(to)
        if peer is None or self._recv is None:
            self.counters["send_unknown_node"] += 1
            return
        self._sendto(self._recv, data, peer)

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        """Send one unicast per member, each from that member's own socket."""
        for node in to:
            peer = self._peers.get(node)
            sock = self._send_socks.get(node)
            if peer is None or sock is None:
                self.counters["send_unknown_node"] += 1
                continue
            self._sendto(sock, data, peer)

    def set_ring_members(self, members: tuple[NodeId, ...]) -> None:
        """The members of the ring this node is in now (the node calls this on every new ring)."""
        self._ring_members = frozenset(members)

    def links(self) -> list[LinkStatus]:
        """Return link 0's status; a peer is `reachable` if it is in our ring or was heard from
        in the last 10 s."""
        now = time.monotonic_ns()
        peers = tuple(
            PeerReachability(
                node,
                ep.text,
                node in self._ring_members
                or now - self._last_heard.get(node, -REACHABLE_WINDOW_NS - now) < REACHABLE_WINDOW_NS,
                "" if node in self._last_heard or node in self._ring_members else "never heard from",
            )
            for node, ep in sorted(self._peers.items())
        )
        return [
            LinkStatus(
                index=0,
                interface=self.link.interface,
                local_address=self.local.text,
                up=self._recv is not None,
                peers=peers,
                reason="" if self._recv is not None else ("closed" if self._closed else "not started"),
                counters=dict(self.counters),
            )
        ]

    def set_nodes(self, nodes: Mapping[NodeId, Mapping[int, str] | NodeAddresses]) -> None:
        """Replace the nodelist (SIGHUP). Our own address cannot change without a restart."""
        mine = nodes.get(self.me, {}).get(0)
        if mine is not None and mine != self.local.text:
            log.warning("ring0_addr of this node changed to %s: restart cmanlkd to use it", mine)
        old = set(self._peers)
        self._set_peers(nodes)
        for node in old - set(self._peers):
            sock = self._send_socks.pop(node, None)
            if sock is not None:
                sock.close()
            self._last_heard.pop(node, None)
        if self._recv is not None:
            for node in set(self._peers) - old:
                self._open_send_socket(node)
        log.info("udpu nodelist now %s", ", ".join(f"{n}={e.text}" for n, e in sorted(self._peers.items())))

    async def close(self) -> None:
        """Close every socket; idempotent."""
        self._closed = True
        if self._recv is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._recv.fileno())
            self._recv.close()
            self._recv = None
        for sock in self._send_socks.values():
            sock.close()
        self._send_socks.clear()

    # -- receive --------------------------------------------------------------------------------
    def _readable(self) -> None:
        sock, inbox = self._recv, self._inbox
        if sock is None or inbox is None:
            return
        add = inbox.add
        received = 0
        heard: set[NodeId] = set()
        cache, buffer, view = self._src_cache, self._buffer, self._view
        try:
            for _ in range(RECV_BATCH):
                try:
                    n, addr = sock.recvfrom_into(buffer)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    # ICMP errors surface here on Linux (ECONNREFUSED from an earlier send): not fatal.
                    self.counters[f"recv_error_{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
                    continue
                received += 1
                src = cache.get(addr[0])
                if src is None:
                    accepted, src = self._source(addr)
                    if not accepted:
                        continue
                if src is not None:
                    heard.add(src)
                add(bytes(view[:n]), src, 0)
        finally:
            self.counters["received"] += received
            inbox.flush()  # the whole wake-up at once (datagrams.Inbox)
            if heard:
                now = time.monotonic_ns()
                for node in heard:
                    self._last_heard[node] = now

    def _source(self, addr: tuple[Any, ...]) -> tuple[bool, NodeId | None]:
        """(accepted, node id) of a source address not in the cache; a dropped one is counted."""
        try:
            key = _key(self.local.family, addr[0])
        except OSError:
            self._drop("bad_source_address", addr)
            return False, None
        src = self._by_key.get(key)
        if src is None:
            if self.block_unlisted_ips:
                self._drop("unlisted_source", addr)
                return False, None
            return True, None
        self._src_cache[addr[0]] = src  # bounded: one entry per address text of a listed node
        return True, src

    def _drop(self, reason: str, addr: object) -> None:
        self.counters[f"dropped_{reason}"] += 1
        now = time.monotonic()
        if now - self._drop_logged.get(reason, -DROP_LOG_INTERVAL_S) >= DROP_LOG_INTERVAL_S:
            self._drop_logged[reason] = now
            log.warning(
                "udpu: dropping datagram from %s: %s (%d dropped so far)",
                addr,
                reason.replace("_", " "),
                self.counters[f"dropped_{reason}"],
            )

    # -- send -----------------------------------------------------------------------------------
    def _sendto(self, sock: socket.socket, data: bytes, peer: Endpoint) -> None:
        try:
            sock.sendto(data, peer.sockaddr)
        except (BlockingIOError, InterruptedError):
            self.counters["send_would_block"] += 1  # a full socket buffer is a lost datagram
        except OSError as exc:
            self.counters[f"send_error_{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
        else:
            self.counters["sent"] += 1

    def _open_send_socket(self, node: NodeId) -> None:
        if node in self._send_socks:
            return
        try:
            self._send_socks[node] = self._socket((*self.local.sockaddr[:1], 0, *self.local.sockaddr[2:]))
        except OSError as exc:
            log.error("udpu: cannot open the socket for node %d: %s", node, exc)

    def _socket(self, bind_to: tuple[object, ...]) -> socket.socket:
        sock = socket.socket(self.local.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.link.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.link.interface.encode())
            _set_buffer(sock, socket.SO_RCVBUF, 33, SOCKET_RCVBUF_BYTES)  # 33 = SO_RCVBUFFORCE
            _set_buffer(sock, socket.SO_SNDBUF, 32, SOCKET_SNDBUF_BYTES)  # 32 = SO_SNDBUFFORCE
            sock.bind(bind_to)
        except OSError:
            sock.close()
            raise
        return sock

    def _set_peers(self, nodes: Mapping[NodeId, Mapping[int, str]]) -> None:
        peers: dict[NodeId, Endpoint] = {}
        for node, addrs in nodes.items():
            text = addrs.get(0)
            if text is None:
                continue
            try:
                peers[node] = resolve(text, self.link.port, self.ip_version)
            except OSError as exc:
                log.error("udpu: cannot resolve node %d address %s: %s; node ignored", node, text, exc)
                continue
            if peers[node].family != self.local.family:
                log.error("udpu: node %d address %s is not of our address family; ignored", node, text)
                del peers[node]
        self._by_key = {ep.key: node for node, ep in peers.items()}
        self._src_cache = {}
        peers.pop(self.me, None)
        self._peers = peers


def _set_buffer(sock: socket.socket, option: int, force_option: int, size: int) -> None:
    """Ask for a kernel buffer of `size`; as root beyond rmem_max/wmem_max (the *FORCE options)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
