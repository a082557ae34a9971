"""The interface org.cmanlk.Cluster1 as dbus-fast declares it, and the messages it sends.

Properties, methods and signals are declared on `ClusterInterface`; their introspection is
dbus/org.cmanlk.Cluster1.xml (a test keeps the two equal). One table, `_PROPERTIES`, says how each
property is read from the daemon's status `Snapshot` (cmanlk/runtime/status.py), so getters,
GetStatus and change detection agree, and agree with the IPC answers rendered from it.
Signals are built here as messages (`signals_for`, `properties_changed`) and sent by
`DbusService`, which bounds how many wait in dbus-fast's writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import DBusError, Message, PropertyAccess, Variant
from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from cmanlk.runtime.dbus_status import (
    ClusterStatusSource,
    LinkNotice,
    LockspaceNotice,
    MemberInfo,
    MembershipNotice,
    Notice,
    QuorumNotice,
    StatusNotice,
)
from cmanlk.runtime.status import Snapshot
from cmanlk.types import RingId

BUS_NAME = "org.cmanlk.Cluster"
OBJECT_PATH = "/org/cmanlk/Cluster"
INTERFACE = "org.cmanlk.Cluster1"
ERROR_PREFIX = "org.cmanlk.Cluster1.Error."
ERROR_PERMISSION_DENIED = ERROR_PREFIX + "PermissionDenied"
ERROR_BUSY = ERROR_PREFIX + "Busy"
ERROR_TIMEOUT = ERROR_PREFIX + "Timeout"
ERROR_FAILED = ERROR_PREFIX + "Failed"

RingIdStruct = Annotated[list[int], DBusSignature("(ut)")]
MemberList = Annotated[list[list[Any]], DBusSignature("a(us)")]
NodeList = Annotated[list[list[Any]], DBusSignature("a(ussu)")]
LinkList = Annotated[list[list[Any]], DBusSignature("a(uub)")]
LockspaceList = Annotated[list[list[Any]], DBusSignature("a(ss)")]
VariantDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]

_PROPERTIES: dict[str, tuple[str, Callable[[Snapshot], Any]]] = {
    "ClusterName": ("s", lambda s: s.cluster_name),
    "LocalNodeId": ("u", lambda s: int(s.node_id)),
    "RingId": ("(ut)", lambda s: _ring(s.ring_id)),
    "Members": ("a(us)", lambda s: [[int(m), s.name_of(m)] for m in s.members]),
    "Quorate": ("b", lambda s: bool(s.quorate)),
    "Votes": ("u", lambda s: s.votes),
    "ExpectedVotes": ("u", lambda s: s.quorum.expected_votes if s.quorum else 0),
    "TotalVotes": ("u", lambda s: s.quorum.total_votes if s.quorum else 0),
    "Quorum": ("u", lambda s: s.quorum.quorum if s.quorum else 0),
    "Links": ("a(uub)", lambda s: [[int(p.nodeid), p.link, p.up] for p in s.paths]),
    "Lockspaces": ("a(ss)", lambda s: [[x.name, x.state] for x in s.lockspaces]),
}
"""Every property: D-Bus signature and how its value is read from a snapshot. The getters, the
change detection and GetStatus all use this one table, so they cannot disagree."""


def _ring(ring_id: RingId) -> list[int]:
    return [int(ring_id.rep), ring_id.seq]


_QUORUM_PROPERTIES = ("Quorate", "Quorum", "Votes", "ExpectedVotes", "TotalVotes")
"""What GetQuorum answers, read as the properties of the same names are."""


def _members(members: tuple[MemberInfo, ...]) -> list[list[Any]]:
    return [[int(m.nodeid), m.name] for m in members]


_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "GetStatus": ("status",),
    "GetNodes": ("nodes",),
    "GetQuorum": ("quorum",),
    "SetExpectedVotes": ("result",),
    "SetVotes": ("result",),
    "FenceAck": ("result",),
    "MembershipChanged": ("ring_id", "members", "joined", "left"),
    "NodeJoined": ("nodeid", "name"),
    "NodeLeft": ("nodeid", "reason"),
    "QuorumChanged": ("quorate", "quorum", "total_votes"),
    "LinkStatusChanged": ("nodeid", "link", "up"),
    "LockspaceStateChanged": ("name", "state"),
}
"""Names of out and signal arguments in the introspection data (clients show them)."""

_KEEP = object()


def _named(arg: intr.Arg, names: tuple[str, ...], i: int, direction: Any = _KEEP) -> intr.Arg:
    name = names[i] if i < len(names) else arg.name
    return intr.Arg(arg.signature, arg.direction if direction is _KEEP else direction, name)


def property_values(status: Snapshot) -> dict[str, Any]:
    """Return every property's D-Bus value for `status` (name → value)."""
    return {name: read(status) for name, (_, read) in _PROPERTIES.items()}


