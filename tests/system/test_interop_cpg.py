"""Interop of closed process groups: Debian's corosync 3 (udpu) and cmanlkd in one ring.

A real libcpg client (bench/cpg_ctypes.py over libcpg.so.4) on the corosync node and a
cmanlk.client process on each cmanlkd node join one group. Each sees the others join (confchg),
each sends MESSAGES_PER_CLIENT messages, and every one of them delivers the same sequence of
confchgs and messages from the last join on: corosync's cpg service and ours agree on the order.
Run with corosync as node 1 (it represents the ring) and as node 3 (a cmanlkd node does).
"""

from __future__ import annotations

import ctypes.util
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import cpghelpers as h
from tests.system.conftest import Cluster
from tests.system.test_interop_corosync import corosync_command

pytestmark = [pytest.mark.system, pytest.mark.interop]

COROSYNC_START_S = 10.0
MESSAGES_PER_CLIENT = 1_000
CLIENT_TIMEOUT_S = 90.0
REASON_JOIN = 1
REASON_NODEDOWN = 3
KILL_RUN_MESSAGES = 4_000
KILL_AFTER_SENDS = 1_000
KILL_RUN_RATE = 1_500.0
"""Sends per second of the cmanlk clients in the kill run: unpaced, the victim's whole stream was on
the ring within the time a poll takes, and the kill fell after it."""
AFTER_CHANGE_MESSAGES = 300
"""Each survivor sends this many more once it has seen the node-down confchg."""



def _missing() -> str | None:
    if shutil.which("corosync") is None:
        return "Debian's corosync is not installed (scripts/setup.sh installs it)"
    if ctypes.util.find_library("cpg") is None:
        return "Debian's libcpg (libcpg4) is not installed"
    return None


