"""The fused receive path (Stack._fast_frame, CpgService.deliver_frame) gives exactly what the
general path gives: per frame against CpgService.on_message of each message, and for whole
simulated clusters against the same run with the fast path switched off."""

from __future__ import annotations

import random

import pytest

from cmanlk.services import wire as svcwire
from cmanlk.services.cpg import wire as cw
from cmanlk.services.cpg.service import REASON_JOIN, CpgDeliver, CpgJoin, CpgMcast, CpgService, Handle
from cmanlk.totem.totempg import Frame, Packer, Unpacker, encode_frame, frame_layout
from cmanlk.types import NodeId, RingId, ms

from .test_cpg import N1, N2, G, _loop, _synced, cpg_of, make_cluster, of, request, settled, stack

H1 = Handle(11)
G2 = b"other"


def _a(message: bytes) -> bytes:
    return svcwire.encode_group_message(svcwire.GROUP_A, message)


def _frame(pieces: list[bytes]) -> tuple[bytes, int, tuple[int, ...]]:
    data = encode_frame(Frame(0, 0, tuple(pieces)))
    return data, 8 + 2 * len(pieces), tuple(len(p) for p in pieces)


def _service() -> CpgService:
    svc = CpgService(N1)
    _synced(svc, (N1, N2))
    _loop(svc, svc.on_local_request(CpgJoin(H1, G, 1)))
    _loop(svc, svc.on_local_request(CpgJoin(Handle(12), G2, 2)))
    svc.on_message(N2, 0, cw.encode_procjoin(0, G, 9, REASON_JOIN))
    return svc


def _general(svc: CpgService, sender: NodeId, messages: list[bytes]) -> list[object]:
    out: list[object] = []
    for m in messages:
        out += svc.on_message(sender, cw.MESSAGE_REQ_EXEC_CPG_MCAST, m)
    return out


MIXED = [
    cw.encode_mcast(G, 9, N2, 0, b"one"),
    cw.encode_mcast(G, 9, N2, 0, b""),
    cw.encode_mcast(G2, 9, N2, 0, b"not a member of this group on node 2"),
    cw.encode_mcast(b"nobody", 9, N2, 0, b"no local member"),
    cw.encode_mcast(G, 10, N2, 0, b"x" * 1000),
]


def test_a_frame_of_mcasts_gives_what_each_message_gives():
    fast, general = _service(), _service()
    data, start, lens = _frame([_a(m) for m in MIXED])
    got = fast.deliver_frame(N2, data, start, lens)
    assert got == _general(general, N2, MIXED)
    assert got and all(isinstance(d, CpgDeliver) and type(d.payload) is bytes for d in got)
    assert fast.stats == general.stats == {"mcast_unknown_node": 1}


def test_our_own_messages_settle_the_flow_control_window():
    fast, general = _service(), _service()
    for svc in (fast, general):
        for i in range(3):
            svc.on_local_request(CpgMcast(H1, G, b"m%d" % i))
    assert fast.in_flight_bytes > 0
    mine = [cw.encode_mcast(G, 1, N1, seq, b"m%d" % (seq - 1)) for seq in (1, 2)]
    data, start, lens = _frame([_a(m) for m in mine])
    assert fast.deliver_frame(N1, data, start, lens) == _general(general, N1, mine)
    assert fast.in_flight_bytes == general.in_flight_bytes > 0


@pytest.mark.parametrize(
    "pieces",
    [
        [_a(cw.encode_procjoin(0, G, 5, REASON_JOIN))],  # not an MCAST
        [_a(cw.encode_mcast(G, 9, N2, 0, b"ok")), svcwire.encode_group_message(b"sync", b"x" * 200)],
        [_a(cw.encode_mcast(G, 9, N2, 0, b"ok")), _a(cw.encode_mcast(G, 9, N2, 0, b"ok"))[:-1]],
        [_a(cw.encode_mcast(G, 9, N2, 0, b"ok"))[:100]],  # short
        [_a(cw.encode_mcast(G, 9, N2, 0, b"ok")[:16] + bytes(168) + b"ok")],  # name length 0
        [_a(cw.encode_mcast(G, 9, N2, 0, b"ok")) + b"!"],  # msglen disagrees
    ],
)
def test_anything_else_takes_the_general_path_untouched(pieces):
    svc = _service()
    for _own in range(2):
        svc.on_local_request(CpgMcast(H1, G, b"q"))
    before = (svc.in_flight_bytes, dict(svc.stats))
    data, start, lens = _frame(pieces)
    assert svc.deliver_frame(N2, data, start, lens) is None
    assert (svc.in_flight_bytes, svc.stats) == before


