"""Service-layer wire helpers: group header, libqb headers, 8-byte alignment (corosync-wire.md §4, §6)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire


def test_group_a_prefix_is_five_bytes_and_sync_eight():
    assert svcwire.encode_group_message(b"a", b"X") == b"\x01\x00\x01\x00aX"
    assert len(svcwire.encode_group_message(b"sync", b"")) == 8


@given(st.sampled_from([b"a", b"sync"]), st.binary(max_size=200))
def test_group_message_round_trips(group, body):
    assert svcwire.decode_group_message(svcwire.encode_group_message(group, body)) == ((group,), body)


def test_decode_group_message_with_two_groups():
    payload = struct.pack("<HHH", 2, 1, 4) + b"async" + b"body"
    assert svcwire.decode_group_message(payload) == ((b"a", b"sync"), b"body")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",
        b"\x00\x00",
        b"\x01\x00",
        b"\x01\x00\x05\x00ab",
        b"\x01\x00\x00\x00",
        b"\xff\xff" + bytes(10),
    ],
)
def test_bad_group_headers_raise_malformed(payload):
    with pytest.raises(MalformedPacket):
        svcwire.decode_group_message(payload)


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_malformed(data):
    try:
        svcwire.decode_group_message(data)
    except MalformedPacket:
        pass


def test_request_header_is_sixteen_bytes_with_padding():
    header = svcwire.encode_request_header(svcwire.service_message_id(5, 1), 28)
    assert header == struct.pack("<i4xi4x", 0x50001, 28)
    assert len(header) == 16
    assert svcwire.decode_request_header(header + b"x") == svcwire.RequestHeader(0x50001, 28)
    with pytest.raises(MalformedPacket):
        svcwire.decode_request_header(header[:15])


def test_response_header_is_twenty_four_bytes():
    raw = svcwire.encode_response_header(0x20002, 168, 1)
    assert len(raw) == 24
    assert svcwire.decode_response_header(raw) == (0x20002, 168, 1)


def test_split_message_id():
    assert svcwire.split_message_id(svcwire.service_message_id(2, 5)) == (2, 5)


def test_aligned_layout_of_cmap_sync_header_fields():
    # cmap's sync message: four u8 fields in 8-byte slots after the header → 48 bytes (§7).
    offsets, size = svcwire.aligned_layout([1, 1, 1, 1])
    assert offsets == [16, 24, 32, 40]
    assert size == 48


def test_aligned_layout_of_sync_service_build():
    # SERVICE_BUILD: ring id (12) at 16, entries at 32, list[128] at 40 → 552 bytes (§7).
    offsets, size = svcwire.aligned_layout([12, 4, 4 * 128])
    assert offsets == [16, 32, 40]
    assert size == 552


def test_check_size_refuses_short_messages():
    header = svcwire.encode_request_header(0, 32)
    with pytest.raises(MalformedPacket, match="barrier_short"):
        svcwire.check_size(header + bytes(4), 32, "barrier")
    assert svcwire.check_size(header + bytes(16), 32, "barrier").size == 32


def test_c_string_and_pad():
    assert svcwire.c_string(b"abc\0def") == b"abc"
    assert svcwire.pad_to(b"ab", 4) == b"ab\0\0"
    with pytest.raises(ValueError):
        svcwire.pad_to(b"abc", 2)
