"""Closed process groups: corosync 3.1.7's cpg service (service 2), wire-compatible (exec/cpg.c).

corosync-wire.md §9. A process is (nodeid, pid); processes join named groups (≤ 128 bytes) and
multicast to them in agreed order; every member sees the same sequence of messages and of
configuration changes (virtual synchrony, Birman's model that Totem's EVS delivers on).

Local processes reach us through a connection `Handle` chosen by the IPC server; one handle may
join several groups (corosync: one group per connection), each with a pid. Local requests are
the events `CpgJoin`, `CpgLeave`, `CpgMcast`, `ClientGone`, routed by the Stack's
`ServiceRequest(service_id=2)`; they are validated here like libcpg's handlers and multicast as
PROCJOIN / PROCLEAVE / MCAST, so every node applies them at the same point of the total order.

Per-handle state machine (cpg.c's cpd_state table):
    join  : none → JOIN_STARTED (own PROCJOIN delivered) → JOIN_COMPLETED
    leave : JOIN_COMPLETED → LEAVE_STARTED (own PROCLEAVE delivered) → gone
    mcast : allowed in JOIN_STARTED and JOIN_COMPLETED; delivered to JOIN_COMPLETED and
            LEAVE_STARTED handles, and only when the sender node has a process in the group.

Synchronisation after each regular configuration (sync v2, `sync_*`):
- sync_init: the downlist is the old members (of the last synchronised ring) missing from the
  transitional configuration;
- sync_process: multicast DOWNLIST, then JOINLIST (our local processes; none when we have none);
- sync_activate (after the barrier): processes of downlist nodes are removed, one confchg per
  group with reason 3 (node down); processes named in other nodes' JOINLISTs that we did not
  know join with reason 4 (node up); remote processes named by no JOINLIST are removed with
  reason 5 (process down; they left while we were apart); then the totem confchg (ring id and
  members) goes to every handle; then the client messages deferred during the sync are applied.

Deviations from corosync, with reasons:
- corosync 3 applies its *own* downlist (received DOWNLISTs are only logged; the downlist
  master choice of corosync 2 is gone). We do the same and, rather than ignore received ones,
  compare them: a peer with the same old membership must name the same nodes, else we count
  `downlist_mismatch` (a cheap virtual-synchrony canary). corosync-wire.md's "lowest sender"
  wording describes corosync 2.
- A PROCLEAVE for a process we do not know produces no confchg (corosync notifies a "left"
  process that was never a member).
- A client that goes away before its own PROCJOIN is delivered (JOIN_STARTED): corosync's
  cpg_lib_exit_fn sends the PROCLEAVE at once. When the PROCJOIN was still in totem's first queue
  at a ring change and the client goes during the sync, the PROCLEAVE goes out from the second
  queue first (new_message_queue_trans, FIFO per queue only): applied before the PROCJOIN it finds
  nothing, and every member then keeps the gone process for good (cmanlk-sim --stack seed 1711).
  We send that PROCLEAVE when our own PROCJOIN is delivered (`_leave_after_join`), and refuse a
  new join of that pid in that group with try_again until then.
- corosync's cleanup of a local process after its own LEAVE loops over the joined list (a bug:
  the handle never returns to UNJOINED); we unjoin the handle once its PROCLEAVE is delivered.
- corosync pauses IPC during sync; we refuse join/leave/mcast with `try_again` while cpg
  synchronises, and the Stack does until every service has (libcpg callers retry
  CS_ERR_TRY_AGAIN the same way).
- corosync's totemsrp holds application messages behind the sync messages until sync completes
  (two send queues, waiting_trans_ack), and so does our Totem now (the Stack's TransAck); the
  Stack refuses cpg requests with try_again until every service is synchronised. What can still
  arrive during a sync is a client's PROCLEAVE queued then (a client that went away), or a
  message of a node that did not hold its queue (cmanlkd before the two queues). We defer such
  PROCJOIN/PROCLEAVE/MCAST and apply them, in agreed order, after sync_activate (`on_message`):
  the same effect for every cmanlkd member (a corosync member applies them at once).
  When that sync is aborted they are applied at the next sync_init, under the last activated
  configuration (`sync_init`).
- PARTIAL_MCAST (libcpg's fragments of messages larger than its IPC chunk) is reassembled here
  and delivered whole, since our clients get whole messages. We never send it: our MCAST carries
  up to MAX_MESSAGE_BYTES and totempg fragments it.
- Flow control: corosync reserves totem queue space per IPC message. We count our own MCAST
  bytes multicast but not yet delivered back to us (self-delivery is guaranteed by EVS while we
  live) and refuse with `try_again` past MAX_IN_FLIGHT_BYTES, below totem's 4 MiB queue bound,
  so a client is told to wait instead of the Stack dropping its message. The 8-byte
  "connection pointer" of MCAST (opaque to receivers) carries our send sequence, so a delivery
  settles every older send. A new ring settles everything (what was not delivered is still in
  totem's queue and goes out on the new ring).
- Byte-swapped peers are not supported (svcwire's module docstring).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import NewType

from cmanlk.errors import ErrorCode, MalformedPacket, QueueFull, TooLarge, UsageError
from cmanlk.services.base import CPG_SERVICE, Notification, SendMessage, ServiceOutput
from cmanlk.services.cpg.wire import (
    CPG_MAX_NAME_LENGTH,
    MCAST_HEADER_SIZE,
    MESSAGE_REQ_EXEC_CPG_DOWNLIST,
    MESSAGE_REQ_EXEC_CPG_DOWNLIST_OLD,
    MESSAGE_REQ_EXEC_CPG_JOINLIST,
    MESSAGE_REQ_EXEC_CPG_MCAST,
    MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST,
    MESSAGE_REQ_EXEC_CPG_PROCJOIN,
    MESSAGE_REQ_EXEC_CPG_PROCLEAVE,
    PARTIAL_FIRST,
    PARTIAL_LAST,
    PROCESSOR_COUNT_MAX,
    REASON_JOIN,
    REASON_LEAVE,
    REASON_NODEDOWN,
    REASON_NODEUP,
    REASON_PROCDOWN,
    REASON_UNDEFINED,
    Downlist,
    PartialMcast,
    decode_downlist,
    decode_joinlist,
    decode_mcast,
    decode_partial_mcast,
    decode_procjoin,
    encode_downlist,
    encode_joinlist,
    encode_mcast,
    encode_procjoin,
)
from cmanlk.totem.actions import DeliverConfiguration
from cmanlk.totem.totempg import MESSAGE_SIZE_MAX, QUEUE_ENTRY_COST_BYTES
from cmanlk.types import NO_RING, NodeId, RingId

Handle = NewType("Handle", int)
"""A local client connection (the IPC server's id for it); never reused while the daemon runs."""
# --- bounds ---------------------------------------------------------------------------------------

GROUP_HEADER_BYTES = 5  # svcwire's one-group header for "a", in front of every service message
MAX_MESSAGE_BYTES = MESSAGE_SIZE_MAX - MCAST_HEADER_SIZE - GROUP_HEADER_BYTES
"""Largest payload of one cpg_mcast: totempg's 1 MiB message less the MCAST and group headers."""
MAX_IN_FLIGHT_BYTES = 2 * MESSAGE_SIZE_MAX
"""Own MCAST bytes sent and not yet delivered back before we answer try_again: half of totem's
4 MiB send queue, so votequorum/sync messages behind a burst still find room."""
IN_FLIGHT_ENTRY_COST_BYTES = MCAST_HEADER_SIZE + GROUP_HEADER_BYTES + QUEUE_ENTRY_COST_BYTES
"""Charged per message on top of its payload: what it costs in totempg's queue besides the payload
(the headers and totempg's per-entry charge). Counting payload alone let a burst of tiny messages
past totem's queue bound (the Stack now answers try_again first: stack.LOCAL_REQUEST_ROOM_BYTES)."""
MAX_LOCAL_PROCESSES = 4096
"""Local (handle, group) memberships; 4096 × 144 bytes keeps our JOINLIST well under 1 MiB."""
MAX_PROCESSES = 65536
"""Processes known cluster-wide (a peer's PROCJOIN/JOINLIST grows this); past it joins are
dropped and counted — the same decision on every node, since all see the same order."""
MAX_JOINLIST_ENTRIES_PER_SYNC = MAX_PROCESSES
"""JOINLIST entries stored during one synchronisation."""
MAX_PARTIAL_ASSEMBLIES = 64
"""PARTIAL_MCAST messages being reassembled at once, cluster-wide."""
MAX_PARTIAL_BYTES = 16 * MESSAGE_SIZE_MAX
"""Bytes held by all PARTIAL_MCAST reassemblies together."""


# --- local requests (the `request` of a Stack ServiceRequest for service 2) -----------------------


MAX_DEFERRED_MESSAGES = 65_536
"""Client-originated messages (PROCJOIN/PROCLEAVE/MCAST/PARTIAL_MCAST) deferred while a ring is
being synchronised; past it (or MAX_DEFERRED_BYTES) they are applied at once and counted."""
MAX_DEFERRED_BYTES = 64 * MESSAGE_SIZE_MAX
"""Bytes of deferred messages. Clients get try_again during a sync, so what is delivered then was
queued before the ring changed: at most every member's totem send queue (4 MiB each)."""


@dataclass(frozen=True, slots=True)
class CpgJoin:
    """Join `group` as process `pid` over connection `handle` (cpg_join).

    `initial_totem_conf`: also send this handle the totem confchg once its join completes
    (CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF).
    """

    handle: Handle
    group: bytes
    pid: int
    initial_totem_conf: bool = False


@dataclass(frozen=True, slots=True)
class CpgLeave:
    """Leave `group` (cpg_leave)."""

    handle: Handle
    group: bytes


@dataclass(frozen=True, slots=True)
class CpgMcast:
    """Multicast `payload` to the members of `group` in agreed order (cpg_mcast_joined)."""

    handle: Handle
    group: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class ClientGone:
    """Connection `handle` closed: its processes leave every group with reason 5 (process down)."""

    handle: Handle


CpgRequest = CpgJoin | CpgLeave | CpgMcast | ClientGone


# --- notifications (addressed to local handles) ---------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class CpgAddress:
    """A process in a confchg list; `reason` is REASON_* in left/joined lists, 0 in members."""

    nodeid: NodeId
    pid: int
    reason: int = REASON_UNDEFINED


@dataclass(frozen=True, slots=True)
class CpgDeliver(Notification):
    """A message of `group` from process (nodeid, pid), for each of `handles`."""

    handles: tuple[Handle, ...]
    group: bytes
    nodeid: NodeId
    pid: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CpgConfchg(Notification):
    """The membership of `group` changed (cpg's confchg callback), for each of `handles`.

    `members` is the new membership in (nodeid, pid) order; `left`/`joined` carry reasons.
    """

    handles: tuple[Handle, ...]
    group: bytes
    members: tuple[CpgAddress, ...]
    left: tuple[CpgAddress, ...]
    joined: tuple[CpgAddress, ...]


@dataclass(frozen=True, slots=True)
class CpgTotemConfchg(Notification):
    """The totem membership after a synchronisation (cpg's totem confchg callback)."""

    handles: tuple[Handle, ...]
    ring_id: RingId
    members: tuple[NodeId, ...]


# --- the service ------------------------------------------------------------------------------------


class LocalState(enum.Enum):
    JOIN_STARTED = "JOIN_STARTED"
    JOIN_COMPLETED = "JOIN_COMPLETED"
    LEAVE_STARTED = "LEAVE_STARTED"


@dataclass(slots=True)
class LocalProcess:
    """One local membership: connection `handle` is process `pid` in `group`."""

    handle: Handle
    group: bytes
    pid: int
    state: LocalState
    initial_totem_conf: bool = False


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group and its members in (nodeid, pid) order (cpg_membership_get, `cmanlk-tool groups`)."""

    name: bytes
    members: tuple[tuple[NodeId, int], ...]


@dataclass(slots=True)
class _Process:
    nodeid: NodeId
    pid: int
    group: bytes


@dataclass(slots=True)
class _Assembly:
    msglen: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class CpgService:
    """Service 2 for node `me` (implements Service and LocalRequestHandler of cmanlk.services.base)."""

    service_id = CPG_SERVICE
    name = "cpg"

    def __init__(self, me: NodeId) -> None:
        self.me = me
        self._processes: list[_Process] = []  # corosync's process_info_list, (nodeid, pid) order
        self.generation = 0
        """Grows with every change of the process list (what `groups()` shows): the runtime's
        status snapshot is rebuilt when it moves."""
        self._local: dict[tuple[Handle, bytes], LocalProcess] = {}
        # (group, pid) of local processes whose client went away before their own PROCJOIN was
        # delivered: the PROCLEAVE goes out once it is (module docstring).
        self._leave_after_join: set[tuple[bytes, int]] = set()
        self._old_members: tuple[NodeId, ...] = ()
        self._active_ring_id = NO_RING  # the ring whose members are _old_members
        self._members: tuple[NodeId, ...] = ()
        self._ring_id: RingId = NO_RING
        self._downlist: tuple[NodeId, ...] = ()
        self._joinlists: list[tuple[NodeId, int, bytes]] = []
        self._syncing = False
        # Client-originated messages delivered while synchronising, applied after sync_activate
        # (on_message): (sender, function, message) in agreed order, and their total size.
        self._deferred: list[tuple[NodeId, int, bytes]] = []
        self._deferred_bytes = 0
        self._synced_once = False
        self._sync_step = 0  # 0: send DOWNLIST next, 1: send JOINLIST next, 2: done
        self._send_seq = 0
        self._in_flight: deque[tuple[int, int]] = deque()  # (send seq, payload bytes), ascending
        self._in_flight_bytes = 0
        self._partials: dict[tuple[NodeId, int, bytes, int], _Assembly] = {}
        self._partial_bytes = 0
        self.stats: dict[str, int] = {}

    # --- Service: configuration and sync ---------------------------------------------------------

    def on_configuration(self, change: DeliverConfiguration) -> list[ServiceOutput]:
        """cpg has no confchg handler in corosync 3; membership comes through sync_init."""
        return []

    def sync_init(
        self, ring_id: RingId, members: tuple[NodeId, ...], transitional_members: tuple[NodeId, ...]
    ) -> list[ServiceOutput]:
        """Compute our downlist: old members missing from the transitional configuration."""
        # Messages deferred during a sync that was aborted are applied now, before anything of
        # this ring, under the configuration our clients were last told of. Clients never see the
        # aborted ring, as in corosync (its totem confchg goes out only at activation). They were
        # delivered in that ring only, so they cannot wait for this one: members of this ring that
        # were not in it never get them (bench.chaos seed 11: ring 1.64 of nodes 1 and 4 aborted,
        # 1.68 added node 3; delivered after 1.68's confchg they showed as messages of 1.68 that
        # node 3 lacked). Every member that was in the aborted ring applies the same messages at
        # the same point with the process list of its last activated ring. A message whose sender
        # is not in that configuration is dropped, PROCJOINs included (seed 11 again: node 2's
        # PROCJOIN and messages from an aborted ring were applied under node 4's view (1,3,4));
        # the sender learns nothing different: the next sync's JOINLISTs reconcile the process lists.
        out = self._apply_deferred(frozenset(self._old_members))
        self._syncing = True
        self._sync_step = 0
        self._ring_id = ring_id
        self._members = members
        self._joinlists.clear()
        kept = set(transitional_members)
        self._downlist = tuple(n for n in self._old_members if n not in kept)
        # Totem's queue survives a ring change: what we sent is delivered on the new ring or was
        # already; stop throttling on it (module docstring, "Flow control").
        self._in_flight.clear()
        self._in_flight_bytes = 0
        return out

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        """Multicast DOWNLIST then (when we have local processes) JOINLIST; done at once."""
        out: list[ServiceOutput] = []
        if self._sync_step == 0:
            message = encode_downlist(len(self._old_members), self._downlist[:PROCESSOR_COUNT_MAX])
            out.append(SendMessage(MESSAGE_REQ_EXEC_CPG_DOWNLIST, message))
            self._sync_step = 1
        if self._sync_step == 1:
            entries = [(p.pid, p.group) for p in self._processes if p.nodeid == self.me]
            if entries:
                out.append(SendMessage(MESSAGE_REQ_EXEC_CPG_JOINLIST, encode_joinlist(entries)))
            self._sync_step = 2
        return True, out

    def sync_activate(self) -> list[ServiceOutput]:
        """Apply the downlist, merge the joinlists, remove zombies, then the totem confchg."""
        self._old_members = self._members
        self._active_ring_id = self._ring_id
        present = set(self._members)
        for key in [k for k in self._partials if k[0] not in present]:
            self._drop_partial(key)  # a departed sender never sends the rest
        out = self._downlist_inform()
        out += self._joinlist_inform()
        self._joinlists.clear()
        self._syncing = False
        self._synced_once = True
        handles = self._all_handles()
        if handles:
            out.append(CpgTotemConfchg(handles, self._ring_id, self._members))
        out += self._apply_deferred(frozenset(self._members))
        return out

    def _apply_deferred(self, view: frozenset[NodeId]) -> list[ServiceOutput]:
        """Apply the deferred messages whose sender is in `view`, in order; drop (count) the rest."""
        deferred, self._deferred, self._deferred_bytes = self._deferred, [], 0
        out: list[ServiceOutput] = []
        for sender, function, message in deferred:
            if sender not in view:
                self._count("deferred_sender_not_in_view")
                continue
            try:
                out += self._apply_message(sender, function, message)
            except MalformedPacket:  # validated when deferred; kept for safety, never raised out
                self._count("deferred_malformed")
        return out

    def sync_abort(self) -> None:
        """Forget the joinlists of the interrupted synchronisation."""
        self._joinlists.clear()

    # --- Service: messages --------------------------------------------------------------------------

    def on_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        """Apply one cpg message in agreed order; return the client notifications it causes.

        Raises MalformedPacket for undecodable ones (also when deferred: they are checked first).

        Client-originated messages (PROCJOIN, PROCLEAVE, MCAST, PARTIAL_MCAST) delivered while a
        ring is being synchronised are deferred, in order, until its sync_activate (or, when that
        sync is aborted, the next sync_init). corosync rarely delivers them during a sync:
        totemsrp puts what is queued from the transitional configuration on, and everything still
        unsent in the old queue, behind the sync messages until sync completes (waiting_trans_ack,
        totemsrp_trans_ack from corosync_sync_completed); our Totem does the same now, but a
        message queued during the sync (a departed client's PROCLEAVE) or one of a node that does
        not hold its queue can still arrive then (the class docstring). Applied then, a member that
        already knew the sender's process delivered them and a member that learns it only from the
        JOINLIST dropped them ("unknown node") — two members of the same ring delivering different
        messages (bench.chaos seed 7: ring 2.50 of nodes 2 and 3, each delivering only its own
        old-ring messages). Applied after the downlist and joinlists, every member decides with
        the same process list at the same point of the agreed order.
        """
        if self._syncing and function in _CLIENT_FUNCTIONS:
            _validate(function, message)
            if (
                len(self._deferred) < MAX_DEFERRED_MESSAGES
                and self._deferred_bytes + len(message) <= MAX_DEFERRED_BYTES
            ):
                self._deferred.append((sender, function, message))
                self._deferred_bytes += len(message)
                return []
            self._count("deferred_overflow")
        return self._apply_message(sender, function, message)

    def _apply_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        if function == MESSAGE_REQ_EXEC_CPG_PROCJOIN:
            join = decode_procjoin(message)
            out = self._proc_join(join.group, join.pid, sender, REASON_JOIN)
            if sender == self.me and (join.group, join.pid) in self._leave_after_join:
                self._leave_after_join.discard((join.group, join.pid))
                fn = MESSAGE_REQ_EXEC_CPG_PROCLEAVE
                out.append(SendMessage(fn, encode_procjoin(fn, join.group, join.pid, REASON_PROCDOWN)))
            return out
        if function == MESSAGE_REQ_EXEC_CPG_PROCLEAVE:
            leave = decode_procjoin(message)
            if not REASON_JOIN <= leave.reason <= REASON_PROCDOWN:
                raise MalformedPacket("cpg_procleave_reason", f"reason {leave.reason}")
            return self._proc_leave(leave.group, leave.pid, sender, leave.reason)
        if function == MESSAGE_REQ_EXEC_CPG_JOINLIST:
            return self._on_joinlist(sender, message)
        if function == MESSAGE_REQ_EXEC_CPG_MCAST:
            m = decode_mcast(message)
            if sender == self.me:
                self._settle(m.source_conn)
            return self._deliver(sender, m.group, m.pid, m.payload)
        if function == MESSAGE_REQ_EXEC_CPG_DOWNLIST:
            self._check_downlist(sender, decode_downlist(message))
            return []
        if function == MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST:
            return self._on_partial(sender, decode_partial_mcast(message))
        if function == MESSAGE_REQ_EXEC_CPG_DOWNLIST_OLD:
            self._count("downlist_old_ignored")
            return []
        raise MalformedPacket("cpg_unknown_function", f"function {function}")

    def deliver_frame(
        self, sender: NodeId, frame: bytes, start: int, lens: tuple[int, ...]
    ) -> list[CpgDeliver] | None:
        """The fused receive path (Stack._fast_frame): a whole totempg frame of `sender` whose pieces
        (lengths `lens`, the first at `start`) are each one group "a" cpg MCAST, applied as
        on_message would apply them one by one, without the intermediate decodes and objects.

        Returns the notifications, or None, before anything changed, when this frame is not of that
        kind (a piece of another kind or layout, a malformed MCAST, a sync running): the caller then
        takes the general path, which also counts what is malformed.
        """
        if self._syncing:
            return None
        fields = _FAST_MCAST_FIELDS
        prefix = _FAST_PREFIX
        off = start
        for n in lens:  # first check every piece: a frame is taken whole or not at all
            if n < _FAST_MIN or not frame.startswith(prefix, off):
                return None
            namelen, _name, msglen, _pid, _nodeid, _conn = fields.unpack_from(frame, off + _FAST_NAME_AT)
            if not 0 < namelen <= CPG_MAX_NAME_LENGTH or msglen != n - _FAST_MIN:
                return None
            off += n
        out: list[CpgDeliver] = []
        mine = sender == self.me
        last_group: bytes | None = None
        handles: tuple[Handle, ...] = ()
        known = False
        processes = self._processes
        off = start
        for n in lens:
            namelen, name, msglen, pid, _nodeid, conn = fields.unpack_from(frame, off + _FAST_NAME_AT)
            if mine:
                self._settle(conn)
            group = name[:namelen]
            if group != last_group:  # most frames carry one group: its handles and the sender check once
                last_group = group
                handles = self._group_handles(group)
                known = bool(handles) and any(p.nodeid == sender and p.group == group for p in processes)
            if known:
                body = off + _FAST_MIN
                out.append(CpgDeliver(handles, group, sender, pid, frame[body : body + msglen]))
            elif handles:
                self._count("mcast_unknown_node")  # cpg.c: "Unknown node -> we will not deliver message"
            off += n
        return out

    # --- LocalRequestHandler --------------------------------------------------------------------

    def on_local_request(self, request: object) -> list[ServiceOutput]:
        """Carry out CpgJoin/CpgLeave/CpgMcast/ClientGone.

        Raises UsageError with libcpg's error as code: invalid_param, name_too_long, exist,
        busy, not_exist, try_again, too_large, no_resources. Nothing changes on error.
        """
        match request:
            case CpgJoin():
                return self._local_join(request)
            case CpgLeave():
                return self._local_leave(request)
            case CpgMcast():
                return self._local_mcast(request)
            case ClientGone():
                return self._client_gone(request.handle)
        raise UsageError(ErrorCode.INVALID_PARAM, f"cpg does not take {type(request).__name__}")

    # --- queries (IPC, CLI) ------------------------------------------------------------------------

    def groups(self) -> list[GroupInfo]:
        """Every group with at least one member, sorted by name."""
        by_group: dict[bytes, list[tuple[NodeId, int]]] = {}
        for p in self._processes:
            by_group.setdefault(p.group, []).append((p.nodeid, p.pid))
        return [GroupInfo(g, tuple(m)) for g, m in sorted(by_group.items())]

    def members_of(self, group: bytes) -> tuple[tuple[NodeId, int], ...]:
        """The members of `group` in (nodeid, pid) order (empty when unknown)."""
        return tuple((p.nodeid, p.pid) for p in self._processes if p.group == group)

    def process_list(self) -> list[tuple[NodeId, int, bytes]]:
        """(nodeid, pid, group) of every process, in corosync's process_info_list order."""
        return [(p.nodeid, p.pid, p.group) for p in self._processes]

    def local_process(self, handle: Handle, group: bytes) -> LocalProcess | None:
        """A copy of connection `handle`'s membership of `group`, or None."""
        p = self._local.get((handle, group))
        return None if p is None else LocalProcess(p.handle, p.group, p.pid, p.state, p.initial_totem_conf)

    def local_processes(self) -> list[LocalProcess]:
        """Copies of the local memberships, by handle then group."""
        return [
            LocalProcess(p.handle, p.group, p.pid, p.state, p.initial_totem_conf)
            for _key, p in sorted(self._local.items())
        ]

    @property
    def in_flight_bytes(self) -> int:
        """Own MCAST payload bytes sent and not yet delivered back (flow control)."""
        return self._in_flight_bytes

    # --- local requests ------------------------------------------------------------------------------

    def _maybe_refuse_during_sync(self) -> None:
        if self._syncing or not self._synced_once:
            raise UsageError(ErrorCode.TRY_AGAIN, "cluster membership is being synchronised; retry")

    def _local_join(self, req: CpgJoin) -> list[ServiceOutput]:
        _check_group(req.group)
        if not 0 <= req.pid <= 0xFFFFFFFF:
            raise UsageError(ErrorCode.INVALID_PARAM, f"pid {req.pid} is not a u32")
        if any(p.pid == req.pid and p.group == req.group for p in self._local.values()):
            raise UsageError(ErrorCode.EXIST, f"pid {req.pid} already joined {req.group!r} on this node")
        current = self._local.get((req.handle, req.group))
        if current is not None:
            code = ErrorCode.BUSY if current.state is LocalState.LEAVE_STARTED else ErrorCode.EXIST
            raise UsageError(code, f"this connection is already in {req.group!r} ({current.state.value})")
        leaving = (req.group, req.pid) in self._leave_after_join
        if leaving or self._find(req.group, req.pid, self.me) is not None:
            raise UsageError(ErrorCode.TRY_AGAIN, f"the previous leave of pid {req.pid} is not delivered yet")
        if len(self._local) >= MAX_LOCAL_PROCESSES:
            raise UsageError(ErrorCode.NO_RESOURCES, f"at most {MAX_LOCAL_PROCESSES} local group memberships")
        self._maybe_refuse_during_sync()
        self._local[(req.handle, req.group)] = LocalProcess(
            req.handle, req.group, req.pid, LocalState.JOIN_STARTED, req.initial_totem_conf
        )
        message = encode_procjoin(MESSAGE_REQ_EXEC_CPG_PROCJOIN, req.group, req.pid, REASON_JOIN)
        return [SendMessage(MESSAGE_REQ_EXEC_CPG_PROCJOIN, message)]

    def _local_leave(self, req: CpgLeave) -> list[ServiceOutput]:
        _check_group(req.group)
        current = self._local.get((req.handle, req.group))
        if current is None or current.state is LocalState.LEAVE_STARTED:
            raise UsageError(ErrorCode.NOT_EXIST, f"this connection is not in {req.group!r}")
        if current.state is LocalState.JOIN_STARTED:
            raise UsageError(ErrorCode.BUSY, f"the join of {req.group!r} is not complete yet")
        self._maybe_refuse_during_sync()
        current.state = LocalState.LEAVE_STARTED
        message = encode_procjoin(MESSAGE_REQ_EXEC_CPG_PROCLEAVE, req.group, current.pid, REASON_LEAVE)
        return [SendMessage(MESSAGE_REQ_EXEC_CPG_PROCLEAVE, message)]

    def _local_mcast(self, req: CpgMcast) -> list[ServiceOutput]:
        pid = self._take_mcast(req.handle, req.group, len(req.payload))
        message = encode_mcast(req.group, pid, self.me, self._send_seq, req.payload)
        return [SendMessage(MESSAGE_REQ_EXEC_CPG_MCAST, message)]

    def local_mcast_message(self, handle: Handle, group: bytes, payload: bytes) -> bytes:
        """The fused send path (Stack.local_mcast): what on_local_request(CpgMcast(handle, group,
        payload)) does, returning the message as the Stack queues it with Totem — group "a"'s
        header and the MCAST, built with one pack — instead of a SendMessage. Raises as
        on_local_request; nothing changes then."""
        pid = self._take_mcast(handle, group, len(payload))
        size = len(payload)
        head = _FAST_HEAD.pack(_FAST_GROUP_A, _FAST_MCAST_ID, MCAST_HEADER_SIZE + size, len(group), group,
                               size, pid, self.me, self._send_seq)  # fmt: skip
        return head + payload

    def _take_mcast(self, handle: Handle, group: bytes, size: int) -> int:
        """Check a local MCAST of `size` bytes and count it in the send window; its process's pid
        (its seq is then `_send_seq`). Raises as on_local_request, before anything changes."""
        _check_group(group)
        current = self._local.get((handle, group))
        if current is None or current.state is LocalState.LEAVE_STARTED:
            raise UsageError(ErrorCode.NOT_EXIST, f"this connection is not in {group!r}")
        if size > MAX_MESSAGE_BYTES:
            raise TooLarge(f"{size} bytes; at most {MAX_MESSAGE_BYTES}")
        self._maybe_refuse_during_sync()
        cost = size + IN_FLIGHT_ENTRY_COST_BYTES
        if self._in_flight_bytes and self._in_flight_bytes + cost > MAX_IN_FLIGHT_BYTES:
            raise QueueFull(f"{self._in_flight_bytes} bytes in flight; retry after deliveries")
        self._send_seq += 1
        self._in_flight.append((self._send_seq, cost))
        self._in_flight_bytes += cost
        return current.pid

    def _client_gone(self, handle: Handle) -> list[ServiceOutput]:
        out: list[ServiceOutput] = []
        for key in sorted(k for k in self._local if k[0] == handle):
            proc = self._local.pop(key)
            if proc.state is LocalState.JOIN_STARTED:
                self._leave_after_join.add((proc.group, proc.pid))  # sent once its PROCJOIN is delivered
            elif proc.state is not LocalState.LEAVE_STARTED:
                fn = MESSAGE_REQ_EXEC_CPG_PROCLEAVE
                out.append(SendMessage(fn, encode_procjoin(fn, proc.group, proc.pid, REASON_PROCDOWN)))
        return out

    def _settle(self, seq: int) -> None:
        # Our own messages come back in the order we sent them: `seq` settles it and every older one.
        # A deque popped at the front: O(1) per message, where a scan of every message in flight
        # made a long pipelined burst quadratic.
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= seq:
            self._in_flight_bytes -= in_flight.popleft()[1]

    # --- process list (do_proc_join / do_proc_leave) -----------------------------------------------

    def _find(self, group: bytes, pid: int, nodeid: NodeId) -> _Process | None:
        for p in self._processes:
            if p.nodeid == nodeid and p.pid == pid and p.group == group:
                return p
        return None

    def _add_process(self, group: bytes, pid: int, nodeid: NodeId) -> bool:
        if self._find(group, pid, nodeid) is not None:
            return False
        if len(self._processes) >= MAX_PROCESSES:
            self._count("processes_bound")
            return False
        # Insert after every entry with a key <= ours, as do_proc_join keeps the list sorted.
        index = len(self._processes)
        for i, p in enumerate(self._processes):
            if (p.nodeid, p.pid) > (nodeid, pid):
                index = i
                break
        self._processes.insert(index, _Process(nodeid, pid, group))
        return True

    def _proc_join(self, group: bytes, pid: int, nodeid: NodeId, reason: int) -> list[ServiceOutput]:
        if not self._add_process(group, pid, nodeid):
            return []
        return self._notify(group, joined=(CpgAddress(nodeid, pid, reason),), left=())

    def _proc_leave(self, group: bytes, pid: int, nodeid: NodeId, reason: int) -> list[ServiceOutput]:
        proc = self._find(group, pid, nodeid)
        if proc is None:
            self._count("procleave_unknown")
            return []
        self._processes.remove(proc)
        return self._notify(group, joined=(), left=(CpgAddress(nodeid, pid, reason),))

    def _notify(
        self, group: bytes, joined: tuple[CpgAddress, ...], left: tuple[CpgAddress, ...]
    ) -> list[ServiceOutput]:
        """notify_lib_joinlist: complete local joins, tell the group's handles, unjoin leavers."""
        self.generation += 1  # every change of the process list comes through here
        completed: list[LocalProcess] = []
        for addr in joined:
            if addr.nodeid == self.me:
                for proc in self._local.values():
                    if proc.group == group and proc.pid == addr.pid and proc.state is LocalState.JOIN_STARTED:
                        proc.state = LocalState.JOIN_COMPLETED
                        completed.append(proc)
        members = tuple(CpgAddress(p.nodeid, p.pid) for p in self._processes if p.group == group)
        out: list[ServiceOutput] = []
        handles = self._group_handles(group)
        if handles:
            out.append(CpgConfchg(handles, group, members, left, joined))
        for addr in left:
            if addr.nodeid == self.me and addr.reason == REASON_LEAVE:
                for key, proc in list(self._local.items()):
                    leaving = proc.state is LocalState.LEAVE_STARTED
                    if leaving and proc.group == group and proc.pid == addr.pid:
                        del self._local[key]
        for proc in completed:
            if proc.initial_totem_conf:
                # The last configuration clients were told of, as a consistent pair (corosync too):
                # during a sync the new ring's id must not go out with the old ring's members.
                out.append(CpgTotemConfchg((proc.handle,), self._active_ring_id, self._old_members))
        return out

    def _group_handles(self, group: bytes) -> tuple[Handle, ...]:
        live = (LocalState.JOIN_COMPLETED, LocalState.LEAVE_STARTED)
        return tuple(sorted({p.handle for p in self._local.values() if p.group == group and p.state in live}))

    def _all_handles(self) -> tuple[Handle, ...]:
        return tuple(sorted({p.handle for p in self._local.values()}))

    # --- sync: joinlists and downlists ----------------------------------------------------------------

    def _on_joinlist(self, sender: NodeId, message: bytes) -> list[ServiceOutput]:
        entries = decode_joinlist(message)
        if not self._syncing:
            self._count("joinlist_outside_sync")
            return []
        if len(self._joinlists) + len(entries) > MAX_JOINLIST_ENTRIES_PER_SYNC:
            self._count("joinlist_bound")
            return []
        self._joinlists.extend((sender, pid, group) for pid, group in entries)
        return []

    def _check_downlist(self, sender: NodeId, downlist: Downlist) -> None:
        if sender == self.me or not self._syncing:
            return
        # A peer that had our old membership must have lost the same nodes (virtual synchrony).
        if downlist.old_members == len(self._old_members) and set(downlist.left_nodes) != set(self._downlist):
            self._count("downlist_mismatch")

    def _downlist_inform(self) -> list[ServiceOutput]:
        down = set(self._downlist)
        if not down:
            return []
        left_by_group: dict[bytes, list[CpgAddress]] = {}
        for p in [p for p in self._processes if p.nodeid in down]:
            left_by_group.setdefault(p.group, []).append(CpgAddress(p.nodeid, p.pid, REASON_NODEDOWN))
            self._processes.remove(p)
        out: list[ServiceOutput] = []
        for group in sorted(left_by_group):  # one confchg per group, groups by name (qb skiplist)
            out += self._notify(group, joined=(), left=tuple(left_by_group[group]))
        return out

    def _joinlist_inform(self) -> list[ServiceOutput]:
        joined_by_group: dict[bytes, list[CpgAddress]] = {}
        # corosync prepends each stored entry to its list, so it walks them newest first.
        for sender, pid, group in reversed(self._joinlists):
            if sender == self.me:
                continue
            if self._add_process(group, pid, sender):
                joined_by_group.setdefault(group, []).append(CpgAddress(sender, pid, REASON_NODEUP))
        out: list[ServiceOutput] = []
        for group in sorted(joined_by_group):
            out += self._notify(group, joined=tuple(joined_by_group[group]), left=())
        # Zombies: remote processes nobody listed left while we were apart (joinlist_remove_zombie).
        listed = {(s, pid, g) for s, pid, g in self._joinlists if s != self.me}
        for p in [p for p in self._processes if p.nodeid != self.me]:
            if (p.nodeid, p.pid, p.group) not in listed:
                out += self._proc_leave(p.group, p.pid, p.nodeid, REASON_PROCDOWN)
        return out

    # --- delivery ------------------------------------------------------------------------------------

    def _deliver(self, sender: NodeId, group: bytes, pid: int, payload: bytes) -> list[ServiceOutput]:
        handles = self._group_handles(group)
        if not handles:
            return []
        if not any(p.nodeid == sender and p.group == group for p in self._processes):
            # cpg.c: "Unknown node -> we will not deliver message".
            self._count("mcast_unknown_node")
            return []
        return [CpgDeliver(handles, group, sender, pid, payload)]

    def _on_partial(self, sender: NodeId, part: PartialMcast) -> list[ServiceOutput]:
        key = (sender, part.pid, part.group, part.source_conn)
        if part.kind == PARTIAL_FIRST:
            self._drop_partial(key)
            if len(self._partials) >= MAX_PARTIAL_ASSEMBLIES:
                self._count("partial_assemblies_bound")
                return []
            self._partials[key] = _Assembly(part.msglen)
        assembly = self._partials.get(key)
        if assembly is None:
            self._count("partial_without_first")
            return []
        if assembly.size + len(part.fragment) > assembly.msglen or (
            self._partial_bytes + len(part.fragment) > MAX_PARTIAL_BYTES
        ):
            self._drop_partial(key)
            self._count("partial_overflow")
            return []
        assembly.parts.append(part.fragment)
        assembly.size += len(part.fragment)
        self._partial_bytes += len(part.fragment)
        if part.kind != PARTIAL_LAST:
            return []
        self._drop_partial(key)
        if assembly.size != assembly.msglen:
            self._count("partial_length_mismatch")
            return []
        return self._deliver(sender, part.group, part.pid, b"".join(assembly.parts))

    def _drop_partial(self, key: tuple[NodeId, int, bytes, int]) -> None:
        assembly = self._partials.pop(key, None)
        if assembly is not None:
            self._partial_bytes -= assembly.size

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1


_CLIENT_FUNCTIONS = frozenset(
    {
        MESSAGE_REQ_EXEC_CPG_PROCJOIN,
        MESSAGE_REQ_EXEC_CPG_PROCLEAVE,
        MESSAGE_REQ_EXEC_CPG_MCAST,
        MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST,
    }
)
"""Functions a client's request causes (deferred during a sync); DOWNLIST/JOINLIST are sync's own."""


_FAST_PREFIX = b"\x01\x00\x01\x00a" + struct.pack("<i", (CPG_SERVICE << 16) | MESSAGE_REQ_EXEC_CPG_MCAST)
"""The first bytes of a delivered message that is one cpg MCAST of group "a" alone: the totempg
group header (one name, of one byte, "a") and the libqb request header's id (service 2, MCAST)."""
_FAST_GROUP_HEADER = 5
_FAST_MIN = _FAST_GROUP_HEADER + MCAST_HEADER_SIZE  # the group header and the MCAST header
_FAST_NAME_AT = _FAST_GROUP_HEADER + 16  # the cpg_name after the request header
_FAST_MCAST_FIELDS = struct.Struct("<I4x128sI4xI4xI4xQ")
"""An MCAST's name (length, value), msglen, pid, source nodeid and conn, read with one unpack."""
_FAST_GROUP_A = _FAST_PREFIX[:_FAST_GROUP_HEADER]
_FAST_MCAST_ID = (CPG_SERVICE << 16) | MESSAGE_REQ_EXEC_CPG_MCAST
_FAST_HEAD = struct.Struct("<5si4xi4xI4x128sI4xI4xI4xQ")
"""Group "a"'s header and a whole MCAST header (encode_group_message of encode_mcast), one pack."""


def _validate(function: int, message: bytes) -> None:
    """Decode a client-originated message as _apply_message will. Raises MalformedPacket."""
    if function == MESSAGE_REQ_EXEC_CPG_MCAST:
        decode_mcast(message)
    elif function == MESSAGE_REQ_EXEC_CPG_PARTIAL_MCAST:
        decode_partial_mcast(message)
    else:
        req = decode_procjoin(message)
        if function == MESSAGE_REQ_EXEC_CPG_PROCLEAVE and not REASON_JOIN <= req.reason <= REASON_PROCDOWN:
            raise MalformedPacket("cpg_procleave_reason", f"reason {req.reason}")


def _check_group(group: bytes) -> None:
    if not group:
        raise UsageError(ErrorCode.INVALID_PARAM, "empty group name")
    if len(group) > CPG_MAX_NAME_LENGTH:
        text = f"group name of {len(group)} bytes; at most {CPG_MAX_NAME_LENGTH}"
        raise UsageError(ErrorCode.NAME_TOO_LONG, text)
