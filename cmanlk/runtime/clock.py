"""The runtime's one clock for the cores: `now()` is the Instant every event fed to the Stack or
DlmCtl carries. It is time.monotonic_ns(), the clock asyncio's loop.time() reads too, so
`loop.call_at(deadline / 1e9, …)` fires when a core's deadline says."""

from __future__ import annotations

import time

from cmanlk.types import Instant


def now() -> Instant:
    """The monotonic time now, as the cores count it (int ns)."""
    return Instant(time.monotonic_ns())