def test_no_fast_path_while_synchronising():
    svc = _service()
    svc.sync_init(RingId(8, N1), (N1, N2), (N1, N2))
    data, start, lens = _frame([_a(MIXED[0])])
    assert svc.deliver_frame(N2, data, start, lens) is None


def _run(seed: int, fast: bool) -> tuple[dict, int]:
    cluster, nodes, log = make_cluster(3, seed=seed)
    taken = 0
    for n in nodes:
        cluster.boot(n)
    if not fast:
        for n in nodes:
            stack(cluster, n)._cpg = None
    else:
        for n in nodes:
            st = stack(cluster, n)
            real = st._fast_frame

            def counting(action, pending, out, real=real):
                nonlocal taken
                done = real(action, pending, out)
                taken += done
                return done

            st._fast_frame = counting  # type: ignore[method-assign]
    boot_and_join_booted(cluster, nodes)
    for i in range(120):
        sender = nodes[i % 3]
        size = (0, 5, 300, 1500, 5000)[i % 5]  # fragmented ones: their edges go the general way
        req = CpgMcast(Handle(sender * 10), G, bytes([i % 251]) * size)
        assert request(cluster, sender, req, request_id=100 + i).error is None
        if i % 7 == 0:
            cluster.run_for(ms(3))
    cluster.run_for(ms(3000))
    delivered = {n: [(d.nodeid, d.pid, d.payload) for d in of(log[n], CpgDeliver)] for n in nodes}
    stats = {n: dict(cpg_of(cluster, n).stats) for n in nodes}
    everything = {n: [repr(x) for x in log[n]] for n in nodes}
    return {"delivered": delivered, "stats": stats, "log": everything}, taken


def boot_and_join_booted(cluster, nodes):
    assert cluster.run_for(ms(5000), settled(cluster, nodes))
    for n in nodes:
        assert request(cluster, n, CpgJoin(Handle(n * 10), G, 1000 + n)).error is None
    members = tuple((n, 1000 + n) for n in nodes)
    assert cluster.run_for(ms(2000), lambda: all(cpg_of(cluster, n).members_of(G) == members for n in nodes))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_cluster_run_is_the_same_with_and_without_the_fast_path(seed):
    fast, taken = _run(seed, fast=True)
    slow, _ = _run(seed, fast=False)
    assert taken > 0
    assert all(len(v) == 120 for v in fast["delivered"].values())
    assert fast == slow


def _edges_like_feed(seed: int) -> None:
    rng = random.Random(seed)
    packer = Packer(1400)
    fed, split = Unpacker(), Unpacker()
    for _round in range(60):
        for _ in range(rng.randrange(1, 12)):
            packer.push(bytes([rng.randrange(256)]) * rng.choice((1, 60, 250, 700, 1390, 3000, 9000)))
        while (popped := packer.pop_frame(rng.choice((None, 1, 3)))) is not None:
            frame = popped[0]
            if rng.random() < 0.03:
                continue  # a lost frame: broken continuations and throw-aways follow
            want = fed.feed(N2, frame)
            fragmented, continuation, start, lens = frame_layout(frame)
            edges = split.take_edges(N2, frame, fragmented, continuation, start, lens)
            if edges is None:
                got = split.feed(N2, frame)
            else:
                first, off, whole = edges
                got = [] if first is None else [first]
                for n in whole:
                    got.append(frame[off : off + n])
                    off += n
            assert got == want
            assert split._assemblies == fed._assemblies
            assert split.stats == fed.stats


@pytest.mark.parametrize("seed", range(8))
def test_take_edges_does_what_feed_does(seed):
    _edges_like_feed(seed)
