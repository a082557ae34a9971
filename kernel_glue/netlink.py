"""NetlinkWatch: interfaces, carrier and addresses from rtnetlink, as events.

The native transport binds each link to a named interface and must learn at once when that
interface loses carrier, changes name, or loses/regains the address it is bound to. rtnetlink
multicasts exactly these facts (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR; see
rtnetlink(7)), so we subscribe and turn raw RTM_NEWLINK/DELLINK/NEWADDR/DELADDR messages into
edge events, keeping a small cache so a flood of RTM_NEWLINK (statistics, promiscuity, ...)
becomes one event per real change.

"Usable" means administratively up (IFF_UP) *and* carrier present (IFF_LOWER_UP): a veth whose
peer went down keeps IFF_UP but loses IFF_LOWER_UP, and traffic on it is lost. IPv6 addresses
still in duplicate address detection (IFA_F_TENTATIVE) or failed DAD cannot be bound and count as
absent until the kernel reports them final.

`RtnlWatch` is the real adapter (pyroute2 >= 0.9, AsyncIPRoute); `kernel_glue.fakes_net.FakeNetlink`
is its in-memory twin. Both pass tests/adapters/test_netlink.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100

EVENT_QUEUE_BOUND = 4096
"""Events buffered for a slow consumer; beyond it the oldest are dropped and a resync is forced."""


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One address of an interface. `address` has no %scope; `ifindex` is the scope for link-local."""

    ifindex: int
    family: int
    address: str
    prefixlen: int
    scope: int = 0

    @property
    def is_link_local(self) -> bool:
        """Is this a link-scope address (fe80::/10, 169.254/16) that needs the interface as scope?"""
        return self.scope == RT_SCOPE_LINK


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """A snapshot of one interface."""

    index: int
    name: str
    flags: int
    mtu: int
    addresses: tuple[InterfaceAddress, ...] = ()

    @property
    def is_usable(self) -> bool:
        """Administratively up and with carrier (IFF_UP and IFF_LOWER_UP)."""
        return self.flags & IFF_UP != 0 and self.flags & IFF_LOWER_UP != 0

    @property
    def is_loopback(self) -> bool:
        """Is this a loopback device (never a cluster link)?"""
        return self.flags & IFF_LOOPBACK != 0


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The interface became usable (or its MTU changed while usable)."""

    ifindex: int
    name: str
    mtu: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The interface lost IFF_UP or carrier."""

    ifindex: int
    name: str


@dataclass(frozen=True, slots=True)
class LinkRenamed:
    """The interface `ifindex` is now called `new`."""

    ifindex: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class LinkRemoved:
    """The interface was deleted (or moved to another namespace)."""

    ifindex: int
    name: str


@dataclass(frozen=True, slots=True)
class AddressAdded:
    """A bindable address appeared on interface `ifindex` (named `name`)."""

    ifindex: int
    name: str
    address: InterfaceAddress


@dataclass(frozen=True, slots=True)
class AddressRemoved:
    """An address disappeared from interface `ifindex`."""

    ifindex: int
    name: str
    address: InterfaceAddress


NetEvent = LinkUp | LinkDown | LinkRenamed | LinkRemoved | AddressAdded | AddressRemoved


class NetlinkWatch(Protocol):
    """What the native transport needs from rtnetlink."""

    async def start(self) -> None:
        """Subscribe to link/address groups, then load the current state (no event is missed)."""
        ...

    def interface(self, name: str) -> InterfaceInfo | None:
        """Return the cached state of interface `name`, or None when there is none."""
        ...

    def interfaces(self) -> list[InterfaceInfo]:
        """Return every known interface, sorted by index."""
        ...

    def events(self) -> AsyncIterator[NetEvent]:
        """Yield events in kernel order until `close()`."""
        ...

    async def close(self) -> None:
        """Stop watching; a pending `events()` iteration ends."""
        ...


