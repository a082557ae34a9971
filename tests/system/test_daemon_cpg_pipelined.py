"""Pipelined cpg sends end to end: three real cmanlkd daemons, one client per node sending small
messages with `cpg_mcast_many` (IPC protocol 2) as fast as its window allows.

A burst of tiny pipelined messages fills the daemon's send path far deeper than request/reply
ever did: cpg's in-flight bound, totem's queue and the IPC window all meet. Every message
accepted must be delivered — to every member, once, in one agreed order, each sender's in its
sending order — and no send may be refused.

The client (`python -m tests.system.test_daemon_cpg_pipelined SOCKET ME COUNT OUT`) writes
{"delivered": [...], "error": ""} to OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.system import cpghelpers as h
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

MESSAGES_PER_CLIENT = 6_000
CLIENT_TIMEOUT_S = 90.0
GROUP = "pipe"


def test_three_pipelining_clients_deliver_every_message_in_one_order(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    outs: dict[int, Path] = {}
    for n in (1, 2, 3):
        outs[n] = c.workdir / f"pipe{n}.json"
        cmd = [
            sys.executable,
            "-m",
            "tests.system.test_daemon_cpg_pipelined",
            h.socket_path(c.run_dir(n)),
            str(n),
            str(MESSAGES_PER_CLIENT),
            str(outs[n]),
        ]
        c.lab.popen(n, cmd, c.workdir / f"pipe{n}.log", h.child_env())
    results = h.wait_results(outs, CLIENT_TIMEOUT_S + 10)
    total = 3 * MESSAGES_PER_CLIENT
    for n, r in results.items():
        assert r["error"] == "", f"client on node {n}: {r['error']}\n" + c.logs()
        seq = r["delivered"]
        assert len(seq) == total and len(set(seq)) == total, f"node {n}: {len(seq)} of {total}"
        for s in (1, 2, 3):  # FIFO per sender
            mine = [m for m in seq if m.startswith(f"{s}:")]
            assert mine == [f"{s}:{i}" for i in range(MESSAGES_PER_CLIENT)], f"node {n}, sender {s}"
    digests = {n: _digest(r["delivered"]) for n, r in results.items()}
    rates = {n: round(total / max(r["took_s"], 1e-9)) for n, r in results.items()}
    print(f"\npipelined cpg: {total} messages, delivered msg/s per client {rates}, hashes {digests}")
    assert len(set(digests.values())) == 1, digests


def _digest(seq: list[str]) -> str:
    return hashlib.sha256("\n".join(seq).encode()).hexdigest()[:16]


# --- the client, run in a node's namespace ---------------------------------------------------------


def client_main(socket: str, me: int, count: int, out: Path) -> None:
    from cmanlk.client import Client

    delivered: list[str] = []
    error = ""
    t0 = time.monotonic()
    deadline = t0 + CLIENT_TIMEOUT_S
    try:
        with Client.connect(socket) as client:
            client.cpg_join(GROUP)
            members = 0
            while members < 3 and time.monotonic() < deadline:  # the start barrier: all joined
                ev = client.cpg_receive(0.2)
                if ev is not None and ev.name == "cpg_confchg":
                    members = len(ev.data.get("members", []))
            t0 = time.monotonic()
            batch = 500
            for start in range(0, count, batch):
                client.cpg_mcast_many(GROUP, (f"{me}:{i}".encode() for i in range(start, start + batch)))
                while (ev := client.next_event(0)) is not None:
                    if ev.name == "cpg_deliver":
                        delivered.append(ev.payload.decode())
            client.cpg_flush()
            while len(delivered) < 3 * count and time.monotonic() < deadline:
                ev = client.cpg_receive(0.5)
                if ev is not None and ev.name == "cpg_deliver":
                    delivered.append(ev.payload.decode())
    except Exception as exc:  # reported to the test through the result file
        error = f"{type(exc).__name__}: {exc}"
    took = time.monotonic() - t0
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"delivered": delivered, "error": error, "took_s": took}))
    os.replace(tmp, out)


if __name__ == "__main__":
    client_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
