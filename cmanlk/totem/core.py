"""The Totem single-ring ordering protocol, and the facade of the whole Totem core.

Ordering as in Amir, Moser, Melliar-Smith et al., "The Totem single-ring ordering
and membership protocol" (ACM TOCS 13(4), 1995), §3, with corosync 3's totemsrp
as the reference for the wire-visible details:

- A regular token (ORF token) circulates in node-id order. Its holder
  re-multicasts the messages on the token's retransmit list that it has, sends
  new messages, each numbered with `++token.seq`, lists the seqs it has missed on
  `miss_count_const` visits, lowers `aru` if it lacks something (only the node
  that lowered it, `aru_addr`, may raise it again), and forwards the token.
- Flow control (corosync's fcc_calculate): a visit may send at most
  max_messages, at most window_size − fcc (everything sent in the last rotation),
  and, when others have a backlog too, its share of window_size.
- Delivery is agreed (contiguous) or safe (the token's aru passed the message on
  two visits); `Deliver` actions come after totempg reassembly.
- The token is re-sent every token_retransmit until something shows the next
  node got it; silence for `token` is token loss and starts GATHER.
- An idle ring: after seqno_unchanged_const rotations without a new message the
  representative holds the token for `hold` ms; a node with something to send
  multicasts TOKEN_HOLD_CANCEL. The representative also sends merge detects then.
- fail_recv_const: a node that holds aru down for that many visits has failed to
  receive and leaves the ring into a singleton, as corosync does.

Remote input never raises out of `handle()`: malformed packets and packets that
are illegal in the current state are counted in `stats.dropped` by reason.

Deviation (hardening): a packet that can move the membership state machine — a
JOIN, a commit token, an ORF token, a merge detect, a token hold cancel, an MCAST
of a ring other than ours — is dropped (`spoofed-sender`) when the node it claims
to come from is not the node whose address it came from (`PacketReceived.src`, the
transport's mapping of the source address; the check is skipped when that is
unknown). corosync's udpu trusts the claim, so one listed host could speak for
every node. MCASTs of our own ring are not checked: a retransmission arrives from
whichever member had the message, under its originator's id. udpu has no
authentication, so a host that claims its own address's id, or forges the source
address itself, is still believed; the native transport authenticates every frame.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from cmanlk.errors import MalformedPacket
from cmanlk.totem import wire
from cmanlk.totem.actions import Action, MembState
from cmanlk.totem.base import GatherReason, TotemStats
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.events import (
    DeadlineReached,
    Event,
    Guarantee,
    LeaveRequested,
    McastRequested,
    NodelistChanged,
    PacketReceived,
    Started,
    TransAck,
)
from cmanlk.totem.membership import Membership
from cmanlk.totem.ring import SORT_QUEUE_MAX, RingState
from cmanlk.totem.timers import TimerName
from cmanlk.types import Instant, NodeId, RingId, after, seq_add, seq_diff, seq_le, seq_lt

__all__ = ["GatherReason", "Totem", "TotemStats"]

log = logging.getLogger("cmanlk.totem")

MAX_LOOPBACK_PER_EVENT = 256  # packets to ourselves per call; past it a singleton's token waits a turn.
TOKEN_SEQ_MASK = 0xFFFFFFFF

_OP = MembState.OPERATIONAL
_GA = MembState.GATHER
_CO = MembState.COMMIT
_RE = MembState.RECOVERY

Handler = Callable[[Instant, wire.Packet], None]


class Totem(Membership):
    """One node's Totem protocol engine: `handle(event) -> actions`, `next_deadline`.

    Build with the node's effective `TotemConfig`, its id, an injected random
    generator and the ring seq it persisted in a previous run (0 when fresh).
    """

    def __init__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        super().__init__(config, me, rng, ring_seq)
        # One dispatch table: packet type -> handler and the states in which it is legal.
        self._dispatch: dict[type, tuple[Handler, frozenset[MembState]]] = {
            wire.OrfToken: (self._on_orf_token, frozenset({_OP, _RE})),  # type: ignore[dict-item]
            wire.Mcast: (self._on_mcast, frozenset({_OP, _GA, _CO, _RE})),  # type: ignore[dict-item]
            wire.MembJoin: (self._on_memb_join, frozenset({_OP, _GA, _CO, _RE})),  # type: ignore[dict-item]
            wire.CommitToken: (self._on_commit_token, frozenset({_GA, _CO, _RE})),  # type: ignore[dict-item]
            wire.MergeDetect: (self._on_merge_detect, frozenset({_OP, _GA})),  # type: ignore[dict-item]
            wire.TokenHoldCancel: (self._on_hold_cancel, frozenset({_OP})),  # type: ignore[dict-item]
        }

    # --- the only way in -----------------------------------------------------------------------------

    @property
    def next_deadline(self) -> Instant | None:
        if not self._started or self._state == MembState.LEFT:
            return None
        return self.timers.next_deadline

    @property
    def send_queue_free_bytes(self) -> int:
        """Room left in the send queue: a McastRequested of up to this many bytes less
        totempg.QUEUE_ENTRY_COST_BYTES is queued, a larger one refused with QueueFull."""
        return self._push_packer().free_bytes

    def hold_for_sync(self) -> None:
        """This node runs the services' sync: from now on a new ring's messages queued before it wait
        until `TransAck` (corosync's waiting_trans_ack; see TotemBase). Call before `Started`."""
        self.holds_for_sync = True
        self.waiting_trans_ack = True  # corosync starts waiting, until the first sync completes
        self.unpacker = self.unpackers[1]

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order.

        Raises only for a local request that cannot be taken now: McastRequested raises QueueFull
        (try_again) when the send queue is full, TooLarge past the maximum message size,
        UsageError(invalid_param) for an empty message. Nothing is queued then.
        """
        if self._state == MembState.LEFT:
            return []
        match event:
            case PacketReceived(now=now, data=data, src=src):
                if self._started:
                    self._on_packet(now, data, src)
            case DeadlineReached(now=now):
                self._on_deadline(now)
            case McastRequested(now=now, payload=payload, guarantee=guarantee):
                self._on_mcast_requested(now, payload, guarantee)
            case Started(now=now):
                if not self._started:
                    self._started = True
                    self._enter_gather(now, GatherReason.STARTUP)
            case LeaveRequested(now=now):
                self._leave(now)
            case NodelistChanged(nodes=nodes):
                self.config = self.config.with_nodes(nodes)
            case TransAck(now=now, ring_id=ring_id):
                self._on_trans_ack(now, ring_id)
        self._drain_loopback(getattr(event, "now", Instant(0)))
        out, self._out = self._out, []
        return out

    # --- dispatch ------------------------------------------------------------------------------------

    def _on_packet(self, now: Instant, data: bytes, src: NodeId | None) -> None:
        try:
            packet = wire.decode(data)
        except MalformedPacket as e:
            self._drop(e.reason, e.detail)
            return
        claimed = self._claimed_sender(packet)
        if src is not None and claimed is not None and claimed != src:
            what = f"{type(packet).__name__} claims node {claimed}, came from node {src}'s address"
            self._drop("spoofed-sender", what)
            return
        self._handle_packet(now, packet)

    def _claimed_sender(self, packet: wire.Packet) -> NodeId | None:
        """The node a membership-moving packet says sent it (module docstring); None: not checked."""
        match packet:
            case wire.MembJoin() | wire.MergeDetect():
                return packet.system_from  # a leave JOIN has sender 0 but names its node here
            case wire.OrfToken() | wire.CommitToken() | wire.TokenHoldCancel():
                return packet.sender  # set by each node that forwards it
            case wire.Mcast():
                new = self.new_ring
                ours = packet.ring_id == self.ring.ring_id
                ours = ours or (new is not None and packet.ring_id == new.ring_id)
                return None if ours else packet.system_from  # a foreign ring's message starts a merge
        return None

    def _handle_packet(self, now: Instant, packet: wire.Packet) -> None:
        handler, states = self._dispatch[type(packet)]
        if self._state not in states:
            self._drop(f"{type(packet).__name__}-in-{self._state.value}")
            return
        handler(now, packet)

    def _drain_loopback(self, now: Instant) -> None:
        handled = 0
        while self._loopback and self._state != MembState.LEFT:
            packet = self._loopback.popleft()
            if isinstance(packet, wire.OrfToken) and handled >= MAX_LOOPBACK_PER_EVENT:
                self.held_token = packet
                self.timers.arm(TimerName.SELF_TOKEN, now)
                continue
            handled += 1
            self._handle_packet(now, packet)

    def _on_deadline(self, now: Instant) -> None:
        for name in self.timers.pop_expired(now):
            match name:
                case TimerName.SELF_TOKEN | TimerName.HOLD:
                    self._release_held_token(now)
                case TimerName.TOKEN:
                    self._on_token_timeout(now)
                case TimerName.TOKEN_RETRANSMIT:
                    self._on_token_retransmit(now)
                case TimerName.JOIN:
                    self._on_join_timeout(now)
                case TimerName.CONSENSUS:
                    self._on_consensus_timeout(now)
                case TimerName.MERGE_DETECT:
                    if self._state == MembState.OPERATIONAL and self.ring.ring_id.rep == self.me:
                        self._send_merge_detect()

    # --- local requests ------------------------------------------------------------------------------

    def queue_message(self, now: Instant, payload: bytes) -> list[Action]:
        """`handle(McastRequested(now, payload))` of an agreed message, without the event: the
        Stack's sends (service messages, and cpg's fused send path). Raises as `handle`."""
        if self._state == MembState.LEFT:
            return []
        self._on_mcast_requested(now, payload, Guarantee.AGREED)
        self._drain_loopback(now)
        out, self._out = self._out, []
        return out

    def _on_mcast_requested(self, now: Instant, payload: bytes, guarantee: Guarantee) -> None:
        self._push_packer().push(payload, guarantee)  # QueueFull / TooLarge / UsageError: nothing queued
        self._wake_token(now)

    def _on_trans_ack(self, now: Instant, ring_id: RingId | None) -> None:
        # Given where sync completed in the delivered stream: the next frame is assembled in the first
        # set. An ack for an older ring than ours (its sync completed among the old ring's messages
        # delivered at our ring change) does not end our new ring's wait, as in corosync, where the
        # new ring's waiting_trans_ack is set after that ack.
        self.unpacker = self.unpackers[0]
        if not self.waiting_trans_ack or (ring_id is not None and ring_id != self.ring.ring_id):
            return
        self.waiting_trans_ack = False
        if self.packer.has_pending():
            self._wake_token(now)

    def _wake_token(self, now: Instant) -> None:
        """Something may be sent: release a held token, or ask the representative to."""
        if self._state != MembState.OPERATIONAL or self._send_packer() is None:
            return
        if self.held_token is not None and self.timers.is_armed(TimerName.HOLD):
            self._release_held_token(now)
        elif self.seqno_unchanged > self.config.seqno_unchanged_const and not self.hold_cancel_sent:
            self.hold_cancel_sent = True
            self._multicast(self.ring.members, wire.TokenHoldCancel(self.me, self.ring.ring_id))

    def _leave(self, now: Instant) -> None:
        """Send a leave JOIN (header nodeid 0, ourselves failed) so peers reform without waiting."""
        if self._started:
            proc = tuple(sorted((self.proc | set(self.ring.members)) - {self.me}))
            failed = tuple(sorted(self.failed | {self.me}))
            leave = wire.MembJoin(NodeId(0), self.me, proc, failed, self.cur_ring_id.seq)
            self._multicast(self._everyone_and(set(proc)), leave)
        log.info("node %d: leaving the ring %s", self.me, self.ring.ring_id)
        self.timers.clear()
        self._set_state(MembState.LEFT, "leave requested")

    def _on_hold_cancel(self, now: Instant, packet: wire.TokenHoldCancel) -> None:
        if packet.ring_id != self.ring.ring_id:
            self._drop("hold-cancel-other-ring")
            return
        if self.held_token is not None:
            self._release_held_token(now)

    # --- timers --------------------------------------------------------------------------------------

    def _on_token_timeout(self, now: Instant) -> None:
        match self._state:
            case MembState.OPERATIONAL:
                log.info("node %d: token lost after %d ms", self.me, self.config.token_ms)
                self.proc = set(self.ring.members)
                self.failed = set()
                self._enter_gather(now, GatherReason.TOKEN_LOST_IN_OPERATIONAL)
            case MembState.COMMIT:
                self._enter_gather(now, GatherReason.TOKEN_LOST_IN_COMMIT)
            case MembState.RECOVERY:
                self._abandon_recovery()
                self._enter_gather(now, GatherReason.TOKEN_LOST_IN_RECOVERY)
            case _:
                pass

    def _on_token_retransmit(self, now: Instant) -> None:
        if self.last_token is None or self._state not in (MembState.OPERATIONAL, MembState.RECOVERY):
            return
        to, token = self.last_token
        self.stats.token_retransmits += 1
        self._unicast(to, token)
        self.timers.arm(TimerName.TOKEN_RETRANSMIT, after(now, self.config.token_retransmit))

    def _release_held_token(self, now: Instant) -> None:
        token = self.held_token
        self.held_token = None
        self.timers.cancel(TimerName.HOLD, TimerName.SELF_TOKEN)
        if token is None or self._state not in (MembState.OPERATIONAL, MembState.RECOVERY):
            return
        ring = self._active_ring()
        if ring is None or token.ring_id != ring.ring_id:
            return
        if token.sender == self.me and token.token_seq == self.my_token_seq:
            # A held token we already processed: just pass it on.
            self._send_token(now, token, ring)
        else:
            self._loopback.append(token)

    # --- the token -----------------------------------------------------------------------------------

    def _active_ring(self) -> RingState | None:
        return self.new_ring if self._state == MembState.RECOVERY else self.ring

    def _on_orf_token(self, now: Instant, token: wire.OrfToken) -> None:
        ring = self._active_ring()
        if ring is None or token.ring_id != ring.ring_id:
            self._drop("token-other-ring", f"ring {token.ring_id}")
            return
        if self.my_token_seq is not None and not seq_lt(self.my_token_seq, token.token_seq):
            self._drop("token-duplicate")
            return
        self.my_token_seq = token.token_seq
        self.stats.tokens_seen += 1
        self.timers.cancel(TimerName.TOKEN_RETRANSMIT)
        self.timers.arm(TimerName.TOKEN, after(now, self.config.token))
        self.last_token = None
        self.hold_cancel_sent = False
        self._process_token(now, token, ring)

    def _process_token(self, now: Instant, token: wire.OrfToken, ring: RingState) -> None:
        cfg = self.config
        recovery = self._state == MembState.RECOVERY
        sendable = None if recovery else self._send_packer()
        pending = sendable.pending_bytes if sendable is not None else 0
        backlog_now = len(self.retrans_queue) if recovery else _frames_pending(pending, cfg.max_frame_bytes)
        allowed = self._transmits_allowed(token, backlog_now)
        rtr, retransmitted = self._retransmit_requested(token, ring, allowed)
        allowed = max(0, allowed - retransmitted)
        seq = token.seq
        if seq_diff(seq, token.aru) < SORT_QUEUE_MAX // 2:
            seq, sent = self._send_new(ring, seq, allowed, recovery)
        else:
            sent = 0
        self._add_missing(ring, seq, rtr)
        aru, aru_addr = token.aru, token.aru_addr
        if seq_lt(ring.aru, aru) or aru_addr == self.me or aru_addr == 0:
            aru = ring.aru
            aru_addr = NodeId(0) if aru == seq else self.me
        transmitted = sent + retransmitted
        fcc = max(0, token.fcc + transmitted - self.my_trc)
        backlog = max(0, token.backlog + backlog_now - self.my_pbl)
        self.my_trc, self.my_pbl = transmitted, backlog_now
        retrans_flg = self._recovery_flag(token.retrans_flg) if recovery else token.retrans_flg
        new_token = wire.OrfToken(self.me, seq, token.token_seq, aru, aru_addr, ring.ring_id, backlog, fcc,
                                  retrans_flg, tuple(rtr))  # fmt: skip
        if self._failed_to_receive(now, new_token):
            return
        # The aru the token brought us (not the one we send, which may be our own) on this and the
        # previous visit: everything at or below both is held by every member (§3.3, safe delivery).
        received = token.aru
        safe_upto = self.prev_token_aru if seq_lt(self.prev_token_aru, received) else received
        self.prev_token_aru = received
        self.safe_point = safe_upto
        idle = seq == self.last_token_seq_value and not rtr and sent == 0
        self.seqno_unchanged = self.seqno_unchanged + 1 if idle else 0
        self.last_token_seq_value = seq
        self._forward_token(now, new_token, ring)
        if recovery:
            self._maybe_install(now, new_token)
        elif self._state == MembState.OPERATIONAL:
            self._deliver(ring, ring.aru, safe_upto, skip_gaps=False)
            ring.free_upto(safe_upto)

    def _transmits_allowed(self, token: wire.OrfToken, backlog_now: int) -> int:
        """corosync's fcc_calculate: max_messages, the window left, and our share of the backlog."""
        cfg = self.config
        allowed = min(cfg.max_messages, max(0, cfg.window_size - token.fcc))
        total = token.backlog + backlog_now - self.my_pbl
        if total > 0 and backlog_now > 0:
            share = (cfg.window_size * backlog_now) // total
            if 0 < share < allowed:
                allowed = share
        return allowed

    def _retransmit_requested(
        self, token: wire.OrfToken, ring: RingState, allowed: int
    ) -> tuple[list[wire.RtrItem], int]:
        """Re-multicast requested messages we hold; return the requests left and how many we sent."""
        left: list[wire.RtrItem] = []
        sent = 0
        for item in token.rtr_list:
            if item.ring_id != ring.ring_id:
                continue  # a request of an older ring: nobody on this ring can answer it
            msg = ring.queue.get(item.seq)
            if msg is not None and sent < allowed:
                self._multicast(ring.members, msg)
                sent += 1
                self.stats.retransmits += 1
            else:
                left.append(item)
        return left, sent

    def _send_new(self, ring: RingState, seq: int, allowed: int, recovery: bool) -> tuple[int, int]:
        """Send up to `allowed` new messages (old-ring messages in RECOVERY); return the new seq and count."""
        sent = 0
        while sent < allowed:
            if recovery:
                if not self.retrans_queue:
                    break
                inner = self.retrans_queue.popleft()
                payload, encapsulated, guarantee = wire.encode(inner), wire.ENCAPSULATED, inner.guarantee
            else:
                packer = self._send_packer()
                if packer is None:
                    break
                left = allowed - sent
                need = packer.head_frames()
                if not packer.has_partial() and left < need <= self.config.max_messages:
                    # A message this visit cannot finish waits for one that can (see pop_frame): a
                    # ring change between two visits would leave it half sent, and a node that joins
                    # then could never assemble it (corosync's receivers neither).
                    break
                frame = packer.pop_frame(left)
                if frame is None:
                    break
                payload, encapsulated, guarantee = frame[0], wire.NOT_ENCAPSULATED, int(frame[1])
            seq = seq_add(seq, 1)
            self.this_seqno = (self.this_seqno + 1) & 0x7FFFFFFF
            msg = wire.Mcast(self.me, self.me, seq, self.this_seqno, ring.ring_id, guarantee, payload,
                             encapsulated)  # fmt: skip
            ring.insert(msg)
            self._multicast(ring.members, msg)
            self.stats.mcasts_sent += 1
            sent += 1
        return seq, sent

    def _add_missing(self, ring: RingState, seq: int, rtr: list[wire.RtrItem]) -> None:
        """Ask for what we miss, once a gap was seen on miss_count_const visits (totemsrp's orf_token_rtr)."""
        for s in list(self.rtr_miss):
            if seq_le(s, ring.aru) or s in ring.queue:
                del self.rtr_miss[s]
        if len(rtr) >= wire.RETRANSMIT_ENTRIES_MAX:
            return
        listed = {item.seq for item in rtr}
        for s in ring.missing(seq, 4 * wire.RETRANSMIT_ENTRIES_MAX):
            count = self.rtr_miss.get(s, 0) + 1
            self.rtr_miss[s] = count
            if count >= self.config.miss_count_const and s not in listed:
                rtr.append(wire.RtrItem(ring.ring_id, s))
                if len(rtr) >= wire.RETRANSMIT_ENTRIES_MAX:
                    return

    def _failed_to_receive(self, now: Instant, token: wire.OrfToken) -> bool:
        """fail_recv_const: we keep holding aru down without progress; leave into a singleton ring."""
        if token.aru == self.prev_token_aru and token.aru_addr == self.me and token.aru != token.seq:
            self.aru_count += 1
        else:
            self.aru_count = 0
        if self.aru_count <= self.config.fail_recv_const or self._state != MembState.OPERATIONAL:
            return False
        log.warning("node %d: FAILED TO RECEIVE: aru %d stuck for %d rotations", self.me, token.aru,
                    self.aru_count)  # fmt: skip
        self.failed_to_recv = True
        self.aru_count = 0
        self._enter_gather(now, GatherReason.FAILED_TO_RECEIVE)
        return True

    def _forward_token(self, now: Instant, token: wire.OrfToken, ring: RingState) -> None:
        """Pass the token on, or hold it on an idle ring (representative only)."""
        if (self._state == MembState.OPERATIONAL and ring.ring_id.rep == self.me
                and self.seqno_unchanged > self.config.seqno_unchanged_const
                and not token.rtr_list and self._send_packer() is None):  # fmt: skip
            self.stats.holds += 1
            self.held_token = token
            self.timers.arm(TimerName.HOLD, after(now, self.config.hold))
            self.timers.arm_if_idle(TimerName.MERGE_DETECT, after(now, self.config.merge))
            return
        if self._state == MembState.OPERATIONAL and ring.ring_id.rep == self.me:
            self.timers.arm_if_idle(TimerName.MERGE_DETECT, after(now, self.config.merge))
        self._send_token(now, token, ring)

    def _send_token(self, now: Instant, token: wire.OrfToken, ring: RingState) -> None:
        members = ring.members
        nxt = members[(members.index(self.me) + 1) % len(members)]
        fwd = wire.OrfToken(self.me, token.seq, (token.token_seq + 1) & TOKEN_SEQ_MASK, token.aru,
                            token.aru_addr, token.ring_id, token.backlog, token.fcc, token.retrans_flg,
                            token.rtr_list)  # fmt: skip
        self.stats.tokens_sent += 1
        if nxt == self.me:
            # A singleton ring hands the token to itself on the next turn (bounded per event).
            self.held_token = fwd
            self.timers.arm(TimerName.SELF_TOKEN, now)
            return
        self._unicast(nxt, fwd)
        self.last_token = (nxt, fwd)
        self.timers.arm(TimerName.TOKEN_RETRANSMIT, after(now, self.config.token_retransmit))

    # --- multicast messages --------------------------------------------------------------------------

    def _on_mcast(self, now: Instant, msg: wire.Mcast) -> None:
        self.stats.mcasts_received += 1
        new = self.new_ring
        if self._state == MembState.RECOVERY and new is not None and msg.ring_id == new.ring_id:
            self._store_recovery_message(msg)
            return
        ring = self.ring
        if msg.ring_id != ring.ring_id:
            self._foreign_message(now, msg)
            return
        if not ring.insert(msg):
            self.stats.duplicates += 1
            return
        self.timers.cancel(TimerName.TOKEN_RETRANSMIT)
        if self._state == MembState.OPERATIONAL:
            self._deliver(ring, ring.aru, self.safe_point, skip_gaps=False)

    def _store_recovery_message(self, msg: wire.Mcast) -> None:
        ring = self.new_ring
        assert ring is not None
        if not ring.insert(msg):
            self.stats.duplicates += 1
            return
        self.timers.cancel(TimerName.TOKEN_RETRANSMIT)
        if msg.encapsulated != wire.ENCAPSULATED:
            return
        try:
            inner = wire.decode(msg.payload)
        except MalformedPacket as e:
            self._drop("recovery-" + e.reason, e.detail)
            return
        if not isinstance(inner, wire.Mcast):
            self._drop("recovery-not-mcast")
            return
        if inner.ring_id == self.ring.ring_id:
            self.ring.insert(inner)  # fills a gap of our old ring, or is a duplicate

    def _foreign_message(self, now: Instant, msg: wire.Mcast) -> None:
        sender = msg.system_from
        if self._state == MembState.OPERATIONAL and sender not in self.ring.members:
            self.proc.add(sender)
            self._enter_gather(now, GatherReason.FOREIGN_MESSAGE_IN_OPERATIONAL)
        elif self._state == MembState.GATHER and sender not in self.proc and sender not in self.failed:
            self.proc.add(sender)
            self._enter_gather(now, GatherReason.FOREIGN_MESSAGE_IN_GATHER)
        else:
            self._drop("mcast-other-ring", f"ring {msg.ring_id} from {sender}")

    # --- RECOVERY's end ------------------------------------------------------------------------------

    def _recovery_flag(self, retrans_flg: int) -> int:
        """Set retrans_flg while we have old-ring messages to re-send; clear it if we set it."""
        if self.retrans_queue:
            self.set_retrans_flg = True
            return 1
        if retrans_flg and self.set_retrans_flg:
            self.set_retrans_flg = False
            return 0
        return retrans_flg

    def _maybe_install(self, now: Instant, token: wire.OrfToken) -> None:
        """corosync's rule: two rotations without retransmissions, then everyone has the install seq."""
        if token.retrans_flg == 0:
            self.retrans_flg_count += 1
        else:
            self.retrans_flg_count = 0
        if self.retrans_flg_count == 2:
            self.install_seq = token.seq
        if self.retrans_flg_count >= 3 and seq_le(self.install_seq, token.aru):
            self.rotation_counter += 1
        else:
            self.rotation_counter = 0
        if self.rotation_counter >= 2:
            self.rotation_counter = 0
            self.retrans_flg_count = 0
            self._enter_operational(now)


def _frames_pending(pending_bytes: int, max_frame: int) -> int:
    return (pending_bytes + max_frame - 1) // max_frame if pending_bytes else 0

