"""The driver loop of cmanlkd: feeds the pure core real datagrams and time, carries out its actions.

No protocol logic lives here. On a datagram: `core.handle(PacketReceived(now, data, src, link))`;
on the one loop timer: `core.handle(DeadlineReached(now))`; then the returned actions are carried
out in order and the timer is re-armed at `core.next_deadline`. `now` is time.monotonic_ns(), the
clock asyncio's `loop.time()` also reads, so `loop.call_at(deadline / 1e9)` fires on time.

The core is the Stack (Totem + sync v2 + votequorum + cmap + services) by default; `core="totem"`
drives a bare Totem (same handle/next_deadline shape) for debugging the ordering layer alone.

Action order is the contract (STYLE.md): a `PersistRingSeq` is written and fsynced before the
next action, so a new ring's packets never leave before its seq is durable. Network sends never
block (non-blocking sockets; a full buffer is a lost datagram totem recovers from).

Long-lived tasks (watchdog pings, status refresh, the control queue fed by signal handlers) run
under one asyncio.TaskGroup. An exception raised by the core stops the node: it is logged with
the state, a leave is attempted, and `run()` raises it as InternalError (a bug: the core's
exception is its cause), or as the OSError it was when the host failed us (a ring seq that
could not be made durable).

Observable state for the IPC server, D-Bus and admins: `NodeStatus` (`status()`), listeners for
notifications (`add_listener`), and `<run_dir>/status.json`, rewritten atomically on every
membership or state change and every STATUS_REFRESH_S.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

from cmanlk.config import ClusterConfig
from cmanlk.errors import ErrorCode, InternalError, UsageError
from cmanlk.runtime import statedir
from cmanlk.runtime.notify import Notifier
from cmanlk.runtime.transport import LinkStatus, Transport, build_transport
from cmanlk.services.base import Notification
from cmanlk.services.cfg.service import CfgService, KilledByNode, KillRequested, NodeShutDown
from cmanlk.services.cmap.service import ConfigVersionMismatch
from cmanlk.services.cpg.service import CpgService
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import MembershipChanged, RequestResult, Stack, StackConfig, default_services
from cmanlk.totem.actions import (
    ConfigKind,
    Deliver,
    DeliverConfiguration,
    MembState,
    Multicast,
    PersistRingSeq,
    StateChanged,
    Unicast,
)
from cmanlk.totem.core import Totem
from cmanlk.totem.events import (
    DeadlineReached,
    Guarantee,
    LeaveRequested,
    McastRequested,
    NodelistChanged,
    PacketReceived,
    Started,
)
from cmanlk.types import NO_RING, Instant, NodeId, RingId

log = logging.getLogger("cmanlk.node")

STATUS_REFRESH_S = 2.0
"""status.json is also rewritten this often, so its counters stay fresh for admins and tests."""
STATUS_DIRTY_DELAY_S = 0.2
"""A state change reaches status.json within this delay (membership changes are written at once)."""
LEAVE_FLUSH_S = 0.05
"""After the leave JOIN is handed to the kernel, wait this long before closing sockets so the
datagrams leave the host (sendto on a non-blocking socket only queues them)."""
MAX_LISTENERS = 64
"""Bound on notification listeners (IPC server, D-Bus service, tests)."""
MAX_PENDING_REQUESTS = 64
"""Bound on local requests waiting for the core's answer (each is one admin or client call)."""


class Core(Protocol):
    """What the runtime needs of a core: Totem and Stack both fit."""

    def handle(self, event: Any) -> list[Any]: ...

    @property
    def next_deadline(self) -> Instant | None: ...


