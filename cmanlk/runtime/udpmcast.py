"""The `udp` transport: real IP multicast for MCASTs, unicast for the token, as corosync's totemudp.

What corosync 3 documents for `transport: udp`, and what this does:
- Multicast frames go to `mcastaddr:mcastport` (an IPv4 group such as 239.192.x.y, or an IPv6
  group such as ff15::...); every node joins the group on the link's interface and receives them
  there. One datagram reaches every node, instead of one unicast per member as in udpu.
- The token and commit token are unicast to the next node's ring0 address on `mcastport`.
- Datagrams leave from a socket bound to `ring0_addr:mcastport - 1` (corosync: "mcastport for mcast
  receives and mcastport - 1 for mcast sends"), with multicast loopback off, so a node does not
  hear itself, and TTL (hop limit) `ttl` (default 1: the group stays on the local segment).
- Sources outside the nodelist are dropped and counted, as in udpu; no crypto.

A group may be shared by several clusters on one segment only if their ports differ, as in
corosync. The receive socket is bound to the wildcard address and `mcastport`, so it gets the
group's datagrams and the token sent to our own address; IP_MULTICAST_ALL is off, so it does not
also get other groups this host joined.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import zlib
from collections.abc import Mapping

from cmanlk.config import LinkConfig
from cmanlk.runtime.datagrams import Deliver, Inbox, LinkStatus
from cmanlk.runtime.udpu import Endpoint, UdpuTransport, resolve
from cmanlk.types import NodeId

log = logging.getLogger("cmanlk.udp")

IP_MULTICAST_ALL = 49  # linux/in.h; not exported by Python's socket module
IPV6_MULTICAST_ALL = 29  # linux/in6.h


def default_group(cluster_name: str, ipv6: bool) -> str:
    """corosync's rule in spirit: a group derived from the cluster name, so clusters differ by default."""
    h = zlib.crc32(cluster_name.encode()) & 0xFFFF
    return f"ff15::{h:x}" if ipv6 else f"239.192.{h >> 8}.{h & 0xFF}"


class UdpMcastTransport(UdpuTransport):
    """IP multicast for MCASTs, unicast for tokens; see the module docstring. Implements `Transport`."""

    def __init__(
        self,
        me: NodeId,
        nodes: Mapping[NodeId, Mapping[int, str]],
        link: LinkConfig,
        *,
        cluster_name: str = "",
        block_unlisted_ips: bool = True,
        ip_version: str = "ipv6-4",
    ) -> None:
        """Raises OSError when our address or the group cannot be resolved, or they differ in family."""
        super().__init__(me, nodes, link, block_unlisted_ips=block_unlisted_ips, ip_version=ip_version)
        ipv6 = self.local.family == socket.AF_INET6
        text = link.mcastaddr or default_group(cluster_name, ipv6)
        self.group = resolve(text, link.port, ip_version)
        is_group = ipaddress.ip_address(text.partition("%")[0]).is_multicast
        if self.group.family != self.local.family or not is_group:
            raise OSError(errno.EINVAL, f"mcastaddr {text} is not a multicast group of ring0_addr's family")

    async def start(self, deliver: Deliver) -> None:
        """Join the group and bind the sockets. Raises OSError if that fails."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._inbox = Inbox(deliver)
        wildcard = ("::", self.link.port, 0, self._scope()) if self._ipv6 else ("0.0.0.0", self.link.port)
        self._recv = self._socket(wildcard)
        self._join_group(self._recv)
        send = self._socket((*self.local.sockaddr[:1], self.link.port - 1, *self.local.sockaddr[2:]))
        self._setup_sender(send)
        self._send_socks = {NodeId(0): send}
        self._loop.add_reader(self._recv.fileno(), self._readable)
        on = f" on {self.link.interface}" if self.link.interface else ""
        log.info("udp link 0: group %s port %d, sending from %s port %d%s, %d peers", self.group.text,
                 self.link.port, self.local.text, self.link.port - 1, on, len(self._peers))  # fmt: skip

    def unicast(self, to: NodeId, data: bytes) -> None:
        """The token: to the next node's ring0 address on mcastport."""
        peer = self._peers.get(to)
        sock = self._send_socks.get(NodeId(0))
        if peer is None or sock is None:
            self.counters["send_unknown_node"] += 1
            return
        self._sendto(sock, data, peer)

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        """One datagram to the group; every node that joined it hears it (`to` need not be listed)."""
        sock = self._send_socks.get(NodeId(0))
        if sock is None:
            self.counters["send_not_started"] += 1
            return
        self._sendto(sock, data, self.group)

    def set_nodes(self, nodes: Mapping[NodeId, Mapping[int, str]]) -> None:
        """Replace the nodelist (SIGHUP); the sockets stay as they are."""
        self._set_peers(nodes)

    def links(self) -> list[LinkStatus]:
        status = super().links()
        group = self.group.text
        out = []
        for s in status:
            where = f"{s.local_address} group {group}"
            out.append(LinkStatus(s.index, s.interface, where, s.up, s.peers, s.reason, s.counters))
        return out

    def _open_send_socket(self, node: NodeId) -> None:
        """No per-member sockets: one sender serves the group and the token."""

    @property
    def _ipv6(self) -> bool:
        return self.local.family == socket.AF_INET6

    def _scope(self) -> int:
        if self.link.interface:
            return socket.if_nametoindex(self.link.interface)
        scope = self.local.sockaddr[3] if self._ipv6 and len(self.local.sockaddr) > 3 else 0
        return scope if isinstance(scope, int) else 0

    def _join_group(self, sock: socket.socket) -> None:
        group = self.group.sockaddr[0]
        if self._ipv6:
            mreq = socket.inet_pton(socket.AF_INET6, str(group)) + struct.pack("@I", self._scope())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        else:
            mreq = socket.inet_aton(str(group)) + socket.inet_aton(str(self.local.sockaddr[0]))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)

    def _setup_sender(self, sock: socket.socket) -> None:
        if self._ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._scope())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.link.ttl)
        else:
            local = socket.inet_aton(str(self.local.sockaddr[0]))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.link.ttl)


__all__ = ["Endpoint", "UdpMcastTransport", "default_group"]
