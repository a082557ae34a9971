"""bench/driver.py's backend for cmanlkd: cmanlk.client's blocking Client, shaped like libcpg.

`mcast` is one request/reply `cpg_send` without retries (a `try_again` refusal is flow control,
as libcpg's CS_ERR_TRY_AGAIN); the soak mode (bench/chaos.py) uses it, since its history records
a message as sent only once the daemon accepted it. `mcast_pipelined` is the pipelined
`cpg_mcast(block=False)` the measurement rounds use: False when the window of unacknowledged
sends is full (flow control again). With CMANLK_BENCH_SEND=call in the environment the rounds
use `mcast` too, for comparing the two paths. Events the client kept while it waited are handed
on by `dispatch`, which also reads what the socket holds, so the driver never waits on buffered
events.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from bench.cpg_ctypes import Confchg, Deliver, TotemConfchg
from cmanlk.client import Client, ClientError, Event
from cmanlk.client import proto as ipcproto
from cmanlk.errors import ErrorCode

FRAME_WAIT_S = 0.05  # the socket is readable: the rest of a frame follows at once
MAX_EVENTS_PER_DISPATCH = 1_000_000  # a bound, far above what a dispatch meets
PIPELINED = os.environ.get("CMANLK_BENCH_SEND", "pipelined") != "call"


class CmanlkBackend:
    def __init__(
        self, on_deliver: Deliver, on_confchg: Confchg, on_totem: TotemConfchg, socket_path: str | None
    ) -> None:
        self._on_deliver = on_deliver
        self._on_confchg = on_confchg
        self._on_totem = on_totem
        self._path = socket_path or ipcproto.DEFAULT_SOCKET_PATH
        self._client: Client | None = None
        self._group = ""
        self.fd = -1
        self.nodeid = 0
        self.last_call_ns = 0

    def connect(self, group: str) -> None:
        """Connect, join `group` asking for the initial totem configuration. Raises ClientError."""
        client = Client.connect(self._path)
        try:
            self.nodeid = int(client.status().get("node_id", 0))
            client.cpg_join(group, initial_totem_conf=True)
        except BaseException:
            client.close()
            raise
        self._client = client
        self._group = group
        self.fd = client.fileno()

    def mcast(self, data: bytes) -> bool:
        """Send `data` in agreed order; False on try_again (flow control). Raises ClientError."""
        client = self._need()
        t0 = time.monotonic_ns()
        try:
            client.cpg_send(self._group, data, retry_timeout_s=0)
            self.last_call_ns = time.monotonic_ns() - t0
        except ClientError as exc:
            if exc.error is not ErrorCode.TRY_AGAIN:
                raise
            self.dispatch()
            return False
        self.dispatch()
        return True

    def mcast_pipelined(self, data: bytes) -> bool:
        """Pipelined send of `data`; False when the send window is full. Raises ClientError
        (SendError for an earlier refused send)."""
        if not PIPELINED:
            return self.mcast(data)
        client = self._need()
        t0 = time.monotonic_ns()
        ok = client.cpg_mcast(self._group, data, block=False)
        self.last_call_ns = time.monotonic_ns() - t0
        return ok

    def dispatch(self) -> None:
        """Hand every event the client holds or the socket has to the callbacks; never waits idle.

        `next_event(0)` returns what the library already holds without touching the socket; the
        socket is read only when select says it is readable (a tiny positive timeout would not do:
        Python rounds socket timeouts up to whole milliseconds).
        """
        client = self._need()
        for _ in range(MAX_EVENTS_PER_DISPATCH):
            event = client.next_event(0)
            if event is None:
                readable, _, _ = select.select([self.fd], [], [], 0)
                if not readable:
                    return
                event = client.next_event(FRAME_WAIT_S)
                if event is None:
                    continue
            self._event(event)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.fd = -1

    def _need(self) -> Client:
        if self._client is None:
            raise ConnectionError("not connected")
        return self._client

    def _event(self, event: Event) -> None:
        data: dict[str, Any] = event.data
        if event.name == ipcproto.EV_CPG_DELIVER:
            self._on_deliver(int(data.get("nodeid", 0)), int(data.get("pid", 0)), event.payload)
        elif event.name == ipcproto.EV_CPG_CONFCHG:
            members = [(int(a["nodeid"]), int(a["pid"])) for a in data.get("members", [])]
            left = [(int(a["nodeid"]), int(a["pid"]), int(a["reason"])) for a in data.get("left", [])]
            joined = [(int(a["nodeid"]), int(a["pid"]), int(a["reason"])) for a in data.get("joined", [])]
            self._on_confchg(members, left, joined)
        elif event.name == ipcproto.EV_CPG_TOTEM_CONFCHG:
            ring = (int(data.get("ring_rep", 0)), int(data.get("ring_seq", 0)))
            self._on_totem(ring, [int(m) for m in data.get("members", [])])