class CoreKind(enum.Enum):
    STACK = "stack"
    TOTEM = "totem"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A snapshot of the node for status output (IPC, D-Bus, status.json)."""

    node_id: NodeId
    cluster_name: str
    state: str
    ring_id: RingId
    members: tuple[NodeId, ...]
    totem_ring_id: RingId
    quorate: bool | None
    quorum: dict[str, object]
    links: tuple[LinkStatus, ...]
    stats: dict[str, object]
    membership_changes: int
    started_at: float
    last_change_reason: str

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (the schema of status.json)."""
        return {
            "node_id": self.node_id,
            "cluster_name": self.cluster_name,
            "pid": os.getpid(),
            "state": self.state,
            "ring_id": str(self.ring_id),
            "ring_seq": self.ring_id.seq,
            "ring_rep": self.ring_id.rep,
            "members": list(self.members),
            "totem_ring_id": str(self.totem_ring_id),
            "quorate": self.quorate,
            "quorum": self.quorum,
            "links": [lk.as_dict() for lk in self.links],
            "stats": self.stats,
            "membership_changes": self.membership_changes,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "last_change_reason": self.last_change_reason,
        }


Listener = Callable[[object], None]
"""Called with each notification/configuration the core publishes (MembershipChanged, QuorumChanged,
cpg deliveries, totem DeliverConfiguration/Deliver in Totem mode), on the loop thread."""


