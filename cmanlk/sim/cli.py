"""`cmanlk-sim`: random fault schedules with the EVS checker, scenario files, and a live demo.

    cmanlk-sim check [--stack] --seeds 2000 --nodes 2-7 --faults all [--seed-start K] [--seed S]
                     [--duration SECONDS] [--jobs 2] [--digests FILE] [-v]
    cmanlk-sim run FILE.txt [--rewrite]
    cmanlk-sim live [--nodes 3] [--seconds 20] [--speed 1.0]

`check --stack` runs the whole node (cmanlk/sim/stackschedule.py: the Stack, the DLM companion
and their clients on every node, with the service invariants beside the EVS ones).
`check` prints each failing seed with the command that replays it and ends with
`schedules=N violations=V`; it exits 1 when anything failed. Results do not
depend on --jobs: every seed is an independent deterministic run. `--digests FILE` writes each
seed's history digest and counts, so two versions of the simulator can be shown to run every
seed identically (`diff` the files).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import get_context
from pathlib import Path

from cmanlk.sim.cluster import Cluster, CoreFactory, Traffic, sim_config, totem_factory
from cmanlk.sim.history import Crashed, Delivered, Installed, Left, Record
from cmanlk.sim.scenario import ScenarioError, run_text
from cmanlk.sim.schedule import RunResult, parse_faults, parse_range, run_schedule
from cmanlk.sim.stackschedule import parse_stack_faults, run_stack_schedule
from cmanlk.totem.actions import ConfigKind
from cmanlk.types import Instant, NodeId, ms


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="cmanlk-sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run random fault schedules and check EVS invariants")
    c.add_argument("--seeds", type=int, default=100, help="number of schedules (default 100)")
    c.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    c.add_argument("--seed", type=int, help="run only this seed (replay), verbosely if -v")
    c.add_argument("--nodes", default="2-7", help="node count or range, e.g. 3 or 2-7 (default 2-7)")
    c.add_argument("--faults", default="all", help="'all', 'none' or a comma list of fault kinds")
    c.add_argument("--duration", type=float, default=1.5, help="fault window, virtual seconds")
    c.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    c.add_argument("--core", default="", help="core factory as module:callable (default: the Totem core)")
    c.add_argument("--stack", action="store_true",
                   help="run the whole node (Stack, DLM companion, clients) with the service invariants")
    c.add_argument("-v", "--verbose", action="store_true", help="print schedules and full violation reports")
    c.add_argument("--digests", type=Path, metavar="FILE",
                   help="write each seed's history digest, counts and verdict to FILE, in seed order")
    r = sub.add_parser("run", help="run a scenario file and print its output")
    r.add_argument("file", type=Path)
    r.add_argument("--rewrite", action="store_true", help="write the actual output back into the file")
    lv = sub.add_parser("live", help="a live text view of a simulated cluster (demo)")
    lv.add_argument("--nodes", type=int, default=3)
    lv.add_argument("--seconds", type=float, default=20.0, help="virtual seconds to run")
    lv.add_argument("--speed", type=float, default=1.0, help="virtual seconds per real second")
    lv.add_argument("--seed", type=int, default=1)
    lv.add_argument("--core", default="", help="core factory as module:callable (default: the Totem core)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "run":
            return _run(args)
        return _live(args)
    except (ValueError, ScenarioError) as exc:
        print(f"cmanlk-sim: {exc}", file=sys.stderr)
        return 2


# --- check ----------------------------------------------------------------------------------------------


Job = tuple[int, tuple[int, int], tuple[str, ...], float, str, bool, bool]


def load_factory(spec: str) -> CoreFactory:
    """Resolve "module:callable" to a core factory ("" = the Totem core); raises ValueError."""
    if not spec:
        return totem_factory
    module, _, name = spec.partition(":")
    try:
        factory: CoreFactory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load core factory {spec!r}: {exc}") from exc
    return factory


def _one(job: Job) -> RunResult:
    seed, nodes, faults, duration, core, stack, digest = job
    if stack:
        logging.getLogger("cmanlk").setLevel(logging.ERROR)  # the DLM companion's fencing warnings
        return run_stack_schedule(seed, nodes, faults, duration, digest)
    return run_schedule(seed, nodes, faults, duration, load_factory(core), digest)


def _results(
    seeds: list[int], nodes: tuple[int, int], faults: tuple[str, ...], duration: float, jobs: int, core: str,
    stack: bool = False, digest: bool = False,
) -> Iterator[RunResult]:
    """Each seed's result, in seed order (`digest`: with the histories' digest, which costs time)."""
    load_factory(core)
    work: list[Job] = [(s, nodes, faults, duration, core, stack, digest) for s in seeds]
    if jobs <= 1 or len(work) < 4:
        yield from map(_one, work)
        return
    with get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_one, work, chunksize=4)


def _check(args: argparse.Namespace) -> int:
    nodes = parse_range(args.nodes)
    faults = parse_stack_faults(args.faults) if args.stack else parse_faults(args.faults)
    if args.stack and args.core:
        raise ValueError("--stack runs the Stack: --core does not apply")
    first = args.seed_start
    seeds = [args.seed] if args.seed is not None else list(range(first, first + args.seeds))
    replay = f"--nodes {args.nodes} --faults {args.faults} --duration {args.duration:g}"
    if args.stack:
        replay = "--stack " + replay
    if args.core:
        replay += f" --core {args.core}"
    wall = time.perf_counter()
    failed = violations = errors = delivered = configs = sent = events = 0
    virtual_ns = 0
    worst_settle = (0, -1)
    by_prop: dict[str, int] = {}
    digests = args.digests.open("w") if args.digests is not None else None
    with_digest = digests is not None
    for res in _results(seeds, nodes, faults, args.duration, args.jobs, args.core, args.stack, with_digest):
        if digests is not None:
            digests.write(_digest_line(res))
        delivered += res.delivered
        configs += res.configs
        sent += res.sent
        events += res.events
        virtual_ns += res.virtual_ns
        worst_settle = max(worst_settle, (res.max_settle_ns, res.seed))
        if args.verbose:
            print("\n".join(res.schedule))
        if res.ok:
            if args.verbose:
                print(f"seed {res.seed}: ok ({res.delivered} delivered, {res.configs} configurations)")
            continue
        failed += 1
        violations += len(res.violations)
        errors += len(res.errors)
        for v in res.violations:
            by_prop[v.prop] = by_prop.get(v.prop, 0) + 1
        _print_failure(res, replay, args.verbose)
    wall_s = time.perf_counter() - wall
    if digests is not None:
        digests.close()
    props = " ".join(f"{k}={n}" for k, n in sorted(by_prop.items())) or "none"
    print(
        f"stats: nodes={args.nodes} faults={args.faults} failed_seeds={failed} core_errors={errors} "
        f"by_property: {props}"
    )
    print(
        f"stats: sent={sent} delivered={delivered} configurations={configs} events={events} "
        f"virtual={virtual_ns / 1e9:.1f}s wall={wall_s:.1f}s "
        f"({virtual_ns / 1e9 / max(wall_s, 1e-9):.1f}x real time, "
        f"{len(seeds) / max(wall_s, 1e-9):.1f} schedules/s) "
        f"slowest_settle={worst_settle[0] / 1e6:.0f}ms (seed {worst_settle[1]})"
    )
    print(f"schedules={len(seeds)} violations={violations + errors}")
    return 1 if failed else 0


def _digest_line(res: RunResult) -> str:
    """One seed's outcome: everything a change that keeps every run identical must keep."""
    return (
        f"seed={res.seed} nodes={res.nodes} digest={res.digest} events={res.events} "
        f"delivered={res.delivered} configs={res.configs} sent={res.sent} virtual_ns={res.virtual_ns} "
        f"settle_ns={res.max_settle_ns} violations={len(res.violations)} errors={len(res.errors)}\n"
    )


