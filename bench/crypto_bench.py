"""Throughput of sealing and opening native-transport frames (cmanlk.runtime.crypto).

    python bench/crypto_bench.py [--seconds S]

Prints, for 64-byte and 1400-byte payloads, the time per seal, per open and per seal+open, and the
resulting frames/s and MB/s of payload on one core. Nothing is asserted: figures depend on the host.
"""

from __future__ import annotations

import argparse
import os
import time

from cmanlk.runtime.crypto import SEAL_OVERHEAD_BYTES, FrameOpener, FrameSealer
from cmanlk.types import NodeId

KEY = os.urandom(256)


def measure(size: int, seconds: float) -> tuple[float, float, int]:
    """Return (µs per seal, µs per open, frames) over about `seconds` of each phase."""
    sealer = FrameSealer(KEY, "bench", NodeId(1), os.urandom)
    opener = FrameOpener(KEY, "bench")
    payload = os.urandom(size)
    batch = 1000  # read the clock once per batch, not per frame
    frames: list[bytes] = []
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        frames.extend(sealer.seal(payload) for _ in range(batch))
    seal_s = time.perf_counter() - start
    start = time.perf_counter()
    for frame in frames:
        opener.open(frame)
    open_s = time.perf_counter() - start
    n = len(frames)
    return seal_s / n * 1e6, open_s / n * 1e6, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent sealing per size")
    args = parser.parse_args()
    print(f"seal overhead: {SEAL_OVERHEAD_BYTES} bytes per frame (24-byte header + 16-byte tag)")
    print(f"{'payload':>8} {'seal µs':>9} {'open µs':>9} {'both µs':>9} {'frames/s':>10} {'MB/s':>8}")
    for size in (64, 1400):
        seal_us, open_us, _n = measure(size, args.seconds)
        both = seal_us + open_us
        rate = 1e6 / both
        mbps = rate * size / 1e6
        print(f"{size:>8} {seal_us:>9.2f} {open_us:>9.2f} {both:>9.2f} {rate:>10.0f} {mbps:>8.1f}")


if __name__ == "__main__":
    main()
