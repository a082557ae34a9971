"""Extended virtual synchrony (EVS) invariants, checked over simulated histories.

The properties are those of Moser, Amir, Melliar-Smith and Agarwal, "Extended
Virtual Synchrony" (ICDCS 1994, §3), which Totem SRP (Amir et al., TOCS 1995,
§4) provides and corosync's totemsrp implements. Each incarnation of a node (from
a boot to a crash or leave) is one EVS *process*. A *configuration* is what a
node installs with a regular `DeliverConfiguration`; its *epoch* is everything
the node delivers from that installation up to the next regular one, including
the deliveries after the transitional configuration that precedes the next one.

Checked, each under the name used in reports:

- ``config-agreement``   same ring id ⇒ same member list, on every node (EVS 1.1).
- ``config-shape``       members sorted and unique, the installer is a member; a
                         transitional configuration precedes every regular one
                         after the first of an incarnation, and contains the node.
- ``ring-monotonic``     a node's regular ring seqs strictly grow, across restarts
                         too (the persisted ring seq, corosync's ringid_<nodeid>).
- ``transitional``       the transitional configuration before C' at p is exactly
                         the members of C' that came from p's previous regular
                         configuration C: ⊆ C ∩ C', contains every node seen to
                         install C' after C, and nobody seen to install C' after
                         another configuration (Totem §4.4: trans = new ∩ old ring).
- ``delivery-config``    a message is delivered inside a configuration that
                         contains its sender, tagged with that configuration's
                         ring (old-ring messages delivered in the transitional
                         part carry the old ring) (EVS 1.4, "delivery in a
                         configuration that includes the sender").
- ``spurious``           only messages some client sent are delivered, with the
                         right sender, and not before they were sent (EVS 2.1).
- ``duplicate``          no incarnation delivers a message twice (EVS 2.2).
- ``total-order``        the union of all delivery orders is acyclic, so one total
                         order explains every node (EVS 5.1); reported as the two
                         nodes that disagree on a pair of messages.
- ``agreed``             in the regular part of a configuration, every member delivers
                         a prefix of one sequence: no member skips a message that
                         another delivered before a later one (EVS 5.2; gaps are
                         allowed only after the transitional configuration).
- ``fifo``               a sender's messages are delivered in the order it sent them
                         (per send queue: what a node queues while a new ring's sync
                         runs goes ahead of what it queued before, as in corosync).
- ``virtual-synchrony``  two processes that install the same configuration C' right
                         after the same C delivered the same set of messages in C
                         (EVS 3.2, "failure atomicity").
- ``safe``               a safe message delivered in regular configuration C is
                         delivered by every member of C that does not fail first
                         (EVS 6.1: it was delivered only once all members had it).
- ``self-delivery``      a process that survives a settled run delivers every
                         message it sent (EVS 2.3).
- ``liveness``           after the last fault, every live node installs the same
                         regular configuration, made of exactly the live nodes,
                         within the bound, and every message sent after that is
                         delivered by every live node.

"Settled" properties (self-delivery at the end, safe for a member still in C at
the end) apply only when the caller says the run ended after a quiet period long
enough for the ring to stabilise and drain (`settled=True`).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cmanlk.sim.history import (
    Booted,
    Crashed,
    Delivered,
    Histories,
    Installed,
    Left,
    Record,
    Sent,
    StateEntered,
    describe,
    label,
    members_str,
)
from cmanlk.totem.actions import ConfigKind
from cmanlk.totem.events import Guarantee
from cmanlk.types import Duration, Instant, NodeId, RingId

MAX_REPORTS_PER_PROPERTY = 5  # a broken run repeats the same mistake; the first few are what helps.
EXCERPT_RADIUS = 4  # records shown on each side of the offending one.


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which property, at which node, about what, with a history excerpt."""

    prop: str
    node: NodeId | None
    detail: str
    config: str = ""
    excerpt: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"node {self.node}" if self.node is not None else "cluster"
        conf = f" [config {self.config}]" if self.config else ""
        lines = [f"{self.prop}: {where}{conf}: {self.detail}"]
        lines.extend("    | " + e for e in self.excerpt)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LivenessSpec:
    """What a settled run promises after its last fault.

    `quiet_from`: no fault after it (network whole, no loss, no crash/restart);
    `bound`: every live node has installed the final configuration by quiet_from + bound;
    `traffic_until`: messages sent after it are not required to be delivered (the run ends soon after).
    """

    quiet_from: Instant
    bound: Duration
    traffic_until: Instant


