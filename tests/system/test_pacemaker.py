"""Debian's pacemaker 2.1, unmodified, on a three-node cmanlkd cluster (libqb IPC; docs/libqb.md).

Each node is a network namespace (tests/system/netns.py) with cmanlkd in it, and pacemakerd runs
there in its own mount and UTS namespaces (tests/system/pcmkhelpers.py): its host name is the
node's name (n1, n2, n3, as the nodelist says) and /var/lib/pacemaker, /var/log/pacemaker and /run
are the node's own directories under the test's workdir, bound over the host's. Nothing on the host
changes.

The CIB every node starts with (written before pacemakerd starts) turns fencing off
(stonith-enabled=false: no fence device here), shortens dc-deadtime, and holds one
ocf:pacemaker:Dummy resource with a 2 s monitor.

1. All three nodes are Online, the partition has quorum, the resource is Started on one node;
   the cluster layer crm_mon reports is corosync (pacemaker read it over cmap and cpg).
2. kill -9 of that node's cmanlkd (pacemaker on it is left alone): the two others see the node
   lost, and the resource is started on one of them; the time is printed.
3. `cmanlk-tool leave` on the resource's node (what SIGTERM does too): cmanlkd stops pacemakerd
   first (docs/libqb.md, "Leaving"); the resource moves away before the node leaves, the
   peers record a clean shutdown (its CIB "is requesting to shut down"; the designated
   controller's "do_shutdown of peer nN is complete" when that is another node), nothing is
   unclean or fenced, the node is OFFLINE, and cmanlkd and pacemakerd both exit 0.

Skipped without pacemaker (scripts/setup.sh installs pacemaker and pacemaker-cli-utils) or
unshare. Bounded: every command has a timeout, every wait a deadline; what pacemaker started goes
with the namespaces. Each test takes about a minute (pacemaker's start on a loaded machine).
"""

from __future__ import annotations

import functools
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system import cpghelpers as h
from tests.system import pcmkhelpers
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

NODES = (1, 2, 3)
ONLINE_TIMEOUT_S = 150.0
MOVE_TIMEOUT_S = 90.0
TOOL_TIMEOUT_S = 20.0
STARTED = re.compile(r"dummy\s+\(ocf:pacemaker:Dummy\):\s+Started (n\d)")

CIB = pcmkhelpers.cib(("dummy",), "2s")


@dataclass
class Pacemaker:
    c: Cluster
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def base(self, node: int) -> Path:
        return self.c.workdir / f"pm{node}"

    def start(self, node: int) -> None:
        base = self.base(node)
        pcmkhelpers.prepare(base, CIB)
        cmd = pcmkhelpers.command(base, node)
        self.procs[node] = self.c.lab.popen(node, cmd, self.c.workdir / f"pacemakerd{node}.out")

    def log(self, node: int) -> str:
        try:
            return (self.base(node) / "log/pacemaker.log").read_text(errors="replace")
        except OSError:
            return ""

    def mon(self, node: int) -> str:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.c.lab.ns(node), "crm_mon", "-1", "-r"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
        )
        return proc.stdout

    def wait(
        self, node: int, predicate: Callable[[str], bool], timeout_s: float, what: str
    ) -> tuple[str, float]:
        """Poll crm_mon on `node` until `predicate(output)`; return the output and the seconds taken."""
        start = time.monotonic()
        out = ""
        while time.monotonic() - start < timeout_s:
            out = self.mon(node)
            if predicate(out):
                return out, time.monotonic() - start
            time.sleep(0.25)
        pytest.fail(
            f"timed out after {timeout_s} s waiting for {what}\ncrm_mon on n{node}:\n{out}\n" + self.c.logs()
        )

    def started_on(self, node: int) -> int:
        out, _ = self.wait(node, lambda o: STARTED.search(o) is not None, ONLINE_TIMEOUT_S, "dummy started")
        m = STARTED.search(out)
        assert m is not None
        return int(m.group(1)[1:])


@pytest.fixture
def pcmk(cluster_factory: Callable[..., Cluster]) -> Iterator[Pacemaker]:
    why = pcmkhelpers.missing()
    if why:
        pytest.skip(why)
    c = cluster_factory(list(NODES))
    c.start_all()
    c.wait_ring(list(NODES), timeout_s=40.0)  # the machine may be loaded
    for n in NODES:
        c.wait_until(functools.partial(_served, c, n), 30.0, f"libqb IPC on node {n}")
    before = {p.name for p in Path("/dev/shm").glob("qb-*")}
    pm = Pacemaker(c)
    for n in NODES:
        pm.start(n)
    ours: set[str] = set()
    try:
        yield pm
    finally:
        for n in NODES:  # pacemaker's processes, which the namespaces' end kills too
            ours.update(
                subprocess.run(
                    ["ip", "netns", "pids", c.lab.ns(n)], capture_output=True, text=True, timeout=10
                ).stdout.split()
            )
        for n in NODES:
            if c.alive(n):
                c.kill(n)
        pcmkhelpers.clean_shm(before, ours | {str(c.pid(n)) for n in NODES})


