"""One pure cluster node: Totem plus corosync's service layer (sync v2, votequorum, cmap, cpg, …).

Same shape as the Totem core: `Stack(config, me, rng, ring_seq)`, `handle(event) -> actions`,
`next_deadline`. The runtime and the simulator drive it exactly like Totem.

What it does with Totem's output (corosync exec/main.c):
- `Deliver`: split the group header (corosync-wire.md §4). Group "sync" → the sync state machine;
  group "a" → the service named by the libqb header (`id >> 16`), function `id & 0xffff`.
  Unknown services and malformed messages are dropped and counted in `stats`, never raised.
- `DeliverConfiguration`: every service's `on_configuration` first (corosync's confchg_fn); a
  running synchronisation is aborted; a transitional configuration is remembered; a regular one
  starts sync v2. Only when sync completes is `MembershipChanged` published upward (clients of
  corosync see the new membership only after "Completed service synchronization").
- Sync completion is also told to Totem (`TransAck`, corosync's totempg_trans_ack): messages
  queued before the ring change, a half-sent one among them, wait until then behind the sync
  messages, as corosync's second queue holds them (`waiting_trans_ack`).
- Network actions, `PersistRingSeq` and `StateChanged` pass through in order.

Local requests: a flow-controlled cpg request (join, leave, mcast) is answered try_again from a
configuration change until every service is synchronised, as corosync_sending_allowed does while
sync_in_process (cpg alone would accept them once its own sync is activated, and they would go out
during votequorum's, on the second queue).

Service output: `SendMessage` is wrapped in group "a" and queued with Totem (agreed order);
notifications pass through as actions. Local requests arrive as events (`SetExpectedVotes`,
`SetVotes`, `CancelWaitForAll`, generic `ServiceRequest`) and are answered with `RequestResult`.

Deviation: on `LeaveRequested` with allow_downscale, the LEAVING NODEINFO is queued before the
leave JOIN, but Totem may leave before it is delivered (corosync flushes it first).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from cmanlk.errors import ErrorCode, MalformedPacket, QueueFull, UsageError
from cmanlk.services import wire as svcwire
from cmanlk.services.base import (
    CPG_SERVICE,
    LocalRequestHandler,
    Notification,
    SendMessage,
    Service,
    ServiceFactory,
    ServiceOutput,
    TimedService,
    takes_part_in_sync,
)
from cmanlk.services.cmap.service import CmapSync
from cmanlk.services.cpg.service import CpgJoin, CpgLeave, CpgMcast, CpgService, Handle
from cmanlk.services.sync import SendSync, Sync, SyncCompleted, SyncOutput
from cmanlk.services.votequorum.policy import QuorumConfig, QuorumState
from cmanlk.services.votequorum.service import VotequorumService
from cmanlk.totem.actions import (
    Action as TotemAction,
)
from cmanlk.totem.actions import (
    ConfigKind,
    Deliver,
    DeliverConfiguration,
    DeliverFrame,
    ForgetAssembly,
    MembState,
    Multicast,
    PersistRingSeq,
    StateChanged,
    Unicast,
    UseAssemblySet,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.core import Totem
from cmanlk.totem.events import Event as TotemEvent
from cmanlk.totem.events import LeaveRequested, TransAck
from cmanlk.totem.totempg import MESSAGE_SIZE_MAX, QUEUE_ENTRY_COST_BYTES, frame_layout
from cmanlk.types import Instant, NodeId, RingId

# One event can cascade (a delivery makes a service send, which Totem may deliver at once when
# alone). The bound turns a feedback loop bug into a counted stop instead of a hang.
MAX_ACTIONS_PER_EVENT = 100_000
_OWN_REQUEST = -1  # the request id of local_mcast's fallback through `handle`

LOCAL_REQUEST_ROOM_BYTES = MESSAGE_SIZE_MAX + QUEUE_ENTRY_COST_BYTES + MESSAGE_SIZE_MAX // 2
"""Room Totem's send queue must have for a flow-controlled local request to be taken; short of
it the request is answered try_again, before any service state changes, and the client retries
once the token has drained the queue. The first part is the largest message one request sends
(a cpg message, a votequorum or cfg request: one message of at most MESSAGE_SIZE_MAX); the
512 KiB on top stay for what is never refused and never retried — sync messages, cpg's JOINLIST,
the leaves of a departed client. corosync does the same: corosync_sending_allowed() reserves the
request's size in totempg's queue (totempg_groups_joined_reserve) and answers CS_ERR_TRY_AGAIN
when it cannot. Without it an accepted message could meet a full queue after a ring change
(cpg's own window restarts there while Totem's queue does not) and be dropped."""


# --- events (local requests; each carries `now` and a caller-chosen request id) -----------------


@dataclass(frozen=True, slots=True)
class SetExpectedVotes:
    """corosync-quorumtool -e: set expected votes cluster-wide."""

    now: Instant
    expected_votes: int
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class SetVotes:
    """corosync-quorumtool -v: set a node's votes cluster-wide."""

    now: Instant
    nodeid: NodeId
    votes: int
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class CancelWaitForAll:
    """corosync-quorumtool -a: stop waiting for all nodes."""

    now: Instant
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """A local client's request for service `service_id` (e.g. cpg); `request` is service-defined.

    `flow_control`: refuse it with try_again while Totem's send queue is short of room (corosync's
    CS_LIB_FLOW_CONTROL_REQUIRED). False only for what must go out however full the queue is and
    that nobody could retry: the leaves of a client that went away.
    """

    now: Instant
    service_id: int
    request: object
    request_id: int = 0
    flow_control: bool = True