class ClusterInterface(ServiceInterface):
    """org.cmanlk.Cluster1, the exported object's interface (dbus-fast declarations).

    Signals are declared here for introspection; `DbusService` emits them itself so it can
    bound what waits in dbus-fast's writer. The privileged methods are answered by the
    `DbusService` gate before dbus-fast dispatches; their bodies here refuse, so a call that
    somehow bypasses the gate is denied rather than carried out unchecked.
    """

    def __init__(self, source: ClusterStatusSource, dropped: Callable[[], int]) -> None:
        """`dropped()` returns how many notices the service dropped (GetStatus reports it)."""
        super().__init__(INTERFACE)
        self._source = source
        self._dropped = dropped

    def _value(self, name: str) -> Any:
        return _PROPERTIES[name][1](self._source.snapshot())

    def introspect(self) -> intr.Interface:
        """Return the introspection data, with names for the out and signal arguments.

        dbus-fast derives those from return annotations, which carry types but no names.
        """
        iface = super().introspect()
        for method in iface.methods:
            names = _ARG_NAMES.get(method.name, ())
            method.out_args = [_named(arg, names, i) for i, arg in enumerate(method.out_args)]
        for sig in iface.signals:
            names = _ARG_NAMES.get(sig.name, ())
            sig.args = [_named(arg, names, i, direction=None) for i, arg in enumerate(sig.args)]
        return iface

    @dbus_property(access=PropertyAccess.READ)
    def ClusterName(self) -> DBusStr:
        return str(self._value("ClusterName"))

    @dbus_property(access=PropertyAccess.READ)
    def LocalNodeId(self) -> DBusUInt32:
        return int(self._value("LocalNodeId"))

    @dbus_property(access=PropertyAccess.READ)
    def RingId(self) -> RingIdStruct:
        return list(self._value("RingId"))

    @dbus_property(access=PropertyAccess.READ)
    def Members(self) -> MemberList:
        return list(self._value("Members"))

    @dbus_property(access=PropertyAccess.READ)
    def Quorate(self) -> DBusBool:
        return bool(self._value("Quorate"))

    @dbus_property(access=PropertyAccess.READ)
    def Votes(self) -> DBusUInt32:
        return int(self._value("Votes"))

    @dbus_property(access=PropertyAccess.READ)
    def ExpectedVotes(self) -> DBusUInt32:
        return int(self._value("ExpectedVotes"))

    @dbus_property(access=PropertyAccess.READ)
    def TotalVotes(self) -> DBusUInt32:
        return int(self._value("TotalVotes"))

    @dbus_property(access=PropertyAccess.READ)
    def Quorum(self) -> DBusUInt32:
        return int(self._value("Quorum"))

    @dbus_property(access=PropertyAccess.READ)
    def Links(self) -> LinkList:
        return list(self._value("Links"))

    @dbus_property(access=PropertyAccess.READ)
    def Lockspaces(self) -> LockspaceList:
        return list(self._value("Lockspaces"))

    @dbus_method()
    def GetStatus(self) -> VariantDict:
        status = self._source.snapshot()
        out = {name: Variant(sig, read(status)) for name, (sig, read) in _PROPERTIES.items()}
        out["QuorumFlags"] = Variant("as", list(status.quorum_flags))
        out["DroppedSignals"] = Variant("t", self._dropped())
        return out

    @dbus_method()
    def GetNodes(self) -> NodeList:
        return [[int(n.nodeid), n.name, n.state, n.votes] for n in self._source.snapshot().nodes]

    @dbus_method()
    def GetQuorum(self) -> VariantDict:
        s = self._source.snapshot()
        out = {name: Variant(_PROPERTIES[name][0], _PROPERTIES[name][1](s)) for name in _QUORUM_PROPERTIES}
        out["Flags"] = Variant("as", list(s.quorum_flags))
        return out

    @dbus_method()
    def SetExpectedVotes(self, expected_votes: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_method()
    def SetVotes(self, nodeid: DBusUInt32, votes: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_method()
    def FenceAck(self, nodeid: DBusUInt32) -> DBusStr:
        raise DBusError(ERROR_PERMISSION_DENIED, "caller could not be authorised")

    @dbus_signal()
    def MembershipChanged(
        self,
    ) -> Annotated[tuple[list[int], list[Any], list[Any], list[Any]], DBusSignature("(ut)a(us)a(us)a(us)")]:
        raise NotImplementedError  # declaration only: DbusService emits it

    @dbus_signal()
    def NodeJoined(self) -> Annotated[tuple[int, str], DBusSignature("us")]:
        raise NotImplementedError

    @dbus_signal()
    def NodeLeft(self) -> Annotated[tuple[int, str], DBusSignature("us")]:
        raise NotImplementedError

    @dbus_signal()
    def QuorumChanged(self) -> Annotated[tuple[bool, int, int], DBusSignature("buu")]:
        raise NotImplementedError

    @dbus_signal()
    def LinkStatusChanged(self) -> Annotated[tuple[int, int, bool], DBusSignature("uub")]:
        raise NotImplementedError

    @dbus_signal()
    def LockspaceStateChanged(self) -> Annotated[tuple[str, str], DBusSignature("ss")]:
        raise NotImplementedError


def signals_for(notice: Notice) -> list[Message]:
    """Return the signals that announce `notice`, in the order they are sent."""
    match notice:
        case MembershipNotice(ring_id, members, joined, left):
            departures = [[int(d.nodeid), d.reason] for d in left]
            body = [_ring(ring_id), _members(members), _members(joined), departures]
            out = [_signal("MembershipChanged", "(ut)a(us)a(us)a(us)", body)]
            out += [_signal("NodeLeft", "us", [int(d.nodeid), d.reason]) for d in left]
            out += [_signal("NodeJoined", "us", [int(m.nodeid), m.name]) for m in joined]
            return out
        case QuorumNotice(quorate, quorum, total_votes):
            return [_signal("QuorumChanged", "buu", [quorate, quorum, total_votes])]
        case LinkNotice(nodeid, link, up):
            return [_signal("LinkStatusChanged", "uub", [int(nodeid), link, up])]
        case LockspaceNotice(name, state):
            return [_signal("LockspaceStateChanged", "ss", [name, state])]
        case StatusNotice():
            return []


def _signal(member: str, signature: str, body: list[Any]) -> Message:
    return Message.new_signal(OBJECT_PATH, INTERFACE, member, signature, body)


def properties_changed(changed: dict[str, Any]) -> Message:
    """Return the PropertiesChanged signal for `changed` (property name → new D-Bus value)."""
    variants = {name: Variant(_PROPERTIES[name][0], value) for name, value in changed.items()}
    body = [INTERFACE, variants, []]
    return Message.new_signal(
        OBJECT_PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as", body
    )
