"""What the daemon shows of itself: one frozen, typed snapshot, and its renderings.

`Node.snapshot()` (cmanlk/runtime/node.py) builds a `Snapshot` once per change — a totem state
change, a new membership, a quorum decision, a cpg process list change, a reload, a path going up
or down — and hands the same object to every reader until the next change. The IPC server renders
its answers from it (and `cmanlk-tool` renders those), the D-Bus edge its properties, and
`status_json` the file `<run_dir>/status.json`. Counters change with every packet, so they are not
part of it: `Counters` is read afresh by whoever shows counters (status.json, the IPC `stats` op).

`PathChanged` is the notification the node publishes when it sees a path (peer, link) go up or
down; the D-Bus edge turns it into LinkStatusChanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cmanlk.runtime.transport import LinkStatus
from cmanlk.services.votequorum.policy import QuorumState
from cmanlk.types import NO_RING, NodeId, RingId

QUORUM_FLAGS = ("two_node", "wait_for_all", "last_man_standing", "auto_tie_breaker", "allow_downscale")
"""votequorum's options, by the names QuorumState and the D-Bus QuorumFlags use."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node of the nodelist: its name ("" when the file names none), addresses, current votes
    and `state` ("member" of the current membership, or "dead")."""

    nodeid: NodeId
    name: str = ""
    addresses: tuple[str, ...] = ()
    votes: int = 1
    state: str = "dead"


@dataclass(frozen=True, slots=True)
class PathView:
    """Whether link `link` towards node `nodeid` is up, and the peer's address on it."""

    nodeid: NodeId
    link: int
    up: bool
    address: str = ""


@dataclass(frozen=True, slots=True)
class GroupView:
    """A cpg group and its members (nodeid, pid), in corosync's order."""

    name: str
    members: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class LockspaceView:
    """A DLM lockspace and its state as the DLM runtime names it ("joining", "started", …)."""

    name: str
    state: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The node as it is between two changes. `ring_id`/`members` are those of the last
    membership published (after sync), `totem_ring_id` Totem's own ring; `quorum` is None before
    votequorum's first decision."""

    node_id: NodeId
    cluster_name: str = ""
    version: str = ""
    pid: int = 0
    started_at: float = 0.0
    state: str = "GATHER"
    ring_id: RingId = NO_RING
    members: tuple[NodeId, ...] = ()
    totem_ring_id: RingId = NO_RING
    membership_changes: int = 0
    last_change_reason: str = ""
    quorum: QuorumState | None = None
    nodes: tuple[NodeView, ...] = ()
    paths: tuple[PathView, ...] = ()
    groups: tuple[GroupView, ...] = ()
    lockspaces: tuple[LockspaceView, ...] = ()

    @property
    def quorate(self) -> bool | None:
        """votequorum's decision (None before the first)."""
        return self.quorum.quorate if self.quorum is not None else None

    @property
    def votes(self) -> int:
        """This node's votes."""
        return next((n.votes for n in self.nodes if n.nodeid == self.node_id), 0)

    @property
    def quorum_flags(self) -> tuple[str, ...]:
        """The votequorum options set (QUORUM_FLAGS names)."""
        q = self.quorum
        return tuple(f for f in QUORUM_FLAGS if q is not None and getattr(q, f))

    def name_of(self, nodeid: int) -> str:
        """The node's name ("" when unknown or unnamed)."""
        return next((n.name for n in self.nodes if n.nodeid == nodeid), "")


@dataclass(frozen=True, slots=True)
class Counters:
    """The daemon's counters at the moment they were read: `stats` (totem, the Stack's drops, the
    transport's totals, the persisted ring seq) and every link with its own counters."""

    stats: Mapping[str, object]
    links: tuple[LinkStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class PathChanged:
    """A notification: the path towards `nodeid` over link `link` went up or down."""

    nodeid: NodeId
    link: int
    up: bool


def status_json(snapshot: Snapshot, counters: Counters, updated_at: float) -> dict[str, object]:
    """The content of status.json (docs/config.md, "status.json"); `updated_at` is wall time."""
    s = snapshot
    return {
        "node_id": s.node_id,
        "cluster_name": s.cluster_name,
        "pid": s.pid,
        "state": s.state,
        "ring_id": str(s.ring_id),
        "ring_seq": s.ring_id.seq,
        "ring_rep": s.ring_id.rep,
        "members": list(s.members),
        "totem_ring_id": str(s.totem_ring_id),
        "quorate": s.quorate,
        "quorum": quorum_dict(s.quorum),
        "links": [lk.as_dict() for lk in counters.links],
        "stats": plain(counters.stats),
        "membership_changes": s.membership_changes,
        "started_at": s.started_at,
        "updated_at": updated_at,
        "last_change_reason": s.last_change_reason,
    }


def quorum_dict(quorum: QuorumState | None) -> dict[str, Any]:
    """votequorum's state as JSON (every QuorumState field; {} before the first decision)."""
    if quorum is None:
        return {}
    return {f.name: plain(getattr(quorum, f.name)) for f in fields(quorum)}


def plain(value: Any) -> Any:
    """A JSON-able copy: tuples become lists, enums their value, ring ids and other objects their
    str(); mapping keys become strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return str(value)
