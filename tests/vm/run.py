"""Run real-kernel scenarios and print one summary line each: `python -m tests.vm.run [NAME...]`.

Exit status 0 when every selected scenario passed. `--list` shows the scenarios. Results
(consoles, guest /out, /lab) stay under $KLAB_DIR/run/cmanlk/<scenario>-<time>-<pid>/.

Scenarios run `--jobs` at a time (default 2, env CMANLK_VM_JOBS), at most MAX_PARALLEL_VMS VMs
at once, the biggest first; each line is printed when its scenario ends, and a last line gives
the wall time of the whole run. Much of a cmanlkd scenario's time is spent waiting (token and
consensus timeouts before a failure is seen, fence retries, barriers), so two scenarios share
the 2 build cores well; the guests' token of 5 s tolerates the slower boot.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from tests.vm.harness import LabMissing, run_scenario
from tests.vm.scenarios import SCENARIOS, Scenario

DEFAULT_JOBS = 2
MAX_PARALLEL_VMS = 5
"""A 3-VM and a 2-VM scenario together: ~3.5 GiB of host RAM, 5 vCPU threads on 2 cores."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm.run")
    ap.add_argument("names", nargs="*", help="scenarios (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the console tail of failures")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("CMANLK_VM_JOBS", DEFAULT_JOBS)),
                    help=f"scenarios at once (default {DEFAULT_JOBS}, env CMANLK_VM_JOBS)")
    a = ap.parse_args(argv)
    if a.list:
        for s in SCENARIOS.values():
            print(f"{s.name:24} {len(s.vms)} VM(s)  {s.doc}")
        return 0
    unknown = [n for n in a.names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def interrupted(*_: object) -> None:
        stop.set()  # every running scenario kills its VMs and removes its namespace, then we exit

    # SIGTERM (a CI time limit, Ctrl-C of a wrapper) must still run the harness's cleanup
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    chosen = [SCENARIOS[n] for n in (a.names or list(SCENARIOS))]
    t0 = time.monotonic()
    failed = run_all(chosen, max(1, a.jobs), stop,
                     lambda line, tail: _report(line, tail if a.verbose else ""))
    took = time.monotonic() - t0
    verdict = "interrupted" if stop.is_set() else f"{len(chosen) - failed} passed, {failed} failed"
    print(f"vm-tests: {verdict} in {took:.1f}s ({max(1, a.jobs)} at a time)", flush=True)
    return 143 if stop.is_set() else (1 if failed else 0)


def run_all(chosen: list[Scenario], jobs: int, stop: threading.Event,
            report: Callable[[str, str], None]) -> int:
    """Run `chosen`, `jobs` at a time within MAX_PARALLEL_VMS; return how many did not pass."""
    pending = sorted(chosen, key=lambda s: -len(s.vms))  # stable: scenario order within a size
    running: dict[threading.Thread, Scenario] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def one(s: Scenario) -> None:
        line, tail, ok = _run_one(s, stop)
        with lock:
            if not ok:
                failures.append(s.name)
            report(line, tail)

    while (pending or running) and not (stop.is_set() and not running):
        for t in [t for t in running if not t.is_alive()]:
            del running[t]
        vms = sum(len(s.vms) for s in running.values())
        fits = [s for s in pending if len(s.vms) + vms <= MAX_PARALLEL_VMS or not running]
        if fits and len(running) < jobs and not stop.is_set():
            s = fits[0]
            pending.remove(s)
            t = threading.Thread(target=one, args=(s,), name=f"vm-{s.name}")
            running[t] = s
            t.start()
            continue
        time.sleep(0.2)
    return len(failures) + (len(pending) if stop.is_set() else 0)


def _run_one(s: Scenario, stop: threading.Event) -> tuple[str, str, bool]:
    t0 = time.monotonic()
    try:
        run = run_scenario(s.name, s.vms, s.timeout_s, shared_disk_mb=s.shared_disk_mb, stop=stop)
    except LabMissing as exc:
        return f"SKIP {s.name:24} {time.monotonic() - t0:6.1f}s  {exc}", "", False
    took = time.monotonic() - t0
    codes = " ".join(f"{r.name}={'timeout' if r.timed_out else r.exit_code}" for r in run.results)
    verdict = "PASS" if run.ok else "FAIL"
    line = f"{verdict} {s.name:24} {took:6.1f}s  {codes}  qemu-rss-peak={run.peak_rss_mb}MiB  {run.folder}"
    tail = "" if run.ok else "\n".join(f"--- {r.name} console (tail)\n{r.console_tail()}"
                                       for r in run.results)
    return line, tail, run.ok


def _report(line: str, tail: str) -> None:
    print(line, flush=True)
    if tail:
        print(tail, flush=True)


if __name__ == "__main__":
    sys.exit(main())
