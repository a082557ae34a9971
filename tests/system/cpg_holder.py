"""A process that joins a CPG group and stays in it until its stdin closes (for corosync-cpgtool).

    python -m tests.system.cpg_holder libcpg GROUP            # Debian's libcpg (via libqb)
    python -m tests.system.cpg_holder cmanlk GROUP --socket S # cmanlk's own client library

Prints "joined <pid>" once the join is complete (its first confchg shows it), then waits.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("flavour", choices=["libcpg", "cmanlk"])
    p.add_argument("group")
    p.add_argument("--socket", default="")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout
    if args.flavour == "libcpg":
        sys.path.insert(0, str(REPO))
        from bench.cpg_ctypes import Cpg

        joined: list[bool] = []
        cpg = Cpg(lambda *a: None, lambda m, left, j: joined.append(True), lambda r, m: None)
        cpg.connect(args.group)
        while not joined and time.monotonic() < deadline:
            ready, _, _ = select.select([cpg.fd], [], [], 0.2)
            if ready:
                cpg.dispatch()
        print(f"joined {os.getpid()}", flush=True)
        select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
        cpg.close()
        return 0
    from cmanlk.client import Client

    with Client.connect(args.socket) as client:
        client.cpg_join(args.group)
        print(f"joined {os.getpid()}", flush=True)
        select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
