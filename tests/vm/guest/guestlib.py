"""Shared pieces of the guest scripts: a node that carries out dlmctl's actions with the real
adapters, process-group stand-ins (until cmanlkd's cpg runs in the VMs) and libdlm via ctypes.

Group stand-ins deliver what cpg would, in one total order for every node:
- `LoopbackBus`: a single node; its joins and messages come straight back.
- `FileBus`: several VMs share the scenario folder /lab (9p, backed by one host directory).
  Every group event (join, leave, message) is one file /lab/bus/<seq>, claimed with O_EXCL,
  so there is exactly one event per sequence number; every node replays the files in
  sequence order, so all see the same confchgs and messages in the same order (the virtual
  synchrony dlmctl relies on).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cmanlk.dlmctl import (
    CPG_REASON_LEAVE,
    CPG_REASON_NODEDOWN,
    ConfigfsMkdir,
    ConfigfsRmdir,
    ConfigfsWrite,
    DlmAction,
    DlmCtl,
    DlmEvent,
    GroupConfchg,
    GroupMessage,
    JoinGroup,
    LeaveGroup,
    SendGroupMessage,
    SysfsWrite,
)
from cmanlk.fencing import RunFenceAgent
from cmanlk.types import Instant, NodeId
from kernel_glue.configfs import ConfigfsDlm, carry_out
from kernel_glue.sysfs import SysfsDlm

BUS_POLL_S = 0.05
MAX_BUS_EVENTS = 10_000
LKF_NOQUEUE = 1
MODE_EX = 5


def now() -> Instant:
    return Instant(time.monotonic_ns())


def log(tag: str, msg: str) -> None:
    print(f"[{time.monotonic():9.3f} {tag}] {msg}", flush=True)


def eth0_address(family: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Return eth0's global IPv4 (or IPv6) address; 127.0.0.1 / ::1 in a VM without one."""
    out = subprocess.run(["ip", f"-{family}", "-o", "addr", "show", "dev", "eth0", "scope", "global"],
                         capture_output=True, text=True, check=False).stdout.split()
    key = "inet" if family == 4 else "inet6"
    if key not in out:
        return ipaddress.ip_address("127.0.0.1" if family == 4 else "::1")
    return ipaddress.ip_interface(out[out.index(key) + 1]).ip


def wait_for_control_device() -> None:
    """libdlm opens /dev/misc/dlm-control, a link udevd makes shortly after the module loads."""
    for _ in range(50):
        if Path("/dev/misc/dlm-control").exists():
            return
        time.sleep(0.1)


class Node:
    """Carries out dlmctl's actions with the real adapters; group actions go to `bus`."""

    def __init__(self, core: DlmCtl, bus: LoopbackBus | FileBus, protocol_file: Path) -> None:
        self.core = core
        self.bus = bus
        self.ctl = ConfigfsDlm()
        self.sysfs = SysfsDlm()
        self.done: list[tuple[object, ...]] = []
        self.protocol = protocol_file.open("w")
        self.run_fence_agent: Callable[[RunFenceAgent], None] | None = None
        """Where RunFenceAgent actions go (a cmanlk.runtime.fence.FenceRunner's carry_out)."""

    def feed(self, ev: DlmEvent) -> None:
        """Hand `ev` to the core and carry out its actions (and the events they cause) in order."""
        pending: list[DlmEvent] = [ev]
        while pending:
            for a in self.core.handle(pending.pop(0)):
                pending += self.carry_out(a)

    def carry_out(self, a: DlmAction) -> list[DlmEvent]:
        self.protocol.write(f"{time.monotonic():.6f} {a!r}\n")
        self.protocol.flush()
        match a:
            case ConfigfsMkdir() | ConfigfsRmdir() | ConfigfsWrite() | SysfsWrite():
                carry_out(a, self.ctl, self.sysfs)
                self.done.append(_as_op(a))
            case JoinGroup() | LeaveGroup() | SendGroupMessage():
                return self.bus.send(a)
            case RunFenceAgent():
                if self.run_fence_agent is None:
                    raise RuntimeError(f"no fence runner for {a}")
                self.run_fence_agent(a)
        return []


