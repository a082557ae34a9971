"""Sealed frames of the native transport: round trip, forgery, replay, restarts, bounds."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanlk.errors import ConfigError, MalformedPacket
from cmanlk.runtime.crypto import (
    HEADER_BYTES,
    MAX_BOOTS_PER_SENDER,
    MAX_SENDERS,
    REPLAY_WINDOW,
    SEAL_OVERHEAD_BYTES,
    FrameOpener,
    FrameSealer,
    ReplayWindow,
    derive_link_key,
    load_key_file,
)
from cmanlk.types import NodeId

KEY = bytes(range(64))
OTHER_KEY = bytes(range(1, 65))
CLUSTER = "alpha"
A, B = NodeId(1), NodeId(2)


def rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def sealer(me: NodeId = A, seed: int = 1, **kw) -> FrameSealer:
    return FrameSealer(KEY, CLUSTER, me, rng(seed), **kw)


def reason(exc: pytest.ExceptionInfo[MalformedPacket]) -> str:
    return exc.value.reason


def test_round_trip_and_overhead():
    s, o = sealer(), FrameOpener(KEY, CLUSTER)
    for payload in (b"", b"x", b"hello world" * 100, os.urandom(1400)):
        frame = s.seal(payload)
        assert len(frame) == len(payload) + SEAL_OVERHEAD_BYTES
        assert o.open(frame) == (A, payload)
    assert s.frames_sealed == 4 and o.stats.opened == 4


def test_payload_is_not_in_clear():
    frame = sealer().seal(b"secret-secret-secret")
    assert b"secret" not in frame


def test_own_frames_open_too():
    s = sealer(A)
    o = FrameOpener(KEY, CLUSTER)
    assert o.open(s.seal(b"to myself")) == (A, b"to myself")


def test_tampering_any_byte_fails_authentication():
    s = sealer()
    frame = s.seal(b"payload of some length")
    for i in range(len(frame)):
        o = FrameOpener(KEY, CLUSTER)
        mutated = bytearray(frame)
        mutated[i] ^= 0x01
        with pytest.raises(MalformedPacket) as err:
            o.open(bytes(mutated))
        # version/flags/key-id bytes are refused before decryption; everything else fails the tag
        assert reason(err) in {"auth-failed", "bad-version", "bad-flags", "unknown-key"}
        if i >= 4:
            assert reason(err) == "auth-failed"


def test_replay_is_rejected_and_not_remembered_when_refused():
    s, o = sealer(), FrameOpener(KEY, CLUSTER)
    frame = s.seal(b"once")
    assert o.open(frame) == (A, b"once")
    with pytest.raises(MalformedPacket) as err:
        o.open(frame)
    assert reason(err) == "replay"
    assert o.stats.refused == {"replay": 1}


def test_reordering_within_the_window_is_accepted_but_too_old_is_not():
    s, o = sealer(), FrameOpener(KEY, CLUSTER)
    frames = [s.seal(bytes([i % 256])) for i in range(REPLAY_WINDOW + 10)]
    assert o.open(frames[-1])[1] == bytes([(REPLAY_WINDOW + 9) % 256])
    assert o.open(frames[20])[1] == bytes([20])  # 1013 behind: inside the window
    with pytest.raises(MalformedPacket) as err:
        o.open(frames[5])  # 1028 behind the newest
    assert reason(err) == "replay"
    with pytest.raises(MalformedPacket):
        o.open(frames[20])


def test_wrong_key_or_cluster_or_purpose_fails():
    frame = sealer().seal(b"x")
    for opener in (
        FrameOpener(OTHER_KEY, CLUSTER),
        FrameOpener(KEY, "beta"),
        FrameOpener(KEY, CLUSTER, purpose="other"),
    ):
        with pytest.raises(MalformedPacket) as err:
            opener.open(frame)
        assert reason(err) == "auth-failed"


def test_claimed_sender_is_authenticated():
    frame = bytearray(sealer(A).seal(b"x"))
    frame[4] = B  # claim to be node 2
    with pytest.raises(MalformedPacket) as err:
        FrameOpener(KEY, CLUSTER).open(bytes(frame))
    assert reason(err) == "auth-failed"


def test_restart_with_new_salt_is_accepted_and_old_boot_still_replay_protected():
    o = FrameOpener(KEY, CLUSTER)
    first_boot = sealer(A, seed=1)
    old = first_boot.seal(b"boot1-frame0")
    assert o.open(old) == (A, b"boot1-frame0")
    second_boot = sealer(A, seed=2)  # restart: counter starts again at 0, new salt
    assert second_boot.boot_salt != first_boot.boot_salt
    assert o.open(second_boot.seal(b"boot2-frame0")) == (A, b"boot2-frame0")
    assert o.stats.restarts_seen == 1
    with pytest.raises(MalformedPacket) as err:
        o.open(old)
    assert reason(err) == "replay"


def test_boots_per_sender_are_bounded():
    o = FrameOpener(KEY, CLUSTER)
    for seed in range(MAX_BOOTS_PER_SENDER * 3):
        s = sealer(A, seed=100 + seed)
        assert o.open(s.seal(b"hi")) == (A, b"hi")
    current = sealer(A, seed=999)
    for i in range(5):
        assert o.open(current.seal(bytes([i]))) == (A, bytes([i]))
    assert o.stats.restarts_seen == MAX_BOOTS_PER_SENDER * 3


def test_senders_are_bounded_and_forget_frees_a_slot():
    o = FrameOpener(KEY, CLUSTER)
    for n in range(1, MAX_SENDERS + 1):
        o.open(sealer(NodeId(n), seed=n).seal(b"."))
    extra = sealer(NodeId(MAX_SENDERS + 1), seed=5000)
    with pytest.raises(MalformedPacket) as err:
        o.open(extra.seal(b"."))
    assert reason(err) == "too-many-senders"
    o.forget(NodeId(1))
    assert o.open(extra.seal(b"ok")) == (NodeId(MAX_SENDERS + 1), b"ok")


def test_forged_frames_create_no_state():
    o = FrameOpener(KEY, CLUSTER)
    r = random.Random(7)
    for _ in range(MAX_SENDERS + 50):
        forged = sealer(NodeId(r.randint(1, 2**32 - 1)), seed=r.randint(0, 10**9)).seal(b"z")
        forged = forged[:-1] + bytes([forged[-1] ^ 1])
        with pytest.raises(MalformedPacket):
            o.open(forged)
    assert o.open(sealer(A).seal(b"still room")) == (A, b"still room")


def test_key_rotation_with_key_ids():
    o = FrameOpener(KEY, CLUSTER, key_id=0)
    new = FrameSealer(OTHER_KEY, CLUSTER, A, rng(3), key_id=1)
    with pytest.raises(MalformedPacket) as err:
        o.open(new.seal(b"x"))
    assert reason(err) == "unknown-key"
    o.add_key(OTHER_KEY, 1)
    assert o.open(new.seal(b"y")) == (A, b"y")
    assert o.open(sealer().seal(b"old key")) == (A, b"old key")
    o.remove_key(0)
    with pytest.raises(MalformedPacket) as err:
        o.open(sealer(seed=9).seal(b"old key"))
    assert reason(err) == "unknown-key"


def test_short_and_bad_header_frames():
    o = FrameOpener(KEY, CLUSTER)
    with pytest.raises(MalformedPacket) as err:
        o.open(b"\x01" * (SEAL_OVERHEAD_BYTES - 1))
    assert reason(err) == "short-frame"
    frame = bytearray(sealer().seal(b"x"))
    frame[0] = 2
    with pytest.raises(MalformedPacket) as err:
        o.open(bytes(frame))
    assert reason(err) == "bad-version"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_only_raise_malformed(data):
    with pytest.raises(MalformedPacket):
        FrameOpener(KEY, CLUSTER).open(data)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        FrameSealer(b"short", CLUSTER, A, rng(1))
    with pytest.raises(ValueError):
        FrameSealer(b"k" * 4097, CLUSTER, A, rng(1))
    with pytest.raises(ValueError):
        FrameSealer(KEY, CLUSTER, NodeId(0), rng(1))
    with pytest.raises(ValueError):
        FrameSealer(KEY, CLUSTER, A, lambda n: b"\0")
    with pytest.raises(ValueError):
        FrameOpener(b"short", CLUSTER)


def test_link_keys_differ_by_cluster_and_purpose():
    keys = {
        derive_link_key(KEY, "alpha"),
        derive_link_key(KEY, "beta"),
        derive_link_key(KEY, "alpha", "other"),
        derive_link_key(OTHER_KEY, "alpha"),
    }
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)


def test_header_layout():
    s = sealer(NodeId(0x01020304))
    frame = s.seal(b"")
    frame2 = s.seal(b"")
    assert frame[:4] == b"\x01\x00\x00\x00"
    assert frame[4:8] == b"\x04\x03\x02\x01"
    assert frame[8:16] == s.boot_salt
    assert frame[16:HEADER_BYTES] == (0).to_bytes(8, "little")
    assert frame2[16:HEADER_BYTES] == (1).to_bytes(8, "little")


# --- the replay window alone ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3000), max_size=300))
def test_replay_window_matches_a_naive_model(counters):
    window = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for c in counters:
        expected = c not in seen and (c > top or top - c < REPLAY_WINDOW)
        assert window.is_fresh(c) == expected
        if expected:
            window.mark(c)
            seen.add(c)
            top = max(top, c)


def test_replay_window_big_jump_clears_history():
    w = ReplayWindow()
    w.mark(5)
    w.mark(5 + 10 * REPLAY_WINDOW)
    assert not w.is_fresh(5)
    assert w.is_fresh(5 + 10 * REPLAY_WINDOW - 1)


# --- key files -------------------------------------------------------------------------------


def test_load_key_file(tmp_path):
    path = tmp_path / "authkey"
    path.write_bytes(KEY)
    path.chmod(0o400)
    assert load_key_file(path) == KEY
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode"):
        load_key_file(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="5 bytes"):
        load_key_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path / "missing")