class Node:
    """One running cluster node. `await run()` until it has left (SIGTERM) or failed."""

    def __init__(
        self,
        config: ClusterConfig,
        me: NodeId,
        *,
        transport: Transport | None = None,
        core: CoreKind = CoreKind.STACK,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        extra_services: tuple[Any, ...] = (),
        companions: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = (),
    ) -> None:
        """Build the node (nothing runs before `run()`).

        `transport` defaults to the one `config` selects; `extra_services` are service factories
        added to the Stack (cpg); `companions` are coroutine functions run under the node's
        TaskGroup while it runs (the D-Bus and IPC edges): if one raises, the node stops.
        Raises ConfigError or OSError when the transport cannot be built.
        """
        self.config = config
        self.me = me
        self.transport = transport if transport is not None else build_transport(config, me)
        self.core_kind = core
        self.notifier = notifier or Notifier({})
        self.rng = rng or random.Random()
        self.extra_services = extra_services
        self.companions = companions
        self._requests: dict[int, asyncio.Future[RequestResult]] = {}
        self._next_request_id = 1
        self.core: Core | None = None
        self.run_dir = Path(config.cmanlk.run_dir)
        self.state_dir = Path(config.cmanlk.state_dir)
        self.status_path = self.run_dir / "status.json"
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: Instant | None = None
        self._listeners: list[Listener] = []
        self._control: asyncio.Queue[tuple[str, object]] = asyncio.Queue(maxsize=16)
        self._fatal: BaseException | None = None
        self._stopped = asyncio.Event()
        self._ready_sent = False
        self._left = False
        self._ring_id: RingId = NO_RING
        self._members: tuple[NodeId, ...] = ()
        self._state = MembState.GATHER
        self._quorum: dict[str, object] = {}
        self._quorate: bool | None = None
        self._changes = 0
        self._reason = "starting"
        self._status_dirty = True
        self._started_at = time.time()
        self._persisted_seq = 0
        self._delivered = 0
        self.killed_by: KilledByNode | None = None
        """Set when a peer's kill request (cfg KILLNODE) named us; the daemon then exits 5."""

    # -- public API -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until a leave completes (returns) or the core fails (raises InternalError's cause).

        Raises OSError when the state or run directory or the sockets cannot be set up.
        """
        statedir.ensure_dir(self.state_dir, 0o700)
        statedir.ensure_dir(self.run_dir)
        ring_seq = statedir.read_ring_seq(self.state_dir, self.me)
        self._persisted_seq = ring_seq
        await self.transport.start(self._on_datagram)
        try:
            self.core = self._build_core(ring_seq)
            log.info(
                "node %d starting (%s, transport %s, persisted ring seq %d, token %d ms, consensus %d ms)",
                self.me,
                self.core_kind.value,
                self.config.transport.value,
                ring_seq,
                self.config.totem.token_ms,
                self.config.totem.consensus_ms,
            )
            self._feed(Started(_now()))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.notifier.watchdog_loop(), name="watchdog")
                tg.create_task(self._status_loop(), name="status")
                for companion in self.companions:
                    tg.create_task(companion(), name=getattr(companion, "__name__", "companion"))
                await self._control_loop()
                raise _Stop  # cancels the helper tasks
        except ExceptionGroup as group:
            failure = _first_failure(group)
            if failure is not None:  # a companion (IPC, D-Bus) or helper task failed: stop, cleanly
                log.critical("stopping: a task failed: %r", failure, exc_info=failure)
                self._try_leave()
                self._fatal = self._fatal or failure
        finally:
            self._cancel_timer()
            await self.transport.close()
            self.notifier.close()
        if self._fatal is not None:
            raise self._fatal

    def request_leave(self) -> None:
        """Ask for a graceful leave (SIGTERM); safe to call from a signal handler callback."""
        self._post("leave", None)

    def request_reload(self, config: ClusterConfig) -> None:
        """Apply a reloaded configuration (SIGHUP): nodelist and runtime-changeable settings."""
        self._post("reload", config)

    def mcast(self, payload: bytes, guarantee: Guarantee = Guarantee.AGREED) -> None:
        """Queue an application message in total order (Totem mode and tests). Raises UsageError."""
        if self.core is None or self._left:
            raise UsageError(ErrorCode.NOT_RUNNING, "the node is not running")
        self._feed(McastRequested(_now(), payload, guarantee))

    def handle_request(self, event: object) -> None:
        """Feed a local request event (SetExpectedVotes, ServiceRequest, …) to the core.

        Results come back as notifications to the listeners (RequestResult). Raises UsageError
        when the node is not running.
        """
        if self.core is None or self._left:
            raise UsageError(ErrorCode.NOT_RUNNING, "the node is not running")
        self._feed(event)

    async def request(self, build: Callable[[Instant, int], object], timeout_s: float = 5.0) -> str:
        """Feed the local request `build(now, request_id)` (SetExpectedVotes, SetVotes, …) and wait
        for the core's answer.

        Returns the result message ("" when none). Raises UsageError with the core's code when
        refused, UsageError("busy") past MAX_PENDING_REQUESTS, TimeoutError after `timeout_s`.
        """
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            raise UsageError(ErrorCode.BUSY, f"{MAX_PENDING_REQUESTS} requests are already pending")
        request_id = self._next_request_id
        self._next_request_id += 1
        future: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            self.handle_request(build(_now(), request_id))
            async with asyncio.timeout(timeout_s):
                result = await future
        finally:
            self._requests.pop(request_id, None)
        if result.error is not None:
            raise UsageError(result.error, result.message or result.error.wire)
        return result.message

    def add_listener(self, listener: Listener) -> None:
        """Register a callback for notifications. Raises UsageError past MAX_LISTENERS."""
        if len(self._listeners) >= MAX_LISTENERS:
            raise UsageError(ErrorCode.NO_RESOURCES, f"at most {MAX_LISTENERS} listeners")
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Unregister a callback (no error if absent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def quorum_state(self) -> QuorumState | None:
        """votequorum's current decision (None with a bare Totem core or before the first sync)."""
        return self.core.quorum if isinstance(self.core, Stack) else None

    @property
    def ring_id(self) -> RingId:
        """The ring of the last published membership."""
        return self._ring_id

    @property
    def members(self) -> tuple[NodeId, ...]:
        """The members of the last published membership."""
        return self._members

    def status(self) -> NodeStatus:
        """Return a snapshot of the node's observable state."""
        totem = self._totem()
        return NodeStatus(
            node_id=self.me,
            cluster_name=self.config.cluster_name,
            state=self._state.value,
            ring_id=self._ring_id,
            members=self._members,
            totem_ring_id=totem.ring_id if totem is not None else NO_RING,
            quorate=self._quorate,
            quorum=dict(self._quorum),
            links=tuple(self.transport.links()),
            stats=self._stats(),
            membership_changes=self._changes,
            started_at=self._started_at,
            last_change_reason=self._reason,
        )

    # -- the core ----------------------------------------------------------------------------------
    def _build_core(self, ring_seq: int) -> Core:
        totem_cfg = self.config.totem
        payload = getattr(self.transport, "max_payload_bytes", None)
        if isinstance(payload, int) and payload + 45 < totem_cfg.netmtu:
            # Keep every totem frame within one datagram of the transport (native.py docstring).
            totem_cfg = replace(totem_cfg, netmtu=payload + 45)
        if self.core_kind is CoreKind.TOTEM:
            return Totem(totem_cfg, self.me, self.rng, ring_seq)
        # cpg (service 2) always runs: corosync peers sync it, and local clients use it.
        services = default_services(
            self.config.quorum, self.config.config_version, (CfgService, CpgService, *self.extra_services)
        )
        stack_cfg = StackConfig(totem_cfg, self.config.quorum, services, self.config.config_version)
        return Stack(stack_cfg, self.me, self.rng, ring_seq)

    def _totem(self) -> Totem | None:
        core = self.core
        if isinstance(core, Stack):
            return core.totem
        return core if isinstance(core, Totem) else None

    def _on_datagram(self, data: bytes, src: NodeId | None, link: int) -> None:
        if self.core is None or self._left:
            return
        self._feed(PacketReceived(_now(), data, src, link))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None and not self._left:
            self._feed(DeadlineReached(_now()))

    def _feed(self, event: object) -> None:
        """Hand one event to the core and carry out its actions; a core exception stops the node."""
        core = self.core
        if core is None or self._fatal is not None:
            return
        try:
            actions = core.handle(event)
            self._carry_out(actions)
        except UsageError:
            raise
        except Exception as exc:  # a bug in the core, or a failed fsync: we must not go on
            where = f"{type(event).__name__} (state {self._state.value}, ring {self._ring_id})"
            log.critical("stopping: %r while handling %s", exc, where, exc_info=True)
            if isinstance(exc, OSError | InternalError):
                self._fatal = exc  # OSError: the host failed us (ring seq not durable), exit 3
            else:
                self._fatal = InternalError(f"the core failed: {exc!r} while handling {where}")
                self._fatal.__cause__ = exc
            self._post("fatal", None)
            return
        self._arm_timer()

    def _carry_out(self, actions: list[Any]) -> None:
        for action in actions:
            match action:
                case Unicast(to=to, data=data):
                    self.transport.unicast(to, data)
                case Multicast(to=to, data=data):
                    self.transport.multicast(to, data)
                case PersistRingSeq(seq=seq):
                    # Durable before the next action (the new ring's first packet): STYLE.md.
                    statedir.write_ring_seq(self.state_dir, self.me, seq)
                    self._persisted_seq = seq
                case StateChanged():
                    self._on_state(action)
                case MembershipChanged():
                    self._on_membership(action.ring_id, action.members, action.joined, action.left)
                    self._publish(action)
                case DeliverConfiguration():
                    self._on_totem_configuration(action)
                    self._publish(action)
                case Deliver():
                    self._delivered += 1
                    self._publish(action)
                case RequestResult():
                    future = self._requests.get(action.request_id)
                    if future is not None and not future.done():
                        future.set_result(action)
                    self._publish(action)
                case Notification():
                    self._on_notification(action)
                    self._publish(action)
                case _:
                    raise InternalError(f"the core returned an action the runtime does not know: {action!r}")

    def _arm_timer(self) -> None:
        core = self.core
        deadline = core.next_deadline if core is not None and not self._left else None
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return
        self._cancel_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(deadline / 1e9, self._on_timer)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    # -- what the core tells us ----------------------------------------------------------------
    def _on_state(self, change: StateChanged) -> None:
        # The core logs each transition with its detail; here only the runtime's view, at debug.
        log.debug(
            "totem %s -> %s: %s (ring %s)",
            self._state.value,
            change.state.value,
            change.reason,
            change.ring_id,
        )
        if change.state is MembState.GATHER:
            self._reason = change.reason
        self._state = change.state
        self._status_dirty = True

    def _on_totem_configuration(self, change: DeliverConfiguration) -> None:
        if change.kind is ConfigKind.TRANSITIONAL:
            log.info("transitional configuration %s: members %s", change.ring_id, _ids(change.members))
            return
        if self.core_kind is CoreKind.TOTEM:
            self._on_membership(change.ring_id, change.members, change.joined, change.left)

    def _on_membership(
        self,
        ring_id: RingId,
        members: tuple[NodeId, ...],
        joined: tuple[NodeId, ...],
        left: tuple[NodeId, ...],
    ) -> None:
        self._ring_id, self._members = ring_id, members
        self._changes += 1
        log.info(
            "new membership (%s) members %s joined %s left %s; reason: %s",
            ring_id,
            _ids(members),
            _ids(joined),
            _ids(left),
            self._reason,
        )
        summary = f"ring {ring_id}: {len(members)} members ({_ids(members)})"
        if not self._ready_sent:
            self._ready_sent = self.notifier.ready(summary) or True
        else:
            self.notifier.status(summary)
        self._status_dirty = True
        self._write_status()

    def _on_notification(self, note: Notification) -> None:
        match note:
            case QuorumChanged(quorate=quorate, state=state):
                if quorate != self._quorate:
                    log.info(
                        "quorum: %s (%d of %d votes, quorum %d)",
                        "quorate" if quorate else "NOT quorate",
                        state.total_votes,
                        state.expected_votes,
                        state.quorum,
                    )
                self._quorate = quorate
                self._quorum = {f.name: _plain(getattr(state, f.name)) for f in fields(state)}
                self._status_dirty = True
            case ConfigVersionMismatch():
                log.error("totem.config_version differs from a peer's: %s", note)
            case KilledByNode(requester=requester, reason=reason) if self.killed_by is None:
                # corosync's cfg exits here ("Killed by node R : reason"); we leave cleanly so the
                # others re-form at once, and the daemon exits with its "killed" status.
                log.critical("killed by node %d: %s; leaving the cluster", requester, reason)
                self.killed_by = note
                self._post("leave", None)
            case KillRequested(requester=requester, target=target, reason=reason):
                log.warning("node %d asked node %d to leave the cluster: %s", requester, target, reason)
            case NodeShutDown(nodeid=nodeid):
                log.info("node %d is being shut down by its administrator", nodeid)
            case _:
                log.debug("notification %s", note)

    def _publish(self, item: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(item)
            except Exception:  # a listener's bug must not stop the node; it is logged
                log.exception("listener %r failed on %s", listener, type(item).__name__)

    # -- control: leave, reload, failure --------------------------------------------------------
    def _post(self, what: str, arg: object) -> None:
        try:
            self._control.put_nowait((what, arg))
        except asyncio.QueueFull:
            log.warning("control queue full; %s request dropped", what)

    async def _control_loop(self) -> None:
        while True:
            what, arg = await self._control.get()
            if what == "fatal":
                self._try_leave()
                return
            if what == "leave":
                log.info("leaving the cluster (ring %s, members %s)", self._ring_id, _ids(self._members))
                self.notifier.stopping()
                self._try_leave()
                await asyncio.sleep(LEAVE_FLUSH_S)
                self._write_status()
                return
            if what == "reload" and isinstance(arg, ClusterConfig):
                self._reload(arg)

    def _try_leave(self) -> None:
        if self.core is None or self._left:
            return
        try:
            self._carry_out(self.core.handle(LeaveRequested(_now())))
        except Exception:  # leaving is best effort once we are failing
            log.exception("leave failed")
        self._left = True
        self._state = MembState.LEFT
        self._cancel_timer()

    def _reload(self, new: ClusterConfig) -> None:
        old = self.config
        if new.node(self.me) is None:
            log.error("reload refused: this node (%d) is not in the new nodelist", self.me)
            return
        ignored = [
            name
            for name in ("transport", "links", "crypto_cipher", "crypto_hash", "cmanlk", "cluster_name")
            if getattr(new, name) != getattr(old, name)
        ]
        old_timers = replace(old.totem, nodes=())
        if replace(new.totem, nodes=()) != old_timers:
            ignored.append("totem timers")
        if replace(new.quorum, node_votes=()) != replace(old.quorum, node_votes=()):
            ignored.append("quorum settings")
        if new.quorum.node_votes != old.quorum.node_votes:
            # The Stack takes the nodelist's votes at start; expected votes follow a new nodelist
            # after a restart (or set them now with set_expected).
            ignored.append("nodelist votes (expected votes)")
        if ignored:
            log.warning("reload: %s changed; these take effect only after a restart", ", ".join(ignored))
        self.config = replace(old, nodes=new.nodes, logging=new.logging, warnings=new.warnings)
        if new.node_addresses() != old.node_addresses():
            nodes = tuple(n.nodeid for n in new.nodes)
            log.info("reload: nodelist now %s", _ids(nodes))
            self.transport.set_nodes(new.node_addresses())
            self._feed(NodelistChanged(_now(), nodes))
        else:
            log.info("reload: nodelist unchanged")
        from cmanlk.runtime.logsetup import setup_logging

        setup_logging(new.logging, debug=logging.getLogger().level == logging.DEBUG)
        self._write_status()

    # -- status ----------------------------------------------------------------------------------
    async def _status_loop(self) -> None:
        # State changes (GATHER, quorum) mark the status dirty; it is written within
        # STATUS_DIRTY_DELAY_S, and in any case every STATUS_REFRESH_S for fresh counters.
        last = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_DIRTY_DELAY_S)
            if self._status_dirty or time.monotonic() - last >= STATUS_REFRESH_S:
                self._write_status()
                last = time.monotonic()

    def _write_status(self) -> None:
        try:
            statedir.write_status(self.status_path, self.status().as_dict())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_path, exc)
        self._status_dirty = False

    def _stats(self) -> dict[str, object]:
        out: dict[str, object] = {"persisted_ring_seq": self._persisted_seq, "delivered": self._delivered}
        totem = self._totem()
        if totem is not None:
            out["totem"] = {f.name: _plain(getattr(totem.stats, f.name)) for f in fields(totem.stats)}
        if isinstance(self.core, Stack):
            out["stack_dropped"] = dict(self.core.stats)
            out["sync_state"] = self.core.sync.state.value
        counters: dict[str, int] = {}
        for link in self.transport.links():
            for key, value in link.counters.items():
                counters[key] = counters.get(key, 0) + value
        out["transport"] = counters
        return out


