"""The real-kernel scenarios: which VMs boot, what each runs, the time limit.

Guest scripts live in tests/vm/guest/ and see the checkout at its own path, the scenario
folder at /lab (shared by all VMs of a run) and their own /out (exit-code, results).
Add a scenario here and it runs from scripts/vm-tests.sh and `pytest -m vm` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.vm.harness import REPO_ROOT, VmSpec

GUEST = REPO_ROOT / "tests" / "vm" / "guest"


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    vms: tuple[VmSpec, ...]
    timeout_s: float
    shared_disk_mb: int = 0
    """A shared disk for all VMs (GFS2), 0 for none."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "adapter-conformance",
            "tests/adapters DLM conformance suite against the real kernel (configfs, sysfs, uevents, kmod)",
            (VmSpec("cmkvm1", str(GUEST / "adapter_conformance.sh")),),
            timeout_s=240.0,
        ),
        Scenario(
            "lockspace-join",
            "dlm_tool join/leave answered by cmanlk.dlm.control + kernel_glue on one node (no dlm_controld)",
            (VmSpec("cmkvm1", str(GUEST / "lockspace_join.py"), node=1),),
            timeout_s=240.0,
        ),
        Scenario(
            "two-node-lockspace",
            "2 VMs: dlmctl configures both kernels, lockspace join/leave, EX conflict across nodes",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "two_node.py"), (str(n),), node=n) for n in (1, 2)),
            timeout_s=300.0,
        ),
        Scenario(
            "two-node-ipv6",
            "cmanlkd-dlm over IPv6: the ring on the ULAs, comms/N/addr as sockaddr_in6, EX conflict "
            "across nodes",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "cmanlkd_dlm.py"), (str(n), "ipv6"), node=n)
                  for n in (1, 2)),
            timeout_s=300.0,
        ),
        Scenario(
            "crash-fencing",
            "2 VMs run cmanlkd, GFS2 mounted on both: node 2 hard-resets holding a lock; node 1 fences "
            "it with the configured agent (fails once, retried), recovers; lock and filesystem work again",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "crash_fencing.py"), (str(n),), node=n) for n in (1, 2)),
            timeout_s=300.0,
            shared_disk_mb=256,
        ),
        Scenario(
            "crash-fencing-ipv6",
            "crash-fencing over IPv6: ring, DLM comms (sockaddr_in6) and the fence agent's address on the "
            "ULAs; GFS2 recovers after the hard reset",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "crash_fencing.py"), (str(n), "ipv6"), node=n)
                  for n in (1, 2)),
            timeout_s=300.0,
            shared_disk_mb=256,
        ),
        Scenario(
            "three-node-crash",
            "3 VMs run cmanlkd: joins one by one; node 3 hard-resets holding a lock; the survivors wait for "
            "`cmanlk-tool fence-ack 3` (no fence device), then recover and the lock is free",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "three_node_crash.py"), (str(n),), node=n)
                  for n in (1, 2, 3)),
            timeout_s=300.0,
        ),
        Scenario(
            "gfs2-two-node",
            "2 VMs run cmanlkd, one shared disk: GFS2 (lock_dlm, cmk:gfs0) mounted on both, a file "
            "written on one is read on the other",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "gfs2_two_node.py"), (str(n),), node=n) for n in (1, 2)),
            timeout_s=300.0,
            shared_disk_mb=256,
        ),
        Scenario(
            "cmanlkd-dlm",
            "2 VMs run the real cmanlkd (udpu) instead of corosync + dlm_controld: its DLM companion "
            "answers dlm_tool join on both; EX conflict across nodes; SIGTERM removes the configfs cluster",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "cmanlkd_dlm.py"), (str(n),), node=n) for n in (1, 2)),
            timeout_s=300.0,
        ),
        Scenario(
            "dlm-controld",
            "2 VMs run cmanlkd (dlm: no) and Debian's dlm_controld on its libqb IPC: dlm_controld "
            "configures both kernels, dlm_tool join on both, EX conflict across nodes, clean stops",
            tuple(VmSpec(f"cmkvm{n}", str(GUEST / "dlm_controld_on_cmanlkd.py"), (str(n),), node=n)
                  for n in (1, 2)),
            timeout_s=600.0,  # two daemons' imports under TCG: 100 s and more when the host is loaded
        ),
    )
}
