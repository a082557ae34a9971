"""The service-engine interface of the layer above Totem (corosync's `struct corosync_service_engine`).

A service is a pure object the Stack (cmanlk/stack.py) drives with totem-ordered input:

- `on_configuration(DeliverConfiguration)` for every raw totem configuration change (transitional
  then regular), *before* synchronisation runs — corosync's `confchg_fn`;
- `sync_init` / `sync_process` / `sync_activate` / `sync_abort` — the sync v2 callbacks
  (corosync exec/sync.c), called in ascending service id order after each regular configuration;
  A service without sync callbacks (cfg) says `synchronises = False` and is left out of sync;
- `on_message(sender, function, message)` for every message of group "a" whose libqb header names
  this service (`id >> 16 == service_id`), in agreed order — corosync's exec handler table.

Services never send anything themselves: they return `ServiceOutput`s. A `SendMessage` is wrapped
by the Stack in the group header "a" and multicast in agreed order (the function number and the
service id are already in the libqb header the service built, `function` is kept for logs and
checks). A `Notification` is an upward event (quorum change, cpg delivery, …) the Stack passes
through unchanged as an action for the runtime's IPC/D-Bus edges. Services define their own
notification dataclasses, subclassing `Notification`.

Remote input: `on_message` may raise `MalformedPacket`; the Stack catches and counts it (reason
prefixed with the service name) and the message is dropped. Anything else raised is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cmanlk.totem.actions import DeliverConfiguration
from cmanlk.types import Instant, NodeId, RingId

# Service ids of corosync 3 (include/corosync/corotypes.h, `enum corosync_service_types`).
CMAP_SERVICE = 0
CFG_SERVICE = 1
CPG_SERVICE = 2
QUORUM_SERVICE = 3
PLOAD_SERVICE = 4
VOTEQUORUM_SERVICE = 5
MON_SERVICE = 6
WD_SERVICE = 7


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Multicast `message` (a whole service message, libqb header included) on group "a".

    `function` is the function number already encoded in the header's id (low 16 bits).
    """

    function: int
    message: bytes


class Notification:
    """Base of upward notifications (quorum, membership, cpg); the Stack returns them as actions.

    Subclasses are `@dataclass(frozen=True, slots=True)`; this base has no fields.
    """

    __slots__ = ()


ServiceOutput = SendMessage | Notification


@runtime_checkable
class Service(Protocol):
    """A service engine plugged into the Stack (see the module docstring for the call contract)."""

    @property
    def service_id(self) -> int:
        """corosync's service id (0 cmap, 2 cpg, 3 quorum, 5 votequorum)."""
        ...

    @property
    def name(self) -> str:
        """Short name for logs and drop counters ("votequorum", "cpg", …)."""
        ...

    def on_configuration(self, change: DeliverConfiguration) -> list[ServiceOutput]:
        """Raw totem configuration change (transitional, then regular), before sync runs."""
        ...

    def sync_init(
        self,
        ring_id: RingId,
        members: tuple[NodeId, ...],
        transitional_members: tuple[NodeId, ...],
    ) -> list[ServiceOutput]:
        """Start synchronising for the regular configuration `members` of `ring_id`.

        `transitional_members` are the members that came with us from the previous ring.
        """
        ...

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        """Send this service's sync data; returns (done, outputs). Called again until done."""
        ...

    def sync_activate(self) -> list[ServiceOutput]:
        """Every member finished this service's sync: apply the synchronised state."""
        ...

    def sync_abort(self) -> None:
        """A new configuration interrupted synchronisation: drop the partial sync state."""
        ...

    def on_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        """A message of this service in agreed order; `message` includes the 16-byte header.

        Raises MalformedPacket for a message that cannot be decoded (the Stack counts it).
        """
        ...


@runtime_checkable
class TimedService(Protocol):
    """A service that also keeps timers (votequorum's last_man_standing window).

    The Stack calls `advance(now)` at the start of every event it handles (so the service knows
    the time when later callbacks arm a timer) and includes `next_deadline` in its own.
    """

    @property
    def next_deadline(self) -> Instant | None:
        """When this service next needs `advance`; None: no timer armed."""
        ...

    def advance(self, now: Instant) -> list[ServiceOutput]:
        """Record `now` and run the timers due; returns what to send and notify."""
        ...


@runtime_checkable
class LocalRequestHandler(Protocol):
    """A service that accepts requests from local clients routed by the Stack (`ServiceRequest`).

    `request` is whatever object the service defines for its clients (cpg: join, leave, mcast …).
    Raises UsageError (its `code` goes back to the client) when the request is refused.
    """

    def on_local_request(self, request: object) -> list[ServiceOutput]:
        """Carry out a local client's request; returns what to send and notify."""
        ...


def takes_part_in_sync(service: Service) -> bool:
    """Is `service` listed in SERVICE_BUILD and synchronised after each configuration?

    A service sets a class attribute `synchronises = False` when it has no sync callbacks
    (corosync's cfg: `sync_init` NULL, so it is absent from the sync list); default True.
    """
    return getattr(service, "synchronises", True) is not False


class ServiceFactory(Protocol):
    """Builds one service for node `me` (the Stack calls it once at construction)."""

    def __call__(self, me: NodeId) -> Service: ...
