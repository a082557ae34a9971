"""The simulator's virtual clock and event queue.

Time is an int count of nanoseconds (`Instant`), as everywhere in cmanlk. The
queue is a binary heap of `(time, n, kind, node, data)` tuples: `n` is a
strictly increasing insertion counter, so two events due at the same instant
run in the order they were scheduled and the tuple comparison never reaches the
payload. That tie-break is what makes a seeded run replay exactly.
"""

from __future__ import annotations

import heapq
from typing import Any

from cmanlk.types import Instant, NodeId

PACKET = 0  # data = (src, bytes)
TIMER = 1  # data = timer generation of the node
CLIENT = 2  # data = traffic generator state
PROGRAM = 3  # data = a callable run at that instant (faults, scenario steps)

Entry = tuple[int, int, int, NodeId, Any]


class EventQueue:
    """A virtual clock with a time-ordered, deterministically tie-broken queue of pending events."""

    __slots__ = ("_heap", "_n", "now")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._n = 0
        self.now = Instant(0)

    def push(self, t: int, kind: int, node: NodeId, data: Any) -> None:
        """Schedule an event at `t` (never before now: a late event runs at once, in order)."""
        self._n += 1
        heapq.heappush(self._heap, (t if t > self.now else self.now, self._n, kind, node, data))

    def pop(self) -> Entry | None:
        """Remove the next event, advance the clock to its time and return it (None: queue empty)."""
        if not self._heap:
            return None
        entry = heapq.heappop(self._heap)
        self.now = Instant(entry[0])
        return entry

    def pop_due(self, t: int) -> Entry | None:
        """Remove the next event if it is due at or before `t`, advance the clock to it and return
        it (None: nothing is due by then; the clock does not move)."""
        heap = self._heap
        if not heap or heap[0][0] > t:
            return None
        entry = heapq.heappop(heap)
        self.now = Instant(entry[0])
        return entry

    def next_time(self) -> int | None:
        """Return the time of the next event without removing it."""
        return self._heap[0][0] if self._heap else None

    def advance_to(self, t: int) -> None:
        """Move the clock to `t` when nothing is due before it (idle time passes)."""
        if t > self.now:
            self.now = Instant(t)

    def __len__(self) -> int:
        return len(self._heap)
