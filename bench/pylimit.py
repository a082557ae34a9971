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

Then the floor of cmanlkd's own path (`--no-floor` skips it): the per-message steps of a 64-byte
libcpg MCAST that no batching removes, each run alone, hot, in a loop, with cmanlk's real code —

- at the sender: the request's chunk taken from a libqb SHM ring (`Ring.read`: semaphore
  try-wait, copy), the libcpg request header and length read as `CpgLib._mcast` reads them, the
  group "a" MCAST built and counted in cpg's window (`CpgService.local_mcast_message`), packed
  into totempg frames (`Packer.push`, `pop_frame`) and settled when it comes back;
- at every node (the sender delivers to its own client too): its MCAST taken out of a frame of
  five (`CpgService.deliver_frame`, the fused receive path: one CpgDeliver each), the libcpg
  DELIVER event built (`cpg.lib._deliver_event`) and written into the client's event ring
  (`Ring.write_nopost`);

— summed per node and set against corosync's measured daemon CPU per delivered message
(`cpu.daemon_us_per_msg.1sender.64` of corosync-c in a bench.run result, `--result FILE`,
default the newest in bench/results), with the one per-frame cost no design avoids shared out over
the frame's 5.5 messages (the sender's datagram to each udpu peer, a receiver's recv). What is
left out — totem's frame and token handling, the event loop, every layer's calls — comes on
top: the floor is a lower bound. With every daemon bound by CPU on the same cores, cmanlkd's
rate can be at most (corosync's CPU per message) / (cmanlkd's floor) of corosync's — the
printed ceiling.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import resource
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/pylimit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def timed(work: Callable[[], int], seconds: float, setup: Callable[[], None] = lambda: None) -> float:
    """CPU µs per item of `work` (returns its item count), `setup` before each call off the clock."""
    spent = 0.0
    items = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        setup()
        t0 = time.process_time()
        items += work()
        spent += time.process_time() - t0
    return spent * 1e6 / max(items, 1)