@dataclass(slots=True)
class _Epoch:
    """One regular configuration as lived by one incarnation."""

    ring: RingId
    members: tuple[NodeId, ...]
    t: Instant
    index: int  # record index of the installation
    prev: RingId | None
    trans: tuple[NodeId, ...] | None
    delivered: list[bytes] = field(default_factory=list)
    closed: bool = False  # a later regular configuration was installed by this incarnation


@dataclass(slots=True)
class _Inc:
    """One incarnation (EVS process) of a node."""

    node: NodeId
    number: int
    records: list[Record]
    ended: bool = False  # crashed or left before the end of the run
    epochs: list[_Epoch] = field(default_factory=list)
    order: list[bytes] = field(default_factory=list)  # deliveries in order
    where: dict[bytes, tuple[int, _Epoch]] = field(default_factory=dict)  # payload -> (record index, epoch)
    in_trans: set[bytes] = field(default_factory=set)  # delivered in a transitional configuration
    sent: list[tuple[bytes, int, Sent]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.node}" if self.number == 0 else f"{self.node}#{self.number}"


class _Report:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._count: dict[str, int] = defaultdict(int)

    def add(
        self,
        prop: str,
        inc: _Inc | None,
        detail: str,
        config: str = "",
        at: int | None = None,
    ) -> None:
        self._count[prop] += 1
        if self._count[prop] > MAX_REPORTS_PER_PROPERTY:
            return
        excerpt: tuple[str, ...] = ()
        if inc is not None and at is not None:
            excerpt = _excerpt(inc, at)
        node = inc.node if inc is not None else None
        who = f"(incarnation {inc.name}) " if inc is not None and inc.number else ""
        self.violations.append(Violation(prop, node, who + detail, config, excerpt))

    def summary(self) -> list[Violation]:
        extra = [
            Violation(prop, None, f"{n - MAX_REPORTS_PER_PROPERTY} more violations not shown")
            for prop, n in sorted(self._count.items())
            if n > MAX_REPORTS_PER_PROPERTY
        ]
        return self.violations + extra


def check(
    histories: Histories,
    *,
    settled: bool = False,
    liveness: LivenessSpec | None = None,
) -> list[Violation]:
    """Check every EVS invariant over `histories`; return the violations found (empty: all hold).

    `settled` says the run ended after a quiet period long enough to stabilise and
    drain; `liveness` (which implies settled) adds the liveness checks. Never raises
    on a malformed history: oddities are reported as violations.
    """
    report = _Report()
    incs = _split(histories, report)
    sent_by = _index_sends(incs, report)
    _check_configs(incs, report)
    _check_transitional(incs, report)
    _check_deliveries(incs, sent_by, report)
    _check_total_order(incs, report)
    _check_virtual_synchrony(incs, report)
    _check_agreed_prefix(incs, report)
    _check_safe(incs, settled or liveness is not None, report)
    if settled or liveness is not None:
        _check_self_delivery(incs, liveness, report)
    if liveness is not None:
        _check_liveness(incs, liveness, report)
    return report.summary()


# --- parsing ------------------------------------------------------------------------------------------


def _split(histories: Histories, report: _Report) -> list[_Inc]:
    """Cut each node's history into incarnations and epochs."""
    incs: list[_Inc] = []
    for node in sorted(histories):
        mine: list[_Inc] = []
        for rec in histories[node]:
            if isinstance(rec, Booted) or not mine or mine[-1].ended:
                mine.append(_Inc(node, len(mine), []))
            mine[-1].records.append(rec)
            if isinstance(rec, Crashed | Left):
                mine[-1].ended = True
        for inc in mine:
            _parse(inc, report)
        incs.extend(mine)
    return incs


