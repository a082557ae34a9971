"""A seeded, lossy, reordering network between simulated nodes.

Each datagram (one `Unicast`, or one destination of a `Multicast`, as udpu sends
them) independently may be lost, duplicated, delayed and reordered (without the
reorder fault, a link keeps FIFO order like a switched LAN); all draws
come from one `random.Random`, so a seed fixes the whole run. Delays are bounded:
every copy arrives within `max_delay` of being sent, which the liveness bound
relies on. A partition is a set of groups; nodes talk only inside their group,
checked when a datagram leaves and again when it arrives (a cut also drops what
is in flight, like pulling a cable).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from cmanlk.types import Duration, NodeId, ms

# One hop on a loaded LAN or between VMs, send to receive including the receiver's wakeup.
# The floor matters for the simulator's speed: a busy ring passes the token at network
# speed, so each virtual second costs (1 / hop delay) token visits.
DEFAULT_DELAY_MIN = ms(0.2)
DEFAULT_DELAY_MAX = ms(1.0)
DEFAULT_REORDER_EXTRA = ms(3)  # a reordered datagram is held back by up to this much more.


@dataclass(slots=True)
class LinkModel:
    """The current fault settings of the network (changed by the fault program)."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay_min: Duration = DEFAULT_DELAY_MIN
    delay_max: Duration = DEFAULT_DELAY_MAX
    reorder_extra: Duration = DEFAULT_REORDER_EXTRA

    @property
    def max_delay(self) -> Duration:
        """Upper bound of one datagram's transit time under these settings."""
        return Duration(self.delay_max + self.reorder_extra)


@dataclass(slots=True)
class NetStats:
    datagrams: int = 0
    lost: int = 0
    duplicated: int = 0
    cut: int = 0
    bytes: int = 0


@dataclass(slots=True)
class Network:
    """Decides the fate of each datagram: arrival instants (0, 1 or 2 copies) or a cut."""

    rng: random.Random
    model: LinkModel = field(default_factory=LinkModel)
    stats: NetStats = field(default_factory=NetStats)
    _group: dict[NodeId, int] | None = None
    _last: dict[tuple[NodeId, NodeId], int] = field(default_factory=dict)  # latest arrival per link

    def partition(self, groups: Iterable[Iterable[NodeId]]) -> None:
        """Split the network: nodes talk only within their group; unlisted nodes are alone."""
        table: dict[NodeId, int] = {}
        for k, group in enumerate(groups):
            for node in group:
                table[node] = k
        self._group = table

    def heal(self) -> None:
        """Join all partitions again."""
        self._group = None

    @property
    def partitioned(self) -> bool:
        return self._group is not None

    def connected(self, a: NodeId, b: NodeId) -> bool:
        """Can `a` and `b` exchange datagrams right now?"""
        g = self._group
        if g is None or a == b:
            return True
        ga = g.get(a)
        return ga is not None and ga == g.get(b)

    def groups(self, nodes: Iterable[NodeId]) -> list[tuple[NodeId, ...]]:
        """Return the connected groups among `nodes`, each sorted, ordered by first member."""
        out: list[list[NodeId]] = []
        for n in sorted(nodes):
            for grp in out:
                if self.connected(grp[0], n):
                    grp.append(n)
                    break
            else:
                out.append([n])
        return [tuple(g) for g in out]

    def transit(self, src: NodeId, dst: NodeId, now: int, size: int) -> tuple[int, ...]:
        """Return the arrival instants of a datagram sent now (empty: lost or cut)."""
        st = self.stats
        st.datagrams += 1
        st.bytes += size
        if not self.connected(src, dst):
            st.cut += 1
            return ()
        m = self.model
        rnd = self.rng.random
        if m.loss and rnd() < m.loss:
            st.lost += 1
            return ()
        first = self._arrival(m, src, dst, now)
        if m.dup and rnd() < m.dup:
            st.duplicated += 1
            return (first, self._arrival(m, src, dst, now))
        return (first,)

    def _arrival(self, m: LinkModel, src: NodeId, dst: NodeId, now: int) -> int:
        """One copy's arrival: FIFO per link (a LAN keeps order) unless this copy is reordered."""
        rnd = self.rng.random
        t = now + m.delay_min + int(rnd() * (m.delay_max - m.delay_min))
        if m.reorder and rnd() < m.reorder:
            return t + int(rnd() * m.reorder_extra)  # overtaken by later datagrams on the link
        link = (src, dst)
        t = max(t, self._last.get(link, 0))
        self._last[link] = t
        return t
