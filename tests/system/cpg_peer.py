"""A libcpg client of Debian's corosync, for the CPG interop test (runs in corosync's namespace).

    python -m tests.system.cpg_peer GROUP --members M --send N --expect TOTAL --timeout S

Joins GROUP through the real libcpg, waits until the group has M members, multicasts N messages
"c:<i>", and collects deliveries until TOTAL have arrived or S seconds passed. Prints one JSON
line: {"received": ["<nodeid>/<message>", ...], "confchg_members": [[nodeid, pid], ...]}.
"""

from __future__ import annotations

import argparse
import json
import select
import time

from bench.cpg_ctypes import Cpg


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("group")
    p.add_argument("--members", type=int, required=True)
    p.add_argument("--send", type=int, required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    received: list[str] = []
    members: list[tuple[int, int]] = []

    def on_deliver(nodeid: int, pid: int, msg: bytes) -> None:
        received.append(f"{nodeid}/{msg.decode()}")

    def on_confchg(m: list[tuple[int, int]], left: object, joined: object) -> None:
        members[:] = m

    cpg = Cpg(on_deliver, on_confchg, lambda ring, nodes: None)
    cpg.connect(args.group)
    deadline = time.monotonic() + args.timeout
    sent = 0
    try:
        while time.monotonic() < deadline and len(received) < args.expect:
            if len(members) >= args.members and sent < args.send:
                if cpg.mcast(f"c:{sent}".encode()):
                    sent += 1
            ready, _, _ = select.select([cpg.fd], [], [], 0.0 if sent < args.send and members else 0.05)
            if ready:
                cpg.dispatch()
    finally:
        print(json.dumps({"received": received, "confchg_members": members, "sent": sent}), flush=True)
        cpg.close()


if __name__ == "__main__":
    main()
