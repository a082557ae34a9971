"""The transports' shared datagram layer: a wake-up's datagrams reach the node as one batch."""

from __future__ import annotations

from cmanlk.runtime.datagrams import Datagram, Inbox
from cmanlk.types import NodeId


def test_a_plain_callback_gets_one_call_per_datagram_in_order() -> None:
    got: list[tuple[bytes, NodeId | None, int]] = []
    inbox = Inbox(lambda data, src, link: got.append((data, src, link)))
    inbox.add(b"a", NodeId(2), 0)
    inbox.add(b"b", None, 1)
    assert got == []  # nothing before the flush
    inbox.flush()
    assert got == [(b"a", NodeId(2), 0), (b"b", None, 1)]
    inbox.flush()  # empty: nothing again
    assert len(got) == 2


def test_a_batch_callback_gets_the_whole_wake_up_at_once() -> None:
    class Receiver:
        def __init__(self) -> None:
            self.single: list[Datagram] = []
            self.batches: list[list[Datagram]] = []

        def __call__(self, data: bytes, src: NodeId | None, link: int) -> None:
            self.single.append((data, src, link))

        def batch(self, items: list[Datagram]) -> None:
            self.batches.append(items)

    r = Receiver()
    inbox = Inbox(r)
    for i in range(3):
        inbox.add(bytes([i]), NodeId(i + 1), 0)
    inbox.flush()
    inbox.add(b"x", None, 0)
    inbox.flush()
    assert r.single == []
    assert r.batches == [[(b"\0", 1, 0), (b"\1", 2, 0), (b"\2", 3, 0)], [(b"x", None, 0)]]
