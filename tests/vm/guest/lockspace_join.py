#!/usr/bin/env python3
"""Guest side of scenario "lockspace-join": cmanlk.dlmctl + kernel_glue answer `dlm_tool join`.

No corosync, no dlm_controld: one node, ourselves. The kernel DLM is loaded and configfs mounted
by kernel_glue.kmod, the cluster is configured from dlmctl's actions, the lockspace's process
group is a local loopback (a single member gets its own confchg and start message back, as cpg
would deliver them), and uevents come from kernel_glue.uevents. Checks: `dlm_tool join lab1`
succeeds, the kernel shows the global id, a lock can be taken through libdlm, `dlm_tool leave`
succeeds, and at the end nothing is left in configfs or sysfs. The kernel protocol carried out
is written to /out/protocol.txt and compared with the operations dlm_controld does.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cmanlk.dlmctl import (
    ClusterChanged,
    ConfigfsMkdir,
    ConfigfsRmdir,
    ConfigfsWrite,
    DlmAction,
    DlmCtl,
    DlmEvent,
    DlmSettings,
    GroupConfchg,
    GroupMessage,
    JoinGroup,
    LockspaceOffline,
    LockspaceOnline,
    SendGroupMessage,
    ShutdownRequested,
    SysfsWrite,
)
from cmanlk.fencing import FencingPolicy
from cmanlk.types import Instant, NodeId
from kernel_glue.configfs import ConfigfsDlm, clear_stale
from kernel_glue.dlm_protocol import LockspaceUevent
from kernel_glue.kmod import ensure_dlm_kernel
from kernel_glue.sysfs import SysfsDlm
from kernel_glue.uevents import DlmUeventWatch

ME = NodeId(1)
LS = "lab1"
STEP_TIMEOUT_S = 60.0
OUT = Path("/out")

EXPECTED = [
    ("mkdir", "cluster"), ("write", "cluster/mark", b"0"), ("write", "cluster/recover_callbacks", b"1"),
    ("write", "cluster/cluster_name", b"cmk"), ("mkdir", "cluster/comms/1"),
    ("write", "cluster/comms/1/nodeid", b"1"), ("write", "cluster/comms/1/addr", None),
    ("write", "cluster/comms/1/mark", b"0"), ("write", "cluster/comms/1/local", b"1"),
    ("sysfs", "lab1", "id", b"943331636\0"), ("mkdir", "cluster/spaces/lab1"),
    ("mkdir", "cluster/spaces/lab1/nodes/1"), ("write", "cluster/spaces/lab1/nodes/1/nodeid", b"1"),
    ("write", "cluster/spaces/lab1/nodes/1/weight", b"1"), ("sysfs", "lab1", "control", b"1\0"),
    ("sysfs", "lab1", "event_done", b"0\0"),
    ("sysfs", "lab1", "control", b"0\0"), ("rmdir", "cluster/spaces/lab1/nodes/1"),
    ("rmdir", "cluster/spaces/lab1"), ("sysfs", "lab1", "event_done", b"0\0"),
    ("rmdir", "cluster/comms/1"), ("rmdir", "cluster"),
]


def log(msg: str) -> None:
    print(f"[{time.monotonic():9.3f} lockspace-join] {msg}", flush=True)


def now() -> Instant:
    return Instant(time.monotonic_ns())


class Node:
    """Carries out dlmctl's actions with the real adapters; loops the group back to ourselves."""

    def __init__(self) -> None:
        self.core = DlmCtl(DlmSettings("cmk", ME, fencing=FencingPolicy(enabled=False)))
        self.ctl = ConfigfsDlm()
        self.sysfs = SysfsDlm()
        self.done: list[tuple[object, ...]] = []
        self.protocol = (OUT / "protocol.txt").open("w")

    def feed(self, ev: DlmEvent) -> None:
        pending: list[DlmEvent] = [ev]
        while pending:
            for a in self.core.handle(pending.pop(0)):
                pending += self.carry_out(a)

    def carry_out(self, a: DlmAction) -> list[DlmEvent]:
        self.protocol.write(f"{time.monotonic():.6f} {a!r}\n")
        self.protocol.flush()
        match a:
            case ConfigfsMkdir(path):
                self.ctl.mkdir(path)
                self.done.append(("mkdir", path))
            case ConfigfsRmdir(path):
                self.ctl.rmdir(path)
                self.done.append(("rmdir", path))
            case ConfigfsWrite(path, value):
                self.ctl.write(path, value)
                self.done.append(("write", path, None if path.endswith("/addr") else value))
            case SysfsWrite(ls, attr, value):
                self.sysfs.write(ls, attr, value)
                self.done.append(("sysfs", ls, attr, value))
            case JoinGroup(group):
                return [GroupConfchg(now(), group, (ME,), (ME,), ())]
            case SendGroupMessage(group, payload):
                return [GroupMessage(now(), group, ME, payload)]
        return []


