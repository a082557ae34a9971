"""The IPC frame format: round trips, incremental decoding, bounds checked before buffering,
header errors that keep the stream in sync, version negotiation."""

from __future__ import annotations

import random
import struct

import pytest

from cmanlk.client import proto as ipcproto
from cmanlk.client.proto import Frame, FrameDecoder, ProtocolError
from cmanlk.errors import ErrorCode


def test_round_trip_of_each_kind():
    frames = [
        ipcproto.request(1, "cpg_send", {"group": "g"}, b"\x00\x01"),
        ipcproto.reply(1, {"x": [1, 2]}),
        ipcproto.error(None, ErrorCode.BAD_FRAME, "why"),
        ipcproto.event("cpg_deliver", {"pid": 3}, bytes(range(256))),
    ]
    decoded = FrameDecoder().feed(b"".join(frames))
    assert decoded == [
        Frame({"kind": "request", "id": 1, "op": "cpg_send", "args": {"group": "g"}}, b"\x00\x01"),
        Frame({"kind": "reply", "id": 1, "result": {"x": [1, 2]}}),
        Frame({"kind": "error", "id": None, "code": "bad_frame", "message": "why"}),
        Frame({"kind": "event", "event": "cpg_deliver", "data": {"pid": 3}}, bytes(range(256))),
    ]
    assert [f.kind for f in decoded if isinstance(f, Frame)] == ["request", "reply", "error", "event"]


def test_layout_is_length_header_length_json_payload():
    frame = ipcproto.encode_frame({"a": 1}, b"PAY")
    assert frame == struct.pack(">II", 4 + 7 + 3, 7) + b'{"a":1}' + b"PAY"


def test_split_anywhere_decodes_the_same():
    data = ipcproto.request(7, "hello", {"versions": [1]}) + ipcproto.event("e", {}, b"x" * 5000)
    rng = random.Random(3)
    for _ in range(50):
        decoder, out, i = FrameDecoder(), [], 0
        while i < len(data):
            n = rng.randint(1, 700)
            out += decoder.feed(data[i : i + n])
            i += n
        assert len(out) == 2 and decoder.buffered == 0


@pytest.mark.parametrize(
    "prefix",
    [
        struct.pack(">II", 0xFFFFFFFF, 4),  # frame longer than any allowed
        struct.pack(">II", 2, 0),  # shorter than its own header length field
        struct.pack(">II", 100, 200),  # header longer than the frame
        struct.pack(">II", 4 + ipcproto.MAX_HEADER_BYTES + 1, ipcproto.MAX_HEADER_BYTES + 1),
        struct.pack(">II", 4 + 2 + ipcproto.MAX_PAYLOAD_BYTES + 1, 2),
    ],
)
def test_bad_lengths_are_refused_before_the_body_is_buffered(prefix):
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(prefix)
    assert info.value.code.wire == "bad_frame"


def test_bad_header_is_an_error_item_and_the_stream_goes_on():
    bad = struct.pack(">II", 4 + 3, 3) + b"[1]"  # JSON, but not an object
    decoder = FrameDecoder()
    items = decoder.feed(bad + ipcproto.reply(2))
    assert isinstance(items[0], ProtocolError) and items[0].code.wire == "bad_request"
    assert items[1] == Frame({"kind": "reply", "id": 2, "result": {}})


def test_encode_refuses_oversized_parts():
    with pytest.raises(ProtocolError):
        ipcproto.encode_frame({"x": "y" * ipcproto.MAX_HEADER_BYTES})
    biggest = ipcproto.encode_frame({}, bytes(ipcproto.MAX_PAYLOAD_BYTES))
    assert len(biggest) == 8 + 2 + ipcproto.MAX_PAYLOAD_BYTES


def test_version_negotiation():
    assert ipcproto.negotiate([1]) == 1
    assert ipcproto.negotiate([5, 1, 0]) == 1
    assert ipcproto.negotiate([1, 2]) == 2
    for bad in (None, "1", [True], [1.0]):
        with pytest.raises(ProtocolError) as info:
            ipcproto.negotiate(bad)
        assert info.value.code.wire == "bad_request"
    with pytest.raises(ProtocolError) as info:
        ipcproto.negotiate([3, 4])
    assert info.value.code.wire == "version_unsupported"
