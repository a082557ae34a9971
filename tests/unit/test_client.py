"""The Python client library (blocking and asyncio) against the in-memory backend through the
real socket: calls, errors with codes, events kept in order while a call waits, track iterator,
cpg with try_again retried under flow control."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cmanlk.client import AsyncClient, Client, ClientError
from cmanlk.types import NodeId, RingId
from tests.unit.ipcharness import Harness, harness

__all__ = ["harness"]  # the fixture, re-exported so pytest finds it here


def test_events_arriving_during_a_call_are_kept_in_order(harness: Harness):
    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=1)
        for i in range(5):
            c.cpg_send("g", b"%d" % i)
        assert c.status()["node_id"] == 1  # replies are matched past the queued events
        names = [(e.name, e.payload) for e in c.events(0.5)]
        assert names[0][0] == "cpg_confchg"
        assert [p for n, p in names if n == "cpg_deliver"] == [b"0", b"1", b"2", b"3", b"4"]


def test_errors_carry_codes(harness: Harness):
    with Client.connect(harness.path) as c:
        with pytest.raises(ClientError) as info:
            c.cpg_send("never-joined", b"x")
        assert info.value.code == "not_exist"
        with pytest.raises(ClientError) as info:
            c.call("nope")
        assert info.value.code == "unknown_op"
        assert c.status()["node_id"] == 1  # still usable


def test_cpg_send_waits_out_try_again(harness: Harness):
    """While membership is synchronised the daemon answers try_again; the client retries."""
    svc = harness.backend.cpg
    ring, me = RingId(9, NodeId(1)), (NodeId(1),)

    def resync() -> None:
        svc.sync_process()
        svc.sync_activate()

    with Client.connect(harness.path) as c:
        c.cpg_join("g", pid=1)
        harness.on_loop(svc.sync_init, ring, me, me)
        timer = threading.Timer(0.3, lambda: harness.on_loop(resync))
        timer.start()
        try:
            c.cpg_send("g", b"after", retry_timeout_s=5)
        finally:
            timer.cancel()
        delivered = [e.payload for e in c.events(0.5) if e.name == "cpg_deliver"]
        assert delivered == [b"after"]
        harness.on_loop(svc.sync_init, ring, me, me)
        with pytest.raises(ClientError) as info:
            c.cpg_send("g", b"x", retry_timeout_s=0.2)
        assert info.value.code == "try_again"


def test_async_client_track_and_cpg(harness: Harness):
    async def scenario() -> list[Any]:
        async with await AsyncClient.connect(harness.path) as c:
            assert c.server["version"] == 2
            m = await c.membership()
            assert [x["nodeid"] for x in m["members"]] == [1]
            stream = c.track()
            first = await anext(stream)
            harness.loop.call_soon_threadsafe(
                harness.backend.change_membership, RingId(12, NodeId(1)), (NodeId(1), NodeId(2))
            )
            second = await anext(stream)
            await stream.aclose()
            await c.cpg_join("ag", pid=5)
            await c.cpg_send("ag", b"\x00payload")
            events = []
            while (ev := await c.cpg_receive(1)) is not None and len(events) < 2:
                events.append(ev)
            return [first, second, events]

    first, second, events = asyncio.run(scenario())
    assert first.data["current"] is True and second.data["view_number"] == 12
    assert [e.name for e in events] == ["cpg_confchg", "cpg_deliver"]
    assert events[1].payload == b"\x00payload" and events[1].data["pid"] == 5
