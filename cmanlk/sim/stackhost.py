"""The stack mode: each simulated node runs the daemon's whole `Stack` and its DLM companion.

A `StackHost` is the simulator's core for one node incarnation (cmanlk/sim/cluster.py drives
it like the Totem core: `handle(event) -> actions`, `next_deadline`). Inside it:

- the same `Stack` the daemon builds (cmanlk/runtime/node.py: cmap, cfg, cpg, votequorum),
  over the seeded network;
- the same `DlmCompanion` the daemon's dlmd feeds (cmanlk/dlm/companion.py), its cpg requests
  sent in order and retried on try_again as dlmd's send loop does, its kernel actions carried
  out on a small model of the kernel (`KernelModel`: lockspaces, their nodes, control), its
  fence agents modelled as succeeding, failing or hanging (killed after AGENT_TIMEOUT) — a
  successful agent powers the victim off (the simulator crashes it);
- local clients the schedule drives: cpg processes joining, leaving and sending in several
  groups, quorum changes (votes, expected votes), lockspace joins and leaves, fence acks.

Every Totem message the Stack sends is tagged `s<node>.<incarnation>.<n>|` on its way into
Totem and untagged on delivery (the tap), so the EVS checker sees unique payloads and judges the
Stack's own traffic; Totem's configurations pass to the cluster unchanged. What the services
tell their clients, the sync callbacks and the DLM's kernel and fencing actions are recorded as
cmanlk/sim/stackrecords.py records in the node's history.

`StackWorld` holds what the nodes share in one run (the quorum configuration, the fencing
policy, the agents' behaviour, the ground truth of who was powered off and when) and is the
`CoreFactory` of the cluster. `StackCluster` adds `drive(n, fn)`: a client action on node n
whose actions the cluster carries out.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cmanlk.dlm.companion import CompanionOutput, DlmCompanion
from cmanlk.dlm.control import (
    CPG_REASON_NODEDOWN,
    CPG_REASON_PROCDOWN,
    ConfigfsMkdir,
    ConfigfsRmdir,
    DlmSettings,
    FenceAgentExited,
    LockspaceOffline,
    LockspaceOnline,
    SysfsWrite,
)
from cmanlk.dlm.fencing import FencingPolicy, RunFenceAgent
from cmanlk.errors import ErrorCode
from cmanlk.services.base import CPG_SERVICE, VOTEQUORUM_SERVICE, Notification, ServiceFactory
from cmanlk.services.cfg.service import CfgService
from cmanlk.services.cpg.service import (
    ClientGone,
    CpgConfchg,
    CpgDeliver,
    CpgJoin,
    CpgLeave,
    CpgMcast,
    CpgService,
    CpgTotemConfchg,
    Handle,
)
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.sim.cluster import Cluster
from cmanlk.sim.history import Crashed, Left, Record, Sent
from cmanlk.sim.stackrecords import (
    ClientOp,
    CpgMsg,
    CpgRing,
    CpgState,
    CpgView,
    FenceExit,
    FenceRun,
    KernelControl,
    LockspaceOp,
    QuorumSeen,
    StackRecord,
    SyncStep,
    ViewPublished,
)
from cmanlk.stack import (
    CancelWaitForAll,
    MembershipChanged,
    RequestResult,
    ServiceRequest,
    SetExpectedVotes,
    SetVotes,
    Stack,
    StackConfig,
    SyncStarting,
    default_services,
)
from cmanlk.totem.actions import (
    ConfigKind,
    Deliver,
    DeliverConfiguration,
    DeliverFrame,
    ForgetAssembly,
    UseAssemblySet,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import Event as TotemEvent
from cmanlk.totem.events import McastRequested, Started
from cmanlk.types import Duration, Instant, NodeId, RingId, ms

RETRY_FIRST = ms(5)  # dlmd's GROUP_RETRY: 5 ms doubling to 250 ms, given up after 60 s
RETRY_LONGEST = ms(250)
RETRY_LIMIT = ms(60_000)
RETRYABLE = frozenset({ErrorCode.TRY_AGAIN, ErrorCode.BUSY, ErrorCode.TIMEOUT})
AGENT_TIMEOUT = ms(400)  # a hanging agent is killed after this (the runtime's 60 s, scaled down)
AGENT_EXIT_TIMEOUT = -1  # cmanlk.runtime.fence.EXIT_TIMEOUT
SIM_FENCING = FencingPolicy(retry_initial=ms(100), retry_max=ms(400))
CLIENT_HANDLE_BASE = 1000  # a client handle is incarnation * CLIENT_HANDLE_BASE + k
TAG_END = b"|"
DLM_PID_BASE = 1_000_000  # a DLM companion's pid: base + incarnation * 1000 + node id
LocalRequest = SetExpectedVotes | SetVotes | CancelWaitForAll | ServiceRequest


@dataclass(slots=True, frozen=True)
class Emit:
    """A record for the node's history (the StackCluster appends it)."""

    rec: StackRecord | Sent


