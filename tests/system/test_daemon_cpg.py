"""Closed process groups end to end: three real cmanlkd daemons, one cmanlk.client process per node
(each in its node's namespace), one group.

1. Every client sends MESSAGES_PER_CLIENT small messages ("<node>:<counter>"); every client
   delivers all of them, each sender's in its sending order, and the three delivery sequences are
   identical (agreed order), compared by hash.
2. The same with node 3 killed (kill -9) in the middle: both survivors deliver the same
   configuration change (node 3's process left with reason 3, node down) at the same point of the
   same sequence, so no message is delivered to one survivor but not the other — before or after
   the change (virtual synchrony).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.system import cpghelpers as h
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

MESSAGES_PER_CLIENT = 10_000
KILL_RUN_MESSAGES = 4_000
CLIENT_TIMEOUT_S = 150.0
REASON_NODEDOWN = 3
AFTER_CHANGE_MESSAGES = 500
"""Each survivor sends this many more once it has seen the node-down confchg: surely after it."""


def start_clients(
    c: Cluster, nodes: list[int], group: str, count: int, extra: int = 0
) -> tuple[dict[int, Path], dict[int, Path]]:
    outs: dict[int, Path] = {}
    progress: dict[int, Path] = {}
    for n in nodes:
        outs[n] = c.workdir / f"cpg{n}.json"
        progress[n] = c.workdir / f"cpg{n}.progress"
        cmd = h.client_command(
            "cmanlk", outs[n], socket=h.socket_path(c.run_dir(n)), group=group, me=n, count=count,
            members=len(nodes), progress=progress[n], timeout=CLIENT_TIMEOUT_S, extra=extra,
        )
        c.lab.popen(n, cmd, c.workdir / f"cpg{n}.log", h.child_env())
    return outs, progress


def throughput(results: dict[int, dict[str, Any]], total: int) -> str:
    first = min(r["first_send"] for r in results.values())
    last = max(r["done"] for r in results.values())
    took = last - first
    marks = results[min(results)]["marks"]
    windows = [h.PROGRESS_EVERY / (b - a) for a, b in itertools.pairwise(marks) if b > a]
    spread = f" (per {h.PROGRESS_EVERY}: {min(windows):.0f}..{max(windows):.0f} msg/s)" if windows else ""
    return f"{total} messages in {took:.2f} s = {total / took:.0f} msg/s delivered per client{spread}"


def test_three_clients_deliver_30000_messages_in_one_agreed_order(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    outs, _ = start_clients(c, [1, 2, 3], "load", MESSAGES_PER_CLIENT)
    results = h.wait_results(outs, CLIENT_TIMEOUT_S + 10)
    for n, r in results.items():
        assert r["error"] == "", f"client on node {n}: {r['error']}\n" + c.logs()
    total = 3 * MESSAGES_PER_CLIENT
    seqs = {n: h.deliveries(r["events"]) for n, r in results.items()}
    joins = {n: h.from_barrier(r["events"], 3)[0] for n, r in results.items()}
    assert len(set(joins.values())) == 1, joins  # the last join, the same confchg everywhere
    for n, seq in seqs.items():
        assert len(seq) == total, f"node {n} delivered {len(seq)} of {total}"
        assert len(set(seq)) == total  # no duplicates
    hashes = {n: h.digest(seq) for n, seq in seqs.items()}
    print(f"\ncpg agreed order: {throughput(results, total)}; sequence hashes {hashes}")
    assert len(set(hashes.values())) == 1, hashes
    # not one sender's burst after another: the ring interleaves them
    assert len({s.split()[1] for s in seqs[1][: total // 2]}) == 3


def test_kill9_mid_stream_survivors_deliver_the_same_sequence_and_confchg(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    outs, progress = start_clients(c, [1, 2, 3], "kill", KILL_RUN_MESSAGES, extra=AFTER_CHANGE_MESSAGES)
    total = 3 * KILL_RUN_MESSAGES
    c.wait_until(lambda: h.read_progress(progress[1]) >= total // 3, 60.0, "a third of the messages")
    killed_at = time.monotonic()
    c.kill(3)
    del outs[3]  # its client loses its daemon; what it saw is not compared
    results = h.wait_results(outs, CLIENT_TIMEOUT_S)
    for n, r in results.items():
        assert r["error"] == "", f"client on node {n}: {r['error']}\n" + c.logs()
    a, b = (h.from_barrier(results[n]["events"], 3) for n in (1, 2))
    assert a and b, "the start barrier is missing from a survivor's sequence"
    changes = {n: [i for i, e in enumerate(seq) if "left=3:" in e] for n, seq in ((1, a), (2, b))}
    assert len(changes[1]) == 1 and len(changes[2]) == 1, changes
    at1, at2 = changes[1][0], changes[2][0]
    left = a[at1].split(" left=")[1].split(" ")[0]
    assert left.endswith(f":{REASON_NODEDOWN}"), a[at1]  # reason: node down
    assert a[at1] == b[at2]  # the same configuration change
    before = (h.digest(a[:at1]), h.digest(b[:at2]))
    after = (h.digest(a[at1:]), h.digest(b[at2:]))
    print(
        f"\ncpg kill -9: node 3 left after {len(h.deliveries(a[:at1]))} deliveries on node 1, "
        f"{len(h.deliveries(b[:at2]))} on node 2 (hashes {before}); "
        f"{len(h.deliveries(a[at1:]))} / {len(h.deliveries(b[at2:]))} after (hashes {after}); "
        f"done {results[1]['done'] - killed_at:.2f} s after the kill"
    )
    assert a[:at1] == b[:at2], "survivors disagree on what was delivered before the change"
    assert a[at1:] == b[at2:], "survivors disagree on what was delivered after the change"
    got3 = [e for e in h.deliveries(a) if e.startswith("D 3 ")]
    assert 0 < len(got3) < KILL_RUN_MESSAGES  # it really died in the middle
    assert all(e.startswith(("D 1 ", "D 2 ")) for e in h.deliveries(a[at1:]))
    for s in (1, 2):  # the extra messages, sent after the change, are delivered after it
        assert f"D {s} {s}:{KILL_RUN_MESSAGES + AFTER_CHANGE_MESSAGES - 1}" in a[at1:]
