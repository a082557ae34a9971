"""TotemConfig.derive reproduces corosync 3.1.7's timer derivations (reference §5)."""

from __future__ import annotations

import pytest

from cmanlk.totem.config import TotemConfig
from cmanlk.types import NodeId, ms

THREE = [NodeId(1), NodeId(2), NodeId(3)]


def test_three_nodes_default():
    c = TotemConfig.derive(THREE)
    assert (c.token_ms, c.token_retransmit_ms, c.hold_ms, c.consensus_ms) == (3650, 869, 685, 4380)
    assert c.token_warning_ms == 2737
    assert (c.join_ms, c.merge_ms, c.downcheck_ms) == (50, 200, 1000)
    assert (c.window_size, c.max_messages, c.miss_count_const) == (50, 17, 5)
    assert (c.fail_recv_const, c.seqno_unchanged_const) == (2500, 30)
    assert c.token == ms(3650) and c.consensus == ms(4380) and c.hold == ms(685)
    assert c.token_retransmit == ms(869) and c.join == ms(50) and c.merge == ms(200)


def test_three_nodes_token_1000():
    c = TotemConfig.derive(THREE, token_ms=1000)
    assert (c.token_ms, c.token_retransmit_ms, c.hold_ms, c.consensus_ms) == (1650, 392, 303, 1980)
    assert c.token_warning_ms == 1237


def test_two_nodes_get_no_coefficient():
    c = TotemConfig.derive([NodeId(1), NodeId(2)])
    assert (c.token_ms, c.token_retransmit_ms, c.hold_ms, c.consensus_ms) == (3000, 714, 561, 3600)
    one = TotemConfig.derive([NodeId(1)])
    assert one.token_ms == 3000


def test_coefficient_grows_with_nodes_and_can_be_set():
    assert TotemConfig.derive([NodeId(i) for i in range(1, 6)]).token_ms == 3000 + 3 * 650
    assert TotemConfig.derive(THREE, token_coefficient_ms=0).token_ms == 3000
    assert TotemConfig.derive(THREE, token_coefficient_ms=100).token_ms == 3100


def test_nodelist_is_sorted_and_deduplicated():
    c = TotemConfig.derive([NodeId(3), NodeId(1), NodeId(3), NodeId(2)])
    assert c.nodes == (1, 2, 3)
    assert c.token_ms == 3650  # duplicates do not count towards the coefficient
    assert c.with_nodes((NodeId(5), NodeId(4))).nodes == (4, 5)
    assert c.with_nodes((NodeId(5), NodeId(4))).token_ms == 3650  # timers kept on reload


def test_explicit_values_win():
    c = TotemConfig.derive(THREE, token_retransmit_ms=500, hold_ms=100, consensus_ms=9000)
    assert (c.token_ms, c.token_retransmit_ms, c.hold_ms, c.consensus_ms) == (3650, 500, 100, 9000)
    # hold derives from an explicit token_retransmit.
    assert TotemConfig.derive(THREE, token_retransmit_ms=500).hold_ms == 390


def test_retransmits_before_loss_changes_retransmit():
    c = TotemConfig.derive(THREE, token_retransmits_before_loss_const=10)
    assert c.token_retransmit_ms == int(3650 / 10.2) == 357


def test_consensus_below_join_is_refused():
    with pytest.raises(ValueError, match="consensus"):
        TotemConfig.derive(THREE, consensus_ms=40, join_ms=50)
    # A derived consensus is never below join.
    assert TotemConfig.derive([NodeId(1)], token_ms=10, join_ms=50).consensus_ms == 50


def test_max_messages_above_window_is_refused():
    with pytest.raises(ValueError, match="max_messages"):
        TotemConfig.derive(THREE, max_messages=60, window_size=50)


def test_max_frame_leaves_room_for_two_mcast_headers():
    assert TotemConfig.derive(THREE).max_frame_bytes == 1410
    assert TotemConfig.derive(THREE, netmtu=9000).max_frame_bytes == 8910
