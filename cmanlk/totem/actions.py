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


Action = Unicast | Multicast | PersistRingSeq | Deliver | DeliverConfiguration | StateChanged
