"""Interop: Debian's corosync 3 (udpu) and cmanlkd in one ring.

One node runs the real corosync, the other two cmanlkd. With corosync as node 1 it is the ring
representative (it creates the commit tokens); with corosync as node 3 a cmanlkd node is. corosync
must list the cmanlkd nodes as joined members (corosync-cmapctl runtime.members), count their
votes (corosync-quorumtool), and see a kill -9 of one as a failure and a SIGTERM as a leave.
Kill requests cross both ways (cfg KILLNODE): corosync-cfgtool -k stops a cmanlkd node, and
cmanlk-tool kill stops corosync.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmanlk.client import Client
from tests.system.conftest import REPO, Cluster

pytestmark = [pytest.mark.system, pytest.mark.interop]

COROSYNC_START_S = 10.0


def corosync_command(conf: Path) -> list[str]:
    """corosync in the foreground with a /run of its own: its pid file (/run/corosync.pid) is fixed,
    and a corosync of another test on this machine would make ours exit at once ("already
    running", status 18). `ip netns exec` runs it in a mount namespace of its own already."""
    return ["sh", "-c", f'mount -t tmpfs corosync-run /run && exec corosync -f -c "{conf}"']


@pytest.fixture(params=[1, 3], ids=["corosync-rep", "cmanlkd-rep"])
def mixed(cluster_factory: Callable[..., Cluster], request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if shutil.which("corosync") is None or shutil.which("corosync-cmapctl") is None:
        pytest.skip("Debian's corosync is not installed (scripts/setup.sh installs it)")
    c = cluster_factory([1, 2, 3], token_ms=1000)
    cs = request.param
    c.corosync = cs  # type: ignore[attr-defined]
    c.ours = [n for n in (1, 2, 3) if n != cs]  # type: ignore[attr-defined]
    state = c.workdir / "corosync-state"
    state.mkdir()
    conf = c.config_text(cs, [1, 2, 3]).replace("cmanlk {", f"system {{\n  state_dir: {state}\n}}\ncmanlk {{")
    path = c.workdir / "corosync.conf"
    path.write_text(conf)
    proc = c.lab.popen(cs, corosync_command(path), c.workdir / "corosync.log")
    c.procs[cs] = proc
    try:
        c.wait_until(
            lambda: "ready to provide service" in _corosync_log(c), COROSYNC_START_S, "corosync ready"
        )
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # let corosync remove its libqb shared memory files
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _corosync_log(c: Cluster) -> str:
    return (c.workdir / "corosync.log").read_text(errors="replace")


def corosync_members(c: Cluster) -> dict[int, str]:
    """node id → status ("joined"/"left") from corosync-cmapctl runtime.members on corosync's node."""
    out = c.lab.run(c.corosync, "corosync-cmapctl", "-b", "runtime.members", check=False).stdout
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"runtime\.members\.(\d+)\.status \(str\) = (\w+)", out)
    }


def corosync_votes(c: Cluster) -> int | None:
    out = c.lab.run(c.corosync, "corosync-quorumtool", "-s", check=False).stdout
    m = re.search(r"Total votes:\s+(\d+)", out)
    return int(m.group(1)) if m else None


def test_corosync_lists_cmanlkd_nodes_and_counts_their_votes(mixed: Cluster) -> None:
    c, a, b = mixed, *mixed.ours  # type: ignore[attr-defined]
    c.start(a)
    c.start(b)
    c.wait_ring([a, b], members=[1, 2, 3], timeout_s=15.0)
    c.wait_until(
        lambda: corosync_members(c) == {1: "joined", 2: "joined", 3: "joined"}, 10.0, "corosync members"
    )
    c.wait_until(lambda: corosync_votes(c) == 3, 10.0, "corosync counting 3 votes")
    assert c.status(a)["quorate"] is True  # type: ignore[index]
    assert c.status(a)["ring_rep"] == 1  # type: ignore[index]
    links = c.lab.run(c.corosync, "corosync-cfgtool", "-s", check=False)  # type: ignore[attr-defined]
    assert links.returncode == 0, links.stderr
    for n in (a, b):
        assert re.search(rf"nodeid:\s+{n}:\s+connected", links.stdout), links.stdout


def test_cmanlkd_nodes_reform_when_corosync_is_killed(mixed: Cluster) -> None:
    c, a, b = mixed, *mixed.ours  # type: ignore[attr-defined]
    c.start(a)
    c.start(b)
    c.wait_ring([a, b], members=[1, 2, 3], timeout_s=15.0)
    pid = c.pid(c.corosync)  # type: ignore[attr-defined]
    c.kill(c.corosync)  # type: ignore[attr-defined]
    _remove_corosync_shm(pid)
    c.wait_ring([a, b], members=sorted([a, b]), timeout_s=10.0)


