"""Pure link logic of the native transport: heartbeats, up/down, link choice, dedup, codec."""

from __future__ import annotations

import random

import pytest

from cmanlk.errors import MalformedPacket
from cmanlk.runtime.linkstate import (
    DedupWindow,
    FrameType,
    HeartbeatConfig,
    InnerFrame,
    LinkMode,
    LinkTable,
    Reassembler,
    RecentSends,
    decode_inner,
    encode_inner,
    heartbeat_body,
    notice_body,
    parse_heartbeat,
    parse_notice,
    split_payload,
)
from cmanlk.types import Instant, NodeId, ms

A, B, C = NodeId(1), NodeId(2), NodeId(3)
HB = HeartbeatConfig.from_token(1000)  # ping 250 ms, timeout 500 ms


def t(ms_value: float) -> Instant:
    return Instant(ms(ms_value))


def table(mode: LinkMode = LinkMode.PASSIVE, links: dict[int, int] | None = None) -> LinkTable:
    tab = LinkTable(A, links or {0: 1, 1: 0}, (A, B, C), HB, mode)
    for link in tab.link_numbers:
        tab.set_local(link, True, t(0))
    return tab


def bring_up(tab: LinkTable, peer: NodeId, link: int, start: float = 0.0) -> None:
    for i in range(HB.pong_count):
        tab.on_pong(peer, link, t(start + i), t(start + i + 1))


def test_timers_derive_from_token_like_corosync_knet() -> None:
    assert HB.ping_interval == ms(250) and HB.timeout == ms(500) and HB.pong_count == 2
    custom = HeartbeatConfig.from_token(1000, ping_interval_ms=20, timeout_ms=60, pong_count=1)
    assert (custom.ping_interval, custom.timeout, custom.pong_count) == (ms(20), ms(60), 1)
    with pytest.raises(ValueError):
        HeartbeatConfig.from_token(1000, ping_interval_ms=100, timeout_ms=100)


def test_link_numbers_are_bounded_to_eight() -> None:
    with pytest.raises(ValueError):
        LinkTable(A, {8: 0}, (A, B), HB)
    with pytest.raises(ValueError):
        LinkTable(A, {}, (A, B), HB)


def test_path_comes_up_after_pong_count_pongs() -> None:
    tab = table()
    assert not tab.is_up(B, 0)
    assert tab.on_pong(B, 0, t(0), t(1)) == []
    changes = tab.on_pong(B, 0, t(1), t(2))
    assert [(c.node, c.link, c.now_up) for c in changes] == [(B, 0, True)]
    assert tab.is_up(B, 0)


def test_missing_pongs_take_path_down_after_timeout_not_before() -> None:
    tab = table()
    bring_up(tab, B, 0)
    assert tab.tick(t(2 + 500)) == []
    down = tab.tick(t(2 + 501))
    assert [(c.node, c.link, c.now_up, c.reason) for c in down] == [(B, 0, False, "no pong within timeout")]
    assert tab.tick(t(3000)) == []  # reported once


def test_stale_pong_is_ignored() -> None:
    tab = table()
    assert tab.on_pong(B, 0, t(0), t(600)) == []
    assert tab.status()[0].pongs_received == 0


def test_local_carrier_loss_takes_all_paths_down_at_once_and_passive_moves_to_next() -> None:
    tab = table()
    for peer in (B, C):
        bring_up(tab, peer, 0)
        bring_up(tab, peer, 1)
    assert tab.choose(B) == (0,)  # priority 1 beats 0
    changes = tab.set_local(0, False, t(10))
    assert {(c.node, c.link, c.now_up) for c in changes} == {(B, 0, False), (C, 0, False)}
    assert tab.choose(B) == (1,)
    assert tab.due_pings(t(10_000)) == [(B, 1), (C, 1)]  # no pings on a dead local link


def test_local_link_back_pings_at_once_and_returns_after_pongs() -> None:
    tab = table()
    bring_up(tab, B, 0)
    tab.set_local(0, False, t(10))
    tab.on_ping_sent(B, 0, t(5))
    assert tab.set_local(0, True, t(20)) == []
    assert (B, 0) in tab.due_pings(t(20))
    bring_up(tab, B, 0, start=20)
    assert tab.is_up(B, 0) and tab.choose(B) == (0,)


def test_peer_notice_fails_over_without_timeout() -> None:
    tab = table()
    bring_up(tab, B, 0)
    bring_up(tab, B, 1)
    changes = tab.on_peer_notice(B, 0, peer_link_up=False)
    assert [(c.link, c.reason) for c in changes] == [(0, "peer reported its interface down")]
    assert tab.choose(B) == (1,)


def test_active_mode_duplicates_on_all_up_links_and_rr_alternates() -> None:
    act = table(LinkMode.ACTIVE)
    rr = table(LinkMode.RR)
    for tab in (act, rr):
        bring_up(tab, B, 0)
        bring_up(tab, B, 1)
    assert act.choose(B) == (0, 1)
    assert [rr.choose(B) for _ in range(4)] == [(0,), (1,), (0,), (1,)]


