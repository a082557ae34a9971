"""The Transport protocol: what the runtime needs from a way of moving totem frames between nodes.

Two implementations: `cmanlk.runtime.udpu.UdpuTransport` (corosync 3's udpu, wire-compatible, no
crypto) and `cmanlk.runtime.native.NativeTransport` (our multi-link encrypted transport, what
`transport: knet` selects). The runtime (`cmanlk.runtime.node`) only talks to this protocol, so a
transport is chosen once from the configuration and nothing else changes.

Contract shared by every transport:
- `start(deliver)` binds what can be bound and then calls `deliver(data, src, link)` for each
  datagram that passed the transport's own filters, on the event loop thread, without creating
  a task per datagram. `src` is the node id the source address (or the authenticated sender)
  maps to, None when the transport cannot tell. Datagrams from unlisted sources are dropped and
  counted by the transport, not delivered.
- `unicast`/`multicast` never block and never raise for network errors (a send error is a lost
  datagram, which totem recovers from); they are silently ignored before `start` and after `close`.
  `multicast(to, data)` sends to each node in `to`; `to` never contains the local node.
- `links()` is a snapshot for status output; `set_nodes()` replaces the nodelist at run time
  (SIGHUP) and takes effect for the next datagram sent or received.
- `close()` is idempotent; it releases every socket and task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cmanlk.config import NodeAddresses
from cmanlk.types import NodeId

Deliver = Callable[[bytes, NodeId | None, int], None]
"""deliver(data, source node id or None, link index): called once per accepted datagram."""


@dataclass(frozen=True, slots=True)
class PeerReachability:
    """Whether one peer is reachable over one link, and at which address."""

    node: NodeId
    address: str
    reachable: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """Status of one local link for `cmanlk-tool status`, D-Bus and status.json.

    `up` is the local end (socket bound). `peers` lists each configured peer on this link; a
    transport without liveness probes (udpu) reports `reachable` as "heard from recently".
    `counters` holds named counts (sent, received, dropped reasons) of this link.
    """

    index: int
    interface: str | None
    local_address: str | None
    up: bool
    peers: tuple[PeerReachability, ...] = ()
    reason: str = ""
    counters: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict of this status."""
        return {
            "index": self.index,
            "interface": self.interface,
            "local_address": self.local_address,
            "up": self.up,
            "reason": self.reason,
            "peers": [
                {"node": p.node, "address": p.address, "reachable": p.reachable, "reason": p.reason}
                for p in self.peers
            ],
            "counters": dict(self.counters),
        }


@runtime_checkable
class Transport(Protocol):
    """A way of moving totem frames between the nodes of the nodelist (see the module docstring)."""

    async def start(self, deliver: Deliver) -> None:
        """Bind sockets and begin delivering datagrams. Raises OSError when nothing can be bound."""
        ...

    def unicast(self, to: NodeId, data: bytes) -> None:
        """Send one datagram to `to` (best effort)."""
        ...

    def multicast(self, to: tuple[NodeId, ...], data: bytes) -> None:
        """Send `data` to each node in `to` (best effort)."""
        ...

    def links(self) -> list[LinkStatus]:
        """Return the status of every configured local link."""
        ...

    def set_nodes(self, nodes: Mapping[NodeId, NodeAddresses]) -> None:
        """Replace the nodelist (node id → per-link addresses); used on SIGHUP."""
        ...

    async def close(self) -> None:
        """Release every socket and task; idempotent."""
        ...
