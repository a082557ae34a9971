"""Shared pieces of the guest scripts.

- The real cmanlkd in a VM (`Cmanlkd`, `corosync_conf`): started from the shared checkout,
  `cmanlk-tool` and the `dlm` IPC call, SIGTERM and its clean-up checks, and the configfs/sysfs
  writes it made (its `kernel:` debug lines) compared with dlm_controld's reference semantics
  (`check_protocol` and the `proto_*` steps, shared/reference/dlm-controld-protocol.md §3).
- Scenario plumbing: named checks and /lab barriers (`Checks`), a true hard reset (`crash_now`),
  GFS2 mkfs/mount, uevent recording, libdlm via ctypes (`Libdlm`).
- The stand-ins of the adapter scenarios (lockspace-join, two-node-lockspace), which test
  dlmctl and kernel_glue without cmanlkd: `Node` carries out dlmctl's actions with the real
  adapters, and group stand-ins deliver what cpg would, in one total order for every node:
- `LoopbackBus`: a single node; its joins and messages come straight back.
- `FileBus`: several VMs share the scenario folder /lab (9p, backed by one host directory).
  Every group event (join, leave, message) is one file /lab/bus/<seq>, claimed with O_EXCL,
  so there is exactly one event per sequence number; every node replays the files in
  sequence order, so all see the same confchgs and messages in the same order (the virtual
  synchrony dlmctl relies on).
"""

from __future__ import annotations

