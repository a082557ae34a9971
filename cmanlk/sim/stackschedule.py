"""Random schedules for the stack mode: Totem's faults plus the clients of the whole node.

A stack schedule is the Totem schedule of the same seed (cmanlk/sim/schedule.py: boots, network
and node faults, the quiet point) with the services' side drawn from `random.Random(f"stack/
{seed}")`:

- the quorum policy: votes (sometimes one node with 2), two_node (2 nodes), wait_for_all,
  last_man_standing (short windows), auto_tie_breaker (lowest, highest or a list),
  allow_downscale — a combination votequorum refuses is redrawn without last_man_standing;
- fencing: which nodes have an agent, and how each agent behaves during the faults (succeeds,
  fails, hangs until killed); after the quiet point every agent succeeds;
- clients: cpg processes join one or two of three groups after boot, lockspaces are joined;
  during the fault window the enabled client kinds add joins, leaves, closed connections and
  bursts of messages (`cpg`), lockspace joins and leaves (`lockspace`), votes and expected
  votes changes and cancel wait_for_all (`votes`, `expected`), agents changing behaviour
  (`agent`) and an administrator switching a node off and acknowledging it (`fence-ack`);
  cpg clients also send at a per-seed rate until the traffic ends.

After the quiet point an administrator steps in only where the cluster cannot finish alone: a
victim without a fence device, or one that is a member again (fencing never shoots a member),
is switched off and acknowledged. The run ends once Totem is stable and every live node's DLM
side is idle (or the partition cannot be quorate), then drains; the EVS checker and the service
checker (cmanlk/sim/service_checks.py) judge the histories.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmanlk.dlm.fencing import FencingPolicy
from cmanlk.errors import ConfigError
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.sim.cluster import Cluster
from cmanlk.sim.history import Histories, Installed
from cmanlk.sim.invariants import LivenessSpec, check
from cmanlk.sim.schedule import (
    FAULT_KINDS,
    STABLE_WATCH,
    RunResult,
    Schedule,
    Step,
    make_schedule,
    parse_faults,
)
from cmanlk.sim.service_checks import check_services
from cmanlk.sim.stackhost import SIM_FENCING, StackCluster, StackHost, StackWorld
from cmanlk.types import Instant, NodeId, ms

CLIENT_KINDS = ("cpg", "lockspace", "votes", "expected", "agent", "fence-ack")
STACK_FAULT_KINDS = FAULT_KINDS + CLIENT_KINDS
GROUPS = (b"g0", b"g1", b"g2")
LOCKSPACES = ("ls0", "ls1")
SETTLE_EXTRA = ms(6000)  # after the Totem bound: fencing retries, lockspace recovery, an admin's acks
ADMIN_EVERY = ms(300)
SETTLE_CONFIRM = ms(100)
DRAIN = ms(300)  # the cpg clients send at most 20/s per node: a backlog of a few token rotations


@dataclass(slots=True)
class StackSchedule:
    base: Schedule
    quorum: QuorumConfig
    fencing: FencingPolicy
    agent_mode: dict[NodeId, str]
    chatter_per_s: float
    steps: list[Step] = field(default_factory=list)
    policy_text: str = ""

    def describe(self) -> list[str]:
        lines = self.base.describe()
        lines.insert(1, f"  quorum: {self.policy_text}; agents: {self._agents()}; "
                        f"chatter={self.chatter_per_s}/s")
        lines += [f"  {s.t / 1e6:9.3f}ms {s.text}" for s in self.steps]
        return lines

    def _agents(self) -> str:
        no_agent = [n for n in self.base.nodes if n not in self.fencing.nodes_with_agent]
        modes = ",".join(f"{n}:{m}" for n, m in sorted(self.agent_mode.items()) if m != "ok") or "all ok"
        return modes + (f", no device: {no_agent}" if no_agent else "")


def parse_stack_faults(text: str) -> tuple[str, ...]:
    """'all', 'none' or a comma list of Totem and client kinds; raises ValueError on an unknown one."""
    return parse_faults(text, STACK_FAULT_KINDS)


def draw_quorum(rng: random.Random, ids: tuple[NodeId, ...]) -> tuple[QuorumConfig, str]:
    """A random quorum policy votequorum accepts, and its description."""
    n = len(ids)
    votes = {i: 1 for i in ids}
    if n > 2 and rng.random() < 0.2:
        votes[rng.choice(ids)] = 2
    two_node = n == 2 and rng.random() < 0.6
    wfa = rng.choice((None, None, True, False))
    lms = rng.random() < 0.3
    window = rng.choice((200, 500, 1000))
    atb = rng.random() < 0.3
    atb_node: str | tuple[NodeId, ...] = rng.choice(("lowest", "highest", "list"))
    if atb_node == "list":
        atb_node = tuple(rng.sample(ids, rng.randint(1, n)))
    downscale = rng.random() < 0.15
    for _ in range(2):
        cfg = QuorumConfig(node_votes=tuple(votes.items()), two_node=two_node, wait_for_all=wfa,
                           last_man_standing=lms, last_man_standing_window_ms=window, auto_tie_breaker=atb,
                           auto_tie_breaker_node=atb_node, allow_downscale=downscale)
        try:
            cfg.resolve(ids[0])
            break
        except ConfigError:
            lms = False
    policy = cfg.resolve(ids[0])
    text = (f"votes={','.join(f'{i}:{v}' for i, v in votes.items())} two_node={int(policy.two_node)} "
            f"wfa={int(policy.wait_for_all)} lms={int(policy.last_man_standing)}"
            f"{f'/{window}ms' if policy.last_man_standing else ''} "
            f"atb={policy.auto_tie_breaker.value}"
            f"{atb_node if policy.auto_tie_breaker.value == 'list' else ''} "
            f"downscale={int(downscale)}")
    return cfg, text


def make_stack_schedule(
    seed: int, nodes: tuple[int, int], faults: tuple[str, ...], duration_s: float
) -> StackSchedule:
    """Draw the stack schedule of `seed` (see the module docstring)."""
    base = make_schedule(seed, nodes, tuple(k for k in faults if k in FAULT_KINDS), duration_s)
    base.traffic.rate_per_s = 0.0  # the cpg clients are the traffic
    rng = random.Random(f"stack/{seed}")
    ids = base.nodes
    quorum, text = draw_quorum(rng, ids)
    with_agent = set(ids)
    if rng.random() < 0.3:
        with_agent.discard(rng.choice(ids))
    fencing = FencingPolicy(nodes_with_agent=frozenset(with_agent), retry_initial=SIM_FENCING.retry_initial,
                            retry_max=SIM_FENCING.retry_max)
    agent_mode = {n: "ok" for n in ids}
    if "agent" in faults and rng.random() < 0.6:
        agent_mode[rng.choice(ids)] = rng.choice(("fail", "hang"))
    chatter = rng.choice((0.0, 5.0, 10.0, 20.0))
    sch = StackSchedule(base, quorum, fencing, agent_mode, chatter, policy_text=text)
    start = ms(300)
    for n in ids:
        for g in rng.sample(GROUPS, rng.randint(1, 2)):
            sch.steps.append(_client(Instant(start + rng.randrange(ms(200))), n, f"cpg join {g.decode()}",
                                     _joiner(g)))
        for ls in LOCKSPACES:
            if rng.random() < (0.6 if ls == "ls0" else 0.3):
                sch.steps.append(_client(Instant(start + rng.randrange(ms(300))), n, f"lockspace join {ls}",
                                         _ls_joiner(ls)))
    kinds = [k for k in faults if k in CLIENT_KINDS]
    if kinds:
        for _ in range(rng.randint(2, 10)):
            t = Instant(rng.randrange(start, base.quiet_from))
            sch.steps.append(_client_fault(rng, rng.choice(kinds), t, ids))
    sch.steps.append(Step(base.quiet_from, "quiet: every fence agent succeeds", _quiet))
    sch.steps.sort(key=lambda s: s.t)
    return sch


def _client(t: Instant, n: NodeId, text: str, fn: Callable[[StackHost], object]) -> Step:
    def go(c: Cluster) -> None:
        assert isinstance(c, StackCluster)
        c.drive(n, fn)

    return Step(t, f"{n}: {text}", go)


def _joiner(g: bytes) -> Callable[[StackHost], object]:
    return lambda h: h.cpg_join(g)


def _ls_joiner(ls: str) -> Callable[[StackHost], object]:
    return lambda h: h.ls_join(ls)


def _acker(v: NodeId) -> Callable[[StackHost], object]:
    return lambda h: h.fence_ack(v)


def _quiet(c: Cluster) -> None:
    assert isinstance(c, StackCluster)
    c.world.quiet = True


def _client_fault(rng: random.Random, kind: str, t: Instant, ids: tuple[NodeId, ...]) -> Step:
    n = rng.choice(ids)
    pick = rng.randrange(1 << 16)
    match kind:
        case "cpg":
            what = rng.choice(("join", "join-more", "leave", "gone", "send"))
            g = rng.choice(GROUPS)
            if what == "join":
                return _client(t, n, f"cpg join {g.decode()}", lambda h: h.cpg_join(g))
            if what == "join-more":
                return _client(t, n, f"cpg join (same client) {g.decode()}", lambda h: h.cpg_join_more(g))
            if what == "leave":
                return _client(t, n, "cpg leave", lambda h: h.cpg_leave(pick))
            if what == "gone":
                return _client(t, n, "cpg client gone", lambda h: h.cpg_gone(pick))
            count = rng.randint(1, 20)
            return _client(t, n, f"cpg send {count}", lambda h: h.cpg_send(pick, count))
        case "lockspace":
            ls = rng.choice(LOCKSPACES)
            if rng.random() < 0.5:
                return _client(t, n, f"lockspace join {ls}", lambda h: h.ls_join(ls))
            return _client(t, n, f"lockspace leave {ls}", lambda h: h.ls_leave(ls))
        case "votes":
            target, votes = rng.choice(ids), rng.randint(0, 3)
            if rng.random() < 0.2:
                return _client(t, n, "cancel wait_for_all", lambda h: h.cancel_wfa())
            return _client(t, n, f"votes {target}={votes}", lambda h: h.set_votes(target, votes))
        case "expected":
            e = rng.randint(1, 2 * len(ids))
            return _client(t, n, f"expected votes {e}", lambda h: h.set_expected(e))
        case "agent":
            victim, mode = rng.choice(ids), rng.choice(("ok", "fail", "hang"))

            def agent(c: Cluster) -> None:
                assert isinstance(c, StackCluster)
                c.world.agent_mode[victim] = mode

            return Step(t, f"agent of {victim}: {mode}", agent)
        case "fence-ack":
            victim = rng.choice(ids)

            def ack(c: Cluster) -> None:
                assert isinstance(c, StackCluster)
                if n == victim:
                    return
                c.world.power_off(victim, "ack")
                c.drive(n, lambda h: h.fence_ack(victim))

            return Step(t, f"admin: switch {victim} off, fence-ack {victim} on {n}", ack)
    raise ValueError(kind)


def admin_sweep(c: StackCluster) -> None:
    """After the quiet point: switch off and acknowledge the victims no agent will fence."""
    if not c.world.admin or not c.is_stable():
        return
    for h in c.world.hosts():
        for v in h.victims():
            if v not in c.world.fencing.nodes_with_agent or v in h.stack.members:
                c.world.power_off(v, "ack")
                c.drive(h.me, _acker(v))


def run_stack_schedule(
    seed: int,
    nodes: tuple[int, int] = (2, 7),
    faults: tuple[str, ...] = STACK_FAULT_KINDS,
    duration_s: float = 1.5,
    digest: bool = True,
    **plants: Any,
) -> RunResult:
    """Run the stack schedule of `seed` and check it; return the verdict and statistics.

    `digest`: compute the histories' digest (False: RunResult.digest is "", which saves the
    pickling of every record when nobody compares runs).
    `plants`: StackWorld's cpg_factory, votequorum_factory, companion_factory (broken services
    the tests plant to show the checker catches them)."""
    wall = time.perf_counter()
    sch = make_stack_schedule(seed, nodes, faults, duration_s)
    base = sch.base
    world = StackWorld(seed, sch.quorum, sch.fencing, agent_mode=dict(sch.agent_mode),
                       chatter_per_s=sch.chatter_per_s, chatter_until=base.traffic.until, **plants)
    cluster = StackCluster(base.config, seed=seed, world=world, record_states=False)
    for step in sorted(base.steps + sch.steps, key=lambda s: s.t):
        cluster.at(step.t, _bind(step.fn, cluster))
    limit = base.quiet_from + base.bound + SETTLE_EXTRA
    t = base.quiet_from + ADMIN_EVERY * 2
    while t < limit:
        cluster.at(t, lambda: admin_sweep(cluster))
        t += ADMIN_EVERY
    cluster.run_until(base.quiet_from)

    def settled() -> bool:
        return cluster.is_stable() and world.dlm_settled()

    while cluster.run_until(limit, settled):
        cluster.run_for(SETTLE_CONFIRM)  # a DLM step can follow a sync that ended at once
        if settled() or cluster.now >= limit:
            break
    world.admin = False
    world.chatter_until = min(world.chatter_until, cluster.now + STABLE_WATCH)
    base.traffic.until = Instant(world.chatter_until)
    cluster.run_until(base.traffic.until + DRAIN)
    last_fault = Instant(max(base.quiet_from, world.last_power_off))
    spec = LivenessSpec(last_fault, base.bound, base.traffic.until)
    histories = cluster.histories()
    violations = check(histories, liveness=spec)
    violations += check_services(histories, world, settled=settled())
    settle = 0
    for node in cluster.nodes.values():
        if node.up and node.history:
            installs = [r.t for r in node.history if isinstance(r, Installed)]
            if installs:
                settle = max(settle, installs[-1] - last_fault)
    return RunResult(
        seed=seed,
        nodes=len(base.nodes),
        violations=violations,
        errors=list(cluster.errors),
        digest=fast_digest(histories) if digest else "",
        delivered=cluster.stats.delivered,
        configs=cluster.stats.configs,
        sent=sum(1 for h in histories.values() for r in h if type(r).__name__ == "Sent"),
        events=cluster.stats.events,
        virtual_ns=int(cluster.now),
        wall_s=time.perf_counter() - wall,
        max_settle_ns=settle,
        schedule=sch.describe(),
    )


def fast_digest(histories: Histories) -> str:
    """SHA-256 over every record (pickled: a stack run's histories are large, repr is slow)."""
    h = hashlib.sha256()
    for node in sorted(histories):
        h.update(pickle.dumps((node, histories[node]), protocol=5))
    return h.hexdigest()


def _bind(fn: Callable[[Cluster], None], cluster: Cluster) -> Callable[[], None]:
    return lambda: fn(cluster)
