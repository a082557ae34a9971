"""totempg packing/fragmentation: corosync's frame layout, round trips, and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmanlk.errors import ErrorCode, MalformedPacket, QueueFull, TooLarge, UsageError
from cmanlk.totem.events import Guarantee
from cmanlk.totem.totempg import (
    DEFAULT_MAX_QUEUE_BYTES,
    MAX_ASSEMBLIES,
    MESSAGE_SIZE_MAX,
    Frame,
    Packer,
    Unpacker,
    decode_frame,
    encode_frame,
)
from cmanlk.types import NodeId

MAX_FRAME = 1410  # corosync default: netmtu 1500 - 2 * 45
A = NodeId(1)
B = NodeId(2)


def drain(packer: Packer, limit: int = 100_000) -> list[tuple[bytes, Guarantee]]:
    frames = []
    for _ in range(limit):
        item = packer.pop_frame()
        if item is None:
            return frames
        frames.append(item)
    raise AssertionError("packer never ran dry")


def header(frame: bytes) -> tuple[int, int, int, int, int]:
    return struct.unpack_from("<hhBBH", frame, 0)


def lens(frame: bytes) -> list[int]:
    count = header(frame)[4]
    return list(struct.unpack_from(f"<{count}H", frame, 8))


# --- the captured corosync example -------------------------------------------------------------


def test_4189_byte_message_goes_out_as_corosync_sent_it():
    packer = Packer(MAX_FRAME)
    message = bytes(i % 251 for i in range(4189))
    packer.push(message)
    frames = [f for f, _ in drain(packer)]
    assert [len(f) for f in frames] == [1410, 1410, 1399]  # + 45-byte MCAST header = 1455/1455/1444
    assert [header(f) for f in frames] == [(0, 0, 1, 0, 1), (0, 0, 2, 1, 1), (0, 0, 0, 2, 1)]
    assert [lens(f) for f in frames] == [[1400], [1400], [1389]]
    assert b"".join(f[10:] for f in frames) == message


def test_tail_of_fragmented_message_is_packed_with_next_small_message():
    packer = Packer(MAX_FRAME)
    downlist = b"D" * 1573  # 5-byte group header + 1568-byte CPG DOWNLIST
    barrier = b"B" * 40  # 8-byte "sync" group header + 32-byte BARRIER
    packer.push(downlist)
    packer.push(barrier)
    first, second = (f for f, _ in drain(packer))
    assert header(first)[2:] == (1, 0, 1) and lens(first) == [1400]
    assert header(second)[2:] == (0, 1, 2) and lens(second) == [173, 40]
    unpacker = Unpacker()
    assert unpacker.feed(A, first) == []
    assert unpacker.feed(A, second) == [downlist, barrier]


def test_small_messages_are_packed_into_one_frame():
    packer = Packer(MAX_FRAME)
    for i in range(10):
        packer.push(bytes([i]) * 64)
    assert packer.pending_messages == 10
    frames = drain(packer)
    assert len(frames) == 1
    frame, guarantee = frames[0]
    assert guarantee is Guarantee.AGREED
    assert header(frame) == (0, 0, 0, 0, 10)
    assert lens(frame) == [64] * 10
    assert len(frame) == 8 + 2 * 10 + 640
    assert not packer.has_pending() and packer.pending_messages == 0 and packer.pending_bytes == 0


def test_message_that_just_fits_is_sent_unfragmented_and_closes_the_frame():
    packer = Packer(MAX_FRAME)
    packer.push(b"x" * 1400)  # exactly the room of a one-piece frame
    packer.push(b"y" * 10)
    first, second = (f for f, _ in drain(packer))
    assert header(first) == (0, 0, 0, 0, 1) and len(first) == MAX_FRAME
    assert header(second) == (0, 0, 0, 0, 1) and lens(second) == [10]


def test_message_without_room_for_one_more_length_is_split():
    # corosync packs a message whole only if it leaves room for another length field and a byte.
    packer = Packer(MAX_FRAME)
    packer.push(b"a" * 1398)
    frames = [f for f, _ in drain(packer)]
    assert len(frames) == 1 and lens(frames[0]) == [1398]  # 1398 is not < 1398: the "just fits" path
    packer.push(b"a" * 1397)
    packer.push(b"b" * 5)
    frames = [f for f, _ in drain(packer)]
    # 1397 is packed whole; "b" * 5 then has one byte of room, so (like corosync) one byte of it
    # fills the frame and the other four follow as a continuation.
    assert lens(frames[0]) == [1397, 1] and len(frames[0]) == MAX_FRAME
    assert header(frames[0])[2:] == (1, 0, 2)
    assert header(frames[1])[2:] == (0, 1, 1) and lens(frames[1]) == [4]


def test_frames_never_mix_guarantees():
    packer = Packer(MAX_FRAME)
    packer.push(b"a1")
    packer.push(b"a2")
    packer.push(b"s1", Guarantee.SAFE)
    packer.push(b"a3")
    frames = drain(packer)
    assert [g for _, g in frames] == [Guarantee.AGREED, Guarantee.SAFE, Guarantee.AGREED]
    assert [decode_frame(f).pieces for f, _ in frames] == [(b"a1", b"a2"), (b"s1",), (b"a3",)]


def test_fragment_counter_wraps_skipping_zero():
    packer = Packer(MAX_FRAME)
    packer.push(b"z" * (1400 * 300))
    frames = [f for f, _ in drain(packer)]
    assert len(frames) == 300
    fragmented = [header(f)[2] for f in frames]
    continuation = [header(f)[3] for f in frames]
    assert fragmented[:3] == [1, 2, 3]
    assert fragmented[254:257] == [255, 1, 2]  # 255 wraps to 1, never 0
    assert fragmented[-1] == 0
    assert 0 not in fragmented[:-1]
    assert continuation == [0, *fragmented[:-1]]
    unpacker = Unpacker()
    delivered = [m for f in frames for m in unpacker.feed(A, f)]
    assert delivered == [b"z" * (1400 * 300)]


def test_counter_restarts_for_each_message():
    packer = Packer(MAX_FRAME)
    packer.push(b"p" * 3000)
    packer.push(b"q" * 3000)
    frames = [f for f, _ in drain(packer)]
    flags = [header(f)[2:4] for f in frames]
    # p: frag 1, frag 2 (cont 1); then p's tail shares a frame with q's first piece (frag 1 again).
    assert flags[0] == (1, 0)
    assert flags[1] == (2, 1)
    assert flags[2] == (1, 2)
    unpacker = Unpacker()
    assert [m for f in frames for m in unpacker.feed(A, f)] == [b"p" * 3000, b"q" * 3000]


# --- queue bounds -------------------------------------------------------------------------------


def test_push_refuses_empty_and_too_large_messages():
    packer = Packer(MAX_FRAME)
    with pytest.raises(UsageError, match="empty") as empty:
        packer.push(b"")
    assert empty.value.code is ErrorCode.INVALID_PARAM
    with pytest.raises(TooLarge, match="exceeds the maximum"):
        packer.push(b"x" * (MESSAGE_SIZE_MAX + 1))
    packer.push(b"x" * MESSAGE_SIZE_MAX)
    assert packer.max_message_bytes == MESSAGE_SIZE_MAX
    assert packer.pending_bytes == MESSAGE_SIZE_MAX


def test_push_refuses_when_queue_is_full_and_leaves_queue_intact():
    packer = Packer(MAX_FRAME, max_queue_bytes=10_000)
    packer.push(b"a" * 5000)
    free = packer.free_bytes
    with pytest.raises(QueueFull, match="send queue full"):
        packer.push(b"b" * 5000)
    assert packer.free_bytes == free
    assert packer.pending_messages == 1
    drain(packer)
    packer.push(b"b" * 5000)  # room again after the frames went out
    assert packer.pending_messages == 1


def test_many_tiny_messages_are_bounded_by_entry_cost():
    packer = Packer(MAX_FRAME)
    pushed = 0
    with pytest.raises(QueueFull, match="send queue full"):
        for _ in range(DEFAULT_MAX_QUEUE_BYTES):
            packer.push(b"t")
            pushed += 1
    assert 0 < pushed < DEFAULT_MAX_QUEUE_BYTES // 50


def test_partially_sent_message_frees_queue_space_as_it_goes():
    packer = Packer(MAX_FRAME)
    packer.push(b"m" * 5000)
    assert packer.pop_frame() is not None
    assert packer.pending_messages == 1
    assert packer.pending_bytes == 3600


def test_tiny_or_huge_frame_size_is_refused():
    with pytest.raises(ValueError):
        Packer(10)
    with pytest.raises(ValueError):
        Packer(0x10000)
    Packer(0xFFFF).push(b"x" * 100_000)


# --- round trips ---------------------------------------------------------------------------------

messages = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=80),
        st.binary(min_size=1300, max_size=1500),
        st.integers(1, 9000).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
    ).filter(lambda b: len(b) > 0),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=messages,
    guarantees=st.lists(st.sampled_from(list(Guarantee)), min_size=25, max_size=25),
    max_frame=st.sampled_from([32, 100, 576, 1410, 9000]),
    interleave=st.lists(st.integers(0, 3), min_size=25, max_size=25),
)
def test_random_sequences_round_trip(msgs, guarantees, max_frame, interleave):
    packer = Packer(max_frame)
    unpacker = Unpacker()
    delivered: list[bytes] = []
    sent_guarantees: dict[int, Guarantee] = {}
    for i, msg in enumerate(msgs):
        packer.push(msg, guarantees[i])
        sent_guarantees[i] = guarantees[i]
        for _ in range(interleave[i]):  # the token comes by now and then
            item = packer.pop_frame()
            if item is None:
                break
            frame, _g = item
            assert len(frame) <= max_frame
            delivered.extend(unpacker.feed(A, frame))
    for frame, _g in drain(packer):
        assert len(frame) <= max_frame
        delivered.extend(unpacker.feed(A, frame))
    assert delivered == msgs
    assert not unpacker.has_partial(A)
    assert unpacker.stats.broken_messages == 0


@settings(max_examples=60, deadline=None)
@given(a_msgs=messages, b_msgs=messages, order=st.lists(st.booleans(), min_size=60, max_size=60))
def test_two_originators_interleaved_reassemble_independently(a_msgs, b_msgs, order):
    pa, pb = Packer(MAX_FRAME), Packer(MAX_FRAME)
    for m in a_msgs:
        pa.push(m)
    for m in b_msgs:
        pb.push(m)
    fa = [f for f, _ in drain(pa)]
    fb = [f for f, _ in drain(pb)]
    unpacker = Unpacker()
    got: dict[NodeId, list[bytes]] = {A: [], B: []}
    i = 0
    while fa or fb:
        take_a = (order[i % len(order)] and fa) or not fb
        i += 1
        sender, frames = (A, fa) if take_a else (B, fb)
        got[sender].extend(unpacker.feed(sender, frames.pop(0)))
    assert got[A] == a_msgs and got[B] == b_msgs


def test_big_endian_frames_decode_with_swapped():
    pieces = (b"hello", b"world!")
    big = struct.pack(">hhBBH", 0, 0, 0, 0, 2) + struct.pack(">2H", 5, 6) + b"".join(pieces)
    assert decode_frame(big, swapped=True) == Frame(0, 0, pieces)
    assert Unpacker().feed(A, big, swapped=True) == list(pieces)
    with pytest.raises(MalformedPacket):
        decode_frame(big)  # read little-endian, the count is 512 and the lengths run off the end


def test_encode_decode_frame_round_trip():
    frame = Frame(3, 2, (b"", b"abc", b"x" * 300))
    assert decode_frame(encode_frame(frame)) == frame
    with pytest.raises(ValueError):
        encode_frame(Frame(0, 0, ()))
    with pytest.raises(ValueError):
        encode_frame(Frame(256, 0, (b"a",)))


# --- broken continuations ------------------------------------------------------------------------


def fragments_of(message: bytes) -> list[bytes]:
    packer = Packer(MAX_FRAME)
    packer.push(message)
    return [f for f, _ in drain(packer)]


def test_joining_mid_message_discards_until_clean_start_and_counts_once():
    big = b"L" * 5000
    frames = fragments_of(big)
    assert len(frames) == 4
    unpacker = Unpacker()
    # We missed the first frame (we joined the ring after it was delivered).
    assert unpacker.feed(A, frames[1]) == []
    assert unpacker.feed(A, frames[2]) == []
    assert unpacker.feed(A, frames[3]) == []
    assert unpacker.stats.broken_messages == 1
    assert unpacker.stats.discarded_pieces == 3
    assert not unpacker.has_partial(A)
    # The next clean message is delivered.
    assert [m for f in fragments_of(b"ok" * 10) for m in unpacker.feed(A, f)] == [b"ok" * 10]
    assert [m for f in frames for m in unpacker.feed(A, f)] == [big]


def test_an_orphaned_tail_throws_its_whole_frame_away_as_corosync_does():
    # corosync's totempg_deliver_fn: a continuation that does not match throws the frame away
    # whole, complete messages packed behind the tail too; a node running corosync and one running
    # cmanlkd must drop the same ones, or they deliver different messages in one view.
    packer = Packer(MAX_FRAME)
    packer.push(b"T" * 1573)
    packer.push(b"small-1")
    packer.push(b"small-2")
    _first, second = (f for f, _ in drain(packer))
    unpacker = Unpacker()
    assert unpacker.feed(A, second) == []
    assert unpacker.stats.broken_messages == 1
    assert not unpacker.has_partial(A)  # that frame was not fragmented: the assembly is freed
    assert unpacker.feed(A, encode_frame(Frame(0, 0, (b"next",)))) == [b"next"]


def test_continuation_counter_mismatch_throws_the_frame_away():
    unpacker = Unpacker()
    start = encode_frame(Frame(1, 0, (b"head",)))
    wrong = encode_frame(Frame(0, 7, (b"tail", b"next")))
    assert unpacker.feed(A, start) == []
    assert unpacker.has_partial(A)
    assert unpacker.feed(A, wrong) == []
    assert unpacker.stats.broken_messages == 1
    assert not unpacker.has_partial(A)


def test_throwing_away_lasts_until_a_frame_with_fragmented_0_or_1_which_goes_too():
    unpacker = Unpacker()
    assert unpacker.feed(A, encode_frame(Frame(3, 2, (b"mid",)))) == []  # an orphan: throw away
    assert unpacker.feed(A, encode_frame(Frame(4, 3, (b"mid",)))) == []  # still throwing away
    # fragmented 1 ends the throwing away; corosync delivers nothing of this frame either and keeps
    # its last piece, with last_frag_num still 0, so the next continuation 1 is an orphan again.
    assert unpacker.feed(A, encode_frame(Frame(1, 4, (b"end", b"ok", b"head")))) == []
    assert unpacker.feed(A, encode_frame(Frame(0, 1, (b"tail",)))) == []
    assert unpacker.feed(A, encode_frame(Frame(0, 0, (b"fine",)))) == [b"fine"]
    assert unpacker.stats.broken_messages == 2


def test_clean_start_while_half_assembled_throws_both_away():
    unpacker = Unpacker()
    assert unpacker.feed(A, encode_frame(Frame(1, 0, (b"head",)))) == []
    assert unpacker.feed(A, encode_frame(Frame(0, 0, (b"fresh",)))) == []
    assert unpacker.stats.broken_messages == 1
    assert unpacker.feed(A, encode_frame(Frame(0, 0, (b"fresh",)))) == [b"fresh"]


def test_a_visit_does_not_end_inside_a_message_it_could_have_sent_whole_later():
    packer = Packer(MAX_FRAME)
    packer.push(b"a" * 1000)
    packer.push(b"b" * 1000)  # does not fit behind a: corosync-style packing would split it
    first, _ = packer.pop_frame(frames_left=1) or (b"", None)
    assert decode_frame(first).pieces == (b"a" * 1000,)  # closed before b: b is not left half sent
    assert decode_frame(first).fragmented == 0
    # With room for two frames, b is split over them as before.
    packer = Packer(MAX_FRAME)
    packer.push(b"a" * 1000)
    packer.push(b"b" * 1000)
    frames = [packer.pop_frame(frames_left=2), packer.pop_frame(frames_left=1)]
    assert [decode_frame(f).fragmented for f, _ in frames if f] == [1, 0]
    assert not packer.has_pending()


def test_forget_and_reset_drop_partials_silently():
    unpacker = Unpacker()
    unpacker.feed(A, encode_frame(Frame(1, 0, (b"a",))))
    unpacker.feed(B, encode_frame(Frame(1, 0, (b"b",))))
    unpacker.forget(A)
    assert not unpacker.has_partial(A) and unpacker.has_partial(B)
    unpacker.reset()
    assert not unpacker.has_partial(B)
    assert unpacker.stats.broken_messages == 0
    # After forget, A's continuation is an orphan.
    assert unpacker.feed(A, encode_frame(Frame(0, 1, (b"rest",)))) == []


def test_reassembly_is_bounded():
    unpacker = Unpacker()
    piece = b"g" * 60_000
    unpacker.feed(A, encode_frame(Frame(1, 0, (piece,))))
    with pytest.raises(MalformedPacket) as err:
        for _ in range(40):  # 40 × 60 kB > 1 MiB + 64 KiB
            unpacker.feed(A, encode_frame(Frame(1, 1, (piece,))))
    assert err.value.reason == "pg-too-large"
    assert not unpacker.has_partial(A)


def test_number_of_partial_originators_is_bounded():
    unpacker = Unpacker()
    start = encode_frame(Frame(1, 0, (b"s",)))
    for n in range(1, MAX_ASSEMBLIES + 1):
        unpacker.feed(NodeId(n), start)
    with pytest.raises(MalformedPacket) as err:
        unpacker.feed(NodeId(MAX_ASSEMBLIES + 1), start)
    assert err.value.reason == "pg-too-many-assemblies"


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "pg-short"),
        (b"\x00" * 7, "pg-short"),
        (struct.pack("<hhBBH", 1, 0, 0, 0, 1) + b"\x01\x00x", "pg-version"),
        (struct.pack("<hhBBH", 0, 3, 0, 0, 1) + b"\x01\x00x", "pg-version"),
        (struct.pack("<hhBBH", 0, 0, 0, 0, 0), "pg-empty"),
        (struct.pack("<hhBBH", 0, 0, 0, 0, 3) + b"\x01\x00", "pg-short-lens"),
        (struct.pack("<hhBBH", 0, 0, 0, 0, 1) + b"\x05\x00abc", "pg-length"),
        (struct.pack("<hhBBH", 0, 0, 0, 0, 1) + b"\x01\x00abc", "pg-length"),
    ],
)
def test_malformed_frames_raise_with_reason(data, reason):
    unpacker = Unpacker()
    with pytest.raises(MalformedPacket) as err:
        unpacker.feed(A, data)
    assert err.value.reason == reason


def _valid_frames() -> list[bytes]:
    packer = Packer(200)
    for m in (b"a" * 10, b"b" * 500, b"c" * 3, b"d" * 190):
        packer.push(m)
    return [f for f, _ in drain(packer)]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    stream=st.lists(st.integers(0, 5), min_size=1, max_size=12),
)
def test_mutated_frames_only_deliver_or_raise_malformed(data, stream):
    valid = _valid_frames()
    unpacker = Unpacker()
    for choice in stream:
        if choice == 5:
            frame = data.draw(st.binary(max_size=300))
        else:
            frame = bytearray(valid[choice % len(valid)])
            for _ in range(data.draw(st.integers(0, 3))):
                pos = data.draw(st.integers(0, len(frame) - 1))
                frame[pos] = data.draw(st.integers(0, 255))
            if data.draw(st.booleans()):
                frame = frame[: data.draw(st.integers(0, len(frame)))]
            frame = bytes(frame)
        try:
            out = unpacker.feed(A, frame, swapped=data.draw(st.booleans()))
        except MalformedPacket:
            continue
        assert all(isinstance(m, bytes) for m in out)
        assert sum(len(m) for m in out) <= MESSAGE_SIZE_MAX + 64 * 1024