def _remove_corosync_shm(pid: int) -> None:
    """Remove the libqb buffers and blackbox a corosync that did not shut down leaves in /dev/shm."""
    shm = Path("/dev/shm")
    for leftover in [*shm.glob(f"qb-{pid}-*"), *shm.glob(f"qb-corosync-{pid}-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def test_kill_requests_cross_between_corosync_and_cmanlkd(mixed: Cluster) -> None:
    """corosync-cfgtool -k stops a cmanlkd node (exit 5, requester logged); cmanlk-tool kill
    stops the corosync node (it logs "Killed by node N" and exits), as cfg's KILLNODE does."""
    c, a, b = mixed, *mixed.ours  # type: ignore[attr-defined]
    cs: int = c.corosync  # type: ignore[attr-defined]
    c.start(a)
    c.start(b)
    c.wait_ring([a, b], members=[1, 2, 3], timeout_s=15.0)
    c.wait_until(lambda: corosync_members(c) == {1: "joined", 2: "joined", 3: "joined"}, 10.0, "joined")
    killed = c.lab.run(cs, "corosync-cfgtool", "-k", str(b), check=False)
    assert killed.returncode == 0, killed.stderr
    c.wait_until(lambda: not c.alive(b), 10.0, f"cmanlkd node {b} exits")
    assert c.procs.pop(b).returncode == 5  # gone for good: later waits must not count it as a failure
    assert f"killed by node {cs}: Killed by corosync-cfgtool" in c.log_path(b).read_text()
    c.wait_ring([a], members=sorted([a, cs]), timeout_s=10.0)

    pid = c.pid(cs)
    sock = str(c.run_dir(a) / "cmanlk.sock")
    tool = [sys.executable, "-m", "cmanlk.client.cli", "-s", sock, "kill", str(cs)]
    done = subprocess.run(tool, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    try:
        c.wait_until(lambda: not c.alive(cs), 10.0, "corosync exits")
    finally:
        if not c.alive(cs):
            _remove_corosync_shm(pid)  # it exits without its normal shutdown, also when we fail
    assert c.procs.pop(cs).returncode == 255  # corosync_fatal_error(COROSYNC_FATAL_ERROR_EXIT): exit(-1)
    assert f"Killed by node {a} : Killed by an administrator (cmanlk-tool kill)" in _corosync_log(c)
    c.wait_ring([a], members=[a], timeout_s=15.0)


def test_corosync_sees_a_cmanlkd_failure_and_a_leave(mixed: Cluster) -> None:
    c, a, b = mixed, *mixed.ours  # type: ignore[attr-defined]
    c.start(a)
    c.start(b)
    c.wait_ring([a, b], members=[1, 2, 3], timeout_s=15.0)
    c.kill(b)
    c.wait_until(lambda: corosync_members(c).get(b) == "left", 10.0, f"corosync seeing node {b} fail")
    c.wait_ring([a], members=sorted([a, c.corosync]), timeout_s=10.0)  # type: ignore[attr-defined]
    start = time.monotonic()
    assert c.stop(a) == 0
    c.wait_until(lambda: corosync_members(c).get(a) == "left", 5.0, f"corosync seeing node {a} leave")
    # a leave, not a failure: well below token (1000) + consensus (1200)
    assert time.monotonic() - start < 1.5


CPG_MESSAGES = 50


def test_cpg_messages_between_libcpg_and_cmanlk_clients_share_one_order(mixed: Cluster) -> None:
    """L3 interop: a libcpg client on corosync and a cmanlk.client on cmanlkd in one group."""
    c, a, b = mixed, *mixed.ours  # type: ignore[attr-defined]
    if not Path("/usr/lib/x86_64-linux-gnu/libcpg.so.4").exists():
        pytest.skip("libcpg4 is not installed")
    c.start(a)
    c.start(b)
    c.wait_ring([a, b], members=[1, 2, 3], timeout_s=15.0)
    out = c.workdir / "cpg_peer.out"
    peer = c.lab.popen(
        c.corosync,  # type: ignore[attr-defined]
        [
            "env",
            f"PYTHONPATH={REPO}",
            sys.executable,
            "-m",
            "tests.system.cpg_peer",
            "interop",
            "--members",
            "2",
            "--send",
            str(CPG_MESSAGES),
            "--expect",
            str(2 * CPG_MESSAGES),
            "--timeout",
            "30",
        ],
        out,
    )
    with Client.connect(str(c.run_dir(a) / "cmanlk.sock")) as client:
        client.cpg_join("interop")
        c.wait_until(
            lambda: any(g["name"] == "interop" and len(g["members"]) == 2 for g in client.groups()),
            15.0,
            "both clients in the group",
        )
        for i in range(CPG_MESSAGES):
            client.cpg_send("interop", f"m:{i}".encode())
        ours: list[str] = []
        deadline = time.monotonic() + 30
        while len(ours) < 2 * CPG_MESSAGES and time.monotonic() < deadline:
            event = client.cpg_receive(0.5)
            if event is not None and event.name == "cpg_deliver":
                ours.append(f"{event.data['nodeid']}/{event.payload.decode()}")
    peer.wait(timeout=40)
    theirs = json.loads(out.read_text().strip().splitlines()[-1])["received"]
    assert len(ours) == 2 * CPG_MESSAGES, ours[-5:]
    assert ours == theirs  # the same agreed order on both implementations
    assert [m for m in ours if "/m:" in m] == [f"{a}/m:{i}" for i in range(CPG_MESSAGES)]
    assert [m for m in ours if "/c:" in m] == [f"{c.corosync}/c:{i}" for i in range(CPG_MESSAGES)]  # type: ignore[attr-defined]
