"""bench/chaos.py's pure part: driver records become simulator histories the EVS checker judges."""

from __future__ import annotations

from bench.chaos import judge, split_rings, to_history, view_splits
from cmanlk.sim.history import Booted, Crashed, Delivered, Installed, Sent
from cmanlk.totem.actions import ConfigKind
from cmanlk.types import NodeId, RingId


def _p(name: str) -> str:
    return (b"CMKS" + name.encode() + b"|").hex()


def _node_records(
    node: int, ring_seq: int, members: list[int], sends: list[str], delivers: list[tuple[int, str]]
):
    recs = [["boot", 10], ["config", 20, 1, ring_seq, members]]
    t = 30
    for s in sends:
        recs.append(["sent", t, _p(s)])
        t += 1
    for sender, s in delivers:
        recs.append(["deliver", 100 + t, 1, ring_seq, sender, _p(s)])
        t += 1
    return recs


def test_records_become_boot_config_send_deliver_crash():
    recs = [
        ["boot", 1],
        ["config", 2, 1, 4, [1]],
        ["sent", 3, _p("a")],
        ["deliver", 4, 1, 4, 1, _p("a")],
        ["config", 5, 1, 8, [2, 1]],
        ["crash", 6],
    ]
    hist = to_history(recs)
    assert isinstance(hist[0], Booted)
    assert hist[1] == Installed(2, ConfigKind.REGULAR, RingId(4, NodeId(1)), (1,))
    assert isinstance(hist[2], Sent) and hist[2].payload == bytes.fromhex(_p("a"))
    assert isinstance(hist[3], Delivered) and hist[3].ring_id == RingId(4, NodeId(1)) and hist[3].sender == 1
    # A later configuration gets the transitional one the client can infer (old ∩ new) first.
    assert hist[4] == Installed(5, ConfigKind.TRANSITIONAL, RingId(8, NodeId(1)), (1,))
    assert hist[5] == Installed(5, ConfigKind.REGULAR, RingId(8, NodeId(1)), (1, 2))
    assert isinstance(hist[6], Crashed)


