"""Making the kernel DLM available: load modules, mount configfs.

`ensure_dlm_kernel()` is what the daemon calls at startup: configfs and dlm loaded (modprobe
only when /sys/module/<name> is absent), configfs mounted on /sys/kernel/config (with mount(2)
through ctypes: no dependency on util-linux), and /sys/kernel/config/dlm present.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import subprocess

from cmanlk.errors import KernelError

log = logging.getLogger(__name__)

CONFIGFS_MOUNTPOINT = "/sys/kernel/config"
MODPROBE_TIMEOUT_S = 30.0
"""modprobe of dlm (with its dependencies) takes well under a second; a hang is a bug."""


def is_module_loaded(name: str) -> bool:
    """Is kernel module `name` loaded or built in (/sys/module/<name> exists)?"""
    return os.path.isdir(f"/sys/module/{name}")


def ensure_module(name: str) -> bool:
    """Load kernel module `name` with modprobe unless present; returns True if we loaded it.

    Raises KernelError(name, ENOENT) when modprobe is missing or fails.
    """
    if is_module_loaded(name):
        return False
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.path.exists("/sbin/modprobe") else None)
    if modprobe is None:
        raise KernelError(name, errno.ENOENT, "module not loaded and no modprobe found")
    try:
        done = subprocess.run([modprobe, name], capture_output=True, text=True, timeout=MODPROBE_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise KernelError(name, errno.ETIMEDOUT, "modprobe timed out") from exc
    if done.returncode != 0 and not is_module_loaded(name):
        raise KernelError(name, errno.ENOENT, f"modprobe failed: {done.stderr.strip()[:200]}")
    log.info("loaded kernel module %s", name)
    return True


def is_mounted(mountpoint: str, fstype: str, mounts_file: str = "/proc/self/mounts") -> bool:
    """Is a filesystem of type `fstype` mounted on `mountpoint`?"""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == mountpoint and parts[2] == fstype:
                    return True
    except OSError:
        return False
    return False


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    """Call mount(2) through libc; raises KernelError(target, errno)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.mount.restype = ctypes.c_int
    rc = libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                    data.encode() if data is not None else None)
    if rc != 0:
        code = ctypes.get_errno()
        raise KernelError(target, code, f"mount -t {fstype}: {os.strerror(code)}")


def ensure_configfs_mounted(mountpoint: str = CONFIGFS_MOUNTPOINT) -> bool:
    """Mount configfs on `mountpoint` unless it is; returns True if we mounted it. Raises KernelError."""
    if is_mounted(mountpoint, "configfs"):
        return False
    ensure_module("configfs")
    try:
        mount("configfs", mountpoint, "configfs")
    except KernelError as exc:
        if exc.errno == errno.EBUSY and is_mounted(mountpoint, "configfs"):
            return False  # someone else (systemd's sys-kernel-config.mount) won the race
        raise
    log.info("mounted configfs on %s", mountpoint)
    return True


def ensure_dlm_kernel(mountpoint: str = CONFIGFS_MOUNTPOINT) -> str:
    """Make the kernel DLM usable; returns its configfs root (e.g. /sys/kernel/config/dlm).

    Raises KernelError when a module cannot be loaded or configfs cannot be mounted.
    """
    ensure_configfs_mounted(mountpoint)
    ensure_module("dlm")
    root = os.path.join(mountpoint, "dlm")
    if not os.path.isdir(root):
        raise KernelError(root, errno.ENOENT, "dlm is loaded but has no configfs subsystem")
    return root
