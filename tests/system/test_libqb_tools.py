"""Debian's own corosync tools and libraries, unmodified, on a three-node cmanlkd cluster (libqb IPC).

Each tool runs inside a node's network namespace, where cmanlkd owns the abstract socket names
corosync would (@cmap, @cfg, @cpg, @quorum, @votequorum):

1. corosync-quorumtool -s and -l show the ring's nodes, names, votes and quorate state (exit 0),
   and after a kill -9 the two survivors (still quorate);
2. corosync-cfgtool -s shows link 0 and which nodes are connected;
3. corosync-cmapctl lists the key tree with corosync's types, -t tracks a change made by
   another corosync-cmapctl -s; cmanlk-tool cmap reads the same tree; a reload (cmanlk-tool
   reload, corosync-cfgtool -R) reaches every node;
4. corosync-cpgtool lists groups joined by a libcpg client and by a cmanlk Python client;
5. a C client linked with Debian's libcpg (tests/system/cpg_c_client.c) on node 1 and
   cmanlk.client processes on nodes 2 and 3 deliver the same messages in one agreed order; with
   `qb_ipc_type: socket`, three libcpg clients (ctypes) do;
6. access: a non-root client is refused (CS_ERR_ACCESS) until a uidgid key lets it in;
7. a leave (SIGTERM) stops a cfg shutdown tracker (pacemakerd's way, tests/system/cfg_tracker.py)
   first and waits for it; a second SIGTERM leaves at once.

Bounded: every tool run has a timeout, every wait a deadline; the namespaces go with the test.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.system import cpghelpers as h
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

TOOL_TIMEOUT_S = 20.0
MESSAGES_PER_CLIENT = 2_000
CLIENT_TIMEOUT_S = 120.0
TOOLS = ("corosync-quorumtool", "corosync-cfgtool", "corosync-cmapctl", "corosync-cpgtool")


def _missing() -> str | None:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's corosync package; scripts/setup.sh installs it)"
    return None


def run(c: Cluster, node: int, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """A tool inside node's namespace, bounded in time."""
    proc = subprocess.run(
        ["ip", "netns", "exec", c.lab.ns(node), *cmd], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    if check:
        assert proc.returncode == 0, (
            f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n" + c.logs()
        )
    return proc


def served(c: Cluster, node: int) -> bool:
    """Does cmanlkd on `node` answer libqb clients yet (it refuses them until its first ring)?"""
    return run(c, node, "corosync-cmapctl", "-g", "totem.cluster_name").returncode == 0


@pytest.fixture
def ring(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    why = _missing()
    if why:
        pytest.skip(why)
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    for n in (1, 2, 3):
        c.wait_until(lambda n=n: served(c, n), 15.0, f"libqb IPC on node {n}")
    pids = {n: c.pid(n) for n in (1, 2, 3)}
    yield c
    for n in (1, 2, 3):  # a clean stop removes every connection's files; a killed daemon's stay
        if c.alive(n):
            c.stop(n)
    for pid in pids.values():
        for left in Path("/dev/shm").glob(f"qb-{pid}-*"):
            shutil.rmtree(left, ignore_errors=True)


def cmanlk_tool(c: Cluster, node: int, *args: str) -> subprocess.CompletedProcess[str]:
    return h.tool(c.lab.ns(node), h.socket_path(c.run_dir(node)), *args)


def test_quorumtool_cfgtool_and_cmapctl_show_the_cmanlkd_ring(ring: Cluster) -> None:
    c = ring
    status = c.status(1)
    assert status is not None
    quorum = run(c, 1, "corosync-quorumtool", "-s")
    assert quorum.returncode == 0, quorum.stdout + quorum.stderr  # 0: quorate
    out = quorum.stdout
    assert re.search(r"Quorum provider:\s+corosync_votequorum", out)
    assert re.search(r"Nodes:\s+3\n", out) and re.search(r"Node ID:\s+1\n", out)
    assert re.search(rf"Ring ID:\s+{re.escape(status['ring_id'])}\n", out), (out, status["ring_id"])
    assert re.search(r"Quorate:\s+Yes", out)
    assert re.search(r"Expected votes:\s+3", out) and re.search(r"Total votes:\s+3", out)
    assert re.search(r"Quorum:\s+2\s", out) and "Flags:            Quorate" in out
    for n in (1, 2, 3):
        assert re.search(rf"^\s+{n}\s+1 n{n}( \(local\))?$", out, re.M), out
    listing = run(c, 2, "corosync-quorumtool", "-l", check=True).stdout
    assert re.search(r"^\s+2\s+1 n2 \(local\)$", listing, re.M) and "n3" in listing
    links = run(c, 1, "corosync-cfgtool", "-s", check=True).stdout
    assert "Local node ID 1, transport udpu" in links and "LINK ID 0" in links
    assert re.search(r"nodeid:\s+1:\s+localhost", links) and re.search(r"nodeid:\s+3:\s+connected", links)
    tree = run(c, 3, "corosync-cmapctl", check=True).stdout
    for line in (
        "totem.cluster_name (str) = systest",
        "nodelist.node.1.nodeid (u32) = 2",
        "nodelist.local_node_pos (u32) = 2",
        "runtime.votequorum.this_node_id (u32) = 3",
        "runtime.members.1.status (str) = joined",
        "runtime.members.2.ip (str) = r(0) ip(10.77.0.2) ",
        "quorum.provider (str) = corosync_votequorum",
    ):
        assert line in tree.splitlines(), (line, tree)
    ours = cmanlk_tool(c, 3, "cmap", "list", "nodelist.")
    assert ours.returncode == 0 and ours.stdout == run(c, 3, "corosync-cmapctl", "nodelist.").stdout
    c.kill(3)
    c.wait_ring([1, 2])
    after = run(c, 1, "corosync-quorumtool", "-s")
    assert after.returncode == 0 and re.search(r"Nodes:\s+2\n", after.stdout), after.stdout
    assert (
        "runtime.members.3.status (str) = left" in run(c, 1, "corosync-cmapctl", "runtime.members.3").stdout
    )


def test_cmapctl_tracks_a_change_and_a_reload_reaches_every_node(ring: Cluster) -> None:
    c = ring
    log = c.workdir / "track.log"
    # corosync-cmapctl -T waits for "q" on its stdin: keep a pipe open to it while it tracks
    track = "sleep 60 | exec stdbuf -oL corosync-cmapctl -T runtime.test."
    tracker = c.lab.popen(1, ["sh", "-c", track], log)
    try:
        time.sleep(0.5)  # the tracker is connected and registered before the change
        run(c, 1, "corosync-cmapctl", "-s", "runtime.test.answer", "u32", "42", check=True)
        c.wait_until(lambda: "create> runtime.test.answer (u32) = 42" in log.read_text(), 10.0, "cmapctl -t")
        ours = cmanlk_tool(c, 1, "cmap", "track", "runtime.test.", "--count", "1", "--timeout", "10")
        assert ours.returncode == 0  # nothing changed within its timeout: returns quietly
        run(c, 1, "corosync-cmapctl", "-d", "runtime.test.answer", check=True)
        c.wait_until(lambda: "delete> runtime.test.answer (u32) = 42" in log.read_text(), 10.0, "a deletion")
    finally:
        tracker.terminate()
        tracker.wait(timeout=10)
    refused = run(c, 1, "corosync-cmapctl", "-s", "totem.cluster_name", "str", "other")
    assert refused.returncode != 0 and "CS_ERR_ACCESS" in refused.stderr
    # cmanlk-tool's cmap commands and corosync-cmapctl see each other's writes
    assert cmanlk_tool(c, 2, "cmap", "set", "runtime.test.mine", "str", "hello world").returncode == 0
    assert (
        run(c, 2, "corosync-cmapctl", "-g", "runtime.test.mine").stdout
        == "runtime.test.mine (str) = hello world\n"
    )
    code, body = h.tool_json(c.lab.ns(2), h.socket_path(c.run_dir(2)), "cmap", "get", "totem.token", "nope.x")
    assert code == 1 and body["keys"] == [{"key": "totem.token", "type": "u32", "value": 300}]
    assert body["missing"] == ["nope.x"]
    denied = cmanlk_tool(c, 2, "cmap", "set", "nodelist.node.0.nodeid", "u32", "9")
    assert denied.returncode == 1 and "CS_ERR_ACCESS" in denied.stderr
    assert cmanlk_tool(c, 2, "cmap", "delete", "runtime.test.mine").returncode == 0
    assert run(c, 2, "corosync-cmapctl", "-g", "runtime.test.mine").returncode != 0
    # the cluster-wide reload: node 2's file gets a new logging key, node 1 asks for the reload
    conf = c.conf_path(2)
    conf.write_text(conf.read_text().replace("  timestamp: hires\n", "  timestamp: hires\n  fileline: yes\n"))
    reload = cmanlk_tool(c, 1, "reload")
    assert reload.returncode == 0, reload.stdout + reload.stderr
    c.wait_until(lambda: "logging.fileline (str) = yes" in run(c, 2, "corosync-cmapctl", "logging.").stdout,
                 10.0, "node 2 reloaded")  # fmt: skip
    assert run(c, 3, "corosync-cfgtool", "-R").returncode == 0
    for n in (1, 2, 3):
        assert "configuration reload requested by node" in c.log_path(n).read_text()


def test_cpgtool_lists_groups_of_a_libcpg_client_and_of_a_cmanlk_client(ring: Cluster) -> None:
    c = ring
    holders = []
    try:
        for node, flavour, group in ((1, "libcpg", "viaLibcpg"), (2, "cmanlk", "viaCmanlk")):
            cmd = [sys.executable, "-m", "tests.system.cpg_holder", flavour, group,
                   "--socket", h.socket_path(c.run_dir(node))]  # fmt: skip
            log = c.workdir / f"holder{node}.log"
            proc = c.lab.popen(node, cmd, log, h.child_env(), pipes=True)
            holders.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line.startswith("joined"), (line, log.read_text())
        c.wait_until(
            lambda: all(g in run(c, 3, "corosync-cpgtool").stdout for g in ("viaLibcpg", "viaCmanlk")),
            10.0,
            "both groups listed",
        )
        out = run(c, 3, "corosync-cpgtool", check=True).stdout
        assert re.search(rf"viaLibcpg\n\s+{holders[0].pid}\s+1 \(10\.77\.0\.1\)", out), out
        assert re.search(rf"viaCmanlk\n\s+{holders[1].pid}\s+2 \(10\.77\.0\.2\)", out), out
    finally:
        for proc in holders:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
    c.wait_until(lambda: "viaLibcpg" not in run(c, 3, "corosync-cpgtool").stdout, 10.0, "the group is gone")
    daemon = c.pid(1)
    assert not list(Path("/dev/shm").glob(f"qb-{daemon}-*")), "libqb files left after the clients went"


def c_client(workdir: Path) -> Path:
    """tests/system/cpg_c_client.c built against Debian's libcpg-dev (skip when it cannot be)."""
    if shutil.which("gcc") is None or not Path("/usr/include/corosync/cpg.h").exists():
        pytest.skip("gcc and libcpg-dev are needed for the C client (scripts/setup.sh installs them)")
    binary = workdir / "cpg_c_client"
    source = Path(__file__).with_name("cpg_c_client.c")
    built = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source), "-lcpg"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return binary


def test_a_c_libcpg_client_and_cmanlk_clients_deliver_one_agreed_order(ring: Cluster) -> None:
    c = ring
    binary = c_client(c.workdir)
    outs: dict[int, Path] = {}
    for n in (1, 2, 3):
        outs[n] = c.workdir / f"cpg{n}.json"
        if n == 1:  # a C program linked with Debian's libcpg, talking libqb to cmanlkd
            cmd = [
                str(binary),
                "mixed",
                "1",
                str(MESSAGES_PER_CLIENT),
                "3",
                str(CLIENT_TIMEOUT_S),
                str(outs[n]),
            ]
        else:
            opts: dict[str, object] = {"group": "mixed", "me": n, "count": MESSAGES_PER_CLIENT, "members": 3,
                                       "timeout": CLIENT_TIMEOUT_S}  # fmt: skip
            cmd = h.client_command("cmanlk", outs[n], socket=h.socket_path(c.run_dir(n)), **opts)
        c.lab.popen(n, cmd, c.workdir / f"cpg{n}.log", h.child_env())
    results = h.wait_results(outs, CLIENT_TIMEOUT_S + 10)
    for n, r in results.items():
        assert r["error"] == "", f"client on node {n}: {r['error']}\n" + c.logs()
    seqs = {n: h.from_barrier(r["events"], 3) for n, r in results.items()}
    total = 3 * MESSAGES_PER_CLIENT
    for n, seq in seqs.items():
        assert len(h.deliveries(seq)) == total, f"node {n} delivered {len(h.deliveries(seq))} of {total}"
    first = min(r["first_send"] for r in results.values())
    took = max(r["done"] for r in results.values()) - first
    hashes = {n: h.digest(seq) for n, seq in seqs.items()}
    rate = f"{total} messages in {took:.2f} s = {total / took:.0f} msg/s"
    print(f"\nC libcpg client on cmanlkd + cmanlk clients: {rate}; {hashes}")
    assert seqs[1] == seqs[2] == seqs[3], hashes


def test_a_non_root_client_needs_a_uidgid_key(ring: Cluster) -> None:
    c = ring
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "corosync-cmapctl",
        "-g",
        "totem.token",
    ]
    refused = run(c, 2, *nobody)
    assert refused.returncode != 0 and "CS_ERR_ACCESS" in refused.stdout + refused.stderr, refused
    run(c, 2, "corosync-cmapctl", "-s", "uidgid.gid.65534", "u8", "1", check=True)  # as pacemakerd does
    allowed = run(c, 2, *nobody)
    assert allowed.returncode == 0 and "totem.token" in allowed.stdout, allowed
    assert "denied connection" in c.log_path(2).read_text()


