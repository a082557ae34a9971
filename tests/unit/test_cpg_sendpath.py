"""The fused send path (Stack.local_mcast, CpgService.local_mcast_message) gives exactly what the
general path gives (Stack.handle of a ServiceRequest carrying a CpgMcast): the same bytes queued
with Totem, the same refusals, the same actions and state, and for whole simulated clusters the same
run — deliveries, refusals, counters — with every local MCAST sent one way or the other."""

from __future__ import annotations

import random

import pytest

from cmanlk.errors import ErrorCode
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CPG_SERVICE, Notification
from cmanlk.services.cpg import wire as cw
from cmanlk.services.cpg.service import MAX_MESSAGE_BYTES, CpgJoin, CpgMcast, CpgService, Handle
from cmanlk.stack import RequestResult, ServiceRequest
from cmanlk.types import NodeId, ms

from .test_cpg import N1, N2, G, _loop, _synced, boot_and_join, cpg_of, make_cluster, request, settled, stack

H1 = Handle(11)


def test_the_message_is_byte_for_byte_the_general_one():
    fast, general = CpgService(N1), CpgService(N1)
    for svc in (fast, general):
        _synced(svc, (N1, N2))
        _loop(svc, svc.on_local_request(CpgJoin(H1, G, 4242)))
    for payload in (b"x", b"", bytes(range(256)) * 5, b"\xff" * 1400):
        (sent,) = general.on_local_request(CpgMcast(H1, G, payload))
        want = svcwire.encode_group_message(svcwire.GROUP_A, sent.message)  # what the Stack queues
        assert fast.local_mcast_message(H1, G, payload) == want
        assert cw.decode_mcast(want[5:]).payload == payload
    assert fast.in_flight_bytes == general.in_flight_bytes


def _send(cluster, n: NodeId, handle: Handle, group: bytes, payload: bytes, fast: bool, rid: int):
    node = cluster.nodes[n]
    if node.core is None:
        return "down"
    if not fast:
        return request(cluster, n, CpgMcast(handle, group, payload), request_id=rid).error
    rec = node.core
    error, actions = rec.stack.local_mcast(cluster.now, handle, group, payload)
    assert not any(isinstance(a, RequestResult) for a in actions)
    rec.log.extend(a for a in actions if isinstance(a, Notification))
    cluster._apply(node, actions)
    return error


def _run(seed: int, fast: bool) -> dict:
    rng = random.Random(seed)
    cluster, nodes, log = make_cluster(3, seed=seed)
    boot_and_join(cluster, nodes)
    answers = []
    for i in range(400):
        sender = nodes[rng.randrange(3)]
        kind = rng.random()
        handle, group = Handle(sender * 10), G
        size = rng.choice((1, 5, 64, 300, 1500, 60_000))
        if kind < 0.03:
            group = b"not-joined"
        elif kind < 0.05:
            handle = Handle(999)
        elif kind < 0.06:
            size = MAX_MESSAGE_BYTES + 1
        answers.append(_send(cluster, sender, handle, group, bytes([i % 251]) * size, fast, 100 + i))
        if i == 100:  # a burst past cpg's send window: the last ones are refused try_again
            for j in range(40):
                payload = bytes([j]) * 60_000
                answers.append(_send(cluster, nodes[0], Handle(10), G, payload, fast, 1000 + j))
        if i == 200:
            cluster.crash(nodes[2])  # a ring change: sends during the sync are refused try_again
        if i == 260:
            cluster.boot(nodes[2])
        if rng.random() < 0.1:
            cluster.run_for(ms(rng.choice((1, 3, 20))))
    cluster.run_for(ms(6000))
    for n in nodes:
        assert request(cluster, n, CpgJoin(Handle(n * 10 + 1), b"after", 2000 + n)).error is None
    cluster.run_for(ms(2000))
    notes = {n: [repr(x) for x in log[n] if not isinstance(x, RequestResult)] for n in nodes}
    counters = {n: (dict(stack(cluster, n).stats), dict(cpg_of(cluster, n).stats)) for n in nodes}
    return {"answers": answers, "notes": notes, "counters": counters}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_cluster_run_is_the_same_with_the_fused_send_path(seed):
    fast = _run(seed, fast=True)
    slow = _run(seed, fast=False)
    codes = set(fast["answers"])
    assert None in codes and ErrorCode.TRY_AGAIN in codes and ErrorCode.NOT_EXIST in codes
    assert ErrorCode.TOO_LARGE in codes
    assert fast == slow


def test_without_a_cpg_service_it_is_the_general_path():
    cluster, nodes, _log = make_cluster(2, seed=7)
    for n in nodes:
        cluster.boot(n)
    assert cluster.run_for(ms(5000), settled(cluster, nodes))
    st = stack(cluster, nodes[0])
    st._cpg = None
    assert st.local_mcast(cluster.now, H1, G, b"x") == (ErrorCode.NOT_EXIST, [])
    result = st.handle(ServiceRequest(cluster.now, CPG_SERVICE, CpgMcast(H1, G, b"x"), 5))
    answers = [(r.request_id, r.error) for r in result if isinstance(r, RequestResult)]
    assert answers == [(5, ErrorCode.NOT_EXIST)]
