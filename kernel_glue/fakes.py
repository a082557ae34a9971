"""In-memory twins of the kernel DLM adapters: configfs, sysfs and uevents of one fake kernel.

`FakeDlmKernel` plays Linux 6.1's fs/dlm as observed in the VM lab (the conformance suite
tests/adapters/test_dlm_adapter_conformance.py runs the same assertions on it and on the real
kernel): the configfs tree with its default groups and attribute formats, the comms address
rules (128-byte sockaddr_storage, at most 3, no duplicates, `mark` only after an address),
cluster attributes that are kernel globals (they survive rmdir/mkdir of `cluster`), and
lockspaces that a test creates with `request_join` (uevents add+online, then the kernel waits
for `event_done`) and removes with `request_leave` (offline, event_done, remove).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cmanlk.errors import KernelError
from kernel_glue.configfs import (
    DLM_MAX_ADDR_COUNT,
    SOCKADDR_STORAGE_BYTES,
    addr_list_line,
    parse_sockaddr_storage,
)
from kernel_glue.dlm_protocol import DlmUevent, LockspaceUevent
from kernel_glue.sysfs import LOCKSPACE_ATTRS

CLUSTER_NAME_MAX = 63
"""dlm_config.ci_cluster_name is 64 bytes with the NUL: longer names are cut, not refused."""

# cluster attribute -> (default, must be non-zero); all are unsigned ints but cluster_name
_CLUSTER_INTS: dict[str, tuple[int, bool]] = {
    "buffer_size": (4096, True), "log_debug": (0, False), "log_info": (1, False), "mark": (0, False),
    "new_rsb_count": (128, False), "protocol": (0, False), "recover_callbacks": (0, False),
    "recover_timer": (5, True), "rsbtbl_size": (1024, True), "scan_secs": (5, True),
    "tcp_port": (21064, True), "toss_secs": (10, True),
}
_KIND_OF_CHILD = {"root": "cluster", "comms": "comm", "spaces": "space", "nodes": "node"}
_DEFAULT_GROUPS = {"cluster": ("comms", "spaces"), "space": ("nodes",)}


def _parse_int(raw: bytes, signed: bool) -> int | None:
    """kstrtoint/kstrtouint(base 0): optional sign, 0x/0 prefixes, one trailing newline, stop at NUL."""
    text = raw.split(b"\0", 1)[0]
    if text.endswith(b"\n"):
        text = text[:-1]
    try:
        s = text.decode("ascii")
        if not s or s != s.strip() or (s.startswith("-") and not signed):
            return None
        body = s.lstrip("+-")
        base = 16 if body[:2].lower() == "0x" else 8 if len(body) > 1 and body[0] == "0" else 10
        value = int(s, base)
    except ValueError:
        return None
    limit = 1 << 31 if signed else 1 << 32
    return value if -limit <= value < limit else None


@dataclass
class _Comm:
    nodeid: int = -1
    local: int = 0
    mark: int = 0
    addrs: list[bytes] = field(default_factory=list)


@dataclass
class _Node:
    nodeid: int = -1
    weight: int = 1


@dataclass
class FakeRequest:
    """A join or leave the fake kernel waits on; `result` is set when it completes."""

    kind: str
    lockspace: str
    result: int | None = None

    @property
    def done(self) -> bool:
        """Has the kernel answered the caller?"""
        return self.result is not None


@dataclass
class _Lockspace:
    name: str
    id: int = 0
    nodir: int = 0
    started: bool = False
    recover_status: int = 0
    pending: FakeRequest | None = None
    event_result: int | None = None


class FakeDlmKernel:
    """One pretend kernel: `configfs`, `sysfs` and `uevents()` share its state."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {"": "root"}  # path -> kind
        self._cluster: dict[str, int] = {k: v for k, (v, _) in _CLUSTER_INTS.items()}
        self._cluster_name = ""
        self._comms: dict[str, _Comm] = {}
        self._nodes: dict[str, _Node] = {}
        self._lockspaces: dict[str, _Lockspace] = {}
        self._watches: list[FakeDlmUevents] = []
        self._seqnum = 1000
        self.configfs = FakeDlmControl(self)
        self.sysfs = FakeDlmSysfs(self)

    # -- what tests (and the lockspace users they play) do ----------------------------------------
    def uevents(self) -> FakeDlmUevents:
        """Return a new uevent source fed by this kernel."""
        return FakeDlmUevents(self)

    def request_join(self, name: str) -> FakeRequest:
        """A process creates lockspace `name` (dlm_new_lockspace): uevents add, online; wait."""
        if name in self._lockspaces:
            req = FakeRequest("join", name, 0)  # the kernel just takes another reference
            return req
        ls = _Lockspace(name)
        ls.pending = FakeRequest("join", name)
        self._lockspaces[name] = ls
        self._emit(LockspaceUevent("add", name, self._next_seq()))
        self._emit(LockspaceUevent("online", name, self._next_seq()))
        return ls.pending

    def request_leave(self, name: str) -> FakeRequest:
        """The last user releases lockspace `name`: uevent offline; the kernel waits for event_done."""
        ls = self._lockspaces.get(name)
        if ls is None or ls.pending is not None:
            return FakeRequest("leave", name, -errno.EINVAL)
        ls.pending = FakeRequest("leave", name)
        ls.event_result = None
        self._emit(LockspaceUevent("offline", name, self._next_seq()))
        return ls.pending

    # -- internals --------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seqnum += 1
        return self._seqnum

    def _emit(self, ev: DlmUevent) -> None:
        for w in self._watches:
            w._put(ev)

    def _maybe_finish(self, ls: _Lockspace) -> None:
        req = ls.pending
        if req is None or ls.event_result is None:
            return
        if req.kind == "join":
            if ls.event_result != 0:
                req.result = ls.event_result
                self._drop_lockspace(ls)
            elif ls.started:  # the kernel also waits for the first recovery (needs a start)
                req.result = 0
                ls.pending = None
        else:
            req.result = 0
            self._drop_lockspace(ls)

    def _drop_lockspace(self, ls: _Lockspace) -> None:
        del self._lockspaces[ls.name]
        self._emit(LockspaceUevent("remove", ls.name, self._next_seq()))


