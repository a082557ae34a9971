"""The client's sans-I/O core (cmanlk/client/connection.py, operations.py) without a socket or a
clock: a scripted daemon answers the frames an operation writes, a virtual clock answers its
reads. The real sockets are tested in test_client.py / test_ipc_pipeline.py."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from cmanlk.client import operations as ops
from cmanlk.client import proto as ipcproto
from cmanlk.client.connection import (
    CLIENT_RETRY,
    ClientError,
    Connection,
    ConnectionClosed,
    Operation,
    Read,
    RetryPolicy,
    SendError,
    Write,
)
from cmanlk.errors import ErrorCode

T = TypeVar("T")
Daemon = Callable[[ipcproto.Frame], list[bytes]]


class Driver:
    """Runs an operation: each written frame goes to `daemon`, whose answers arrive on the next
    read; a read with nothing to hand over moves the clock to its deadline."""

    def __init__(self, conn: Connection, daemon: Daemon) -> None:
        self.conn, self.daemon, self.now = conn, daemon, 100.0
        self.inbox: deque[bytes] = deque()
        self.reads: list[float | None] = []
        self.decoder = ipcproto.FrameDecoder(compact=True)

    def run(self, op: Operation[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Write):
                    for frame in self.decoder.feed(step.data):
                        assert isinstance(frame, ipcproto.Frame)
                        self.inbox.extend(self.daemon(frame))
                elif isinstance(step, Read):
                    self.reads.append(step.until)
                    if self.inbox:
                        self.conn.receive(self.inbox.popleft())
                    elif step.until is None:
                        raise AssertionError("would wait forever")
                    else:
                        self.now = max(self.now, step.until)
                step = op.send(self.now)
        except StopIteration as done:
            result: T = done.value
            return result


def replying(answer: Callable[[ipcproto.Frame], dict[str, Any] | tuple[ErrorCode, str]]) -> Daemon:
    def daemon(frame: ipcproto.Frame) -> list[bytes]:
        out = answer(frame)
        request_id = frame.header.get("id")
        if isinstance(out, tuple):
            return [ipcproto.error(request_id, *out)]
        return [ipcproto.reply(request_id, out)]

    return daemon


def test_a_reply_is_matched_by_id_and_events_before_it_are_kept_in_order():
    conn = Connection()

    def daemon(frame: ipcproto.Frame) -> list[bytes]:
        stale = ipcproto.reply(999, {"stale": True})  # a reply nobody waits for is dropped
        before = ipcproto.event("quorum", {"quorate": True})
        return [stale + before, ipcproto.reply(frame.header["id"], {"node_id": 1})]

    driver = Driver(conn, daemon)
    assert driver.run(ops.status(conn)) == {"node_id": 1}
    event = conn.pop_event()
    assert event is not None and (event.name, event.data) == ("quorum", {"quorate": True})
    assert conn.pop_event() is None
    assert driver.run(ops.status(conn)) == {"node_id": 1}  # ids move on: the second request is 2


def test_a_refusal_raises_client_error_with_code_and_member():
    conn = Connection()
    driver = Driver(conn, replying(lambda f: (ErrorCode.NOT_EXIST, "not in g")))
    with pytest.raises(ClientError) as info:
        driver.run(ops.cpg_leave(conn, "g"))
    assert (info.value.code, info.value.error) == ("not_exist", ErrorCode.NOT_EXIST)


def test_try_again_is_retried_with_doubling_pauses_until_the_limit():
    conn = Connection()
    tries: list[float] = []

    def answer(frame: ipcproto.Frame) -> tuple[ErrorCode, str]:
        tries.append(driver.now)
        return ErrorCode.TRY_AGAIN, "sync"

    driver = Driver(conn, replying(answer))
    with pytest.raises(ClientError) as info:
        driver.run(ops.cpg_send(conn, "g", b"x", retry_timeout_s=1.0))
    assert info.value.error is ErrorCode.TRY_AGAIN
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(tries)]
    assert gaps[:4] == [0.001, 0.002, 0.004, 0.008]
    assert max(gaps) == CLIENT_RETRY.longest_s
    assert tries[-1] - tries[0] <= 1.0


def test_try_again_then_success_returns_and_keeps_what_came_meanwhile():
    conn = Connection()
    answers = iter([(ErrorCode.TRY_AGAIN, "sync"), (ErrorCode.TRY_AGAIN, "sync"), {}])

    def daemon(frame: ipcproto.Frame) -> list[bytes]:
        out = next(answers)
        note = ipcproto.event("cpg_confchg", {"group": "g"})
        if isinstance(out, tuple):
            return [ipcproto.error(frame.header["id"], *out) + note]
        return [ipcproto.reply(frame.header["id"], out)]

    Driver(conn, daemon).run(ops.cpg_join(conn, "g", pid=7))
    kept = []
    while (event := conn.pop_event()) is not None:
        kept.append(event.name)
    assert kept == ["cpg_confchg", "cpg_confchg"]  # one per refused try, none lost


def test_retry_policy_pauses_grow_and_stop_at_the_limit():
    retry = RetryPolicy(0.1, 0.3, 1.0).start(0.0)
    now, pauses = 0.0, []
    while (pause := retry.next_pause(now)) is not None:
        pauses.append(pause)
        now += pause
    assert pauses == [0.1, 0.2, 0.3, 0.3]  # the next 0.3 would start past 1.0


def _pipelined() -> Connection:
    conn = Connection()
    conn.configure({"version": 2, "mcast_window": {"messages": 3, "bytes": 100}})
    return conn


def test_the_window_holds_sends_until_acknowledged_and_never_blocks_with_block_false():
    conn = _pipelined()
    written: list[int] = []

    def daemon(frame: ipcproto.Frame) -> list[bytes]:
        written.append(frame.header["seq"])
        return []  # acknowledges nothing

    driver = Driver(conn, daemon)
    for _ in range(3):
        assert driver.run(ops.cpg_mcast(conn, "g", b"m" * 10, block=False))
    assert not driver.run(ops.cpg_mcast(conn, "g", b"m", block=False))  # 3 messages out: full
    assert conn.outstanding == (3, 30) and written == [1, 2, 3]
    conn.receive(ipcproto.mcast_ack(2))
    assert conn.outstanding == (1, 10)
    assert driver.run(ops.cpg_mcast(conn, "g", b"m" * 90, block=False))  # 100 bytes: fits
    with pytest.raises(ClientError) as info:  # blocking: waits, then try_again past the timeout
        driver.run(ops.cpg_mcast(conn, "g", b"m", timeout_s=2.0))
    assert info.value.error is ErrorCode.TRY_AGAIN


def test_a_refused_pipelined_send_is_raised_by_the_next_send_with_the_count_of_later_ones():
    conn = _pipelined()
    driver = Driver(conn, lambda frame: [])
    for _ in range(3):
        driver.run(ops.cpg_mcast(conn, "g", b"x"))
    refusals = [
        ipcproto.event("cpg_send_error", {"seq": s, "group": "g", "code": "not_exist", "message": "no"})
        for s in (1, 2)
    ]
    conn.receive(b"".join(refusals) + ipcproto.mcast_ack(3))
    with pytest.raises(SendError) as info:
        driver.run(ops.cpg_flush(conn))
    assert (info.value.seq, info.value.more, info.value.code) == (1, 1, "not_exist")
    driver.run(ops.cpg_flush(conn))  # reported once


def test_a_connection_level_error_ends_every_wait_and_a_closed_connection_raises():
    conn = Connection()
    driver = Driver(conn, lambda frame: [ipcproto.error(None, ErrorCode.TOO_SLOW, "cut off")])
    with pytest.raises(ClientError) as info:
        driver.run(ops.status(conn))
    assert info.value.error is ErrorCode.TOO_SLOW
    other = Connection()
    other.receive(ipcproto.event("track", {"current": True}))
    other.close()
    driver = Driver(other, lambda frame: [])
    event = driver.run(ops.next_event(other, 1.0))  # what came before the close is still read
    assert event is not None and event.name == "track"
    with pytest.raises(ConnectionClosed):
        driver.run(ops.next_event(other, 1.0))


def test_next_event_times_out_on_the_drivers_clock():
    conn = Connection()
    driver = Driver(conn, lambda frame: [])
    assert driver.run(ops.next_event(conn, 5.0)) is None
    assert driver.now == 105.0
