"""Totem membership: GATHER, COMMIT, RECOVERY and the EVS configuration changes.

Implements the membership protocol of Amir, Moser, Melliar-Smith et al., "The
Totem single-ring ordering and membership protocol" (ACM TOCS 13(4), 1995), §4,
with corosync 3's totemsrp as the reference for everything observable on the wire:

- GATHER (§4.1): every node multicasts a JOIN with its proc and failed sets every
  `join` ms, merges the sets it receives, and has *consensus* when every node of
  proc − failed sent exactly its sets. The consensus timer moves silent nodes to
  failed. The lowest node id of proc − failed creates the commit token with ring
  seq = highest seen + 4 (corosync's rule).
- COMMIT (§4.2): the commit token goes round the new ring twice. On the first
  rotation each member fills in its entry (old ring id, aru, high delivered,
  whether it has everything it knows of) and persists the new ring seq; on the
  second each enters RECOVERY knowing every entry.
- RECOVERY (§4.3): a regular token circulates on the new ring; every node re-sends
  the messages of its old ring above the lowest aru of the survivors of that ring
  as encapsulated MCASTs, so that all of them end with the same old-ring messages.
  When the token has shown no retransmissions for two rotations and everyone has
  the recovery messages (corosync's install seq and rotation counter), each node
  delivers: the old-ring messages some survivor already delivered, then the
  *transitional* configuration (old ∩ new), then the rest of the old ring's
  messages, then the *regular* configuration, and goes OPERATIONAL (§4.4, EVS).
- Merge detection: the representative of an idle ring announces it to the nodes
  outside it every `merge` ms; a node that hears of another ring, or gets a JOIN or
  message from a node outside its ring, enters GATHER, which heals partitions.
- A leave JOIN (header nodeid 0, the leaver in its failed set) lets peers reform
  at once instead of waiting for the token timeout.

Deviations: corosync keeps the token-loss timer running in GATHER for the
consensus timeout; we use a separate CONSENSUS timer with the same length and
effect. After a failed RECOVERY we keep the old ring's messages (corosync restores
a saved copy); the effect is the same.
"""

from __future__ import annotations

import logging
import random
from collections import deque

from cmanlk.totem import wire
from cmanlk.totem.actions import ConfigKind, DeliverConfiguration, MembState, PersistRingSeq
from cmanlk.totem.base import GatherReason, TotemBase
from cmanlk.totem.config import TotemConfig
from cmanlk.totem.ring import RingState
from cmanlk.totem.timers import TimerName
from cmanlk.types import Instant, NodeId, RingId, after, seq_le, seq_max

log = logging.getLogger("cmanlk.totem")

RING_SEQ_STEP = 4  # corosync adds 4 to the highest ring seq seen for each new ring.
MAY_LACK_MESSAGES = 0
"""Our commit entry's received_flg, always: "I may lack old-ring messages". corosync's members
re-send their old ring's messages in RECOVERY only when some member's flag is 0, and a member's
flag (its aru equals the highest seq it saw) cannot know of a message that an originator killed
mid-multicast reached only some members with. Saying 1 then, a corosync survivor holding such a
message delivers it while we never get it (kill -9 interop test: one message, libcpg's client
before the change, ours never). We re-send our own old-ring messages in every RECOVERY anyway."""


