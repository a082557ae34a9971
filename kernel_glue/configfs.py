"""The DLM's configfs tree (/sys/kernel/config/dlm): the real `DlmControl` adapter.

What the kernel expects there (fs/dlm/config.c, Linux 6.1; traced in
shared/reference/dlm-controld-protocol.md §2–3):

- `mkdir cluster` creates the cluster with default attributes and the default groups
  `comms/` and `spaces/`; attributes are written as plain ASCII without newline ("1", "klab")
  and read back with a trailing newline.
- `comms/<nodeid>/` per cluster node: `nodeid`, then `addr` once per address (a whole binary
  `struct sockaddr_storage`, 128 bytes; at most 3 per node, DLM_MAX_ADDR_COUNT), then `mark`
  (the kernel looks the node up by its addresses, so mark must come after addr), and
  `local` "1" on our own node only.
- `spaces/<ls>/nodes/<nodeid>/` per lockspace member: `nodeid`, `weight`.
- configfs refuses rmdir of a group that still has children (ENOTEMPTY): removal goes
  leaves first.

Each write is one write(2) of the whole value: configfs hands every write(2) to the
attribute's store function separately, so a value split in two would be stored twice.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import struct

from cmanlk.dlm.control import (
    ConfigfsMkdir,
    ConfigfsRmdir,
    ConfigfsWrite,
    KernelAction,
    SysfsWrite,
    sockaddr_storage,
)
from cmanlk.errors import KernelError
from kernel_glue.dlm_protocol import DlmControl, DlmSysfs

log = logging.getLogger(__name__)

CONFIGFS_DLM_ROOT = "/sys/kernel/config/dlm"
SOCKADDR_STORAGE_BYTES = 128
"""sizeof(struct sockaddr_storage): the kernel rejects any other length with EINVAL."""
AF_INET = 2
AF_INET6 = 10
DLM_MAX_ADDR_COUNT = 3
"""Addresses per node the kernel keeps (fs/dlm/config.c); a 4th write fails with ENOSPC."""
READ_BOUND_BYTES = 4096
"""A configfs attribute shows at most one page."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
__all__ = [
    "ConfigfsDlm", "addr_list_line", "carry_out", "clear_stale", "parse_sockaddr_storage", "sockaddr_storage",
]


def parse_sockaddr_storage(raw: bytes) -> IPAddress | None:
    """Return the address in a sockaddr_storage, or None for another family or a short buffer."""
    if len(raw) < 24:
        return None
    family = struct.unpack_from("<H", raw)[0]
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[4:8])
    if family == AF_INET6:
        return ipaddress.IPv6Address(raw[8:24])
    return None


