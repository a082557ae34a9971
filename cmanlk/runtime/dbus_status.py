"""What cmanlkd hands to its D-Bus edge (cmanlk/runtime/dbus_service.py), and what it gets back.

The daemon (cmanlk/runtime/dbus_bridge.py) implements `ClusterStatusSource`: `snapshot()`
returns the daemon's status snapshot (cmanlk/runtime/status.py: the same object the IPC answers
and status.json are rendered from), `submit()` carries out the privileged requests
(`SetExpectedVotes`, `SetVotes`, `FenceAck`). On every change it calls `DbusService.publish()`
with one of the notices below; the D-Bus edge turns them into signals and PropertiesChanged.
These are plain frozen dataclasses: nothing here knows about D-Bus.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from cmanlk.runtime.backend import FenceAck as FenceAck
from cmanlk.runtime.status import Snapshot
from cmanlk.types import NodeId, RingId


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member of the current ring: node id and node name ("" when the config names none)."""

    nodeid: NodeId
    name: str


@dataclass(frozen=True, slots=True)
class SetExpectedVotes:
    """Privileged: set votequorum's expected votes (corosync-quorumtool -e)."""

    expected_votes: int


@dataclass(frozen=True, slots=True)
class SetVotes:
    """Privileged: set the votes of `nodeid` (0 = this node; corosync-quorumtool -v [-n])."""

    nodeid: NodeId
    votes: int


AdminRequest = SetExpectedVotes | SetVotes | FenceAck
"""FenceAck is the one the IPC's fence_ack carries too (cmanlk/runtime/backend.py)."""


class ClusterStatusSource(Protocol):
    """The backend the daemon implements (cmanlk/runtime/dbus_bridge.py)."""

    def snapshot(self) -> Snapshot:
        """Return the current status. Called on the event loop, often: keep it cheap."""
        ...

    def submit(self, request: AdminRequest) -> Awaitable[str]:
        """Carry out a privileged request; the awaitable gives a one-line result for the caller.

        The caller is already checked to be root. Raises UsageError(code, message) when the
        request is illegal now (bad value, not quorate, unknown node); `code` becomes the D-Bus
        error org.cmanlk.Cluster1.Error.<Code> (CamelCased). Runs under dbus_service.ADMIN_CALL_TIMEOUT_S.
        """
        ...


@dataclass(frozen=True, slots=True)
class Departure:
    """A node that left the ring and why: "nodedown" (docs/dbus.md: Totem does not tell a clean
    shutdown from a failure to the layers above, as corosync's CPG does not)."""

    nodeid: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class MembershipNotice:
    """A regular configuration was installed: the new ring, its members, who came and who went."""

    ring_id: RingId
    members: tuple[MemberInfo, ...]
    joined: tuple[MemberInfo, ...] = ()
    left: tuple[Departure, ...] = ()


@dataclass(frozen=True, slots=True)
class QuorumNotice:
    """votequorum's decision changed (quorate, quorum or total votes)."""

    quorate: bool
    quorum: int
    total_votes: int


@dataclass(frozen=True, slots=True)
class LinkNotice:
    """Link number `link` towards `nodeid` went up or down."""

    nodeid: NodeId
    link: int
    up: bool


@dataclass(frozen=True, slots=True)
class LockspaceNotice:
    """A lockspace changed state."""

    name: str
    state: str


@dataclass(frozen=True, slots=True)
class StatusNotice:
    """Something in the snapshot changed without an event of its own (votes, expected votes):
    only PropertiesChanged goes out."""


Notice = MembershipNotice | QuorumNotice | LinkNotice | LockspaceNotice | StatusNotice
