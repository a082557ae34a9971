"""NetlinkWatch conformance: the real rtnetlink adapter (in a network namespace made here) and its
in-memory twin report the same events for the same changes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from kernel_glue.fakes_net import FakeNet, FakeNetlink
from kernel_glue.netlink import (
    RT_SCOPE_LINK,
    AddressAdded,
    AddressRemoved,
    LinkDown,
    LinkRemoved,
    LinkRenamed,
    LinkUp,
    NetEvent,
    NetlinkWatch,
    RtnlWatch,
)

EVENT_WAIT_S = 3.0


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (no pytest-asyncio dependency)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper

can_netns = os.geteuid() == 0 and shutil.which("ip") is not None


class RealNet:
    """Drives a real namespace with iproute2."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True, timeout=10)

    def veth(self, a: str, b: str) -> None:
        self.ip("link", "add", a, "type", "veth", "peer", "name", b)

    def set_up(self, name: str, up: bool) -> None:
        self.ip("link", "set", "dev", name, "up" if up else "down")

    def mtu(self, name: str, mtu: int) -> None:
        self.ip("link", "set", "dev", name, "mtu", str(mtu))

    def add_addr(self, name: str, addr: str, plen: int) -> None:
        extra = ["nodad"] if ":" in addr else []
        self.ip("addr", "add", f"{addr}/{plen}", "dev", name, *extra)

    def del_addr(self, name: str, addr: str, plen: int) -> None:
        self.ip("addr", "del", f"{addr}/{plen}", "dev", name)

    def rename(self, old: str, new: str) -> None:
        self.ip("link", "set", "dev", old, "name", new)

    def delete(self, name: str) -> None:
        self.ip("link", "del", name)