@dataclass(slots=True)
class Fenced:
    """Ground truth: `victim` was powered off at `t` (`how`: agent, ack)."""

    t: Instant
    victim: NodeId
    how: str


@dataclass
class StackWorld:
    """What the nodes of one stack-mode run share; see the module docstring. Is the CoreFactory."""

    seed: int
    quorum: QuorumConfig
    fencing: FencingPolicy = SIM_FENCING
    cpg_factory: ServiceFactory | None = None  # None: the product's CpgService (tests plant broken ones)
    votequorum_factory: ServiceFactory | None = None  # None: the product's VotequorumService
    companion_factory: Callable[[DlmSettings, int], DlmCompanion] | None = None  # None: the product's
    agent_mode: dict[NodeId, str] = field(default_factory=dict)  # ok, fail, hang (default ok)
    chatter_per_s: float = 0.0
    chatter_until: int = 0
    quiet: bool = False  # after the fault window every agent succeeds
    admin: bool = True  # the administrator's sweeps after the quiet point (off once settled)
    cluster: StackCluster | None = None
    incarnations: dict[NodeId, int] = field(default_factory=dict)
    boots: dict[NodeId, list[Instant]] = field(default_factory=dict)
    fenced: list[Fenced] = field(default_factory=list)
    ends: dict[NodeId, list[Instant]] = field(default_factory=dict)  # when each incarnation stopped
    last_power_off: int = 0

    def __call__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int) -> StackHost:
        inc = self.incarnations.get(me, -1) + 1
        self.incarnations[me] = inc
        now = self.cluster.now if self.cluster is not None else Instant(0)
        self.boots.setdefault(me, []).append(now)
        return StackHost(self, config, me, inc, rng, ring_seq)

    def services(self) -> tuple[ServiceFactory, ...]:
        cpg: ServiceFactory = self.cpg_factory or CpgService
        services = default_services(self.quorum, None, (CfgService, cpg))
        if self.votequorum_factory is not None:
            services = (services[0], self.votequorum_factory, *services[2:])
        return services

    def companion(self, settings: DlmSettings, inc: int) -> DlmCompanion:
        """The DLM companion of node `settings.me`'s incarnation `inc` (its pid names both)."""
        pid = DLM_PID_BASE + inc * 1000 + settings.me
        if self.companion_factory is not None:
            return self.companion_factory(settings, pid)
        return DlmCompanion(settings, {}, pid=pid)

    def host(self, n: NodeId) -> StackHost | None:
        if self.cluster is None:
            return None
        core = self.cluster.nodes[n].core
        return core if isinstance(core, StackHost) else None

    def hosts(self) -> list[StackHost]:
        if self.cluster is None:
            return []
        return [h for n in self.cluster.nodes if (h := self.host(n)) is not None]

    def power_off(self, victim: NodeId, how: str) -> None:
        """The victim is off from now on (fence agent success or an admin's ack after switching it off)."""
        assert self.cluster is not None
        now = self.cluster.now
        self.fenced.append(Fenced(now, victim, how))
        if self.cluster.nodes[victim].up:
            self.last_power_off = now
            self.cluster.crash(victim)

    def dlm_process_ended(self, victim: NodeId, pid: int) -> bool:
        """Has the incarnation of `victim` whose DLM companion was process `pid` ended (switched
        off, crashed, left)? Only then can it no longer write to shared storage: the ground truth
        of fenced."""
        inc = (pid - DLM_PID_BASE) // 1000
        return len(self.ends.get(victim, [])) > inc

    def fresh_quorum(self, h: StackHost) -> bool:
        """Is node h's votequorum decision the one of the ring Totem installed last (not an older
        ring's, kept while the new ring's sync has not reached votequorum)?"""
        assert self.cluster is not None
        vq = h.stack.services.get(VOTEQUORUM_SERVICE)
        q = getattr(vq, "quorum", None)
        return q is not None and not q.in_sync and q.ring_id == h.totem_ring

    def quorate_partitions_with(self, victim: NodeId, fencer: NodeId | None = None) -> tuple[NodeId, ...]:
        """Live nodes in a real quorate ring that contains `victim` (ground truth, now). A ring some
        of whose members Totem has already put in the `fencer`'s ring is not a partition apart from
        the fencer's: it is dissolving into it, its published view only lags (stack seed 13959)."""
        assert self.cluster is not None
        nodes = self.cluster.nodes
        ours = nodes[fencer].ring_id if fencer is not None else None
        out = []
        for h in self.hosts():
            q = h.stack.quorum
            ring = h.stack.ring_id
            if q is None or not q.quorate or victim not in h.stack.members or h.stack.is_synchronising:
                continue
            real = True
            for m in h.stack.members:
                peer = self.host(m)
                if (peer is None or peer.stack.ring_id != ring or not self.cluster.network.connected(h.me, m)
                        or (m != h.me and nodes[m].ring_id == ours)):  # fmt: skip
                    real = False
                    break
            if real:
                out.append(h.me)
        return tuple(out)

    def synced(self) -> bool:
        """Has every live node completed the sync of the ring it is in?"""
        assert self.cluster is not None
        return all(not h.stack.is_synchronising and h.stack.ring_id == self.cluster.nodes[h.me].ring_id
                   for h in self.hosts())

    def dlm_settled(self) -> bool:
        """Is every live node's DLM side idle (nothing queued, held, stopped or unfenced)?"""
        assert self.cluster is not None
        for h in self.hosts():
            if h.busy() or h.stack.is_synchronising or h.stack.ring_id != self.cluster.nodes[h.me].ring_id:
                return False
        return True


