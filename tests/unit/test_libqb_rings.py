"""libqb's shared-memory ring buffer: our Ring against itself and against Debian's libqb100.

The conformance half opens our rings with libqb's own qb_rb_open (as the client libraries do)
and moves chunks both ways with qb_rb_chunk_write/qb_rb_chunk_read, wrap-around included; it
needs only libqb.so.100 (a dependency of Debian's corosync, which scripts/setup.sh installs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmanlk.runtime.libqb.rings import (
    CHUNK_MARGIN,
    FC_MCAST,
    MAGIC,
    OFF_REF_COUNT,
    OFF_USER_DATA,
    OFF_WORD_SIZE,
    SHARED_HEADER_SIZE,
    Ring,
    RingError,
    data_file_size,
)

QB_RB_FLAG_SHARED_PROCESS = 0x08


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmanlk-rings-", dir="/dev/shm") as d:
        yield Path(d)


def test_a_chunk_written_is_read_back_in_order(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 4096)
    reader = Ring.open(str(shm / "r"), 4096)
    try:
        for i in range(20):
            assert ring.write(b"m%d" % i + bytes(i))
        assert reader.pending() == 20
        assert [reader.read() for _ in range(20)] == [b"m%d" % i + bytes(i) for i in range(20)]
        assert reader.read() is None
    finally:
        reader.close()
        ring.close()
    assert not list(shm.iterdir())  # the creator unlinked both files


def test_sizes_and_header_fields_are_libqbs(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 1 << 20)
    try:
        header = (shm / "r-header").read_bytes()
        assert len(header) == SHARED_HEADER_SIZE + 4
        assert os.path.getsize(shm / "r-data") == data_file_size(1 << 20) == 1_052_672
        (words,) = struct.unpack_from("<I", header, OFF_WORD_SIZE)
        assert words * 4 == 1_052_672
        assert header[12:].startswith(str(shm / "r-header").encode() + b"\0")
        (refs,) = struct.unpack_from("<i", header, OFF_REF_COUNT)
        assert refs == 1
    finally:
        ring.close()


def test_chunks_wrap_around_the_end_of_the_ring(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 1000)
    reader = Ring.open(str(shm / "r"), 1000)
    try:
        payloads = [bytes([i % 251]) * (300 + i % 7) for i in range(200)]
        got = []
        for p in payloads:
            assert ring.write(p)
            got.append(reader.read())
        assert got == payloads
    finally:
        reader.close()
        ring.close()


def test_a_full_ring_refuses_a_chunk_until_the_reader_takes_one(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 1000)
    reader = Ring.open(str(shm / "r"), 1000)
    try:
        written = 0
        while ring.write(bytes(500)):
            written += 1
        assert written >= 1
        assert ring.space_free() < 500 + CHUNK_MARGIN
        assert reader.read() == bytes(500)
        assert ring.write(bytes(500))
    finally:
        reader.close()
        ring.close()


def test_a_chunk_announced_but_not_committed_is_a_ring_error(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 1000)
    try:
        ring.sem.post()  # a hostile writer: a semaphore unit without a committed chunk
        with pytest.raises(RingError, match="not committed"):
            ring.read()
    finally:
        ring.close()


def test_a_length_past_the_limit_is_a_ring_error(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 1000)
    writer = Ring.open(str(shm / "r"), 1000)
    try:
        assert writer.write(b"x" * 10)
        with open(shm / "r-data", "r+b") as f:
            f.write(struct.pack("<II", 100_000, MAGIC))
        with pytest.raises(RingError, match="at most"):
            ring.read()
    finally:
        writer.close()
        ring.close()


def test_a_truncated_file_is_detected_before_it_is_touched(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 4096)
    try:
        ring.check_files()
        os.truncate(shm / "r-header", SHARED_HEADER_SIZE)  # what the C client does: still fine
        ring.check_files()
        os.truncate(shm / "r-data", 100)
        with pytest.raises(RingError, match="r-data"):
            ring.check_files()
    finally:
        os.truncate(shm / "r-data", data_file_size(4096))
        ring.close()


def test_the_flow_control_flag_is_the_request_rings_user_data(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 4096)
    try:
        ring.flow_control = FC_MCAST
        (flag,) = struct.unpack_from("<i", (shm / "r-header").read_bytes(), OFF_USER_DATA)
        assert flag == FC_MCAST == ring.flow_control
    finally:
        ring.close()


def test_a_forked_reader_wakes_on_the_writers_post(shm: Path) -> None:
    ring = Ring.create(str(shm / "r"), 4096)
    try:
        pid = os.fork()
        if pid == 0:  # the child: a reader in another process, blocked in sem_timedwait
            reader = Ring.open(str(shm / "r"), 4096)
            data = reader.read_wait(10.0)
            os._exit(0 if data == b"across processes" else 1)
        assert ring.write(b"across processes")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        ring.close()


# --- against Debian's libqb100 ------------------------------------------------------------------


def _libqb() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("qb") or "libqb.so.100"
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.qb_rb_open.restype = ctypes.c_void_p
    lib.qb_rb_open.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_size_t]
    lib.qb_rb_chunk_write.restype = ctypes.c_ssize_t
    lib.qb_rb_chunk_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.qb_rb_chunk_read.restype = ctypes.c_ssize_t
    lib.qb_rb_chunk_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32]
    lib.qb_rb_close.argtypes = [ctypes.c_void_p]
    lib.qb_rb_refcount_get.argtypes = [ctypes.c_void_p]
    return lib


LIBQB = _libqb()
needs_libqb = pytest.mark.skipif(
    LIBQB is None, reason="Debian's libqb100 is not installed (scripts/setup.sh)"
)


@needs_libqb
def test_libqb_opens_our_rings_and_both_directions_agree_across_the_wrap(shm: Path) -> None:
    """As a connection: the client writes requests into one ring and reads answers from another."""
    assert LIBQB is not None
    requests = Ring.create(str(shm / "qb-request-cpg"), 8192)
    responses = Ring.create(str(shm / "qb-response-cpg"), 8192)
    client_requests = LIBQB.qb_rb_open(
        str(shm / "qb-request-cpg").encode(), 8192, QB_RB_FLAG_SHARED_PROCESS, 4
    )
    client_responses = LIBQB.qb_rb_open(
        str(shm / "qb-response-cpg").encode(), 8192, QB_RB_FLAG_SHARED_PROCESS, 0
    )
    assert client_requests and client_responses, "qb_rb_open failed"
    try:
        assert LIBQB.qb_rb_refcount_get(client_requests) == 2 == requests.ref_count
        buf = ctypes.create_string_buffer(8192)
        for i in range(300):  # 300 × ~3 KiB crosses the end of an 8 KiB ring many times
            payload = bytes([i % 256]) * (2000 + 37 * (i % 30))
            assert LIBQB.qb_rb_chunk_write(client_requests, payload, len(payload)) == len(payload)
            assert requests.read() == payload
            reply = b"r%d" % i * (1 + i % 50)
            assert responses.write(reply)
            n = LIBQB.qb_rb_chunk_read(client_responses, buf, len(buf), 1000)
            assert buf.raw[:n] == reply
    finally:
        LIBQB.qb_rb_close(client_requests)
        LIBQB.qb_rb_close(client_responses)
        requests.close()
        responses.close()
    assert not list(shm.iterdir())