class InterfaceCache:
    """Edge detector shared by the real adapter and the fake: state in, events out."""

    def __init__(self) -> None:
        self._links: dict[int, InterfaceInfo] = {}

    def snapshot(self) -> list[InterfaceInfo]:
        """Return every interface, sorted by index."""
        return [self._links[i] for i in sorted(self._links)]

    def by_name(self, name: str) -> InterfaceInfo | None:
        """Return the interface called `name`, if any."""
        return next((i for i in self._links.values() if i.name == name), None)

    def link(self, index: int, name: str, flags: int, mtu: int) -> list[NetEvent]:
        """Record a RTM_NEWLINK; return the edges it represents."""
        old = self._links.get(index)
        new = InterfaceInfo(index, name, flags, mtu, old.addresses if old else ())
        self._links[index] = new
        out: list[NetEvent] = []
        if old is not None and old.name != name:
            out.append(LinkRenamed(index, old.name, name))
        if new.is_usable and (old is None or not old.is_usable or old.mtu != mtu):
            out.append(LinkUp(index, name, mtu))
        elif not new.is_usable and (old is None or old.is_usable):
            out.append(LinkDown(index, name))
        return out

    def unlink(self, index: int) -> list[NetEvent]:
        """Record a RTM_DELLINK."""
        old = self._links.pop(index, None)
        return [LinkRemoved(index, old.name)] if old else []

    def address(self, addr: InterfaceAddress, present: bool) -> list[NetEvent]:
        """Record a bindable address appearing (present) or going away."""
        old = self._links.get(addr.ifindex)
        if old is None:
            return []
        has = addr in old.addresses
        if present == has:
            return []
        addrs = (*old.addresses, addr) if present else tuple(a for a in old.addresses if a != addr)
        self._links[addr.ifindex] = InterfaceInfo(old.index, old.name, old.flags, old.mtu, addrs)
        if present:
            return [AddressAdded(old.index, old.name, addr)]
        return [AddressRemoved(old.index, old.name, addr)]


class RtnlWatch:
    """The real NetlinkWatch over pyroute2's AsyncIPRoute. `netns` names a namespace to watch
    (pyroute2 opens the socket there); None watches the caller's own namespace.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._cache = InterfaceCache()
        self._mon: Any = None
        self._queue: asyncio.Queue[NetEvent | None] = asyncio.Queue(EVENT_QUEUE_BOUND)
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Bind the monitor socket to the link and address groups, then dump links and addresses.

        Raises KernelError when rtnetlink cannot be opened.
        """
        from pyroute2 import AsyncIPRoute

        from cmanlk.errors import KernelError

        try:
            kw: dict[str, Any] = {"netns": self._netns} if self._netns else {}
            self._mon = AsyncIPRoute(**kw)
            await self._mon.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            async with AsyncIPRoute(**kw) as ipr:
                for msg in [m async for m in await ipr.link("dump")]:
                    self._on_message(msg, quiet=True)
                for msg in [m async for m in await ipr.addr("dump")]:
                    self._on_message(msg, quiet=True)
        except OSError as exc:
            raise KernelError("rtnetlink", exc.errno or 0, f"cannot watch interfaces: {exc}") from exc
        self._reader = asyncio.create_task(self._read(), name="rtnl-watch")

    def interface(self, name: str) -> InterfaceInfo | None:
        """Return the cached state of interface `name`, or None."""
        return self._cache.by_name(name)

    def interfaces(self) -> list[InterfaceInfo]:
        """Return every known interface, sorted by index."""
        return self._cache.snapshot()

    async def events(self) -> AsyncIterator[NetEvent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def close(self) -> None:
        """Stop the reader and close the socket; `events()` ends."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._mon is not None:
            self._mon.close()
        self._put(None)

    async def _read(self) -> None:
        while not self._closed:
            async for msg in self._mon.get():
                self._on_message(msg, quiet=False)

    def _put(self, ev: NetEvent | None) -> None:
        if self._queue.full():
            # A consumer this slow has lost edges anyway; keep the newest (the current truth).
            log.warning("netlink event queue full (%d): dropping the oldest event", EVENT_QUEUE_BOUND)
            self._queue.get_nowait()
        self._queue.put_nowait(ev)

    def _on_message(self, msg: Any, quiet: bool) -> None:
        events = _translate(self._cache, msg)
        if not quiet:
            for ev in events:
                self._put(ev)


def _translate(cache: InterfaceCache, msg: Any) -> list[NetEvent]:
    kind = msg.get("event")
    index = int(msg.get("index") or 0)
    if kind == "RTM_NEWLINK":
        return cache.link(index, str(msg.get("ifname")), int(msg["flags"]), int(msg.get("mtu") or 0))
    if kind == "RTM_DELLINK":
        return cache.unlink(index)
    if kind in ("RTM_NEWADDR", "RTM_DELADDR"):
        family = int(msg["family"])
        if family not in (socket.AF_INET, socket.AF_INET6):
            return []
        # IFA_LOCAL is the local end on point-to-point links; IFA_ADDRESS otherwise (rtnetlink(7)).
        address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if not address:
            return []
        flags = int(msg.get("IFA_FLAGS") or msg["flags"])
        addr = InterfaceAddress(index, family, str(address), int(msg["prefixlen"]), int(msg["scope"]))
        bindable = kind == "RTM_NEWADDR" and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
        return cache.address(addr, bindable)
    return []
