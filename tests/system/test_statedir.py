"""Durable ring seq and the status file (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmanlk.runtime import statedir
from cmanlk.types import NodeId


def test_ring_seq_round_trip_uses_corosyncs_8_byte_format(tmp_path: Path) -> None:
    assert statedir.read_ring_seq(tmp_path, NodeId(3)) == 0
    statedir.write_ring_seq(tmp_path, NodeId(3), 0x13D)
    path = tmp_path / "ringid_3"
    assert path.read_bytes() == (0x13D).to_bytes(8, "little")
    assert statedir.read_ring_seq(tmp_path, NodeId(3)) == 0x13D
    statedir.write_ring_seq(tmp_path, NodeId(3), 2**64 - 1)
    assert statedir.read_ring_seq(tmp_path, NodeId(3)) == 2**64 - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ringid_3"]  # no temporary file left


def test_ring_seq_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        statedir.write_ring_seq(tmp_path, NodeId(1), 2**64)


def test_a_torn_ring_seq_file_counts_as_absent(tmp_path: Path) -> None:
    (tmp_path / "ringid_1").write_bytes(b"\x01\x02\x03")
    assert statedir.read_ring_seq(tmp_path, NodeId(1)) == 0


def test_status_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    statedir.write_status(path, {"members": [1, 2]})
    statedir.write_status(path, {"members": [1]})
    assert json.loads(path.read_text()) == {"members": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
