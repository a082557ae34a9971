"""Kernel uevents of DLM lockspaces and gfs2 filesystems: the real `DlmUeventSource`.

A NETLINK_KOBJECT_UEVENT socket bound to multicast group 1 (the kernel's own messages, before
udev), as dlm_controld listens. A message is "ACTION@DEVPATH\\0KEY=VALUE\\0...". We report:
- SUBSYSTEM=dlm, DEVPATH /kernel/dlm/<ls>: add, online (the kernel waits for event_done of a
  join), offline (same for a leave), remove;
- SUBSYSTEM=gfs2, DEVPATH /fs/gfs2/<cluster>:<fs>: add, change (JID=.. RECOVERY=Done,
  FIRSTMOUNT=Done), online, offline, remove.
Everything else (the dlm_<ls> misc device, block devices, modules) is ignored.
Exact strings: shared/reference/dlm-controld-protocol.md §4.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import cast

from cmanlk.errors import KernelError
from kernel_glue.dlm_protocol import DlmUevent, Gfs2Uevent, LockspaceAction, LockspaceUevent, UeventsLost

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
UEVENT_KERNEL_GROUP = 1
UEVENT_BUFFER_BYTES = 8192
"""A kernel uevent is at most UEVENT_BUFFER_SIZE (2048) bytes of environment plus the header."""
SOCKET_RCVBUF_BYTES = 1 << 20
"""Room for a burst (a gfs2 mount sends one change per journal) while the loop is busy."""
EVENT_QUEUE_BOUND = 1024
"""Events buffered for a slow consumer; past it the oldest are dropped (and logged)."""
DRAIN_PER_WAKEUP = 64
LOCKSPACE_ACTIONS = frozenset({"add", "online", "offline", "remove"})
DLM_DEVPATH_PREFIX = "/kernel/dlm/"
GFS2_DEVPATH_PREFIX = "/fs/gfs2/"


def parse_dlm_uevent(data: bytes) -> DlmUevent | None:
    """Return the lockspace or gfs2 event in one raw kernel uevent, or None for anything else.

    Never raises: garbage (or a udevd "libudev" re-broadcast) is simply not a DLM event.
    """
    if data.startswith(b"libudev\0"):
        return None
    env: list[tuple[str, str]] = []
    for part in data.split(b"\0")[1:]:
        key, sep, value = part.partition(b"=")
        if sep:
            env.append((key.decode("ascii", "replace"), value.decode("utf-8", "replace")))
    fields = dict(env)
    action = fields.get("ACTION", "")
    devpath = fields.get("DEVPATH", "")
    try:
        seqnum = int(fields.get("SEQNUM", "0"))
    except ValueError:
        seqnum = 0
    subsystem = fields.get("SUBSYSTEM")
    if subsystem == "dlm" and devpath.startswith(DLM_DEVPATH_PREFIX):
        name = fields.get("LOCKSPACE") or devpath[len(DLM_DEVPATH_PREFIX):]
        if action not in LOCKSPACE_ACTIONS or not name or "/" in name:
            return None
        return LockspaceUevent(cast(LockspaceAction, action), name, seqnum)
    if subsystem == "gfs2" and devpath.startswith(GFS2_DEVPATH_PREFIX):
        table = fields.get("LOCKTABLE") or devpath[len(GFS2_DEVPATH_PREFIX):]
        rest = tuple((k, v) for k, v in env if k not in ("ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"))
        return Gfs2Uevent(action, table, rest, seqnum)
    return None


class DlmUeventWatch:
    """`DlmUeventSource` on a raw NETLINK_KOBJECT_UEVENT socket (stdlib only)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._queue: asyncio.Queue[DlmUevent | None] = asyncio.Queue(EVENT_QUEUE_BOUND)
        self.dropped = 0
        """Events lost: queue overflow or ENOBUFS on the socket."""

    async def start(self) -> None:
        """Open and bind the socket; raises KernelError when the kernel refuses."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_KOBJECT_UEVENT)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
                sock.bind((0, UEVENT_KERNEL_GROUP))  # port 0: the kernel assigns a unique one
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise KernelError("NETLINK_KOBJECT_UEVENT", exc.errno or 0, f"cannot listen: {exc}") from exc
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(DRAIN_PER_WAKEUP):
            try:
                data = self._sock.recv(UEVENT_BUFFER_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: the kernel dropped events for us
                self.dropped += 1
                log.warning("uevent socket: %s (DLM events lost; lockspaces are re-read from sysfs)", exc)
                self._put(UeventsLost(self.dropped))
                return
            ev = parse_dlm_uevent(data)
            if ev is not None:
                self._put(ev)

    def _put(self, ev: DlmUevent | None) -> None:
        if self._queue.full():
            self.dropped += 1
            log.warning("DLM uevent queue full (%d): dropping the oldest event", EVENT_QUEUE_BOUND)
            self._queue.get_nowait()
            self._queue.put_nowait(UeventsLost(self.dropped))
            if self._queue.full():
                self._queue.get_nowait()
        self._queue.put_nowait(ev)

    async def events(self) -> AsyncIterator[DlmUevent]:
        """Yield events until close()."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    async def close(self) -> None:
        """Stop listening; a pending `events()` iteration ends."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._put(None)
