"""The EVS checker finds each violation in a hand-made history, and accepts a correct one.

The baseline is a 3-node ring A=(1,2,3) where every node sends one message, then
node 3 crashes and 1 and 2 move through transitional (1,2) to ring B=(1,2), where
node 1 sends two more. Each test breaks one property of that history.
"""

from __future__ import annotations

import pytest

from cmanlk.sim.history import Booted, Crashed, Delivered, Installed, Record, Sent
from cmanlk.sim.invariants import LivenessSpec, Violation, check
from cmanlk.totem.actions import ConfigKind
from cmanlk.totem.events import Guarantee
from cmanlk.types import Duration, Instant, NodeId, RingId

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)
A = RingId(4, N1)
B = RingId(8, N1)
M11, M21, M31 = b"m1.1|", b"m2.1|", b"m3.1|"
M12, M13 = b"m1.2|", b"m1.3|"
MS = 1_000_000


def t(ms: float) -> Instant:
    return Instant(int(ms * MS))


def reg(at: float, ring: RingId, *members: int) -> Installed:
    return Installed(t(at), ConfigKind.REGULAR, ring, tuple(NodeId(m) for m in members))


def trans(at: float, ring: RingId, *members: int) -> Installed:
    return Installed(t(at), ConfigKind.TRANSITIONAL, ring, tuple(NodeId(m) for m in members))


def dl(at: float, ring: RingId, payload: bytes, guarantee: Guarantee = Guarantee.AGREED) -> Delivered:
    sender = NodeId(int(payload[1:].split(b".")[0]))
    return Delivered(t(at), ring, sender, payload, guarantee)


def baseline() -> dict[NodeId, list[Record]]:
    common_a = [dl(11, A, M11), dl(12, A, M21), dl(13, A, M31)]
    node1: list[Record] = [Booted(t(0), 0), reg(10, A, 1, 2, 3), Sent(t(10.5), M11), *common_a]
    node2: list[Record] = [Booted(t(0), 0), reg(10, A, 1, 2, 3), Sent(t(10.5), M21), *common_a]
    node3: list[Record] = [Booted(t(0), 0), reg(10, A, 1, 2, 3), Sent(t(10.5), M31), *common_a]
    node3.append(Crashed(t(20)))
    after = [trans(500, B, 1, 2), reg(500, B, 1, 2)]
    node1 += [*after, Sent(t(600), M12), Sent(t(601), M13), dl(610, B, M12), dl(611, B, M13)]
    node2 += [*after, dl(610, B, M12), dl(611, B, M13)]
    return {N1: node1, N2: node2, N3: node3}


SPEC = LivenessSpec(quiet_from=t(20), bound=Duration(1000 * MS), traffic_until=t(900))


def props(violations: list[Violation]) -> set[str]:
    return {v.prop for v in violations}


def test_correct_history_has_no_violation() -> None:
    assert check(baseline(), liveness=SPEC) == []


def test_total_order_violation_names_both_nodes() -> None:
    h = baseline()
    h[N2][4], h[N2][5] = h[N2][5], h[N2][4]  # node 2 delivers m2.1 before m1.1
    found = [v for v in check(h) if v.prop == "total-order"]
    assert props(check(h)) == {"total-order", "agreed"}
    text = str(found[0])
    assert "m1.1" in text and "m2.1" in text and "node 2" in text
    assert ">>" in text  # the excerpt marks the offending record


def test_three_way_cycle_is_a_total_order_violation() -> None:
    # Pairwise every two nodes agree on their common messages, yet no total order exists.
    x, y, z = b"m1.1|", b"m2.1|", b"m3.1|"
    h: dict[NodeId, list[Record]] = {}
    for node, (a, b) in {N1: (x, y), N2: (y, z), N3: (z, x)}.items():
        own = {N1: x, N2: y, N3: z}[node]
        h[node] = [Booted(t(0), 0), reg(1, A, 1, 2, 3), Sent(t(1), own), dl(2, A, a), dl(3, A, b)]
    assert "total-order" in props(check(h))


def test_duplicate_delivery() -> None:
    h = baseline()
    h[N1].append(dl(612, B, M12))
    assert props(check(h)) == {"duplicate"}


def test_spurious_message_never_sent() -> None:
    h = baseline()
    h[N2].append(Delivered(t(612), B, N1, b"m1.99|"))
    found = check(h)
    assert props(found) == {"spurious"}
    assert "no client sent" in str(found[0])


def test_spurious_sender() -> None:
    h = baseline()
    h[N2][-1] = Delivered(t(611), B, N2, M13)
    assert "spurious" in props(check(h))


def test_delivered_before_sent() -> None:
    h = baseline()
    h[N1][2] = Sent(t(50), M11)  # sent after everyone delivered it at 11 ms
    assert "spurious" in props(check(h))


def test_self_delivery_missing_in_settled_run() -> None:
    h = baseline()
    h[N1].append(Sent(t(700), b"m1.4|"))
    assert props(check(h)) == set()  # not settled: the message may still be on its way
    found = check(h, settled=True)
    assert props(found) == {"self-delivery"}
    assert "m1.4" in str(found[0])


