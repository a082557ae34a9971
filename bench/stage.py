"""Per-stage cost of one system: one long throughput round, the CPU per delivered message at each
daemon and at each bench client (docs/bench.md, "Per stage, before and after").

    sudo .venv/bin/python -m bench.stage [--system cmanlk-c] [--mode 1sender] [--size 64]
                                          [--seconds 5] [--cprofile DIR]

One cluster of `--system` (bench.run's systems), one round of `--seconds` in which the senders
send `--size`-byte messages flat out. Printed per node: the delivery rate, the daemon's CPU µs per
delivered message (schedstat of every thread, the whole round), the client's CPU µs per delivered
message and its CPU % of one core. At 64 KiB a message is 47 frames, so per message / 47 is the
cost per frame. `--cprofile DIR` runs each cmanlkd under cProfile and writes DIR/node<N>.prof when
it leaves (SIGTERM after the round): the profile of that round and the start-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/stage.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cbuild, stats, systems
from bench.cluster import BenchCluster
from bench.netns import Lab
from bench.systems import System

START_DELAY_S = 0.3


def profiled_start(directory: Path) -> object:
    """A systems.start_daemon that runs cmanlkd under cProfile, writing directory/node<N>.prof."""

    def start(lab: Lab, system: System, node: int, workdir: Path) -> subprocess.Popen[bytes]:
        conf = workdir / f"node{node}.conf"
        (workdir / f"state{node}").mkdir(exist_ok=True)
        out = directory / f"node{node}.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "cmanlk.daemon"]
        cmd += ["-f", "-c", str(conf), "--nodeid", str(node)]
        return lab.popen(node, cmd, workdir / f"node{node}.log", env=systems.python_env())

    return start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="cmanlk-c", choices=[s.name for s in systems.RUN_SYSTEMS])
    ap.add_argument("--mode", default="1sender", choices=stats.MODES)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cprofile", type=Path, default=None, help="profile each cmanlkd into this directory")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.stage needs root (network namespaces)", file=sys.stderr)
        return 2
    system = {s.name: s for s in systems.RUN_SYSTEMS}[args.system]
    cbin = cbuild.build() if system.client == "c" else None
    if args.cprofile is not None:
        if system.daemon != "cmanlk":
            print("--cprofile profiles cmanlkd only", file=sys.stderr)
            return 2
        args.cprofile.mkdir(parents=True, exist_ok=True)
        systems.start_daemon = profiled_start(args.cprofile.resolve())  # type: ignore[assignment]
    nodes = list(range(1, args.nodes + 1))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cmkstage-") as tmp, Lab(links=system.links) as lab:
        c = BenchCluster(lab, system, nodes, Path(tmp), 1000, cbin=cbin)
        c.up()
        pids = {n: c.pid(n) for n in nodes}
        senders = [nodes[0]] if args.mode == "1sender" else nodes
        cpu0 = {n: systems.cpu_ns(p) for n, p in pids.items()}
        cmd = {
            "op": "round",
            "round": 1,
            "size": args.size,
            "senders": senders,
            "duration": args.seconds,
            "rate": 0,
            "start_at": time.monotonic_ns() + int(START_DELAY_S * 1e9),
            "timeout": 30,
            "keep": False,
        }
        answers = c.call_all(nodes, cmd, START_DELAY_S + args.seconds + 60)
        cpu1 = {n: systems.cpu_ns(p) for n, p in pids.items()}
        print(f"{args.system} {args.mode} {args.size} B, {args.seconds:g} s round")
        for n, a in answers.items():
            rate = stats.rate_per_s(a["received"], a["first_ns"], a["last_ns"])
            got = max(1, int(a["received"]))
            before, after = cpu0[n], cpu1[n]
            daemon = "-" if before is None or after is None else f"{(after - before) / 1000 / got:.1f}"
            client_us = 1e6 * float(a.get("client_cpu_s", 0)) / got
            client_pct = 100 * float(a.get("client_cpu_s", 0)) / max(float(a.get("client_wall_s", 1)), 1e-9)
            print(
                f"  node {n}: {stats.fmt(rate)} msg/s, daemon {daemon} us/msg, client {client_us:.2f} us/msg"
                f" ({client_pct:.0f} % CPU), sent {a.get('sent')}, received {a['received']},"
                f" complete {a.get('complete')}"
            )
        if args.cprofile is not None:
            for n in nodes:
                os.kill(c.pid(n), signal.SIGTERM)
            for n in nodes:
                c.daemons[n].wait(timeout=30)
            print(f"  profiles: {args.cprofile}/node<N>.prof (python -m pstats)")
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