def _parse(inc: _Inc, report: _Report) -> None:
    epoch: _Epoch | None = None
    trans: tuple[NodeId, ...] | None = None
    for i, rec in enumerate(inc.records):
        match rec:
            case Installed(kind=ConfigKind.TRANSITIONAL):
                if inc.node not in rec.members:
                    report.add("config-shape", inc, "transitional configuration without me", "", i)
                if trans is not None:
                    report.add("config-shape", inc, "two transitional configurations in a row", "", i)
                trans = rec.members
            case Installed():
                _shape(inc, rec, i, report)
                if epoch is not None:
                    epoch.closed = True
                    if trans is None:
                        report.add(
                            "config-shape",
                            inc,
                            f"regular configuration {rec.ring_id} without a transitional one before it",
                            str(rec.ring_id),
                            i,
                        )
                prev = epoch.ring if epoch is not None else None
                epoch = _Epoch(rec.ring_id, rec.members, rec.t, i, prev, trans if prev is not None else None)
                inc.epochs.append(epoch)
                trans = None
            case Delivered():
                _note_delivery(inc, epoch, trans is not None, rec, i, report)
            case Sent():
                inc.sent.append((rec.payload, i, rec))


def _shape(inc: _Inc, rec: Installed, i: int, report: _Report) -> None:
    ring = str(rec.ring_id)
    if list(rec.members) != sorted(set(rec.members)):
        report.add("config-shape", inc, f"members {members_str(rec.members)} not sorted/unique", ring, i)
    if inc.node not in rec.members:
        report.add("config-shape", inc, f"installed {members_str(rec.members)} without me", ring, i)


def _note_delivery(
    inc: _Inc, epoch: _Epoch | None, in_trans: bool, rec: Delivered, i: int, report: _Report
) -> None:
    name = label(rec.payload)
    if epoch is None:
        report.add("delivery-config", inc, f"delivered {name} before any configuration", "", i)
        return
    ring = str(epoch.ring)
    if rec.sender not in epoch.members:
        report.add(
            "delivery-config",
            inc,
            f"delivered {name} from {rec.sender}, not a member of {members_str(epoch.members)}",
            ring,
            i,
        )
    if rec.ring_id != epoch.ring:
        phase = "transitional part of " if in_trans else ""
        detail = f"delivered {name} tagged ring {rec.ring_id} in {phase}ring {ring}"
        report.add("delivery-config", inc, detail, ring, i)
    if rec.payload in inc.where:
        first = inc.where[rec.payload][0]
        report.add("duplicate", inc, f"delivered {name} twice (first at record {first})", ring, i)
        return
    inc.where[rec.payload] = (i, epoch)
    if in_trans:
        inc.in_trans.add(rec.payload)
    inc.order.append(rec.payload)
    epoch.delivered.append(rec.payload)


def _excerpt(inc: _Inc, at: int) -> tuple[str, ...]:
    lo = max(0, at - EXCERPT_RADIUS)
    hi = min(len(inc.records), at + EXCERPT_RADIUS + 1)
    lines = []
    for j in range(lo, hi):
        mark = ">>" if j == at else "  "
        lines.append(f"{mark} {inc.name}: {describe(inc.records[j])}")
    return tuple(lines)


def _index_sends(incs: list[_Inc], report: _Report) -> dict[bytes, tuple[_Inc, int, Sent]]:
    """Map each sent payload to (sending incarnation, its position in that sender's sends, record)."""
    sent_by: dict[bytes, tuple[_Inc, int, Sent]] = {}
    for inc in incs:
        for k, (payload, i, rec) in enumerate(inc.sent):
            if payload in sent_by:
                report.add("spurious", inc, f"payload {label(payload)} sent twice: not identifiable", "", i)
            sent_by[payload] = (inc, k, rec)
    return sent_by


# --- configurations -----------------------------------------------------------------------------------


