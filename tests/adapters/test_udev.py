"""UdevWatch conformance: raw kernel uevents in a namespace made here, and the in-memory twin,
report interface add/rename/remove alike. Also pins down that net uevents are per namespace.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from kernel_glue.fakes_net import FakeNet, FakeUdev
from kernel_glue.udev import (
    InterfaceAdded,
    InterfaceRemoved,
    InterfaceRenamed,
    UdevEvent,
    UdevWatch,
    UeventWatch,
    parse_uevent,
)

EVENT_WAIT_S = 3.0
can_netns = os.geteuid() == 0 and shutil.which("ip") is not None


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


class RealNet:
    def __init__(self, ns: str) -> None:
        self.ns = ns

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True, timeout=10)

    def create(self, name: str) -> None:
        # veth, not dummy: the dummy module may be absent in containers. The peer is `<name>p`.
        self.ip("link", "add", name, "type", "veth", "peer", "name", name + "p")

    def rename(self, old: str, new: str) -> None:
        self.ip("link", "set", "dev", old, "name", new)

    def delete(self, name: str) -> None:
        self.ip("link", "del", name)


class FakeDriver:
    def __init__(self, net: FakeNet) -> None:
        self.net = net

    def create(self, name: str) -> None:
        self.net.add_link(name + "p")
        self.net.add_link(name)

    def rename(self, old: str, new: str) -> None:
        self.net.rename(old, new)

    def delete(self, name: str) -> None:
        self.net.delete(name)
        self.net.delete(name.replace("ub", "ua") + "p")


@pytest.fixture
def namespace() -> Iterator[str]:
    if not can_netns:
        pytest.skip("needs root and iproute2")
    ns = f"cmk{os.getpid()}xud"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


@pytest.fixture
def other_namespace(namespace: str) -> Iterator[str]:
    ns = namespace + "o"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


@pytest.fixture(params=["fake", "real"])
def env(request: pytest.FixtureRequest) -> tuple[Any, Callable[[], UdevWatch]]:
    if request.param == "fake":
        fake = FakeNet()
        return FakeDriver(fake), lambda: FakeUdev(fake)
    ns = request.getfixturevalue("namespace")
    return RealNet(ns), lambda: UeventWatch(netns=ns)


async def collect(
    events: AsyncIterator[UdevEvent], count: int, wait_s: float = EVENT_WAIT_S
) -> list[Any]:
    out: list[UdevEvent] = []
    try:
        async with asyncio.timeout(wait_s):
            async for ev in events:
                out.append(ev)
                if len(out) == count:
                    break
    except TimeoutError:
        pass
    return out


@run_async
async def test_interface_add_rename_remove_are_reported(env: tuple[Any, Any]) -> None:
    net, make = env
    watch = make()
    await watch.start()
    try:
        events = aiter(watch.events())
        net.create("ua")
        net.rename("ua", "ub")
        net.delete("ub")
        mentioned = {"ua", "ub"}
        got = [
            e for e in await collect(events, 5)
            if (e.new if isinstance(e, InterfaceRenamed) else e.name) in mentioned
        ]
        assert [type(e) for e in got] == [InterfaceAdded, InterfaceRenamed, InterfaceRemoved], got
        index = got[0].ifindex
        assert got[0] == InterfaceAdded("ua", index) and index > 0
        assert got[1] == InterfaceRenamed("ua", "ub", index)
        assert got[2] == InterfaceRemoved("ub", index)
    finally:
        await watch.close()


@run_async
async def test_net_uevents_reach_only_the_owning_namespace(namespace: str, other_namespace: str) -> None:
    """A watcher of another namespace sees nothing of our namespace's interfaces (kernel behaviour
    since net kobjects are namespace-tagged): the daemon must watch from inside its own namespace.
    """
    other = UeventWatch(netns=other_namespace)
    mine = UeventWatch(netns=namespace)
    await other.start()
    await mine.start()
    try:
        RealNet(namespace).create("ux")
        assert await collect(aiter(mine.events()), 1) != []
        assert await collect(aiter(other.events()), 1, wait_s=0.5) == []
    finally:
        await other.close()
        await mine.close()


def test_parse_uevent_kernel_messages() -> None:
    move = (
        b"move@/devices/virtual/net/new0\0ACTION=move\0DEVPATH=/devices/virtual/net/new0\0"
        b"SUBSYSTEM=net\0DEVPATH_OLD=/devices/virtual/net/old0\0INTERFACE=new0\0IFINDEX=7\0SEQNUM=9\0"
    )
    assert parse_uevent(move) == InterfaceRenamed("old0", "new0", 7)
    add = b"add@/x\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=e1\0IFINDEX=3\0"
    assert parse_uevent(add) == InterfaceAdded("e1", 3)
    assert parse_uevent(b"add@/x\0ACTION=add\0SUBSYSTEM=queues\0") is None
    assert parse_uevent(b"libudev\0whatever") is None
    assert parse_uevent(b"\xff\xfe garbage \0=\0IFINDEX=zz\0SUBSYSTEM=net\0INTERFACE=q\0ACTION=add") == (
        InterfaceAdded("q", 0)
    )
