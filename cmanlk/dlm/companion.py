"""The DLM companion's decisions over the node's notifications, pure (dlmd keeps only the I/O).

`DlmCompanion` sits between the Stack's upward notifications and `DlmCtl`. It is what
cmanlk/runtime/dlmd.py feeds and what the simulator (cmanlk/sim/stackhost.py) feeds, so both take
the same decisions:

- `MembershipChanged` and `QuorumChanged` become `ClusterChanged` (members and quorum of one ring,
  with the nodelist's addresses); `CpgConfchg`/`CpgDeliver` of our own handle's lockspace groups
  become `GroupConfchg`/`GroupMessage`; announcements in `FENCE_GROUP` become `FencedElsewhere`.
- dlmctl's actions come back as `CompanionOutput`s: kernel actions (configfs/sysfs), cpg requests
  for the Stack on our handle (`CpgJoin`/`CpgLeave`/`CpgMcast`; an `AnnounceFenced` is a
  `CpgMcast` in FENCE_GROUP) and `RunFenceAgent`.

Hold: cpg activates before votequorum in a sync (service ids 2 < 5), so the group changes a
sync makes (NODEDOWN, NODEUP, PROCDOWN) and the messages cpg applies after its activation reach us
before the quorum and membership of their ring; when that sync is aborted after cpg's part, the
quorum of that ring never comes. Acting on them at once would decide with an older ring's
quorum: a partition that just lost quorum would still shoot the majority, or restart a lockspace
(simulator, stack seed 6: nodes 1 and 3, cut off from a quorate ring of five, restarted ls0 on the
old ring's quorum), and stop the lockspaces before comms/N goes (dlm_controld's order is the
reverse). So a sync's group change, every group event after it, and every group event while
cpg's ring (its totem confchg) is not the ring of the last quorum notification wait, in order,
those of the daemons' own FENCE_GROUP included (a daemon that left makes a new fencer, stack
scenario stack_dlm_fencer: it ran the agent on its old ring's quorum),
until the cluster view has caught up with cpg's ring; at most HOLD_LIMIT (then they are fed
anyway rather than never).

Nothing happens before `start()` (the kernel set up) and after `shutdown()`; notifications
before start only update the cluster view.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cmanlk.dlm.control import (
    CPG_REASON_JOIN,
    CPG_REASON_NODEDOWN,
    CPG_REASON_NODEUP,
    CPG_REASON_PROCDOWN,
    ClusterChanged,
    ClusterSyncing,
    ConfigfsMkdir,
    ConfigfsRmdir,
    ConfigfsWrite,
    DaemonsChanged,
    DeadlineReached,
    DlmCtl,
    DlmEvent,
    DlmSettings,
    FenceAck,
    FencedElsewhere,
    GroupConfchg,
    GroupMessage,
    JoinGroup,
    KernelAction,
    KernelLockspaces,
    LeaveGroup,
    SendGroupMessage,
    ShutdownRequested,
    SysfsWrite,
)
from cmanlk.dlm.fencing import AnnounceFenced, RunFenceAgent
from cmanlk.services.cpg.service import (
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged, SyncStarting
from cmanlk.types import Instant, NodeId, RingId, ms

log = logging.getLogger("cmanlk.dlmd")

DLMD_HANDLE = Handle(1 << 48)
"""Our cpg connection handle: the IPC server numbers its clients from 1 upwards."""
FENCE_GROUP = b"cmanlk:dlm"
"""Daemon-wide cpg group: fencing results are announced here (dlm_controld uses "dlm:controld")."""
FENCED_MAGIC = b"cmanlk-dlm-fenced "
MAX_HELD_GROUP_EVENTS = 4096
"""Group events held until the membership of their ring is known (a few per lockspace)."""
HOLD_LIMIT = ms(5000)
"""The quorum and membership notifications follow the confchgs within one Stack step; if they
ever did not, held events are fed after this long rather than never."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CpgOutput = CpgJoin | CpgLeave | CpgMcast
CompanionOutput = KernelAction | CpgOutput | RunFenceAgent
KERNEL_ACTIONS = (ConfigfsMkdir, ConfigfsWrite, ConfigfsRmdir, SysfsWrite)
SYNC_REASONS = frozenset({CPG_REASON_NODEDOWN, CPG_REASON_NODEUP, CPG_REASON_PROCDOWN})
"""Reasons of the group changes a sync makes (cpg's downlist and joinlists), not a client's request."""


@dataclass(slots=True)
class CompanionStats:
    group_events_held: int = 0
    held_released_by_limit: int = 0
    held_overflow: int = 0