class Membership(TotemBase):
    """The membership half of the Totem core; `Totem` adds ordering."""

    def __init__(self, config: TotemConfig, me: NodeId, rng: random.Random, ring_seq: int = 0) -> None:
        super().__init__(config, me, rng, ring_seq)
        self.proc: set[NodeId] = {me}
        self.failed: set[NodeId] = set()
        self.consensus: set[NodeId] = set()
        self.commit_token: wire.CommitToken | None = None
        self.new_ring: RingState | None = None
        self.retrans_queue: deque[wire.Mcast] = deque()
        self.trans_memb: tuple[NodeId, ...] = ()
        self.high_ring_delivered = 0
        self.failed_to_recv = False
        self.retrans_flg_count = 0
        self.rotation_counter = 0
        self.install_seq = 0
        self.set_retrans_flg = False

    # --- GATHER --------------------------------------------------------------------------------------

    def _enter_gather(self, now: Instant, reason: GatherReason) -> None:
        """Enter (or restart) GATHER: announce our sets and (re)start the join and consensus timers."""
        self.proc.add(self.me)
        self.failed.discard(self.me)
        if self.failed_to_recv:
            self.failed = self.proc - {self.me}
        self.stats.gathers += 1
        log.info("node %d: entering GATHER: %s (ring %s, my_aru %d, proc %s, failed %s)",
                 self.me, reason.value, self.ring.ring_id, self.ring.aru,
                 sorted(self.proc), sorted(self.failed))  # fmt: skip
        self._set_state(MembState.GATHER, reason.value)
        self.timers.cancel(TimerName.TOKEN, TimerName.TOKEN_RETRANSMIT, TimerName.HOLD,
                           TimerName.MERGE_DETECT, TimerName.SELF_TOKEN)  # fmt: skip
        self.held_token = None
        self.last_token = None
        self.consensus = {self.me}
        self._send_join()
        self.timers.arm(TimerName.JOIN, after(now, self.config.join))
        self.timers.arm(TimerName.CONSENSUS, after(now, self.config.consensus))
        self._maybe_create_commit_token(now)

    def _send_join(self) -> None:
        join = wire.MembJoin(self.me, self.me, tuple(sorted(self.proc)), tuple(sorted(self.failed)),
                             self.cur_ring_id.seq)  # fmt: skip
        self._multicast(self._everyone_and(self.proc), join)

    def _everyone_and(self, extra: set[NodeId]) -> tuple[NodeId, ...]:
        return tuple(sorted((set(self._everyone()) | extra) - {self.me}))

    def _on_join_timeout(self, now: Instant) -> None:
        if self._state == MembState.GATHER:
            self._send_join()
            self.timers.arm(TimerName.JOIN, after(now, self.config.join))

    def _on_consensus_timeout(self, now: Instant) -> None:
        if self._state != MembState.GATHER:
            return
        if self._has_consensus():
            # We agreed, but the commit token never came (its creator died): agree afresh.
            self.consensus = {self.me}
            self.timers.arm(TimerName.CONSENSUS, after(now, self.config.consensus))
            return
        silent = (self.proc - self.failed) - self.consensus
        log.info("node %d: consensus timeout: %s failed to agree", self.me, sorted(silent))
        self.failed |= silent
        self._enter_gather(now, GatherReason.CONSENSUS_TIMEOUT)

    def _has_consensus(self) -> bool:
        return (self.proc - self.failed) <= self.consensus

    def _on_memb_join(self, now: Instant, join: wire.MembJoin) -> None:
        sender = join.system_from
        if sender == self.me or sender == 0:
            self._drop("join-bad-sender", f"system_from {sender}")
            return
        self.ring_seq_max = seq_max_u64(self.ring_seq_max, join.ring_seq)
        match self._state:
            case MembState.OPERATIONAL:
                if sender in self.ring.members and join.ring_seq < self.cur_ring_id.seq:
                    self._drop("join-stale", f"from {sender} ring seq {join.ring_seq}")
                    return
                if sender not in self.ring.members and self.me in join.failed_list:
                    # A foreign node's gather that excluded us: it forms a ring without us, and merge
                    # detection joins the two rings afresh. Taking it up would exclude it in turn, and
                    # two partitions could keep excluding each other with every stale JOIN.
                    self._drop("join-excludes-us", f"from {sender}")
                    return
                if not self._join_process(now, join):
                    self._enter_gather(now, GatherReason.JOIN_DURING_OPERATIONAL)
            case MembState.GATHER:
                self._join_process(now, join)
            case MembState.COMMIT | MembState.RECOVERY:
                ct = self.commit_token
                if ct is None or sender not in ct.addr or join.ring_seq < self.cur_ring_id.seq:
                    self._drop("join-stale", f"from {sender} in {self._state.value}")
                    return
                was_recovery = self._state == MembState.RECOVERY
                if not self._join_process(now, join):
                    if was_recovery:
                        self._abandon_recovery()
                    reason = GatherReason.JOIN_DURING_COMMIT
                    if was_recovery:
                        reason = GatherReason.JOIN_DURING_RECOVERY
                    self._enter_gather(now, reason)
            case _:
                self._drop("join-wrong-state", self._state.value)

    def _join_process(self, now: Instant, join: wire.MembJoin) -> bool:
        """Merge a JOIN into our sets (§4.1); returns True if that entered GATHER."""
        proc, failed = set(join.proc_list), set(join.failed_list)
        if proc == self.proc and failed == self.failed:
            self.consensus.add(join.system_from)
            if self._state == MembState.GATHER:
                self._maybe_create_commit_token(now)
            return False
        if proc <= self.proc and failed <= self.failed:
            return False
        if join.system_from in self.failed:
            return False
        if len(self.proc | proc) > wire.PROCESSOR_COUNT_MAX:
            self._drop("join-too-many-nodes", f"from {join.system_from}")
            return False
        if self._state == MembState.RECOVERY:
            self._abandon_recovery()
        self.proc |= proc
        if self.me in failed:
            self.failed.add(join.system_from)  # it thinks we failed: so, for us, has it.
        else:
            self.failed |= failed
        self.failed.discard(self.me)
        leaving = join.system_from in failed  # a leave JOIN names its sender as failed
        self._enter_gather(now, GatherReason.LEAVE_ANNOUNCED if leaving else GatherReason.JOIN_CHANGED_SETS)
        return True

    def _on_merge_detect(self, now: Instant, md: wire.MergeDetect) -> None:
        sender = md.system_from
        if md.ring_id == self.ring.ring_id or sender == self.me:
            return
        if self._state == MembState.OPERATIONAL:
            if sender in self.ring.members:
                return
            self.proc.add(sender)
            self._enter_gather(now, GatherReason.MERGE_DURING_OPERATIONAL)
        elif self._state == MembState.GATHER and sender not in self.proc and sender not in self.failed:
            self.proc.add(sender)
            self._enter_gather(now, GatherReason.MERGE_DURING_GATHER)

    def _send_merge_detect(self) -> None:
        outside = tuple(n for n in self.config.nodes if n not in self.ring.members and n != self.me)
        if outside:
            self.stats.merge_detects_sent += 1
            self._multicast(outside, wire.MergeDetect(self.me, self.me, self.ring.ring_id))

    # --- COMMIT --------------------------------------------------------------------------------------

    def _maybe_create_commit_token(self, now: Instant) -> None:
        """If we have consensus and are the lowest live node, create the commit token (§4.2)."""
        members = sorted(self.proc - self.failed)
        if not self._has_consensus() or members[0] != self.me:
            return
        seq = max(self.ring_seq_max, self.cur_ring_id.seq, self.ring.ring_id.seq) + RING_SEQ_STEP
        ring_id = RingId(seq, self.me)
        blank = wire.CommitMemb(RingId(0, NodeId(0)), 0, 0, 0)
        token = wire.CommitToken(self.me, 0, ring_id, 0, 0, tuple(members), tuple(blank for _ in members))
        self._enter_commit(now, token)

    def _enter_commit(self, now: Instant, token: wire.CommitToken) -> None:
        """Fill in our entry, persist the new ring seq, and pass the commit token on."""
        self.ring_seq_max = seq_max_u64(self.ring_seq_max, token.ring_id.seq)
        self.cur_ring_id = token.ring_id
        self._out.append(PersistRingSeq(token.ring_id.seq))
        idx = token.addr.index(self.me)
        old = self.ring
        entry = wire.CommitMemb(old.ring_id, old.aru, old.high_delivered, MAY_LACK_MESSAGES)
        memb_list = (*token.memb_list[:idx], entry, *token.memb_list[idx + 1 :])
        token = wire.CommitToken(self.me, token.token_seq, token.ring_id, token.retrans_flg, idx + 1,
                                 token.addr, memb_list)  # fmt: skip
        self.commit_token = token
        self.timers.cancel(TimerName.JOIN, TimerName.CONSENSUS)
        self.timers.arm(TimerName.TOKEN, after(now, self.config.token))
        log.info("node %d: entering COMMIT for ring %s members %s", self.me, token.ring_id, list(token.addr))
        self._set_state(MembState.COMMIT, f"commit token for ring {token.ring_id}")
        self._forward_commit(token)

    def _forward_commit(self, token: wire.CommitToken) -> None:
        addr = token.addr
        nxt = addr[(addr.index(self.me) + 1) % len(addr)]
        fwd = wire.CommitToken(self.me, (token.token_seq + 1) & 0xFFFFFFFF, token.ring_id, token.retrans_flg,
                               token.memb_index, addr, token.memb_list)  # fmt: skip
        self._unicast(nxt, fwd)

    def _on_commit_token(self, now: Instant, token: wire.CommitToken) -> None:
        n = len(token.addr)
        well_formed = len(token.memb_list) == n and list(token.addr) == sorted(set(token.addr))
        if self.me not in token.addr or not well_formed:
            self._drop("commit-not-for-us", f"ring {token.ring_id}")
            return
        match self._state:
            case MembState.GATHER:
                if (list(token.addr) == sorted(self.proc - self.failed)
                        and token.ring_id.seq > self.cur_ring_id.seq):  # fmt: skip
                    self._enter_commit(now, token)
                else:
                    self._drop("commit-mismatch", f"ring {token.ring_id} addr {list(token.addr)}")
            case MembState.COMMIT:
                ct = self.commit_token
                if ct is not None and token.ring_id == ct.ring_id and token.memb_index == n:
                    self._enter_recovery(now, token)
                else:
                    self._drop("commit-unexpected", f"ring {token.ring_id} index {token.memb_index}")
            case MembState.RECOVERY:
                new = self.new_ring
                if new is not None and token.ring_id == new.ring_id and token.addr[0] == self.me:
                    self._send_initial_token(now)
                else:
                    self._drop("commit-unexpected", f"ring {token.ring_id} in RECOVERY")
            case _:
                self._drop("commit-wrong-state", self._state.value)

    # --- RECOVERY ------------------------------------------------------------------------------------

    def _enter_recovery(self, now: Instant, token: wire.CommitToken) -> None:
        """Second commit rotation: learn every entry, queue old-ring messages to re-send (§4.3)."""
        self.commit_token = token
        old = self.ring
        entries = dict(zip(token.addr, token.memb_list, strict=True))
        same_old = [n for n in token.addr if entries[n].ring_id == old.ring_id]
        self.trans_memb = tuple(same_old)
        low_ring_aru = _seq_min_all([entries[n].aru for n in same_old])
        self.high_ring_delivered = _seq_max_all([entries[n].high_delivered for n in same_old])
        self.retrans_queue.clear()
        s = low_ring_aru
        while not seq_le(old.high_seq_received, s):
            s = (s + 1) & 0xFFFFFFFF
            msg = old.queue.get(s)
            if msg is not None:
                self.retrans_queue.append(msg)
        self.new_ring = RingState(token.ring_id, token.addr)
        self._reset_token_state()
        self.retrans_flg_count = 0
        self.rotation_counter = 0
        self.install_seq = 0
        self.set_retrans_flg = False
        self.timers.arm(TimerName.TOKEN, after(now, self.config.token))
        log.info("node %d: entering RECOVERY for ring %s: old ring %s survivors %s, re-sending %d messages "
                 "(low aru %d, my high %d)", self.me, token.ring_id, old.ring_id, same_old,
                 len(self.retrans_queue), low_ring_aru, old.high_seq_received)  # fmt: skip
        self._set_state(MembState.RECOVERY, f"ring {token.ring_id} committed")
        # Everyone passes it on once more; when it is back at the representative, the token starts.
        self._forward_commit(token)

    def _send_initial_token(self, now: Instant) -> None:
        """The representative starts the new ring's first regular token (seq 0, retrans_flg set)."""
        ring = self.new_ring
        assert ring is not None
        token = wire.OrfToken(self.me, 0, 0, 0, self.me, ring.ring_id, 0, 0, 1, ())
        self.set_retrans_flg = True  # we raised retrans_flg, so we are the one to clear it
        self._forward_token(now, token, ring)

    def _abandon_recovery(self) -> None:
        """A failed RECOVERY: drop the new ring, keep the old ring's messages for the next try."""
        self.new_ring = None
        self.retrans_queue.clear()
        self._reset_token_state()

    def _enter_operational(self, now: Instant) -> None:
        """Deliver the EVS configuration changes and the old ring's messages, then go OPERATIONAL (§4.4)."""
        old, new = self.ring, self.new_ring
        assert new is not None
        trans = self.trans_memb
        self.gap_senders = tuple(n for n in old.members if n not in trans)
        # As corosync's memb_state_operational_enter: the old ring's messages up to the first gap go to
        # the old configuration (a safe one only up to what some survivor delivered already: safe
        # delivery needs every member to hold it), then the transitional configuration, then the
        # rest after the gaps, where a departed sender's agreed messages are passed over (corosync's
        # my_deliver_memb filter: a corosync survivor never delivers them; its safe ones we deliver,
        # one that a survivor delivered as safe before the change must reach every survivor).
        self._deliver(old, old.high_seq_received, self.high_ring_delivered, skip_gaps=False)
        left = tuple(n for n in old.members if n not in trans)
        # A member that left takes its half-assembled messages with it (both assembly sets).
        for n in left:
            self._forget_assembly(n)
        if self.installed_any:
            self._out.append(DeliverConfiguration(ConfigKind.TRANSITIONAL, old.ring_id, trans, left, ()))
            # The rest of the old ring's messages belong to the transitional configuration.
            self._deliver(old, old.high_seq_received, None, skip_gaps=True, only_from=trans)
        for n in left:  # and what the rest of the old ring's messages left half assembled
            self._forget_assembly(n)
        prev = set(old.members) if self.installed_any else set()
        joined = tuple(n for n in new.members if n not in prev)
        left_all = tuple(sorted(n for n in prev if n not in new.members))
        # Half-assembled messages of the members that came along stay: a sender continues a message
        # split by the ring change where it stopped (corosync's totempg does), ours too — our half-sent
        # message waits in the first queue until the new ring's sync is over. From here until then,
        # what is queued goes to the second queue and what arrives is assembled in the second set.
        if self.holds_for_sync:
            self._set_waiting_trans_ack(True)
        self._out.append(DeliverConfiguration(ConfigKind.REGULAR, new.ring_id, new.members, left_all, joined))
        self.installed_any = True
        self.ring = new
        self.new_ring = None
        self.retrans_queue.clear()
        self.proc = set(new.members)
        self.failed = set()
        self.failed_to_recv = False
        self.stats.rings_formed += 1
        log.info("node %d: entering OPERATIONAL: ring %s members %s (transitional %s)",
                 self.me, new.ring_id, list(new.members), list(trans))  # fmt: skip
        self._set_state(MembState.OPERATIONAL, f"ring {new.ring_id} installed")
        self._deliver(new, new.aru, self.safe_point, skip_gaps=False)

    # --- hooks the ordering half provides -----------------------------------------------------------

    def _forward_token(self, now: Instant, token: wire.OrfToken, ring: RingState) -> None:
        raise NotImplementedError


def seq_max_u64(a: int, b: int) -> int:
    """Ring seqs are u64 and never wrap in practice: plain max."""
    return a if a >= b else b


def _seq_min_all(values: list[int]) -> int:
    out = values[0]
    for v in values[1:]:
        if seq_le(v, out):
            out = v
    return out


def _seq_max_all(values: list[int]) -> int:
    out = values[0]
    for v in values[1:]:
        out = seq_max(out, v)
    return out
