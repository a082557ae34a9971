#!/usr/bin/env python3
"""A fence agent for the VM lab, speaking the fence_* stdin protocol (key=value lines).

Options: action (off), nodename, ip (the victim's address), flagdir (where attempts are recorded),
fail_first (how many first attempts fail, to exercise retries). "off" succeeds (exit 0) only when
the victim no longer answers ping: the scenario's victim has hard-reset itself, so this is a
true check that it is off. Every call is recorded as <flagdir>/fence-attempt.<n> (its stdin).
"""

import subprocess
import sys
from pathlib import Path


def main() -> int:
    opts = dict(line.split("=", 1) for line in sys.stdin.read().splitlines() if "=" in line)
    flagdir = Path(opts.get("flagdir", "/tmp"))
    n = len(list(flagdir.glob("fence-attempt.*"))) + 1
    (flagdir / f"fence-attempt.{n}").write_text("".join(f"{k}={v}\n" for k, v in opts.items()))
    if opts.get("action") != "off":
        print(f"unsupported action {opts.get('action')}")
        return 1
    if n <= int(opts.get("fail_first", "0")):
        print(f"attempt {n}: power switch unreachable (simulated)")
        return 1
    alive = subprocess.run(["ping", "-c", "1", "-W", "1", opts["ip"]], capture_output=True, check=False)
    if alive.returncode == 0:
        print(f"attempt {n}: {opts['nodename']} still answers at {opts['ip']}")
        return 1
    print(f"attempt {n}: {opts['nodename']} is off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