def _check_configs(incs: list[_Inc], report: _Report) -> None:
    seen: dict[RingId, tuple[tuple[NodeId, ...], _Inc]] = {}
    last_seq: dict[NodeId, tuple[int, RingId]] = {}
    for inc in incs:
        for ep in inc.epochs:
            other = seen.get(ep.ring)
            if other is None:
                seen[ep.ring] = (ep.members, inc)
            elif other[0] != ep.members:
                report.add(
                    "config-agreement",
                    inc,
                    f"ring {ep.ring} has members {members_str(ep.members)} here but "
                    f"{members_str(other[0])} at node {other[1].name}",
                    str(ep.ring),
                    ep.index,
                )
            before = last_seq.get(inc.node)
            if before is not None and ep.ring.seq <= before[0]:
                report.add(
                    "ring-monotonic",
                    inc,
                    f"ring {ep.ring} installed after ring {before[1]}: seq did not grow",
                    str(ep.ring),
                    ep.index,
                )
            last_seq[inc.node] = (ep.ring.seq, ep.ring)


def _check_transitional(incs: list[_Inc], report: _Report) -> None:
    by_ring: dict[RingId, list[tuple[_Inc, _Epoch]]] = defaultdict(list)
    members_of: dict[RingId, tuple[NodeId, ...]] = {}
    for inc in incs:
        for ep in inc.epochs:
            by_ring[ep.ring].append((inc, ep))
            members_of.setdefault(ep.ring, ep.members)
    for ring, entries in by_ring.items():
        for inc, ep in entries:
            if ep.prev is None or ep.trans is None:
                continue
            old = members_of.get(ep.prev, ())
            trans = set(ep.trans)
            stray = trans - (set(old) & set(ep.members))
            if stray:
                report.add(
                    "transitional",
                    inc,
                    f"transitional {members_str(ep.trans)} has {sorted(stray)}, not in both "
                    f"{ep.prev} {members_str(old)} and {ring} {members_str(ep.members)}",
                    str(ring),
                    ep.index,
                )
            for q_inc, q_ep in entries:
                same_old = q_ep.prev == ep.prev
                if same_old and q_inc.node not in trans:
                    report.add(
                        "transitional",
                        inc,
                        f"node {q_inc.name} came from {ep.prev} into {ring} too but is missing from "
                        f"transitional {members_str(ep.trans)}",
                        str(ring),
                        ep.index,
                    )
                elif not same_old and q_inc.node in trans:
                    report.add(
                        "transitional",
                        inc,
                        f"node {q_inc.name} is in transitional {members_str(ep.trans)} but came into {ring} "
                        f"from {q_ep.prev}, not from {ep.prev}",
                        str(ring),
                        ep.index,
                    )


# --- deliveries ---------------------------------------------------------------------------------------


def _check_deliveries(
    incs: list[_Inc], sent_by: dict[bytes, tuple[_Inc, int, Sent]], report: _Report
) -> None:
    for inc in incs:
        last_from: dict[tuple[int, int], tuple[int, bytes]] = {}  # (incarnation, queue) -> (index, payload)
        for payload in inc.order:
            i, ep = inc.where[payload]
            rec = inc.records[i]
            assert isinstance(rec, Delivered)
            origin = sent_by.get(payload)
            name = label(payload)
            if origin is None:
                report.add("spurious", inc, f"delivered {name}, which no client sent", str(ep.ring), i)
                continue
            s_inc, k, s_rec = origin
            if s_inc.node != rec.sender:
                report.add(
                    "spurious",
                    inc,
                    f"delivered {name} as from {rec.sender}, but node {s_inc.name} sent it",
                    str(ep.ring),
                    i,
                )
            if rec.t < s_rec.t:
                report.add("spurious", inc, f"delivered {name} before it was sent", str(ep.ring), i)
            key = (id(s_inc), s_rec.queue)  # FIFO holds per send queue (totemsrp's two)
            prev = last_from.get(key)
            if prev is not None and prev[0] > k:
                report.add(
                    "fifo",
                    inc,
                    f"delivered {name} after {label(prev[1])}, but node {s_inc.name} sent it first",
                    str(ep.ring),
                    i,
                )
            last_from[key] = (k, payload)