class _Stop(Exception):
    """Raised inside the TaskGroup to cancel the helper tasks once the control loop returns."""


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first exception of a (nested) group that is not our own _Stop, or None."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_failure(exc)
            if inner is not None:
                return inner
        elif not isinstance(exc, _Stop):
            return exc
    return None


def _now() -> Instant:
    return Instant(time.monotonic_ns())


def _ids(nodes: tuple[NodeId, ...] | list[NodeId]) -> str:
    return "[" + " ".join(str(n) for n in nodes) + "]"


def _plain(value: object) -> object:
    """A JSON-friendly rendering of a counter or state field."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


class NodeIpcBackend:
    """`cmanlk.runtime.ipc.IpcBackend` over a running Node: what local clients see of the daemon.

    `status()` is the node's NodeStatus plus the nodelist, the quorum decision, flat per-peer link
    states and the cpg groups; `submit()` feeds Stack events; `admin()` serves LeaveCluster
    (graceful leave, then the daemon exits), KillNode (cfg KILLNODE) and the DLM commands, and
    refuses the rest with `not_supported`.
    """

    def __init__(self, node: Node, dlm: Any = None) -> None:
        self.node = node
        self.dlm = dlm
        """The DLM companion (cmanlk.runtime.dlmd.DlmDaemon) serving DlmStatus and FenceAck, or None."""

    def status(self) -> Mapping[str, Any]:
        """Return the JSON-able snapshot described by IpcBackend."""
        from cmanlk import __version__

        node = self.node
        out = node.status().as_dict()
        q = node.quorum_state
        votes = dict(q.node_votes) if q is not None else {}
        out["version"] = __version__
        out["nodes"] = [
            {
                "nodeid": n.nodeid,
                "name": n.name or "",
                "addresses": [n.addresses[k] for k in n.addresses],
                "votes": votes.get(n.nodeid, n.quorum_votes),
                "state": "member" if n.nodeid in node.members else "dead",
            }
            for n in node.config.nodes
        ]
        out["quorum"] = {f.name: _plain(getattr(q, f.name)) for f in fields(q)} if q is not None else {}
        links = node.transport.links()
        out["link_status"] = [lk.as_dict() for lk in links]
        out["links"] = [
            {"nodeid": p.node, "link": lk.index, "up": p.reachable, "address": p.address}
            for lk in links
            for p in lk.peers
        ]
        out["cpg_groups"] = self._cpg_groups()
        return out

    def submit(self, event: object) -> None:
        """Feed a Stack event carrying the server's request id. Raises UsageError("not_running")."""
        self.node.handle_request(event)

    def subscribe(self, listener: Callable[[object], None]) -> None:
        """Receive every notification the core publishes."""
        self.node.add_listener(listener)

    def unsubscribe(self, listener: Callable[[object], None]) -> None:
        """Stop receiving notifications."""
        self.node.remove_listener(listener)

    async def admin(self, command: object) -> dict[str, Any]:
        """LeaveCluster: leave and exit. KillNode: our own id is a leave; another member gets the
        cfg KILLNODE (UsageError "not_found" when not a member). Else UsageError("not_supported")."""
        from cmanlk.runtime.ipc import KillNode, LeaveCluster

        if isinstance(command, KillNode) and command.nodeid != self.node.me:
            from cmanlk.services.base import CFG_SERVICE
            from cmanlk.services.cfg.service import KILL_REASON, KillNodeRequest
            from cmanlk.stack import ServiceRequest

            kill = KillNodeRequest(command.nodeid, command.reason or KILL_REASON)
            await self.node.request(lambda now, rid: ServiceRequest(now, CFG_SERVICE, kill, rid))
            return {"result": "kill_sent", "nodeid": command.nodeid}
        if isinstance(command, LeaveCluster | KillNode):
            self.node.request_leave()
            return {"result": "leaving", "node_id": self.node.me}
        from cmanlk.runtime.ipc import DlmStatus, FenceAck

        if self.dlm is not None and isinstance(command, DlmStatus):
            return dict(self.dlm.status())
        if self.dlm is not None and isinstance(command, FenceAck):
            return dict(self.dlm.fence_ack(command.nodeid))
        raise UsageError(ErrorCode.NOT_SUPPORTED, f"{type(command).__name__} is not served by this daemon")

    def _cpg_groups(self) -> list[dict[str, object]]:
        from cmanlk.services.cpg.service import CpgService

        core = self.node.core
        svc = core.services.get(CpgService.service_id) if isinstance(core, Stack) else None
        if not isinstance(svc, CpgService):
            return []
        return [
            {"name": g.name.decode("utf-8", "backslashreplace"), "members": [list(m) for m in g.members]}
            for g in svc.groups()
        ]