def test_virtual_synchrony_violation() -> None:
    h = baseline()
    # node 3's last message reaches node 1 only, delivered in A's transitional part.
    for node in (N1, N2, N3):
        h[node] = [r for r in h[node] if not (isinstance(r, Delivered) and r.payload == M31)]
    i = h[N1].index(trans(500, B, 1, 2))
    h[N1].insert(i + 1, dl(500, A, M31))
    found = check(h)
    assert props(found) == {"virtual-synchrony"}
    assert "m3.1" in str(found[0]) and "1.4 -> 1.8" in str(found[0])


def test_transitional_with_a_node_that_did_not_come_along() -> None:
    h = baseline()
    h[N2][h[N2].index(trans(500, B, 1, 2))] = trans(500, B, 1, 2, 3)
    found = check(h)
    assert props(found) == {"transitional"}


def test_transitional_missing_a_node_that_came_along() -> None:
    h = baseline()
    h[N1][h[N1].index(trans(500, B, 1, 2))] = trans(500, B, 1)
    found = check(h)
    assert props(found) == {"transitional"}
    assert "node 2 came from 1.4" in str(found[0])


def test_regular_without_transitional() -> None:
    h = baseline()
    h[N2].remove(trans(500, B, 1, 2))
    assert "config-shape" in props(check(h))


def test_configuration_agreement() -> None:
    h = baseline()
    h[N2][h[N2].index(reg(500, B, 1, 2))] = reg(500, B, 1, 2, 3)
    assert "config-agreement" in props(check(h))


def test_ring_seq_must_grow_across_restarts() -> None:
    h = baseline()
    h[N3] += [Booted(t(30), 0), reg(40, RingId(4, N3), 3)]  # forgot its persisted ring seq
    found = check(h)
    assert "ring-monotonic" in props(found)


def test_delivery_from_a_non_member() -> None:
    h = baseline()
    h[N1].append(Sent(t(612), b"m1.4|"))
    h[N2].append(Delivered(t(613), B, N3, b"m3.7|"))
    h[N3].insert(2, Sent(t(10.5), b"m3.7|"))
    found = check(h)
    assert "delivery-config" in props(found)


def test_delivery_before_any_configuration() -> None:
    h = baseline()
    h[N1].insert(1, dl(5, A, M11))
    assert "delivery-config" in props(check(h))


def test_fifo_violation() -> None:
    h = baseline()
    for node in (N1, N2):
        i = h[node].index(dl(610, B, M12))
        h[node][i], h[node][i + 1] = dl(610, B, M13), dl(611, B, M12)
    assert props(check(h)) == {"fifo"}


def test_safe_message_not_delivered_by_a_member() -> None:
    h = baseline()
    # node 1 delivers m3.1 as safe in A; node 2 installs B without ever delivering it.
    for node in (N1, N2, N3):
        h[node] = [r for r in h[node] if not (isinstance(r, Delivered) and r.payload == M31)]
    h[N1].insert(h[N1].index(trans(500, B, 1, 2)), dl(13, A, M31, Guarantee.SAFE))
    found = check(h)
    assert "safe" in props(found)
    assert any("member 2 never delivered" in str(v) for v in found)


def test_liveness_final_configuration_too_late() -> None:
    late = LivenessSpec(quiet_from=t(20), bound=Duration(100 * MS), traffic_until=t(900))
    found = check(baseline(), liveness=late)
    assert props(found) == {"liveness"}
    assert "after the last fault" in str(found[0])


def test_liveness_nodes_end_apart() -> None:
    h = baseline()
    h[N2] += [trans(700, RingId(12, N2), 2), reg(700, RingId(12, N2), 2)]
    found = check(h, liveness=SPEC)
    assert "liveness" in props(found)


def test_liveness_message_sent_after_stabilising_is_delivered_everywhere() -> None:
    h = baseline()
    h[N2].remove(dl(611, B, M13))
    found = check(h, liveness=SPEC)
    assert "liveness" in props(found)
    assert any("m1.3" in str(v) for v in found)


@pytest.mark.parametrize("n_extra", [0, 20])
def test_reports_are_bounded(n_extra: int) -> None:
    h = baseline()
    for k in range(n_extra):
        h[N2].append(Delivered(t(700 + k), B, N1, b"m1.%d|" % (100 + k)))
    found = check(h)
    assert len(found) <= 6


def test_gap_in_the_regular_part_breaks_agreed_delivery() -> None:
    h = baseline()
    # node 2 skips m1.1 while still in A's regular part (nothing transitional yet)
    h[N2].remove(dl(11, A, M11))
    found = check(h)
    assert "agreed" in props(found)


def test_gap_in_the_transitional_part_is_allowed() -> None:
    h = baseline()
    # node 3's last message: node 1 delivers it in the regular part; node 2 lacks it and
    # delivers nothing of A after its transitional configuration (3 is gone): allowed.
    for node in (N1, N2, N3):
        h[node] = [r for r in h[node] if not (isinstance(r, Delivered) and r.payload == M31)]
    extra = b"m3.2|"
    h[N3].insert(3, Sent(t(10.6), extra))
    h[N2].insert(h[N2].index(trans(500, B, 1, 2)) + 1, dl(500, A, extra))
    h[N1].insert(h[N1].index(trans(500, B, 1, 2)) + 1, dl(500, A, extra))
    assert "agreed" not in props(check(h))