def _served(c: Cluster, node: int) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", c.lab.ns(node), "corosync-cmapctl", "-g", "totem.cluster_name"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    return proc.returncode == 0


def _all_online(out: str) -> bool:
    return (
        "Online: [ n1 n2 n3 ]" in out and "partition with quorum" in out and STARTED.search(out) is not None
    )


def test_pacemaker_runs_a_resource_and_moves_it_when_cmanlkd_dies(pcmk: Pacemaker) -> None:
    pm, c = pcmk, pcmk.c
    out, took = pm.wait(1, _all_online, ONLINE_TIMEOUT_S, "three nodes online with quorum and dummy started")
    print(f"\npacemaker on cmanlkd: 3 nodes online, quorate, dummy started {took:.1f} s after the first poll")
    assert "Cluster Summary" in out and "Stack: corosync" in out, out
    victim = pm.started_on(1)
    survivor = next(n for n in NODES if n != victim)
    t0 = time.monotonic()
    c.kill(victim)  # cmanlkd only; pacemaker on that node loses its cluster layer
    c.wait_ring([n for n in NODES if n != victim])

    def moved(o: str) -> bool:
        m = STARTED.search(o)
        return m is not None and m.group(1) != f"n{victim}" and "partition with quorum" in o

    out, _ = pm.wait(survivor, moved, MOVE_TIMEOUT_S, f"dummy away from n{victim}")
    print(f"kill -9 of cmanlkd on n{victim}: dummy started elsewhere after {time.monotonic() - t0:.2f} s")
    assert f"OFFLINE: [ n{victim} ]" in out or f"n{victim}: UNCLEAN" in out, out


def test_a_leave_stops_pacemaker_first_and_its_peers_see_a_clean_shutdown(pcmk: Pacemaker) -> None:
    pm, c = pcmk, pcmk.c
    out = pm.wait(1, _all_online, ONLINE_TIMEOUT_S, "three nodes online with quorum and dummy started")[0]
    victim = pm.started_on(1)
    dc = re.search(r"Current DC: n(\d)", out)
    was_dc = dc is not None and int(dc.group(1)) == victim
    peers = [n for n in NODES if n != victim]
    t0 = time.monotonic()
    left = h.tool(c.lab.ns(victim), h.socket_path(c.run_dir(victim)), "leave")
    assert left.returncode == 0, left.stdout + left.stderr
    assert pm.procs[victim].wait(timeout=120) == 0, pm.log(victim)[-3000:]
    assert c.procs[victim].wait(timeout=30) == 0, c.logs()
    took = time.monotonic() - t0
    c.wait_ring(peers)

    def clean(o: str) -> bool:
        m = STARTED.search(o)
        return m is not None and m.group(1) != f"n{victim}" and f"OFFLINE: [ n{victim} ]" in o

    out, _ = pm.wait(peers[0], clean, MOVE_TIMEOUT_S, f"dummy away from n{victim}, n{victim} offline")
    role = "the DC, " if was_dc else ""
    what = f"cmanlk-tool leave on n{victim} ({role}running dummy)"
    print(f"\n{what}: pacemaker stopped and the node left in {took:.2f} s")
    assert "UNCLEAN" not in out, out
    # pacemakerd heard cfg's shutdown ("forced") and SIGTERM, and stopped its daemons in order
    pm_log = pm.log(victim)
    assert "Corosync wants to shut down: forced" in pm_log and "Caught 'Terminated' signal" in pm_log
    # its peers: the node's CIB asked to shut down (a clean stop); nothing unclean, nothing to fence
    for n in peers:
        assert f"Peer n{victim} is requesting to shut down" in pm.log(n), pm.log(n)[-3000:]
        assert not re.search(rf"n{victim}\b.*(unclean|fenc)", pm.log(n), re.I), pm.log(n)[-3000:]
    if not was_dc:  # the designated controller ran the shutdown (it is its own when it leaves)
        c.wait_until(lambda: any(f"do_shutdown of peer n{victim} is complete" in pm.log(n) for n in peers),
                     15.0, "the controller's do_shutdown")  # fmt: skip
    text = c.log_path(victim).read_text()
    assert "which tracks cfg shutdown, first" in text and "the cfg shutdown trackers have stopped" in text
    assert text.index("the cfg shutdown trackers have stopped") < text.index("leaving the cluster")