class DlmCompanion:
    """dlmd's decisions for one node; see the module docstring. Every method returns outputs in order."""

    def __init__(
        self,
        settings: DlmSettings,
        addrs: Mapping[NodeId, tuple[IPAddress, ...]],
        pid: int,
        handle: Handle = DLMD_HANDLE,
    ) -> None:
        self.ctl = DlmCtl(settings)
        self.me = settings.me
        self.addrs = {n: tuple(a) for n, a in addrs.items()}
        self.pid = pid
        self.handle = handle
        self.ready = False
        self.stopped = False
        self.members: tuple[NodeId, ...] = ()
        self.quorate = False
        self.view_ring: RingId | None = None  # ring of the last quorum/membership notification
        self.cpg_ring: RingId | None = None  # ring of cpg's last totem confchg to us
        self.stats = CompanionStats()
        self._held: list[Callable[[Instant], DlmEvent]] = []
        self._hold_until: Instant | None = None

    # -- the way in -------------------------------------------------------------------------------

    @property
    def next_deadline(self) -> Instant | None:
        """When to call `deadline`: dlmctl's (fence retries) or the hold limit."""
        if not self.ready or self.stopped:
            return None
        d, hold = self.ctl.next_deadline, self._hold_until
        return d if hold is None or (d is not None and d <= hold) else hold

    def start(self, now: Instant, kernel_lockspaces: tuple[str, ...]) -> list[CompanionOutput]:
        """The kernel is set up: join FENCE_GROUP, feed the cluster view, join what the kernel waits for."""
        if self.ready or self.stopped:
            return []
        self.ready = True
        out: list[CompanionOutput] = [CpgJoin(self.handle, FENCE_GROUP, self.pid)]
        out += self._feed(self._cluster_changed(now))
        # lockspaces created before us wait for an answer we may never get a uevent for
        out += self._feed(KernelLockspaces(now, kernel_lockspaces))
        return out

    def notification(self, now: Instant, item: object) -> list[CompanionOutput]:
        """One of the Stack's notifications (anything else is ignored)."""
        match item:
            case MembershipChanged():
                self.members = item.members
                self.view_ring = item.ring_id
                return self._feed_if_ready(self._cluster_changed(now)) + self._caught_up(now)
            case QuorumChanged():
                # the cluster view dlm_controld takes from its quorum callback: members and
                # quorum of one ring together (see the module docstring for why group events wait)
                self.quorate = item.quorate
                if item.state.members:
                    self.members = tuple(item.state.members)
                if item.ring_id is not None:
                    self.view_ring = item.ring_id
                return self._feed_if_ready(self._cluster_changed(now)) + self._caught_up(now)
            case SyncStarting():
                # the quorum we hold is an older ring's until this ring's votequorum notification
                # (or the sync's end) feeds the view again. Simulator, stack seed 3831: an
                # administrator's fence-ack during a sync restarted ls0 on the old ring's quorum,
                # and the new ring was inquorate.
                return self._feed_if_ready(ClusterSyncing(now))
            case CpgTotemConfchg() if self.handle in item.handles:
                self.cpg_ring = item.ring_id
                return []
            case CpgConfchg() if self.handle in item.handles:
                return self._on_confchg(now, item)
            case CpgDeliver() if self.handle in item.handles:
                return self._on_deliver(now, item)
        return []

    def event(self, event: DlmEvent) -> list[CompanionOutput]:
        """A kernel uevent, an agent's exit or a fence ack, for dlmctl (after start only)."""
        if not self.ready or self.stopped:
            return []
        return self._feed(event)

    def fence_ack(self, now: Instant, nodeid: NodeId) -> list[CompanionOutput]:
        """An administrator confirms `nodeid` is off (the caller refuses our own id)."""
        log.warning("fencing of node %d acknowledged by an administrator", nodeid)
        return self.event(FenceAck(now, nodeid))

    def deadline(self, now: Instant) -> list[CompanionOutput]:
        """`next_deadline` passed: release held events past the limit, then dlmctl's retries."""
        out: list[CompanionOutput] = []
        if self._hold_until is not None and now >= self._hold_until:
            self.stats.held_released_by_limit += 1
            out += self._release_held(now)
        due = self.ctl.next_deadline
        if due is not None and now >= due:
            out += self._feed_if_ready(DeadlineReached(now))
        return out

    def shutdown(self, now: Instant) -> list[KernelAction]:
        """The node stops: the kernel actions that remove what we created (none while lockspaces exist)."""
        if self.stopped:
            return []
        out: list[KernelAction] = []
        if self.ready:
            if self.ctl.lockspaces:
                log.warning("dlm: lockspaces %s still exist; the kernel keeps the cluster configured",
                            ", ".join(sorted(self.ctl.lockspaces)))
            out = [a for a in self.ctl.handle(ShutdownRequested(now)) if isinstance(a, KERNEL_ACTIONS)]
        self.stopped = True
        self.ready = False
        self._held = []
        self._hold_until = None
        return out

    # -- internals --------------------------------------------------------------------------------

    def _cluster_changed(self, now: Instant) -> ClusterChanged:
        members = self.members
        return ClusterChanged(now, members, self.quorate, tuple((n, self.addrs.get(n, ())) for n in members))

    def _feed_if_ready(self, event: DlmEvent) -> list[CompanionOutput]:
        if self.ready and not self.stopped:
            return self._feed(event)
        return []

    def _feed(self, event: DlmEvent) -> list[CompanionOutput]:
        out: list[CompanionOutput] = []
        for action in self.ctl.handle(event):
            match action:
                case JoinGroup(group):
                    out.append(CpgJoin(self.handle, group.encode(), self.pid))
                case LeaveGroup(group):
                    out.append(CpgLeave(self.handle, group.encode()))
                case SendGroupMessage(group, payload):
                    out.append(CpgMcast(self.handle, group.encode(), payload))
                case AnnounceFenced(nodeid, how):
                    log.warning("node %d is fenced (%s)", nodeid, how)
                    out.append(CpgMcast(self.handle, FENCE_GROUP, encode_fenced(nodeid, how)))
                case _:
                    out.append(action)
        return out

    def _on_confchg(self, now: Instant, note: CpgConfchg) -> list[CompanionOutput]:
        by_sync = any(a.reason in SYNC_REASONS for a in (*note.left, *note.joined))
        if note.group == FENCE_GROUP:
            # fencing's witnesses and restarts (cmanlk/dlm/fencing.py, "Roles", "Never a member"),
            # held like the lockspaces' events: a fencer chosen anew must decide with its ring's quorum
            gone = tuple(sorted({a.nodeid for a in note.left}))
            fresh = tuple(sorted({a.nodeid for a in note.joined if a.reason == CPG_REASON_JOIN}))
            if not gone and not fresh:
                return []

            def daemons(t: Instant) -> DlmEvent:
                return DaemonsChanged(t, gone, fresh)

            return self._group_event(now, daemons, hold=by_sync or self._stale())
        group = note.group.decode("utf-8", "replace")
        members = tuple(sorted({a.nodeid for a in note.members}))
        joined = tuple(sorted({a.nodeid for a in note.joined}))
        left = tuple(sorted({(a.nodeid, a.reason) for a in note.left}))

        def build(t: Instant) -> DlmEvent:
            return GroupConfchg(t, group, members, joined, left)

        return self._group_event(now, build, hold=by_sync or self._stale())

    def _on_deliver(self, now: Instant, note: CpgDeliver) -> list[CompanionOutput]:
        if note.group == FENCE_GROUP:
            parsed = decode_fenced(note.payload)
            if parsed is None or note.nodeid == self.me:
                return []
            nodeid, how = parsed

            def fenced(t: Instant) -> DlmEvent:
                return FencedElsewhere(t, nodeid, how)

            return self._group_event(now, fenced, hold=self._stale())
        group = note.group.decode("utf-8", "replace")
        sender, payload = note.nodeid, note.payload

        def build(t: Instant) -> DlmEvent:
            return GroupMessage(t, group, sender, payload)

        return self._group_event(now, build, hold=self._stale())

    def _stale(self) -> bool:
        """Is cpg on a ring the cluster view (quorum, members) has not caught up with?"""
        return self.cpg_ring is not None and self.cpg_ring != self.view_ring

    def _caught_up(self, now: Instant) -> list[CompanionOutput]:
        return [] if self._stale() else self._release_held(now)

    def _group_event(
        self, now: Instant, build: Callable[[Instant], DlmEvent], hold: bool = False
    ) -> list[CompanionOutput]:
        """Feed a lockspace group's event now, or keep it behind the ones already held."""
        if not (hold or self._held):
            return self._feed_if_ready(build(now))
        if len(self._held) >= MAX_HELD_GROUP_EVENTS:
            log.error("dlm: %d group events wait for a membership; releasing them", len(self._held))
            self.stats.held_overflow += 1
            return self._release_held(now) + self._feed_if_ready(build(now))
        if not self._held:
            self._hold_until = Instant(now + HOLD_LIMIT)
        self._held.append(build)
        self.stats.group_events_held += 1
        return []

    def _release_held(self, now: Instant) -> list[CompanionOutput]:
        """Feed the held group events in order (the cluster view is current now)."""
        self._hold_until = None
        held, self._held = self._held, []
        out: list[CompanionOutput] = []
        for build in held:
            out += self._feed_if_ready(build(now))
        return out


# -- fencing announcements ---------------------------------------------------------------------


def encode_fenced(nodeid: NodeId, how: str) -> bytes:
    """Return the FENCE_GROUP announcement that `nodeid` is fenced."""
    return FENCED_MAGIC + f"{int(nodeid)} {how[:32]}".encode()


def decode_fenced(payload: bytes) -> tuple[NodeId, str] | None:
    """Return (nodeid, how) of a fencing announcement, None for anything else (never raises)."""
    if not payload.startswith(FENCED_MAGIC) or len(payload) > len(FENCED_MAGIC) + 64:
        return None
    text = payload[len(FENCED_MAGIC):].decode("ascii", "replace")
    nodeid, _, how = text.partition(" ")
    if not nodeid.isdigit() or not 0 < int(nodeid) < 1 << 32:
        return None
    return NodeId(int(nodeid)), how or "unknown"


__all__ = ["DLMD_HANDLE", "FENCE_GROUP", "HOLD_LIMIT", "CompanionOutput", "CpgOutput", "DlmCompanion",
           "decode_fenced", "encode_fenced"]
