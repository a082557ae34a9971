"""The service invariants of the stack mode, checked over the histories of a run.

Beside the EVS properties of Totem (cmanlk/sim/invariants.py), over the records of
cmanlk/sim/stackrecords.py, each under the name used in reports:

quorum
- ``quorum-split``     at no virtual instant are two live nodes quorate with disjoint
                       memberships, unless one of them had its expected votes lowered below the
                       votes of both memberships together (an operator's `-e`, last_man_standing:
                       what votequorum(5) warns about) or two_node (each survivor keeps quorum and
                       the fence race decides);
- ``quorum-model``     every quorum notification matches the independent model of votequorum
                       (cmanlk/sim/vqmodel.py) for the membership and votes it reports;
sync
- ``sync-order``       a service activates a ring only after every member of that ring finished
                       its sync_process for it (the barrier), and no client sees a ring (cpg's
                       totem confchg, the quorum notification, the published membership) before
                       the services concerned activated it on that node;
- ``sync-abort``       an aborted sync leaves nothing behind: cpg's process list at the abort is
                       the one at its init, and no client ever sees the aborted ring;
cpg (per group, as each local client connection sees it)
- ``cpg-view``         each view follows from the previous one by its joined and left lists; a
                       client's own process is in every view from its join to its leave;
- ``cpg-sender``       no message is delivered under a view that does not contain its sender;
- ``cpg-fifo``         a sender's messages reach each client in the order it sent them;
- ``cpg-order``        two clients deliver the messages they both deliver in the same order;
- ``cpg-vs``           two clients that see the same view followed by the same next view deliver
                       the same messages between them (virtual synchrony);
- ``cpg-converge``     after a settled run every client's view of a group is the same and is
                       exactly the live processes that joined it;
DLM control
- ``dlm-restart``      no lockspace is started (control 1) while its node is inquorate or while a
                       member removed since the last start failed and was not switched off since;
- ``dlm-fence``        the fence agent runs only from a quorate node, never against a member of
                       its membership, and never against a member of a live quorate partition
                       (unless the two partitions are a split quorum-split accepts: two_node, or
                       expected votes below both memberships' votes);
- ``dlm-converge``     after a settled run, every lockspace on every live node is started with
                       exactly the live nodes holding it (when the final partition is quorate).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cmanlk.errors import ConfigError
from cmanlk.sim.history import Booted, Crashed, Histories, Installed, Left, Record
from cmanlk.sim.invariants import MAX_REPORTS_PER_PROPERTY, Violation
from cmanlk.sim.stackrecords import (
    ClientOp,
    CpgMsg,
    CpgRing,
    CpgState,
    CpgView,
    FenceRun,
    KernelControl,
    QuorumSeen,
    SyncStep,
    ViewPublished,
    describe_stack_record,
)
from cmanlk.sim.vqmodel import VqModel
from cmanlk.totem.actions import ConfigKind
from cmanlk.types import NodeId, RingId

VOTEQUORUM = "votequorum"
CPG = "cpg"


@dataclass(slots=True)
class _Inc:
    node: NodeId
    number: int
    records: list[Record] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.node}#{self.number}"


class _Report:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, prop: str, inc: _Inc | None, detail: str, at: int | None = None) -> None:
        self.counts[prop] += 1
        if self.counts[prop] > MAX_REPORTS_PER_PROPERTY:
            return
        excerpt: tuple[str, ...] = ()
        if inc is not None and at is not None:
            lo, hi = max(0, at - 3), min(len(inc.records), at + 2)
            excerpt = tuple(f"{'>> ' if j == at else '   '}{inc.name}: {_describe(inc.records[j])}"
                            for j in range(lo, hi))
        who = f"[{inc.name}] " if inc is not None else ""
        self.violations.append(Violation(prop, inc.node if inc else None, who + detail, "", excerpt))

    def summary(self) -> list[Violation]:
        out = list(self.violations)
        for prop, n in sorted(self.counts.items()):
            if n > MAX_REPORTS_PER_PROPERTY:
                out.append(Violation(prop, None, f"{n - MAX_REPORTS_PER_PROPERTY} more violations not shown"))
        return out


def _describe(rec: Record) -> str:
    from cmanlk.sim.history import describe

    try:
        return describe(rec)
    except TypeError:
        return describe_stack_record(rec)  # type: ignore[arg-type]


def check_services(histories: Histories, world: Any, settled: bool, final: bool = True) -> list[Violation]:
    """Check every service invariant (module docstring); `world` is the run's StackWorld.

    `settled`: the run ended settled (the convergence checks apply); `final`: this is the end of
    the run (a quorate cluster that did not settle is reported)."""
    report = _Report()
    incs = _split(histories)
    rings = _ring_members(histories)
    _check_quorum_split(histories, world, report)
    _check_quorum_model(incs, world, report)
    _check_sync(incs, rings, report)
    for inc in incs:
        _check_cpg_local(inc, report)
    _check_cpg_global(incs, report)
    _check_dlm(incs, world, report)
    if settled:
        _check_cpg_converge(incs, world, report)
    if final:
        _check_dlm_converge(world, settled, report)
    return report.summary()


def _split(histories: Histories) -> list[_Inc]:
    incs: list[_Inc] = []
    for node in sorted(histories):
        mine: list[_Inc] = []
        ended = True
        for rec in histories[node]:
            if isinstance(rec, Booted) or ended:
                mine.append(_Inc(node, len(mine)))
                ended = False
            mine[-1].records.append(rec)
            if isinstance(rec, Crashed | Left):
                ended = True
        incs += mine
    return incs


def _ring_members(histories: Histories) -> dict[RingId, tuple[NodeId, ...]]:
    out: dict[RingId, tuple[NodeId, ...]] = {}
    for recs in histories.values():
        for rec in recs:
            if isinstance(rec, Installed) and rec.kind is ConfigKind.REGULAR:
                out[rec.ring_id] = rec.members
    return out


# --- quorum -----------------------------------------------------------------------------------------


def _check_quorum_split(histories: Histories, world: Any, report: _Report) -> None:
    if any(_policy(world, n).two_node for n in histories):
        return
    events: list[tuple[int, int, NodeId, Record]] = []
    for node, recs in histories.items():
        for i, rec in enumerate(recs):
            if isinstance(rec, QuorumSeen | Crashed | Left | Booted):
                events.append((rec.t, i, node, rec))
    events.sort(key=lambda e: (e[0], e[2], e[1]))
    now: dict[NodeId, QuorumSeen] = {}
    for t, _, node, rec in events:
        if isinstance(rec, QuorumSeen) and rec.quorate:
            mine = set(rec.members)
            votes = sum(v for _, v in rec.votes)
            for other, seen in now.items():
                if other == node or mine & set(seen.members):
                    continue
                if not _split_by_configuration(rec, seen):
                    report.add("quorum-split", None,
                               f"at {t / 1e6:.3f}ms node {node} is quorate with {_ids(rec.members)} "
                               f"(T={votes} E={rec.highest_expected}) and node {other} with "
                               f"{_ids(seen.members)} (E={seen.highest_expected})")
            now[node] = rec
        else:
            now.pop(node, None)


def _split_by_configuration(a: QuorumSeen, b: QuorumSeen) -> bool:
    """Are two disjoint quorate memberships both quorate by the configuration: expected votes
    below their votes together (an operator's -e or -v, last man standing)? quorum-split accepts
    such a split, and fencing across it is how it is resolved."""
    both = sum(v for _, v in a.votes) + sum(v for _, v in b.votes)
    return min(a.highest_expected, b.highest_expected) < both


def _policy(world: Any, node: NodeId) -> Any:
    try:
        return world.quorum.resolve(node)
    except ConfigError:  # pragma: no cover - the schedule only draws accepted policies
        return None


def _check_quorum_model(incs: list[_Inc], world: Any, report: _Report) -> None:
    for inc in incs:
        model = VqModel(_policy(world, inc.node))
        for i, rec in enumerate(inc.records):
            if isinstance(rec, QuorumSeen):
                for wrong in model.judge(rec):
                    report.add("quorum-model", inc, f"ring {rec.ring_id}: {wrong}", i)


# --- sync -------------------------------------------------------------------------------------------


def _check_sync(incs: list[_Inc], rings: dict[RingId, tuple[NodeId, ...]], report: _Report) -> None:
    done_at: dict[tuple[str, RingId], dict[NodeId, int]] = defaultdict(dict)
    for inc in incs:
        for rec in inc.records:
            if isinstance(rec, SyncStep) and rec.step == "done" and rec.ring_id is not None:
                done_at[(rec.service, rec.ring_id)].setdefault(inc.node, rec.t)
    for inc in incs:
        activated: dict[str, set[RingId]] = defaultdict(set)
        aborted: set[RingId] = set()
        init_state: dict[RingId, CpgState] = {}
        for i, rec in enumerate(inc.records):
            match rec:
                case SyncStep(step="activate", ring_id=ring) if ring is not None:
                    members = rings.get(ring, ())
                    finished = done_at.get((rec.service, ring), {})
                    late = [m for m in members if finished.get(m, 1 << 62) > rec.t]
                    if late:
                        report.add("sync-order", inc, f"{rec.service} activated ring {ring} before "
                                   f"{_ids(late)} finished its sync", i)
                    activated[rec.service].add(ring)
                case SyncStep(step="abort", ring_id=ring) if ring is not None:
                    aborted.add(ring)
                case CpgState(at="init", ring_id=ring) if ring is not None:
                    init_state[ring] = rec
                case CpgState(at="abort", ring_id=ring) if ring is not None:
                    before = init_state.get(ring)
                    if before is not None and before.groups != rec.groups:
                        report.add("sync-abort", inc, f"cpg's process list changed by the aborted sync of "
                                   f"{ring}: {_groups(before.groups)} -> {_groups(rec.groups)}", i)
                case CpgRing(ring_id=ring):
                    _seen(inc, i, ring, CPG, activated, aborted, "cpg's totem confchg", report)
                case QuorumSeen(ring_id=ring) if ring is not None:
                    _seen(inc, i, ring, VOTEQUORUM, activated, aborted, "the quorum notification", report)
                case ViewPublished(ring_id=ring):
                    for service in (CPG, VOTEQUORUM):
                        _seen(inc, i, ring, service, activated, aborted, "the published membership", report)


def _seen(inc: _Inc, i: int, ring: RingId, service: str, activated: dict[str, set[RingId]],
          aborted: set[RingId], what: str, report: _Report) -> None:
    if ring in aborted:
        report.add("sync-abort", inc, f"{what} names ring {ring}, whose sync was aborted", i)
    elif ring not in activated[service]:
        report.add("sync-order", inc, f"{what} names ring {ring} before {service} activated it", i)


# --- cpg --------------------------------------------------------------------------------------------

Key = tuple[int, int]  # (handle, index of the join): one membership of one client in one group


@dataclass(slots=True)
class _Member:
    """One client membership in a group, as its connection saw it."""

    inc: _Inc
    handle: int
    group: bytes
    pid: int
    view: tuple[tuple[NodeId, int], ...] | None = None
    ring: RingId | None = None
    left: bool = False
    events: list[tuple[str, object, int]] = field(default_factory=list)  # ("v", key, i) / ("m", payload, i)


def _members_of(inc: _Inc) -> dict[tuple[int, bytes], list[_Member]]:
    """Each (handle, group)'s memberships, with its views and deliveries."""
    out: dict[tuple[int, bytes], list[_Member]] = defaultdict(list)
    current: dict[tuple[int, bytes], _Member] = {}
    ring_of: dict[int, RingId] = {}
    for i, rec in enumerate(inc.records):
        match rec:
            case ClientOp(op="join", error=None):
                m = _Member(inc, rec.handle, rec.group, rec.pid)
                out[(rec.handle, rec.group)].append(m)
                current[(rec.handle, rec.group)] = m
            case CpgRing():
                for h in rec.handles:
                    ring_of[h] = rec.ring_id
                for (h, _g), m1 in current.items():
                    if h in rec.handles:
                        m1.events.append(("r", rec.ring_id, i))
            case CpgView() | CpgMsg():
                for h in rec.handles:
                    m2 = current.get((h, rec.group))
                    if m2 is None:
                        continue
                    if isinstance(rec, CpgView):
                        key = (ring_of.get(h), rec.members, rec.joined, rec.left)
                        m2.events.append(("v", key, i))
                    else:
                        m2.events.append(("m", rec, i))
    if not inc.records or not isinstance(inc.records[-1], Crashed | Left):
        for m3 in current.values():
            m3.events.append(("r", "end", len(inc.records)))  # alive at the end: in the final ring
    return out


def _check_cpg_local(inc: _Inc, report: _Report) -> None:
    me = inc.node
    for (_handle, group), members in _members_of(inc).items():
        for m in members:
            view: set[tuple[NodeId, int]] | None = None
            own = (me, m.pid)
            fifo: dict[tuple[NodeId, int], int] = {}
            gone = False
            for kind, data, i in m.events:
                if kind == "r":
                    continue
                if kind == "v":
                    key: tuple[Any, ...] = data  # type: ignore[assignment]
                    _, members_now, joined, left = key
                    new = set(members_now)
                    j = {(n, p) for n, p, _ in joined}
                    lf = {(n, p) for n, p, _ in left}
                    if view is None:
                        if own not in j:
                            report.add("cpg-view", inc, f"first view of {group!r} for pid {m.pid} does not "
                                       "join it", i)
                    elif new != (view - lf) | j:
                        report.add("cpg-view", inc, f"view of {group!r} {_procs(new)} does not follow from "
                                   f"{_procs(view)} -{_procs(lf)} +{_procs(j)}", i)
                    if own in lf:
                        gone = True
                    elif own not in new and not gone:
                        report.add("cpg-view", inc, f"own process {m.pid} missing from the view of "
                                   f"{group!r}", i)
                    view = new
                else:
                    msg: CpgMsg = data  # type: ignore[assignment]
                    if view is None or msg.sender not in view:
                        report.add("cpg-sender", inc, f"message {_label(msg.payload)} of {group!r} from "
                                   f"{msg.sender} outside the view {_procs(view or set())}", i)
                    seq = _seq(msg.payload)
                    if seq is not None:
                        last = fifo.get(msg.sender, -1)
                        if seq <= last:
                            report.add("cpg-fifo", inc, f"message {_label(msg.payload)} of {group!r} after "
                                       f"#{last} of the same sender", i)
                        fifo[msg.sender] = seq


def _check_cpg_global(incs: list[_Inc], report: _Report) -> None:
    by_group: dict[bytes, list[_Member]] = defaultdict(list)
    for inc in incs:
        for (_h, group), members in _members_of(inc).items():
            by_group[group] += members
    for group, members in by_group.items():
        orders: list[tuple[_Member, dict[bytes, int]]] = []
        # Two clients moved together through views V and V' when both saw V then V' and then
        # the same next ring (or both lived on in the final one): only those must agree on the
        # messages between (EVS lets members bound for different rings differ in the
        # transitional part: simulator, stack seed 517).
        segments: dict[tuple[object, object, object], tuple[_Member, tuple[bytes, ...], int]] = {}
        for m in members:
            pos: dict[bytes, int] = {}
            last_view: object = None
            since: list[bytes] = []
            waiting: list[tuple[object, object, tuple[bytes, ...], int]] = []
            for kind, data, i in m.events:
                if kind == "m":
                    msg: CpgMsg = data  # type: ignore[assignment]
                    pos.setdefault(msg.payload, len(pos))
                    since.append(msg.payload)
                    continue
                if kind == "r":
                    for v1, v2, mine, at in waiting:
                        key = (v1, v2, data)
                        seen = segments.get(key)
                        if seen is None:
                            segments[key] = (m, mine, at)
                        elif seen[1] != mine and seen[0].inc.node != m.inc.node:
                            report.add("cpg-vs", m.inc, f"{group!r}: between two views {len(mine)} messages "
                                       f"here, {len(seen[1])} at {seen[0].inc.name} (first difference "
                                       f"{_first_difference(mine, seen[1])})", at)
                    waiting = []
                    continue
                if last_view is not None:
                    waiting.append((last_view, data, tuple(since), i))
                last_view, since = data, []
            orders.append((m, pos))
        for a in range(len(orders)):
            ma, pa = orders[a]
            for b in range(a + 1, len(orders)):
                mb, pb = orders[b]
                if ma.inc is mb.inc or not pa or not pb:
                    continue
                common = sorted((p for p in pa if p in pb), key=pa.__getitem__)
                ranks = [pb[p] for p in common]
                for x in range(1, len(ranks)):
                    if ranks[x] < ranks[x - 1]:
                        report.add("cpg-order", ma.inc, f"{group!r}: {_label(common[x - 1])} before "
                                   f"{_label(common[x])} here, the other way at {mb.inc.name}")
                        break


def _check_cpg_converge(incs: list[_Inc], world: Any, report: _Report) -> None:
    live: dict[bytes, set[tuple[NodeId, int]]] = defaultdict(set)
    for h in world.hosts():
        for c in h.clients:
            for g, pid in c.groups.items():
                live[g].add((h.me, pid))
    last_inc = {inc.node: inc for inc in incs}
    for h in world.hosts():
        inc = last_inc.get(h.me)
        if inc is None:
            continue
        members = _members_of(inc)
        for c in h.clients:
            for g, pid in c.groups.items():
                mem = [m for m in members.get((c.handle, g), []) if m.pid == pid]
                views = [d for k, d, _ in mem[-1].events if k == "v"] if mem else []
                seen = set(views[-1][1]) if views else set()  # type: ignore[index]
                if seen != live[g]:
                    report.add("cpg-converge", inc, f"client {c.handle} in {g!r} sees {_procs(seen)}, the "
                               f"live members are {_procs(live[g])}")


# --- DLM control ------------------------------------------------------------------------------------


def _check_dlm(incs: list[_Inc], world: Any, report: _Report) -> None:
    two_node = any(getattr(_policy(world, inc.node), "two_node", False) for inc in incs)
    quorum_at = _quorum_timelines(incs)
    for inc in incs:
        for i, rec in enumerate(inc.records):
            match rec:
                case KernelControl(value=1):
                    if not _quorate_then(inc, i, rec.quorate, rec.fresh):
                        report.add("dlm-restart", inc, f"lockspace {rec.lockspace} started while "
                                   "inquorate", i)
                    if rec.unfenced:
                        report.add("dlm-restart", inc, f"lockspace {rec.lockspace} started with failed "
                                   f"member(s) {_ids(rec.unfenced)} not fenced", i)
                case FenceRun():
                    if not _quorate_then(inc, i, rec.quorate, rec.fresh):
                        report.add("dlm-fence", inc, f"fence agent against {rec.victim} run while "
                                   "inquorate", i)
                    if rec.victim in rec.members:
                        report.add("dlm-fence", inc, f"fence agent against {rec.victim}, a member of "
                                   f"{_ids(rec.members)}", i)
                    if rec.in_quorate_partition and not (
                            two_node or _split_allowed(inc, i, rec, quorum_at)):  # fmt: skip
                        report.add("dlm-fence", inc, f"fence agent against {rec.victim}, a member of the "
                                   f"live quorate partition of {_ids(rec.in_quorate_partition)}", i)


def _quorum_timelines(incs: list[_Inc]) -> dict[NodeId, list[QuorumSeen]]:
    """Each node's quorum notifications in time order (over its incarnations)."""
    out: dict[NodeId, list[QuorumSeen]] = defaultdict(list)
    for inc in incs:
        out[inc.node] += [r for r in inc.records if isinstance(r, QuorumSeen)]
    return out


def _split_allowed(inc: _Inc, i: int, run: FenceRun, quorum_at: dict[NodeId, list[QuorumSeen]]) -> bool:
    """Is the fencer's partition and the victim's quorate one a split quorum-split accepts (the
    expected votes below the votes of both memberships together: an operator's -e or -v, last man
    standing)? Then both halves are quorate by the configuration and fencing across them is how
    the split is resolved, as with two_node's fence race."""
    mine = next((r for r in reversed(inc.records[:i]) if isinstance(r, QuorumSeen)), None)
    other = None
    for n in run.in_quorate_partition:
        seen = [q for q in quorum_at.get(n, ()) if q.t <= run.t]
        if seen and seen[-1].quorate and run.victim in seen[-1].members:
            other = seen[-1]
            break
    if mine is None or other is None or not mine.quorate or set(mine.members) & set(other.members):
        return False
    return _split_by_configuration(mine, other)


def _quorate_then(inc: _Inc, i: int, quorate: bool, fresh: bool) -> bool:
    """Was the node quorate at record i? A decision kept from an older ring (not `fresh`) counts
    only when the node's next decision, for its new ring, is quorate too, or when, in the node's
    delivery order, its last quorum decision was quorate and no sync of a newer ring had started
    (no SyncStarting): a message of the old ring delivered before the configuration change is acted
    on with that ring's quorum, as dlm_controld does (virtual synchrony delivers it in its own ring;
    the start it completes was sent after check_quorum_done, and start_kernel checks no quorum).
    `quorate`/`fresh` are the Stack's at the end of its step, possibly past the configuration, and
    possibly past a quorum decision delivered after record i in that step (a QuorumSeen after it
    at the same instant): then the node decided on the last decision before i, of its ring (no
    SyncStarting in between), which is what counts (stack seeds 7240, 7736: an expected-votes
    change delivered just after a lockspace's last start message)."""
    if not quorate and fresh:
        t = inc.records[i].t
        later = next((r for r in inc.records[i + 1:] if isinstance(r, QuorumSeen)), None)
        if later is None or later.t != t:
            return False
        for rec in reversed(inc.records[:i]):
            if isinstance(rec, SyncStep) and rec.service == "stack" and rec.step == "start":
                return False
            if isinstance(rec, QuorumSeen):
                return rec.quorate
        return False
    if not quorate or fresh:
        return quorate
    for rec in reversed(inc.records[:i]):
        if isinstance(rec, SyncStep) and rec.service == "stack" and rec.step == "start":
            break
        if isinstance(rec, QuorumSeen):
            if rec.quorate:
                return True
            break
    nxt = next((r for r in inc.records[i + 1:] if isinstance(r, QuorumSeen)), None)
    return nxt is None or nxt.quorate


def _check_dlm_converge(world: Any, settled: bool, report: _Report) -> None:
    hosts = world.hosts()
    cluster = world.cluster
    if cluster is None or not hosts or not cluster.is_stable() or len(cluster.groups()) != 1:
        return
    if not all(h.stack.quorum is not None and h.stack.quorum.quorate for h in hosts):
        return
    if not settled:
        busy = [h.me for h in hosts if h.busy()]
        report.add("dlm-converge", None, f"the quorate cluster never settled: DLM busy on {_ids(busy)}")
        return
    holders: dict[str, set[NodeId]] = defaultdict(set)
    for h in hosts:
        for name, ls in h.kernel.items():
            if ls.state == "joined":
                holders[name].add(h.me)
    for h in hosts:
        for name, ls in h.kernel.items():
            if ls.control != 1 or ls.nodes != holders[name]:
                report.add("dlm-converge", None, f"node {h.me}: lockspace {name} control={ls.control} nodes "
                           f"{_ids(sorted(ls.nodes))}, holders {_ids(sorted(holders[name]))}")


# --- helpers ------------------------------------------------------------------------------------------


def _ids(nodes: Iterable[NodeId]) -> str:
    return "(" + ",".join(str(n) for n in nodes) + ")"


def _procs(procs: Iterable[tuple[NodeId, int]]) -> str:
    return "{" + ",".join(f"{n}/{p}" for n, p in sorted(procs)) + "}"


def _groups(groups: Iterable[tuple[bytes, tuple[tuple[NodeId, int], ...]]]) -> str:
    return " ".join(f"{g.decode(errors='replace')}={_procs(m)}" for g, m in groups) or "-"


def _label(payload: bytes) -> str:
    return payload.split(b"|", 1)[0][:40].decode("ascii", "replace")


def _seq(payload: bytes) -> int | None:
    head = payload.split(b"|", 1)[0]
    try:
        return int(head.rsplit(b".", 1)[1])
    except (IndexError, ValueError):
        return None


def _first_difference(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> str:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return f"{_label(x)} vs {_label(y)}"
    longer = a if len(a) > len(b) else b
    return _label(longer[min(len(a), len(b))]) + " only on one side"
