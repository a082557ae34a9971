"""The daemon's side of its D-Bus edge: `ClusterStatusSource` over the Backend, and the notices.

The D-Bus service (dbus_service.py) reads its properties from `snapshot()` — the node's status
snapshot, the one the IPC answers and status.json are rendered from — and hands the privileged
methods to `submit()`. `on_item`, a node listener, turns what the node publishes into notices:
MembershipChanged into MembershipNotice, QuorumChanged into QuorumNotice (or a StatusNotice when
only votes changed: PropertiesChanged alone), PathChanged into LinkNotice. Lockspace states come
from the DLM runtime, which publishes no notifications: `watch_lockspaces` compares them once a
second (LOCKSPACE_POLL_S) and publishes a LockspaceNotice for each change ("removed" for one gone).

Departures are reported as "nodedown" unless votequorum saw the node announce LEAVING
(allow_downscale); Totem does not tell the layers above whether a node left or failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from cmanlk import stack
from cmanlk.config import ClusterConfig
from cmanlk.errors import ErrorCode, UsageError
from cmanlk.runtime.backend import Backend
from cmanlk.runtime.dbus_status import (
    AdminRequest,
    Departure,
    FenceAck,
    LinkNotice,
    LockspaceNotice,
    MemberInfo,
    MembershipNotice,
    Notice,
    QuorumNotice,
    SetExpectedVotes,
    SetVotes,
    StatusNotice,
)
from cmanlk.runtime.node import REQUEST_TIMEOUT_S, RequestBuilder, answer_of
from cmanlk.runtime.status import PathChanged, Snapshot
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.types import NodeId

SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
LOCKSPACE_POLL_S = 1.0
"""How often lockspace states are compared for LockspaceStateChanged (a lockspace changes state
over seconds: joins, recoveries wait for fencing)."""


class Publisher(Protocol):
    """Where notices go (cmanlk.runtime.dbus_service.DbusService)."""

    def publish(self, notice: Notice) -> None: ...


class DbusBridge:
    """See the module docstring. `service` is set once the D-Bus service exists."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.service: Publisher | None = None
        self._quorum: tuple[object, ...] | None = None
        self._lockspaces: dict[str, str] = {}

    def snapshot(self) -> Snapshot:
        """The daemon's status snapshot."""
        return self.backend.snapshot()

    async def submit(self, request: AdminRequest) -> str:
        """Carry out a privileged request; returns a line for the caller. Raises UsageError."""
        match request:
            case SetExpectedVotes(expected_votes=expected):
                await self._request(lambda t, rid: stack.SetExpectedVotes(t, expected, rid))
                return f"expected votes set to {expected}"
            case SetVotes(nodeid=nodeid, votes=votes):
                target = nodeid or self.backend.snapshot().node_id
                await self._request(lambda t, rid: stack.SetVotes(t, NodeId(target), votes, rid))
                return f"votes of node {target} set to {votes}"
            case FenceAck():
                result = await self.backend.admin(request)
                return f"fence ack for node {request.nodeid}: {result.get('result', 'done')}"
        raise UsageError(ErrorCode.NOT_SUPPORTED, f"{type(request).__name__} is not handled by this daemon")

    def on_item(self, item: object) -> None:
        """Node listener: membership, quorum and path changes become D-Bus notices."""
        if self.service is None:
            return
        match item:
            case stack.MembershipChanged():
                s = self.backend.snapshot()
                self.service.publish(
                    MembershipNotice(
                        ring_id=item.ring_id,
                        members=tuple(MemberInfo(m, s.name_of(m)) for m in item.members),
                        joined=tuple(MemberInfo(m, s.name_of(m)) for m in item.joined),
                        left=tuple(Departure(m, "nodedown") for m in item.left),
                    )
                )
            case QuorumChanged(state=q):
                shown = (q.quorate, q.quorum, q.total_votes)
                votes = (q.expected_votes, q.node_votes)
                if self._quorum is None or shown != self._quorum[:3]:
                    self.service.publish(QuorumNotice(*shown))
                elif votes != self._quorum[3:]:
                    self.service.publish(StatusNotice())  # only PropertiesChanged (ExpectedVotes, Votes)
                self._quorum = (*shown, *votes)
            case PathChanged(nodeid=nodeid, link=link, up=up):
                self.service.publish(LinkNotice(nodeid, link, up))

    async def watch_lockspaces(self) -> None:
        """Publish lockspace state changes (see the module docstring); runs until cancelled."""
        while True:
            await asyncio.sleep(LOCKSPACE_POLL_S)
            self.poll_once()

    def poll_once(self) -> None:
        """One round of watch_lockspaces: publish what changed since the last round."""
        states = {ls.name: ls.state for ls in self.backend.snapshot().lockspaces}
        for name in sorted(set(states) | set(self._lockspaces)):
            state = states.get(name, "removed")
            if self._lockspaces.get(name, "removed") != state and self.service is not None:
                self.service.publish(LockspaceNotice(name, state))
        self._lockspaces = states

    async def _request(self, build: RequestBuilder) -> None:
        await answer_of(self.backend.submit(build), REQUEST_TIMEOUT_S)


def dbus_wanted(config: ClusterConfig) -> bool:
    """`cmanlk { dbus }`: yes, no, or auto (a system bus is there)."""
    if config.cmanlk.dbus == "auto":
        return "DBUS_SYSTEM_BUS_ADDRESS" in os.environ or os.path.exists(SYSTEM_BUS_SOCKET)
    return config.cmanlk.dbus == "yes"


def dbus_companion(backend: Backend) -> Callable[[], Coroutine[Any, Any, None]]:
    """The D-Bus edge as a node companion. Raises ImportError when dbus-fast is missing."""
    from cmanlk.runtime.dbus_service import DbusService  # dbus-fast is optional

    bridge = DbusBridge(backend)
    service = DbusService(bridge)
    bridge.service = service
    backend.subscribe(bridge.on_item)

    async def dbus() -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(service.run(os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")))
            tasks.create_task(bridge.watch_lockspaces())

    return dbus
