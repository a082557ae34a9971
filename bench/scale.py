"""Large clusters in namespaces: form, kill -9 one node, reform, rejoin — and how long each took.

    sudo .venv/bin/python -m bench.scale [--sizes 16,32] [--systems cmanlk-udpu,corosync-udpu]
                                          [--token 1000] [--token-coefficient 100] [--out FILE]

For each size and system: start every daemon at once and wait until every node reports one ring
of all nodes (`form_s`); kill -9 a node in the middle of the ring and wait until every survivor
reports the ring of the survivors (`reform_s`, from the kill); restart it and wait for the full
ring again (`rejoin_s`, from the spawn). cmanlk nodes are observed through their status.json
(rewritten on every membership change), corosync nodes through a libcpg client per node (totem
confchg). `token_coefficient` defaults to 100 here instead of corosync's 650 so that a 32-node
reform takes seconds, not most of a minute (the effective token is token + (n − 2) × coefficient
for either daemon). Prints a table and writes a JSON file (layout in docs/bench.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import systems
from bench.cluster import BenchCluster, DriverError
from bench.netns import Lab
from bench.systems import System

POLL_S = 0.05
SCALE_SCHEMA = "cmanlk-bench-scale/1"


class StatusWatch:
    """cmanlk: membership read from each node's <run_dir>/status.json."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.c = cluster

    def view(self, node: int) -> tuple[str, list[int]] | None:
        try:
            st = json.loads((systems.run_dir(self.c.workdir, node) / "status.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(st, dict) or st.get("pid") not in (None, self.c.pid(node)):
            return None  # a status file left by the previous incarnation
        return str(st.get("ring_id")), sorted(int(m) for m in st.get("members", []))

    def wait(self, nodes: list[int], members: list[int], timeout_s: float) -> float:
        """Seconds until every node in `nodes` reports one ring made of `members`; raises on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            views = [self.view(n) for n in nodes]
            if all(v is not None and v[1] == members for v in views) and len({v[0] for v in views if v}) == 1:
                return time.monotonic() - t0
            time.sleep(POLL_S)
        raise DriverError(
            f"no common ring of {len(members)} nodes within {timeout_s} s: "
            + ", ".join(f"{n}:{self.view(n)}" for n in nodes[:6])
        )


def run_one(system: System, size: int, args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    nodes = list(range(1, size + 1))
    extra = f"  token_coefficient: {args.token_coefficient}"
    timeout = 60.0 + size * 3.0
    out: dict[str, Any] = {"system": system.name, "nodes": size, "status": "ok"}
    print(f"== {system.name}, {size} nodes", flush=True)
    try:
        with Lab(links=1) as lab:
            c = BenchCluster(lab, system, nodes, workroot / f"{system.name}-{size}", args.token, extra)
            victim = nodes[size // 2]
            survivors = [n for n in nodes if n != victim]
            if system.daemon == "cmanlk":
                watch = StatusWatch(c)
                t0 = time.monotonic()
                for n in nodes:
                    c.start(n)
                watch.wait(nodes, nodes, timeout)
                out["form_s"] = time.monotonic() - t0
                t_kill = time.monotonic()
                c.kill(victim)
                watch.wait(survivors, survivors, timeout)
                out["reform_s"] = time.monotonic() - t_kill
                t_spawn = time.monotonic()
                c.start(victim)
                watch.wait(nodes, nodes, timeout)
                out["rejoin_s"] = time.monotonic() - t_spawn
            else:
                out["form_s"] = c.up(timeout)
                t_kill_ns = c.kill(victim)
                seen = c.wait_members(survivors, survivors, t_kill_ns, timeout)
                out["reform_s"] = (max(seen.values()) - t_kill_ns) / 1e9
                t_spawn_ns = c.start(victim)
                seen = c.wait_members(survivors, nodes, t_spawn_ns, timeout)
                out["rejoin_s"] = (max(seen.values()) - t_spawn_ns) / 1e9
            rss = [systems.memory_kib(c.pid(n)).get("VmRSS", 0) for n in nodes]
            out["rss_max_mib"] = max(rss) / 1024
            print(
                f"  formed {out['form_s']:.2f} s, reformed after kill -9 {out['reform_s']:.2f} s,"
                f" rejoined {out['rejoin_s']:.2f} s, RSS max {out['rss_max_mib']:.0f} MiB",
                flush=True,
            )
    except (DriverError, OSError, ValueError) as exc:
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {out['error']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--systems", default="cmanlk-udpu,corosync-udpu")
    ap.add_argument("--token", type=int, default=1000)
    ap.add_argument("--token-coefficient", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.scale needs root (network namespaces)", file=sys.stderr)
        return 2
    by_name = {s.name: s for s in systems.ALL_SYSTEMS}
    started = datetime.datetime.now(datetime.UTC)
    doc: dict[str, Any] = {
        "schema": SCALE_SCHEMA,
        "started_at": started.isoformat(timespec="seconds"),
        "loadavg_before": list(os.getloadavg()),
        "settings": {"token_ms": args.token, "token_coefficient": args.token_coefficient},
        "runs": [],
    }
    workroot = Path(tempfile.mkdtemp(prefix="cmkscale-"))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for name in args.systems.split(","):
                doc["runs"].append(run_one(by_name[name], size, args, workroot))
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    doc["loadavg_after"] = list(os.getloadavg())
    out = args.out or (
        Path(__file__).resolve().parent / "results" / f"scale-{started.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\n{'system':15s} {'nodes':>5s} {'form s':>8s} {'reform s':>9s} {'rejoin s':>9s} {'RSS MiB':>8s}")
    for r in doc["runs"]:
        if r["status"] != "ok":
            print(f"{r['system']:15s} {r['nodes']:5d}  {r['status']}: {r.get('error', '')[:80]}")
            continue
        print(
            f"{r['system']:15s} {r['nodes']:5d} {r['form_s']:8.2f} {r['reform_s']:9.2f} {r['rejoin_s']:9.2f}"
            f" {r['rss_max_mib']:8.0f}"
        )
    print(f"load average before {doc['loadavg_before'][0]:.2f}, after {doc['loadavg_after'][0]:.2f}; {out}")
    return 0 if all(r["status"] == "ok" for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
