"""The daemon as its local edges see it: `NodeBackend` over a running Node, and its in-memory twin.

The IPC server (ipc.py) and the D-Bus bridge (dbus_bridge.py) reach the daemon only through a
`Backend`:

- `snapshot()` — the node's status (cmanlk/runtime/status.py), one object per change;
- `counters()` — the counters, read now;
- `submit(build)` — feed the local request `build(now, request_id)` (a Stack event: cpg's
  ServiceRequest, SetExpectedVotes, SetVotes) and get its RequestResult, at once when the core
  answered while handling it (the Stack always does) or as a future;
- `subscribe(listener)` — every notification the core publishes, and the node's PathChanged;
- `admin(command)` — what is not a Stack event: leave, kill, the DLM's status and fence acks.

`MemoryBackend` is one node without a network: a real CpgService looped back in order, the
votequorum requests checked for range only. Tests and client development use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cmanlk.client import proto as ipcproto
from cmanlk.errors import ErrorCode, UsageError
from cmanlk.runtime.clock import now
from cmanlk.runtime.node import Node, RequestBuilder
from cmanlk.runtime.status import (
    QUORUM_FLAGS,
    Counters,
    GroupView,
    LockspaceView,
    NodeView,
    PathView,
    Snapshot,
)
from cmanlk.runtime.transport import LinkStatus, PeerReachability
from cmanlk.services.base import CFG_SERVICE, CPG_SERVICE
from cmanlk.services.cfg.service import KILL_REASON, KillNodeRequest
from cmanlk.services.cpg.service import CpgService
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.stack import MembershipChanged, RequestResult, ServiceRequest, SetExpectedVotes, SetVotes
from cmanlk.types import NodeId, RingId

Listener = Callable[[object], None]


@dataclass(frozen=True, slots=True)
class LeaveCluster:
    """Privileged: this node leaves the cluster cleanly and the daemon exits (cman_tool leave)."""


@dataclass(frozen=True, slots=True)
class KillNode:
    """Privileged: ask node `nodeid` to leave the cluster (cman_tool kill); `reason` is what the
    target logs (None: the default text)."""

    nodeid: NodeId
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FenceAck:
    """Privileged: the admin confirms `nodeid` is off; DLM recovery may go on (dlm_tool fence_ack)."""

    nodeid: NodeId


@dataclass(frozen=True, slots=True)
class DlmStatus:
    """Read: lockspaces and fencing as the DLM runtime sees them."""


AdminCommand = LeaveCluster | KillNode | FenceAck | DlmStatus


class Backend(Protocol):
    """The daemon as the IPC server and the D-Bus bridge see it. Called on the event loop thread."""

    def snapshot(self) -> Snapshot:
        """The status now (cheap: the same object until something changes)."""
        ...

    def counters(self) -> Counters:
        """The counters now."""
        ...

    def submit(self, build: RequestBuilder) -> RequestResult | asyncio.Future[RequestResult]:
        """Feed a local request; its answer, or a future of it. Raises UsageError(not_running)."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every notification from now on."""
        ...

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling `listener` (no error when absent)."""
        ...

    def admin(self, command: AdminCommand) -> Awaitable[dict[str, Any]]:
        """Carry out a command outside the Stack; the dict is the reply.

        Raises UsageError: not_supported when this daemon does not serve it.
        """
        ...


class DlmLike(Protocol):
    """What NodeBackend needs of the DLM runtime (cmanlk.runtime.dlmd.DlmDaemon)."""

    def status(self) -> Mapping[str, Any]: ...

    def fence_ack(self, nodeid: NodeId) -> Mapping[str, Any]: ...


class NodeBackend:
    """The Backend of a running Node (and its DLM runtime, when there is one)."""

    def __init__(self, node: Node, dlm: DlmLike | None = None) -> None:
        self.node = node
        self.dlm = dlm
        self._with_lockspaces: tuple[Snapshot, tuple[LockspaceView, ...], Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        """The node's snapshot, with the DLM runtime's lockspaces when there is one (the same
        object while neither changed)."""
        snap = self.node.snapshot()
        if self.dlm is None:
            return snap
        lockspaces = lockspace_views(self.dlm.status())
        cached = self._with_lockspaces
        if cached is not None and cached[0] is snap and cached[1] == lockspaces:
            return cached[2]
        full = replace(snap, lockspaces=lockspaces)
        self._with_lockspaces = (snap, lockspaces, full)
        return full

    def counters(self) -> Counters:
        return self.node.counters()

    def submit(self, build: RequestBuilder) -> RequestResult | asyncio.Future[RequestResult]:
        return self.node.submit(build)

    def subscribe(self, listener: Listener) -> None:
        self.node.add_listener(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self.node.remove_listener(listener)

    async def admin(self, command: AdminCommand) -> dict[str, Any]:
        """LeaveCluster: leave and exit. KillNode: our own id is a leave; another member gets the
        cfg KILLNODE (refused with not_found when it is not a member). DlmStatus and FenceAck go
        to the DLM runtime; without one they are refused with not_supported."""
        node = self.node
        match command:
            case KillNode(nodeid=nodeid, reason=reason) if nodeid != node.me:
                kill = KillNodeRequest(nodeid, reason or KILL_REASON)
                await node.request(lambda t, rid: ServiceRequest(t, CFG_SERVICE, kill, rid))
                return {"result": "kill_sent", "nodeid": nodeid}
            case LeaveCluster() | KillNode():
                node.request_leave()
                return {"result": "leaving", "node_id": node.me}
            case DlmStatus() if self.dlm is not None:
                return dict(self.dlm.status())
            case FenceAck(nodeid=nodeid) if self.dlm is not None:
                return dict(self.dlm.fence_ack(nodeid))
        what = type(command).__name__
        if isinstance(command, FenceAck | DlmStatus):
            why = "DLM control is off here (cmanlk { dlm: no }): nothing waits for fencing"
            raise UsageError(ErrorCode.NOT_SUPPORTED, f"{what}: {why}")
        raise UsageError(ErrorCode.NOT_SUPPORTED, f"{what} is not served by this daemon")


class MemoryBackend:
    """A Backend without a network: see the module docstring.

    The knobs a test turns: `names`, `quorum` (votequorum's fields by name), `links` (one dict
    {nodeid, link, up, address} per path), `lockspaces` (one dict {name, state} each, as the DLM
    runtime's status lists them), `link_status` (one LinkStatus.as_dict() per local link),
    `admin_results` (the reply of each AdminCommand type; a type without one is refused with
    not_supported), `publish()` (any notification), `change_membership()`. What it did:
    `submitted`, `admin_log`.
    """

    def __init__(self, node_id: int = 1, cluster_name: str = "memory") -> None:
        self.node_id = NodeId(node_id)
        self.cpg = CpgService(self.node_id)
        self.ring_id = RingId(4, self.node_id)
        self.members: tuple[NodeId, ...] = (self.node_id,)
        self.names: dict[int, str] = {node_id: f"node{node_id}"}
        self.quorum: dict[str, Any] = {"quorate": True, "quorum": 1, "total_votes": 1, "expected_votes": 1}
        self.links: list[dict[str, Any]] = []
        self.lockspaces: list[dict[str, Any]] = []
        self.link_status: list[dict[str, Any]] = []
        self.cluster_name = cluster_name
        self.submitted: list[object] = []
        self.admin_log: list[AdminCommand] = []
        self.admin_results: dict[type, dict[str, Any]] = {}
        self._listeners: list[Listener] = []
        self._next_request = 0
        self.cpg.sync_init(self.ring_id, self.members, self.members)
        self.cpg.sync_process()
        self.cpg.sync_activate()

    def snapshot(self) -> Snapshot:
        nodes = sorted(set(self.members) | {NodeId(n) for n in self.names})
        return Snapshot(
            node_id=self.node_id,
            cluster_name=self.cluster_name,
            version="memory",
            state="OPERATIONAL",
            ring_id=self.ring_id,
            members=self.members,
            totem_ring_id=self.ring_id,
            quorum=self._quorum_state(),
            nodes=tuple(
                NodeView(n, self.names.get(n, ""), (f"192.0.2.{n}",), 1, _state(n in self.members))
                for n in nodes
            ),
            paths=tuple(_path(p) for p in self.links),
            groups=tuple(
                GroupView(ipcproto.group_text(g.name), tuple((int(n), int(pid)) for n, pid in g.members))
                for g in self.cpg.groups()
            ),
            lockspaces=lockspace_views({"lockspaces": self.lockspaces}),
        )

    def counters(self) -> Counters:
        return Counters({"submitted": len(self.submitted)}, tuple(_link(d) for d in self.link_status))

    def submit(self, build: RequestBuilder) -> RequestResult:
        self._next_request += 1
        event = build(now(), self._next_request)
        self.submitted.append(event)
        try:
            outputs = self._outputs(event)
        except UsageError as exc:
            answer = RequestResult(self._next_request, exc.code, str(exc))
            self.publish(answer)
            return answer
        answer = RequestResult(self._next_request)
        self.publish(answer)
        queue = list(outputs)
        while queue:  # a one-node agreed order: our own messages come straight back
            item = queue.pop(0)
            if hasattr(item, "function") and hasattr(item, "message"):
                queue += self.cpg.on_message(self.node_id, item.function, item.message)
            else:
                self.publish(item)
        return answer

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def admin(self, command: AdminCommand) -> dict[str, Any]:
        self.admin_log.append(command)
        result = self.admin_results.get(type(command))
        if result is None:
            what = type(command).__name__
            raise UsageError(ErrorCode.NOT_SUPPORTED, f"{what} is not supported by this daemon")
        return result

    def publish(self, note: object) -> None:
        """Hand `note` to every subscriber, as the daemon does with the core's notifications."""
        for listener in list(self._listeners):
            listener(note)

    def change_membership(self, ring_id: RingId, members: tuple[NodeId, ...]) -> MembershipChanged:
        """Install a new membership and publish its MembershipChanged."""
        old = set(self.members)
        change = MembershipChanged(
            ring_id, members, tuple(sorted(set(members) - old)), tuple(sorted(old - set(members))), ()
        )
        self.ring_id, self.members = ring_id, members
        self.publish(change)
        return change

    def _outputs(self, event: object) -> list[Any]:
        if isinstance(event, ServiceRequest) and event.service_id == CPG_SERVICE:
            return list(self.cpg.on_local_request(event.request))
        if isinstance(event, SetExpectedVotes):
            if event.expected_votes < 1:
                raise UsageError(ErrorCode.INVALID_PARAM, "expected votes must be at least 1")
            self.quorum["expected_votes"] = event.expected_votes
            return []
        if isinstance(event, SetVotes):
            if event.votes < 0:
                raise UsageError(ErrorCode.INVALID_PARAM, "votes must not be negative")
            return []
        raise UsageError(ErrorCode.NOT_SUPPORTED, f"{type(event).__name__} is not served")

    def _quorum_state(self) -> QuorumState:
        q = self.quorum
        flags = {f: bool(q.get(f, False)) for f in QUORUM_FLAGS}
        return QuorumState(
            quorate=bool(q.get("quorate", False)),
            quorum=int(q.get("quorum", 0)),
            total_votes=int(q.get("total_votes", 0)),
            expected_votes=int(q.get("expected_votes", 0)),
            highest_expected=int(q.get("highest_expected", q.get("expected_votes", 0))),
            wait_for_all_status=bool(q.get("wait_for_all_status", False)),
            ring_id=self.ring_id,
            members=self.members,
            node_votes=tuple((n, 1) for n in self.members),
            **flags,
        )


def lockspace_views(dlm_status: Mapping[str, Any]) -> tuple[LockspaceView, ...]:
    """The lockspaces of the DLM runtime's status (`DlmDaemon.status()`), in its order."""
    return tuple(LockspaceView(str(ls["name"]), str(ls["state"])) for ls in dlm_status.get("lockspaces", ()))


def _state(member: bool) -> str:
    return "member" if member else "dead"


def _link(d: Mapping[str, Any]) -> LinkStatus:
    peers = tuple(
        PeerReachability(NodeId(int(p["node"])), str(p.get("address", "")), bool(p.get("reachable")),
                         str(p.get("reason", "")))
        for p in d.get("peers", ())
    )  # fmt: skip
    return LinkStatus(int(d.get("index", 0)), d.get("interface"), d.get("local_address"), bool(d.get("up")),
                      peers, str(d.get("reason", "")), dict(d.get("counters", {})))


def _path(p: Mapping[str, Any]) -> PathView:
    nodeid, link = NodeId(int(p["nodeid"])), int(p.get("link", 0))
    return PathView(nodeid, link, bool(p.get("up")), str(p.get("address", "")))
