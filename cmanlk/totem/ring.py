"""Per-ring ordering state: the sort queue of one ring, its aru and delivery point.

Totem SRP (Amir et al., TOCS 1995, §3) numbers every message of a ring with the
token's `seq`. A node keeps what it received in a sort queue keyed by seq;
`aru` ("all received up to") is the highest seq below which it has everything,
`high_seq_received` the highest it has seen, `high_delivered` the last one it
handed to the layers above. Agreed delivery is local contiguity (seq ≤ aru, in
order); a safe message additionally waits until the token's aru has passed it on
two successive visits, so every member has it (§3.3).

Messages stay in the queue after delivery until every member has them
(`free_upto`), since any holder may be asked to retransmit one, and the
membership protocol re-sends the tail of an old ring in RECOVERY.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmanlk.totem import wire
from cmanlk.types import NodeId, RingId, seq_add, seq_diff, seq_le, seq_lt

SORT_QUEUE_MAX = 16384  # messages ahead of aru a node keeps; corosync's sort queue has a fixed size too.


@dataclass(slots=True)
class RingState:
    """What a node holds of one ring. Seqs are u32 and wrap."""

    ring_id: RingId
    members: tuple[NodeId, ...]
    queue: dict[int, wire.Mcast] = field(default_factory=dict)
    aru: int = 0
    high_seq_received: int = 0
    high_delivered: int = 0
    freed_upto: int = 0

    def has(self, seq: int) -> bool:
        """Did we receive `seq` (and still hold it, or hold everything up to it)?"""
        return seq in self.queue or seq_le(seq, self.aru)

    def insert(self, msg: wire.Mcast) -> bool:
        """Store a message of this ring; returns False for a duplicate or one beyond the queue bound."""
        seq = msg.seq
        if seq_le(seq, self.aru) or seq in self.queue:
            return False
        if seq_diff(seq, self.aru) > SORT_QUEUE_MAX:
            return False
        self.queue[seq] = msg
        if seq_lt(self.high_seq_received, seq):
            self.high_seq_received = seq
        nxt = seq_add(self.aru, 1)
        while nxt in self.queue:
            self.aru = nxt
            nxt = seq_add(nxt, 1)
        return True

    def missing(self, upto: int, limit: int) -> list[int]:
        """Return up to `limit` seqs in (aru, upto] we do not have, lowest first."""
        out: list[int] = []
        span = seq_diff(upto, self.aru)
        s = self.aru
        for _ in range(max(0, min(span, SORT_QUEUE_MAX))):
            s = seq_add(s, 1)
            if s not in self.queue:
                out.append(s)
                if len(out) >= limit:
                    break
        return out

    def free_upto(self, seq: int) -> None:
        """Forget messages with seq ≤ `seq` that were delivered (every member has them)."""
        limit = seq if seq_lt(seq, self.high_delivered) else self.high_delivered
        s = self.freed_upto
        while seq_lt(s, limit):
            s = seq_add(s, 1)
            self.queue.pop(s, None)
        self.freed_upto = s
