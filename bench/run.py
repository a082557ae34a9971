"""cmanlk and Debian's corosync 3 measured side by side on this machine, in one run.

    sudo .venv/bin/python -m bench.run [--quick] [--nodes 3] [--token 1000]
                                        [--systems corosync-c,cmanlk-py,cmanlk-c,...] [--out FILE.json]

A system is a daemon, a transport and the client that drives it: `corosync-c` (Debian's corosync,
udpu, driven by the C libcpg client bench/cpgbench.c), `cmanlk-py` (cmanlkd, udpu, its Python
client), `cmanlk-c` (cmanlkd driven by the same C binary over its libqb IPC), the `-knet`/`-native`
variants, and `corosync-py` (the old Python ctypes driver of corosync, only when asked). Ratios
are always against corosync driven by the C client. For each system it builds an N-node cluster
in network namespaces (bench/netns.py; veth + bridge, two links for knet / cmanlk's native
transport), starts one group client per node (bench/driver.py), and measures:

- ordered-message throughput (messages/s and MB/s delivered at each node, median over nodes) at
  64 B, 1 KiB, 16 KiB, 64 KiB, with one sender and with every node sending flat out;
- latency from send to self-delivery (p50, p99) at light load (one sender, 200 msg/s, 64 B);
- link failover after a carrier loss (two-link systems): the longest pause in a 1000 msg/s stream
  while one node's preferred link loses carrier;
- reformation after kill -9 (median over repeats: kill → every survivor's client sees the new
  ring) and join (spawn of the restarted daemon → every client sees it in the ring);
- CPU (% of one core per daemon, mean over nodes, during the throughput rounds and idle) and RSS;
  per throughput round the daemon CPU µs per delivered message (each node, mean) and the busiest
  bench client's CPU % of one core (so a reader sees the client was not the bottleneck).

It prints a table with the ratio against corosync-C for every figure, ends with
`vs corosync-c: min_ratio=<R>x worst=<figure>` (the smallest throughput ratio or inverse p50
latency ratio, each figure from cmanlk's fastest client), and writes the JSON result file
described in docs/bench.md. Everything created is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cbuild, stats, systems
from bench.cluster import BenchCluster, DriverError
from bench.netns import Lab
from bench.systems import System

START_DELAY_S = 0.2  # every driver holds the round until this long after the command
ROUND_SLACK_S = 30.0  # drain/answer time allowed beyond a round's sending time
LATENCY_RATE = 200  # msg/s for the light-load latency round
FAILOVER_RATE = 1000  # msg/s of the stream whose pause measures failover
FAILOVER_LEAD_S = 1.0  # stream time before the cable is pulled


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.nodes = list(range(1, args.nodes + 1))
        self.token_ms: int = args.token
        self.quick: bool = args.quick
        self.round_s = 0.6 if args.quick else 2.0
        self.latency_s = 1.5 if args.quick else 5.0
        self.idle_s = 1.0 if args.quick else 3.0
        self.failover_after_s = 3.0 if args.quick else 5.0
        self.reform_repeats = 1 if args.quick else args.repeats
        self.sizes = [int(s) for s in args.sizes.split(",")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": len(self.nodes),
            "token_ms": self.token_ms,
            "quick": self.quick,
            "round_s": self.round_s,
            "latency_s": self.latency_s,
            "latency_rate": LATENCY_RATE,
            "idle_s": self.idle_s,
            "failover_rate": FAILOVER_RATE,
            "failover_after_s": self.failover_after_s,
            "reform_repeats": self.reform_repeats,
            "sizes": self.sizes,
        }


def host_info() -> dict[str, Any]:
    version = subprocess.run(["corosync", "-v"], capture_output=True, text=True, check=False).stdout
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "corosync": version.splitlines()[0] if version else None,
        "loadavg_before": list(os.getloadavg()),
    }


class SystemRun:
    """Measure one system; figures and details accumulate even if a later step fails."""

    def __init__(self, cluster: BenchCluster, settings: Settings) -> None:
        self.c = cluster
        self.s = settings
        self.figures: dict[str, float | None] = {}
        self.details: dict[str, Any] = {}
        self._round = 0

    def round(
        self, senders: list[int], size: int, duration_s: float, rate: float = 0, keep: bool = False
    ) -> dict[int, dict[str, Any]]:
        self._round += 1
        start_at = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        cmd = {
            "op": "round",
            "round": self._round,
            "size": size,
            "senders": senders,
            "duration": duration_s,
            "rate": rate,
            "start_at": start_at,
            "timeout": ROUND_SLACK_S,
            "keep": keep,
        }
        return self.c.call_all(self.c.nodes, cmd, START_DELAY_S + duration_s + 2 * ROUND_SLACK_S)

    def throughput(self) -> None:
        pids = {n: self.c.pid(n) for n in self.c.nodes}
        cpu0 = {n: systems.cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        details = {}
        for mode in stats.MODES:
            senders = [self.c.nodes[0]] if mode == "1sender" else list(self.c.nodes)
            for size in self.s.sizes:
                ns0 = {n: systems.cpu_ns(p) for n, p in pids.items()}
                answers = self.round(senders, size, self.s.round_s)
                ns1 = {n: systems.cpu_ns(p) for n, p in pids.items()}
                rates = [
                    stats.rate_per_s(a["received"], a["first_ns"], a["last_ns"]) for a in answers.values()
                ]
                good = [r for r in rates if r is not None]
                rate = stats.median(good)
                complete = all(a.get("complete") for a in answers.values())
                self.figures[stats.throughput_key(mode, size, "msgs_per_s")] = rate
                self.figures[stats.throughput_key(mode, size, "mb_per_s")] = (
                    None if rate is None else rate * size / 1e6
                )
                # Daemon CPU per delivered message at each node: the whole round (start delay and
                # drain included) over that node's deliveries.
                us_per_msg: dict[int, float] = {}
                for n, a in answers.items():
                    before, after = ns0[n], ns1[n]
                    if before is not None and after is not None and a.get("received"):
                        us_per_msg[n] = (after - before) / 1000 / a["received"]
                self.figures[stats.daemon_cpu_key(mode, size)] = (
                    sum(us_per_msg.values()) / len(us_per_msg) if us_per_msg else None
                )
                client_pct = client_cpu_pct(answers)
                self.figures[stats.client_cpu_key(mode, size)] = (
                    max(client_pct.values()) if client_pct else None
                )
                details[f"{mode}.{size}"] = {
                    "per_node_msgs_per_s": rates,
                    "complete": complete,
                    "sent": {n: a.get("sent") for n, a in answers.items()},
                    "received": {n: a.get("received") for n, a in answers.items()},
                    "blocked": {n: a.get("blocked") for n, a in answers.items()},
                    "out_of_order": sum(a.get("out_of_order", 0) for a in answers.values()),
                    "daemon_us_per_msg": us_per_msg,
                    "client_cpu_pct": client_pct,
                }
                print(
                    f"  {mode:10s} {size:6d} B: {stats.fmt(rate)} msg/s,"
                    f" daemon {stats.fmt(self.figures[stats.daemon_cpu_key(mode, size)])} us/msg,"
                    f" client {stats.fmt(self.figures[stats.client_cpu_key(mode, size)])} % CPU"
                    f"{'' if complete else ' (INCOMPLETE)'}",
                    flush=True,
                )
        elapsed = time.monotonic() - t0
        self.figures["cpu.load_pct"] = self._cpu_pct(pids, cpu0, elapsed, "cpu_load_pct_per_node")
        self.details["throughput"] = details
        self.memory(pids)

    def _cpu_pct(
        self, pids: dict[int, int], cpu0: dict[int, float | None], elapsed: float, what: str
    ) -> float | None:
        """Mean CPU % of one core per daemon since `cpu0`; per-node values go to details[what]."""
        used: dict[int, float] = {}
        for n, pid in pids.items():
            now, before = systems.cpu_seconds(pid), cpu0[n]
            if now is not None and before is not None:
                used[n] = (now - before) / elapsed * 100
        self.details[what] = used
        return sum(used.values()) / len(used) if used else None

    def idle_cpu(self) -> None:
        pids = {n: self.c.pid(n) for n in self.c.nodes}
        cpu0 = {n: systems.cpu_seconds(p) for n, p in pids.items()}
        time.sleep(self.s.idle_s)
        self.figures["cpu.idle_pct"] = self._cpu_pct(pids, cpu0, self.s.idle_s, "cpu_idle_pct_per_node")

    def memory(self, pids: dict[int, int]) -> None:
        mem = {n: systems.memory_kib(p) for n, p in pids.items()}
        rss = [m["VmRSS"] for m in mem.values() if "VmRSS" in m]
        hwm = [m["VmHWM"] for m in mem.values() if "VmHWM" in m]
        self.figures["rss.max_mib"] = max(rss) / 1024 if rss else None
        self.figures["rss.peak_mib"] = max(hwm) / 1024 if hwm else None
        self.details["memory_kib"] = mem

    def latency(self) -> None:
        sender = self.c.nodes[0]
        answers = self.round([sender], 64, self.s.latency_s, rate=LATENCY_RATE)
        a = answers[sender]
        for q in ("p50", "p99"):
            v = a.get(f"lat_{q}_ns")
            self.figures[f"latency.{q}_us"] = None if v is None else v / 1000
        call = a.get("call_p50_ns")
        self.figures["latency.send_call_p50_us"] = None if call is None else call / 1000
        self.figures["client.latency_cpu_pct"] = client_cpu_pct({sender: a}).get(sender)
        self.details["latency"] = {
            k: a.get(k)
            for k in (
                "lat_n",
                "lat_p50_ns",
                "lat_p90_ns",
                "lat_p99_ns",
                "lat_max_ns",
                "call_p50_ns",
                "call_p99_ns",
                "complete",
            )
        }
        print(
            f"  latency p50 {stats.fmt(self.figures['latency.p50_us'])} us"
            f" p99 {stats.fmt(self.figures['latency.p99_us'])} us",
            flush=True,
        )

    def failover(self) -> None:
        """Pull node 2's link-0 cable during a paced stream from node 1; the longest pause is failover."""
        victim = self.c.nodes[1]
        sender = self.c.nodes[0]
        duration = FAILOVER_LEAD_S + self.s.failover_after_s
        self._round += 1
        start_at = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        cmd = {
            "op": "round",
            "round": self._round,
            "size": 64,
            "senders": [sender],
            "duration": duration,
            "rate": FAILOVER_RATE,
            "start_at": start_at,
            "timeout": ROUND_SLACK_S,
            "keep": True,
        }
        for n in self.c.nodes:
            self.c.drivers[n].send(cmd)
        time.sleep(START_DELAY_S + FAILOVER_LEAD_S)
        t_down = time.monotonic_ns()
        self.c.lab.carrier(victim, 0, up=False)
        try:
            answers = {n: self.c.drivers[n].recv(duration + 2 * ROUND_SLACK_S) for n in self.c.nodes}
        finally:
            self.c.lab.carrier(victim, 0, up=True)
        gaps: dict[int, float | None] = {}
        starts: dict[int, float | None] = {}
        before: dict[int, float] = {}
        for n, a in answers.items():
            times = [d[0] for d in a.get("deliveries", [])]
            pause = stats.longest_pause(times, t_down)
            gaps[n] = None if pause is None else pause[0] / 1e6
            starts[n] = None if pause is None else (pause[1] - t_down) / 1e6
            before[n] = stats.longest_pause_before(times, t_down) / 1e6
        measured = [g for g in gaps.values() if g is not None]
        gap = max(measured) if measured else None
        self.figures["failover.gap_ms"] = gap
        events = self.c.call_all(self.c.nodes, {"op": "events"}, 10)
        changes = [e for a in events.values() for e in a.get("events", []) if e["t"] >= t_down]
        self.details["failover"] = {
            "victim": victim,
            "link": 0,
            "gap_ms_per_node": gaps,
            "gap_start_after_pull_ms": starts,
            "longest_pause_before_pull_ms": before,
            "stream_rate": FAILOVER_RATE,
            "membership_changes_after_pull": len(changes),
            "received": {n: a.get("received") for n, a in answers.items()},
        }
        print(
            f"  failover: longest pause {stats.fmt(gap)} ms ({len(changes)} membership changes seen)",
            flush=True,
        )
        # Let the link come back (pongs) before the next measurement.
        time.sleep(max(2.0, self.s.token_ms / 1000))

    def reform_and_join(self) -> None:
        victim = self.c.nodes[-1]
        survivors = self.c.nodes[:-1]
        timeout = 10 * self.s.token_ms / 1000 + 30
        reforms, joins = [], []
        for _ in range(self.s.reform_repeats):
            time.sleep(0.5)
            t_kill = self.c.kill(victim)
            seen = self.c.wait_members(survivors, survivors, t_kill, timeout)
            reforms.append((max(seen.values()) - t_kill) / 1e9)
            t_spawn = self.c.start(victim)
            seen = self.c.wait_members(survivors, self.c.nodes, t_spawn, timeout)
            joins.append((max(seen.values()) - t_spawn) / 1e9)
            self.c.connect(victim)
            self.c.wait_members([victim], self.c.nodes, 0, timeout)
            print(
                f"  kill -9 -> new ring {reforms[-1]:.3f} s, restart -> joined {joins[-1]:.3f} s", flush=True
            )
        self.figures["reform.median_s"] = stats.median(reforms)
        self.figures["reform.max_s"] = max(reforms) if reforms else None
        self.figures["join.median_s"] = stats.median(joins)
        self.details["reform_s"] = reforms
        self.details["join_s"] = joins


