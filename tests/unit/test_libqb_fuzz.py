"""Bad input to the library faces: random and mutated frames never raise, always get a valid answer.

Every face gets random bytes and corosync's own request layouts with bytes flipped, lengths
changed and tails cut. A face may answer (one bare error header at most for a request it cannot
read), send events, hold or disconnect — but nothing escapes, every response fits the buffer the
library passes, and the node's services keep working afterwards.
"""

from __future__ import annotations

import struct
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmanlk.services.lib import Disconnect, Event, Hold, Response

from .libqbfaces import (
    FaceCluster,
    cmap_get,
    cmap_set,
    cmap_track_add,
    cpg_join,
    cpg_mcast,
    cpg_partial,
    header,
)

FACES = ("cmap", "cfg", "cpg", "quorum", "votequorum")

SEEDS: dict[str, list[bytes]] = {
    "cmap": [
        cmap_get("totem.token"),
        cmap_set("x.y.z", 6, b"\1\0\0\0"),
        cmap_set("s.t.r", 11, b"text\0"),
        cmap_track_add("", 15, 1),
        header(1, 280) + bytes(264),
        header(3, 288) + bytes(272),
        header(4, 280) + bytes(264),
        header(5, 24) + bytes(8),
        header(6, 24) + bytes(8),
        header(8, 24) + bytes(8),
        header(9, 24) + struct.pack("<i4x", 1),
    ],
    "cfg": [header(i, 32) + bytes(16) for i in range(12)] + [header(2, 288) + bytes(272)],
    "cpg": [
        cpg_join(b"fuzz", 1),
        cpg_mcast(b"payload"),
        cpg_partial(1, 100, b"x" * 50),
        header(1, 160) + bytes(144),
        header(3, 152) + bytes(136),
        header(4, 16),
        header(5, 160) + bytes(144),
        header(6, 24) + bytes(8),
        header(7, 24) + bytes(8),
        header(9, 300) + bytes(284),
    ],
    "quorum": [header(i, 24) + struct.pack("<I4x", 3) for i in range(5)],
    "votequorum": [header(i, 320) + bytes(304) for i in range(10)],
}


@cache
def cluster() -> FaceCluster:
    c = FaceCluster(3, seed=11)
    c.boot()
    c.settle()
    return c


def _serve(face: str, frame: bytes) -> None:
    view = cluster().view(1)
    peer = view.connect(face)
    try:
        out = view.call(face, peer, frame)
    finally:
        view.outbox += view.faces[face].disconnect(peer.handle)
    responses = [o for o in out if isinstance(o, Response) and o.handle == peer.handle]
    assert len(responses) <= 1 or face == "cfg", out
    for o in out:
        assert isinstance(o, Response | Event | Hold | Disconnect)
        if isinstance(o, Response | Event):
            assert 24 <= len(o.data) <= peer.max_msg_size
            assert struct.unpack_from("<i", o.data, 8)[0] == len(o.data)  # header size is the length


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(face=st.sampled_from(FACES), frame=st.binary(max_size=600))
def test_random_bytes_never_raise(face: str, frame: bytes) -> None:
    _serve(face, frame)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    face = draw(st.sampled_from(FACES))
    frame = bytearray(draw(st.sampled_from(SEEDS[face])))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(frame) - 1))
        frame[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    if draw(st.booleans()):  # a header that lies about the size
        struct.pack_into("<i", frame, 8, draw(st.integers(-5, 1 << 21))) if len(frame) >= 12 else None
    return face, bytes(frame)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_corosync_requests_never_raise(case: tuple[str, bytes]) -> None:
    face, frame = case
    _serve(face, frame)


def test_after_the_fuzzing_the_services_still_answer() -> None:
    c = cluster()
    v = c.view(1)
    peer = v.connect("cmap")
    reply = v.answer("cmap", peer, cmap_get("totem.cluster_name", room=64))
    assert reply[40:46] == b"faces\0"
    c.run(2000)
    assert v.stack().members == (1, 2, 3)