def test_no_up_path_sends_best_effort_on_local_links() -> None:
    tab = table()
    assert tab.choose(B) == (0, 1)
    tab.set_local(0, False, t(1))
    tab.set_local(1, False, t(1))
    assert tab.choose(B) == ()


def test_equal_priority_prefers_lowest_link_number() -> None:
    tab = table(links={0: 0, 3: 0, 5: 7})
    for link in (0, 3):
        bring_up(tab, B, link)
    assert tab.choose(B) == (0,)
    bring_up(tab, B, 5)
    assert tab.choose(B) == (5,)


def test_ping_schedule_and_next_deadline() -> None:
    tab = table()
    assert tab.due_pings(t(0)) == [(B, 0), (B, 1), (C, 0), (C, 1)]
    for peer, link in tab.due_pings(t(0)):
        tab.on_ping_sent(peer, link, t(0))
    assert tab.due_pings(t(249)) == []
    assert tab.next_deadline() == t(250)
    bring_up(tab, B, 0, start=100)
    assert tab.next_deadline() == t(250)
    assert len(tab.due_pings(t(250))) == 4


def test_set_peers_keeps_existing_state_and_drops_removed() -> None:
    tab = table()
    bring_up(tab, B, 0)
    tab.set_peers((A, B, NodeId(4)), t(5))
    assert tab.peers == (B, NodeId(4))
    assert tab.is_up(B, 0)


def test_dedup_window_accepts_once_tolerates_reorder_and_resets_on_new_epoch() -> None:
    win = DedupWindow(size=64)
    assert win.accept(B, 7, 10)
    assert not win.accept(B, 7, 10)
    assert win.accept(B, 7, 12)
    assert win.accept(B, 7, 11)  # reordered between links
    assert not win.accept(B, 7, 11)
    assert win.accept(B, 7, 200)
    assert not win.accept(B, 7, 136)  # older than the window
    assert win.accept(B, 8, 1)  # sender restarted
    assert win.accept(C, 7, 10)  # per sender


def test_dedup_window_against_naive_set_on_random_duplicates() -> None:
    rng = random.Random(5)
    win = DedupWindow(size=128)
    seen: set[int] = set()
    high = 0
    for _ in range(3000):
        seq = max(0, high + rng.randint(-100, 3))
        expected = seq not in seen and high - seq < 128
        assert win.accept(B, 1, seq) == expected, seq
        if expected:
            seen.add(seq)
            high = max(high, seq)


def test_recent_sends_returns_only_that_link_within_span_once() -> None:
    rec = RecentSends(span=ms(100), bound=4)
    rec.record(t(0), B, 0, b"old")
    rec.record(t(150), B, 0, b"a")
    rec.record(t(160), C, 1, b"b")
    rec.record(t(170), C, 0, b"c")
    assert rec.take(t(200), 0) == [(B, b"a"), (C, b"c")]
    assert rec.take(t(200), 0) == []
    assert rec.take(t(200), 1, peer=B) == []
    assert rec.take(t(200), 1, peer=C) == [(C, b"b")]


def test_inner_codec_roundtrip_and_rejections() -> None:
    frame = InnerFrame(FrameType.DATA, B, 99, 3, 1 << 40, b"payload", 1, 2)
    assert decode_inner(encode_inner(frame)) == frame
    ping = InnerFrame(FrameType.PING, B, 1, 0, 5, heartbeat_body(t(3), 5))
    assert parse_heartbeat(decode_inner(encode_inner(ping)).body) == (t(3), 5)
    assert parse_notice(notice_body(2, False)) == (2, False)
    raw = encode_inner(frame)
    for bad, reason in [
        (raw[:10], "short-frame"),
        (b"\0\0" + raw[2:], "bad-magic"),
        (raw[:2] + b"\x09" + raw[3:], "bad-version"),
        (raw[:3] + b"\x63" + raw[4:], "bad-type"),
        (encode_inner(InnerFrame(FrameType.PING, B, 1, 0, 5, b"x")), "bad-length"),
    ]:
        with pytest.raises(MalformedPacket) as info:
            decode_inner(bad)
        assert info.value.reason == reason


def test_random_bytes_decode_or_raise_malformed_only() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        if rng.random() < 0.5 and len(data) > 4:
            data = b"\x4c\x4b\x01" + data[3:]
        try:
            decode_inner(data)
        except MalformedPacket:
            pass


def test_split_and_reassemble_out_of_order() -> None:
    payload = bytes(range(256)) * 10
    pieces = split_payload(payload, 1000)
    assert [len(p) for p in pieces] == [1000, 1000, 560]
    re = Reassembler()
    frames = [InnerFrame(FrameType.DATA, B, 1, 0, 50 + i, p, i, 3) for i, p in enumerate(pieces)]
    assert re.feed(frames[2]) is None
    assert re.feed(frames[0]) is None
    assert re.feed(frames[1]) == payload
    with pytest.raises(ValueError):
        split_payload(b"x" * 1000, 10)


def test_reassembler_is_bounded_per_sender() -> None:
    re = Reassembler(bound=2)
    for first in range(0, 40, 2):
        re.feed(InnerFrame(FrameType.DATA, B, 1, 0, first, b"x", 0, 2))
    assert re.dropped == 18
