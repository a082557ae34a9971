"""State and plumbing shared by the ordering (core.py) and membership (membership.py) halves.

Nothing here decides anything about the protocol: it holds the node's state,
queues actions, sends packets (a packet for ourselves goes to a loopback list the
core drains before returning, as a singleton ring must hand the token to itself),
and counts drops with a rate-limited log line.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from dataclasses import dataclass, field

from cmanlk.errors import MalformedPacket
from cmanlk.totem import wire
from cmanlk.totem.actions import (
    Action,
    AssemblyStep,
    Deliver,
    DeliverFrame,
    ForgetAssembly,
    MembState,
    Multicast,
    StateChanged,
    Unicast,
    UseAssemblySet,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import Guarantee
from cmanlk.totem.ring import RingState
from cmanlk.totem.timers import Timers
from cmanlk.totem.totempg import Packer, Unpacker
from cmanlk.types import NodeId, RingId, seq_add, seq_le, seq_lt

log = logging.getLogger("cmanlk.totem")

DROP_LOG_FIRST = 5  # drops logged per reason before we go quiet...
DROP_LOG_EVERY = 1000  # ...then one line per this many, so a hostile peer cannot flood the log.


class GatherReason(enum.Enum):
    """Every way into GATHER (totemsrp's TOTEMSRP_GSFROM_* set, in our words)."""

    STARTUP = "node started"
    TOKEN_LOST_IN_OPERATIONAL = "token lost in OPERATIONAL"
    TOKEN_LOST_IN_COMMIT = "commit token lost in COMMIT"
    TOKEN_LOST_IN_RECOVERY = "token lost in RECOVERY"
    CONSENSUS_TIMEOUT = "consensus timeout"
    MERGE_DURING_OPERATIONAL = "merge detect from another ring in OPERATIONAL"
    MERGE_DURING_GATHER = "merge detect from a new node in GATHER"
    FOREIGN_MESSAGE_IN_OPERATIONAL = "message from a node outside the ring in OPERATIONAL"
    FOREIGN_MESSAGE_IN_GATHER = "message from a new node in GATHER"
    JOIN_DURING_OPERATIONAL = "join in OPERATIONAL"
    JOIN_CHANGED_SETS = "join changed our proc/failed sets"
    LEAVE_ANNOUNCED = "a node announced its leave"
    JOIN_DURING_COMMIT = "join from a new-ring member in COMMIT"
    JOIN_DURING_RECOVERY = "join from a new-ring member in RECOVERY"
    FAILED_TO_RECEIVE = "failed to receive (fail_recv_const)"


@dataclass(slots=True)
class TotemStats:
    """Counters for status output and tests; `dropped` is keyed by the drop reason."""

    dropped: dict[str, int] = field(default_factory=dict)
    tokens_seen: int = 0
    tokens_sent: int = 0
    token_retransmits: int = 0
    mcasts_sent: int = 0
    mcasts_received: int = 0
    retransmits: int = 0
    duplicates: int = 0
    messages_delivered: int = 0
    gathers: int = 0
    rings_formed: int = 0
    holds: int = 0
    merge_detects_sent: int = 0


class TotemBase:
    """The node's state; see the module docstring."""

    def __init__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        self.config = config
        self.me = me
        self.rng = rng
        self.stats = TotemStats()
        self.timers = Timers()
        self._state = MembState.GATHER
        self._started = False
        self._out: list[Action] = []
        self._loopback: deque[wire.Packet] = deque()
        # The last ring we were OPERATIONAL in (corosync's "old ring" while we form a new one). A fresh
        # node's first "ring" is (persisted seq, me), as in corosync, so it is distinct from every other.
        first = RingId(ring_seq, me)
        self.ring = RingState(first, (me,))
        self.cur_ring_id = first  # corosync's my_ring_id: set to the new ring on entering COMMIT
        self.ring_seq_max = ring_seq  # highest ring seq seen anywhere (token_ring_id_seq)
        self.installed_any = False  # has this incarnation delivered a regular configuration yet?
        # corosync's two new-message queues (totemsrp's new_message_queue and new_message_queue_trans)
        # and totempg's two assembly sets: while `waiting_trans_ack` (from a new ring's operational
        # entry until the services' sync completed, `trans_ack`), what is queued goes to, and only what
        # was queued then is sent from, the second queue; messages queued before wait, half-sent ones
        # too, and are continued where they stopped once sync is over. Only a node that runs sync (the
        # Stack: `holds_for_sync`) waits; a bare Totem core acknowledges at once.
        self.holds_for_sync = False
        self.waiting_trans_ack = False
        self.packer = Packer(config.max_frame_bytes)
        self.packer_trans = Packer(config.max_frame_bytes)
        self.unpackers = (Unpacker(), Unpacker())  # (regular, while waiting for the trans ack)
        self.unpacker = self.unpackers[0]
        # Token bookkeeping of the ring we are on (reset whenever a new ring starts).
        self.my_token_seq: int | None = None  # last token_seq accepted (duplicate filter)
        self.last_token: tuple[NodeId, wire.OrfToken] | None = None  # what TOKEN_RETRANSMIT re-sends
        self.held_token: wire.OrfToken | None = None  # the representative's held token (idle ring)
        self.seqno_unchanged = 0  # rotations without a new message (token hold, hold cancel)
        self.last_token_seq_value = 0
        self.prev_token_aru = 0  # the aru the token brought at our previous visit
        self.safe_point = 0  # every member holds the messages up to here: safe delivery, freeing
        self.aru_count = 0  # visits with an unchanged aru held down by one node (fail_recv_const)
        self.my_trc = 0  # what we added to the token's fcc last visit
        self.my_pbl = 0  # what we added to the token's backlog last visit
        self.rtr_miss: dict[int, int] = {}  # seq -> visits it was missing (miss_count_const)
        self.hold_cancel_sent = False
        self.this_seqno = 0
        self.gap_senders: tuple[NodeId, ...] = ()  # whose frames may be missing where gaps are skipped

    def _reset_token_state(self) -> None:
        self.my_token_seq = None
        self.last_token = None
        self.held_token = None
        self.seqno_unchanged = 0
        self.last_token_seq_value = 0
        self.prev_token_aru = 0
        self.safe_point = 0
        self.aru_count = 0
        self.my_trc = 0
        self.my_pbl = 0
        self.rtr_miss.clear()
        self.hold_cancel_sent = False

    # --- facade properties ---------------------------------------------------------------------------

    @property
    def state(self) -> MembState:
        return self._state

    @property
    def ring_id(self) -> RingId:
        return self.ring.ring_id

    @property
    def members(self) -> tuple[NodeId, ...]:
        return self.ring.members if self.installed_any else ()

    # --- the two send queues ------------------------------------------------------------------------

    @property
    def queueing_to_second_queue(self) -> bool:
        """Would a message queued now go to the second queue (`_push_packer`)? For observers: the
        simulator judges FIFO per queue, as corosync keeps it."""
        return self._push_packer() is self.packer_trans

    def _push_packer(self) -> Packer:
        """The queue a new message goes to: the second one while waiting, else the first (corosync's
        totemsrp_mcast). Leftovers of a sync in the second queue go out once the first is empty."""
        return self.packer_trans if self.waiting_trans_ack else self.packer

    def _send_packer(self) -> Packer | None:
        """The queue the token sends from now (None: nothing to send)."""
        if self.waiting_trans_ack:
            return self.packer_trans if self.packer_trans.has_pending() else None
        if self.packer.has_pending():
            return self.packer
        return self.packer_trans if self.packer_trans.has_pending() else None

    def _set_waiting_trans_ack(self, waiting: bool) -> None:
        self.waiting_trans_ack = waiting
        self._assembly_step(UseAssemblySet(waiting))

    def _forget_assembly(self, node: NodeId) -> None:
        """Drop `node`'s half-assembled messages in both assembly sets (it left, as corosync's
        assembly_deref_from_normal_and_trans)."""
        self._assembly_step(ForgetAssembly(node))

    def _assembly_step(self, step: AssemblyStep) -> None:
        """Assemble now, or (a Totem that holds for sync) leave it to the consumer at this point of
        the action stream (see DeliverFrame: the trans ack lands between two frames there)."""
        if self.holds_for_sync:
            self._out.append(step)
        else:
            self._out.extend(self.assemble(step))

    def assemble(self, step: AssemblyStep) -> list[Deliver]:
        """Carry out one assembly step of the action stream; return the messages a frame completed."""
        match step:
            case UseAssemblySet(trans=trans):
                self.unpacker = self.unpackers[1 if trans else 0]
            case ForgetAssembly(node=node):
                for u in self.unpackers:
                    u.forget(node)
            case DeliverFrame(ring_id=ring_id, sender=sender, frame=frame, guarantee=guarantee):
                try:
                    payloads = self.unpacker.feed(sender, frame)
                except MalformedPacket as e:
                    self._drop(e.reason, f"frame from node {sender}: {e.detail}")
                    return []
                self.stats.messages_delivered += len(payloads)
                return [Deliver(ring_id, sender, payload, guarantee) for payload in payloads]
        return []

    def take_edges(
        self, sender: NodeId, frame: bytes, fragmented: int, continuation: int, start: int,
        lens: tuple[int, ...],
    ) -> tuple[bytes | None, int, tuple[int, ...]] | None:  # fmt: skip
        """The fused receive path's assembly of one DeliverFrame (Stack._fast_frame): the current
        assembly set's Unpacker.take_edges, counting what it completes as `assemble` does."""
        edges = self.unpacker.take_edges(sender, frame, fragmented, continuation, start, lens)
        if edges is not None:
            self.stats.messages_delivered += len(edges[2]) + (edges[0] is not None)
        return edges

    # --- plumbing --------------------------------------------------------------------------------------

    def _set_state(self, state: MembState, reason: str) -> None:
        self._state = state
        self._out.append(StateChanged(state, reason, self.cur_ring_id))

    def _unicast(self, to: NodeId, packet: wire.Packet) -> None:
        if to == self.me:
            self._loopback.append(packet)
        else:
            self._out.append(Unicast(to, wire.encode(packet)))

    def _multicast(self, to: tuple[NodeId, ...] | list[NodeId], packet: wire.Packet) -> None:
        dests = tuple(n for n in to if n != self.me)
        if dests:
            self._out.append(Multicast(dests, wire.encode(packet)))

    def _everyone(self) -> tuple[NodeId, ...]:
        """Every node we know of: the configured nodelist and whoever is in our sets, but us."""
        known = set(self.config.nodes) | set(self.ring.members)
        return tuple(sorted(n for n in known if n != self.me))

    def _deliver(self, ring: RingState, upto: int, safe_upto: int | None, skip_gaps: bool,
                 only_from: tuple[NodeId, ...] | None = None) -> None:  # fmt: skip
        """Deliver ring messages after high_delivered, in seq order, up to `upto`.

        Without `skip_gaps` delivery stops at the first missing message (agreed order);
        with it (the transitional part of recovery) gaps no survivor could fill are passed
        over. A safe message stops delivery until `safe_upto` has passed it (None: no wait).
        Encapsulated messages are the new ring's carriers of old-ring messages: they
        occupy a seq but deliver nothing themselves. With `only_from`, agreed messages of other
        senders are passed over (corosync's my_deliver_memb filter after the transitional
        configuration).
        """
        s = ring.high_delivered
        while seq_lt(s, upto):
            nxt = seq_add(s, 1)
            msg = ring.queue.get(nxt)
            if msg is None:
                if not skip_gaps and not seq_le(nxt, ring.aru):
                    break
                # Only a departed member's frame can be missing after recovery (survivors re-send all
                # of theirs); its half-assembled message must not be continued across the hole.
                for n in self.gap_senders:
                    self._forget_assembly(n)
                s = nxt
                ring.high_delivered = s
                continue
            if (msg.guarantee == Guarantee.SAFE and safe_upto is not None
                    and not seq_le(nxt, safe_upto)):  # fmt: skip
                break
            s = nxt
            ring.high_delivered = s
            if msg.encapsulated == wire.ENCAPSULATED:
                continue
            if only_from is not None and msg.system_from not in only_from and msg.guarantee != Guarantee.SAFE:
                continue
            self._deliver_frame(ring.ring_id, msg)

    def _deliver_frame(self, ring_id: RingId, msg: wire.Mcast) -> None:
        guarantee = Guarantee.SAFE if msg.guarantee == Guarantee.SAFE else Guarantee.AGREED
        self._assembly_step(DeliverFrame(ring_id, msg.system_from, msg.payload, guarantee))

    def _drop(self, reason: str, detail: str = "") -> None:
        n = self.stats.dropped.get(reason, 0) + 1
        self.stats.dropped[reason] = n
        if n <= DROP_LOG_FIRST or n % DROP_LOG_EVERY == 0:
            log.info("node %d: dropped packet (%s%s), %d so far", self.me, reason,
                     f": {detail}" if detail else "", n)  # fmt: skip