def _print_failure(res: RunResult, replay: str, verbose: bool) -> None:
    print(
        f"seed {res.seed} FAILED (nodes={res.nodes}): "
        f"{len(res.violations)} violations, {len(res.errors)} core errors"
    )
    for e in res.errors:
        print("  core error: " + e.rstrip().replace("\n", "\n    "))
    for v in res.violations if verbose else res.violations[:3]:
        text = str(v) if verbose else str(v).split("\n")[0]
        print("  " + text.replace("\n", "\n  "))
    print(f"  replay: cmanlk-sim check --seed {res.seed} {replay} -v")


# --- run ------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    text = args.file.read_text()
    result = run_text(text)
    rendered = result.render()
    if args.rewrite:
        args.file.write_text(rendered)
    sys.stdout.write(rendered)
    for e in result.errors:
        print("core error: " + e, file=sys.stderr)
    ok = result.matches and not result.violations and not result.errors
    if not result.matches and not args.rewrite:
        print("output differs from the expectations:\n" + result.diff(), file=sys.stderr)
    return 0 if ok or (args.rewrite and not result.violations and not result.errors) else 1


# --- live -----------------------------------------------------------------------------------------------

LIVE_STEP = ms(50)


def _live(args: argparse.Namespace) -> int:
    n = max(2, args.nodes)
    ids = [NodeId(i) for i in range(1, n + 1)]
    cluster = Cluster(sim_config(ids), seed=args.seed, factory=load_factory(args.core), record_states=False)
    counts = {"delivered": 0}

    def show(node: NodeId, rec: Record) -> None:
        at = f"[{cluster.now / 1e9:7.3f}s]"
        match rec:
            case Installed(kind=ConfigKind.REGULAR):
                print(f"{at} node {node}: ring {rec.ring_id} members {_fmt(rec.members)}", flush=True)
            case Crashed():
                print(f"{at} node {node}: stopped (kill -9)", flush=True)
            case Left():
                print(f"{at} node {node}: left cleanly", flush=True)
            case Delivered():
                counts["delivered"] += 1

    cluster.listeners.append(show)
    victim = ids[-1]
    end = int(args.seconds * 1e9)
    program = [
        (0.0, f"starting nodes {_fmt(ids)}", lambda: _boot_all(cluster, ids)),
        (0.25, f"stopping node {victim}", lambda: cluster.crash(victim)),
        (0.5, f"restarting node {victim}", lambda: cluster.boot(victim)),
        (0.75, f"node {ids[0]} leaves cleanly", lambda: cluster.leave(ids[0])),
        (0.85, f"restarting node {ids[0]}", lambda: cluster.boot(ids[0])),
    ]
    for frac, text, fn in program:
        cluster.at(int(end * frac), _announce(cluster, text, fn))
    cluster.start_traffic(Traffic(10.0, Instant(end)))
    started = time.monotonic()
    t = 0
    while t < end:
        t += LIVE_STEP
        cluster.run_until(t)
        delay = started + t / 1e9 / args.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(
        f"[{cluster.now / 1e9:7.3f}s] done: {counts['delivered']} messages delivered, "
        f"{cluster.stats.configs} configurations installed"
    )
    return 1 if cluster.errors else 0


def _boot_all(cluster: Cluster, ids: Sequence[NodeId]) -> None:
    for i in ids:
        cluster.boot(i)


def _announce(cluster: Cluster, text: str, fn: Callable[[], None]) -> Callable[[], None]:
    def go() -> None:
        print(f"[{cluster.now / 1e9:7.3f}s] --- {text}", flush=True)
        fn()

    return go


def _fmt(ids: Sequence[NodeId]) -> str:
    return "(" + ",".join(map(str, ids)) + ")"


if __name__ == "__main__":
    raise SystemExit(main())
