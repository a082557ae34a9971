"""Pipelined sends (IPC protocol version 2) through the real socket against the in-memory backend:
order and self-delivery of every message, refusals surfaced as SendError naming the send, the
daemon's in-order retry of try_again, the client-side window, a client that never reads is told
then cut off without the daemon's queue growing past its bound, and the version-1 fallback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmanlk.client import AsyncClient, Client, ClientError, ConnectionClosed, SendError, connection
from cmanlk.client import proto as ipcproto
from cmanlk.runtime.ipc import IpcConfig
from cmanlk.types import NodeId, RingId
from tests.unit.ipcharness import Harness, harness

__all__ = ["harness"]  # the fixture, re-exported so pytest finds it here


def delivered(c: Client, timeout: float = 0.5) -> list[bytes]:
    return [e.payload for e in c.events(timeout) if e.name == "cpg_deliver"]


def test_hello_negotiates_version_2_with_a_window(harness: Harness):
    with Client.connect(harness.path) as c:
        assert c.server["version"] == 2
        assert "pipelined_mcast" in c.server["capabilities"]
        assert c.server["mcast_window"] == {
            "messages": ipcproto.MCAST_WINDOW_MESSAGES,
            "bytes": ipcproto.MCAST_WINDOW_BYTES,
        }


def test_pipelined_sends_are_all_delivered_to_self_in_order(harness: Harness):
    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=7)
        for i in range(300):
            assert c.cpg_mcast("g", b"m%d" % i)
        assert c.cpg_mcast_many("g", (b"b%d" % i for i in range(300))) == 300
        c.cpg_flush(5)
        assert c.mcast_outstanding == (0, 0)
        events = list(c.events(0.5))
        got = [e.payload for e in events if e.name == "cpg_deliver"]
        assert got == [b"m%d" % i for i in range(300)] + [b"b%d" % i for i in range(300)]
        deliver = next(e for e in events if e.name == "cpg_deliver")
        assert deliver.data == {"group": "g", "nodeid": 1, "pid": 7}
        assert c.status()["node_id"] == 1  # request/reply still works on the same connection


def test_a_refused_pipelined_send_is_raised_at_the_next_call_naming_it(harness: Harness):
    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=1)
        c.cpg_mcast("g", b"ok-1")
        c.cpg_mcast("nope", b"lost")  # seq 2: not joined to "nope"
        # The refusal is raised by the next call: a send (before it goes out) or a flush,
        # whichever reads it first — on a busy host the send may already see it.
        with pytest.raises(SendError) as info:
            c.cpg_mcast("g", b"ok-3")
            c.cpg_flush(5)
        error = info.value
        assert (error.code, error.seq, error.group, error.more) == ("not_exist", 2, "nope", 0)
        c.cpg_flush(5)  # reported once
        sent_third = delivered(c)
        assert sent_third in ([b"ok-1", b"ok-3"], [b"ok-1"])
        c.cpg_mcast("g", b"ok-4")  # sends after a refusal go out
        c.cpg_flush(5)
        assert delivered(c) == [b"ok-4"]
        c.cpg_mcast("nope", b"x")
        deadline = time.monotonic() + 5
        with pytest.raises(SendError):  # raised by the next send, before it goes out
            while time.monotonic() < deadline:
                c.cpg_mcast("g", b"after")
                time.sleep(0.01)


def test_an_oversized_pipelined_send_is_refused_locally(harness: Harness):
    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=1)
        with pytest.raises(ClientError) as info:
            c.cpg_mcast("g", bytes(ipcproto.MAX_PAYLOAD_BYTES + 1))
        assert info.value.code == "too_large"
        assert c.mcast_outstanding == (0, 0)


def test_try_again_is_retried_by_the_daemon_in_order_and_the_window_holds(tmp_path: Path):
    """While membership is synchronised the core answers try_again: the daemon holds the first
    send and reads no further; the client fills its window (8 messages here) and is told so."""
    h = Harness(IpcConfig(path=str(tmp_path / "w.sock"), mcast_window_messages=8))
    svc = h.backend.cpg
    ring, me = RingId(9, NodeId(1)), (NodeId(1),)

    def resync() -> None:
        svc.sync_process()
        svc.sync_activate()

    try:
        with Client.connect(h.path) as c:
            assert c.server["mcast_window"]["messages"] == 8
            c.cpg_join("g", pid=1)
            h.on_loop(svc.sync_init, ring, me, me)
            sent = 0
            for i in range(20):
                if not c.cpg_mcast("g", b"%d" % i, block=False):
                    break
                sent += 1
            assert sent == 8 and c.mcast_outstanding[0] == 8
            threading.Timer(0.3, lambda: h.on_loop(resync)).start()
            c.cpg_mcast_many("g", (b"%d" % i for i in range(8, 40)), timeout_s=5)  # waits for room
            c.cpg_flush(5)
            assert delivered(c) == [b"%d" % i for i in range(40)]
            assert not any(k.startswith("mcast_refused") for k in h.server.stats)
    finally:
        h.close()


def test_a_pipelining_client_that_never_reads_is_told_then_disconnected(tmp_path: Path):
    """It floods 64 KiB messages and reads nothing: its own deliveries pile up in the daemon's
    queue for it, bounded; past half it gets a flow event, past the bound it is cut off."""
    bound = 1024 * 1024
    h = Harness(IpcConfig(path=str(tmp_path / "n.sock"), queue_bytes=bound))
    try:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(h.path)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sendall(ipcproto.request(1, "hello", {"versions": [2]}))
        raw.sendall(ipcproto.request(2, "cpg_join", {"group": "g", "pid": 1}))
        time.sleep(0.2)  # compact frames only after hello's reply
        raw.settimeout(0.5)  # once cut off, nobody reads our sends: stop at the first that stalls
        for seq in range(1, 200):  # 13 MB offered; the bound is 1 MiB
            try:
                raw.sendall(ipcproto.mcast(seq, b"g", b"y" * 65536))
            except OSError:
                break  # cut off while still sending
        deadline = time.monotonic() + 5
        while h.server.client_count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.server.client_count == 0
        assert h.server.stats.get("client_overflow") == 1
        seen = []  # what it finds when it finally reads, within the daemon's grace period
        decoder = ipcproto.FrameDecoder(compact=True)
        with contextlib.suppress(OSError):
            while data := raw.recv(65536):
                seen += [f for f in decoder.feed(data) if isinstance(f, ipcproto.Frame)]
        events = [f.header.get("event") or f.header.get("code") for f in seen]
        assert "flow" in events and events[-1] == "too_slow"
        assert events.index("flow") < events.index("too_slow")
        raw.close()
    finally:
        h.close()


def test_a_sender_that_never_reads_its_events_is_stopped_by_its_own_bound(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
):
    """Reading acknowledgements reads the deliveries behind them too; they are kept for events(),
    up to MAX_BUFFERED_EVENTS, then the library gives up rather than grow without bound."""
    monkeypatch.setattr(connection, "MAX_BUFFERED_EVENTS", 100)
    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=1)
        with pytest.raises(ConnectionClosed) as info:
            for i in range(5000):
                c.cpg_mcast("g", b"%d" % i)
                time.sleep(0.0005)
        assert "unread events" in str(info.value)


def test_malformed_compact_frames_are_refused_and_the_stream_goes_on(harness: Harness):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(harness.path)
        raw.settimeout(5)
        raw.sendall(ipcproto.request(1, "hello", {"versions": [1, 2]}))
        decoder = ipcproto.FrameDecoder(compact=True)

        def frames(n: int) -> list[ipcproto.Frame]:
            out: list[ipcproto.Frame] = []
            while len(out) < n:
                out += [f for f in decoder.feed(raw.recv(65536)) if isinstance(f, ipcproto.Frame)]
            return out

        assert frames(1)[0].header["result"]["version"] == 2
        bad = ipcproto.mcast(1, b"g" * 10, b"")
        bad = bad[:12] + b"\xff\xff" + bad[14:]  # group length past the frame's end
        raw.sendall(bad + ipcproto.request(2, "status"))
        error, status = frames(2)
        assert error.header["code"] == "bad_request"
        assert status.header["result"]["node_id"] == 1


def test_version_1_clients_get_json_deliveries_and_cpg_mcast_falls_back(harness: Harness):
    with Client.connect(harness.path, versions=(1,)) as old:
        assert old.server["version"] == 1 and "mcast_window" not in old.server
        old.cpg_join("g", pid=3)
        assert old.cpg_mcast("g", b"one")  # request/reply underneath
        old.cpg_mcast_many("g", [b"two", b"three"])
        old.cpg_flush(1)
        assert delivered(old) == [b"one", b"two", b"three"]


def test_async_client_pipelines_and_surfaces_refusals(harness: Harness):
    async def scenario() -> tuple[list[bytes], SendError]:
        async with await AsyncClient.connect(harness.path) as c:
            await c.cpg_join("ag", pid=5)
            for i in range(100):
                await c.cpg_mcast("ag", b"a%d" % i)
            assert await c.cpg_mcast_many("ag", [b"b%d" % i for i in range(100)]) == 100
            await c.cpg_mcast("other", b"refused")
            with pytest.raises(SendError) as info:
                await c.cpg_flush(5)
            got = []
            while (ev := await c.cpg_receive(0.5)) is not None:
                if ev.name == "cpg_deliver":
                    got.append(ev.payload)
            return got, info.value

    got, error = asyncio.run(scenario())
    assert got == [b"a%d" % i for i in range(100)] + [b"b%d" % i for i in range(100)]
    assert error.code == "not_exist" and error.seq == 201


@pytest.fixture
def many_clients(harness: Harness) -> Iterator[list[Client]]:
    clients = [Client.connect(harness.path) for _ in range(3)]
    yield clients
    for c in clients:
        c.close()


def test_every_member_sees_one_order_of_pipelined_sends(many_clients: list[Client]):
    for pid, c in enumerate(many_clients, 1):
        c.cpg_join("g", pid=pid)
    for c in many_clients:  # let each see the joins that follow its own
        list(c.events(0.2))
    for round_ in range(50):
        for pid, c in enumerate(many_clients, 1):
            c.cpg_mcast("g", b"%d.%d" % (pid, round_))
    for c in many_clients:
        c.cpg_flush(5)
    orders = [delivered(c) for c in many_clients]
    assert len(orders[0]) == 150 and orders[0] == orders[1] == orders[2]