def client_cpu_pct(answers: dict[int, dict[str, Any]]) -> dict[int, float]:
    """Each node's bench client CPU in % of one core over its round (from the round answers)."""
    out: dict[int, float] = {}
    for n, a in answers.items():
        cpu, wall = a.get("client_cpu_s"), a.get("client_wall_s")
        if cpu is not None and wall:
            out[n] = 100 * float(cpu) / float(wall)
    return out


def measure(system: System, settings: Settings, workroot: Path, cbin: Path | None) -> dict[str, Any]:
    """Run every measurement for `system`; return its result-file entry (never raises)."""
    if system.daemon == "cmanlk":
        why = cmanlk_missing()
        if why:
            return {"status": "skipped", "error": why, "figures": {}, "details": {}}
    if system.client == "c" and cbin is None:
        return {"status": "skipped", "error": "the C client could not be built", "figures": {}, "details": {}}
    workdir = workroot / system.name
    run: SystemRun | None = None
    status, error = "ok", None
    print(f"== {system.name}", flush=True)
    try:
        with Lab(links=system.links) as lab:
            cluster = BenchCluster(lab, system, settings.nodes, workdir, settings.token_ms, cbin=cbin)
            up_s = cluster.up()
            run = SystemRun(cluster, settings)
            run.details["startup_s"] = up_s
            run.idle_cpu()
            run.throughput()
            run.latency()
            if system.links > 1:
                run.failover()
            run.reform_and_join()
    except (DriverError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        status, error = ("partial" if run and run.figures else "error"), f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {error}", flush=True)
        traceback.print_exc()
    figures = run.figures if run else {}
    return {
        "status": status,
        "error": error,
        "figures": figures,
        "details": run.details if run else {},
        "workdir": str(workdir),
    }


def cmanlk_missing() -> str | None:
    """Why cmanlk cannot be measured here, or None."""
    try:
        importlib.import_module("bench.cmanlk_backend")
    except ImportError as exc:
        return f"cmanlk client not available: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short rounds, one reform (under 2 minutes)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--token", type=int, default=1000, help="totem.token in ms, the same for every system")
    ap.add_argument("--repeats", type=int, default=5, help="kill -9 / restart cycles (full run)")
    ap.add_argument("--sizes", default=",".join(str(s) for s in stats.SIZES))
    ap.add_argument(
        "--systems",
        default=None,
        help="comma-separated, of "
        + ",".join(s.name for s in systems.RUN_SYSTEMS)
        + f" (default: all but corosync-py; --quick: {','.join(s.name for s in systems.RUN_QUICK)})",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="result file (default bench/results/run-<time>.json)"
    )
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs and logs of the run")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.run needs root (network namespaces)", file=sys.stderr)
        return 2
    by_name = {s.name: s for s in systems.RUN_SYSTEMS}
    if args.systems:
        chosen = [by_name[n] for n in args.systems.split(",")]
    else:
        chosen = list(systems.RUN_QUICK if args.quick else systems.RUN_DEFAULT)
    cbin: Path | None = None
    if any(s.client == "c" for s in chosen):
        try:
            cbin = cbuild.build()
        except cbuild.BuildError as exc:
            print(f"C client: {exc}", file=sys.stderr)
    settings = Settings(args)
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or (
        Path(__file__).resolve().parent
        / "results"
        / f"run-{started.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    )
    workroot = Path(tempfile.mkdtemp(prefix="cmkbench-"))
    doc: dict[str, Any] = {
        "schema": stats.SCHEMA,
        "started_at": started.isoformat(timespec="seconds"),
        "host": host_info(),
        "settings": settings.as_dict(),
        "systems": {},
        "comparisons": [],
    }
    t0 = time.monotonic()
    try:
        for system in chosen:
            doc["systems"][system.name] = measure(system, settings, workroot, cbin)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    doc["host"]["loadavg_after"] = list(os.getloadavg())
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    for name, base in systems.BASELINE.items():
        if name in doc["systems"] and base in doc["systems"]:
            doc["comparisons"] += stats.compare(
                doc["systems"][name]["figures"], doc["systems"][base]["figures"], name, base
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print()
    print(stats.table({n: d["figures"] for n, d in doc["systems"].items()}, doc["comparisons"]))
    for n, d in doc["systems"].items():
        if d["status"] != "ok":
            print(f"{n}: {d['status']}: {d.get('error')}")
    print(
        f"\nload average before {doc['host']['loadavg_before'][0]:.2f}, after"
        f" {doc['host']['loadavg_after'][0]:.2f}; {doc['elapsed_s']} s; result file {out}"
    )
    # Last: each corosync-C baseline's smallest ratio (the udpu pair's line ends the output).
    for base in sorted({b for b in systems.BASELINE.values() if b in doc["systems"]}, reverse=True):
        rivals = [
            n
            for n, b in systems.BASELINE.items()
            if b == base and n in doc["systems"] and by_name[n].daemon == "cmanlk"
        ]
        found = stats.min_ratio(doc["comparisons"], rivals, base)
        if found is not None:
            print(f"vs {base}: min_ratio={found[0]:.2f}x worst={found[1]}")
    return 0 if all(d["status"] in ("ok", "skipped") for d in doc["systems"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
