"""Fencing decisions: whom to fence, who runs the agent, when to retry, when a node counts as fenced.

Pure: no clocks, no processes. `cmanlk/runtime/fence.py` runs the agents this core asks for and
feeds their exit back; `cmanlk/dlm/control.py` asks `is_fenced()` before it lets a lockspace recover.

What dlm_controld does and we follow (shared/reference/dlm-controld-protocol.md §3, fencing
trace): a member lost without a clean leave stays a *victim*; lockspaces it was in stay
stopped (control 0) and keep its nodes/N entry until it is fenced; the fence agent is retried
until it succeeds; an administrator's acknowledgement (`dlm_tool fence_ack N`, for us
`cmanlk-tool fence-ack N`) counts as a successful fence. Only a quorate partition fences:
a minority partition must never shoot the majority.

Roles: the *fencer* of a victim is the lowest node id among its *witnesses* still in the quorate
membership (it runs the agent and announces the result with `AnnounceFenced`); every other node
waits for that announcement (`FencedElsewhere`) or a local ack. The witnesses are the members of
the lockspace group that reported the failure (cpg gives every one of them the same change); a
witness whose daemon leaves the daemons' group (`peers_left`) stops being one, so a witness that
restarted, or a node that joined later, is never counted on: it knows nothing of the victim (the
lowest member of the ring was the fencer before, and a restarted lowest node left its victims
unfenced for ever). When the fencer fails, the next lowest witness takes over.

Never a member: the agent never runs against a node in our membership (a victim back in the
ring after a partition healed is in the quorate partition, and shooting it is what fencing must
never do). Such a victim keeps blocking recovery until it leaves the ring again (then it is
fenced), an administrator acknowledges it, or its daemon restarts: a victim whose daemon joins
the daemons' group afresh (`restarted`, a cpg JOIN, not a merge's NODEUP) lost all its state
with the old process and counts as fenced ("restart"), as dlm_controld skips fencing a node
that rejoined after a clean restart.

Deviations: dlm_controld compares cluster join times to see a restart; we see the daemon's
fresh join of its group. Retries back off (1 s doubling to 30 s) where dlm_controld retries
at a fixed ~1.5 s, to keep a failing agent from hammering a management controller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cmanlk.types import Duration, Instant, NodeId, ms

RETRY_INITIAL: Duration = ms(1000)
"""First retry of a failed agent after 1 s (dlm_controld retries every ~1.5 s)."""
RETRY_MAX: Duration = ms(30_000)
"""Backoff ceiling: a dead power switch is retried twice a minute, forever, until acked."""
MAX_VICTIMS = 1024
"""Bound of tracked victims: more than any cluster has nodes (corosync allows 384 members)."""


class VictimState(enum.Enum):
    """Where the fencing of one node stands."""

    WAITING = "waiting"  # not yet tried (not quorate, not the fencer, or no agent: wait for an ack)
    RUNNING = "running"  # an agent runs now
    RETRY = "retry"  # last attempt failed; next at `next_attempt`
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class FencingPolicy:
    """Configuration of the fencing core."""

    enabled: bool = True
    nodes_with_agent: frozenset[NodeId] = frozenset()
    """Nodes that have a fence device configured; the others can only be acknowledged."""
    retry_initial: Duration = RETRY_INITIAL
    retry_max: Duration = RETRY_MAX


@dataclass(frozen=True, slots=True)
class RunFenceAgent:
    """Run the fence agent of `nodeid` (action=off); report `FenceAgentExited`."""

    nodeid: NodeId
    attempt: int


@dataclass(frozen=True, slots=True)
class AnnounceFenced:
    """Tell every node (the daemon's group) that `nodeid` is fenced, `how` ("agent" or "ack")."""

    nodeid: NodeId
    how: str


FenceAction = RunFenceAgent | AnnounceFenced


@dataclass
class Victim:
    """One failed node and its fencing (readable state for `cmanlk-tool dlm --json`)."""

    nodeid: NodeId
    since: Instant
    state: VictimState = VictimState.WAITING
    attempts: int = 0
    last_exit: int | None = None
    next_attempt: Instant | None = None
    fenced_at: Instant | None = None
    how: str | None = None
    witnesses: set[NodeId] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        """Return the victim as plain data (times in ns)."""
        return {"nodeid": int(self.nodeid), "state": self.state.value, "since_ns": int(self.since),
                "attempts": self.attempts, "last_exit": self.last_exit,
                "next_attempt_ns": self.next_attempt, "fenced_at_ns": self.fenced_at, "how": self.how}


@dataclass
class Fencing:
    """The fencing core of one node. Methods return the actions to carry out, in order."""

    me: NodeId
    policy: FencingPolicy = field(default_factory=FencingPolicy)
    victims: dict[NodeId, Victim] = field(default_factory=dict)
    members: tuple[NodeId, ...] = ()
    quorate: bool = False
    dropped: int = 0
    """Victims not tracked because MAX_VICTIMS was reached (never expected)."""

    @property
    def is_fencer(self) -> bool:
        """Do we run the agent for some victim (or, with none, are we the lowest quorate member)?"""
        pending = [v for v in self.victims.values() if v.state is not VictimState.FENCED]
        if pending:
            return any(self.fences(v) for v in pending)
        return self.quorate and bool(self.members) and min(self.members) == self.me

    def fences(self, v: Victim) -> bool:
        """Are we the one to run the agent against `v` now (module docstring, "Roles")?"""
        members = self.members
        if not self.quorate or self.me not in members or v.nodeid in members:
            return False
        present = [w for w in v.witnesses if w in members]
        return min(present, default=self.me) == self.me

    def is_fenced(self, nodeid: NodeId) -> bool:
        """May recovery proceed without `nodeid` (fencing disabled, never failed, or fenced)?"""
        if not self.policy.enabled:
            return True
        v = self.victims.get(nodeid)
        return v is None or v.state is VictimState.FENCED

    def unfenced(self) -> list[NodeId]:
        """Return the victims still waiting for fencing, in node id order."""
        return sorted(n for n, v in self.victims.items() if v.state is not VictimState.FENCED)

    @property
    def next_deadline(self) -> Instant | None:
        """When a retry is due, if any."""
        # only the retries we would run: a past deadline we would not act on spins the timer
        if not self.victims:
            return None  # the usual case, asked after every event the simulator feeds
        due = [v.next_attempt for v in self.victims.values()
               if v.state is VictimState.RETRY and v.next_attempt is not None and self.fences(v)]
        return min(due) if due else None

    def node_failed(
        self, now: Instant, nodeid: NodeId, witnesses: tuple[NodeId, ...] | None = None
    ) -> list[FenceAction]:
        """`nodeid` left a lockspace without a clean leave: make it a victim (once).

        `witnesses`: the members of the group change that reported it (default: our membership).
        """
        if not self.policy.enabled or nodeid == self.me:
            return []
        seen = set(self.members if witnesses is None else witnesses) | {self.me}
        seen.discard(nodeid)
        v = self.victims.get(nodeid)
        if v is not None and v.state is VictimState.FENCED:
            # fenced and not seen back since (membership() forgets a fenced node that rejoins):
            # this is the same failure reported late (an ack or an announcement came first)
            return []
        if v is not None:
            v.witnesses |= seen
            return self._maybe_run(now)
        if v is None and len(self.victims) >= MAX_VICTIMS:
            self.dropped += 1
            return []
        self.victims[nodeid] = Victim(nodeid, now, witnesses=seen)
        return self._maybe_run(now)

    def peers_left(self, now: Instant, nodes: tuple[NodeId, ...]) -> list[FenceAction]:
        """The daemons of `nodes` left the daemons' group: they witness nothing any more."""
        gone = set(nodes) - {self.me}
        for v in self.victims.values():
            v.witnesses -= gone
        return self._maybe_run(now)

    def restarted(self, now: Instant, nodeid: NodeId) -> list[FenceAction]:
        """The daemon of `nodeid` joined the daemons' group afresh: its old process is gone."""
        v = self.victims.get(nodeid)
        if v is None or v.state is VictimState.FENCED or nodeid == self.me:
            return []
        return self._fenced(now, v, "restart", announce=True)

    def membership(self, now: Instant, members: tuple[NodeId, ...], quorate: bool) -> list[FenceAction]:
        """The cluster membership or quorum changed: maybe we became the fencer."""
        self.members = tuple(sorted(members))
        self.quorate = quorate
        # A victim that is a member again stays a victim until fenced (see module docstring);
        # a *fenced* victim that rejoins is forgotten, so a later failure is fenced again.
        for n in [n for n, v in self.victims.items() if v.state is VictimState.FENCED and n in members]:
            del self.victims[n]
        return self._maybe_run(now)

    def quorum_unknown(self) -> None:
        """A new ring's quorum is not known yet: run no agent until `membership` tells it."""
        self.quorate = False

    def agent_exited(self, now: Instant, nodeid: NodeId, exit_code: int) -> list[FenceAction]:
        """Our agent run for `nodeid` ended: exit 0 is success, anything else schedules a retry."""
        v = self.victims.get(nodeid)
        if v is None or v.state is not VictimState.RUNNING:
            return []
        v.last_exit = exit_code
        if exit_code == 0:
            return self._fenced(now, v, "agent", announce=True)
        backoff = min(self.policy.retry_max, self.policy.retry_initial * (1 << min(v.attempts - 1, 16)))
        v.state = VictimState.RETRY
        v.next_attempt = Instant(now + backoff)
        return []

    def ack(self, now: Instant, nodeid: NodeId) -> list[FenceAction]:
        """An administrator confirmed `nodeid` is off: fenced, and every node is told.

        A node in our membership that is no victim has not failed (here): nothing to confirm.
        """
        v = self.victims.get(nodeid)
        if v is None and nodeid in self.members:
            return []
        if v is None:
            v = self.victims[nodeid] = Victim(nodeid, now)
        if v.state is VictimState.FENCED:
            return []
        return self._fenced(now, v, "ack", announce=True)

    def fenced_elsewhere(self, now: Instant, nodeid: NodeId, how: str) -> list[FenceAction]:
        """Another node announced that `nodeid` is fenced (before we saw it fail, too: its failure
        reaching us later is then already fenced)."""
        v = self.victims.get(nodeid)
        if v is None and nodeid != self.me and len(self.victims) < MAX_VICTIMS:
            v = self.victims[nodeid] = Victim(nodeid, now)
        if v is None or v.state is VictimState.FENCED:
            return []
        return self._fenced(now, v, how, announce=False)

    def deadline(self, now: Instant) -> list[FenceAction]:
        """Time passed: run the retries that are due."""
        return self._maybe_run(now)

    def status(self) -> list[dict[str, object]]:
        """Return every victim as plain data, in node id order."""
        return [self.victims[n].as_dict() for n in sorted(self.victims)]

    def _fenced(self, now: Instant, v: Victim, how: str, announce: bool) -> list[FenceAction]:
        v.state = VictimState.FENCED
        v.fenced_at = now
        v.how = how
        v.next_attempt = None
        return [AnnounceFenced(v.nodeid, how)] if announce else []

    def _maybe_run(self, now: Instant) -> list[FenceAction]:
        out: list[FenceAction] = []
        for n in sorted(self.victims):
            v = self.victims[n]
            if n not in self.policy.nodes_with_agent or not self.fences(v):
                continue  # no device (only an ack can fence it), or not ours to fence now
            due = v.state is VictimState.WAITING or (
                v.state is VictimState.RETRY and v.next_attempt is not None and v.next_attempt <= now)
            if due:
                v.state = VictimState.RUNNING
                v.attempts += 1
                v.next_attempt = None
                out.append(RunFenceAgent(n, v.attempts))
        return out