def _check_total_order(incs: list[_Inc], report: _Report) -> None:
    """Kahn's algorithm over 'delivered right before' edges; on a cycle, find a disagreeing pair."""
    succ: dict[bytes, set[bytes]] = defaultdict(set)
    indeg: dict[bytes, int] = defaultdict(int)
    for inc in incs:
        for a, b in zip(inc.order, inc.order[1:], strict=False):
            if b not in succ[a]:
                succ[a].add(b)
                indeg[b] += 1
            indeg.setdefault(a, 0)
    queue = deque(m for m, d in indeg.items() if d == 0)
    done = 0
    while queue:
        m = queue.popleft()
        done += 1
        for n in succ.get(m, ()):
            indeg[n] -= 1
            if indeg[n] == 0:
                queue.append(n)
    if done == len(indeg):
        return
    if _report_pairwise_order(incs, report):
        return
    cyclic = sorted(label(m) for m, d in indeg.items() if d > 0)[:8]
    report.add("total-order", None, f"no total order explains all nodes; messages on a cycle: {cyclic}")


def _report_pairwise_order(incs: list[_Inc], report: _Report) -> bool:
    found = False
    for x, a in enumerate(incs):
        for b in incs[x + 1 :]:
            pos_b = {m: j for j, m in enumerate(b.order)}
            last_m: bytes | None = None
            last_j = -1
            for m in a.order:
                j = pos_b.get(m)
                if j is None:
                    continue
                if j < last_j and last_m is not None:
                    i, ep = a.where[m]
                    report.add(
                        "total-order",
                        a,
                        f"delivered {label(last_m)} before {label(m)}, node {b.name} delivered them "
                        "the other way round",
                        str(ep.ring),
                        i,
                    )
                    found = True
                    break
                last_m, last_j = m, j
    return found


def _check_virtual_synchrony(incs: list[_Inc], report: _Report) -> None:
    moves: dict[tuple[RingId, RingId], list[tuple[_Inc, _Epoch, set[bytes]]]] = defaultdict(list)
    for inc in incs:
        for old, new in zip(inc.epochs, inc.epochs[1:], strict=False):
            moves[(old.ring, new.ring)].append((inc, new, set(old.delivered)))
    for (old_ring, new_ring), entries in moves.items():
        first_inc, _first_ep, first_set = entries[0]
        for inc, ep, got in entries[1:]:
            if got == first_set:
                continue
            only_here = sorted(label(m) for m in got - first_set)[:5]
            only_there = sorted(label(m) for m in first_set - got)[:5]
            report.add(
                "virtual-synchrony",
                inc,
                f"moved {old_ring} -> {new_ring} like node {first_inc.name}, but delivered in {old_ring} "
                f"{only_here or 'nothing more'} that it did not, and missed {only_there or 'nothing'}",
                str(old_ring),
                ep.index,
            )


def _check_agreed_prefix(incs: list[_Inc], report: _Report) -> None:
    longest: dict[RingId, tuple[_Inc, list[bytes]]] = {}
    for inc in incs:
        for ep in inc.epochs:
            regular = [m for m in ep.delivered if m not in inc.in_trans]
            best = longest.get(ep.ring)
            if best is None:
                longest[ep.ring] = (inc, regular)
                continue
            other_inc, other = best
            short, long_ = (regular, other) if len(regular) <= len(other) else (other, regular)
            for k, m in enumerate(short):
                if long_[k] != m:
                    here = m if short is regular else long_[k]
                    there = long_[k] if short is regular else m
                    report.add(
                        "agreed",
                        inc,
                        f"delivered {label(here)} as message #{k + 1} of {ep.ring}, node {other_inc.name} "
                        f"delivered {label(there)} there (regular part: no gaps allowed)",
                        str(ep.ring),
                        inc.where[here][0],
                    )
                    break
            if len(regular) > len(other):
                longest[ep.ring] = (inc, regular)