def addr_list_line(addr: IPAddress) -> str:
    """Return the line comms/<n>/addr_list shows for `addr` (%pI4 / uncompressed %pI6)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return f"AF_INET\t{addr}\n"
    return f"AF_INET6\t{addr.exploded}\n"


class ConfigfsDlm:
    """`DlmControl` on the kernel's configfs (root defaults to /sys/kernel/config/dlm)."""

    def __init__(self, root: str = CONFIGFS_DLM_ROOT) -> None:
        self.root = root

    def _path(self, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise KernelError(path, errno.EINVAL, "configfs paths are relative to the dlm root")
        return os.path.join(self.root, path) if path else self.root

    def exists(self, path: str) -> bool:
        """Is there a directory or attribute at `path`?"""
        return os.path.lexists(self._path(path))

    def listdir(self, path: str) -> list[str]:
        """Return the sorted entry names of directory `path`; raises KernelError."""
        full = self._path(path)
        try:
            return sorted(os.listdir(full))
        except OSError as exc:
            raise _kernel_error(full, exc, "listdir") from exc

    def mkdir(self, path: str) -> None:
        """Create a configfs item or group; raises KernelError."""
        full = self._path(path)
        try:
            os.mkdir(full)
        except OSError as exc:
            raise _kernel_error(full, exc, "mkdir") from exc

    def rmdir(self, path: str) -> None:
        """Remove an item or group; raises KernelError."""
        full = self._path(path)
        try:
            os.rmdir(full)
        except OSError as exc:
            raise _kernel_error(full, exc, "rmdir") from exc

    def write(self, path: str, value: bytes) -> None:
        """Write `value` in one write(2); raises KernelError (also on a short write)."""
        write_attribute(self._path(path), value)

    def read(self, path: str) -> bytes:
        """Return the content of attribute `path`; raises KernelError."""
        return read_attribute(self._path(path))


def write_attribute(full: str, value: bytes) -> None:
    """Write `value` to the sysfs/configfs file `full` in one write(2); raises KernelError."""
    try:
        fd = os.open(full, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _kernel_error(full, exc, "open for writing") from exc
    try:
        n = os.write(fd, value)
    except OSError as exc:
        raise _kernel_error(full, exc, f"write {value[:32]!r}") from exc
    finally:
        os.close(fd)
    if n != len(value):
        raise KernelError(full, errno.EIO, f"short write: {n} of {len(value)} bytes")


def read_attribute(full: str) -> bytes:
    """Return up to READ_BOUND_BYTES of the sysfs/configfs file `full`; raises KernelError."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _kernel_error(full, exc, "open for reading") from exc
    try:
        return os.read(fd, READ_BOUND_BYTES)
    except OSError as exc:
        raise _kernel_error(full, exc, "read") from exc
    finally:
        os.close(fd)


def _kernel_error(path: str, exc: OSError, what: str) -> KernelError:
    code = exc.errno or errno.EIO
    return KernelError(path, code, f"{what}: {os.strerror(code)}")


# -- whole-tree operations on any DlmControl ------------------------------------------------------


def clear_stale(ctl: DlmControl) -> list[str]:
    """Remove a cluster left by a previous daemon: spaces/*/nodes/*, spaces/*, comms/*, cluster.

    Returns the removed paths in order. Every removal is tried even
    after a failure (as dlm_controld does at startup); the first KernelError is raised at the
    end if the cluster directory could not be removed. A cluster that is still in use by a
    lockspace cannot be cleared: the kernel keeps it busy, and the caller must not start.
    """
    c = ctl
    removed: list[str] = []
    if not c.exists("cluster"):
        return removed
    first_error: KernelError | None = None

    def rm(path: str) -> None:
        nonlocal first_error
        try:
            c.rmdir(path)
            removed.append(path)
        except KernelError as exc:
            log.warning("cannot remove stale %s: %s", path, exc)
            first_error = first_error or exc

    for space in _list_or_empty(c, "cluster/spaces"):
        for node in _list_or_empty(c, f"cluster/spaces/{space}/nodes"):
            rm(f"cluster/spaces/{space}/nodes/{node}")
        rm(f"cluster/spaces/{space}")
    for comm in _list_or_empty(c, "cluster/comms"):
        rm(f"cluster/comms/{comm}")
    rm("cluster")
    if c.exists("cluster") and first_error is not None:
        raise first_error
    return removed


def _list_or_empty(ctl: DlmControl, path: str) -> list[str]:
    try:
        return ctl.listdir(path)
    except KernelError:
        return []


def carry_out(action: KernelAction, ctl: DlmControl, sysfs: DlmSysfs) -> None:
    """Carry out one of dlmctl's kernel actions with the adapters; raises KernelError.

    What a caller does with the error: ENOENT on a sysfs write means the lockspace is gone (its
    last user died meanwhile) and can be logged and skipped; anything else on configfs means
    the kernel and dlmctl disagree about the tree, which dlm_controld treats as fatal for the
    lockspace (it answers the join with an error) — report it.
    """
    match action:
        case ConfigfsMkdir(path):
            ctl.mkdir(path)
        case ConfigfsRmdir(path):
            ctl.rmdir(path)
        case ConfigfsWrite(path, value):
            ctl.write(path, value)
        case SysfsWrite(lockspace, attr, value):
            sysfs.write(lockspace, attr, value)
