"""Inputs of the Totem core (and of `cmanlk.stack.Stack`): past-tense facts, each carrying `now`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cmanlk.types import Instant, NodeId, RingId


class Guarantee(enum.IntEnum):
    """Delivery guarantee of a message (the MCAST header's `guarantee` field)."""

    AGREED = 0
    SAFE = 1


@dataclass(frozen=True, slots=True)
class Started:
    """The node booted: the core enters GATHER and forms (or joins) a ring."""

    now: Instant


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """A datagram arrived. `src` is the node id the transport mapped the source address to (None: unknown)."""

    now: Instant
    data: bytes
    src: NodeId | None = None
    link: int = 0


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """The runtime's timer fired; the core runs every named timer whose deadline is <= now."""

    now: Instant


@dataclass(frozen=True, slots=True)
class McastRequested:
    """An application message to be sent in agreed (or safe) total order to the ring."""

    now: Instant
    payload: bytes
    guarantee: Guarantee = Guarantee.AGREED


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """Graceful shutdown: send a leave JOIN so peers see a leave, not a failure."""

    now: Instant


@dataclass(frozen=True, slots=True)
class NodelistChanged:
    """The configured nodelist changed (SIGHUP reload)."""

    now: Instant
    nodes: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class TransAck:
    """The services finished synchronising the new ring (corosync's totempg_trans_ack, called from
    corosync_sync_completed): messages queued before the ring change may go out now.

    Give it where sync completed in the stream of delivered messages (frames after it are assembled
    in the first set); `ring_id` is the ring whose sync completed: an ack for an older ring (its
    last barrier delivered among the old ring's messages at a ring change) switches the assembly
    set only, the new ring's queue keeps waiting."""

    now: Instant
    ring_id: RingId | None = None


Event = (
    Started | PacketReceived | DeadlineReached | McastRequested | LeaveRequested | NodelistChanged | TransAck
)