class FakeVethNet:
    """Drives a FakeNet with veth semantics: an end has carrier only while its peer is up."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.peer: dict[str, str] = {}
        self.admin: dict[str, bool] = {}

    def veth(self, a: str, b: str) -> None:
        self.net.add_link(a)
        self.net.add_link(b)
        self.peer.update({a: b, b: a})
        self.admin.update({a: False, b: False})

    def set_up(self, name: str, up: bool) -> None:
        self.admin[name] = up
        for end in (name, self.peer[name]):
            self.net.set_state(end, self.admin[end], carrier=self.admin[self.peer[end]])

    def mtu(self, name: str, mtu: int) -> None:
        self.net.set_mtu(name, mtu)

    def add_addr(self, name: str, addr: str, plen: int) -> None:
        self.net.add_address(name, addr, plen)

    def del_addr(self, name: str, addr: str, plen: int) -> None:
        self.net.remove_address(name, addr)

    def rename(self, old: str, new: str) -> None:
        self.net.rename(old, new)
        for d in (self.peer, self.admin):
            d[new] = d.pop(old)
        self.peer[self.peer[new]] = new

    def delete(self, name: str) -> None:
        other = self.peer.pop(name)
        self.net.delete(name)
        self.net.delete(other)


@pytest.fixture
def namespace() -> Iterator[str]:
    if not can_netns:
        pytest.skip("needs root and iproute2")
    ns = f"cmk{os.getpid()}xnl"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


@pytest.fixture(params=["fake", "real"])
def env(request: pytest.FixtureRequest) -> tuple[Any, Callable[[], NetlinkWatch]]:
    if request.param == "fake":
        fake = FakeNet()
        return FakeVethNet(fake), lambda: FakeNetlink(fake)
    ns = request.getfixturevalue("namespace")
    return RealNet(ns), lambda: RtnlWatch(netns=ns)


async def wait_event(events: AsyncIterator[NetEvent], pred: Callable[[NetEvent], bool]) -> NetEvent:
    """Return the first event matching `pred`, failing after EVENT_WAIT_S (bounded wait)."""
    seen: list[NetEvent] = []
    try:
        async with asyncio.timeout(EVENT_WAIT_S):
            async for ev in events:
                if pred(ev):
                    return ev
                seen.append(ev)
    except TimeoutError:
        pass
    raise AssertionError(f"no matching event; saw {seen}")


def has_address(ev: NetEvent, kind: type, address: str) -> bool:
    if not isinstance(ev, AddressAdded | AddressRemoved):
        return False
    return isinstance(ev, kind) and ev.address.address == address


async def started(make: Callable[[], NetlinkWatch]) -> tuple[NetlinkWatch, AsyncIterator[NetEvent]]:
    watch = make()
    await watch.start()
    return watch, aiter(watch.events())


@run_async
async def test_existing_interfaces_are_resolved_by_name(env: tuple[Any, Any]) -> None:
    net, make = env
    net.veth("ta", "tb")
    watch, _ = await started(make)
    try:
        info = watch.interface("ta")
        assert info is not None and info.name == "ta" and info.mtu == 1500
        assert not info.is_usable and not info.is_loopback
        lo = watch.interface("lo")
        assert lo is not None and lo.is_loopback
        assert watch.interface("nope") is None
        assert info.index in [i.index for i in watch.interfaces()]
    finally:
        await watch.close()


@run_async
async def test_carrier_and_admin_state_become_up_and_down_events(env: tuple[Any, Any]) -> None:
    net, make = env
    net.veth("ta", "tb")
    watch, events = await started(make)
    try:
        net.set_up("ta", True)
        net.set_up("tb", True)
        up = await wait_event(events, lambda e: isinstance(e, LinkUp) and e.name == "ta")
        assert isinstance(up, LinkUp) and up.mtu == 1500
        info = watch.interface("ta")
        assert info is not None and info.is_usable and info.index == up.ifindex
        net.set_up("tb", False)  # peer down: ta keeps IFF_UP but loses carrier
        await wait_event(events, lambda e: isinstance(e, LinkDown) and e.name == "ta")
        net.set_up("tb", True)
        await wait_event(events, lambda e: isinstance(e, LinkUp) and e.name == "ta")
        net.set_up("ta", False)
        await wait_event(events, lambda e: isinstance(e, LinkDown) and e.name == "ta")
    finally:
        await watch.close()


@run_async
async def test_mtu_change_is_reported_with_link_up(env: tuple[Any, Any]) -> None:
    net, make = env
    net.veth("ta", "tb")
    net.set_up("ta", True)
    net.set_up("tb", True)
    watch, events = await started(make)
    try:
        net.mtu("ta", 1400)
        ev = await wait_event(events, lambda e: isinstance(e, LinkUp) and e.name == "ta")
        assert isinstance(ev, LinkUp) and ev.mtu == 1400
    finally:
        await watch.close()


@run_async
async def test_ipv4_ipv6_and_link_local_addresses_come_and_go(env: tuple[Any, Any]) -> None:
    net, make = env
    net.veth("ta", "tb")
    watch, events = await started(make)
    try:
        for addr, plen, family in [
            ("10.77.0.1", 24, socket.AF_INET),
            ("fd00:77::1", 64, socket.AF_INET6),
            ("fe80::77", 64, socket.AF_INET6),
        ]:
            net.add_addr("ta", addr, plen)
            ev = await wait_event(events, lambda e, a=addr: has_address(e, AddressAdded, a))
            assert isinstance(ev, AddressAdded) and ev.name == "ta"
            assert ev.address.family == family and ev.address.prefixlen == plen
            assert ev.address.is_link_local == addr.startswith("fe80")
            if addr.startswith("fe80"):
                assert ev.address.scope == RT_SCOPE_LINK
        info = watch.interface("ta")
        assert info is not None
        assert {"10.77.0.1", "fd00:77::1", "fe80::77"} <= {a.address for a in info.addresses}
        net.del_addr("ta", "10.77.0.1", 24)
        ev = await wait_event(events, lambda e: has_address(e, AddressRemoved, "10.77.0.1"))
        info = watch.interface("ta")
        assert info is not None and "10.77.0.1" not in {a.address for a in info.addresses}
    finally:
        await watch.close()


@run_async
async def test_rename_and_delete(env: tuple[Any, Any]) -> None:
    net, make = env
    net.veth("ta", "tb")
    watch, events = await started(make)
    try:
        index = watch.interface("ta").index  # type: ignore[union-attr]
        net.rename("ta", "tc")
        ev = await wait_event(events, lambda e: isinstance(e, LinkRenamed))
        assert ev == LinkRenamed(index, "ta", "tc")
        assert watch.interface("ta") is None and watch.interface("tc") is not None
        net.delete("tc")
        ev = await wait_event(events, lambda e: isinstance(e, LinkRemoved) and e.ifindex == index)
        assert ev == LinkRemoved(index, "tc")
        assert watch.interface("tc") is None
    finally:
        await watch.close()


@run_async
async def test_close_ends_the_event_stream(env: tuple[Any, Any]) -> None:
    _, make = env
    watch, events = await started(make)
    await watch.close()
    async with asyncio.timeout(EVENT_WAIT_S):
        assert [e async for e in events] == []
