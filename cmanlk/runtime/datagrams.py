"""The datagram layer every transport shares: what a transport hands the node, and how.

Imports go one way: `datagrams` (this module) ← `udpu` ← `udpmcast`, `datagrams` ← `native`, and
`transport` (the protocol and `build_transport`) imports them all; no transport imports
`transport`.

- `Deliver` is the node's callback for one accepted datagram: `deliver(data, src, link)`.
- A transport drains every readable datagram of a wake-up (up to its bound) into an `Inbox`
  and flushes it once: when the callback has a `batch` method (the node's does), the whole
  wake-up goes to the core as one batch and comes back as one batch of actions (one timer
  re-arm, one pass over the sends); a plain function gets one call per datagram, in order.
- `LinkStatus` and `PeerReachability` are what `links()` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cmanlk.types import NodeId

Deliver = Callable[[bytes, NodeId | None, int], None]
"""deliver(data, source node id or None, link index): called once per accepted datagram."""
Datagram = tuple[bytes, NodeId | None, int]
"""(data, source node id or None, link index): one accepted datagram of a batch."""


class Inbox:
    """The datagrams of one wake-up, handed on together by `flush` (module docstring)."""

    __slots__ = ("_batch", "_deliver", "items")

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._batch: Callable[[list[Datagram]], None] | None = getattr(deliver, "batch", None)
        self.items: list[Datagram] = []

    def add(self, data: bytes, src: NodeId | None, link: int) -> None:
        self.items.append((data, src, link))

    def flush(self) -> None:
        """Hand on what was added (nothing when empty); the inbox is empty afterwards."""
        items = self.items
        if not items:
            return
        self.items = []
        if self._batch is not None:
            self._batch(items)
        else:
            deliver = self._deliver
            for data, src, link in items:
                deliver(data, src, link)


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
