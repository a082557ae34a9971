"""libqb's shared-memory ring buffer (lib/ringbuffer.c, ringbuffer_helper.c, unix.c of libqb 2.0).

A ring is two files: `<name>-header` (the shared header, below) and `<name>-data` (the ring
itself, `word_size` 32-bit words). The creator (the server) sizes both, writes the header and
initialises the semaphore; the opener (the client library) maps them by path. Offsets on x86-64
(checked with gcc against libqb's struct qb_ringbuffer_shared_s):

| field | offset | size |
|---|---|---|
| write_pt, read_pt, word_size (u32) | 0, 4, 8 | 4 each |
| hdr_path, data_path (char[PATH_MAX]) | 12, 4108 | 4096 each |
| ref_count (i32) | 8204 | 4 |
| posix_sem (glibc sem_t, process-shared) | 8208 | 32 |
| user_data (the request ring: i32 flow-control flag) | 8240 | 4 |

A chunk at word p: word p = payload length in bytes, word p+1 = magic (0xA1A1A1A1 committed,
0xA110CED0 being written, 0xD0D0D0D0 read), payload from word p+2, padded to a word; the next
chunk starts at p + 2 + ceil(len / 4) modulo word_size. The writer posts the semaphore once per
committed chunk; the reader waits on it once per chunk, copies the payload and reclaims the
chunk (length 0, magic DEAD, then read_pt). Free space is (read − write − 1) words, or the whole
ring when the two meet and no chunk is pending; a chunk needs its length plus 12 bytes.

libqb maps the data file twice back to back so a chunk may cross the end; we map it once and
split the copy at the wrap.

Everything the other side can write is untrusted: our own read or write position is kept here
and never re-read from the header; a position, a length or a magic from shared memory that is
out of range raises `RingError`, which the server answers by disconnecting the client. The files
of a connection belong to its client (libqb chowns them), so a client could also truncate them
under our mappings; `check_files()` compares their sizes before each batch (libqb has the same
exposure and catches SIGBUS only while disconnecting), see docs/libqb.md "Hostile clients".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import struct
import time
from dataclasses import dataclass

PATH_MAX = 4096
OFF_WRITE_PT = 0
OFF_READ_PT = 4
OFF_WORD_SIZE = 8
OFF_HDR_PATH = 12
OFF_DATA_PATH = OFF_HDR_PATH + PATH_MAX
OFF_REF_COUNT = OFF_DATA_PATH + PATH_MAX  # 8204
OFF_SEM = 8208
SEM_SIZE = 32
SHARED_HEADER_SIZE = 8248
"""sizeof(struct qb_ringbuffer_shared_s) on x86-64 (aligned(8), user_data[1] included)."""
OFF_USER_DATA = 8240
USER_DATA_SIZE = 4
"""libqb's server creates all three rings with 4 bytes of user data (the request ring's flag)."""

CHUNK_HEADER_BYTES = 8
CHUNK_MARGIN = 12
"""QB_RB_CHUNK_MARGIN: the chunk header (2 words) and one alignment word."""
MAGIC = 0xA1A1A1A1
MAGIC_ALLOC = 0xA110CED0
MAGIC_DEAD = 0xD0D0D0D0

FC_OFF = 0
"""Flow-control flag values in the request ring's user data (qb_ipcs_rate_limit): 0 lets the
client send, 1 (RATE_OFF) refuses every request, 2 (RATE_OFF_2) refuses only what the library
sends with fc_enable_max 2 (cpg_mcast_joined and its fragments) — qb_ipcc_send's test is
`0 < flag <= fc_enable_max`."""
FC_ALL = 1
FC_MCAST = 2

PAGE_SIZE = mmap.PAGESIZE
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class RingError(Exception):
    """The other side broke the ring's rules (bad position, length or magic) or its files."""


def data_file_size(max_msg_size: int) -> int:
    """Bytes of the data file for chunks of up to `max_msg_size` (qb_rb_open: margin, +1, page)."""
    size = max_msg_size + CHUNK_MARGIN + 1
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


