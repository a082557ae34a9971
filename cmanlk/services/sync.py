"""Sync v2: corosync's service synchronisation after every regular configuration (exec/sync.c).

corosync-wire.md §7. After a regular configuration of ring R with members M, every node:

1. SERVICELIST_BUILD: multicasts SERVICE_BUILD(R, the ids of its services that synchronise) on
   group "sync" and calls `sync_init` of each local service (ascending id).
2. Unions every SERVICE_BUILD for R into its service list. An id it does not implement gets a dummy
   entry (process is done at once, nothing to activate), so nodes may list services others lack
   (a real corosync lists cmap 0, cpg 2, quorum 3, votequorum 5). When all of M have been heard,
   PROCESS the first service.
3. PROCESS service k: `sync_process` until it reports done (it multicasts the service's own sync
   data on group "a"), then multicast BARRIER(R) and wait.
4. BARRIER for R from all of M: `sync_activate` service k, go to k+1 (back to 3). After the last
   service, synchronisation is complete: only now does the Stack publish the new membership.

Barriers carry no service index: because each node sends its barrier for k+1 only after it saw
round k complete, and every node sees messages in the same total order, the rounds cannot mix.

A new configuration aborts a running synchronisation (`abort`): the current service's
`sync_abort` is called and the remembered ring is cleared so late barriers of the old ring are
discarded, as corosync's `sync_abort` zeroes `my_ring_id`. Messages naming another ring are dropped.

Deviations from corosync, each for robustness against remote input:
- SERVICE_BUILD and BARRIER are length-checked; a SERVICE_BUILD with more than 128 entries or a
  service id outside 0..127 is malformed (corosync would index past its table).
- corosync runs `sync_process` from scheduled work and retries while it returns -1; we call it at
  once and again on every `poll()` (the Stack polls on each event), at most
  MAX_PROCESS_CALLS_PER_POLL times per poll so a service that cannot make progress cannot spin.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire
from cmanlk.services.base import Service, ServiceOutput
from cmanlk.types import NodeId, RingId

MESSAGE_REQ_SYNC_BARRIER = 0
MESSAGE_REQ_SYNC_SERVICE_BUILD = 1

SERVICE_BUILD_SIZE = 552  # header 16 + ring id 12 (+4) + i32 entries (+4) + i32[128], §7
BARRIER_SIZE = 32  # header 16 + ring id 12, rounded up to the 8-byte alignment
SERVICE_LIST_MAX = 128  # the fixed array of SERVICE_BUILD, always sent whole
SERVICES_COUNT_MAX = 128  # corosync's SERVICES_COUNT_MAX: valid ids are 0..127
PROCESSOR_COUNT_MAX = 384  # corosync's bound on members of a ring
MAX_PROCESS_CALLS_PER_POLL = 16  # sync_process retries per poll before yielding to the next event

_RING_ID = struct.Struct("<IQ")  # memb_ring_id: rep u32, seq u64, packed (12 bytes)
_RING_ID_OFFSET = 16
_ENTRIES = struct.Struct("<i")
_ENTRIES_OFFSET = 32
_LIST_OFFSET = 40
_SERVICE_LIST = struct.Struct(f"<{SERVICE_LIST_MAX}i")


class SyncState(enum.Enum):
    IDLE = "IDLE"  # no synchronisation running (complete, or aborted and not restarted)
    SERVICELIST_BUILD = "SERVICELIST_BUILD"
    PROCESS = "PROCESS"
    BARRIER = "BARRIER"


@dataclass(frozen=True, slots=True)
class SendSync:
    """Multicast `message` on group "sync" (the Stack adds the group header)."""

    message: bytes


@dataclass(frozen=True, slots=True)
class SyncCompleted:
    """Every service synchronised for `ring_id`: the new membership may be published."""

    ring_id: RingId
    members: tuple[NodeId, ...]
    transitional_members: tuple[NodeId, ...]


SyncOutput = SendSync | SyncCompleted | ServiceOutput


@dataclass(frozen=True, slots=True)
class ServiceBuild:
    ring_id: RingId
    services: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Barrier:
    ring_id: RingId


def encode_service_build(ring_id: RingId, services: tuple[int, ...]) -> bytes:
    """Return a 552-byte SERVICE_BUILD listing `services` (ValueError beyond 128 entries)."""
    if len(services) > SERVICE_LIST_MAX:
        raise ValueError(f"{len(services)} services")
    body = bytearray(SERVICE_BUILD_SIZE)
    body[0:16] = svcwire.encode_request_header(MESSAGE_REQ_SYNC_SERVICE_BUILD, SERVICE_BUILD_SIZE)
    _RING_ID.pack_into(body, _RING_ID_OFFSET, ring_id.rep, ring_id.seq)
    _ENTRIES.pack_into(body, _ENTRIES_OFFSET, len(services))
    padded = services + (0,) * (SERVICE_LIST_MAX - len(services))
    _SERVICE_LIST.pack_into(body, _LIST_OFFSET, *padded)
    return bytes(body)


def encode_barrier(ring_id: RingId) -> bytes:
    """Return a 32-byte BARRIER for `ring_id`."""
    body = bytearray(BARRIER_SIZE)
    body[0:16] = svcwire.encode_request_header(MESSAGE_REQ_SYNC_BARRIER, BARRIER_SIZE)
    _RING_ID.pack_into(body, _RING_ID_OFFSET, ring_id.rep, ring_id.seq)
    return bytes(body)


def decode_sync_message(message: bytes) -> ServiceBuild | Barrier:
    """Decode a group "sync" message. Raises MalformedPacket (unknown id, short, bad list)."""
    header = svcwire.decode_request_header(message)
    if header.id == MESSAGE_REQ_SYNC_BARRIER:
        if len(message) < _RING_ID_OFFSET + _RING_ID.size:
            raise MalformedPacket("sync_barrier_short", f"{len(message)} bytes")
        return Barrier(_ring_id_at(message))
    if header.id == MESSAGE_REQ_SYNC_SERVICE_BUILD:
        if len(message) < SERVICE_BUILD_SIZE:
            raise MalformedPacket("sync_service_build_short", f"{len(message)} bytes")
        (entries,) = _ENTRIES.unpack_from(message, _ENTRIES_OFFSET)
        if not 0 <= entries <= SERVICE_LIST_MAX:
            raise MalformedPacket("sync_service_build_entries", f"{entries} entries")
        services = _SERVICE_LIST.unpack_from(message, _LIST_OFFSET)[:entries]
        if any(not 0 <= s < SERVICES_COUNT_MAX for s in services):
            raise MalformedPacket("sync_service_build_id", f"services {services}")
        return ServiceBuild(_ring_id_at(message), tuple(services))
    raise MalformedPacket("sync_unknown_id", f"id {header.id}")


def _ring_id_at(message: bytes) -> RingId:
    rep, seq = _RING_ID.unpack_from(message, _RING_ID_OFFSET)
    return RingId(seq, NodeId(rep))


@dataclass(slots=True)
class _Entry:
    """One service in the synchronisation list; `service` None = dummy for an unknown id."""

    service_id: int
    service: Service | None


class Sync:
    """The sync v2 state machine of one node over its local `services`.

    Drive it with `start` (regular configuration), `save_transitional`, `abort`, `on_message`
    (group "sync" bodies in agreed order) and `poll`; each returns the outputs to carry out in
    order. Raises nothing on remote input: `on_message` raises MalformedPacket only from decoding,
    before any state changed.
    """

    def __init__(self, me: NodeId, services: list[Service]) -> None:
        self._me = me
        self._local = {s.service_id: s for s in sorted(services, key=lambda s: s.service_id)}
        if len(self._local) != len(services):
            raise ValueError("two services with the same id")
        self.state = SyncState.IDLE
        self.ring_id: RingId | None = None
        self.members: tuple[NodeId, ...] = ()
        self._trans: tuple[NodeId, ...] = ()
        self._entries: list[_Entry] = []
        self._index = 0
        self._heard: set[NodeId] = set()
        self.stats: dict[str, int] = {"old_ring": 0, "not_member": 0, "completed": 0, "aborted": 0}

    @property
    def local_service_ids(self) -> tuple[int, ...]:
        """Ids this node lists in its SERVICE_BUILD, ascending."""
        return tuple(self._local)

    @property
    def is_synchronising(self) -> bool:
        """Is a synchronisation running (started and neither complete nor aborted)?"""
        return self.state is not SyncState.IDLE

    @property
    def current_service_id(self) -> int | None:
        """Id of the service being processed, None outside PROCESS/BARRIER."""
        if self.state in (SyncState.PROCESS, SyncState.BARRIER):
            return self._entries[self._index].service_id
        return None

    def save_transitional(self, members: tuple[NodeId, ...]) -> None:
        """Remember the transitional configuration (corosync's sync_save_transitional)."""
        self._trans = members

    def abort(self) -> None:
        """Abort a running synchronisation: sync_abort of the current service, forget the ring."""
        if self.state is SyncState.PROCESS:
            entry = self._entries[self._index]
            if entry.service is not None:
                entry.service.sync_abort()
        if self.state is not SyncState.IDLE:
            self.stats["aborted"] += 1
        self.state = SyncState.IDLE
        self.ring_id = None

    def start(self, ring_id: RingId, members: tuple[NodeId, ...]) -> list[SyncOutput]:
        """Begin synchronising the regular configuration `members` of `ring_id`."""
        self.ring_id = ring_id
        self.members = members[:PROCESSOR_COUNT_MAX]
        self._heard = set()
        self._index = 0
        self._entries = [_Entry(sid, svc) for sid, svc in self._local.items()]
        self.state = SyncState.SERVICELIST_BUILD
        out: list[SyncOutput] = [SendSync(encode_service_build(ring_id, self.local_service_ids))]
        member_set = set(self.members)
        trans = tuple(n for n in self._trans if n in member_set)
        self._trans = trans
        for svc in self._local.values():
            out += svc.sync_init(ring_id, self.members, trans)
        return out

    def on_message(self, sender: NodeId, message: bytes) -> list[SyncOutput]:
        """A group "sync" message in agreed order. Raises MalformedPacket before any change."""
        decoded = decode_sync_message(message)
        if decoded.ring_id != self.ring_id:
            # corosync: "barrier for old ring - discarding" (also after an abort).
            self.stats["old_ring"] += 1
            return []
        if sender not in self.members:
            self.stats["not_member"] += 1
            return []
        if isinstance(decoded, ServiceBuild):
            return self._on_service_build(sender, decoded)
        return self._on_barrier(sender)

    def poll(self) -> list[SyncOutput]:
        """Retry the current service's sync_process if it has not finished yet."""
        if self.state is SyncState.PROCESS:
            return self._process()
        return []

    def _on_service_build(self, sender: NodeId, build: ServiceBuild) -> list[SyncOutput]:
        if self.state is not SyncState.SERVICELIST_BUILD:
            # A duplicate or late SERVICE_BUILD of this ring after the list was settled: corosync
            # would still union it; every node saw the same ones before PROCESS, so ignore it.
            return []
        known = {e.service_id for e in self._entries}
        for sid in build.services:
            if sid not in known:
                self._entries.append(_Entry(sid, None))
                known.add(sid)
        self._entries.sort(key=lambda e: e.service_id)
        self._heard.add(sender)
        if self._heard >= set(self.members):
            return self._process_enter()
        return []

    def _on_barrier(self, sender: NodeId) -> list[SyncOutput]:
        if self.state not in (SyncState.PROCESS, SyncState.BARRIER):
            return []
        self._heard.add(sender)
        if not self._heard >= set(self.members):
            return []
        entry = self._entries[self._index]
        out: list[SyncOutput] = []
        if entry.service is not None:
            out += entry.service.sync_activate()
        self._index += 1
        if self._index == len(self._entries):
            return out + self._complete()
        return out + self._process_enter()

    def _process_enter(self) -> list[SyncOutput]:
        if not self._entries:
            return self._complete()
        self.state = SyncState.PROCESS
        self._heard = set()
        return self._process()

    def _process(self) -> list[SyncOutput]:
        entry = self._entries[self._index]
        out: list[SyncOutput] = []
        for _ in range(MAX_PROCESS_CALLS_PER_POLL):
            if entry.service is None:
                done = True
            else:
                done, produced = entry.service.sync_process()
                out += produced
            if done:
                self.state = SyncState.BARRIER
                assert self.ring_id is not None
                out.append(SendSync(encode_barrier(self.ring_id)))
                return out
        return out

    def _complete(self) -> list[SyncOutput]:
        assert self.ring_id is not None
        self.state = SyncState.IDLE
        self.stats["completed"] += 1
        return [SyncCompleted(self.ring_id, self.members, self._trans)]