def test_the_socket_channel_type_serves_the_same_tools_and_libcpg(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """`system { qb_ipc_type: socket }`: datagram channels instead of shared memory (docs/libqb.md)."""
    why = _missing()
    if why:
        pytest.skip(why)
    c = cluster_factory([1, 2, 3])
    for n in (1, 2, 3):
        conf = c.conf_path(n)
        conf.write_text(conf.read_text().replace("cmanlk {", "system {\n  qb_ipc_type: socket\n}\ncmanlk {"))
    c.start_all()
    c.wait_ring([1, 2, 3])
    for n in (1, 2, 3):
        c.wait_until(lambda n=n: served(c, n), 15.0, f"libqb IPC on node {n}")
    try:
        assert "libqb IPC: serving cmap, cfg, cpg, quorum, votequorum (socket)" in c.log_path(1).read_text()
        quorum = run(c, 2, "corosync-quorumtool", "-s")
        assert quorum.returncode == 0 and re.search(r"Nodes:\s+3\n", quorum.stdout), quorum.stdout
        outs: dict[int, Path] = {}
        for n in (1, 2, 3):
            outs[n] = c.workdir / f"sock{n}.json"
            cmd = h.client_command("libcpg", outs[n], group="dgram", me=n, count=300, members=3, timeout=60)
            c.lab.popen(n, cmd, c.workdir / f"sock{n}.log", h.child_env())
        results = h.wait_results(outs, 70)
        seqs = {n: h.from_barrier(r["events"], 3) for n, r in results.items()}
        assert all(not r["error"] for r in results.values()), results
        assert all(len(h.deliveries(s)) == 900 for s in seqs.values())
        assert seqs[1] == seqs[2] == seqs[3]
    finally:
        for n in (1, 2, 3):
            if c.alive(n):
                c.stop(n)


def _tracker(c: Cluster, node: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """tests/system/cfg_tracker.py on `node` (what pacemakerd does with cfg), tracking when this returns."""
    log = c.workdir / f"tracker{node}.log"
    proc = c.lab.popen(node, [sys.executable, "-m", "tests.system.cfg_tracker", *extra], log, h.child_env())
    c.wait_until(lambda: "tracking" in log.read_text() if log.exists() else False, 15.0, "the cfg tracker")
    return proc, log


def test_a_leave_stops_the_cfg_shutdown_trackers_first(ring: Cluster) -> None:
    """SIGTERM to cmanlkd with pacemakerd's way of tracking cfg: the tracker is told (TESTSHUTDOWN,
    "forced"), gets SIGTERM, and the node leaves only once it has gone (docs/libqb.md, "Leaving")."""
    c = ring
    tracker, log = _tracker(c, 3)
    c.signal(3, signal.SIGTERM)
    assert tracker.wait(timeout=20) == 0, log.read_text()
    assert c.procs[3].wait(timeout=20) == 0, c.logs()
    c.wait_ring([1, 2])
    said = log.read_text().splitlines()
    # TESTSHUTDOWN "forced" (REGARDLESS) and SIGTERM, in either order (the event is dispatched when
    # the tracker next polls); the reply's answer is not the library's return (libcfg's is the IPC's)
    assert sorted(said[1:]) == ["reply 1", "shutdown 1", "sigterm"], said
    text = c.log_path(3).read_text()
    stopping = text.index(f"leaving: stopping pid {tracker.pid}")
    stopped = text.index("leaving: the cfg shutdown trackers have stopped")
    assert stopping < stopped < text.index("leaving the cluster"), text[stopping:]


def test_a_second_stop_signal_leaves_without_waiting_for_the_trackers(ring: Cluster) -> None:
    c = ring
    tracker, log = _tracker(c, 3, "--ignore-term")
    c.signal(3, signal.SIGTERM)
    c.wait_until(lambda: "sigterm" in log.read_text(), 15.0, "the tracker's SIGTERM")
    time.sleep(1.0)
    assert c.alive(3) and c.members(1) == [1, 2, 3], "the node left while its tracker still ran"
    c.signal(3, signal.SIGTERM)
    assert c.procs[3].wait(timeout=20) == 0, c.logs()
    c.wait_ring([1, 2])
    assert tracker.wait(timeout=20) == 1 and "lost" in log.read_text(), log.read_text()
