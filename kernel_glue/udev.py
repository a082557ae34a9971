"""UdevWatch: network interfaces appearing, disappearing and being renamed.

Two sources, same events:
- `PyudevWatch`: a pyudev Monitor on the udev netlink group, subsystem "net". Used when udevd
  runs (its control socket /run/udev/control exists): events then arrive after udev rules ran,
  so an interface renamed by a rule (e.g. predictable names) is reported under its final name.
- `UeventWatch`: a raw NETLINK_KOBJECT_UEVENT socket bound to multicast group 1 (the kernel's own
  uevents, before udev), parsed with the stdlib. No running udevd is required; this is what runs
  in containers and in the test namespaces.

Namespaces (verified on Linux 6.x in tests/adapters/test_udev.py): uevents of a network device
go only to uevent sockets of the network namespace that owns the device (the kernel tags net
kobjects with their namespace, kobject_uevent_net_broadcast). A watcher in the initial namespace
sees nothing of a veth created inside a test namespace, and a daemon inside a namespace sees its
own interfaces. `UeventWatch(netns=NAME)` therefore opens its socket inside /run/netns/NAME.

A kernel rename is ACTION=move with DEVPATH_OLD; add/remove carry INTERFACE and IFINDEX.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
UEVENT_KERNEL_GROUP = 1
UEVENT_BUFFER_BYTES = 8192
"""A uevent is at most UEVENT_BUFFER_SIZE (2048) bytes of environment plus the header line."""
UDEVD_CONTROL = "/run/udev/control"
EVENT_QUEUE_BOUND = 1024
"""Events buffered for a slow consumer before the oldest are dropped."""
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class InterfaceAdded:
    """A network interface appeared (created or moved into our namespace)."""

    name: str
    ifindex: int


@dataclass(frozen=True, slots=True)
class InterfaceRemoved:
    """A network interface disappeared (deleted or moved out of our namespace)."""

    name: str
    ifindex: int


@dataclass(frozen=True, slots=True)
class InterfaceRenamed:
    """Interface `ifindex` was renamed from `old` to `new`."""

    old: str
    new: str
    ifindex: int


UdevEvent = InterfaceAdded | InterfaceRemoved | InterfaceRenamed


class UdevWatch(Protocol):
    """What the runtime needs from udev: net interfaces coming, going, renamed."""

    source: str

    async def start(self) -> None:
        """Open the monitor; events after this call are reported."""
        ...

    def events(self) -> AsyncIterator[UdevEvent]:
        """Yield events until close()."""
        ...

    async def close(self) -> None:
        """Stop; a pending `events()` iteration ends."""
        ...


def parse_uevent(data: bytes) -> UdevEvent | None:
    """Return the net interface event in one raw kernel uevent, or None for anything else.

    Never raises on garbage: a malformed message is simply not an interface event.
    """
    if data.startswith(b"libudev\0"):
        return None  # udevd's re-broadcast format (group 2); we read kernel messages only
    env: dict[str, str] = {}
    for part in data.split(b"\0")[1:]:
        key, sep, value = part.partition(b"=")
        if sep:
            env[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return event_from_env(env)


def event_from_env(env: dict[str, str]) -> UdevEvent | None:
    """Return the event described by a uevent environment (ACTION, SUBSYSTEM, INTERFACE, ...)."""
    if env.get("SUBSYSTEM") != "net" or "INTERFACE" not in env:
        return None
    try:
        ifindex = int(env.get("IFINDEX", "0"))
    except ValueError:
        ifindex = 0
    name = env["INTERFACE"]
    match env.get("ACTION"):
        case "add":
            return InterfaceAdded(name, ifindex)
        case "remove":
            return InterfaceRemoved(name, ifindex)
        case "move":
            old = env.get("DEVPATH_OLD", "").rsplit("/", 1)[-1]
            return InterfaceRenamed(old, name, ifindex)
    return None


def udevd_running() -> bool:
    """Is a udevd answering (its control socket exists)?"""
    return os.path.exists(UDEVD_CONTROL)


def open_watch(netns: str | None = None) -> UdevWatch:
    """Return the best watch: pyudev when udevd runs in our namespace, the raw uevent socket otherwise."""
    if netns is None and udevd_running():
        try:
            import pyudev  # noqa: F401
        except ImportError:
            log.info("udevd runs but pyudev is missing: using raw kernel uevents")
        else:
            return PyudevWatch()
    return UeventWatch(netns)


class _QueueMixin:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[UdevEvent | None] = asyncio.Queue(EVENT_QUEUE_BOUND)

    def _put(self, ev: UdevEvent | None) -> None:
        if self._queue.full():
            log.warning("uevent queue full (%d): dropping the oldest event", EVENT_QUEUE_BOUND)
            self._queue.get_nowait()
        self._queue.put_nowait(ev)

    async def events(self) -> AsyncIterator[UdevEvent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev


class UeventWatch(_QueueMixin):
    """Raw NETLINK_KOBJECT_UEVENT listener (kernel group 1), stdlib only."""

    source = "kernel"

    def __init__(self, netns: str | None = None) -> None:
        super().__init__()
        self._netns = netns
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Open and bind the uevent socket (inside `netns` if given); raises KernelError on failure."""
        from cmanlk.errors import KernelError

        try:
            sock = _in_netns(self._netns, _open_uevent_socket) if self._netns else _open_uevent_socket()
        except OSError as exc:
            raise KernelError("NETLINK_KOBJECT_UEVENT", exc.errno or 0, f"cannot listen: {exc}") from exc
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded drain per wake-up
            try:
                data = self._sock.recv(UEVENT_BUFFER_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: we were too slow; events were lost
                log.warning("uevent socket: %s (events lost; interfaces are re-checked by netlink)", exc)
                return
            ev = parse_uevent(data)
            if ev is not None:
                self._put(ev)

    async def close(self) -> None:
        """Stop listening; `events()` ends."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._put(None)


class PyudevWatch(_QueueMixin):
    """pyudev Monitor on udevd's events, subsystem net."""

    source = "udev"

    def __init__(self) -> None:
        super().__init__()
        self._monitor: Any = None
        self._names: dict[int, str] = {}

    async def start(self) -> None:
        """Start the monitor; raises KernelError when libudev cannot open it."""
        import pyudev

        from cmanlk.errors import KernelError

        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
            monitor.filter_by("net")
            monitor.start()
        except (OSError, pyudev.DeviceNotFoundError) as exc:
            raise KernelError("udev monitor", getattr(exc, "errno", 0) or 0, str(exc)) from exc
        self._monitor = monitor
        asyncio.get_running_loop().add_reader(monitor.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            device = self._monitor.poll(timeout=0)
            if device is None:
                return
            env = {k: str(v) for k, v in device.properties.items()}
            env.setdefault("ACTION", device.action or "")
            ev = event_from_env(env)
            if ev is not None:
                self._put(ev)

    async def close(self) -> None:
        """Stop the monitor; `events()` ends."""
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor = None
        self._put(None)


def _open_uevent_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, UEVENT_KERNEL_GROUP))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _in_netns(netns: str, make: Any) -> socket.socket:
    """Run `make()` in a helper thread that entered /run/netns/`netns`; the socket it returns stays
    in that namespace (a socket belongs to the namespace it was created in). The caller's own
    thread never changes namespace.
    """
    result: list[socket.socket] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}") as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join(10)
    if error:
        raise error[0]
    if not result:
        raise OSError(0, f"opening a socket in netns {netns} timed out")
    return result[0]