class StackCluster(Cluster):
    """A Cluster whose nodes are StackHosts: records `Emit`s, and runs client actions (`drive`)."""

    def __init__(self, config: TotemConfig, *, seed: int, world: StackWorld, **kwargs: Any) -> None:
        super().__init__(config, seed=seed, factory=world, **kwargs)
        self.world = world
        world.cluster = self
        self._dispatch[Emit] = self._do_emit
        self.listeners.append(self._on_record)

    def _on_record(self, node: NodeId, rec: Record) -> None:
        if isinstance(rec, Crashed | Left):
            self.world.ends.setdefault(node, []).append(rec.t)

    def _do_emit(self, node: Any, a: Emit) -> None:
        self._record(node, a.rec)

    def drive(self, n: NodeId, fn: Callable[[StackHost], object]) -> None:
        """Run a client action on node n's host (nothing when it is down) and carry out its actions."""
        node = self.nodes[n]
        core = node.core
        if not isinstance(core, StackHost):
            return
        try:
            actions = core.act(self.now, lambda: fn(core))
        except Exception:
            self._core_failed(node, "a client action")
            return
        self._apply(node, actions)


ASSEMBLY_STEPS = (DeliverFrame, ForgetAssembly, UseAssemblySet)


class TotemTap:
    """Stands in for the Stack's Totem: tags what goes in, untags what comes out, reports both."""

    def __init__(self, totem: Any, host: StackHost) -> None:
        self.totem = totem
        self.host = host
        self.count = 0
        self._stream: deque[Any] = deque()  # assembly steps and configuration changes, in stream order

    @property
    def next_deadline(self) -> Instant | None:
        d: Instant | None = self.totem.next_deadline
        return d

    @property
    def unpacker(self) -> Any:
        return self.totem.unpacker  # asked for every frame (Stack._fast_frame): not via __getattr__

    @property
    def send_queue_free_bytes(self) -> int:
        free: int = self.totem.send_queue_free_bytes
        return free

    @property
    def state(self) -> Any:
        return self.totem.state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.totem, name)  # everything else the Stack asks of its Totem

    def handle(self, event: TotemEvent) -> list[Any]:
        host = self.host
        if isinstance(event, McastRequested):
            self.count += 1
            tagged = b"s%d.%d.%d|" % (host.me, host.inc, self.count) + event.payload
            queue = 1 if self.totem.queueing_to_second_queue else 0
            actions = self.totem.handle(McastRequested(event.now, tagged, event.guarantee))
            host.out.append(Emit(Sent(event.now, tagged, event.guarantee, queue)))
        else:
            actions = self.totem.handle(event)
        return self._through(actions)

    def assemble(self, step: Any) -> list[Any]:
        """The Stack assembles delivered frames in stream order (Totem.assemble): record and untag
        what they complete there, and the configuration changes that follow them in the stream."""
        stream = self._stream
        while stream:  # normally `step` is first; whatever preceded it is recorded first
            a = stream.popleft()
            if a is step:
                break
            if type(a) is DeliverConfiguration:
                self._record_configuration(a)
        out = self._through(self.totem.assemble(step))
        self._flush()
        return out

    def queue_message(self, now: Instant, payload: bytes) -> list[Any]:
        """The Stack's sends: tagged and reported as every McastRequested (`handle`)."""
        return self.handle(McastRequested(now, payload))

    def take_edges(self, *_args: Any) -> None:
        """The Stack's fused receive path assembles without `assemble`, where deliveries are
        recorded and untagged: declined, so every frame comes through `assemble`. (The tags in
        front of every message would make cpg decline the frame anyway.)"""
        return None

    def _through(self, actions: list[Any]) -> list[Any]:
        """Untag deliveries; record them and configuration changes in the order the Stack meets them
        (a configuration change after a frame the Stack has not assembled yet waits in `_stream`)."""
        host = self.host
        out: list[Any] = []
        record = host.out.append
        stream = self._stream
        for a in actions:
            kind = type(a)
            if kind is Deliver:
                record(a)
                p = a.payload
                out.append(Deliver(a.ring_id, a.sender, p[p.find(TAG_END, 0, 40) + 1:], a.guarantee))
            else:
                if kind is DeliverConfiguration or kind in ASSEMBLY_STEPS:
                    stream.append(a)
                out.append(a)
        self._flush()
        return out

    def _flush(self) -> None:
        stream = self._stream
        while stream and type(stream[0]) is DeliverConfiguration:
            self._record_configuration(stream.popleft())

    def _record_configuration(self, a: DeliverConfiguration) -> None:
        self.host.out.append(a)
        if a.kind is ConfigKind.REGULAR:
            self.host.totem_ring = a.ring_id


