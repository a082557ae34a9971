"""Named deadlines of the Totem core.

The core keeps one deadline per `TimerName` and exposes only the earliest, so the
runtime arms a single loop timer and feeds `DeadlineReached(now)`; the simulator
does the same with its virtual clock. Expired timers run in a fixed order
(earliest first, ties by name order) so runs are deterministic.
"""

from __future__ import annotations

import enum

from cmanlk.types import Instant


class TimerName(enum.Enum):
    """Every timer of the protocol, named as in the paper and totemsrp."""

    SELF_TOKEN = 0  # a token addressed to ourselves (singleton ring), delivered on the next turn
    TOKEN = 1  # token loss (OPERATIONAL, RECOVERY) / commit token loss (COMMIT)
    TOKEN_RETRANSMIT = 2  # re-send the last token we forwarded
    HOLD = 3  # idle ring: the representative forwards the token it holds
    JOIN = 4  # GATHER: re-send our JOIN
    CONSENSUS = 5  # GATHER: nodes that did not agree become failed
    MERGE_DETECT = 6  # representative: announce our ring to nodes outside it

    # A member is equal only to itself, so identity's hash is the right one, and object's is in C:
    # Enum's hashes the name in Python, on every arm and cancel (the simulator's busiest dict).
    __hash__ = object.__hash__


class Timers:
    """A small table of named deadlines; the earliest is `next_deadline`."""

    __slots__ = ("_deadlines",)

    def __init__(self) -> None:
        self._deadlines: dict[TimerName, Instant] = {}

    def arm(self, name: TimerName, at: Instant) -> None:
        """Set (or move) timer `name` to fire at `at`."""
        self._deadlines[name] = at

    def arm_if_idle(self, name: TimerName, at: Instant) -> None:
        """Set timer `name` unless it is already running."""
        self._deadlines.setdefault(name, at)

    def cancel(self, *names: TimerName) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def is_armed(self, name: TimerName) -> bool:
        return name in self._deadlines

    def clear(self) -> None:
        self._deadlines.clear()

    @property
    def next_deadline(self) -> Instant | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def pop_expired(self, now: Instant) -> list[TimerName]:
        """Remove and return the timers due at `now`, earliest first (ties in name order)."""
        due = sorted(
            (at, name.value, name) for name, at in self._deadlines.items() if at <= now
        )
        for _, _, name in due:
            del self._deadlines[name]
        return [name for _, _, name in due]
