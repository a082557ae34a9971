"""Identifiers, time and sequence arithmetic shared by every core.

Time is an integer count of nanoseconds (`Instant` on the runtime's monotonic
clock or the simulator's virtual clock, `Duration` for spans), so cores never
mix floats into deadlines. Sequence numbers are 32-bit and wrap; they are
compared with serial-number arithmetic (RFC 1982), which is what totemsrp's
`sq_lt_compare` does for the same reason: a long-lived ring overflows u32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

NodeId = NewType("NodeId", int)
"""A cluster node id: u32, never 0 (0 marks a leave JOIN and votequorum's qdevice)."""

Instant = NewType("Instant", int)
"""A point in time, in nanoseconds since an arbitrary origin."""

Duration = NewType("Duration", int)
"""A span of time in nanoseconds."""

NS_PER_MS = 1_000_000
SEQ_MODULUS = 1 << 32
SEQ_HALF = 1 << 31
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def ms(value: float) -> Duration:
    """Return `value` milliseconds as a Duration."""
    return Duration(round(value * NS_PER_MS))


def to_ms(value: int) -> float:
    """Return a Duration or Instant in (float) milliseconds, for logs and reports."""
    return value / NS_PER_MS


def after(now: Instant, span: Duration) -> Instant:
    """Return the instant `span` after `now`."""
    return Instant(now + span)


@dataclass(frozen=True, slots=True, order=True)
class RingId:
    """A ring's identity: its representative (lowest node id at formation) and a growing seq (u64).

    Ordering compares `seq` first, as the ring seq is what grows across reformations.
    """

    seq: int
    rep: NodeId

    def __str__(self) -> str:
        # corosync prints rings as "rep.seq-in-hex" ("A new membership (1.d) was formed").
        return f"{self.rep}.{self.seq:x}"


NO_RING = RingId(0, NodeId(0))


def seq_add(a: int, n: int) -> int:
    """Return `a + n` modulo 2**32."""
    return (a + n) % SEQ_MODULUS


def seq_diff(a: int, b: int) -> int:
    """Return the signed distance a - b in serial-number arithmetic (range -2**31 .. 2**31-1)."""
    d = (a - b) % SEQ_MODULUS
    return d - SEQ_MODULUS if d >= SEQ_HALF else d


def seq_lt(a: int, b: int) -> bool:
    """Is `a` before `b` (wrap-around aware)?"""
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    """Is `a` before or equal to `b` (wrap-around aware)?"""
    return seq_diff(a, b) <= 0


def seq_max(a: int, b: int) -> int:
    """Return the later of two sequence numbers."""
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    """Return the earlier of two sequence numbers."""
    return a if seq_lt(a, b) else b
