"""Shared types: u32 sequence arithmetic across the wrap, ring ids, time units."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cmanlk.types import (
    NO_RING,
    SEQ_HALF,
    SEQ_MODULUS,
    U32_MAX,
    Duration,
    Instant,
    NodeId,
    RingId,
    after,
    ms,
    seq_add,
    seq_diff,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    to_ms,
)

u32 = st.integers(0, U32_MAX)
step = st.integers(-(SEQ_HALF - 1), SEQ_HALF - 1)


def test_seq_add_wraps_at_two_to_the_32():
    assert seq_add(U32_MAX, 1) == 0
    assert seq_add(U32_MAX - 1, 5) == 3
    assert seq_add(0, -1) == U32_MAX
    assert seq_add(7, SEQ_MODULUS) == 7


def test_comparisons_around_the_wrap():
    assert seq_lt(U32_MAX, 0)
    assert seq_lt(U32_MAX - 10, 5)
    assert not seq_lt(5, U32_MAX - 10)
    assert seq_le(U32_MAX, U32_MAX)
    assert seq_le(U32_MAX, 0)
    assert not seq_le(1, 0)
    assert seq_diff(0, U32_MAX) == 1
    assert seq_diff(U32_MAX, 0) == -1
    assert seq_diff(2, U32_MAX - 1) == 4
    assert seq_max(U32_MAX, 3) == 3
    assert seq_min(U32_MAX, 3) == U32_MAX
    assert seq_max(3, U32_MAX) == 3
    assert seq_min(3, U32_MAX) == U32_MAX


def test_half_range_is_the_horizon():
    # Serial-number arithmetic (RFC 1982): exactly half the space apart counts as "before".
    assert seq_diff(SEQ_HALF, 0) == -SEQ_HALF
    assert seq_diff(SEQ_HALF - 1, 0) == SEQ_HALF - 1
    assert seq_lt(0, SEQ_HALF - 1)
    assert seq_lt(SEQ_HALF, 0)


@given(a=u32, n=step)
def test_diff_inverts_add(a, n):
    b = seq_add(a, n)
    assert 0 <= b <= U32_MAX
    assert seq_diff(b, a) == n
    assert seq_diff(a, b) == -n
    assert seq_lt(a, b) == (n > 0)
    assert seq_le(a, b) == (n >= 0)
    assert seq_max(a, b) == (b if n > 0 else a)
    assert seq_min(a, b) == (a if n > 0 else b)


@given(a=u32, n=st.integers(1, SEQ_HALF - 1), m=st.integers(1, SEQ_HALF - 1))
def test_order_is_consistent_within_a_window(a, n, m):
    # Within a window shorter than half the space the order is transitive, whatever the wrap.
    if n + m < SEQ_HALF:
        b, c = seq_add(a, n), seq_add(a, n + m)
        assert seq_lt(a, b) and seq_lt(b, c) and seq_lt(a, c)


def test_ring_id_orders_by_seq_then_rep():
    r1 = RingId(4, NodeId(3))
    r2 = RingId(8, NodeId(1))
    r3 = RingId(8, NodeId(2))
    assert r1 < r2 < r3
    assert max([r3, r1, r2]) == r3
    assert NO_RING < r1
    assert RingId(8, NodeId(1)) == r2 and hash(RingId(8, NodeId(1))) == hash(r2)


def test_ring_id_prints_like_corosync():
    assert str(RingId(0xD, NodeId(1))) == "1.d"
    assert str(RingId(0x13D, NodeId(1))) == "1.13d"
    assert str(NO_RING) == "0.0"


def test_time_units_are_integer_nanoseconds():
    assert ms(1) == 1_000_000
    assert ms(0.5) == 500_000
    assert isinstance(ms(3650), int)
    assert to_ms(Duration(2_500_000)) == 2.5
    assert after(Instant(10), ms(2)) == 2_000_010