@dataclass(slots=True)
class KernelLs:
    state: str  # joining, joined, leaving
    nodes: set[NodeId] = field(default_factory=set)
    control: int = 0
    started_with: tuple[NodeId, ...] = ()


@dataclass(slots=True)
class Client:
    """One local cpg client connection and the groups it is in (pid per group)."""

    handle: Handle
    groups: dict[bytes, int] = field(default_factory=dict)
    pending: set[bytes] = field(default_factory=set)  # join or leave requested, not yet answered
    sent: int = 0


class StackHost:
    """One node incarnation: Stack + DLM companion + kernel model + clients (module docstring)."""

    def __init__(
        self, world: StackWorld, config: TotemConfig, me: NodeId, inc: int, rng: random.Random, ring_seq: int
    ) -> None:
        self.world = world
        self.me = me
        self.inc = inc
        self.rng = random.Random(f"{world.seed}/host{me}/{inc}")
        self.stack = Stack(StackConfig(config, world.quorum, world.services()), me, rng, ring_seq)
        self.tap = TotemTap(self.stack.totem, self)
        self.stack.totem = self.tap  # type: ignore[assignment]
        self._probe()
        settings = DlmSettings(cluster_name="sim", me=me, fencing=world.fencing)
        self.companion = world.companion(settings, inc)
        self.kernel: dict[str, KernelLs] = {}
        self.out: list[Any] = []
        self.now = Instant(0)
        self._timers: list[tuple[Instant, int, Callable[[], None]]] = []
        self._timer_n = 0
        self._outbox: deque[CpgJoin | CpgLeave | CpgMcast] = deque()
        self._retry_at: Instant | None = None
        self._retry_pause = RETRY_FIRST
        self._retry_since: Instant | None = None
        self._request_id = 0
        self._results: dict[int, RequestResult] = {}
        self.clients: list[Client] = []
        self._next_client = 0
        self._pid = 0
        self.ls_failed: dict[tuple[str, NodeId], int] = {}  # (lockspace, node) -> pid of the failed process
        self.dropped_requests = 0
        self._started = False
        self.totem_ring: RingId | None = None  # the last regular configuration Totem delivered

    # --- Core -----------------------------------------------------------------------------------

    @property
    def next_deadline(self) -> Instant | None:
        d = self.stack.next_deadline
        other = self.companion.next_deadline
        if other is not None and (d is None or other < d):
            d = other
        if self._outbox:
            other = self._retry_at
            if other is not None and (d is None or other < d):
                d = other
        if self._timers:
            other = self._timers[0][0]
            if d is None or other < d:
                d = other
        return d

    def handle(self, event: TotemEvent) -> list[Any]:
        self.now = now = event.now
        self.out = []
        timers = self._timers
        if timers and timers[0][0] <= now:
            self._run_timers()
        cd = self.companion.next_deadline
        if cd is not None and cd <= now:
            self._companion(self.companion.deadline(now))
        self._take(self.stack.handle(event))
        if not self._started and type(event) is Started:
            self._started = True
            self._companion(self.companion.start(now, ()))
            if self.world.chatter_per_s > 0:
                self._schedule_chatter()
        if self._outbox:
            self._pump()
        out, self.out = self.out, []
        return out

    def act(self, now: Instant, fn: Callable[[], object]) -> list[Any]:
        """Run a client action at `now` (StackCluster.drive) and return the actions it caused."""
        self.now = now
        self.out = []
        fn()
        self._pump()
        out, self.out = self.out, []
        return out

    # --- client actions (called through act) ------------------------------------------------------

    def cpg_join(self, group: bytes) -> None:
        """A new client process joins `group` (retried while refused with try_again)."""
        self._next_client += 1
        client = Client(Handle(self.inc * CLIENT_HANDLE_BASE + self._next_client))
        self.clients.append(client)
        self._client_join(client, group)

    def cpg_join_more(self, group: bytes) -> None:
        """An existing client (the first one not in `group`) also joins `group`."""
        for c in self.clients:
            if group not in c.groups and group not in c.pending:
                self._client_join(c, group)
                return
        self.cpg_join(group)

    def cpg_leave(self, pick: int) -> None:
        """The pick-th joined (client, group) leaves."""
        joined = [(c, g) for c in self.clients for g in sorted(c.groups) if g not in c.pending]
        if not joined:
            return
        c, g = joined[pick % len(joined)]
        self._client_leave(c, g)

    def cpg_gone(self, pick: int) -> None:
        """The pick-th client's connection closes (its processes leave with PROCDOWN)."""
        live = [c for c in self.clients if c.groups]
        if not live:
            return
        c = live[pick % len(live)]
        err = self._request(ServiceRequest(self.now, CPG_SERVICE, ClientGone(c.handle), 0, False))
        self._emit(ClientOp(self.now, "gone", c.handle, b"", 0, error=err))
        if err is None:
            c.groups.clear()
            self.clients.remove(c)

    def cpg_send(self, pick: int, count: int = 1) -> None:
        """The pick-th joined (client, group) sends `count` messages (refusals are not retried)."""
        joined = [(c, g) for c in self.clients for g in sorted(c.groups) if g not in c.pending]
        if not joined:
            return
        c, g = joined[pick % len(joined)]
        for _ in range(count):
            c.sent += 1
            payload = b"c%d.%d.%d|" % (self.me, c.handle, c.sent) + b"x" * self.rng.randrange(0, 64)
            err = self._request(ServiceRequest(self.now, CPG_SERVICE, CpgMcast(c.handle, g, payload)))
            self._emit(ClientOp(self.now, "mcast", c.handle, g, c.groups[g], payload, err))

    def set_votes(self, nodeid: NodeId, votes: int) -> None:
        self._request(SetVotes(self.now, nodeid, votes), record=f"votes {nodeid}={votes}")

    def set_expected(self, expected: int) -> None:
        self._request(SetExpectedVotes(self.now, expected), record=f"expected {expected}")

    def cancel_wfa(self) -> None:
        self._request(CancelWaitForAll(self.now), record="cancel-wfa")

    def ls_join(self, name: str) -> None:
        if name in self.kernel:
            return
        self.kernel[name] = KernelLs("joining")
        self._emit(LockspaceOp(self.now, "join", name))
        self._companion(self.companion.event(LockspaceOnline(self.now, name)))

    def ls_leave(self, name: str) -> None:
        ls = self.kernel.get(name)
        if ls is None or ls.state != "joined":
            return
        ls.state = "leaving"
        self._emit(LockspaceOp(self.now, "leave", name))
        self._companion(self.companion.event(LockspaceOffline(self.now, name)))

    def fence_ack(self, victim: NodeId) -> None:
        """An admin acknowledges `victim` (who switched it off first: StackWorld.power_off)."""
        if victim == self.me:
            return
        self._companion(self.companion.fence_ack(self.now, victim))

    def victims(self) -> list[NodeId]:
        return self.companion.ctl.fencing.unfenced()

    def busy(self) -> bool:
        """Does the DLM side still have work (for the end-of-run settle)?"""
        if self._outbox or self.victims():
            return True
        if any(ls.state != "joined" for ls in self.kernel.values()):
            return True
        return any(ls.change is not None for ls in self.companion.ctl.lockspaces.values())

    # --- internals: the stack ---------------------------------------------------------------------

    def _take(self, actions: Iterable[Any]) -> None:
        record = self.out.append
        for a in actions:
            if isinstance(a, Notification):
                self._note(a)
            else:
                record(a)

    def _emit(self, rec: StackRecord) -> None:
        self.out.append(Emit(rec))

    def _note(self, a: Notification) -> None:
        now = self.now
        match a:
            case RequestResult():
                self._results[a.request_id] = a
                return
            case MembershipChanged():
                self._emit(ViewPublished(now, a.ring_id, a.members))
            case QuorumChanged():
                s = a.state
                self._emit(QuorumSeen(now, a.ring_id, tuple(s.members), a.members, a.quorate, a.quorum,
                                      a.total_votes, a.expected_votes, s.highest_expected,
                                      s.wait_for_all_status))
            case CpgConfchg():
                self._emit(CpgView(now, a.handles, a.group, tuple((m.nodeid, m.pid) for m in a.members),
                                   tuple((m.nodeid, m.pid, m.reason) for m in a.joined),
                                   tuple((m.nodeid, m.pid, m.reason) for m in a.left)))
                if self.companion.handle in a.handles and a.group.startswith(b"dlm:ls:"):
                    name = a.group[7:].decode()
                    for m in a.left:
                        if m.reason in (CPG_REASON_NODEDOWN, CPG_REASON_PROCDOWN):
                            self.ls_failed[(name, m.nodeid)] = m.pid
            case CpgDeliver():
                self._emit(CpgMsg(now, a.handles, a.group, (a.nodeid, a.pid), a.payload))
            case CpgTotemConfchg():
                self._emit(CpgRing(now, a.handles, a.ring_id, a.members))
            case SyncStarting():
                self._emit(SyncStep(now, "stack", "start", a.ring_id))
            case _:
                return
        self._companion(self.companion.notification(now, a))

    def _request(self, event: LocalRequest, record: str | None = None) -> str | None:
        """Hand a local request to the Stack; return None when accepted, else the error's name."""
        code = self._request_code(event)
        err = None if code is None else code.name.lower()
        if record is not None:
            self._emit(ClientOp(self.now, record, 0, b"", 0, error=err))
        return err

    def _request_code(self, event: LocalRequest) -> ErrorCode | None:
        self._request_id += 1
        rid = self._request_id
        request = event.request if isinstance(event, ServiceRequest) and event.flow_control else None
        if isinstance(request, CpgMcast) and rid % 2:
            # Every other MCAST takes the fused send path, as libcpg's do in the daemon (CpgLib):
            # the simulator's runs judge both.
            error, actions = self.stack.local_mcast(self.now, request.handle, request.group, request.payload)
            self._take(actions)
            return error
        event = replace(event, request_id=rid)
        self._take(self.stack.handle(event))
        result = self._results.pop(rid, None)
        if result is None:
            return ErrorCode.TIMEOUT
        return result.error

    def _probe(self) -> None:
        """Record every service's sync callbacks (and cpg's process list at init and abort)."""
        for svc in self.stack.services.values():
            self._wrap(svc)

    def _wrap(self, svc: Any) -> None:
        host = self
        name = svc.name
        current: list[Any] = [None]
        init, process, activate, abort = svc.sync_init, svc.sync_process, svc.sync_activate, svc.sync_abort
        groups = getattr(svc, "groups", None)

        def snapshot(at: str) -> None:
            if groups is not None:
                state = tuple((g.name, tuple(g.members)) for g in groups())
                host._emit(CpgState(host.now, at, current[0], state))

        def sync_init(ring_id: Any, members: Any, trans: Any) -> Any:
            current[0] = ring_id
            snapshot("init")
            host._emit(SyncStep(host.now, name, "init", ring_id))
            return init(ring_id, members, trans)

        def sync_process() -> Any:
            done, out = process()
            if done:
                host._emit(SyncStep(host.now, name, "done", current[0]))
            return done, out

        def sync_activate() -> Any:
            host._emit(SyncStep(host.now, name, "activate", current[0]))
            return activate()

        def sync_abort() -> None:
            abort()
            host._emit(SyncStep(host.now, name, "abort", current[0]))
            snapshot("abort")

        svc.sync_init, svc.sync_process, svc.sync_activate, svc.sync_abort = (
            sync_init, sync_process, sync_activate, sync_abort)

    # --- internals: the DLM companion --------------------------------------------------------------

    def _companion(self, outputs: list[CompanionOutput]) -> None:
        for o in outputs:
            match o:
                case CpgJoin() | CpgLeave() | CpgMcast():
                    self._outbox.append(o)
                case RunFenceAgent():
                    self._run_agent(o)
                case _:
                    self._kernel(o)

    def _pump(self) -> None:
        """Send the companion's cpg requests in order, one retry timer while refused (dlmd's loop)."""
        while self._outbox:
            if self._retry_at is not None and self.now < self._retry_at:
                return
            req = self._outbox[0]
            code = self._request_code(ServiceRequest(self.now, CPG_SERVICE, req))
            if code in RETRYABLE:
                if self._retry_since is None:
                    self._retry_since = self.now
                if self.now - self._retry_since < RETRY_LIMIT:
                    self._retry_at = Instant(self.now + self._retry_pause)
                    self._retry_pause = Duration(min(RETRY_LONGEST, self._retry_pause * 2))
                    return
            if code is not None:
                self.dropped_requests += 1
            self._outbox.popleft()
            self._retry_at, self._retry_since, self._retry_pause = None, None, RETRY_FIRST

    def _kernel(self, action: Any) -> None:
        match action:
            case ConfigfsMkdir(path) if "/nodes/" in path:
                _, _, ls, _, n = path.split("/")[:5]
                k = self.kernel.get(ls)
                if k is not None:
                    k.nodes.add(NodeId(int(n)))
            case ConfigfsRmdir(path) if "/nodes/" in path:
                _, _, ls, _, n = path.split("/")[:5]
                k = self.kernel.get(ls)
                if k is not None:
                    k.nodes.discard(NodeId(int(n)))
            case SysfsWrite(ls, "control", value):
                k = self.kernel.get(ls)
                if k is None:
                    return
                k.control = int(value.rstrip(b"\0"))
                nodes = tuple(sorted(k.nodes))
                if k.control == 1:
                    q = self.stack.quorum
                    removed = [n for n in k.started_with if n not in k.nodes]
                    failed, off = self.ls_failed, self.world.dlm_process_ended
                    unfenced = tuple(n for n in removed if (ls, n) in failed and not off(n, failed[(ls, n)]))
                    quorate, fresh = q is not None and q.quorate, self.world.fresh_quorum(self)
                    self._emit(KernelControl(self.now, ls, 1, nodes, quorate, unfenced, fresh))
                    k.started_with = nodes
                else:
                    self._emit(KernelControl(self.now, ls, 0, nodes))
            case SysfsWrite(ls, "event_done", value):
                k = self.kernel.get(ls)
                if k is None:
                    return
                ok = value.rstrip(b"\0") == b"0"
                if k.state == "joining":
                    if ok:
                        k.state = "joined"
                        self._emit(LockspaceOp(self.now, "joined", ls))
                    else:
                        del self.kernel[ls]
                        self._emit(LockspaceOp(self.now, "refused", ls))
                elif k.state == "leaving":
                    del self.kernel[ls]
                    self._emit(LockspaceOp(self.now, "left", ls))
            case _:
                pass

    def _run_agent(self, run: RunFenceAgent) -> None:
        victim = run.nodeid
        q = self.stack.quorum
        apart = self.world.quorate_partitions_with(victim, self.me)
        self._emit(FenceRun(self.now, victim, run.attempt, q is not None and q.quorate, self.stack.members,
                            apart, self.world.fresh_quorum(self)))
        mode = "ok" if self.world.quiet else self.world.agent_mode.get(victim, "ok")
        if mode == "hang":
            delay, code = AGENT_TIMEOUT, AGENT_EXIT_TIMEOUT
        else:
            delay, code = Duration(self.rng.randrange(ms(5), ms(60))), (0 if mode == "ok" else 1)

        def exited() -> None:
            if code == 0:
                self.world.power_off(victim, "agent")
            self._emit(FenceExit(self.now, victim, code))
            self._companion(self.companion.event(FenceAgentExited(self.now, victim, code)))

        self._at(Instant(self.now + delay), exited)

    # --- internals: clients and timers --------------------------------------------------------------

    def _client_join(self, client: Client, group: bytes) -> None:
        self._pid += 1
        pid = self.inc * 100000 + self._pid
        client.pending.add(group)

        def attempt(pause: Duration) -> None:
            if client not in self.clients or group in client.groups:
                client.pending.discard(group)
                return
            err = self._request(ServiceRequest(self.now, CPG_SERVICE, CpgJoin(client.handle, group, pid)))
            self._emit(ClientOp(self.now, "join", client.handle, group, pid, error=err))
            if err is None:
                client.groups[group] = pid
                client.pending.discard(group)
            elif err in ("try_again", "busy") and pause < RETRY_LIMIT:
                self._at(Instant(self.now + pause), lambda: attempt(Duration(min(RETRY_LONGEST, pause * 2))))
            else:
                client.pending.discard(group)

        attempt(RETRY_FIRST)

    def _client_leave(self, client: Client, group: bytes) -> None:
        client.pending.add(group)

        def attempt(pause: Duration) -> None:
            if client not in self.clients or group not in client.groups:
                client.pending.discard(group)
                return
            err = self._request(ServiceRequest(self.now, CPG_SERVICE, CpgLeave(client.handle, group)))
            self._emit(ClientOp(self.now, "leave", client.handle, group, client.groups[group], error=err))
            if err is None:
                del client.groups[group]
                client.pending.discard(group)
            elif err in ("try_again", "busy") and pause < RETRY_LIMIT:
                self._at(Instant(self.now + pause), lambda: attempt(Duration(min(RETRY_LONGEST, pause * 2))))
            else:
                client.pending.discard(group)

        attempt(RETRY_FIRST)

    def _schedule_chatter(self) -> None:
        gap = Duration(max(1, int(self.rng.expovariate(self.world.chatter_per_s) * 1e9)))

        def chat() -> None:
            if self.now < self.world.chatter_until:
                self.cpg_send(self.rng.randrange(1 << 16), 1)
                self._schedule_chatter()

        self._at(Instant(self.now + gap), chat)

    def _at(self, t: Instant, fn: Callable[[], None]) -> None:
        self._timer_n += 1
        heapq.heappush(self._timers, (t, self._timer_n, fn))

    def _run_timers(self) -> None:
        while self._timers and self._timers[0][0] <= self.now:
            _, _, fn = heapq.heappop(self._timers)
            fn()


__all__ = ["Emit", "StackCluster", "StackHost", "StackWorld"]
