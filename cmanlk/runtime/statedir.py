"""Durable files of cmanlkd: the ring seq (`<state_dir>/ringid_<nodeid>`) and the status file.

corosync keeps the highest ring seq it has used in `ringid_<nodeid>` (8 bytes, native u64) so
that a restarted node never re-uses a ring seq (a stale ring id would let old packets look
current, totemsrp.c). We write the same 8-byte little-endian format, durably: write a temporary
file, fsync it, rename it over the old one, fsync the directory. A crash leaves either the old
or the new value, never a torn one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from pathlib import Path

from cmanlk.types import U64_MAX, NodeId

log = logging.getLogger("cmanlk.statedir")

_RINGID = struct.Struct("<Q")


def ringid_path(state_dir: str | Path, node: NodeId) -> Path:
    """Return the path of a node's ring seq file."""
    return Path(state_dir) / f"ringid_{node}"


def read_ring_seq(state_dir: str | Path, node: NodeId) -> int:
    """Return the persisted ring seq, or 0 when there is none.

    A file of the wrong size is logged and treated as absent (corosync does the same: it starts
    from 0 and the seq grows past every ring it then hears of). Raises OSError when the file
    exists but cannot be read.
    """
    path = ringid_path(state_dir, node)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) != _RINGID.size:
        log.warning("%s has %d bytes, not %d: ignored", path, len(data), _RINGID.size)
        return 0
    (seq,) = _RINGID.unpack(data)
    return int(seq)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` durably (tmp file, fsync, rename, fsync of the directory).

    Raises OSError; on error the old file is left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_ring_seq(state_dir: str | Path, node: NodeId, seq: int) -> None:
    """Persist `seq` durably before anything of the new ring is sent. Raises OSError or ValueError."""
    if not 0 <= seq <= U64_MAX:
        raise ValueError(f"ring seq {seq} out of u64 range")
    write_atomic(ringid_path(state_dir, node), _RINGID.pack(seq))


def write_status(path: Path, status: dict[str, object]) -> None:
    """Replace the status file atomically (readers never see half a file); no fsync: it is
    rebuilt at every change and lives on tmpfs (/run). Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    os.rename(tmp, path)


def ensure_dir(path: str | Path, mode: int = 0o755) -> Path:
    """Create a directory (and parents) if missing; return it as a Path. Raises OSError."""
    p = Path(path)
    p.mkdir(mode=mode, parents=True, exist_ok=True)
    return p


def creation_problem(path: str | Path) -> str | None:
    """Why `path` (a file or directory) cannot be created or written, as strerror text, or None.

    Looks at `path` if it exists, else at the nearest existing parent (which must be a writable
    directory). Creates nothing: this is the start check's probe (cmanlk.runtime.preflight).
    """
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe != Path(path) and not probe.is_dir():
        return f"{os.strerror(errno.ENOTDIR)}: {probe}"
    if os.access(probe, os.W_OK | (os.X_OK if probe.is_dir() else 0)):
        return None
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return os.strerror(errno.EROFS if read_only else errno.EACCES)