class FakeDlmControl:
    """`DlmControl` on a FakeDlmKernel."""

    def __init__(self, kernel: FakeDlmKernel) -> None:
        self._k = kernel

    def _err(self, path: str, code: int, what: str) -> KernelError:
        return KernelError(f"/sys/kernel/config/dlm/{path}", code, what)

    def _split(self, path: str) -> tuple[str, str]:
        parent, _, name = path.rpartition("/")
        return parent, name

    def exists(self, path: str) -> bool:
        """Is there a directory or attribute at `path`?"""
        if path in self._k._dirs:
            return True
        parent, name = self._split(path)
        return parent in self._k._dirs and name in self._attrs(parent)

    def listdir(self, path: str) -> list[str]:
        """Return the sorted entry names of directory `path`; raises KernelError."""
        if path not in self._k._dirs:
            raise self._err(path, errno.ENOENT, "listdir")
        prefix = f"{path}/" if path else ""
        children = [p[len(prefix):] for p in self._k._dirs if p.startswith(prefix) and p != path
                    and "/" not in p[len(prefix):]]
        return sorted(children + list(self._attrs(path)))

    def _attrs(self, path: str) -> tuple[str, ...]:
        kind = self._k._dirs.get(path)
        if kind == "cluster":
            return ("cluster_name", *_CLUSTER_INTS)
        if kind == "comm":
            return ("addr", "addr_list", "local", "mark", "nodeid")
        if kind == "node":
            return ("nodeid", "weight")
        return ()

    def mkdir(self, path: str) -> None:
        """Create an item or group as configfs would; raises KernelError."""
        parent, name = self._split(path)
        if path in self._k._dirs or (parent in self._k._dirs and name in self._attrs(parent)):
            raise self._err(path, errno.EEXIST, "mkdir")
        if parent not in self._k._dirs:
            raise self._err(path, errno.ENOENT, "mkdir")
        kind = _KIND_OF_CHILD.get(self._k._dirs[parent])
        if kind is None or not name:
            raise self._err(path, errno.EPERM, "mkdir")
        self._k._dirs[path] = kind
        for group in _DEFAULT_GROUPS.get(kind, ()):
            self._k._dirs[f"{path}/{group}"] = group
        if kind == "comm":
            self._k._comms[path] = _Comm()
        elif kind == "node":
            self._k._nodes[path] = _Node()

    def rmdir(self, path: str) -> None:
        """Remove an item or group made with mkdir; raises KernelError."""
        kind = self._k._dirs.get(path)
        if kind is None:
            raise self._err(path, errno.ENOENT, "rmdir")
        if kind in ("comms", "spaces", "nodes", "root"):
            raise self._err(path, errno.EPERM, "rmdir of a default group")
        defaults = {f"{path}/{g}" for g in _DEFAULT_GROUPS.get(kind, ())}
        if any(p.startswith(f"{path}/") and p not in defaults for p in self._k._dirs):
            raise self._err(path, errno.ENOTEMPTY, "rmdir")
        for p in (path, *defaults):
            del self._k._dirs[p]
        self._k._comms.pop(path, None)
        self._k._nodes.pop(path, None)

    def write(self, path: str, value: bytes) -> None:
        """Store `value` into an attribute with the kernel's parsing rules; raises KernelError."""
        parent, name = self._split(path)
        if path in self._k._dirs:
            raise self._err(path, errno.EISDIR, "write")
        if parent not in self._k._dirs or name not in self._attrs(parent):
            raise self._err(path, errno.ENOENT, "write")
        kind = self._k._dirs[parent]
        if kind == "cluster":
            self._write_cluster(path, name, value)
        elif kind == "comm":
            self._write_comm(path, self._k._comms[parent], name, value)
        else:
            self._write_node(path, self._k._nodes[parent], name, value)

    def _write_cluster(self, path: str, name: str, value: bytes) -> None:
        if name == "cluster_name":
            text = value.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._k._cluster_name = text[:CLUSTER_NAME_MAX]
            return
        v = _parse_int(value, signed=False)
        nonzero = _CLUSTER_INTS[name][1]
        if v is None or (nonzero and v == 0) or (name == "protocol" and v not in (0, 1)):
            raise self._err(path, errno.EINVAL, f"write {value!r}")
        self._k._cluster[name] = v

    def _write_comm(self, path: str, comm: _Comm, name: str, value: bytes) -> None:
        if name == "addr_list":
            raise self._err(path, errno.EACCES, "open for writing")
        if name == "addr":
            if len(value) != SOCKADDR_STORAGE_BYTES:
                raise self._err(path, errno.EINVAL, "addr must be a sockaddr_storage")
            if len(comm.addrs) >= DLM_MAX_ADDR_COUNT:
                raise self._err(path, errno.ENOSPC, "too many addresses")
            if value in comm.addrs:
                raise self._err(path, errno.EEXIST, "address already set")
            comm.addrs.append(value)
            return
        v = _parse_int(value, signed=name != "mark")
        if v is None:
            raise self._err(path, errno.EINVAL, f"write {value!r}")
        if name == "mark" and not comm.addrs:
            raise self._err(path, errno.ENOENT, "mark: node has no address yet")
        setattr(comm, name, v)

    def _write_node(self, path: str, node: _Node, name: str, value: bytes) -> None:
        v = _parse_int(value, signed=True)
        if v is None:
            raise self._err(path, errno.EINVAL, f"write {value!r}")
        setattr(node, name, v)

    def read(self, path: str) -> bytes:
        """Return an attribute as the kernel shows it (with trailing newline); raises KernelError."""
        parent, name = self._split(path)
        if parent not in self._k._dirs or name not in self._attrs(parent):
            raise self._err(path, errno.EISDIR if path in self._k._dirs else errno.ENOENT, "read")
        kind = self._k._dirs[parent]
        if kind == "cluster":
            if name == "cluster_name":
                return f"{self._k._cluster_name}\n".encode()
            return f"{self._k._cluster[name]}\n".encode()
        if kind == "comm":
            comm = self._k._comms[parent]
            if name == "addr":
                raise self._err(path, errno.EACCES, "open for reading")
            if name == "addr_list":
                return "".join(_addr_line(a) for a in comm.addrs).encode()
            return f"{getattr(comm, name)}\n".encode()
        return f"{getattr(self._k._nodes[parent], name)}\n".encode()


