"""What plain Python can do on this machine: the floor under any Python daemon's per-frame and
per-message cost, measured with no cluster logic at all (issue 11's "prove the limit").

    python -m bench.pylimit [--seconds 1.0]

Everything runs in this process on 127.0.0.1 (no root, no namespaces) and reports CPU µs (this
process's user + system time) per item, so the machine's load changes the figures less than
wall-clock rates would:

- `sendto` / `recv_into`: one datagram per syscall, the way udpu.py sends and receives;
- `sendmmsg` / `recvmmsg` through ctypes, 32 datagrams per syscall (the batched layer's best case);
- `split+event`: per 64-byte message, the least a delivery must do in Python — slice the message
  out of a totempg frame (struct-unpacked lengths) and build the 24-byte-headed event bytes a
  client gets (one struct pack and one concatenation), no objects, no dispatch;
- `call`: one empty Python function call, the unit every layer of the hot path adds.

Compare with corosync's daemon CPU per delivered message in `bench.run`
(`cpu.daemon_us_per_msg.*` of corosync-c): a Python path whose floor per message is already near
corosync's whole cost cannot reach 1.0x by tuning alone.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable

BATCH = 32
MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(fn: Callable[[], int], seconds: float) -> float:
    """CPU µs per item of `fn` (which returns how many items one call did)."""
    items = 0
    c0 = cpu_s()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        items += fn()
    return (cpu_s() - c0) * 1e6 / max(items, 1)


def measure_size(
    size: int, tx: socket.socket, rx: socket.socket, libc: ctypes.CDLL, seconds: float
) -> list[tuple[str, int, float]]:
    """The socket figures for datagrams of `size` bytes."""
    dest = rx.getsockname()
    results: list[tuple[str, int, float]] = []
    data = b"x" * size
    buf = bytearray(65536)

    def send_one(data: bytes = data) -> int:
        n = 0
        for _ in range(64):
            try:
                tx.sendto(data, dest)
                n += 1
            except BlockingIOError:
                break
        drain()
        return n

    def drain() -> None:
        while True:
            try:
                rx.recv_into(buf)
            except BlockingIOError:
                return

    def recv_one(data: bytes = data) -> int:
        for _ in range(64):
            try:
                tx.send(data)
            except BlockingIOError:
                break
        n = 0
        t0 = cpu_s()
        while True:
            try:
                rx.recv_into(buf)
                n += 1
            except BlockingIOError:
                break
        recv_cpu[0] += cpu_s() - t0
        recv_cpu[1] += n
        return n

    results.append(("sendto (+drain)", size, measure(send_one, seconds)))
    recv_cpu = [0.0, 0]
    measure(recv_one, seconds)
    results.append(("recv_into", size, recv_cpu[0] * 1e6 / max(recv_cpu[1], 1)))

    # sendmmsg / recvmmsg, BATCH per call
    payload = ctypes.create_string_buffer(data, size)
    iovs = (_IoVec * BATCH)()
    msgs = (_MMsgHdr * BATCH)()
    for i in range(BATCH):
        iovs[i].iov_base = ctypes.cast(payload, ctypes.c_void_p)
        iovs[i].iov_len = size
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    rbufs = [ctypes.create_string_buffer(2048) for _ in range(BATCH)]
    riovs = (_IoVec * BATCH)()
    rmsgs = (_MMsgHdr * BATCH)()
    for i in range(BATCH):
        riovs[i].iov_base = ctypes.cast(rbufs[i], ctypes.c_void_p)
        riovs[i].iov_len = 2048
        rmsgs[i].msg_hdr.msg_iov = ctypes.pointer(riovs[i])
        rmsgs[i].msg_hdr.msg_iovlen = 1
    txfd, rxfd = tx.fileno(), rx.fileno()

    def sendmmsg(size: int = size) -> int:
        sent = libc.sendmmsg(txfd, msgs, BATCH, MSG_DONTWAIT)
        drain()
        return max(sent, 0)

    def recvmmsg(size: int = size) -> int:
        libc.sendmmsg(txfd, msgs, BATCH, MSG_DONTWAIT)
        t0 = cpu_s()
        got = libc.recvmmsg(rxfd, rmsgs, BATCH, MSG_DONTWAIT, None)
        # what a daemon must do next: one bytes object per datagram
        items = [rbufs[i].raw[: rmsgs[i].msg_len] for i in range(max(got, 0))]
        recv_cpu[0] += cpu_s() - t0
        recv_cpu[1] += len(items)
        return max(got, 0)

    results.append((f"sendmmsg x{BATCH} (+drain)", size, measure(sendmmsg, seconds)))
    recv_cpu = [0.0, 0]
    measure(recvmmsg, seconds)
    results.append((f"recvmmsg x{BATCH} + bytes", size, recv_cpu[0] * 1e6 / max(recv_cpu[1], 1)))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = ap.parse_args(argv)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    results: list[tuple[str, int, float]] = []
    for size in (64, 1410):
        results += measure_size(size, tx, rx, libc, args.seconds)

    # per-message minimum of a delivery: a frame of 21 x 64-byte messages
    count = 21
    frame = struct.pack("<hhBBH", 0, 0, 0, 0, count) + struct.pack(f"<{count}H", *([64] * count))
    frame += b"m" * (64 * count)
    lens = struct.Struct(f"<{count}H")
    head = struct.Struct("<iiiI")

    def split_event() -> int:
        sizes = lens.unpack_from(frame, 8)
        offset = 8 + 2 * count
        out = []
        for n in sizes:
            msg = frame[offset : offset + n]
            offset += n
            out.append(head.pack(24 + n, 9, 1, n) + msg)
        return len(out)

    results.append(("split+event per 64 B message", 64, measure(split_event, args.seconds)))

    def empty() -> None:
        return None

    def calls() -> int:
        for _ in range(1000):
            empty()
        return 1000

    results.append(("call (empty function)", 0, measure(calls, args.seconds)))
    rx.close()
    tx.close()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    for name, size, us in results:
        print(f"  {name:32s} {size:5d} B  {us:7.3f} us CPU per item")
    return 0


if __name__ == "__main__":
    sys.exit(main())