def _as_op(a: DlmAction) -> tuple[object, ...]:
    """The action as a comparable tuple (addresses left out: they differ per run)."""
    match a:
        case ConfigfsMkdir(path):
            return ("mkdir", path)
        case ConfigfsRmdir(path):
            return ("rmdir", path)
        case ConfigfsWrite(path, value):
            return ("write", path, None if path.endswith("/addr") else value)
        case SysfsWrite(ls, attr, value):
            return ("sysfs", ls, attr, value)
    return (repr(a),)


class LoopbackBus:
    """One node alone: a join yields our own confchg, a message comes back to us."""

    def __init__(self, me: NodeId) -> None:
        self.me = me

    def send(self, a: DlmAction) -> list[DlmEvent]:
        match a:
            case JoinGroup(group):
                return [GroupConfchg(now(), group, (self.me,), (self.me,), ())]
            case SendGroupMessage(group, payload):
                return [GroupMessage(now(), group, self.me, payload)]
        return []


class FileBus:
    """Totally ordered group events through exclusive-create files in a shared folder."""

    def __init__(self, folder: Path, me: NodeId) -> None:
        self.folder = folder
        self.me = me
        folder.mkdir(parents=True, exist_ok=True)
        self.next_read = 1
        self.members: dict[str, list[NodeId]] = {}

    def send(self, a: DlmAction) -> list[DlmEvent]:
        match a:
            case JoinGroup(group):
                self._append({"t": "join", "g": group, "n": self.me})
            case LeaveGroup(group):
                self._append({"t": "leave", "g": group, "n": self.me})
            case SendGroupMessage(group, payload):
                self._append({"t": "msg", "g": group, "n": self.me, "p": payload.hex()})
        return []  # everything, our own events too, comes back through poll() in bus order

    def report_down(self, group: str, node: NodeId) -> None:
        """Play cpg's failure detection: `node` died (NODEDOWN) for every member of `group`."""
        self._append({"t": "down", "g": group, "n": node})

    def _append(self, record: dict[str, object]) -> None:
        data = json.dumps(record).encode()
        for seq in range(1, MAX_BUS_EVENTS):
            try:
                fd = os.open(self.folder / f"{seq:06d}.tmp{self.me}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.write(fd, data)
                os.close(fd)
                os.link(self.folder / f"{seq:06d}.tmp{self.me}", self.folder / f"{seq:06d}")
                os.unlink(self.folder / f"{seq:06d}.tmp{self.me}")
                return
            except FileExistsError:
                os.unlink(self.folder / f"{seq:06d}.tmp{self.me}")
                continue
        raise OSError(errno.ENOSPC, "group bus full")

    def poll(self) -> list[DlmEvent]:
        """Return the events of the records that appeared since the last poll, in bus order."""
        out: list[DlmEvent] = []
        while True:
            path = self.folder / f"{self.next_read:06d}"
            try:
                rec = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):
                return out
            self.next_read += 1
            out += self._deliver(rec)

    def _deliver(self, rec: dict[str, object]) -> list[DlmEvent]:
        group = str(rec["g"])
        node = NodeId(int(rec["n"]))  # type: ignore[call-overload]
        members = self.members.setdefault(group, [])
        if rec["t"] == "join" and node not in members:
            members.append(node)
            if self.me in members:
                return [GroupConfchg(now(), group, tuple(sorted(members)), (node,), ())]
        elif rec["t"] in ("leave", "down") and node in members:
            members.remove(node)
            reason = CPG_REASON_LEAVE if rec["t"] == "leave" else CPG_REASON_NODEDOWN
            if self.me in members:
                return [GroupConfchg(now(), group, tuple(sorted(members)), (), ((node, reason),))]
        elif rec["t"] == "msg" and self.me in members and node in members:
            return [GroupMessage(now(), group, node, bytes.fromhex(str(rec["p"])))]
        return []


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 0.1 s; raise TimeoutError naming `what` after `timeout_s`."""
    for _ in range(max(1, int(timeout_s * 10))):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def run_bus(node: Node, bus: FileBus, stop: asyncio.Event) -> None:
    """Feed the bus's events to `node` until `stop` is set."""
    while not stop.is_set():
        for ev in bus.poll():
            node.feed(ev)
        await asyncio.sleep(BUS_POLL_S)


class Lksb(ctypes.Structure):
    _fields_ = [("sb_status", ctypes.c_int), ("sb_lkid", ctypes.c_uint32), ("sb_flags", ctypes.c_char),
                ("sb_lvbptr", ctypes.c_char_p)]


