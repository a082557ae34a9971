"""Votequorum semantics (cmanlk/services/votequorum/policy.py) against naive references, under hypothesis.

A tiny harness plays the votequorum protocol between Quorum objects the way the service does it:
on every membership change each member runs sync_init, then every member's NODEINFO (self and
qdevice, computed before any is delivered, as all nodes send at the same point of total order) is
delivered to every member in one order, then sync_activate. The references compute the expected
decision from first principles (majority of expected votes, wait-for-all seen-everyone, two_node,
last-man-standing steps, tie-breaker half splits) without the node table.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanlk.errors import ConfigError, UsageError
from cmanlk.services.votequorum.policy import (
    FLAG_FIRST,
    FLAG_QUORATE,
    FLAG_WFASTATUS,
    PARAM_EXPECTED_VOTES,
    PARAM_NODE_VOTES,
    AtbMode,
    Quorum,
    QuorumConfig,
)
from cmanlk.types import NodeId, RingId


class Harness:
    def __init__(self, config: QuorumConfig, nodes: list[int]) -> None:
        self.config = config
        self.all = [NodeId(n) for n in nodes]
        self.q: dict[NodeId, Quorum] = {}
        self.partitions: list[tuple[NodeId, ...]] = []
        self.seq = 0

    def boot(self, node: NodeId) -> None:
        self.q[node] = Quorum(self.config.resolve(node), node)

    def form(self, *partitions: tuple[NodeId, ...]) -> None:
        self.partitions = [tuple(sorted(p)) for p in partitions if p]
        for p in self.partitions:
            self.seq += 4
            ring = RingId(self.seq, p[0])
            for n in p:
                self.q[n].sync_init(ring, p)
            infos = [(n, self.q[n].my_node_info(), self.q[n].qdevice_node_info()) for n in p]
            for sender, mine, qdev in infos:
                for n in p:
                    self.q[n].node_info(sender, mine)
                    self.q[n].node_info(sender, qdev)
            for n in p:
                self.q[n].sync_activate()

    def deliver_reconfigure(self, sender: NodeId, param: int, node: NodeId, value: int) -> None:
        part = next(p for p in self.partitions if sender in p)
        for n in part:
            self.q[n].reconfigure(sender, param, node, value)

    def quorate(self, node: NodeId) -> bool:
        return self.q[node].state().quorate


def ids(n: int) -> list[int]:
    return list(range(1, n + 1))


# --- plain majority with weighted votes ---------------------------------------------------------

partitions_strategy = st.lists(st.integers(0, 3), min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(
    votes=st.lists(st.integers(1, 3), min_size=1, max_size=7),
    steps=st.lists(st.lists(st.integers(0, 2), min_size=7, max_size=7), min_size=1, max_size=8),
)
def test_majority_of_configured_votes_decides(votes, steps):
    nodes = ids(len(votes))
    config = QuorumConfig(node_votes=tuple((NodeId(n), v) for n, v in zip(nodes, votes, strict=True)))
    h = Harness(config, nodes)
    for n in h.all:
        h.boot(n)
    expected = sum(votes)
    vote_of = dict(zip(h.all, votes, strict=True))
    for labels in steps:
        parts: dict[int, list[NodeId]] = {}
        for n, label in zip(h.all, labels, strict=False):
            parts.setdefault(label, []).append(n)
        h.form(*(tuple(p) for p in parts.values()))
        quorate_parts = 0
        for p in h.partitions:
            total = sum(vote_of[n] for n in p)
            want = total >= expected // 2 + 1
            quorate_parts += want
            for n in p:
                state = h.q[n].state()
                assert state.quorate == want, (p, state)
                assert state.quorum == expected // 2 + 1
                assert state.total_votes == total
        assert quorate_parts <= 1


# --- wait_for_all and two_node -------------------------------------------------------------------


class RefVotequorum:
    """votequorum.c's decision for one node, for clusters of one vote per node without
    auto_tie_breaker, qdevice or allow_downscale — written from the C, independently of quorum.py.

    What makes the naive "majority of the partition" wrong is modelled exactly:
    - NODEINFOs are applied one at a time, each followed by `recalculate_quorum` when the entry is
      new, ours, FIRST or changed (`message_handler_req_exec_votequorum_nodeinfo`). A node that
      applies its own NODEINFO while the peers that just joined are still DEAD in its table can
      drop quorum for that moment, and with wait_for_all `are_we_quorate` then sets
      wait_for_all_status again ("update_wait_for_all_status(1)" when not quorate); it clears only
      with total votes == expected votes, or a NODEINFO of a peer QUORATE and not WFASTATUS.
    - quorum never decreases unless allowed (`calculate_quorum`): allowed by a QUORATE peer's
      NODEINFO when we are not quorate (we take its expected votes) and by the LMS timer.
    - our flags are one field: our own NODEINFO overwrites it with what we sent, and the
      WFASTATUS/QUORATE bits change only where votequorum changes them.
    - last_man_standing: sync_init arms the window when nodes left and the new ring still has at
      least `quorum` members; when it fires while quorate, `recalculate_quorum(1, 1)` sets every
      member's expected votes (ours included) to the member count.
    """

    def __init__(self, me: int, n: int, two_node: bool, wait_for_all: bool, lms: bool) -> None:
        self.me, self.two_node, self.wait_for_all, self.lms = me, two_node, wait_for_all, lms
        self.quorum = 0
        self.quorate = False
        self.wfa_status = wait_for_all
        # entry: [flags, alive, expected]; our own entry is "us" (its expected is ours)
        self.table: dict[int, list[int]] = {me: [FLAG_FIRST | (FLAG_WFASTATUS if wait_for_all else 0), 1, n]}
        self.members: tuple[int, ...] = ()
        self.armed = False
        self.recalculate(allow_decrease=False, by_current_nodes=False)

    @property
    def expected(self) -> int:
        return self.table[self.me][2]

    def info(self) -> tuple[int, int, int]:
        flags, _, expected = self.table[self.me]
        return self.me, flags, expected

    def sync_init(self, members: tuple[int, ...]) -> None:
        us = self.table[self.me]
        if len(members) > 1:
            us[0] &= ~FLAG_FIRST
        left = [m for m in self.members if m not in members]
        for m in left:
            if m != self.me and m in self.table:
                self.table[m][1] = 0
        if self.lms and left and len(members) >= self.quorum:
            self.armed = True
        self.members = members

    def node_info(self, nodeid: int, flags: int, expected: int) -> None:
        entry = self.table.get(nodeid)
        new = entry is None
        old = [0, 0, 0] if entry is None else list(entry)
        if entry is None:
            entry = self.table[nodeid] = [0, 0, 0]
        entry[0], entry[1] = flags, 1
        allow = False
        if not self.quorate and flags & FLAG_QUORATE:
            allow = True
            self.table[self.me][2] = expected
        entry[2] = expected if flags & FLAG_QUORATE else self.expected
        if new or nodeid == self.me or flags & FLAG_FIRST or old != entry:
            self.recalculate(allow, by_current_nodes=False)
        # node->flags: for our own NODEINFO that is us->flags as recalculate_quorum just left it.
        if self.wait_for_all and not entry[0] & FLAG_WFASTATUS and entry[0] & FLAG_QUORATE:
            self.set_wfa(False)

    def lms_window_elapsed(self) -> None:
        self.armed = False
        if self.quorate:
            self.recalculate(allow_decrease=True, by_current_nodes=True)

    def recalculate(self, allow_decrease: bool, by_current_nodes: bool) -> None:
        alive = [e for e in self.table.values() if e[1]]
        total = len(alive)
        us = self.table[self.me]
        us[2] = max(us[2], total)
        highest = total if by_current_nodes else max(e[2] for e in alive)
        quorum = max(highest // 2 + 1, total // 2 + 1)
        if not allow_decrease:
            quorum = max(quorum, self.quorum)
        self.quorum = 1 if self.two_node and total <= 2 else quorum
        if by_current_nodes:
            for e in alive:
                e[2] = total
        if self.wait_for_all and self.wfa_status:
            if total != us[2]:
                return
            self.set_wfa(False)
        self.quorate = self.quorum <= total
        us[0] = us[0] | FLAG_QUORATE if self.quorate else us[0] & ~FLAG_QUORATE
        if self.wait_for_all:
            self.set_wfa(not self.quorate)

    def set_wfa(self, status: bool) -> None:
        self.wfa_status = status
        us = self.table[self.me]
        us[0] = us[0] | FLAG_WFASTATUS if status else us[0] & ~FLAG_WFASTATUS


class RefCluster:
    """RefVotequorum nodes driven exactly as Harness drives Quorum objects."""

    def __init__(self, n: int, two_node: bool = False, wait_for_all: bool = False, lms: bool = False) -> None:
        self.args = (n, two_node, wait_for_all, lms)
        self.q: dict[int, RefVotequorum] = {}

    def boot(self, node: int) -> None:
        self.q[node] = RefVotequorum(node, *self.args)

    def form(self, partitions: list[tuple[NodeId, ...]]) -> None:
        for p in partitions:
            for n in p:
                self.q[n].sync_init(tuple(p))
            infos = [self.q[n].info() for n in p]
            for info in infos:
                for n in p:
                    self.q[n].node_info(*info)
            for n in p:
                self.q[n].recalculate(allow_decrease=False, by_current_nodes=False)  # sync_activate


def assert_same(h: Harness, ref: RefCluster, nodes: tuple[NodeId, ...], context: object) -> None:
    for node in nodes:
        got, want = h.q[node].state(), ref.q[node]
        assert (got.quorate, got.quorum, got.expected_votes, got.wait_for_all_status) == (
            want.quorate,
            want.quorum,
            want.expected,
            want.wfa_status,
        ), (context, node)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 5),
    two_node=st.booleans(),
    steps=st.lists(
        st.tuples(st.sampled_from(["form", "restart"]), st.lists(st.integers(0, 1), min_size=5, max_size=5)),
        min_size=1,
        max_size=8,
    ),
)
def test_wait_for_all_reference(n, two_node, steps):
    if two_node:
        n = 2
    nodes = ids(n)
    config = QuorumConfig.for_nodes([NodeId(x) for x in nodes], two_node=two_node, wait_for_all=True)
    h = Harness(config, nodes)
    ref = RefCluster(n, two_node=two_node, wait_for_all=True)
    seen_all = dict.fromkeys(h.all, False)
    for node in h.all:
        h.boot(node)
        ref.boot(node)
    for kind, labels in steps:
        if kind == "restart":
            victim = h.all[labels[0] % n]
            h.boot(victim)
            ref.boot(victim)
            seen_all[victim] = False
        parts: dict[int, list[NodeId]] = {}
        for node, label in zip(h.all, labels, strict=False):
            parts.setdefault(label, []).append(node)
        sent = {node: ref.q[node].info()[1] for node in h.all}  # the flags each NODEINFO will carry
        h.form(*(tuple(p) for p in parts.values()))
        ref.form(h.partitions)
        assert_same(h, ref, tuple(h.all), (kind, h.partitions))
        for p in h.partitions:
            for node in p:
                seen_all[node] |= len(p) == n
                # wait_for_all's promise: never quorate before this node has been in a ring with
                # every node, unless a peer's NODEINFO said QUORATE and not WFASTATUS.
                if h.quorate(node) and not seen_all[node]:
                    told = [m for m in p if sent[m] & FLAG_QUORATE and not sent[m] & FLAG_WFASTATUS]
                    assert told, (p, node, sent)
                    seen_all[node] = True
        if not two_node:
            assert sum(h.quorate(p[0]) for p in h.partitions) <= 1


def test_two_node_keeps_quorum_after_peer_failure():
    config = QuorumConfig.for_nodes([NodeId(1), NodeId(2)], two_node=True)
    h = Harness(config, [1, 2])
    for node in h.all:
        h.boot(node)
    h.form((NodeId(1),))
    assert not h.quorate(NodeId(1))  # wait_for_all implied by two_node
    h.form((NodeId(1), NodeId(2)))
    assert h.quorate(NodeId(1)) and h.q[NodeId(1)].state().quorum == 1
    h.form((NodeId(1),), (NodeId(2),))
    assert h.quorate(NodeId(1)) and h.quorate(NodeId(2))  # the fence race decides


def test_two_node_with_explicit_wait_for_all_off():
    config = QuorumConfig.for_nodes([NodeId(1), NodeId(2)], two_node=True, wait_for_all=False)
    h = Harness(config, [1, 2])
    h.boot(NodeId(1))
    h.form((NodeId(1),))
    assert h.quorate(NodeId(1))


# --- last_man_standing ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(3, 7),
    steps=st.lists(st.tuples(st.integers(1, 7), st.booleans()), min_size=1, max_size=8),
)
def test_last_man_standing_reference(n, steps):
    nodes = ids(n)
    config = QuorumConfig.for_nodes([NodeId(x) for x in nodes], last_man_standing=True)
    h = Harness(config, nodes)
    ref = RefCluster(n, lms=True)
    for node in h.all:
        h.boot(node)
        ref.boot(node)
    h.form(tuple(h.all))
    ref.form(h.partitions)
    for new_size, window_elapses in steps:
        new_size = min(new_size, n)
        part = tuple(h.all[:new_size])
        rest = tuple(h.all[new_size:])
        h.form(part, rest)
        ref.form(h.partitions)
        if window_elapses:
            # The window fires only where sync_init armed it (nodes left, ring ≥ quorum members).
            for node in h.all:
                if ref.q[node].armed:
                    h.q[node].lms_window_elapsed()
                    ref.q[node].lms_window_elapsed()
        assert_same(h, ref, tuple(h.all), (part, rest))
        # LMS never makes a minority of the last quorate expected votes quorate by itself.
        for node in part:
            if h.quorate(node):
                assert new_size >= h.q[node].state().expected_votes // 2 + 1
        # The nodes cut off restart from their configuration; we follow the main partition.
        for node in rest:
            h.boot(node)
            ref.boot(node)


def test_last_man_standing_steps_down_to_two_nodes_but_not_one():
    # As corosync documents: going from 2 to 1 node needs auto_tie_breaker as well.
    nodes = [NodeId(x) for x in ids(4)]
    h = Harness(QuorumConfig.for_nodes(nodes, last_man_standing=True), ids(4))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    for keep in (3, 2):
        h.form(tuple(nodes[:keep]))
        for node in nodes[:keep]:
            h.q[node].lms_window_elapsed()
        assert h.quorate(nodes[0]), keep
        assert h.q[nodes[0]].state().expected_votes == keep
    h.form((nodes[0],))
    h.q[nodes[0]].lms_window_elapsed()
    assert not h.quorate(nodes[0])


def test_last_man_standing_with_tie_breaker_reaches_one_node():
    nodes = [NodeId(x) for x in ids(4)]
    config = QuorumConfig.for_nodes(nodes, last_man_standing=True, auto_tie_breaker=True)
    h = Harness(config, ids(4))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    for keep in (3, 2, 1):
        armed = [h.q[n] for n in nodes[:keep]]
        h.form(tuple(nodes[:keep]))
        for q in armed:
            q.lms_window_elapsed()
        assert h.quorate(nodes[0]), keep


# --- auto_tie_breaker ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("atb_node", "winner_has"),
    [("lowest", 1), ("highest", 4), ((NodeId(3), NodeId(1)), 3)],
)
def test_auto_tie_breaker_even_split(atb_node, winner_has):
    nodes = [NodeId(x) for x in ids(4)]
    config = QuorumConfig.for_nodes(nodes, auto_tie_breaker=True, auto_tie_breaker_node=atb_node)
    h = Harness(config, ids(4))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    a, b = (NodeId(1), NodeId(2)), (NodeId(3), NodeId(4))
    h.form(a, b)
    for part in (a, b):
        for node in part:
            assert h.quorate(node) == (NodeId(winner_has) in part)


@settings(max_examples=100, deadline=None)
@given(n=st.sampled_from([2, 4, 6]), labels=st.lists(st.integers(0, 1), min_size=6, max_size=6))
def test_auto_tie_breaker_lowest_reference(n, labels):
    nodes = [NodeId(x) for x in ids(n)]
    h = Harness(QuorumConfig.for_nodes(nodes, auto_tie_breaker=True), ids(n))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    parts: dict[int, list[NodeId]] = {}
    for node, label in zip(nodes, labels, strict=False):
        parts.setdefault(label, []).append(node)
    h.form(*(tuple(p) for p in parts.values()))
    for p in h.partitions:
        want = len(p) >= n // 2 + 1 or (len(p) == n // 2 and NodeId(1) in p)
        for node in p:
            assert h.quorate(node) == want


@pytest.mark.parametrize("atb_node", ["lowest", "highest"])
def test_auto_tie_breaker_guards_on_the_missing_votes_not_nodes(atb_node):
    # Stack seeds 2641/3093: two nodes, atb, then node 1 is given 2 votes (E=3, quorum 2). On a
    # split node 1 is quorate by its votes; the 1-vote half (T=1 = E//2) must not take the tie:
    # the missing node carries 2 votes = quorum. corosync counts the missing nodes (1 < 2) here.
    nodes = [NodeId(1), NodeId(2)]
    h = Harness(QuorumConfig.for_nodes(nodes, auto_tie_breaker=True, auto_tie_breaker_node=atb_node), ids(2))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    h.deliver_reconfigure(NodeId(1), PARAM_NODE_VOTES, NodeId(1), 2)
    assert h.q[NodeId(2)].state().expected_votes == 3
    h.form((NodeId(1),), (NodeId(2),))
    assert h.quorate(NodeId(1))
    assert not h.quorate(NodeId(2))
    # With one vote each (E=2) the tie still goes to the tie-breaker's half.
    h2 = Harness(QuorumConfig.for_nodes(nodes, auto_tie_breaker=True, auto_tie_breaker_node=atb_node), ids(2))
    for node in nodes:
        h2.boot(node)
    h2.form(tuple(nodes))
    h2.form((NodeId(1),), (NodeId(2),))
    winner = NodeId(1) if atb_node == "lowest" else NodeId(2)
    assert [h2.quorate(n) for n in nodes] == [n == winner for n in nodes]


@pytest.mark.parametrize("atb_node", ["highest", (NodeId(2),)])
def test_auto_tie_breaker_takes_no_tie_one_vote_short_of_half(atb_node):
    # Stack seed 27269: three nodes, atb with wait_for_all (E=3, quorum 2). Node 3 is cut off,
    # (1,2) stays quorate, then splits 1|1. T=1 is E//2 but not half: node 3 may come back to the
    # other part, which then has quorum 2 by votes. No part of one vote may take the tie (node 2
    # alone here; corosync gives it the tie).
    nodes = [NodeId(x) for x in ids(3)]
    cfg = QuorumConfig.for_nodes(
        nodes, auto_tie_breaker=True, auto_tie_breaker_node=atb_node, wait_for_all=True
    )
    h = Harness(cfg, ids(3))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    h.form((NodeId(1), NodeId(2)), (NodeId(3),))
    assert h.quorate(NodeId(1)) and h.quorate(NodeId(2)) and not h.quorate(NodeId(3))
    h.form((NodeId(1), NodeId(3)), (NodeId(2),))
    assert not h.quorate(NodeId(2))  # node 2 is the tie-breaker of (1,2), the last quorate membership


def test_auto_tie_breaker_on_odd_cluster_needs_wait_for_all():
    nodes = tuple(NodeId(x) for x in ids(3))
    policy = QuorumConfig.for_nodes(nodes, auto_tie_breaker=True).resolve(NodeId(1))
    assert policy.auto_tie_breaker is AtbMode.NONE
    with pytest.raises(ConfigError):
        QuorumConfig.for_nodes(nodes, auto_tie_breaker=True, last_man_standing=True).resolve(NodeId(1))
    policy = QuorumConfig.for_nodes(nodes, auto_tie_breaker=True, wait_for_all=True).resolve(NodeId(1))
    assert policy.auto_tie_breaker is AtbMode.LOWEST


def test_two_node_is_disabled_by_auto_tie_breaker():
    policy = QuorumConfig.for_nodes((NodeId(1), NodeId(2)), two_node=True, auto_tie_breaker=True).resolve(
        NodeId(1)
    )
    assert not policy.two_node


def test_no_nodelist_and_no_expected_votes_is_a_config_error():
    with pytest.raises(ConfigError):
        QuorumConfig().resolve(NodeId(1))


# --- run-time expected votes and node votes --------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 7), alive=st.integers(1, 7), value=st.integers(1, 12))
def test_set_expected_votes_reference(n, alive, value):
    alive = min(alive, n)
    nodes = [NodeId(x) for x in ids(n)]
    h = Harness(QuorumConfig.for_nodes(nodes), ids(n))
    for node in nodes:
        h.boot(node)
    part = tuple(nodes[:alive])
    h.form(part)
    quorate = alive >= n // 2 + 1
    new_quorum = max(value // 2 + 1, alive // 2 + 1)
    refuse = value < alive or (quorate and new_quorum > alive)
    me = part[0]
    if refuse:
        with pytest.raises(UsageError):
            h.q[me].check_set_expected(value)
        return
    h.q[me].check_set_expected(value)
    h.deliver_reconfigure(me, PARAM_EXPECTED_VOTES, me, value)
    for node in part:
        state = h.q[node].state()
        assert state.quorate == (alive >= value // 2 + 1)
        assert state.expected_votes == value


def test_lowering_expected_votes_restores_quorum_of_a_survivor():
    nodes = [NodeId(x) for x in ids(3)]
    h = Harness(QuorumConfig.for_nodes(nodes), ids(3))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    h.form((NodeId(1),), (NodeId(2), NodeId(3)))
    assert not h.quorate(NodeId(1))
    h.q[NodeId(1)].check_set_expected(1)
    h.deliver_reconfigure(NodeId(1), PARAM_EXPECTED_VOTES, NodeId(1), 1)
    assert h.quorate(NodeId(1))
    with pytest.raises(UsageError):
        h.q[NodeId(2)].check_set_expected(1)  # below the 2 votes present


def test_set_votes_is_applied_in_order_and_checked():
    nodes = [NodeId(x) for x in ids(3)]
    h = Harness(QuorumConfig.for_nodes(nodes), ids(3))
    for node in nodes:
        h.boot(node)
    h.form(tuple(nodes))
    h.q[NodeId(1)].check_set_votes(NodeId(3), 2)
    h.deliver_reconfigure(NodeId(1), PARAM_NODE_VOTES, NodeId(3), 2)
    for node in nodes:
        state = h.q[node].state()
        assert state.total_votes == 4 and state.expected_votes == 4 and state.quorum == 3
    with pytest.raises(UsageError):
        h.q[NodeId(1)].check_set_votes(NodeId(9), 1)


def test_node_without_nodeinfo_is_not_counted():
    nodes = [NodeId(x) for x in ids(3)]
    q = Quorum(QuorumConfig.for_nodes(nodes).resolve(NodeId(1)), NodeId(1))
    q.sync_init(RingId(4, NodeId(1)), tuple(nodes))
    q.node_info(NodeId(1), q.my_node_info())
    q.sync_activate()
    assert q.state().total_votes == 1 and not q.state().quorate


def test_quorate_peer_hands_over_its_expected_votes():
    nodes = [NodeId(x) for x in ids(3)]
    q = Quorum(QuorumConfig(expected_votes=5).resolve(NodeId(1)), NodeId(1))
    q.sync_init(RingId(4, NodeId(1)), (NodeId(1), NodeId(2)))
    from cmanlk.services.votequorum.policy import NodeInfo

    q.node_info(NodeId(2), NodeInfo(NodeId(2), 1, 2, FLAG_QUORATE))
    q.sync_activate()
    assert q.state().expected_votes == 2 and q.state().quorate
    assert len(nodes) == 3


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 5), st.integers(0, 9), st.integers(0, 255)),
        max_size=30,
    )
)
def test_arbitrary_nodeinfo_never_raises(infos):
    from cmanlk.services.votequorum.policy import NodeInfo

    q = Quorum(QuorumConfig.for_nodes([NodeId(1), NodeId(2)]).resolve(NodeId(1)), NodeId(1))
    q.sync_init(RingId(4, NodeId(1)), (NodeId(1), NodeId(2)))
    for sender, votes, expected, flags in infos:
        q.node_info(NodeId(sender), NodeInfo(NodeId(sender % 3), votes, expected, flags))
        q.reconfigure(NodeId(sender), flags % 5, NodeId(sender), votes)
    q.sync_activate()
    q.state()