def path_floor(seconds: float) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The floor of cmanlkd's per-message path (module docstring): (sender steps, every node's)."""
    from cmanlk.runtime.libqb.rings import Ring
    from cmanlk.services.base import SendMessage
    from cmanlk.services.cpg import lib as cpglib
    from cmanlk.services.cpg.service import CpgJoin, CpgService, Handle
    from cmanlk.services.lib import request_header
    from cmanlk.totem.totempg import Packer
    from cmanlk.types import NodeId, RingId

    n = 500
    me, peer = NodeId(1), NodeId(2)
    group, handle, payload = b"cmkbench", Handle(7), b"p" * 64
    svc = CpgService(me)
    svc.sync_init(RingId(4, me), (me, peer), (me, peer))
    svc.sync_process()
    svc.sync_activate()
    for out in svc.on_local_request(CpgJoin(handle, group, 4242)):  # its PROCJOIN delivered back
        if isinstance(out, SendMessage):
            svc.on_message(me, out.function, out.message)
    message = svc.local_mcast_message(handle, group, payload)  # a whole MCAST of group "a"
    request = struct.pack("<i4xi4x", 2, 40 + 64) + bytes(16) + struct.pack("<I4x", 64) + payload
    u32 = struct.Struct("<I")

    sender: list[tuple[str, float]] = []
    every: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cmkpylimit-") as tmp:
        ring = Ring.create(f"{tmp}/ring", 1 << 20)
        try:

            def fill() -> None:
                for _ in range(n):
                    ring.write(request)

            def take() -> int:
                read = ring.read
                for _ in range(n):
                    read()
                return n

            sender.append(("libqb request ring read", timed(take, seconds, fill)))

            def decode() -> int:
                for _ in range(n):
                    request_header(request)
                    (msglen,) = u32.unpack_from(request, 32)
                    request[40 : 40 + msglen]
                return n

            sender.append(("libcpg MCAST request decode", timed(decode, seconds)))

            def build() -> int:
                make = svc.local_mcast_message
                for _ in range(n):
                    make(handle, group, payload)
                return n

            def settle() -> None:
                svc._settle(svc._send_seq)

            sender.append(("cpg MCAST build + window", timed(build, seconds, settle)))
            packer = Packer(1410)

            def pack() -> int:
                push = packer.push
                for _ in range(n):
                    push(message)
                while packer.pop_frame() is not None:
                    pass
                return n

            sender.append(("totempg pack (push, pop_frame)", timed(pack, seconds)))
            frame_pieces = 5
            body = b"".join(
                svc.local_mcast_message(handle, group, payload) for _ in range(frame_pieces)
            )
            settle()
            lens = tuple(len(message) for _ in range(frame_pieces))

            assert len(svc.deliver_frame(me, body, 0, lens) or []) == frame_pieces

            def receive() -> int:
                deliver = svc.deliver_frame
                for _ in range(n // frame_pieces):
                    deliver(me, body, 0, lens)
                return (n // frame_pieces) * frame_pieces

            every.append(("cpg fused receive (deliver_frame)", timed(receive, seconds)))
            (note,) = svc.deliver_frame(me, message, 0, (len(message),)) or [None]
            assert note is not None

            def events() -> int:
                event = cpglib._deliver_event
                for _ in range(n):
                    event(note)
                return n

            every.append(("libcpg DELIVER event build", timed(events, seconds)))
            data = cpglib._deliver_event(note)

            def write() -> int:
                put = ring.write_nopost
                for _ in range(n):
                    put(data)
                return n

            def reset() -> None:
                # write_nopost posts nothing: take the chunks back by position
                while ring._read_pt != ring._write_pt:
                    ring._take()

            every.append(("libqb event ring write", timed(write, seconds, reset)))
        finally:
            ring.close()
    return sender, every


def newest_result() -> Path | None:
    here = Path(__file__).resolve().parent / "results"
    best: tuple[str, Path] | None = None
    for name in glob.glob(str(here / "run-*.json")):
        try:
            started = str(json.loads(Path(name).read_text()).get("started_at", ""))
        except (OSError, ValueError):
            continue
        if best is None or started > best[0]:
            best = (started, Path(name))
    return None if best is None else best[1]


def print_floor(seconds: float, result: Path | None, sockets: list[tuple[str, int, float]]) -> None:
    sender, every = path_floor(seconds)
    data = json.loads(result.read_text()) if result is not None else {}
    nodes = int(data.get("settings", {}).get("nodes", 3))
    # Per frame, shared by the messages a 1410-byte frame carries (64 B: 5.5): the sender's
    # datagram to each udpu peer (sendto or sendmmsg, the cheaper), each receiver's recv.
    per_frame = (1410 - 8) / (5 + 184 + 64 + 2)
    by_name = {(name, size): us for name, size, us in sockets}
    send_us = min(by_name[("sendto (+drain)", 1410)], by_name[(f"sendmmsg x{BATCH} (+drain)", 1410)])
    sender.append((f"frame to {nodes - 1} peers / {per_frame:.1f} msgs", send_us * (nodes - 1) / per_frame))
    receiver_only = [(f"frame recv_into / {per_frame:.1f} msgs", by_name[("recv_into", 1410)] / per_frame)]
    print("cmanlkd's per-message floor, 64 B libcpg MCAST (cmanlk's own code, each step alone):")
    for name, us in sender:
        print(f"  sender    {name:36s} {us:7.3f} us CPU per message")
    for name, us in every:
        print(f"  each node {name:36s} {us:7.3f} us CPU per message")
    for name, us in receiver_only:
        print(f"  receiver  {name:36s} {us:7.3f} us CPU per message")
    at_sender = sum(us for _, us in sender) + sum(us for _, us in every)
    at_receiver = sum(us for _, us in every) + sum(us for _, us in receiver_only)
    print(f"  floor: sender {at_sender:.2f} us, each receiver {at_receiver:.2f} us per delivered message")
    if result is None:
        print("  (no bench.run result to compare with: --result FILE)")
        return
    nproc = int(data.get("host", {}).get("nproc", os.cpu_count() or 1))
    coro = data.get("systems", {}).get("corosync-c", {}).get("figures", {})
    coro_us = coro.get("cpu.daemon_us_per_msg.1sender.64")
    coro_rate = coro.get("throughput.1sender.64.msgs_per_s")
    if not coro_us:
        print(f"  ({result.name} has no corosync-c cpu.daemon_us_per_msg.1sender.64)")
        return
    floor_mean = (at_sender + (nodes - 1) * at_receiver) / nodes
    ring_ceiling = nproc / (nodes * floor_mean * 1e-6)
    sender_ceiling = 1 / (at_sender * 1e-6)
    ceiling = min(ring_ceiling, sender_ceiling)
    load = data.get("host", {}).get("loadavg_before", ["?"])[0]
    print(f"  corosync-c in {result.name} (load {load}): {coro_us:.2f} us daemon CPU per delivered"
          f" message (mean of {nodes} nodes), {coro_rate or 0:,.0f} msg/s")
    print(f"  cmanlkd's floor, mean of {nodes} nodes: {floor_mean:.2f} us ="
          f" {floor_mean / coro_us:.2f}x corosync's whole daemon cost")
    print(f"  ceiling: {nproc} cores / ({nodes} daemons x {floor_mean:.2f} us) = {ring_ceiling:,.0f} msg/s;"
          f" the sender alone 1 / {at_sender:.2f} us = {sender_ceiling:,.0f} msg/s")
    if coro_rate:
        print(f"  => at most {ceiling:,.0f} msg/s = {ceiling / coro_rate:.2f}x corosync-c's {coro_rate:,.0f}"
              " with nothing but these steps (per-frame, token and loop costs come on top)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--no-floor", action="store_true", help="only the bare syscall and call costs")
    ap.add_argument("--result", type=Path, default=None, help="bench.run result for corosync's figures")
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
    if not args.no_floor:
        print_floor(args.seconds, args.result or newest_result(), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
