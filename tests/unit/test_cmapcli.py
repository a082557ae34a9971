"""cmanlk-tool cmap: values parsed and printed as corosync-cmapctl parses and prints them."""

from __future__ import annotations

import pytest

from cmanlk.client.cmapcli import parse_value, render
from cmanlk.services.cmap.store import Value, ValueType


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("u8", "1", Value(ValueType.UINT8, b"\x01")),
        ("i32", "-2", Value(ValueType.INT32, (-2).to_bytes(4, "little", signed=True))),
        ("u64", "0x10", Value(ValueType.UINT64, (16).to_bytes(8, "little"))),
        ("str", "a b", Value(ValueType.STRING, b"a b\0")),
        ("bin", "00ff", Value(ValueType.BINARY, b"\x00\xff")),
    ],
)
def test_values_are_parsed_by_type(kind: str, text: str, expected: Value) -> None:
    assert parse_value(kind, text) == expected


def test_out_of_range_and_malformed_values_are_errors() -> None:
    for kind, text in (("u8", "256"), ("i8", "-129"), ("u32", "x"), ("bin", "zz")):
        with pytest.raises(ValueError):
            parse_value(kind, text)


def test_lines_are_corosync_cmapctls() -> None:
    assert render("totem.token", parse_value("u32", "1000")) == "totem.token (u32) = 1000"
    assert render("totem.cluster_name", parse_value("str", "c")) == "totem.cluster_name (str) = c"
    assert render("x.y.z", parse_value("dbl", "0.5")) == "x.y.z (dbl) = 0.500000"
    assert render("b.i.n", parse_value("bin", "0a0b")) == "b.i.n (bin) = 0a 0b"
