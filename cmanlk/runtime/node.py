"""The driver loop of cmanlkd: feeds the pure Stack real datagrams and time, carries out its actions.

No protocol logic lives here. On a datagram: `stack.handle(PacketReceived(now, data, src, link))`;
on the one loop timer: `stack.handle(DeadlineReached(now))`; then the returned actions are carried
out in order and the timer is re-armed at `stack.next_deadline`. `now` is clock.now(), the clock
asyncio's `loop.time()` also reads, so `loop.call_at(deadline / 1e9)` fires on time.

Action order is the contract (STYLE.md): a `PersistRingSeq` is written and fsynced before the
next action, so a new ring's packets never leave before its seq is durable. Network sends never
block (non-blocking sockets; a full buffer is a lost datagram totem recovers from).

Long-lived tasks (watchdog pings, status refresh, the control queue fed by signal handlers) run
under one asyncio.TaskGroup. An exception raised by the core stops the node: it is logged with
the state, a leave is attempted, and `run()` raises it as InternalError (a bug: the core's
exception is its cause), or as the OSError it was when the host failed us (a ring seq that
could not be made durable).

Observable state, for the IPC server, D-Bus and admins (cmanlk/runtime/status.py): `snapshot()`,
one frozen Snapshot built once per change and shared by every reader until the next;
`counters()`, read afresh; listeners for the core's notifications (`add_listener`), and
`<run_dir>/status.json`, rewritten atomically on every change and every STATUS_REFRESH_S.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from cmanlk import __version__
from cmanlk.config import ClusterConfig
from cmanlk.errors import ErrorCode, InternalError, UsageError
from cmanlk.runtime import statedir
from cmanlk.runtime.clock import now
from cmanlk.runtime.datagrams import Datagram
from cmanlk.runtime.notify import Notifier
from cmanlk.runtime.status import Counters, GroupView, NodeView, PathChanged, PathView, Snapshot, status_json
from cmanlk.runtime.transport import Transport, build_transport
from cmanlk.services.base import Notification
from cmanlk.services.cfg.service import CfgService, KilledByNode, KillRequested, NodeShutDown
from cmanlk.services.cmap.service import ConfigVersionMismatch
from cmanlk.services.cpg.service import CpgConfchg, CpgDeliver, CpgMcast, CpgService, CpgTotemConfchg, Handle
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.stack import Event as StackEvent
from cmanlk.stack import MembershipChanged, RequestResult, Stack, StackConfig, default_services
from cmanlk.totem.actions import MembState, Multicast, PersistRingSeq, StateChanged, Unicast
from cmanlk.totem.events import DeadlineReached, LeaveRequested, NodelistChanged, PacketReceived, Started
from cmanlk.types import NO_RING, Instant, NodeId, RingId

log = logging.getLogger("cmanlk.node")

_PASSED_ON = frozenset({CpgConfchg, CpgTotemConfchg})
"""Notifications the node does nothing with but hand to its listeners (CpgDeliver, the same kind,
goes in runs: _carry_out, _publish_deliveries)."""

STATUS_REFRESH_S = 2.0
"""status.json is also rewritten this often, so its counters stay fresh for admins and tests."""
STATUS_TICK_S = 0.2
"""How often paths are looked at (a path going up or down is a change: PathChanged, a new
snapshot) and a changed status reaches status.json (membership changes are written at once)."""
LEAVE_FLUSH_S = 0.05
"""After the leave JOIN is handed to the kernel, wait this long before closing sockets so the
datagrams leave the host (sendto on a non-blocking socket only queues them)."""
MAX_LISTENERS = 64
"""Bound on notification listeners (IPC server, D-Bus service, the DLM runtime, tests)."""
MAX_PENDING_REQUESTS = 512
"""Bound on local requests waiting for the core's answer: each IPC connection has at most one
(256), D-Bus at most 8, the DLM runtime one."""
REQUEST_TIMEOUT_S = 5.0

RequestBuilder = Callable[[Instant, int], StackEvent]
"""Builds a local request event (SetExpectedVotes, ServiceRequest, …) from `now` and its id."""
DeliveriesListener = Callable[[list[CpgDeliver]], None]
"""Called with a run of cpg deliveries instead of each (add_listener's `deliveries`)."""
Listener = Callable[[object], None]
"""Called with each notification the core publishes (MembershipChanged, QuorumChanged, cpg
deliveries, RequestResult) and the node's own PathChanged, on the loop thread."""


class _Receiver:
    """The node's callback for its transport (cmanlk.runtime.datagrams): one datagram, or a
    wake-up's datagrams as one batch."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def __call__(self, data: bytes, src: NodeId | None, link: int) -> None:
        self._node._on_datagram(data, src, link)

    def batch(self, items: list[Datagram]) -> None:
        self._node._on_datagrams(items)


class Node:
    """One running cluster node. `await run()` until it has left (SIGTERM) or failed."""

    def __init__(
        self,
        config: ClusterConfig,
        me: NodeId,
        *,
        transport: Transport | None = None,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        extra_services: tuple[Any, ...] = (),
        companions: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = (),
    ) -> None:
        """Build the node (nothing runs before `run()`).

        `transport` defaults to the one `config` selects; `extra_services` are service factories
        added to the Stack; `companions` are coroutine functions run under the node's TaskGroup
        while it runs (the D-Bus, IPC and DLM edges): if one raises, the node stops.
        Raises ConfigError or OSError when the transport cannot be built.
        """
        self.config = config
        self.me = me
        self.transport = transport if transport is not None else build_transport(config, me)
        self.notifier = notifier or Notifier({})
        self.rng = rng or random.Random()
        self.extra_services = extra_services
        self.companions = companions
        self.core: Stack | None = None
        self.run_dir = Path(config.cmanlk.run_dir)
        self.state_dir = Path(config.cmanlk.state_dir)
        self.status_path = self.run_dir / "status.json"
        self._requests: dict[int, asyncio.Future[RequestResult]] = {}
        self._next_request_id = 1
        self._submitting: dict[int, RequestResult | None] = {}  # answers given while submitting
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: Instant | None = None
        self._listeners: list[Listener] = []
        self._batch_listeners: dict[Listener, DeliveriesListener] = {}
        self._deliveries_now: tuple[tuple[Listener, DeliveriesListener | None], ...] = ()
        self._listeners_now: tuple[Listener, ...] = ()  # what _publish calls (a copy: listeners may
        # add or remove listeners while being called)
        self._arm_pending = False  # a timer re-arm is scheduled for the end of this loop iteration
        self._stopped = False
        self._control: asyncio.Queue[tuple[str, object]] = asyncio.Queue(maxsize=16)
        self._fatal: BaseException | None = None
        self._ready_sent = False
        self._left = False
        self._ring_id: RingId = NO_RING
        self._members: tuple[NodeId, ...] = ()
        self._state = MembState.GATHER
        self._changes = 0
        self._quorate: bool | None = None
        self._reason = "starting"
        self._started_at = time.time()
        self._persisted_seq = 0
        self._paths: dict[tuple[NodeId, int], bool] = {}
        self._snapshot: Snapshot | None = None
        self._snapshot_of: tuple[int, int, QuorumState | None] = (-1, -1, None)  # what it was built of
        self._change = 0
        self._status_written_at = -1
        self.killed_by: KilledByNode | None = None
        """Set when a peer's kill request (cfg KILLNODE) named us; the daemon then exits 5."""
        self.before_leave: Callable[[], Awaitable[None]] | None = None
        """Awaited before a requested leave (SIGTERM, `cmanlk-tool leave`), not before a kill by a
        peer: the libqb IPC stops the programs that track cfg shutdown first (pacemaker)."""

    # -- public API -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until a leave completes (returns) or the core fails (raises, see the module docstring).

        Raises OSError when the state or run directory or the sockets cannot be set up.
        """
        statedir.ensure_dir(self.state_dir, 0o700)
        statedir.ensure_dir(self.run_dir)
        ring_seq = statedir.read_ring_seq(self.state_dir, self.me)
        self._persisted_seq = ring_seq
        await self.transport.start(_Receiver(self))
        try:
            self.core = self._build_core(ring_seq)
            t = self.config.totem
            log.info("node %d starting (transport %s, persisted ring seq %d, token %d ms, consensus %d ms)",
                     self.me, self.config.transport.value, ring_seq, t.token_ms, t.consensus_ms)  # fmt: skip
            self._feed(Started(now()))
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
            self._stopped = True
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

    def submit(self, build: RequestBuilder) -> RequestResult | asyncio.Future[RequestResult]:
        """Feed the local request `build(now, request_id)` to the core; return its answer — at
        once when the Stack gave it while handling the event (it always does), else a future the
        caller awaits with its own timeout.

        Raises UsageError(not_running) when the node is not running, UsageError(busy) past
        MAX_PENDING_REQUESTS.
        """
        if self.core is None or self._left:
            raise UsageError(ErrorCode.NOT_RUNNING, "the node is not running")
        request_id = self._next_request_id
        self._next_request_id += 1
        self._submitting[request_id] = None
        try:
            self._feed(build(now(), request_id))
        finally:
            answer = self._submitting.pop(request_id)
        if answer is not None:
            return answer
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            raise UsageError(ErrorCode.BUSY, f"{MAX_PENDING_REQUESTS} requests are already pending")
        future: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        future.add_done_callback(lambda _: self._requests.pop(request_id, None))
        return future

    def cpg_mcast(self, handle: Handle, group: bytes, payload: bytes) -> ErrorCode | None:
        """A local client's cpg MCAST through the Stack's fused send path (Stack.local_mcast):
        what submitting ServiceRequest(CpgMcast(handle, group, payload)) does, without the request
        objects and the RequestResult; returns the refusal's code, None when it was queued.

        Raises UsageError(not_running) as `submit` does.
        """
        core = self.core
        if core is None or self._left:
            raise UsageError(ErrorCode.NOT_RUNNING, "the node is not running")
        if self._fatal is not None:
            return ErrorCode.LIBRARY  # as submit's unanswered request: the core has failed
        try:
            error, actions = core.local_mcast(now(), handle, group, payload)
            if actions:
                self._carry_out(actions)
        except Exception as exc:  # as in _feed
            self._core_failed(exc, CpgMcast(handle, group, payload))
            return ErrorCode.LIBRARY
        self._arm_soon()
        return error

    async def request(self, build: RequestBuilder, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
        """`submit`, waiting for the answer: returns the result message ("" when none).

        Raises UsageError with the core's code when refused, UsageError(timeout) after
        `timeout_s`, and as `submit`.
        """
        return await answer_of(self.submit(build), timeout_s)

    def add_listener(self, listener: Listener, deliveries: DeliveriesListener | None = None) -> None:
        """Register a callback for notifications. Raises UsageError past MAX_LISTENERS.

        `deliveries`, when given, takes the CpgDelivers instead of `listener`: each run of them
        that the core returned in a row (a frame's, mostly) in one call, in order.
        """
        if len(self._listeners) >= MAX_LISTENERS:
            raise UsageError(ErrorCode.NO_RESOURCES, f"at most {MAX_LISTENERS} listeners")
        self._listeners.append(listener)
        if deliveries is not None:
            self._batch_listeners[listener] = deliveries
        self._renew_listeners()

    def remove_listener(self, listener: Listener) -> None:
        """Unregister a callback (no error if absent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)
            self._batch_listeners.pop(listener, None)
            self._renew_listeners()

    def _renew_listeners(self) -> None:
        self._listeners_now = tuple(self._listeners)
        self._deliveries_now = tuple((lst, self._batch_listeners.get(lst)) for lst in self._listeners)

    def snapshot(self) -> Snapshot:
        """The node now: the same object until something changes (module docstring).

        A change is what the node is told of (state, membership, reload, paths: `_changed`), a
        cpg process list change (its generation), or any change of votequorum's state (votes
        change without a QuorumChanged notification).
        """
        cpg = self._cpg()
        quorum = self.core.quorum if self.core is not None else None
        key = (self._change, cpg.generation if cpg is not None else 0, quorum)
        if self._snapshot is None or key != self._snapshot_of:
            self._snapshot, self._snapshot_of = self._build_snapshot(quorum), key
        return self._snapshot

    def counters(self) -> Counters:
        """The counters now (Totem's, the Stack's drops, the transport's, per link)."""
        stats: dict[str, object] = {"persisted_ring_seq": self._persisted_seq}
        core = self.core
        if core is not None:
            totem = core.totem.stats
            stats["totem"] = {f.name: getattr(totem, f.name) for f in fields(totem)}
            stats["stack_dropped"] = dict(core.stats)
            stats["sync_state"] = core.sync.state.value
        links = tuple(self.transport.links())
        totals: dict[str, int] = {}
        for link in links:
            for key, value in link.counters.items():
                totals[key] = totals.get(key, 0) + value
        stats["transport"] = totals
        return Counters(stats, links)

    # -- the core ----------------------------------------------------------------------------------
    def _build_core(self, ring_seq: int) -> Stack:
        totem_cfg = self.config.totem
        payload = getattr(self.transport, "max_payload_bytes", None)
        if isinstance(payload, int) and payload + 45 < totem_cfg.netmtu:
            # Keep every totem frame within one datagram of the transport (native.py docstring).
            totem_cfg = replace(totem_cfg, netmtu=payload + 45)
        # cpg (service 2) always runs: corosync peers sync it, and local clients use it.
        services = default_services(
            self.config.quorum, self.config.config_version, (CfgService, CpgService, *self.extra_services)
        )
        stack_cfg = StackConfig(totem_cfg, self.config.quorum, services, self.config.config_version)
        return Stack(stack_cfg, self.me, self.rng, ring_seq)

    def _on_datagram(self, data: bytes, src: NodeId | None, link: int) -> None:
        if self.core is None or self._left:
            return
        self._feed(PacketReceived(now(), data, src, link))

    def _on_datagrams(self, items: list[Datagram]) -> None:
        """A wake-up's datagrams: fed to the core in order, their actions carried out together."""
        core = self.core
        if core is None or self._left or self._fatal is not None:
            return
        t = now()
        actions: list[Any] = []
        for data, src, link in items:
            event = PacketReceived(t, data, src, link)
            try:
                actions += core.handle(event)
            except Exception as exc:  # as in _feed: what came before still goes out, then we stop
                self._carry_out(actions)
                self._core_failed(exc, event)
                return
        try:
            self._carry_out(actions)
        except Exception as exc:
            self._core_failed(exc, event)
            return
        self._arm_soon()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None and not self._left:
            self._feed(DeadlineReached(now()))

    def _feed(self, event: StackEvent) -> None:
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
            self._core_failed(exc, event)
            return
        self._arm_soon()

    def _core_failed(self, exc: Exception, event: object) -> None:
        where = f"{type(event).__name__} (state {self._state.value}, ring {self._ring_id})"
        log.critical("stopping: %r while handling %s", exc, where, exc_info=exc)
        if isinstance(exc, OSError | InternalError):
            self._fatal = exc  # OSError: the host failed us (ring seq not durable), exit 3
        else:
            self._fatal = InternalError(f"the core failed: {exc!r} while handling {where}")
            self._fatal.__cause__ = exc
        self._post("fatal", None)

    def _carry_out(self, actions: list[Any]) -> None:
        transport = self.transport
        run: list[CpgDeliver] = []  # cpg deliveries in a row: published together (add_listener)
        for action in actions:
            # The hot path first, by exact type: frames out, and cpg traffic, which the node only
            # passes on (the match below tests up to eight classes per action).
            kind = type(action)
            if kind is CpgDeliver:
                run.append(action)
                continue
            if run:
                self._publish_deliveries(run)
                run = []
            if kind is Multicast:
                transport.multicast(action.to, action.data)
                continue
            if kind is Unicast:
                transport.unicast(action.to, action.data)
                continue
            if kind in _PASSED_ON:
                self._publish(action)
                continue
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
                    self._on_membership(action)
                    self._publish(action)
                case RequestResult():
                    self._on_answer(action)
                    self._publish(action)
                case Notification():
                    self._on_notification(action)
                    self._publish(action)
                case _:
                    raise InternalError(f"the core returned an action the runtime does not know: {action!r}")
        if run:
            self._publish_deliveries(run)

    def _arm_soon(self) -> None:
        """Re-arm the timer once at the end of this loop iteration, not after every event fed:
        a wake-up that feeds many datagrams or requests computes the next deadline once."""
        if not self._arm_pending:
            self._arm_pending = True
            asyncio.get_running_loop().call_soon(self._arm_now)

    def _arm_now(self) -> None:
        self._arm_pending = False
        if not self._stopped:
            self._arm_timer()

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
        log.debug("totem %s -> %s: %s (ring %s)", self._state.value, change.state.value, change.reason,
                  change.ring_id)  # fmt: skip
        if change.state is MembState.GATHER:
            self._reason = change.reason
        self._state = change.state
        self._changed()

    def _on_membership(self, change: MembershipChanged) -> None:
        self._ring_id, self._members = change.ring_id, change.members
        tell = getattr(self.transport, "set_ring_members", None)  # optional (transport.py)
        if tell is not None:
            tell(change.members)
        self._changes += 1
        log.info("new membership (%s) members %s joined %s left %s; reason: %s", change.ring_id,
                 _ids(change.members), _ids(change.joined), _ids(change.left), self._reason)  # fmt: skip
        summary = f"ring {change.ring_id}: {len(change.members)} members ({_ids(change.members)})"
        if not self._ready_sent:
            self._ready_sent = self.notifier.ready(summary) or True
        else:
            self.notifier.status(summary)
        self._changed()
        self._write_status()

    def _on_answer(self, answer: RequestResult) -> None:
        if answer.request_id in self._submitting:
            self._submitting[answer.request_id] = answer
        future = self._requests.get(answer.request_id)
        if future is not None and not future.done():
            future.set_result(answer)

    def _on_notification(self, note: Notification) -> None:
        match note:
            case QuorumChanged(quorate=quorate, state=state):
                if quorate != self._quorate:
                    self._quorate = quorate
                    word = "quorate" if quorate else "NOT quorate"
                    log.info("quorum: %s (%d of %d votes, quorum %d)", word, state.total_votes,
                             state.expected_votes, state.quorum)  # fmt: skip
                self._changed()
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

    def _publish_deliveries(self, notes: list[CpgDeliver]) -> None:
        """A run of cpg deliveries: in one call to each listener that takes them so, else one by one."""
        for listener, batch in self._deliveries_now:
            if batch is None:
                for note in notes:
                    try:
                        listener(note)
                    except Exception:
                        log.exception("listener %r failed on CpgDeliver", listener)
                continue
            try:
                batch(notes)
            except Exception:  # a listener's bug must not stop the node; it is logged
                log.exception("listener %r failed on %d CpgDelivers", batch, len(notes))

    def _publish(self, item: object) -> None:
        for listener in self._listeners_now:
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
                if self.before_leave is not None and self.killed_by is None:
                    self.notifier.stopping()
                    await self.before_leave()
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
            self._carry_out(self.core.handle(LeaveRequested(now())))
        except Exception:  # leaving is best effort once we are failing
            log.exception("leave failed")
        self._left = True
        self._state = MembState.LEFT
        self._changed()
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
            self._feed(NodelistChanged(now(), nodes))
        else:
            log.info("reload: nodelist unchanged")
        from cmanlk.runtime.logsetup import setup_logging

        setup_logging(new.logging, debug=logging.getLogger().level == logging.DEBUG)
        self._changed()
        self._write_status()

    # -- status ----------------------------------------------------------------------------------
    def _changed(self) -> None:
        """Something a Snapshot shows changed: the next snapshot() builds a new one."""
        self._change += 1

    def _cpg(self) -> CpgService | None:
        core = self.core
        svc = core.services.get(CpgService.service_id) if core is not None else None
        return svc if isinstance(svc, CpgService) else None

    def _build_snapshot(self, q: QuorumState | None) -> Snapshot:
        core = self.core
        votes = dict(q.node_votes) if q is not None else {}
        members = set(self._members)
        nodes = tuple(
            NodeView(n.nodeid, n.name or "", tuple(n.addresses[k] for k in n.addresses),
                     votes.get(n.nodeid, n.quorum_votes), "member" if n.nodeid in members else "dead")
            for n in self.config.nodes
        )  # fmt: skip
        cpg = self._cpg()
        groups = tuple(
            GroupView(g.name.decode("utf-8", "backslashreplace"), tuple((n, p) for n, p in g.members))
            for g in (cpg.groups() if cpg is not None else [])
        )
        paths = tuple(PathView(n, link, up, addr) for (n, link), (up, addr) in self._path_table().items())
        return Snapshot(
            node_id=self.me,
            cluster_name=self.config.cluster_name,
            version=__version__,
            pid=os.getpid(),
            started_at=self._started_at,
            state=self._state.value,
            ring_id=self._ring_id,
            members=self._members,
            totem_ring_id=core.totem.ring_id if core is not None else NO_RING,
            membership_changes=self._changes,
            last_change_reason=self._reason,
            quorum=q,
            nodes=nodes,
            paths=paths,
            groups=groups,
        )

    def _path_table(self) -> dict[tuple[NodeId, int], tuple[bool, str]]:
        links = self.transport.links()
        return {(p.node, lk.index): (p.reachable, p.address) for lk in links for p in lk.peers}

    def _check_paths(self) -> None:
        """A path up or down is a change: publish PathChanged for each (the first look is not)."""
        table = self._path_table()
        seen = {key: up for key, (up, _address) in table.items()}
        if seen == self._paths:
            return
        first, old, self._paths = not self._paths, self._paths, seen
        self._changed()
        for (nodeid, link), up in seen.items():
            if not first and old.get((nodeid, link)) != up:
                self._publish(PathChanged(nodeid, link, up))

    async def _status_loop(self) -> None:
        # Paths are looked at every STATUS_TICK_S; a change reaches status.json then, and it is
        # rewritten every STATUS_REFRESH_S in any case for fresh counters.
        last = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_TICK_S)
            self._check_paths()
            if self._status_written_at != self._change or time.monotonic() - last >= STATUS_REFRESH_S:
                self._write_status()
                last = time.monotonic()

    def _write_status(self) -> None:
        try:
            content = status_json(self.snapshot(), self.counters(), time.time())
            statedir.write_status(self.status_path, content)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_path, exc)
        self._status_written_at = self._change


async def answer_of(submitted: RequestResult | asyncio.Future[RequestResult], timeout_s: float) -> str:
    """The answer to a submitted request (Node.submit), waited for up to `timeout_s`: its message.

    Raises UsageError with the refusal's code, UsageError(timeout) when no answer came in time
    (the future is then given up).
    """
    answer = submitted
    if isinstance(answer, asyncio.Future):
        future = answer
        try:
            async with asyncio.timeout(timeout_s):
                answer = await future
        except TimeoutError:
            raise UsageError(ErrorCode.TIMEOUT, f"no answer from the core within {timeout_s:g} s") from None
        finally:
            future.cancel()  # no-op once answered; else the node forgets it (its done callback)
    if answer.error is not None:
        raise UsageError(answer.error, answer.message or answer.error.wire)
    return answer.message


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


def _ids(nodes: tuple[NodeId, ...] | list[NodeId]) -> str:
    return "[" + " ".join(str(n) for n in nodes) + "]"