import ast
import asyncio
import ctypes
import errno
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cmanlk.dlm.control import (
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
            case _:
                raise RuntimeError(f"the stand-in node does not carry out {a}")
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
        return int(lksb.sb_status)

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
    from cmanlk.dlm.control import LockspaceOffline, LockspaceOnline, LockspaceRemoved
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


# --- the real cmanlkd in a guest ------------------------------------------------------------------

CHECKOUT = Path(__file__).resolve().parents[3]
RUN_DIR = "/run/cmanlk"
SOCKET = f"{RUN_DIR}/cmanlk.sock"
DAEMON_LOG = Path("/out/cmanlkd.log")
START_TIMEOUT_S = 90.0
"""cmanlkd start (Python imports under TCG) + ring formation with token 5000 + quorum."""
CLUSTER = "cmk"
SUBNET = "10.213.9."
SUBNET6 = "fd6b:636d:6b::"
"""The harness's guest addresses (tests/vm/harness.py SUBNET, SUBNET6): node n is .n / ::n."""
EAGAIN = 11


def node_address(n: int, family: int = 4) -> str:
    """The bridge address of VM node `n` (IPv4 or IPv6 ULA)."""
    return f"{SUBNET}{n}" if family == 4 else f"{SUBNET6}{n}"


def corosync_conf(nodes: int, *, family: int = 4, two_node: bool = False, fencing: bool = False,
                  fence_blocks: tuple[dict[str, str], ...] = ()) -> str:
    """A corosync.conf for `nodes` VMs: udpu on the bridge, token 5000 (TCG), `cmanlk { dlm: yes }`.

    `fence_blocks` become `fence { key: value ... }` sections of `cmanlk {}` (docs/config.md).
    The dlmd logger runs at debug level: its `kernel:` lines are the configfs/sysfs protocol
    `kernel_ops()` reads back.
    """
    node_secs = "".join(
        f"  node {{\n    ring0_addr: {node_address(n, family)}\n    nodeid: {n}\n    name: cmkvm{n}\n  }}\n"
        for n in range(1, nodes + 1))
    fence = "".join("  fence {\n" + "".join(f"    {k}: {v}\n" for k, v in block.items()) + "  }\n"
                    for block in fence_blocks)
    return (
        f"totem {{\n  version: 2\n  cluster_name: {CLUSTER}\n  transport: udpu\n  token: 5000\n"
        f"  ip_version: ipv{family}\n}}\n"
        f"nodelist {{\n{node_secs}}}\n"
        f"quorum {{\n  provider: corosync_votequorum\n{'  two_node: 1' + chr(10) if two_node else ''}}}\n"
        "logging {\n  to_stderr: yes\n  debug: off\n"
        "  logger_subsys {\n    subsys: dlmd\n    debug: on\n  }\n}\n"
        f"cmanlk {{\n  state_dir: /var/lib/cmanlk\n  run_dir: {RUN_DIR}\n  dbus: no\n  dlm: yes\n"
        f"  dlm_fencing: {'yes' if fencing else 'no'}\n{fence}}}\n"
    )


def daemon_env() -> dict[str, str]:
    """The guest's python3 runs the checkout with the host venv's site-packages (Debian 3.11 loads them)."""
    site = CHECKOUT / ".venv" / "lib" / "python3.11" / "site-packages"
    return {**os.environ, "PYTHONPATH": f"{CHECKOUT}:{site}", "PYTHONDONTWRITEBYTECODE": "1"}


class Cmanlkd:
    """cmanlkd of this VM: started in the foreground, its log in /out/cmanlkd.log."""

    def __init__(self, me: NodeId, conf: str) -> None:
        self.me = me
        self.t0 = time.monotonic()
        path = Path("/tmp/cmanlk.conf")
        path.write_text(conf)
        with open(DAEMON_LOG, "wb") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "cmanlk.daemon", "-f", "-c", str(path),
                                          "--nodeid", str(me)], env=daemon_env(), stdout=logf,
                                         stderr=subprocess.STDOUT)

    def tool(self, *args: str) -> tuple[int, str]:
        """Run `cmanlk-tool -s SOCKET ARGS`; return (exit code, stdout + stderr)."""
        cmd = [sys.executable, "-m", "cmanlk.client.cli", "-s", SOCKET, *args]
        done = subprocess.run(cmd, env=daemon_env(), capture_output=True, text=True, timeout=30, check=False)
        return done.returncode, done.stdout + done.stderr

    def dlm(self) -> dict[str, Any]:
        """The daemon's `dlm` IPC reply (raises while it is not listening yet)."""
        from cmanlk.client import Client

        with Client.connect(SOCKET) as c:
            return c.dlm()

    def configured(self, members: list[int]) -> bool:
        try:
            cluster = self.dlm().get("cluster")
        except Exception:  # not listening yet (the daemon is still importing): keep waiting
            return False
        return (isinstance(cluster, dict) and bool(cluster.get("configured"))
                and cluster.get("members") == members)

    async def wait_configured(self, c: Checks, members: list[int]) -> None:
        """Wait until the kernel cluster is configured with `members` (quorate ring)."""
        await wait_until(lambda: self.configured(members), START_TIMEOUT_S,
                         f"cmanlkd: kernel DLM cluster configured with {members}")
        c.say(f"cmanlkd configured the kernel DLM for {members} after {time.monotonic() - self.t0:.1f}s")

    async def terminate(self, c: Checks) -> None:
        """SIGTERM; check the exit code 0 and that the configfs cluster is gone."""
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(self.proc.wait, 30)
        c.check(rc == 0, f"cmanlkd exited {rc} after SIGTERM")
        left = await asyncio.to_thread(lambda: sorted(p.name for p in CONFIGFS.iterdir()))
        c.check(left == [], f"cmanlkd removed its configfs cluster: {left}")

    def stop(self) -> None:
        """Kill it if still running; print the log's tail to the console."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        print(DAEMON_LOG.read_text(errors="replace")[-5000:], flush=True)

    def kernel_ops(self) -> list[tuple[object, ...]]:
        """The configfs/sysfs operations cmanlkd carried out, from its `kernel:` debug lines."""
        return parse_kernel_ops(DAEMON_LOG.read_text(errors="replace"))


CONFIGFS = Path("/sys/kernel/config/dlm")
_KERNEL_LINE = re.compile(r"kernel: (mkdir|rmdir|write)\s+(\S+)\s*(.*)$")


def parse_kernel_ops(text: str) -> list[tuple[object, ...]]:
    """Return the kernel operations of a cmanlkd log (or a reference trace line list), normalized:
    ("mkdir"|"rmdir", configfs path), ("write", configfs path, bytes; None for addr),
    ("sysfs", lockspace, attr, bytes)."""
    ops: list[tuple[object, ...]] = []
    for line in text.splitlines():
        m = _KERNEL_LINE.search(line)
        if not m:
            continue
        op, target, rest = m.groups()
        rel = target.removeprefix("/sys/kernel/config/dlm/")
        if op != "write":
            ops.append((op, rel))
        elif target.startswith("/sys/kernel/dlm/"):
            ls, attr = target.removeprefix("/sys/kernel/dlm/").split("/")
            ops.append(("sysfs", ls, attr, ast.literal_eval("b" + rest)))
        else:
            ops.append(("write", rel, None if rel.endswith("/addr") else ast.literal_eval("b" + rest)))
    return ops


# The reference semantics (shared/reference/dlm-controld-protocol.md §3), per step:

def proto_startup() -> list[tuple[object, ...]]:
    return [("mkdir", "cluster"), ("write", "cluster/mark", b"0"),
            ("write", "cluster/recover_callbacks", b"1"), ("write", "cluster/cluster_name", CLUSTER.encode())]


def proto_comms(n: int, me: int) -> list[tuple[object, ...]]:
    ops: list[tuple[object, ...]] = [("mkdir", f"cluster/comms/{n}"), ("write", f"cluster/comms/{n}/nodeid",
                                     str(n).encode()), ("write", f"cluster/comms/{n}/addr", None),
                                     ("write", f"cluster/comms/{n}/mark", b"0")]
    return ops + ([("write", f"cluster/comms/{n}/local", b"1")] if n == me else [])


def _add_node(ls: str, n: int) -> list[tuple[object, ...]]:
    p = f"cluster/spaces/{ls}/nodes/{n}"
    return [("mkdir", p), ("write", f"{p}/nodeid", str(n).encode()), ("write", f"{p}/weight", b"1")]


def proto_join(ls: str, members: list[int]) -> list[tuple[object, ...]]:
    """Our own join: id, spaces/<ls>, a nodes/N per group member, start, event_done 0."""
    gid = zlib.crc32(f"dlm:ls:{ls}".encode() + b"\0")
    ops: list[tuple[object, ...]] = [("sysfs", ls, "id", f"{gid}".encode() + b"\0"),
                                     ("mkdir", f"cluster/spaces/{ls}")]
    for n in members:
        ops += _add_node(ls, n)
    return [*ops, ("sysfs", ls, "control", b"1\0"), ("sysfs", ls, "event_done", b"0\0")]


def proto_other_joined(ls: str, n: int) -> list[tuple[object, ...]]:
    return [("sysfs", ls, "control", b"0\0"), *_add_node(ls, n), ("sysfs", ls, "control", b"1\0")]


def proto_other_removed(ls: str, n: int) -> list[tuple[object, ...]]:
    """Another member left cleanly, or failed (then after fencing): stop, rmdir nodes/N, start."""
    return [("sysfs", ls, "control", b"0\0"), ("rmdir", f"cluster/spaces/{ls}/nodes/{n}"),
            ("sysfs", ls, "control", b"1\0")]


def proto_leave(ls: str, members: list[int]) -> list[tuple[object, ...]]:
    return [("sysfs", ls, "control", b"0\0"), *(("rmdir", f"cluster/spaces/{ls}/nodes/{n}") for n in members),
            ("rmdir", f"cluster/spaces/{ls}"), ("sysfs", ls, "event_done", b"0\0")]


def proto_shutdown(comms: list[int]) -> list[tuple[object, ...]]:
    return [*(("rmdir", f"cluster/comms/{n}") for n in comms), ("rmdir", "cluster")]


def check_protocol(c: Checks, ops: list[tuple[object, ...]], *, comms: list[int],
                   removed: list[int], lockspaces: dict[str, list[tuple[object, ...]]]) -> None:
    """Compare what cmanlkd wrote with the reference semantics.

    Cluster level: the startup writes, one comms block per node in `comms` (any order: the ring
    may form in steps), then `rmdir comms/N` for the nodes that failed (`removed`, in order),
    then the shutdown. Per lockspace: exactly the expected sequence.
    """
    cluster = [op for op in ops if not _in_lockspace(op)]
    adds = [op for op in cluster[4:] if op[0] != "rmdir"]
    blocks: dict[int, list[tuple[object, ...]]] = {}
    for op in adds:
        blocks.setdefault(int(str(op[1]).split("/")[2]), []).append(op)
    rmdirs = [op for op in cluster[4:] if op[0] == "rmdir"]
    c.check(cluster[:4] == proto_startup(), f"protocol: startup {cluster[:4]}")
    want = {n: proto_comms(n, c.me) for n in comms}
    c.check(blocks == want, f"protocol: comms blocks {sorted(blocks)}"
            + ("" if blocks == want else f": {blocks} != {want}"))
    # failed nodes first (as membership drops them), then the rest in any order (a node that
    # leaves the ring before our SIGTERM is dropped by membership too), `rmdir cluster` last
    failed = [("rmdir", f"cluster/comms/{n}") for n in removed]
    rest = sorted(("rmdir", f"cluster/comms/{n}") for n in comms if n not in removed)
    ok = (rmdirs[:len(failed)] == failed and rmdirs[-1:] == [("rmdir", "cluster")]
          and sorted(rmdirs[len(failed):-1]) == rest)
    c.check(ok, f"protocol: comms removal {rmdirs}")
    for n in removed:  # "rmdir comms/N as soon as the cluster membership loses N", then the stops
        for ls in lockspaces:
            c.check(_comms_before_stop(ops, n, ls), f"protocol: comms/{n} removed before {ls} stopped for it")
    for ls, steps in lockspaces.items():
        got = _nodes_unordered([op for op in ops if _in_lockspace(op, ls)])
        expected = _nodes_unordered(steps)
        c.check(got == expected, f"protocol: lockspace {ls} ({len(got)} ops)"
                + ("" if got == expected else "\n  got  " + "\n  got  ".join(map(repr, got))
                   + "\n  want " + "\n  want ".join(map(repr, expected))))


def _comms_before_stop(ops: list[tuple[object, ...]], n: int, ls: str) -> bool:
    """Is `rmdir comms/N` before the `control 0` that stopped `ls` for N's failure?"""
    try:
        i = ops.index(("rmdir", f"cluster/comms/{n}"))
        j = ops.index(("rmdir", f"cluster/spaces/{ls}/nodes/{n}"))
    except ValueError:
        return False
    stops = [k for k in range(j) if ops[k] == ("sysfs", ls, "control", b"0\0")]
    return bool(stops) and i < stops[-1]


