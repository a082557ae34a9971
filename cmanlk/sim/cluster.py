"""N simulated nodes, each running the real protocol core, over the seeded network.

A node's core is anything with `handle(event) -> list[Action]` and a
`next_deadline` property (the Totem core, or a StackHost running the whole node:
cmanlk/sim/stackhost.py); it is built by a `CoreFactory(config, me, rng, ring_seq)`.
The cluster plays the part of the runtime (STYLE.md, "How the runtime reads"): it feeds `Started`,
`PacketReceived(src=...)`, `DeadlineReached` and `McastRequested` events, carries
out the returned actions in order, and keeps one timer per node at the core's
`next_deadline`. `PersistRingSeq` is remembered per node and survives crashes: a
restarted node's fresh core gets it as `ring_seq`, as corosync reads
`ringid_<nodeid>` at start.

Determinism: every random draw comes from `random.Random` objects seeded from the
run's seed (one for the network, one for traffic, one per node incarnation, all
derived from strings, which `random` hashes with SHA-512), and events are ordered
by (virtual time, insertion count). Nothing reads the wall clock.

A core that raises out of `handle()` has a bug (remote input must never raise):
the cluster records it in `errors`, marks the node crashed and carries on, so a
random run reports the exception with its seed instead of dying.
"""

from __future__ import annotations

import importlib
import random
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cmanlk.errors import CmanlkError
from cmanlk.sim.clock import CLIENT, PACKET, PROGRAM, TIMER, Entry, EventQueue
from cmanlk.sim.history import (
    Booted,
    Crashed,
    Delivered,
    Installed,
    Left,
    Record,
    Sent,
    StateEntered,
)
from cmanlk.sim.network import LinkModel, Network
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
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import (
    DeadlineReached,
    Event,
    Guarantee,
    LeaveRequested,
    McastRequested,
    PacketReceived,
    Started,
)
from cmanlk.types import NO_RING, Duration, Instant, NodeId, RingId, ms

MAX_TIMER_FIRINGS_AT_ONE_INSTANT = 10_000  # a core whose deadline never moves past now is livelocked.


class Core(Protocol):
    """What the simulator drives: the Totem core, or the whole Stack."""

    def handle(self, event: Event) -> list[Any]: ...

    @property
    def next_deadline(self) -> Instant | None: ...


CoreFactory = Callable[[TotemConfig, NodeId, random.Random, int], Core]


def totem_factory(config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int) -> Core:
    """Build the real Totem core (imported late so the simulator loads without it)."""
    module = importlib.import_module("cmanlk.totem.core")
    core: Core = module.Totem(config, me, rng, ring_seq)
    return core


@dataclass(slots=True)
class SimNode:
    """One simulated machine: its current core (None while down) and what survives a crash."""

    id: NodeId
    core: Core | None = None
    incarnation: int = -1
    persisted_seq: int = 0  # survives crashes, like <state_dir>/ringid_<nodeid>
    history: list[Record] = field(default_factory=list)
    state: MembState | None = None
    ring_id: RingId = NO_RING
    members: tuple[NodeId, ...] = ()
    timer_gen: int = 0
    armed: int | None = None
    sent: int = 0  # client message counter, kept across restarts so payloads stay unique
    fired_at: int = -1
    fired_count: int = 0

    @property
    def up(self) -> bool:
        return self.core is not None


@dataclass(slots=True)
class ClusterStats:
    events: int = 0
    delivered: int = 0
    configs: int = 0
    sent: int = 0
    rejected: int = 0
    crashes: int = 0
    restarts: int = 0


@dataclass(slots=True)
class Traffic:
    """A client on every node sending at `rate_per_s` until `until` (a fraction marked safe)."""

    rate_per_s: float
    until: Instant
    safe_fraction: float = 0.0
    large_fraction: float = 0.0  # messages big enough to be fragmented by totempg
    nodes: tuple[NodeId, ...] | None = None


Listener = Callable[[NodeId, Record], None]


