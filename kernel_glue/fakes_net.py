"""In-memory twins of the network adapters (NetlinkWatch, UdevWatch) for tests of the runtime.

`FakeNet` plays the kernel: tests create, rename, delete interfaces and change carrier and
addresses on it, and every attached watch sees the same events the real adapters report.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

from kernel_glue.netlink import (
    IFF_LOOPBACK,
    IFF_LOWER_UP,
    IFF_UP,
    RT_SCOPE_LINK,
    InterfaceAddress,
    InterfaceCache,
    InterfaceInfo,
    NetEvent,
)
from kernel_glue.udev import InterfaceAdded, InterfaceRemoved, InterfaceRenamed, UdevEvent


class FakeNet:
    """A pretend network namespace: interfaces with flags, MTU and addresses."""

    def __init__(self) -> None:
        self._next_index = 2
        lo = InterfaceInfo(1, "lo", IFF_UP | IFF_LOWER_UP | IFF_LOOPBACK, 65536)
        self._links: dict[int, InterfaceInfo] = {1: lo}
        self.netlink_watches: list[FakeNetlink] = []
        self.udev_watches: list[FakeUdev] = []

    # -- what tests do ------------------------------------------------------------------------
    def add_link(self, name: str, mtu: int = 1500) -> int:
        """Create a (down) interface; returns its index."""
        index = self._next_index
        self._next_index += 1
        self._links[index] = InterfaceInfo(index, name, 0, mtu)
        self._link_changed(index)
        self._udev(InterfaceAdded(name, index))
        return index

    def set_state(self, name: str, admin_up: bool, carrier: bool = True) -> None:
        """Set IFF_UP and carrier (IFF_LOWER_UP) of `name`."""
        info = self._get(name)
        flags = (IFF_UP if admin_up else 0) | (IFF_LOWER_UP if admin_up and carrier else 0)
        self._links[info.index] = InterfaceInfo(info.index, info.name, flags, info.mtu, info.addresses)
        self._link_changed(info.index)

    def set_mtu(self, name: str, mtu: int) -> None:
        """Change the MTU of `name`."""
        info = self._get(name)
        self._links[info.index] = InterfaceInfo(info.index, info.name, info.flags, mtu, info.addresses)
        self._link_changed(info.index)

    def rename(self, old: str, new: str) -> None:
        """Rename an interface (the kernel requires it to be down; the fake does not care)."""
        info = self._get(old)
        self._links[info.index] = InterfaceInfo(info.index, new, info.flags, info.mtu, info.addresses)
        self._link_changed(info.index)
        self._udev(InterfaceRenamed(old, new, info.index))

    def delete(self, name: str) -> None:
        """Delete an interface with its addresses."""
        info = self._get(name)
        for addr in info.addresses:
            self._addr_changed(addr, False)
        del self._links[info.index]
        for w in self.netlink_watches:
            w.push(w.cache.unlink(info.index))
        self._udev(InterfaceRemoved(name, info.index))

    def add_address(self, name: str, address: str, prefixlen: int) -> None:
        """Add an IPv4 or IPv6 address (fe80::/10 and 169.254/16 get link scope)."""
        info = self._get(name)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        link_local = address.lower().startswith("fe80:") or address.startswith("169.254.")
        addr = InterfaceAddress(info.index, family, address, prefixlen, RT_SCOPE_LINK if link_local else 0)
        self._links[info.index] = InterfaceInfo(
            info.index, info.name, info.flags, info.mtu, (*info.addresses, addr)
        )
        self._addr_changed(addr, True)

    def remove_address(self, name: str, address: str) -> None:
        """Remove an address from `name`."""
        info = self._get(name)
        gone = [a for a in info.addresses if a.address == address]
        self._links[info.index] = InterfaceInfo(
            info.index, info.name, info.flags, info.mtu, tuple(a for a in info.addresses if a not in gone)
        )
        for addr in gone:
            self._addr_changed(addr, False)

    def snapshot(self) -> list[InterfaceInfo]:
        """Return the interfaces, sorted by index."""
        return [self._links[i] for i in sorted(self._links)]

    # -- plumbing -----------------------------------------------------------------------------
    def _get(self, name: str) -> InterfaceInfo:
        for info in self._links.values():
            if info.name == name:
                return info
        raise KeyError(name)

    def _link_changed(self, index: int) -> None:
        info = self._links[index]
        for w in self.netlink_watches:
            w.push(w.cache.link(index, info.name, info.flags, info.mtu))

    def _addr_changed(self, addr: InterfaceAddress, present: bool) -> None:
        for w in self.netlink_watches:
            w.push(w.cache.address(addr, present))

    def _udev(self, ev: UdevEvent) -> None:
        for w in self.udev_watches:
            w.push([ev])


class FakeNetlink:
    """In-memory NetlinkWatch over a FakeNet."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.cache = InterfaceCache()
        self._queue: asyncio.Queue[NetEvent | None] = asyncio.Queue()
        self._started = False

    async def start(self) -> None:
        """Attach to the FakeNet and load its state (no events for what already exists)."""
        for info in self.net.snapshot():
            self.cache.link(info.index, info.name, info.flags, info.mtu)
            for addr in info.addresses:
                self.cache.address(addr, True)
        self.net.netlink_watches.append(self)
        self._started = True

    def interface(self, name: str) -> InterfaceInfo | None:
        """Return the cached state of `name`, or None."""
        return self.cache.by_name(name)

    def interfaces(self) -> list[InterfaceInfo]:
        """Return every known interface, sorted by index."""
        return self.cache.snapshot()

    async def events(self) -> AsyncIterator[NetEvent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def close(self) -> None:
        """Detach; `events()` ends."""
        if self in self.net.netlink_watches:
            self.net.netlink_watches.remove(self)
        self._queue.put_nowait(None)

    def push(self, events: list[NetEvent]) -> None:
        """Deliver events (called by FakeNet)."""
        for ev in events:
            self._queue.put_nowait(ev)


class FakeUdev:
    """In-memory UdevWatch over a FakeNet."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self._queue: asyncio.Queue[UdevEvent | None] = asyncio.Queue()
        self.source = "fake"

    async def start(self) -> None:
        """Attach to the FakeNet."""
        self.net.udev_watches.append(self)

    async def events(self) -> AsyncIterator[UdevEvent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def close(self) -> None:
        """Detach; `events()` ends."""
        if self in self.net.udev_watches:
            self.net.udev_watches.remove(self)
        self._queue.put_nowait(None)

    def push(self, events: list[UdevEvent]) -> None:
        """Deliver events (called by FakeNet)."""
        for ev in events:
            self._queue.put_nowait(ev)