def _nodes_unordered(ops: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Sort each run of consecutive `rmdir nodes/N` (the reference's `rmdir nodes/*` has no order)."""
    out: list[tuple[object, ...]] = []
    run: list[tuple[object, ...]] = []
    for op in [*ops, ("end",)]:
        if op[0] == "rmdir" and "/nodes/" in str(op[1]):
            run.append(op)
            continue
        out += sorted(run, key=repr)
        run = []
        if op[0] != "end":
            out.append(op)
    return out


def _in_lockspace(op: tuple[object, ...], ls: str | None = None) -> bool:
    if op[0] == "sysfs":
        return ls is None or op[1] == ls
    path = str(op[1])
    return path.startswith("cluster/spaces/") and (ls is None or path.split("/")[2] == ls)


def crash_now(c: Checks) -> None:
    """A true hard reset: sysrq b (no sync, no unmount, no leave); QEMU runs with -no-reboot and exits."""
    c.say("crashing now: sysrq b, no leave")
    Path("/out/exit-code").write_text("0\n")  # the harness reads this; we will not get to write it
    (LAB / f"crashing.{c.me}").touch()
    os.sync()
    Path("/proc/sysrq-trigger").write_text("b")
    time.sleep(60)


def finish(c: Checks) -> int:
    c.say("PASS" if not c.failures else f"FAILED: {c.failures}")
    return 1 if c.failures else 0


async def record_uevents(watch: object, seen: list[object]) -> None:
    """Append every DLM/gfs2 uevent of `watch` (a started kernel_glue DlmUeventWatch) to `seen`."""
    async for ev in watch.events():  # type: ignore[attr-defined]
        seen.append(ev)


async def mount_gfs2(c: Checks, device: str = "/dev/vda", mnt: Path = Path("/mnt/gfs")) -> bool:
    """mount -t gfs2 `device` on `mnt` (made if missing); return whether it worked."""
    await asyncio.to_thread(mnt.mkdir, parents=True, exist_ok=True)
    return await run_command(c, "mount", "-t", "gfs2", device, str(mnt)) == 0


async def mkfs_gfs2(c: Checks, table: str, journals: int, device: str = "/dev/vda") -> bool:
    """mkfs.gfs2 -p lock_dlm -t `table` with `journals` 16 MiB journals; return whether it worked."""
    return await run_command(c, "mkfs.gfs2", "-O", "-p", "lock_dlm", "-t", table, "-j", str(journals),
                             "-J", "16", device) == 0