def _addr_line(raw: bytes) -> str:
    addr = parse_sockaddr_storage(raw)
    return addr_list_line(addr) if addr is not None else "<UNKNOWN>\n"


class FakeDlmSysfs:
    """`DlmSysfs` on a FakeDlmKernel."""

    def __init__(self, kernel: FakeDlmKernel) -> None:
        self._k = kernel

    def _get(self, lockspace: str, attr: str) -> _Lockspace:
        path = f"/sys/kernel/dlm/{lockspace}/{attr}"
        if attr not in LOCKSPACE_ATTRS:
            raise KernelError(path, errno.EINVAL, "not a lockspace attribute")
        ls = self._k._lockspaces.get(lockspace)
        if ls is None:
            raise KernelError(path, errno.ENOENT, "no such lockspace")
        return ls

    def lockspaces(self) -> list[str]:
        """Return the sorted names of the fake kernel's lockspaces."""
        return sorted(self._k._lockspaces)

    def write(self, lockspace: str, attr: str, value: bytes) -> None:
        """Act as fs/dlm/lockspace.c's store functions; raises KernelError."""
        ls = self._get(lockspace, attr)
        path = f"/sys/kernel/dlm/{lockspace}/{attr}"
        if attr in ("recover_status", "recover_nodeid"):
            raise KernelError(path, errno.EACCES, "read-only attribute")
        v = _parse_int(value, signed=attr in ("control", "event_done"))
        if v is None or (attr == "control" and v not in (0, 1)):
            raise KernelError(path, errno.EINVAL, f"write {value!r}")
        if attr == "control":
            ls.started = v == 1
            if ls.started:
                ls.recover_status = 0xFF  # what the real kernel shows after a complete recovery
        elif attr == "event_done":
            ls.event_result = v
        elif attr == "id":
            ls.id = v
        else:
            ls.nodir = v
        self._k._maybe_finish(ls)

    def read(self, lockspace: str, attr: str) -> bytes:
        """Return the attribute as the kernel shows it; raises KernelError."""
        ls = self._get(lockspace, attr)
        if attr in ("control", "event_done"):
            raise KernelError(f"/sys/kernel/dlm/{lockspace}/{attr}", errno.EACCES, "write-only attribute")
        if attr == "recover_status":
            return f"{ls.recover_status:x}\n".encode()
        if attr == "recover_nodeid":
            return b"0\n"
        return f"{ls.id if attr == 'id' else ls.nodir}\n".encode()


class FakeDlmUevents:
    """`DlmUeventSource` fed by a FakeDlmKernel."""

    def __init__(self, kernel: FakeDlmKernel) -> None:
        self._k = kernel
        self._queue: asyncio.Queue[DlmUevent | None] = asyncio.Queue()

    async def start(self) -> None:
        """Start receiving the kernel's events."""
        self._k._watches.append(self)

    def _put(self, ev: DlmUevent | None) -> None:
        self._queue.put_nowait(ev)

    async def events(self) -> AsyncIterator[DlmUevent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def close(self) -> None:
        """Stop; a pending `events()` iteration ends."""
        if self in self._k._watches:
            self._k._watches.remove(self)
        self._put(None)


__all__ = ["FakeDlmControl", "FakeDlmKernel", "FakeDlmSysfs", "FakeDlmUevents", "FakeRequest"]
