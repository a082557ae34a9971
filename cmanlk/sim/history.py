"""What the simulator records about each node, and what the invariant checker reads.

A history is, per node, the list of records below in the order they happened on
that node: boots and crashes (which delimit *incarnations*: a restarted node is a
new process in the EVS sense, Moser et al. 1994 §2), the application messages its
clients handed to the core, and the core's `Deliver` / `DeliverConfiguration`
actions. Membership state changes are kept for scenario output and excerpts; the
checker does not judge them.

Records are small frozen slotted dataclasses, built once and never copied, so a
run of thousands of deliveries costs little to record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cmanlk.sim.stackrecords import STACK_RECORD_TYPES, StackRecord, describe_stack_record
from cmanlk.totem.actions import ConfigKind
from cmanlk.totem.events import Guarantee
from cmanlk.types import Instant, NodeId, RingId


@dataclass(frozen=True, slots=True)
class Booted:
    """The node (re)started with a fresh core; `ring_seq` is what it was given from its persisted state."""

    t: Instant
    ring_seq: int


@dataclass(frozen=True, slots=True)
class Crashed:
    """The node stopped without warning (kill -9, power loss): its incarnation ends here."""

    t: Instant


@dataclass(frozen=True, slots=True)
class Left:
    """The node asked to leave (clean shutdown) and stopped: its incarnation ends here."""

    t: Instant


@dataclass(frozen=True, slots=True)
class Sent:
    """A client handed `payload` to the core (McastRequested accepted)."""

    t: Instant
    payload: bytes
    guarantee: Guarantee = Guarantee.AGREED
    queue: int = 0  # Totem's send queue (1: the one used while a new ring's sync runs)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The core delivered an application message (a `Deliver` action)."""

    t: Instant
    ring_id: RingId
    sender: NodeId
    payload: bytes
    guarantee: Guarantee = Guarantee.AGREED


@dataclass(frozen=True, slots=True)
class Installed:
    """The core delivered a configuration (a `DeliverConfiguration` action)."""

    t: Instant
    kind: ConfigKind
    ring_id: RingId
    members: tuple[NodeId, ...]
    left: tuple[NodeId, ...] = ()
    joined: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class StateEntered:
    """The core reported a membership state change (a `StateChanged` action)."""

    t: Instant
    state: str
    reason: str
    ring_id: RingId


Record = Booted | Crashed | Left | Sent | Delivered | Installed | StateEntered | StackRecord
Histories = Mapping[NodeId, list[Record]]


def label(payload: bytes) -> str:
    """Return the short printable name of an application payload (the part before the first '|')."""
    head = payload.split(b"|", 1)[0][:40]
    return head.decode("ascii", "replace")


def members_str(members: Iterable[NodeId]) -> str:
    return "(" + ",".join(str(m) for m in members) + ")"


def describe(rec: Record) -> str:
    """Return one line describing a record, for excerpts and verbose output."""
    at = f"{rec.t / 1e6:10.3f}ms"
    match rec:
        case Booted():
            return f"{at} boot ring_seq={rec.ring_seq}"
        case Crashed():
            return f"{at} CRASH"
        case Left():
            return f"{at} leave"
        case Sent():
            return f"{at} send {label(rec.payload)}{' safe' if rec.guarantee else ''}"
        case Delivered():
            return f"{at} deliver {label(rec.payload)} from {rec.sender} ring={rec.ring_id}"
        case Installed():
            return f"{at} {rec.kind.value} ring={rec.ring_id} members={members_str(rec.members)}"
        case StateEntered():
            return f"{at} state {rec.state} ({rec.reason})"
    if isinstance(rec, STACK_RECORD_TYPES):
        return describe_stack_record(rec)
    raise TypeError(rec)


def history_digest(histories: Histories) -> str:
    """Return a SHA-256 over every record of every node: equal digests mean identical runs."""
    h = hashlib.sha256()
    for node in sorted(histories):
        h.update(f"node {node}\n".encode())
        for rec in histories[node]:
            h.update(repr(rec).encode())
            h.update(b"\n")
    return h.hexdigest()
