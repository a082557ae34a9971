"""A small driver of the native transport for system tests, run inside a node's namespace:

    ip netns exec NS python -m tests.system.linkdriver node SPEC.json
    ip netns exec SW python -m tests.system.linkdriver capture IFACE[,IFACE] NEEDLE_HEX SECONDS

`node` starts a NativeTransport from the JSON spec, sends numbered messages to `send_to` every
`interval_ms` (if set) and prints JSON lines to stdout: {"ev": "rx", "n", "t", "link", "src"} per
delivery (t = CLOCK_MONOTONIC ns, shared by all namespaces) and {"ev": "status", ...} every 100 ms.
It stops after `seconds` or when stdin closes.

`capture` reads raw frames (AF_PACKET) and prints {"frames": N, "udp": N, "clear": N} where
`clear` counts frames containing NEEDLE in clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import sys
import time
from typing import Any

from cmanlk.runtime.linkstate import HeartbeatConfig, LinkMode
from cmanlk.runtime.native import NativeConfig, NativeLink, NativeTransport
from cmanlk.types import NodeId

MESSAGE_PREFIX = b"CLEARTEXT-MARKER-"


class _TestSealer:
    """AES-GCM stand-in used only while cmanlk.runtime.crypto is not available."""

    def __init__(self, key: bytes, me: int) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key[:32])
        self._me = me

    def seal(self, payload: bytes) -> bytes:
        nonce = os.urandom(12)
        head = struct.pack("<I", self._me) + nonce
        return head + self._aead.encrypt(nonce, payload, head[:4])

    def open(self, frame: bytes) -> tuple[NodeId, bytes]:
        from cryptography.exceptions import InvalidTag

        from cmanlk.errors import MalformedPacket

        if len(frame) < 16 + 16:
            raise MalformedPacket("short-frame")
        try:
            plain = self._aead.decrypt(frame[4:16], frame[16:], frame[:4])
            return NodeId(struct.unpack_from("<I", frame)[0]), plain
        except InvalidTag:
            raise MalformedPacket("auth-failed") from None


def build(spec: dict[str, Any]) -> NativeTransport:
    me = NodeId(spec["me"])
    key = bytes.fromhex(spec["key"])
    links = tuple(NativeLink(**lk) for lk in spec["links"])
    peers = {NodeId(int(n)): {int(k): v for k, v in a.items()} for n, a in spec["peers"].items()}
    hb = HeartbeatConfig.from_token(spec.get("token_ms", 1000))
    config = NativeConfig(me, links, peers, hb, LinkMode(spec.get("mode", "passive")), True, key,
                          spec.get("cluster", "test"), rebind_trigger=spec.get("trigger"))
    try:
        import cmanlk.runtime.crypto  # noqa: F401
    except ImportError:
        stand_in = _TestSealer(key, me)
        return NativeTransport(config, sealer=stand_in, opener=stand_in)
    return NativeTransport(config)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_node(spec: dict[str, Any]) -> None:
    transport = build(spec)

    def deliver(data: bytes, src: NodeId | None, link: int) -> None:
        n = int(data[len(MESSAGE_PREFIX):].split(b"/")[0]) if data.startswith(MESSAGE_PREFIX) else -1
        emit({"ev": "rx", "n": n, "t": time.monotonic_ns(), "link": link, "src": src, "len": len(data)})

    await transport.start(deliver)
    emit({"ev": "ready", "max_payload": transport.max_payload_bytes})
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.set() if not os.read(0, 4096) else None)
    end = time.monotonic() + spec.get("seconds", 20)
    n = 0
    next_status = 0.0
    pad = b"x" * spec.get("pad", 0)
    while time.monotonic() < end and not stdin_closed.is_set():
        if spec.get("send_to"):
            n += 1
            transport.multicast(tuple(NodeId(x) for x in spec["send_to"]), MESSAGE_PREFIX + b"%d/" % n + pad)
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + 0.1
            emit({"ev": "status", "t": time.monotonic_ns(), "sent": n,
                  "local": {str(k): v for k, v in transport.local_links().items()},
                  "paths": [[p.node, p.link, p.up, p.reason] for p in transport.links()],
                  "dropped": dict(transport.stats.dropped), "dup": transport.stats.duplicates,
                  "resent": transport.stats.resent_after_cut})
        await asyncio.sleep(spec.get("interval_ms", 100) / 1000)
    await transport.close()
    emit({"ev": "done"})


def capture(ifaces: list[str], needle: bytes, seconds: float) -> None:
    socks = []
    for name in ifaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((name, 0))
        s.settimeout(0.05)
        socks.append(s)
    counts = {"frames": 0, "udp": 0, "clear": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            try:
                frame = s.recv(65535)
            except TimeoutError:
                continue
            counts["frames"] += 1
            ethertype = struct.unpack_from("!H", frame, 12)[0]
            proto = frame[14 + 9] if ethertype == 0x0800 else frame[14 + 6] if ethertype == 0x86DD else 0
            counts["udp"] += proto == 17
            counts["clear"] += needle in frame
    emit(counts)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if sys.argv[1] == "node":
        with open(sys.argv[2]) as f:
            asyncio.run(run_node(json.load(f)))
    elif sys.argv[1] == "capture":
        capture(sys.argv[2].split(","), bytes.fromhex(sys.argv[3]), float(sys.argv[4]))


if __name__ == "__main__":
    main()
