"""The small interfaces the DLM runtime needs from the kernel, as typing.Protocols.

Each has a real adapter (configfs.py, sysfs.py, uevents.py) and an in-memory twin
(fakes.py); both pass tests/adapters/test_dlm_adapter_conformance.py.

Paths given to `DlmControl` are relative to the DLM's configfs root
(/sys/kernel/config/dlm), e.g. "cluster/comms/2/addr". Lockspace attributes of
`DlmSysfs` are files of /sys/kernel/dlm/<lockspace>/ ("control", "event_done", "id").
Every failed kernel operation raises `cmanlk.errors.KernelError(path, errno, message)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

LockspaceAction = Literal["add", "online", "offline", "remove"]


@dataclass(frozen=True, slots=True)
class LockspaceUevent:
    """A uevent of a kernel lockspace kobject (/kernel/dlm/<lockspace>).

    "online" means the kernel waits for our answer on event_done (a join), "offline" the
    same for a leave; "add"/"remove" bracket the kobject's life.
    """

    action: LockspaceAction
    lockspace: str
    seqnum: int


@dataclass(frozen=True, slots=True)
class Gfs2Uevent:
    """A uevent of a mounted gfs2 filesystem (/fs/gfs2/<cluster>:<fs>).

    `table` is the lock table "<cluster>:<fs>"; `env` keeps the remaining KEY=VALUE fields
    (JID, RECOVERY, FIRSTMOUNT, JOURNALID, LOCKPROTO, ...) in the order the kernel sent them.
    """

    action: str
    table: str
    env: tuple[tuple[str, str], ...]
    seqnum: int

    def get(self, key: str) -> str | None:
        """Return the value of field `key`, or None."""
        for k, v in self.env:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class UeventsLost:
    """The kernel dropped uevents for us (ENOBUFS): a lockspace online may be among them.

    The runtime answers with dlmctl's `KernelLockspaces(now, sysfs.lockspaces())`, which joins
    every kernel lockspace dlmctl does not know yet (the kernel is waiting for it).
    """

    count: int


DlmUevent = LockspaceUevent | Gfs2Uevent | UeventsLost


class DlmControl(Protocol):
    """The DLM's configfs tree (cluster, comms, spaces), as the kernel exposes it."""

    def exists(self, path: str) -> bool:
        """Is there a directory or attribute at `path`?"""
        ...

    def listdir(self, path: str) -> list[str]:
        """Return the sorted entry names of directory `path`; raises KernelError."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a configfs item or group; raises KernelError (EEXIST, ENOENT, EPERM, ...)."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an item or group made with mkdir; raises KernelError (ENOTEMPTY, ENOENT, ...)."""
        ...

    def write(self, path: str, value: bytes) -> None:
        """Write `value` to attribute `path` in one write(2); raises KernelError (EINVAL, ...)."""
        ...

    def read(self, path: str) -> bytes:
        """Return the content of attribute `path`; raises KernelError."""
        ...


class DlmSysfs(Protocol):
    """The per-lockspace kobjects of /sys/kernel/dlm."""

    def lockspaces(self) -> list[str]:
        """Return the sorted names of the lockspaces the kernel has."""
        ...

    def write(self, lockspace: str, attr: str, value: bytes) -> None:
        """Write `value` to /sys/kernel/dlm/<lockspace>/<attr>; raises KernelError."""
        ...

    def read(self, lockspace: str, attr: str) -> bytes:
        """Return the content of /sys/kernel/dlm/<lockspace>/<attr>; raises KernelError."""
        ...


class DlmUeventSource(Protocol):
    """Kernel uevents of lockspaces and gfs2 filesystems."""

    async def start(self) -> None:
        """Start listening; events after this call are reported. Raises KernelError."""
        ...

    def events(self) -> AsyncIterator[DlmUevent]:
        """Yield events until close()."""
        ...

    async def close(self) -> None:
        """Stop listening; a pending `events()` iteration ends."""
        ...
