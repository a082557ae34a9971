"""Drivers for the DLM adapter conformance suite: one kernel (real or fake) and a lockspace user.

`RealDlmEnv` needs a kernel with the DLM (/sys/kernel/config/dlm, i.e. the VM lab), libdlm3 and
udevd (libdlm opens /dev/misc/dlm-control and waits for udev's /dev/misc/dlm_<ls>). `FakeDlmEnv`
runs anywhere. Both offer the same adapters and the same `join`/`leave` of a lockspace by a
user process, so one test body runs on both.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from dataclasses import dataclass, field

from cmanlk.errors import KernelError
from kernel_glue.configfs import ConfigfsDlm, clear_stale
from kernel_glue.dlm_protocol import DlmControl, DlmSysfs, DlmUeventSource
from kernel_glue.fakes import FakeDlmKernel, FakeRequest
from kernel_glue.sysfs import SysfsDlm
from kernel_glue.uevents import DlmUeventWatch

REAL_CONFIGFS_DLM = "/sys/kernel/config/dlm"


def real_kernel_available() -> bool:
    """Can the real variant run here (DLM in configfs, root, libdlm)?"""
    if not os.path.isdir(REAL_CONFIGFS_DLM) or os.geteuid() != 0:
        return False
    try:
        ctypes.CDLL("libdlm.so.3")
    except OSError:
        return False
    return True


class Pending:
    """A join or leave in progress; `wait` returns 0, a positive errno, or None (still waiting)."""

    def wait(self, timeout_s: float) -> int | None:
        raise NotImplementedError


@dataclass
class _FakePending(Pending):
    req: FakeRequest

    def wait(self, timeout_s: float) -> int | None:
        return None if self.req.result is None else abs(self.req.result)


@dataclass
class _ThreadPending(Pending):
    result: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None

    def wait(self, timeout_s: float) -> int | None:
        assert self.thread is not None
        self.thread.join(timeout_s)
        return self.result[0] if self.result else None


class FakeDlmEnv:
    """The in-memory twin."""

    name = "fake"

    def __init__(self) -> None:
        self.kernel = FakeDlmKernel()
        self.ctl: DlmControl = self.kernel.configfs
        self.sysfs: DlmSysfs = self.kernel.sysfs

    def uevents(self) -> DlmUeventSource:
        return self.kernel.uevents()

    def join(self, name: str) -> Pending:
        return _FakePending(self.kernel.request_join(name))

    def leave(self, name: str) -> Pending:
        return _FakePending(self.kernel.request_leave(name))

    def cleanup(self) -> None:
        clear_stale(self.ctl)


class RealDlmEnv:
    """The kernel's configfs/sysfs/uevents; lockspaces created through libdlm in threads."""

    name = "real"

    def __init__(self) -> None:
        self.ctl: DlmControl = ConfigfsDlm()
        self.sysfs: DlmSysfs = SysfsDlm()
        lib = ctypes.CDLL("libdlm.so.3", use_errno=True)
        lib.dlm_create_lockspace.restype = ctypes.c_void_p
        lib.dlm_create_lockspace.argtypes = [ctypes.c_char_p, ctypes.c_uint]
        lib.dlm_release_lockspace.restype = ctypes.c_int
        lib.dlm_release_lockspace.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        self._lib = lib
        self._handles: dict[str, int] = {}
        clear_stale(self.ctl)

    def uevents(self) -> DlmUeventSource:
        return DlmUeventWatch()

    def join(self, name: str) -> Pending:
        pending = _ThreadPending()

        def run() -> None:
            handle = self._lib.dlm_create_lockspace(name.encode(), 0o600)
            if handle:
                self._handles[name] = handle
                pending.result.append(0)
            else:
                pending.result.append(ctypes.get_errno() or errno.EIO)

        pending.thread = threading.Thread(target=run, name=f"join-{name}", daemon=True)
        pending.thread.start()
        return pending

    def leave(self, name: str) -> Pending:
        pending = _ThreadPending()
        handle = self._handles.pop(name, None)

        def run() -> None:
            rc = self._lib.dlm_release_lockspace(name.encode(), handle, 1)
            pending.result.append(0 if rc == 0 else ctypes.get_errno() or errno.EIO)

        pending.thread = threading.Thread(target=run, name=f"leave-{name}", daemon=True)
        pending.thread.start()
        return pending

    def cleanup(self) -> None:
        # A test that failed half-way may leave the kernel waiting on event_done: answer it
        # (a join with an error, a leave with success) so no thread blocks forever.
        for ls in self.sysfs.lockspaces():
            try:
                self.sysfs.write(ls, "event_done", b"-5\0")
            except KernelError:
                pass  # best effort: the lockspace may be gone already
        clear_stale(self.ctl)
