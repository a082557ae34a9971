"""Run real-kernel scenarios and print one summary line each: `python -m tests.vm.run [NAME...]`.

Exit status 0 when every selected scenario passed. `--list` shows the scenarios. Results
(consoles, guest /out, /lab) stay under $KLAB_DIR/run/cmanlk/<scenario>-<time>-<pid>/.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tests.vm.harness import LabMissing, run_scenario
from tests.vm.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm.run")
    ap.add_argument("names", nargs="*", help="scenarios (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the console tail of failures")
    a = ap.parse_args(argv)
    # SIGTERM (a CI time limit, Ctrl-C of a wrapper) must still run the harness's cleanup
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.list:
        for s in SCENARIOS.values():
            print(f"{s.name:24} {len(s.vms)} VM(s)  {s.doc}")
        return 0
    unknown = [n for n in a.names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    failed = 0
    for name in a.names or list(SCENARIOS):
        s = SCENARIOS[name]
        t0 = time.monotonic()
        try:
            run = run_scenario(s.name, s.vms, s.timeout_s, shared_disk_mb=s.shared_disk_mb)
        except LabMissing as exc:
            print(f"SKIP {name:24} {time.monotonic() - t0:6.1f}s  {exc}", flush=True)
            failed += 1
            continue
        took = time.monotonic() - t0
        codes = " ".join(f"{r.name}={'timeout' if r.timed_out else r.exit_code}" for r in run.results)
        verdict = "PASS" if run.ok else "FAIL"
        print(f"{verdict} {name:24} {took:6.1f}s  {codes}  qemu-rss-peak={run.peak_rss_mb}MiB  {run.folder}",
              flush=True)
        if not run.ok:
            failed += 1
            if a.verbose:
                for r in run.results:
                    print(f"--- {r.name} console (tail)\n{r.console_tail()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