# --- glibc semaphores through ctypes -------------------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    libc = ctypes.CDLL(name, use_errno=True)
    for fn in ("sem_init", "sem_post", "sem_trywait", "sem_destroy"):
        getattr(libc, fn).restype = ctypes.c_int
    libc.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
    libc.sem_post.argtypes = [ctypes.c_void_p]
    libc.sem_trywait.argtypes = [ctypes.c_void_p]
    libc.sem_destroy.argtypes = [ctypes.c_void_p]
    libc.sem_getvalue.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    libc.sem_getvalue.restype = ctypes.c_int
    libc.sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]
    libc.sem_timedwait.restype = ctypes.c_int
    return libc


_LIBC = _load_libc()
_sem_post = _LIBC.sem_post
_sem_trywait = _LIBC.sem_trywait


class Semaphore:
    """A glibc `sem_t` at `address` inside a shared mapping (process-shared)."""

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        self.address = address

    def init(self) -> None:
        """sem_init(pshared=1, value 0). Raises OSError."""
        if _LIBC.sem_init(self.address, 1, 0) != 0:
            raise _errno_error("sem_init")

    def post(self) -> None:
        """sem_post. Raises OSError (EOVERFLOW past SEM_VALUE_MAX: a client that never reads)."""
        if _sem_post(self.address) != 0:
            raise _errno_error("sem_post")

    def try_wait(self) -> bool:
        """sem_trywait: True when a unit was taken, False when the value was 0."""
        return bool(_sem_trywait(self.address) == 0)

    def wait(self, timeout_s: float) -> bool:
        """sem_timedwait up to `timeout_s` (CLOCK_REALTIME, as libqb): True when a unit was taken."""
        deadline = time.time() + timeout_s
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        while True:
            if _LIBC.sem_timedwait(self.address, ctypes.byref(ts)) == 0:
                return True
            err = ctypes.get_errno()
            if err == 4:  # EINTR
                continue
            return False

    def value(self) -> int:
        """sem_getvalue (never negative on Linux)."""
        out = ctypes.c_int(0)
        if _LIBC.sem_getvalue(self.address, ctypes.byref(out)) != 0:
            raise _errno_error("sem_getvalue")
        return out.value

    def destroy(self) -> None:
        """sem_destroy (errors ignored: the memory is going away)."""
        _LIBC.sem_destroy(self.address)


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


# --- the ring ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RingPaths:
    """The two files of ring `name`."""

    header: str
    data: str

    @classmethod
    def of(cls, name: str) -> RingPaths:
        return cls(f"{name}-header", f"{name}-data")


