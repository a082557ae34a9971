"""Outputs of the Totem core: imperatives the runtime (or simulator) carries out in order.

Order is part of the contract: a `PersistRingSeq` must be durable before the next
action is carried out (the new ring's packets must not leave first), and a
transitional `DeliverConfiguration` always precedes the regular one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cmanlk.totem.events import Guarantee
from cmanlk.types import NodeId, RingId


class ConfigKind(enum.Enum):
    TRANSITIONAL = "transitional"
    REGULAR = "regular"


class MembState(enum.Enum):
    OPERATIONAL = "OPERATIONAL"
    GATHER = "GATHER"
    COMMIT = "COMMIT"
    RECOVERY = "RECOVERY"
    LEFT = "LEFT"

    __hash__ = object.__hash__  # identity's, in C (each packet's state check; see TimerName)


@dataclass(frozen=True, slots=True)
class Unicast:
    """Send `data` to one node (the token, the commit token)."""

    to: NodeId
    data: bytes


@dataclass(frozen=True, slots=True)
class Multicast:
    """Send `data` to each node in `to` (never includes the sender itself; the core self-delivers)."""

    to: tuple[NodeId, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class PersistRingSeq:
    """Make `seq` durable (fsync) before carrying out any later action."""

    seq: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """Deliver one application message, in total order, to the layers above."""

    ring_id: RingId
    sender: NodeId
    payload: bytes
    guarantee: Guarantee = Guarantee.AGREED


@dataclass(frozen=True, slots=True)
class DeliverConfiguration:
    """A configuration change (EVS): transitional first, then regular.

    `left` and `joined` are relative to the previous regular configuration.
    """

    kind: ConfigKind
    ring_id: RingId
    members: tuple[NodeId, ...]
    left: tuple[NodeId, ...] = ()
    joined: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The membership state machine moved; `reason` says why (for logs, the CLI and D-Bus)."""

    state: MembState
    reason: str
    ring_id: RingId


@dataclass(frozen=True, slots=True)
class DeliverFrame:
    """A delivered Totem frame not yet assembled (only from a Totem that holds for sync).

    corosync assembles each frame inside its delivery callback, so a trans ack given by the
    services while they handle one message (the last sync barrier) switches the assembly set for
    the very next frame. Our core returns a batch of actions, so it leaves the assembly of frames
    and the assembly steps below to its consumer, in the order of the action stream: the consumer
    passes each of them to `Totem.assemble` when it reaches it and handles the `Deliver`s returned
    before the next action.
    """

    ring_id: RingId
    sender: NodeId
    frame: bytes
    guarantee: Guarantee = Guarantee.AGREED


@dataclass(frozen=True, slots=True)
class ForgetAssembly:
    """`node`'s half-assembled messages are dropped here in the stream (both assembly sets)."""

    node: NodeId


@dataclass(frozen=True, slots=True)
class UseAssemblySet:
    """From here in the stream frames are assembled in the second set (`trans`) or the first one."""

    trans: bool


AssemblyStep = DeliverFrame | ForgetAssembly | UseAssemblySet

Action = (
    Unicast | Multicast | PersistRingSeq | Deliver | DeliverConfiguration | StateChanged | AssemblyStep
)