def test_consistent_histories_have_no_violation():
    order = [(1, "n1.0.0"), (2, "n2.0.0"), (1, "n1.0.1")]
    raw = {
        1: _node_records(1, 8, [1, 2], ["n1.0.0", "n1.0.1"], order),
        2: _node_records(2, 8, [1, 2], ["n2.0.0"], order),
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, unjudged = judge(hist, None)
    assert violations == [] and unjudged == 0


def test_disagreeing_order_and_ring_members_are_reported():
    raw = {
        1: _node_records(1, 8, [1, 2], ["a"], [(1, "a"), (2, "b")]),
        2: _node_records(2, 8, [1, 2], ["b"], [(2, "b"), (1, "a")]),
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, _ = judge(hist, None)
    assert any(v.prop == "total-order" for v in violations)
    raw[2] = _node_records(2, 8, [2], ["b"], [(2, "b")])
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, _ = judge(hist, None)
    assert any(v.prop == "config-agreement" for v in violations)


def test_split_rings_are_those_whose_members_moved_apart():
    raw = {
        1: [["boot", 1], ["config", 2, 1, 8, [1, 2]], ["config", 3, 1, 12, [1]]],
        2: [["boot", 1], ["config", 2, 1, 8, [1, 2]], ["config", 3, 2, 12, [2]]],
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    assert "1.8" in split_rings(hist)
    assert "1.c" not in split_rings(hist)


def test_first_configurations_of_an_incarnation_get_private_rings():
    from bench.chaos import private_join_epochs

    raw = {
        1: [["boot", 1], ["config", 2, 1, 8, [1, 2]], ["config", 3, 1, 12, [1, 2]]],
        2: [
            ["boot", 1],
            ["config", 2, 1, 8, [1, 2]],
            ["crash", 3],
            ["boot", 4],
            ["config", 5, 1, 12, [1, 2]],
            ["deliver", 6, 1, 12, 1, _p("a")],
        ],
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    relabelled, epochs = private_join_epochs(hist)
    assert [(e.node, str(e.ring), e.next_ring) for e in epochs] == [
        (1, "1.8", RingId(12, NodeId(1))),
        (2, "1.8", None),
        (2, "1.c", None),
    ]
    # The epoch and its deliveries carry the private ring; later configurations keep theirs.
    late = [r for r in relabelled[NodeId(2)] if isinstance(r, Installed | Delivered)]
    assert late[-1].ring_id == late[-2].ring_id == epochs[2].private != RingId(12, NodeId(1))
    assert [r.ring_id for r in relabelled[NodeId(1)] if isinstance(r, Installed)][-1] == RingId(12, NodeId(1))


def test_a_repeated_view_is_one_configuration():
    recs = [["boot", 1], ["config", 2, 1, 8, [1, 2]], ["config", 3, 1, 8, [2, 1]], ["config", 4, 1, 12, [1]]]
    kinds = [(r.kind, str(r.ring_id)) for r in to_history(recs) if isinstance(r, Installed)]
    assert kinds == [
        (ConfigKind.REGULAR, "1.8"),
        (ConfigKind.TRANSITIONAL, "1.c"),
        (ConfigKind.REGULAR, "1.c"),
    ]


def _joined_late(mine: list[str], theirs: list[str], together: bool) -> list[str]:
    """Node 1 is in ring 1.8 from its start, node 2's client joins it; both may move to 1.c."""
    raw = {
        1: [["boot", 1], ["config", 2, 1, 4, [1]], ["config", 3, 1, 8, [1, 2]]],
        2: [["boot", 4], ["config", 5, 1, 8, [1, 2]]],
    }
    for node, names in ((1, theirs), (2, mine)):
        raw[node] += [["deliver", 10 + i, 1, 8, 1, _p(m)] for i, m in enumerate(names)]
    raw[1].append(["config", 50, 1, 12, [1, 2]])
    raw[2].append(["config", 50, 1, 12, [1, 2]] if together else ["crash", 50])
    names = sorted(set(mine) | set(theirs))
    raw[1][1:1] = [["sent", 1, _p(m)] for m in names]
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, _ = judge(hist, None)
    # Node 1 "sent" every name; what it did not deliver itself is beside the point here.
    return [v.prop for v in violations if v.prop != "self-delivery"]


def test_a_joining_client_is_judged_from_its_join_point():
    # Joined after "a": owes nothing before its first delivery, everything after it.
    assert _joined_late(["b", "c"], ["a", "b", "c"], together=True) == []
    assert _joined_late(["b"], ["a", "b", "c"], together=False) == []
    assert _joined_late(["b"], ["a", "b", "c"], together=True) == ["virtual-synchrony"]
    assert "total-order" in _joined_late(["c", "b"], ["a", "b", "c"], together=False)
    # A gap after the join point is an agreed-order fault, even if they part afterwards.
    assert _joined_late(["b", "d"], ["a", "b", "c", "d"], together=False) == ["agreed"]
    # The joiner delivered something the member it moved on with never did.
    assert _joined_late(["b", "x"], ["a", "b"], together=True) == ["virtual-synchrony"]


def test_judge_sets_aside_what_cpg_cannot_show_but_keeps_real_faults():
    # Node 2 joined ring 1.8 after node 1 had delivered "a": not a virtual-synchrony fault.
    raw = {
        1: [["boot", 1], ["config", 2, 1, 8, [1, 2]], ["sent", 3, _p("a")], ["deliver", 4, 1, 8, 1, _p("a")]],
        2: [["boot", 5], ["config", 6, 1, 8, [1, 2]]],
    }
    for recs in raw.values():
        recs.append(["config", 9, 1, 12, [1, 2]])
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, unjudged = judge(hist, None)
    assert violations == [] and unjudged >= 1
    # A message from a node outside the configuration is still a violation.
    raw[2] += [["deliver", 10, 1, 12, 3, _p("x")]]
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    violations, _ = judge(hist, None)
    assert {v.prop for v in violations} >= {"delivery-config", "spurious"}


def test_a_client_that_joined_late_is_excused_what_was_delivered_before_its_join():
    from bench.chaos import LATE_JOIN_SLACK_NS, late_join_excuses

    early = 1_000_000_000
    late = early + 10 * LATE_JOIN_SLACK_NS
    raw = {
        1: [["boot", 0], ["config", 1, 1, 8, [1, 2]], ["deliver", early, 1, 8, 1, _p("a")]],
        2: [["boot", early + 1], ["config", early + 2, 1, 8, [1, 2]]],
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    assert late_join_excuses(hist, NodeId(2))
    raw[1].append(["deliver", late, 1, 8, 1, _p("b")])  # after node 2 joined: it is owed "b"
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    assert not late_join_excuses(hist, NodeId(2))


def test_fault_log_is_counted_by_kind():
    from bench.chaos import fault_kinds

    log = [
        "   0.70s ring of all nodes formed; faults start",
        "   1.61s partition [1] | [2, 3]",
        "   2.82s kill -9 node 1",
        "   3.98s restart node 1",
        "   5.51s SIGTERM node 2 (clean leave)",
        "   8.58s carrier down node 3 link 0",
        "   8.71s partition and loss healed",
        "  12.01s 30% loss into node 1",
        "  13.00s carrier up node 3 link 0",
    ]
    kinds = fault_kinds(log)
    assert kinds == {
        "kill": 1,
        "stop": 1,
        "restart": 1,
        "net-heal": 1,
        "partition": 1,
        "loss": 1,
        "carrier-down": 1,
        "carrier-up": 1,
    }


def test_a_message_delivered_in_two_views_is_a_view_split():
    # Issue 16's measurement: a cmanlkd node's message delivered by libcpg clients before the
    # configuration change and by cmanlk clients after it.
    raw = {
        1: [["boot", 1], ["config", 2, 1, 4, [1, 2]], ["deliver", 3, 1, 4, 2, _p("x")],
            ["config", 4, 1, 8, [1, 2]], ["deliver", 5, 1, 8, 2, _p("y")]],
        2: [["boot", 1], ["config", 2, 1, 4, [1, 2]], ["config", 3, 1, 8, [1, 2]],
            ["deliver", 4, 1, 8, 2, _p("x")], ["deliver", 5, 1, 8, 2, _p("y")]],
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    splits = view_splits(hist)
    assert splits == {bytes.fromhex(_p("x")): {RingId(4, NodeId(1)), RingId(8, NodeId(1))}}
    violations, _ = judge(hist, None)
    assert any(v.prop in ("virtual-synchrony", "agreed") for v in violations)


def _continuation_run(*, cut_at_3: int = 2, late_send: bool = False, node2_misses: bool = False):
    """Ring 1.8 = {1,2,3}: nodes 1 (a corosync sender) and 2 come from ring 1.4, node 3 from its own
    ring 3.6. Node 1's backlog a, b, c was queued in 1.4; node 3 delivers it from `cut_at_3` on."""
    backlog = ["n1.0.0", "n1.0.1", "n1.0.2"]
    sends = [["sent", 5 if not (late_send and i == 0) else 25, _p(m)] for i, m in enumerate(backlog)]
    mine = [["deliver", 30 + i, 1, 8, 1, _p(m)] for i, m in enumerate(backlog)]
    raw = {
        1: [["boot", 1], ["config", 2, 1, 4, [1, 2]], *sends, ["config", 20, 1, 8, [1, 2, 3]], *mine],
        2: [["boot", 1], ["config", 2, 1, 4, [1, 2]], ["config", 20, 1, 8, [1, 2, 3]], *mine[node2_misses:]],
        3: [["boot", 1], ["config", 3, 3, 6, [3]], ["config", 20, 1, 8, [1, 2, 3]], *mine[cut_at_3:]],
    }
    for recs in raw.values():
        recs.append(["config", 50, 1, 12, [1, 2, 3]])
    return {NodeId(n): to_history(r) for n, r in raw.items()}


def test_a_corosync_senders_backlog_lost_by_corosyncs_receive_rule_is_excused_and_nothing_else():
    from bench.chaos import corosync_continuation_losses

    corosync = frozenset({NodeId(1)})
    hist = _continuation_run()
    lost = corosync_continuation_losses(hist, corosync)
    assert lost == {bytes.fromhex(_p("n1.0.0")), bytes.fromhex(_p("n1.0.1"))}
    assert judge(hist, None)[0] != []  # the checker sees node 3's gap ...
    assert judge(hist, None, lost)[0] == []  # ... which is corosync's own rule (docstring)
    # Not excused: a cmanlkd sender (ours never ends a token visit inside a message); a message
    # sent after the sender installed the ring; a member that came from the sender's old ring
    # missing it too; a receiver that delivered none of the sender's messages.
    assert corosync_continuation_losses(hist, frozenset()) == set()
    assert corosync_continuation_losses(_continuation_run(late_send=True), corosync) == set()
    assert corosync_continuation_losses(_continuation_run(node2_misses=True), corosync) == set()
    assert corosync_continuation_losses(_continuation_run(cut_at_3=3), corosync) == set()


def test_a_ring_seq_restart_is_set_aside_only_where_corosync_lost_its_ringid_file():
    raw = {
        1: [["boot", 1], ["config", 2, 1, 0x41F, [1]], ["crash", 3], ["boot", 4], ["config", 5, 1, 5, [1]]],
    }
    hist = {NodeId(n): to_history(r) for n, r in raw.items()}
    assert [v.prop for v in judge(hist, None)[0]] == ["ring-monotonic"]
    violations, unjudged = judge(hist, None, ring_seq_resets={NodeId(1): 1})
    assert violations == [] and unjudged == 1
    assert [v.prop for v in judge(hist, None, ring_seq_resets={NodeId(2): 1})[0]] == ["ring-monotonic"]