class Cluster:
    """A deterministic simulated cluster; see the module docstring."""

    def __init__(
        self,
        config: TotemConfig,
        *,
        seed: int,
        factory: CoreFactory = totem_factory,
        model: LinkModel | None = None,
        record_states: bool = True,
    ) -> None:
        self.config = config
        self.seed = seed
        self.factory = factory
        self.queue = EventQueue()
        self.network = Network(random.Random(f"{seed}/net"), model or LinkModel())
        self.traffic_rng = random.Random(f"{seed}/traffic")
        self.nodes: dict[NodeId, SimNode] = {n: SimNode(n) for n in config.nodes}
        self.stats = ClusterStats()
        self.errors: list[str] = []
        self.record_states = record_states
        self.listeners: list[Listener] = []
        self._dispatch: dict[type, Callable[[SimNode, Any], None]] = {
            Unicast: self._do_unicast,
            Multicast: self._do_multicast,
            PersistRingSeq: self._do_persist,
            Deliver: self._do_deliver,
            DeliverConfiguration: self._do_config,
            StateChanged: self._do_state,
        }

    # --- public control ------------------------------------------------------------------------------

    @property
    def now(self) -> Instant:
        return self.queue.now

    def histories(self) -> dict[NodeId, list[Record]]:
        return {n: node.history for n, node in self.nodes.items()}

    def up_nodes(self) -> list[NodeId]:
        return [n for n, node in self.nodes.items() if node.up]

    def boot(self, n: NodeId) -> None:
        """Start (or restart) node `n` with a fresh core and its persisted ring seq. No-op if it is up."""
        node = self.nodes[n]
        if node.up:
            return
        node.incarnation += 1
        if node.incarnation > 0:
            self.stats.restarts += 1
        rng = random.Random(f"{self.seed}/node{n}/{node.incarnation}")
        node.state, node.ring_id, node.members = None, NO_RING, ()
        self._record(node, Booted(self.now, node.persisted_seq))
        try:
            node.core = self.factory(self.config, n, rng, node.persisted_seq)
        except Exception:
            self._core_failed(node, "constructing the core")
            return
        self._feed(node, Started(self.now))

    def crash(self, n: NodeId) -> None:
        """Stop node `n` at once (no leave message); what it persisted survives."""
        node = self.nodes[n]
        if not node.up:
            return
        self.stats.crashes += 1
        self._stop(node, Crashed(self.now))

    def leave(self, n: NodeId) -> None:
        """Shut node `n` down cleanly: feed LeaveRequested, send what it returns, then stop it."""
        node = self.nodes[n]
        if not node.up:
            return
        self._feed(node, LeaveRequested(self.now))
        if node.up:
            self._stop(node, Left(self.now))

    def send(self, n: NodeId, payload: bytes, guarantee: Guarantee = Guarantee.AGREED) -> bool:
        """A client on `n` sends `payload`; return whether the core accepted it."""
        node = self.nodes[n]
        if node.core is None:
            return False
        try:
            actions = node.core.handle(McastRequested(self.now, payload, guarantee))
        except (ValueError, CmanlkError):
            # A full send queue is refused to the client, as corosync answers CS_ERR_TRY_AGAIN.
            self.stats.rejected += 1
            return False
        except Exception:
            self._core_failed(node, "McastRequested")
            return False
        self.stats.sent += 1
        self._record(node, Sent(self.now, payload, guarantee))
        self._apply(node, actions)
        return True

    def next_payload(self, n: NodeId, size: int = 0) -> bytes:
        """Return a fresh payload for node `n`: `m<node>.<counter>|` padded to `size` bytes."""
        node = self.nodes[n]
        node.sent += 1
        head = b"m%d.%d|" % (n, node.sent)
        return head + b"x" * max(0, size - len(head))

    def at(self, t: int, fn: Callable[[], None]) -> None:
        """Run `fn` at virtual time `t` (fault programs, scenario steps)."""
        self.queue.push(t, PROGRAM, NodeId(0), fn)

    def start_traffic(self, traffic: Traffic) -> None:
        """Start a client on each node (or `traffic.nodes`) sending at the given mean rate."""
        for n in traffic.nodes or tuple(self.nodes):
            self._schedule_client(n, traffic)

    def run_until(self, t: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to virtual time `t`; with `stop`, return True as soon as it holds."""
        pop_due, step = self.queue.pop_due, self._step
        while True:
            entry = pop_due(t)
            if entry is None:
                self.queue.advance_to(t)
                return stop is not None and stop()
            step(entry)
            if stop is not None and stop():
                return True

    def run_for(self, span: Duration, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + span, stop)

    def is_stable(self) -> bool:
        """Is every up node OPERATIONAL in a ring made of exactly the up nodes it can reach?"""
        up = []
        for n, node in self.nodes.items():  # polled after every event: the cheap test first
            if node.core is not None:
                if node.state is not MembState.OPERATIONAL:
                    return False
                up.append(n)
        for group in self.network.groups(up):
            ring = self.nodes[group[0]].ring_id
            for n in group:
                node = self.nodes[n]
                if node.state is not MembState.OPERATIONAL or node.members != group or node.ring_id != ring:
                    return False
        return True

    def groups(self) -> list[tuple[NodeId, ...]]:
        return self.network.groups(self.up_nodes())

    # --- the event loop ------------------------------------------------------------------------------

    def _step(self, entry: Entry) -> None:
        self.stats.events += 1
        t, _n, kind, n, data = entry
        if kind == PACKET:
            node = self.nodes.get(n)
            src, payload = data
            if node is not None and node.core is not None and self.network.connected(src, n):
                self._feed(node, PacketReceived(Instant(t), payload, src))
        elif kind == TIMER:
            node = self.nodes[n]
            if node.core is not None and data == node.timer_gen:
                node.armed = None
                self._check_livelock(node, t)
                if node.core is not None:
                    self._feed(node, DeadlineReached(Instant(t)))
        elif kind == CLIENT:
            self._client(n, data)
        else:
            data()

    def _check_livelock(self, node: SimNode, t: int) -> None:
        if node.fired_at == t:
            node.fired_count += 1
            if node.fired_count > MAX_TIMER_FIRINGS_AT_ONE_INSTANT:
                self.errors.append(
                    f"node {node.id}: next_deadline stuck at {t} ns (timer fired "
                    f"{MAX_TIMER_FIRINGS_AT_ONE_INSTANT} times without time passing)"
                )
                self._stop(node, Crashed(self.now))
        else:
            node.fired_at, node.fired_count = t, 0

    def _feed(self, node: SimNode, event: Event) -> None:
        core = node.core
        assert core is not None
        try:
            actions = core.handle(event)
        except Exception:
            self._core_failed(node, type(event).__name__)
            return
        self._apply(node, actions)

    def _apply(self, node: SimNode, actions: list[Any]) -> None:
        dispatch = self._dispatch
        for action in actions:
            handler = dispatch.get(type(action))
            if handler is not None:
                handler(node, action)
            if node.core is None:
                return
        core = node.core
        if core is None:
            return
        deadline = core.next_deadline
        if deadline != node.armed:
            node.armed = deadline
            node.timer_gen += 1
            if deadline is not None:
                self.queue.push(deadline, TIMER, node.id, node.timer_gen)

    def _core_failed(self, node: SimNode, during: str) -> None:
        tb = traceback.format_exc(limit=6)
        self.errors.append(f"node {node.id} at {self.now} ns: core raised during {during}:\n{tb}")
        self._stop(node, Crashed(self.now))

    def _stop(self, node: SimNode, mark: Record) -> None:
        node.core = None
        node.timer_gen += 1
        node.armed = None
        node.state = None
        self._record(node, mark)

    def _record(self, node: SimNode, rec: Record) -> None:
        node.history.append(rec)
        for listener in self.listeners:
            listener(node.id, rec)

    # --- actions -------------------------------------------------------------------------------------

    def _do_unicast(self, node: SimNode, a: Unicast) -> None:
        self._transmit(node.id, a.to, a.data)

    def _do_multicast(self, node: SimNode, a: Multicast) -> None:
        src = node.id
        for dst in a.to:
            self._transmit(src, dst, a.data)

    def _transmit(self, src: NodeId, dst: NodeId, data: bytes) -> None:
        if dst not in self.nodes:
            return  # an address outside the nodelist: nobody there.
        push = self.queue.push
        for t in self.network.transit(src, dst, self.now, len(data)):
            push(t, PACKET, dst, (src, data))

    def _do_persist(self, node: SimNode, a: PersistRingSeq) -> None:
        node.persisted_seq = a.seq

    def _do_deliver(self, node: SimNode, a: Deliver) -> None:
        self.stats.delivered += 1
        self._record(node, Delivered(self.now, a.ring_id, a.sender, a.payload, a.guarantee))

    def _do_config(self, node: SimNode, a: DeliverConfiguration) -> None:
        if a.kind is ConfigKind.REGULAR:
            self.stats.configs += 1
            node.ring_id, node.members = a.ring_id, tuple(a.members)
        self._record(node, Installed(self.now, a.kind, a.ring_id, tuple(a.members), a.left, a.joined))

    def _do_state(self, node: SimNode, a: StateChanged) -> None:
        node.state = a.state
        if self.record_states:
            self._record(node, StateEntered(self.now, a.state.value, a.reason, a.ring_id))

    # --- clients -------------------------------------------------------------------------------------

    def _schedule_client(self, n: NodeId, traffic: Traffic) -> None:
        if traffic.rate_per_s <= 0:
            return
        gap = self.traffic_rng.expovariate(traffic.rate_per_s)
        t = self.now + max(1, int(gap * 1e9))
        if t <= traffic.until:
            self.queue.push(t, CLIENT, n, traffic)

    def _client(self, n: NodeId, traffic: Traffic) -> None:
        if self.now > traffic.until:
            return  # stopped early (scenario `traffic 0`)
        rng = self.traffic_rng
        if self.nodes[n].up:
            large = traffic.large_fraction and rng.random() < traffic.large_fraction
            size = rng.randint(1500, 4000) if large else rng.randint(8, 200)
            safe = traffic.safe_fraction and rng.random() < traffic.safe_fraction
            self.send(n, self.next_payload(n, size), Guarantee.SAFE if safe else Guarantee.AGREED)
        self._schedule_client(n, traffic)


def sim_config(nodes: Iterable[int], **overrides: int) -> TotemConfig:
    """Return the simulator's default totem config: corosync's derivations on a small token.

    token 200 ms and a token coefficient of 20 ms keep a random schedule a few virtual
    seconds long while every timer keeps corosync's proportions.
    """
    params: dict[str, int] = {"token_ms": 200, "token_coefficient_ms": 20}
    params.update(overrides)
    return TotemConfig.derive(tuple(NodeId(n) for n in nodes), **params)  # type: ignore[arg-type]


__all__ = ["Cluster", "Core", "CoreFactory", "Traffic", "ms", "sim_config", "totem_factory"]
