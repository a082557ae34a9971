"""The kernel's per-lockspace kobjects, /sys/kernel/dlm/<lockspace>/: the real `DlmSysfs`.

Attributes (fs/dlm/lockspace.c, Linux 6.1; see shared/reference/dlm-controld-protocol.md §2–3):
`control` (write "0" stop / "1" start; anything else EINVAL), `event_done` (the result of a
join or leave the kernel waits for: "0" = ok, a negative errno fails it), `id` (the global
lockspace id, u32, the same on every node), `nodir`, and read-only `recover_status` (hex) and
`recover_nodeid`. dlm_controld writes the values with a trailing NUL ("1\\0"); the kernel parses
them with kstrto*(), which stops at the NUL, and we write exactly the same bytes.
"""

from __future__ import annotations

import errno
import os

from cmanlk.errors import KernelError
from kernel_glue.configfs import read_attribute, write_attribute

SYSFS_DLM_ROOT = "/sys/kernel/dlm"
LOCKSPACE_ATTRS = frozenset({"control", "event_done", "id", "nodir", "recover_status", "recover_nodeid"})


class SysfsDlm:
    """`DlmSysfs` on /sys/kernel/dlm (root overridable for tests)."""

    def __init__(self, root: str = SYSFS_DLM_ROOT) -> None:
        self.root = root

    def _path(self, lockspace: str, attr: str) -> str:
        if "/" in lockspace or lockspace in ("", ".", "..") or attr not in LOCKSPACE_ATTRS:
            raise KernelError(f"{self.root}/{lockspace}/{attr}", errno.EINVAL, "not a lockspace attribute")
        return os.path.join(self.root, lockspace, attr)

    def lockspaces(self) -> list[str]:
        """Return the sorted names of the kernel's lockspaces ([] when dlm is not loaded)."""
        try:
            return sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KernelError(self.root, exc.errno or errno.EIO, f"listdir: {exc.strerror}") from exc

    def write(self, lockspace: str, attr: str, value: bytes) -> None:
        """Write `value` in one write(2); raises KernelError (ENOENT when the lockspace is gone)."""
        write_attribute(self._path(lockspace, attr), value)

    def read(self, lockspace: str, attr: str) -> bytes:
        """Return the attribute's content (with the kernel's trailing newline); raises KernelError."""
        return read_attribute(self._path(lockspace, attr))