class Libdlm:
    """The few libdlm calls the scenarios use (blocking; call them from a thread)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libdlm.so.3", use_errno=True)
        lib.dlm_open_lockspace.restype = ctypes.c_void_p
        lib.dlm_open_lockspace.argtypes = [ctypes.c_char_p]
        lib.dlm_ls_pthread_init.argtypes = [ctypes.c_void_p]
        lib.dlm_close_lockspace.argtypes = [ctypes.c_void_p]
        lib.dlm_ls_lock_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(Lksb),
                                         ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint32,
                                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.dlm_ls_unlock_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                           ctypes.POINTER(Lksb)]
        self.lib = lib
        self.handles: dict[str, int] = {}

    def _ls(self, name: str) -> int:
        if name not in self.handles:
            ls = self.lib.dlm_open_lockspace(name.encode())
            if not ls:
                raise OSError(ctypes.get_errno(), f"dlm_open_lockspace {name}")
            self.lib.dlm_ls_pthread_init(ls)
            self.handles[name] = ls
        return self.handles[name]

    def try_lock(self, lockspace: str, resource: bytes, mode: int = MODE_EX) -> tuple[int, int]:
        """Request `mode` with LKF_NOQUEUE; return (sb_status, lkid): 0 granted, 11 EAGAIN refused."""
        lksb = Lksb()
        rc = self.lib.dlm_ls_lock_wait(self._ls(lockspace), mode, ctypes.byref(lksb), LKF_NOQUEUE,
                                       resource, len(resource), 0, None, None, None)
        if rc != 0 and lksb.sb_status == 0:
            return -ctypes.get_errno(), 0
        return lksb.sb_status, lksb.sb_lkid

    def unlock(self, lockspace: str, lkid: int) -> int:
        """Release lock `lkid`; return sb_status (65538 = EUNLOCK is success)."""
        lksb = Lksb()
        self.lib.dlm_ls_unlock_wait(self._ls(lockspace), lkid, 0, ctypes.byref(lksb))
        return lksb.sb_status

    def close(self) -> None:
        for ls in self.handles.values():
            self.lib.dlm_close_lockspace(ls)
        self.handles.clear()


LAB = Path("/lab")
BARRIER_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 60.0


class Checks:
    """Named checks and /lab barriers of one node of a multi-VM scenario."""

    def __init__(self, me: NodeId, nodes: int = 2) -> None:
        self.me = me
        self.nodes = nodes
        self.tag = f"node{me}"
        self.failures: list[str] = []

    def say(self, msg: str) -> None:
        log(self.tag, msg)

    def check(self, ok: bool, what: str) -> None:
        self.say(("ok: " if ok else "FAIL: ") + what)
        if not ok:
            self.failures.append(what)

    async def barrier(self, name: str) -> None:
        """Wait until every node reached barrier `name` (files /lab/bar.<name>.<node>)."""
        (LAB / f"bar.{name}.{self.me}").touch()
        await wait_until(lambda: len(list(LAB.glob(f"bar.{name}.*"))) >= self.nodes, BARRIER_TIMEOUT_S,
                         f"barrier {name}")
        self.say(f"barrier {name} passed")


async def answer_uevents(node: Node, watch: object, seen: list[object] | None = None) -> None:
    """Feed every lockspace online/offline uevent to `node` (and record all DLM/gfs2 events in `seen`)."""
    from cmanlk.dlmctl import LockspaceOffline, LockspaceOnline, LockspaceRemoved
    from kernel_glue.dlm_protocol import LockspaceUevent

    async for ev in watch.events():  # type: ignore[attr-defined]
        if seen is not None:
            seen.append(ev)
        log(f"node{node.core.me}", f"uevent {ev}")
        if isinstance(ev, LockspaceUevent):
            if ev.action == "online":
                node.feed(LockspaceOnline(now(), ev.lockspace))
            elif ev.action == "offline":
                node.feed(LockspaceOffline(now(), ev.lockspace))
            elif ev.action == "remove":
                node.feed(LockspaceRemoved(now(), ev.lockspace))


async def run_command(c: Checks, *argv: str) -> int:
    """Run a command (dlm_tool, mount, ...) with the step time limit; log its output; return its status."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        out, _ = await proc.communicate()
    c.say(f"{' '.join(argv)} -> {proc.returncode}: {out.decode(errors='replace').strip()[-300:]}")
    return proc.returncode if proc.returncode is not None else -1