def _check_safe(incs: list[_Inc], settled: bool, report: _Report) -> None:
    epochs_of: dict[tuple[NodeId, RingId], list[tuple[_Inc, _Epoch]]] = defaultdict(list)
    for inc in incs:
        for ep in inc.epochs:
            epochs_of[(inc.node, ep.ring)].append((inc, ep))
    for inc in incs:
        for payload in inc.order:
            i, ep = inc.where[payload]
            rec = inc.records[i]
            assert isinstance(rec, Delivered)
            if rec.guarantee != Guarantee.SAFE or payload in inc.in_trans:
                continue
            for q in ep.members:
                if q == inc.node:
                    continue
                for q_inc, q_ep in epochs_of.get((q, ep.ring), ()):
                    obliged = q_ep.closed or (settled and not q_inc.ended)
                    if obliged and q_inc.where.get(payload, (0, None))[1] is not q_ep:
                        report.add(
                            "safe",
                            inc,
                            f"delivered safe {label(payload)} in {ep.ring}, but member {q_inc.name} "
                            "never delivered it there",
                            str(ep.ring),
                            i,
                        )


def _check_self_delivery(incs: list[_Inc], liveness: LivenessSpec | None, report: _Report) -> None:
    for inc in incs:
        if inc.ended:
            continue
        for payload, i, rec in inc.sent:
            if liveness is not None and rec.t > liveness.traffic_until:
                continue
            if payload not in inc.where:
                report.add("self-delivery", inc, f"sent {label(payload)} and never delivered it", "", i)


def _check_liveness(incs: list[_Inc], spec: LivenessSpec, report: _Report) -> None:
    live = [inc for inc in incs if not inc.ended]
    if not live:
        return
    expected = tuple(sorted(inc.node for inc in live))
    deadline = spec.quiet_from + spec.bound
    finals: list[_Epoch] = []
    for inc in live:
        if not inc.epochs:
            report.add("liveness", inc, "never installed a configuration", "", len(inc.records) - 1)
            continue
        ep = inc.epochs[-1]
        finals.append(ep)
        if ep.members != expected:
            report.add(
                "liveness",
                inc,
                f"ends in {ep.ring} {members_str(ep.members)}, "
                f"not with every live node {members_str(expected)}",
                str(ep.ring),
                ep.index,
            )
        elif ep.t > deadline:
            report.add(
                "liveness",
                inc,
                f"installed its final configuration {ep.ring} at {ep.t / 1e6:.1f} ms, "
                f"{(ep.t - spec.quiet_from) / 1e6:.1f} ms after the last fault "
                f"(bound {spec.bound / 1e6:.1f} ms)",
                str(ep.ring),
                ep.index,
            )
    rings = {ep.ring for ep in finals}
    if len(rings) > 1:
        report.add("liveness", None, f"live nodes end in different rings: {sorted(str(r) for r in rings)}")
        return
    if not finals or len(finals) != len(live):
        return
    stable_from = max(ep.t for ep in finals)
    _check_final_deliveries(live, stable_from, spec, report)


def _check_final_deliveries(live: list[_Inc], stable_from: int, spec: LivenessSpec, report: _Report) -> None:
    required: dict[bytes, str] = {}
    for inc in live:
        for payload, _i, rec in inc.sent:
            if stable_from <= rec.t <= spec.traffic_until:
                required[payload] = f"sent by {inc.name} after the final configuration"
        for payload in inc.epochs[-1].delivered:
            required.setdefault(payload, f"delivered by {inc.name} in the final configuration")
    for inc in live:
        missing = [m for m in required if m not in inc.where]
        if missing:
            m = missing[0]
            report.add(
                "liveness",
                inc,
                f"never delivered {label(m)} ({required[m]}); {len(missing)} missing in all",
                str(inc.epochs[-1].ring),
                len(inc.records) - 1,
            )


def format_violations(violations: Iterable[Violation]) -> str:
    """Return the violations as text, one block each."""
    return "\n".join(str(v) for v in violations)


__all__ = ["LivenessSpec", "StateEntered", "Violation", "check", "format_violations"]