class Ring:
    """One ring, created (server) or opened (client). Not thread-safe; one reader, one writer.

    `create()` and `open()` are the two ways in; `close()` unmaps and, for the creator, unlinks.
    """

    def __init__(
        self,
        paths: RingPaths,
        header: mmap.mmap,
        data: mmap.mmap,
        word_size: int,
        max_msg_size: int,
        creator: bool,
        header_size: int,
    ) -> None:
        self.paths = paths
        self._header = header
        self._data = data
        self.word_size = word_size
        self.max_msg_size = max_msg_size
        self.creator = creator
        self._header_size = header_size
        self._data_size = word_size * 4
        self._sem_anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(header, OFF_SEM)
        self.sem = Semaphore(ctypes.addressof(self._sem_anchor))
        # Our own position on the side we drive (see the module docstring: never re-read).
        (self._write_pt,) = _U32.unpack_from(header, OFF_WRITE_PT)
        (self._read_pt,) = _U32.unpack_from(header, OFF_READ_PT)
        self._view = memoryview(data)
        self.closed = False

    # --- creation ------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, max_msg_size: int, uid: int = -1, gid: int = -1, mode: int = 0o600) -> Ring:
        """Create ring `name` for chunks up to `max_msg_size` (qb_rb_open with QB_RB_FLAG_CREATE).

        Both files are created exclusively, sized and allocated, owned by `uid`/`gid` (when not -1)
        with `mode`. Raises OSError (and removes what it made) on failure.
        """
        paths = RingPaths.of(name)
        data_size = data_file_size(max_msg_size)
        header_size = SHARED_HEADER_SIZE + USER_DATA_SIZE
        made: list[str] = []
        header = data = None
        try:
            header = _create_mapped(paths.header, header_size, uid, gid, mode, made)
            data = _create_mapped(paths.data, data_size, uid, gid, mode, made)
            _U32.pack_into(header, OFF_WRITE_PT, 0)
            _U32.pack_into(header, OFF_READ_PT, 0)
            _U32.pack_into(header, OFF_WORD_SIZE, data_size // 4)
            header[OFF_HDR_PATH : OFF_HDR_PATH + PATH_MAX] = _path_field(paths.header)
            header[OFF_DATA_PATH : OFF_DATA_PATH + PATH_MAX] = _path_field(paths.data)
            _I32.pack_into(header, OFF_REF_COUNT, 1)
            _I32.pack_into(header, OFF_USER_DATA, FC_OFF)
            ring = cls(paths, header, data, data_size // 4, max_msg_size, True, header_size)
            ring.sem.init()
            return ring
        except BaseException:
            for m in (header, data):
                if m is not None:
                    m.close()
            for path in made:
                _unlink(path)
            raise

    @classmethod
    def open(cls, name: str, max_msg_size: int, user_data_size: int = 0) -> Ring:
        """Open the ring a server created (qb_rb_open without CREATE, as libqb's client).

        The header is sized to the shared header plus `user_data_size` and the data file to what
        `max_msg_size` needs, exactly as the C client does. Raises OSError or RingError.
        """
        header_size = SHARED_HEADER_SIZE + user_data_size
        data_size = data_file_size(max_msg_size)
        header = _open_mapped(f"{name}-header", header_size)
        try:
            raw = header[OFF_DATA_PATH : OFF_DATA_PATH + PATH_MAX]
            data_path = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if not data_path.startswith("/"):
                raise RingError(f"ring {name}: data path {data_path!r} is not absolute")
            data = _open_mapped(data_path, data_size)
        except BaseException:
            header.close()
            raise
        (word_size,) = _U32.unpack_from(header, OFF_WORD_SIZE)
        if word_size * 4 != data_size:
            header.close()
            data.close()
            raise RingError(f"ring {name}: {word_size} words, {data_size} bytes expected")
        ring = cls(
            RingPaths(f"{name}-header", data_path), header, data, word_size, max_msg_size, False, header_size
        )
        (count,) = _I32.unpack_from(header, OFF_REF_COUNT)
        _I32.pack_into(header, OFF_REF_COUNT, count + 1)
        return ring

    # --- shared fields -------------------------------------------------------------------------

    @property
    def ref_count(self) -> int:
        """The ring's reference count (creator 1, +1 per opener)."""
        (value,) = _I32.unpack_from(self._header, OFF_REF_COUNT)
        return int(value)

    @property
    def flow_control(self) -> int:
        """The flag in the user data (request ring): FC_OFF, FC_ALL or FC_MCAST."""
        (value,) = _I32.unpack_from(self._header, OFF_USER_DATA)
        return int(value)

    @flow_control.setter
    def flow_control(self, value: int) -> None:
        _I32.pack_into(self._header, OFF_USER_DATA, value)

    def check_files(self) -> None:
        """Raise RingError when a file is shorter than what we touch (truncated under us).

        The client legitimately shrinks the response and event headers to the bare shared header
        (it opens them without user data): 8248 bytes are enough, as the fields we use end there.
        """
        for path, size in ((self.paths.header, SHARED_HEADER_SIZE), (self.paths.data, self._data_size)):
            try:
                st = os.stat(path)
            except OSError as exc:
                raise RingError(f"{path}: {exc.strerror}") from None
            if st.st_size < size:
                raise RingError(f"{path}: {st.st_size} bytes, {size} mapped")

    # --- writing -------------------------------------------------------------------------------

    def space_free(self) -> int:
        """Free bytes (qb_rb_space_free). Raises RingError for an out-of-range read position."""
        (read_pt,) = _U32.unpack_from(self._header, OFF_READ_PT)
        if read_pt >= self.word_size:
            raise RingError(f"read position {read_pt} outside a ring of {self.word_size} words")
        write_pt = self._write_pt
        if write_pt > read_pt:
            words = read_pt - write_pt + self.word_size - 1
        elif write_pt < read_pt:
            words = read_pt - write_pt - 1
        else:
            words = 0 if self.sem.value() > 0 else self.word_size
        return int(words) * 4

    def write(self, payload: bytes | bytearray | memoryview) -> bool:
        """Commit one chunk and post the semaphore; False (nothing written) when it does not fit.

        Raises ValueError past max_msg_size, RingError when the reader broke the ring.
        """
        if not self.write_nopost(payload):
            return False
        self.sem.post()
        return True

    def write_nopost(self, payload: bytes | bytearray | memoryview) -> bool:
        """`write` without the semaphore post: the caller posts once per chunk after a batch."""
        size = len(payload)
        if size > self.max_msg_size:
            raise ValueError(f"chunk of {size} bytes; at most {self.max_msg_size}")
        if self.space_free() < size + CHUNK_MARGIN:
            return False
        w = self._write_pt
        ws = self.word_size
        data = self._data
        _U32.pack_into(data, w * 4, 0)
        _U32.pack_into(data, ((w + 1) % ws) * 4, MAGIC_ALLOC)
        start = ((w + 2) % ws) * 4
        end = start + size
        if end <= self._data_size:
            self._view[start:end] = payload
        else:
            first = self._data_size - start
            self._view[start:] = payload[:first]
            self._view[: size - first] = payload[first:]
        _U32.pack_into(data, w * 4, size)
        self._write_pt = (w + 2 + (size + 3) // 4) % ws
        _U32.pack_into(self._header, OFF_WRITE_PT, self._write_pt)
        _U32.pack_into(data, ((w + 1) % ws) * 4, MAGIC)
        return True

    # --- reading -------------------------------------------------------------------------------

    def pending(self) -> int:
        """Committed chunks not yet read (the semaphore's value)."""
        return self.sem.value()

    def read(self) -> bytes | None:
        """Take one committed chunk (None when none is pending).

        Raises RingError when the writer broke the ring (a chunk announced but not committed, a
        length or position out of range); the semaphore unit is then consumed.
        """
        if not self.sem.try_wait():
            return None
        return self._take()

    def read_wait(self, timeout_s: float) -> bytes | None:
        """Like `read`, waiting up to `timeout_s` for a chunk (the client's side)."""
        if not self.sem.wait(timeout_s):
            return None
        return self._take()

    def _take(self) -> bytes:
        r = self._read_pt
        ws = self.word_size
        data = self._data
        (magic,) = _U32.unpack_from(data, ((r + 1) % ws) * 4)
        if magic != MAGIC:
            raise RingError(f"chunk at word {r}: magic {magic:#x}, not committed")
        (size,) = _U32.unpack_from(data, r * 4)
        if size > self.max_msg_size:
            raise RingError(f"chunk at word {r}: {size} bytes, at most {self.max_msg_size}")
        start = ((r + 2) % ws) * 4
        end = start + size
        if end <= self._data_size:
            out = bytes(self._view[start:end])
        else:
            out = bytes(self._view[start:]) + bytes(self._view[: end - self._data_size])
        _U32.pack_into(data, r * 4, 0)
        _U32.pack_into(data, ((r + 1) % ws) * 4, MAGIC_DEAD)
        self._read_pt = (r + 2 + (size + 3) // 4) % ws
        _U32.pack_into(self._header, OFF_READ_PT, self._read_pt)
        return out

    # --- end -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap; the creator also destroys the semaphore and unlinks both files (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            count = self.ref_count
            _I32.pack_into(self._header, OFF_REF_COUNT, count - 1)
            if self.creator:
                self.sem.destroy()
        except (ValueError, OSError):
            pass
        self._sem_anchor = None
        self._view.release()
        self._header.close()
        self._data.close()
        if self.creator:
            _unlink(self.paths.header)
            _unlink(self.paths.data)


def _path_field(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"path of {len(raw)} bytes")
    return raw + bytes(PATH_MAX - len(raw))


def _create_mapped(path: str, size: int, uid: int, gid: int, mode: int, made: list[str]) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    made.append(path)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _open_mapped(path: str, size: int) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
