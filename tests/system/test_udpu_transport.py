"""The udpu transport on loopback addresses (no root needed): corosync 3's socket layout and filters.

- the token (unicast) leaves from the receive socket, source port = mcastport;
- "multicast" is one datagram per member from a per-member socket with an ephemeral port;
- datagrams from unlisted addresses are dropped and counted, listed ones are delivered with the
  sender's node id whatever their source port; set_nodes() changes that at run time.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from cmanlk.config import LinkConfig, NodeAddresses
from cmanlk.runtime.transport import Transport
from cmanlk.runtime.udpu import UdpuTransport, find_local_node, resolve
from cmanlk.types import NodeId

A, B, C = "127.0.0.11", "127.0.0.12", "127.0.0.13"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((A, 0))
        return int(s.getsockname()[1])


def nodes(*addrs: str) -> dict[NodeId, NodeAddresses]:
    return {NodeId(i): NodeAddresses.of({0: a}) for i, a in enumerate(addrs, 1)}


async def wait_for(pred, timeout_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    """Poll `pred` (the transport delivers from the loop's reader callback) for at most timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)  # the condition is set by the reader callback


def test_udpu_socket_layout_and_source_filter() -> None:
    asyncio.run(_layout_and_filter())


async def _layout_and_filter() -> None:
    port = free_port()
    t = UdpuTransport(NodeId(1), nodes(A, B), LinkConfig(0, port=port))
    assert isinstance(t, Transport)
    got: list[tuple[bytes, NodeId | None, int]] = []
    await t.start(lambda data, src, link: got.append((data, src, link)))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((B, port))
    peer.settimeout(2)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((C, 0))
    try:
        t.unicast(NodeId(2), b"token")
        data, src = peer.recvfrom(100)
        assert data == b"token" and src == (A, port)  # tokens leave from mcastport
        t.multicast((NodeId(2),), b"mcast")
        data, src = peer.recvfrom(100)
        assert data == b"mcast" and src[0] == A and src[1] != port  # per-member ephemeral socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_port:
            other_port.bind((B, 0))
            other_port.sendto(b"from-b", (A, port))
            await wait_for(lambda: len(got) == 1)
        assert got == [(b"from-b", NodeId(2), 0)]

        stranger.sendto(b"from-c", (A, port))
        await wait_for(lambda: t.counters["dropped_unlisted_source"] == 1)
        assert len(got) == 1

        t.set_nodes(nodes(A, B, C))  # SIGHUP: node 3 is listed now
        stranger.sendto(b"from-c", (A, port))
        await wait_for(lambda: len(got) == 2)
        assert got[1] == (b"from-c", NodeId(3), 0)
        status = t.links()[0]
        assert status.up and status.local_address == A
        assert {p.node: p.reachable for p in status.peers} == {2: True, 3: True}
        assert status.counters["sent"] == 2
    finally:
        peer.close()
        stranger.close()
        await t.close()
        await t.close()  # idempotent
    t.unicast(NodeId(2), b"after close")  # ignored, no exception
    assert not t.links()[0].up


def test_send_to_an_unknown_node_is_counted_not_raised() -> None:
    async def go() -> None:
        t = UdpuTransport(NodeId(1), nodes(A, B), LinkConfig(0, port=free_port()))
        await t.start(lambda *_: None)
        try:
            t.unicast(NodeId(9), b"x")
            t.multicast((NodeId(9),), b"x")
            assert t.counters["send_unknown_node"] == 2
        finally:
            await t.close()

    asyncio.run(go())


def test_own_address_must_be_in_the_nodelist() -> None:
    with pytest.raises(OSError):
        UdpuTransport(NodeId(5), nodes(A, B), LinkConfig(0))


def test_resolve_handles_ipv4_ipv6_and_scopes() -> None:
    v4 = resolve("10.1.2.3", 5405)
    assert v4.family == socket.AF_INET and v4.sockaddr == ("10.1.2.3", 5405)
    ll = resolve("fe80::1%lo", 5405)
    assert ll.family == socket.AF_INET6 and ll.sockaddr[3] == socket.if_nametoindex("lo")
    assert resolve("fe80::1%1", 1).sockaddr[3] == 1
    assert resolve("FD00::1", 1).key == resolve("fd00::1", 1).key
    with pytest.raises(OSError):
        resolve("no-such-host.invalid", 1)


def test_find_local_node_matches_exactly_one_local_address() -> None:
    assert find_local_node(nodes("192.0.2.77", "127.0.0.1")) == 2  # TEST-NET-1 is never local
    assert find_local_node(nodes("127.0.0.1", "127.0.0.2")) is None  # ambiguous: --nodeid needed
    assert find_local_node(nodes("192.0.2.77")) is None


def test_a_ring_member_is_reachable_even_when_not_heard_from() -> None:
    """On an idle ring a node hears only its token predecessor: ring membership says reachable."""
    t = UdpuTransport(NodeId(1), nodes(A, B, C), LinkConfig(0, port=free_port()))
    before = {p.node: (p.reachable, p.reason) for p in t.links()[0].peers}
    assert before == {2: (False, "never heard from"), 3: (False, "never heard from")}
    t.set_ring_members((NodeId(1), NodeId(3)))
    after = {p.node: (p.reachable, p.reason) for p in t.links()[0].peers}
    assert after == {2: (False, "never heard from"), 3: (True, "")}