@pytest.fixture(params=[1, 3], ids=["corosync-rep", "cmanlkd-rep"])
def mixed(cluster_factory: Callable[..., Cluster], request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Nodes 1..3; `request.param` runs corosync, the others cmanlkd (all started)."""
    why = _missing()
    if why:
        pytest.skip(why)
    c = cluster_factory([1, 2, 3], token_ms=1000)
    cs: int = request.param
    state = c.workdir / "corosync-state"
    state.mkdir()
    conf = c.config_text(cs, [1, 2, 3]).replace("cmanlk {", f"system {{\n  state_dir: {state}\n}}\ncmanlk {{")
    path = c.workdir / "corosync.conf"
    path.write_text(conf)
    log = c.workdir / "corosync.log"
    proc = c.lab.popen(cs, corosync_command(path), log)
    c.procs[cs] = proc
    try:
        c.wait_until(
            lambda: "ready to provide service" in log.read_text(errors="replace"),
            COROSYNC_START_S,
            "corosync ready",
        )
        ours = [n for n in (1, 2, 3) if n != cs]
        for n in ours:
            c.start(n)
        c.wait_ring(ours, members=[1, 2, 3], timeout_s=20.0)
        c.corosync = cs  # type: ignore[attr-defined]
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # let corosync remove its libqb shared memory files
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def group_members(c: Cluster, node: int) -> dict[int, int]:
    """nodeid → pid of the processes in group "interop", as `cmanlk-tool groups` on `node` lists them."""
    groups = h.tool_json(c.lab.ns(node), h.socket_path(c.run_dir(node)), "groups")[1]["groups"]
    return {m["nodeid"]: m["pid"] for g in groups if g["name"] == "interop" for m in g["members"]}


def _has_members(c: Cluster, node: int, count: int) -> bool:
    return len(group_members(c, node)) == count


def start_clients(
    c: Cluster, count: int, extra: int = 0, rate: float = 0.0
) -> tuple[dict[int, Path], dict[int, int]]:
    """A libcpg client on the corosync node, cmanlk ones elsewhere, started one after another so
    that each sees the later ones join; returns result paths and pids (as the group lists them)."""
    cs: int = c.corosync  # type: ignore[attr-defined]
    ours = [n for n in (1, 2, 3) if n != cs]
    outs: dict[int, Path] = {}
    pids: dict[int, int] = {}
    for n in (1, 2, 3):
        outs[n] = c.workdir / f"cpg{n}.json"
        opts: dict[str, object] = {
            "group": "interop",
            "me": n,
            "count": count,
            "members": 3,
            "timeout": CLIENT_TIMEOUT_S,
            "progress": c.workdir / f"cpg{n}.progress",
            "extra": extra,
        }
        if n == cs:
            cmd = h.client_command("libcpg", outs[n], **opts)
        else:
            cmd = h.client_command("cmanlk", outs[n], socket=h.socket_path(c.run_dir(n)), rate=rate, **opts)
        proc = c.lab.popen(n, cmd, c.workdir / f"cpg{n}.log", h.child_env())
        pids[n] = proc.pid  # `ip netns exec` execs the client: the pid it joins the group with
        # The last client completes the start barrier, so the whole exchange may be over (and
        # every client gone from the group) before a poll sees it: its output counts as joined.
        c.wait_until(lambda n=n: _has_members(c, ours[0], n) or outs[n].exists(), 15.0,
                     f"client {n} in the group")
    return outs, pids


def _first_difference(a: list[str], b: list[str]) -> str:
    """Where two event sequences part, with a few events of each around it."""
    k = next((x for x in range(min(len(a), len(b))) if a[x] != b[x]), min(len(a), len(b)))
    return f"at #{k}: libcpg {a[max(0, k - 3) : k + 4]} / cmanlk {b[max(0, k - 3) : k + 4]}"


def check_results(c: Cluster, results: dict[int, dict[str, Any]]) -> None:
    logs = "".join((c.workdir / f"cpg{n}.log").read_text(errors="replace") for n in (1, 2, 3))
    for n, r in results.items():
        assert r["error"] == "", f"client on node {n}: {r['error']}\n{logs}\n" + c.logs()


def test_libcpg_and_cmanlk_clients_see_each_other_and_deliver_one_order(mixed: Cluster) -> None:
    c = mixed
    cs: int = c.corosync  # type: ignore[attr-defined]
    outs, pids = start_clients(c, MESSAGES_PER_CLIENT)
    results = h.wait_results(outs, CLIENT_TIMEOUT_S + 10)
    check_results(c, results)

    seqs = {n: h.from_barrier(r["events"], 3) for n, r in results.items()}
    assert all(seqs.values()), "a client never saw all three processes in the group"
    for n, r in results.items():
        confchgs = [e for e in r["events"] if e.startswith("C ")]
        # its first view: itself and the clients started before it, named by their real pids
        assert confchgs[0].split()[1] == "members=" + ",".join(f"{m}:{pids[m]}" for m in range(1, n + 1))
        # then it sees each later client join, with libcpg's reason 1 (join)
        later = [f"joined={m}:{pids[m]}:{REASON_JOIN}" for m in range(n + 1, 4)]
        assert [e.split()[-1] for e in confchgs[1:]] == later, confchgs
    total = 3 * MESSAGES_PER_CLIENT
    for n, seq in seqs.items():
        got = h.deliveries(seq)
        assert len(got) == total, f"node {n} delivered {len(got)} of {total}"
    hashes = {n: h.digest(seq) for n, seq in seqs.items()}
    first = min(r["first_send"] for r in results.values())
    took = max(r["done"] for r in results.values()) - first
    rate = f"{total} messages in {took:.2f} s = {total / took:.0f} msg/s"
    print(f"\ncpg interop (corosync node {cs}): {rate}; {hashes}")
    assert seqs[1] == seqs[2] == seqs[3], hashes


def test_kill9_of_a_cmanlkd_node_mid_stream_gives_libcpg_and_cmanlk_the_same_view(mixed: Cluster) -> None:
    c = mixed
    cs: int = c.corosync  # type: ignore[attr-defined]
    survivor, victim = [n for n in (1, 2, 3) if n != cs]
    outs, pids = start_clients(c, KILL_RUN_MESSAGES, extra=AFTER_CHANGE_MESSAGES, rate=KILL_RUN_RATE)
    # The victim's own sends decide: the clients deliver well behind the ring (their daemons buffer
    # for them), so waiting for a delivery count let the victim send its whole stream before the kill.
    sent = (c.workdir / f"cpg{victim}.progress").with_suffix(".sent")
    c.wait_until(lambda: h.read_progress(sent) >= KILL_AFTER_SENDS, 60.0, "the victim's sends under way")
    at_kill = h.read_progress(sent)
    c.kill(victim)
    del outs[victim]
    results = h.wait_results(outs, CLIENT_TIMEOUT_S)
    check_results(c, results)
    a, b = (h.from_barrier(results[n]["events"], 3) for n in (cs, survivor))
    down = f"left={victim}:{pids[victim]}:{REASON_NODEDOWN}"
    at = {n: [i for i, e in enumerate(seq) if down in e] for n, seq in ((cs, a), (survivor, b))}
    victims = [e for e in h.deliveries(a) if e.startswith(f"D {victim} ")]
    assert len(at[cs]) == 1 and len(at[survivor]) == 1, (
        at, [e for e in a + b if e.startswith("C ")], f"sent {at_kill} at the kill, {len(victims)} delivered"
    )
    i, j = at[cs][0], at[survivor][0]
    print(
        f"\ncpg interop kill -9 of cmanlkd node {victim}: change after {len(h.deliveries(a[:i]))} deliveries "
        f"(libcpg) / {len(h.deliveries(b[:j]))} (cmanlk); {len(h.deliveries(a[i:]))} / "
        f"{len(h.deliveries(b[j:]))} after; the victim had sent {at_kill} when killed"
    )
    assert a[i] == b[j]
    assert a[:i] == b[:j], "libcpg and cmanlk disagree before the change " + _first_difference(a[:i], b[:j])
    assert a[i:] == b[j:], "libcpg and cmanlk disagree after the change " + _first_difference(a[i:], b[j:])
    # the kill fell in the middle: the victim had sent some but not all, the stream went on after
    got = [e for e in h.deliveries(a) if e.startswith(f"D {victim} ")]
    assert 0 < len(got) < KILL_RUN_MESSAGES
    assert any(e.startswith(f"D {cs} {cs}:{KILL_RUN_MESSAGES}") for e in a[i:]), "no extra after the change"
