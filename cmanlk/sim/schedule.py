"""Random fault schedules, one per seed, run on the simulator and judged by the EVS checker.

A schedule is drawn entirely from `random.Random(f"schedule/{seed}")`, so a seed
(with the same node range, fault set and duration) names one run exactly. Its
shape:

1. boot: every node boots at a random instant in the first 300 ms;
2. faults: during the fault window, a random program of network faults (loss,
   duplication, reordering, delay, partitions and heals) and node faults
   (crash, restart, leave), drawn from the enabled fault kinds;
3. quiet: at `quiet_from` the network is made whole and clean, and each stopped
   node is restarted or left down; from then on the cluster must stabilise
   within the liveness bound (see `liveness_bound`);
4. drain: clients keep sending until `traffic_until`, then the run continues
   for `DRAIN` so every message can be delivered before the checker runs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cmanlk.sim.cluster import Cluster, CoreFactory, Traffic, sim_config, totem_factory
from cmanlk.sim.history import Installed, history_digest
from cmanlk.sim.invariants import LivenessSpec, Violation, check
from cmanlk.sim.network import LinkModel
from cmanlk.totem.config import TotemConfig
from cmanlk.types import Duration, Instant, NodeId, ms

FAULT_KINDS = ("loss", "dup", "reorder", "delay", "partition", "heal", "crash", "restart", "leave")
BOOT_SPREAD = ms(300)
DRAIN = ms(500)  # after the last client message: a few token rotations plus recovery of a backlog.
STABLE_WATCH = ms(500)  # traffic kept up after the ring is whole: > token + consensus of a 7-node ring.
SLOW_DELAY_MAX = ms(8)  # the "delay" fault: datagrams take up to this long (still bounded).


def liveness_bound(config: TotemConfig, n_nodes: int, max_delay: Duration) -> Duration:
    """Return how long after the last fault every live node must be in the final ring.

    Derived from the Totem membership protocol (Amir et al. 1995 §4) with corosync's
    timers, for a network that is whole and lossless from `quiet_from` on, where one
    datagram takes at most `max_delay` (D):

    - detection ≤ token + token_retransmit: a member of a ring that lost a node sees
      its token go missing within `token` of the last one (the last token may have
      been in the air at quiet_from, retransmitted once);
    - one membership round ≤ consensus + 2·join + 2·n·D + 2·n·D: at worst a node is
      still in the proc set, and the consensus timer moves it to failed; after that
      the live nodes agree within a JOIN period and its round trip, the commit token
      makes its two rotations (n hops each) and RECOVERY one rotation more (messages
      of the old ring are re-sent at window_size per rotation; the backlog of a
      short run needs at most a few, covered by the second 2·n·D and the slack);
    - a merge: a round can form a ring that excludes a live node (joins crossed a
      heal, stale failed sets); the ring's representative announces it with a
      MERGE_DETECT within 2·merge of going idle (held token: hold), which starts a
      second round, so two rounds and one merge detection are allowed;
    - slack: one more token timeout, for a token lost to a node that crashed just
      before quiet_from being regenerated only after the token timer.

    bound = (token + token_retransmit) + 2·(consensus + 2·join + 4·n·D)
            + (2·merge + hold) + token
    """
    round_ns = config.consensus + 2 * config.join + 4 * n_nodes * max_delay
    detect = config.token + config.token_retransmit
    merge = 2 * config.merge + config.hold
    return Duration(detect + 2 * round_ns + merge + config.token)


@dataclass(slots=True)
class Step:
    """One scheduled change: at `t`, `text` (for -v output) is done by `fn`."""

    t: Instant
    text: str
    fn: Callable[[Cluster], None] = field(repr=False)


@dataclass(slots=True)
class Schedule:
    seed: int
    nodes: tuple[NodeId, ...]
    config: TotemConfig
    steps: list[Step]
    traffic: Traffic
    quiet_from: Instant
    bound: Duration
    end: Instant

    def describe(self) -> list[str]:
        lines = [
            f"seed {self.seed}: nodes={len(self.nodes)} token={self.config.token_ms}ms "
            f"consensus={self.config.consensus_ms}ms traffic={self.traffic.rate_per_s}/s/node "
            f"quiet_from={self.quiet_from / 1e6:.0f}ms bound={self.bound / 1e6:.0f}ms "
            f"end={self.end / 1e6:.0f}ms"
        ]
        lines += [f"  {s.t / 1e6:9.3f}ms {s.text}" for s in self.steps]
        return lines


@dataclass(slots=True)
class RunResult:
    seed: int
    nodes: int
    violations: list[Violation]
    errors: list[str]
    digest: str
    delivered: int
    configs: int
    sent: int
    events: int
    virtual_ns: int
    wall_s: float
    max_settle_ns: int  # latest final-configuration install after quiet_from (for the bound report)
    schedule: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.errors


def parse_range(text: str) -> tuple[int, int]:
    """Parse "3" or "2-7" into an inclusive (low, high) pair; raises ValueError."""
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if not 1 <= a <= b:
        raise ValueError(f"bad node range {text!r}")
    return a, b


def parse_faults(text: str, known: tuple[str, ...] = FAULT_KINDS) -> tuple[str, ...]:
    """Parse "all", "none" or a comma list of the `known` fault kinds; raises ValueError on an
    unknown kind."""
    if text == "all":
        return known
    if text in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(","))
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(known)}")
    return kinds


def make_schedule(seed: int, nodes: tuple[int, int], faults: tuple[str, ...], duration_s: float) -> Schedule:
    """Draw the schedule of `seed` (see the module docstring)."""
    rng = random.Random(f"schedule/{seed}")
    n = rng.randint(*nodes)
    ids = tuple(NodeId(i) for i in range(1, n + 1))
    config = sim_config(ids)
    steps: list[Step] = []
    for node in ids:
        steps.append(Step(Instant(rng.randrange(BOOT_SPREAD)), f"boot {node}", _boot(node)))
    window_start = BOOT_SPREAD
    quiet_from = Instant(window_start + int(duration_s * 1e9 * rng.uniform(0.5, 1.0)))
    if faults:
        for _ in range(rng.randint(1, 8)):
            t = Instant(rng.randrange(window_start, quiet_from))
            kind = rng.choice(faults)
            steps.append(_fault(rng, kind, t, ids))
    steps.append(Step(quiet_from, "quiet: heal, clean network", _quiet))
    for node in ids:
        if rng.random() < 0.75:
            steps.append(Step(quiet_from, f"restart {node} if down", _boot(node)))
    clean = LinkModel()
    bound = liveness_bound(config, n, clean.max_delay)
    traffic_until = Instant(quiet_from + bound + ms(200))
    rate = rng.choice((0.0, 5.0, 20.0, 50.0))
    traffic = Traffic(rate, traffic_until, safe_fraction=0.2, large_fraction=0.05)
    steps.sort(key=lambda s: s.t)  # stable: equal instants keep their drawing order
    return Schedule(seed, ids, config, steps, traffic, quiet_from, bound, Instant(traffic_until + DRAIN))


def run_schedule(
    seed: int,
    nodes: tuple[int, int] = (2, 7),
    faults: tuple[str, ...] = FAULT_KINDS,
    duration_s: float = 1.5,
    factory: CoreFactory = totem_factory,
    digest: bool = True,
) -> RunResult:
    """Run the schedule of `seed` and check it; return the verdict and statistics (`digest`:
    compute the histories' digest; False leaves RunResult.digest "")."""
    wall = time.perf_counter()
    sch = make_schedule(seed, nodes, faults, duration_s)
    cluster = Cluster(sch.config, seed=seed, factory=factory, record_states=False)
    for step in sch.steps:
        cluster.at(step.t, _bind(step.fn, cluster))
    cluster.start_traffic(sch.traffic)
    cluster.run_until(sch.quiet_from)
    # Once every live node is in one ring, keep the clients going for STABLE_WATCH (a
    # ring that falls apart again shows up there) and drain; the rest of the bound
    # would be an idle ring and costs time for nothing.
    cluster.run_until(sch.quiet_from + sch.bound, cluster.is_stable)
    sch.traffic.until = Instant(min(sch.traffic.until, cluster.now + STABLE_WATCH))
    cluster.run_until(sch.traffic.until + DRAIN)
    spec = LivenessSpec(sch.quiet_from, sch.bound, sch.traffic.until)
    histories = cluster.histories()
    violations = check(histories, liveness=spec)
    settle = 0
    for node in cluster.nodes.values():
        if node.up and node.history:
            installs = [r.t for r in node.history if isinstance(r, Installed)]
            if installs:
                settle = max(settle, installs[-1] - sch.quiet_from)
    return RunResult(
        seed=seed,
        nodes=len(sch.nodes),
        violations=violations,
        errors=list(cluster.errors),
        digest=history_digest(histories) if digest else "",
        delivered=cluster.stats.delivered,
        configs=cluster.stats.configs,
        sent=cluster.stats.sent,
        events=cluster.stats.events,
        virtual_ns=int(cluster.now),
        wall_s=time.perf_counter() - wall,
        max_settle_ns=settle,
        schedule=sch.describe(),
    )


def _bind(fn: Callable[[Cluster], None], cluster: Cluster) -> Callable[[], None]:
    return lambda: fn(cluster)


def _boot(node: NodeId) -> Callable[[Cluster], None]:
    return lambda c: c.boot(node)


def _quiet(c: Cluster) -> None:
    c.network.heal()
    c.network.model = LinkModel()


def _fault(rng: random.Random, kind: str, t: Instant, ids: tuple[NodeId, ...]) -> Step:
    match kind:
        case "loss":
            p = rng.choice((0.02, 0.1, 0.3, 0.6))
            return Step(t, f"loss {p}", lambda c: setattr(c.network.model, "loss", p))
        case "dup":
            p = rng.choice((0.05, 0.2, 0.5))
            return Step(t, f"dup {p}", lambda c: setattr(c.network.model, "dup", p))
        case "reorder":
            p = rng.choice((0.1, 0.3, 0.7))
            return Step(t, f"reorder {p}", lambda c: setattr(c.network.model, "reorder", p))
        case "delay":
            d = Duration(rng.randrange(ms(1), SLOW_DELAY_MAX))
            return Step(t, f"delay up to {d / 1e6:.2f}ms", lambda c: setattr(c.network.model, "delay_max", d))
        case "partition":
            groups = _random_groups(rng, ids)
            text = " ".join("(" + ",".join(map(str, g)) + ")" for g in groups)
            return Step(t, f"partition {text}", lambda c: c.network.partition(groups))
        case "heal":
            return Step(t, "heal", lambda c: c.network.heal())
        case "crash":
            node = rng.choice(ids)
            return Step(t, f"crash {node}", lambda c: c.crash(node))
        case "restart":
            node = rng.choice(ids)
            return Step(t, f"restart {node} if down", _boot(node))
        case "leave":
            node = rng.choice(ids)
            return Step(t, f"leave {node}", lambda c: c.leave(node))
    raise ValueError(kind)


def _random_groups(rng: random.Random, ids: tuple[NodeId, ...]) -> list[tuple[NodeId, ...]]:
    k = rng.randint(2, min(3, len(ids))) if len(ids) > 1 else 1
    buckets: list[list[NodeId]] = [[] for _ in range(k)]
    for node in ids:
        buckets[rng.randrange(k)].append(node)
    return [tuple(b) for b in buckets if b]