def eth0_address() -> ipaddress.IPv4Address:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True,
                         check=False).stdout.split()
    return ipaddress.IPv4Interface(out[out.index("inet") + 1]).ip if "inet" in out else \
        ipaddress.IPv4Address("127.0.0.1")


def take_lock() -> int:
    """Take and release an EX lock in lab1 through libdlm; return the lock status (0 = granted)."""

    class Lksb(ctypes.Structure):
        _fields_ = [("sb_status", ctypes.c_int), ("sb_lkid", ctypes.c_uint32), ("sb_flags", ctypes.c_char),
                    ("sb_lvbptr", ctypes.c_char_p)]

    lib = ctypes.CDLL("libdlm.so.3", use_errno=True)
    lib.dlm_open_lockspace.restype = ctypes.c_void_p
    lib.dlm_open_lockspace.argtypes = [ctypes.c_char_p]
    lib.dlm_ls_pthread_init.argtypes = [ctypes.c_void_p]
    lib.dlm_close_lockspace.argtypes = [ctypes.c_void_p]
    lib.dlm_ls_lock_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(Lksb), ctypes.c_uint32,
                                     ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint32, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p]
    lib.dlm_ls_unlock_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                       ctypes.POINTER(Lksb)]
    ls = lib.dlm_open_lockspace(LS.encode())
    if not ls:
        return -ctypes.get_errno()
    try:
        lib.dlm_ls_pthread_init(ls)
        lksb = Lksb()
        # mode 5 = EX, flags 1 = LKF_NOQUEUE
        rc = lib.dlm_ls_lock_wait(ls, 5, ctypes.byref(lksb), 1, b"res1", 4, 0, None, None, None)
        if rc != 0:
            return -ctypes.get_errno()
        status = lksb.sb_status
        lib.dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, ctypes.byref(lksb))
        return status
    finally:
        lib.dlm_close_lockspace(ls)


def wait_for_control_device() -> None:
    """libdlm opens /dev/misc/dlm-control, a link udevd makes shortly after the module loads."""
    for _ in range(50):
        if Path("/dev/misc/dlm-control").exists():
            return
        time.sleep(0.1)


async def run_tool(node: Node, events: object, *args: str, expect: str) -> int:
    """Run dlm_tool, answering the uevent `expect` through the core while it waits."""
    proc = await asyncio.create_subprocess_exec("dlm_tool", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        async for ev in events:  # type: ignore[attr-defined]
            if isinstance(ev, LockspaceUevent) and ev.lockspace == LS:
                log(f"uevent {ev.action}@{ev.lockspace}")
                if ev.action == "online":
                    node.feed(LockspaceOnline(now(), LS))
                elif ev.action == "offline":
                    node.feed(LockspaceOffline(now(), LS))
                if ev.action == expect:
                    break
        out, _ = await proc.communicate()
    log(f"dlm_tool {' '.join(args)} -> {proc.returncode}: {out.decode(errors='replace').strip()}")
    return proc.returncode if proc.returncode is not None else -1


async def main() -> int:
    log(f"dlm configfs root: {ensure_dlm_kernel()}")
    wait_for_control_device()
    node = Node()
    log(f"stale state removed: {clear_stale(node.ctl)}")
    node.feed(ClusterChanged(now(), (ME,), True, ((ME, (eth0_address(),)),)))
    watch = DlmUeventWatch()
    await watch.start()
    events = watch.events()
    failures: list[str] = []
    try:
        t0 = time.monotonic()
        if await run_tool(node, events, "join", LS, expect="online") != 0:
            failures.append("dlm_tool join failed")
        log(f"join took {time.monotonic() - t0:.2f}s; /sys/kernel/dlm: {node.sysfs.lockspaces()}")
        if node.sysfs.read(LS, "id") != b"943331636\n":
            failures.append(f"id {node.sysfs.read(LS, 'id')!r}")
        status = await asyncio.to_thread(take_lock)
        log(f"EX lock on res1: status {status}")
        if status != 0:
            failures.append(f"lock status {status}")
        if await run_tool(node, events, "leave", LS, expect="offline") != 0:
            failures.append("dlm_tool leave failed")
        for _ in range(50):
            if not node.sysfs.lockspaces():
                break
            await asyncio.sleep(0.1)
        node.feed(ShutdownRequested(now()))
    finally:
        await watch.close()
    if node.sysfs.lockspaces() or node.ctl.listdir(""):
        failures.append(f"left over: sysfs {node.sysfs.lockspaces()} configfs {node.ctl.listdir('')}")
    if node.done != EXPECTED:
        failures.append("kernel protocol differs from dlm_controld's:\n  "
                        + "\n  ".join(repr(x) for x in node.done))
    for f in failures:
        log(f"FAIL: {f}")
    log("PASS" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