Event = TotemEvent | SetExpectedVotes | SetVotes | CancelWaitForAll | ServiceRequest


# --- notifications the Stack itself adds ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MembershipChanged(Notification):
    """A new membership, published after sync completed. `joined`/`left` are relative to the
    previous published membership; `transitional` are the members that came from it."""

    ring_id: RingId
    members: tuple[NodeId, ...]
    joined: tuple[NodeId, ...]
    left: tuple[NodeId, ...]
    transitional: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class SyncStarting(Notification):
    """A sync for the regular configuration `ring_id` begins (published before its first service's
    init): the cluster view a listener holds is of an older ring until that ring's notifications."""

    ring_id: RingId
    members: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class RequestResult(Notification):
    """Answer to a local request: `error` None on success, else the refusal's code."""

    request_id: int
    error: ErrorCode | None = None
    message: str = ""


Action = Unicast | Multicast | PersistRingSeq | StateChanged | Notification


def default_services(
    quorum: QuorumConfig, config_version: int | None = None, extra: Iterable[ServiceFactory] = ()
) -> tuple[ServiceFactory, ...]:
    """The service factories of a standard node: cmap sync participant, votequorum, then `extra`
    (cpg: `lambda me: CpgService(me, ...)`)."""

    def cmap(me: NodeId) -> Service:
        return CmapSync(me, config_version)

    def votequorum(me: NodeId) -> Service:
        return VotequorumService(me, quorum)

    return (cmap, votequorum, *extra)


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Totem settings, quorum settings and the services to register (built once per node)."""

    totem: TotemConfig
    quorum: QuorumConfig
    services: tuple[ServiceFactory, ...] | None = None  # None: default_services(quorum, config_version)
    config_version: int | None = None


class Stack:
    """A whole node: Totem + sync v2 + services. See the module docstring."""

    def __init__(self, config: StackConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        """Raises ConfigError when a service refuses its configuration, ValueError on duplicate ids."""
        self.config = config
        self.me = me
        self.totem = Totem(config.totem, me, rng, ring_seq)
        self.totem.hold_for_sync()  # messages queued before a ring change wait for its sync (TransAck)
        factories = config.services
        if factories is None:
            factories = default_services(config.quorum, config.config_version)
        self.services: dict[int, Service] = {}
        for factory in factories:
            svc = factory(me)
            if svc.service_id in self.services:
                raise ValueError(f"two services with id {svc.service_id}")
            self.services[svc.service_id] = svc
        # isinstance() against a runtime-checkable Protocol costs microseconds: decided once here,
        # not for every datagram (handle, next_deadline).
        self._timed = tuple(s for s in self.services.values() if isinstance(s, TimedService))
        self._local_handlers = {i: s for i, s in self.services.items() if isinstance(s, LocalRequestHandler)}
        cpg = self.services.get(CPG_SERVICE)
        self._cpg = cpg if isinstance(cpg, CpgService) else None  # the fused receive path's (_fast_frame)
        # Services without sync callbacks (cfg) are not in the sync list, as in corosync.
        self.sync = Sync(me, [s for s in self.services.values() if takes_part_in_sync(s)])
        self.ring_id: RingId | None = None
        self.members: tuple[NodeId, ...] = ()
        self.stats: dict[str, int] = {}
        self._now = Instant(0)
        # corosync's sync_in_process: from a configuration change until every service is synchronised
        # (and before the first synchronisation), flow-controlled cpg requests are answered try_again.
        self._sync_in_process = True

    # --- the only way in -----------------------------------------------------------------------

    @property
    def next_deadline(self) -> Instant | None:
        """The earliest of Totem's and the services' deadlines."""
        d = self.totem.next_deadline
        for s in self._timed:
            sd = s.next_deadline
            if sd is not None and (d is None or sd < d):
                d = sd
        return d

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order.

        Local requests never raise: a refusal comes back as a RequestResult with its error code
        (try_again, before anything changes, while Totem's send queue is short of
        LOCAL_REQUEST_ROOM_BYTES). McastRequested is passed to Totem unchanged (it raises
        QueueFull when Totem's queue is full, TooLarge past the maximum size).
        """
        self._now = event.now
        out: list[Action] = []
        pending: deque[TotemAction] = deque()
        outputs: list[SyncOutput] = []
        for svc in self._timed:
            outputs += svc.advance(event.now)
        match event:
            case SetExpectedVotes() | SetVotes() | CancelWaitForAll() | ServiceRequest():
                outputs += self._local_request(event, out)
            case LeaveRequested():
                vq = self._votequorum()
                # The LEAVING NODEINFO is queued before the leave JOIN (votequorum_exec_exit_fn).
                self._take_outputs(vq.leaving() if vq else [], pending, out)
                pending.extend(self.totem.handle(event))
            case _:
                pending.extend(self.totem.handle(event))
        self._run(pending, outputs, out)
        return out

    def local_mcast(
        self, now: Instant, handle: Handle, group: bytes, payload: bytes
    ) -> tuple[ErrorCode | None, list[Action]]:
        """The fused send path: `handle(ServiceRequest(now, CPG_SERVICE, CpgMcast(handle, group,
        payload)))` without the request objects — (the refusal's code or None, the actions).

        The same steps in the same order: the timed services advance, the request is refused
        try_again while a sync runs or Totem's queue is short of LOCAL_REQUEST_ROOM_BYTES (counted
        as there), cpg checks it and counts it in its send window (CpgService.local_mcast_message,
        which builds group "a"'s message in one pack), Totem queues it (Totem.queue_message) and
        what that gives is run as `handle` runs it. The actions are `handle`'s but its
        RequestResult, whose code is returned instead. Without a cpg service, `handle` itself.
        """
        cpg = self._cpg
        if cpg is None:
            request = ServiceRequest(now, CPG_SERVICE, CpgMcast(handle, group, payload), _OWN_REQUEST)
            actions = self.handle(request)
            answers = [a for a in actions if type(a) is RequestResult and a.request_id == _OWN_REQUEST]
            return answers[0].error, [a for a in actions if a not in answers]
        self._now = now
        outputs: list[SyncOutput] = []
        for svc in self._timed:
            outputs += svc.advance(now)
        error: ErrorCode | None = None
        message: bytes | None = None
        try:
            self._refuse_for_totem_queue(cpg_request=True)
            message = cpg.local_mcast_message(handle, group, payload)
        except UsageError as e:
            error = e.code
        if not outputs and message is None:
            return error, []
        out: list[Action] = []
        pending: deque[TotemAction] = deque()
        self._take_outputs(outputs, pending, out)
        if message is not None:
            self._mcast(message, pending)
        if pending:
            self._run(pending, [], out)
        return error, out

    # --- status --------------------------------------------------------------------------------

    @property
    def state(self) -> MembState:
        """Totem's membership state."""
        return self.totem.state

    @property
    def quorum(self) -> QuorumState | None:
        """The votequorum decision, None when votequorum is not registered."""
        vq = self._votequorum()
        return vq.state if vq is not None else None

    @property
    def is_synchronising(self) -> bool:
        """Is sync v2 running for a new configuration?"""
        return self.sync.is_synchronising

    # --- internals -----------------------------------------------------------------------------

    def _run(self, pending: deque[TotemAction], outputs: list[SyncOutput], out: list[Action]) -> None:
        self._take_outputs(outputs, pending, out)
        steps = 0
        while pending:
            steps += 1
            if steps > MAX_ACTIONS_PER_EVENT:
                self._count("action_cascade_bound")
                break
            action = pending.popleft()
            match action:
                case Deliver():
                    self._take_outputs(self._on_deliver(action), pending, out)
                case DeliverConfiguration():
                    self._take_outputs(self._on_configuration(action), pending, out)
                case DeliverFrame():
                    # Assembled here, in stream order: a TransAck given for the message before it
                    # has switched the assembly set already (corosync assembles in its callback).
                    if not self._fast_frame(action, pending, out):
                        pending.extendleft(reversed(self.totem.assemble(action)))
                case ForgetAssembly() | UseAssemblySet():
                    pending.extendleft(reversed(self.totem.assemble(action)))
                case _:
                    out.append(action)
            if not pending:
                self._take_outputs(self.sync.poll(), pending, out)

    def _take_outputs(
        self, outputs: Iterable[SyncOutput], pending: deque[TotemAction], out: list[Action]
    ) -> None:
        for o in outputs:
            if isinstance(o, SendMessage):
                self._mcast(svcwire.encode_group_message(svcwire.GROUP_A, o.message), pending)
            elif isinstance(o, SendSync):
                self._mcast(svcwire.encode_group_message(svcwire.GROUP_SYNC, o.message), pending)
            elif isinstance(o, SyncCompleted):
                self._sync_in_process = False
                out.append(self._publish(o))
                # corosync_sync_completed → totempg_trans_ack: what waited may be sent now.
                pending.extend(self.totem.handle(TransAck(self._now, o.ring_id)))
            else:
                out.append(o)

    def _mcast(self, payload: bytes, pending: deque[TotemAction]) -> None:
        try:
            pending.extend(self.totem.queue_message(self._now, payload))
        except UsageError as e:
            # The service message is lost, as when corosync's totem_mcast fails; counted. Local
            # requests do not get here (LOCAL_REQUEST_ROOM_BYTES): only what nobody can retry.
            self._count(f"send_{e.code.wire}")

    def _fast_frame(self, frame_action: DeliverFrame, pending: deque[TotemAction], out: list[Action]) -> bool:
        """The fused receive path for the common case; False: take the general one, nothing changed.

        A frame whose continuation is the expected one (Unpacker.take_edges: nothing half assembled
        and none announced, or the half-assembled head it continues) gives the same actions as
        assembling it and handling each message in turn (Totem.assemble, then _on_deliver for each
        Deliver): the message its first piece completes, if any, goes the general way at once; a
        last piece that starts a message is kept in the assembly set; the whole pieces between go
        to CpgService.deliver_frame, which reads group "a" cpg MCASTs from the frame's bytes
        without the Deliver, the decoded headers and the decoded MCAST of each one, and which
        declines (a sync running, another kind of piece, anything malformed) before it changes
        anything: those pieces are then Delivers at the head of `pending`, as assembling gives.
        """
        cpg = self._cpg
        frame = frame_action.frame
        if cpg is None or type(frame) is not bytes:
            return False
        try:
            fragmented, continuation, start, lens = frame_layout(frame)
        except MalformedPacket:
            return False  # the general path counts it
        totem = self.totem
        sender = frame_action.sender
        edges = totem.take_edges(sender, frame, fragmented, continuation, start, lens)
        if edges is None:
            return False
        first, off, whole = edges
        if first is not None:
            head = Deliver(frame_action.ring_id, sender, first, frame_action.guarantee)
            self._take_outputs(self._on_deliver(head), pending, out)
        if not whole:
            return True
        notes = cpg.deliver_frame(sender, frame, off, whole)
        if notes is not None:
            out += notes
            return True
        ring_id, guarantee = frame_action.ring_id, frame_action.guarantee
        delivers: list[TotemAction] = []
        for n in whole:
            delivers.append(Deliver(ring_id, sender, frame[off : off + n], guarantee))
            off += n
        pending.extendleft(reversed(delivers))
        return True

    def _on_deliver(self, action: Deliver) -> list[SyncOutput]:
        try:
            groups, body = svcwire.decode_group_message(action.payload)
            if svcwire.GROUP_SYNC in groups:
                return self.sync.on_message(action.sender, body)
            if svcwire.GROUP_A not in groups:
                self._count("group_unknown")
                return []
            header = svcwire.decode_request_header(body)
            service_id, function = svcwire.split_message_id(header.id)
            svc = self.services.get(service_id)
            if svc is None:
                self._count(f"service_{service_id}_unknown")
                return []
            return list(svc.on_message(action.sender, function, body))
        except MalformedPacket as e:
            self._count(e.reason)
            return []

    def _on_configuration(self, change: DeliverConfiguration) -> list[SyncOutput]:
        outputs: list[SyncOutput] = []
        for svc in self.services.values():
            outputs += svc.on_configuration(change)
        self._sync_in_process = True
        self.sync.abort()
        if change.kind is ConfigKind.TRANSITIONAL:
            self.sync.save_transitional(change.members)
        else:
            outputs.append(SyncStarting(change.ring_id, change.members))
            outputs += self.sync.start(change.ring_id, change.members)
        return outputs

    def _publish(self, done: SyncCompleted) -> MembershipChanged:
        old = set(self.members)
        new = set(done.members)
        change = MembershipChanged(
            ring_id=done.ring_id,
            members=done.members,
            joined=tuple(sorted(new - old)),
            left=tuple(sorted(old - new)),
            transitional=done.transitional_members,
        )
        self.ring_id = done.ring_id
        self.members = done.members
        return change

    def _local_request(
        self, event: SetExpectedVotes | SetVotes | CancelWaitForAll | ServiceRequest, out: list[Action]
    ) -> list[SyncOutput]:
        try:
            self._maybe_refuse_for_totem_queue(event)
            outputs = self._request_outputs(event)
        except UsageError as e:
            out.append(RequestResult(event.request_id, e.code, str(e)))
            return []
        out.append(RequestResult(event.request_id))
        return list(outputs)

    def _maybe_refuse_for_totem_queue(
        self, event: SetExpectedVotes | SetVotes | CancelWaitForAll | ServiceRequest
    ) -> None:
        if isinstance(event, ServiceRequest) and not event.flow_control:
            return
        self._refuse_for_totem_queue(
            isinstance(event, ServiceRequest) and isinstance(event.request, CpgJoin | CpgLeave | CpgMcast)
        )

    def _refuse_for_totem_queue(self, cpg_request: bool) -> None:
        """Refuse a flow-controlled local request, counted: a cpg one while a sync runs (try_again),
        any while Totem's send queue is short of LOCAL_REQUEST_ROOM_BYTES (QueueFull)."""
        if cpg_request and self._sync_in_process:
            self._count("request_during_sync")
            raise UsageError(ErrorCode.TRY_AGAIN, "cluster membership is being synchronised; retry")
        free = self.totem.send_queue_free_bytes
        if free < LOCAL_REQUEST_ROOM_BYTES:
            self._count("request_totem_queue_full")
            raise QueueFull(
                f"totem's send queue has {free} bytes free, a request needs {LOCAL_REQUEST_ROOM_BYTES}; "
                "retry after the token"
            )

    def _request_outputs(
        self, event: SetExpectedVotes | SetVotes | CancelWaitForAll | ServiceRequest
    ) -> list[ServiceOutput]:
        if isinstance(event, ServiceRequest):
            svc = self._local_handlers.get(event.service_id)
            if svc is None:
                raise UsageError(ErrorCode.NO_SERVICE, f"service {event.service_id} takes no local requests")
            return svc.on_local_request(event.request)
        vq = self._votequorum()
        if vq is None:
            raise UsageError(ErrorCode.NO_SERVICE, "votequorum is not registered")
        if isinstance(event, SetExpectedVotes):
            return vq.request_set_expected(event.expected_votes)
        if isinstance(event, SetVotes):
            return vq.request_set_votes(event.nodeid, event.votes)
        return vq.request_cancel_wait_for_all()

    def _votequorum(self) -> VotequorumService | None:
        svc = self.services.get(VotequorumService.service_id)
        return svc if isinstance(svc, VotequorumService) else None

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1
