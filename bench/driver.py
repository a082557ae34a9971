"""The benchmark's group client: one per node, run inside the node's namespace.

    python -m bench.driver --backend corosync|cmanlk [--group NAME] [--socket PATH] [--cbin PATH]

It speaks JSON lines: one command on stdin, one answer on stdout (see `Driver.handle`). The same
driver drives corosync (Debian's libcpg through ctypes, bench/cpg_ctypes.py) and cmanlk (its own
client library), so both systems pay the same Python client costs.

Every benchmark message starts with a 28-byte header (`HEADER`): magic, round, sender node id,
kind (data / last), the sender's sequence number and CLOCK_MONOTONIC at send time. All namespaces
share the host's monotonic clock, so a delivery time minus the send time is a latency, on any
node. Clock times in answers are monotonic nanoseconds; the orchestrator uses the same clock.

With `--cbin PATH` (bench/cpgbench.c, built by bench/cbuild.py) the measurement rounds are run by
that C libcpg client, a child process joined to the bench group, and this driver's own connection
joins `<group>-ctl` instead: it still sees the ring's configurations (for `wait_members` and the
reform measurements) but no bench traffic, so the daemon delivers each message once per node.
Every round answer carries the client's CPU seconds and wall time over the round
(`client_cpu_s`, `client_wall_s`), so the reader can see whether the client was the bottleneck.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

HEADER = struct.Struct("<4sIHHQQ")  # magic, round, sender, kind, seq, t_send_ns
MAGIC = b"CMKB"
KIND_DATA = 0
KIND_LAST = 1
MAX_EVENTS = 10_000  # configuration changes kept for `events`; a soak drains them regularly
MAX_LATENCY_SAMPLES = 200_000
MAX_DELIVERIES_KEPT = 200_000  # (time, sender, seq) kept per round when asked (`keep`)
MAX_HISTORY = 2_000_000  # soak records between two `history` drains (the chaos runner drains often)
SOAK_PREFIX = b"CMKS"
SOAK_RECONNECT_S = 0.2  # how often a soak client tries to reconnect to a restarted daemon
SEND_BATCH = 16  # sends between two looks at the socket when sending flat out
POLL_S = 0.001  # wait on the daemon's fd when flow control says try again


class Backend(Protocol):
    fd: int
    nodeid: int
    last_call_ns: int  # duration of the last mcast's library call alone (the IPC round trip)

    def connect(self, group: str) -> None: ...
    def mcast(self, data: bytes) -> bool: ...
    def dispatch(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class Round:
    """Deliveries of one measurement round at this node."""

    number: int
    senders: set[int]
    keep: bool
    received: int = 0
    first_ns: int = 0
    last_ns: int = 0
    lasts: set[int] = field(default_factory=set)
    latencies_ns: list[int] = field(default_factory=list)
    max_gap_ns: int = 0
    max_gap_at_ns: int = 0
    deliveries: list[tuple[int, int, int]] = field(default_factory=list)
    next_seq: dict[int, int] = field(default_factory=dict)
    out_of_order: int = 0
    calls_ns: list[int] = field(default_factory=list)


C_READY_TIMEOUT_S = 40.0  # the C client's join (it retries CS_ERR_TRY_AGAIN for 30 s)


def cpu_s() -> float:
    """This process's user + system CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CClient:
    """bench/cpgbench.c as a child process: one JSON line per command."""

    def __init__(self, binary: str, group: str) -> None:
        self.proc = subprocess.Popen(
            [binary, group], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self._buf = b""

    @property
    def fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def poll_answer(self) -> dict[str, Any] | None:
        """Read what the child wrote; return its answer once a whole line is there."""
        if b"\n" not in self._buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise ConnectionError(f"C client exited ({self.proc.wait()})")
            self._buf += chunk
        if b"\n" not in self._buf:
            return None
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Driver:
    def __init__(
        self, backend_name: str, group: str, socket_path: str | None, cbin: str | None = None
    ) -> None:
        self.backend_name = backend_name
        self.cbin = cbin
        self.cclient: CClient | None = None
        self.group = group
        self.socket_path = socket_path
        self.backend: Backend | None = None
        self.events: list[dict[str, Any]] = []
        self.round: Round | None = None
        self.me = 0
        self.error = ""
        # Soak mode (bench/chaos.py): paced sends between commands, history records, reconnects.
        self.soak: dict[str, Any] | None = None
        self.history: list[list[Any]] = []
        self.incarnation = -1
        self.soak_seq = 0
        self.next_send_ns = 0
        self.next_connect_ns = 0
        self.ring: tuple[int, int] = (0, 0)

    # -- backend callbacks -----------------------------------------------------------------------
    def on_deliver(self, nodeid: int, pid: int, msg: bytes) -> None:
        now = time.monotonic_ns()
        if self.soak is not None and msg.startswith(SOAK_PREFIX):
            self._record(["deliver", now, self.ring[0], self.ring[1], nodeid, msg.hex()])
            return
        rnd = self.round
        if rnd is None or len(msg) < HEADER.size:
            return
        magic, number, sender, kind, seq, t_send = HEADER.unpack_from(msg)
        if magic != MAGIC or number != rnd.number:
            return
        if kind == KIND_LAST:
            rnd.lasts.add(sender)
            return
        if rnd.received == 0:
            rnd.first_ns = now
        elif now - rnd.last_ns > rnd.max_gap_ns:
            rnd.max_gap_ns = now - rnd.last_ns
            rnd.max_gap_at_ns = rnd.last_ns
        rnd.received += 1
        rnd.last_ns = now
        if rnd.next_seq.get(sender, seq) != seq:
            rnd.out_of_order += 1
        rnd.next_seq[sender] = seq + 1
        if sender == self.me and len(rnd.latencies_ns) < MAX_LATENCY_SAMPLES:
            rnd.latencies_ns.append(now - t_send)
        if rnd.keep and len(rnd.deliveries) < MAX_DELIVERIES_KEPT:
            rnd.deliveries.append((now, sender, seq))

    def on_confchg(
        self,
        members: list[tuple[int, int]],
        left: list[tuple[int, int, int]],
        joined: list[tuple[int, int, int]],
    ) -> None:
        self._event(
            {
                "kind": "group",
                "members": sorted({n for n, _ in members}),
                "left": [list(x) for x in left],
                "joined": [list(x) for x in joined],
            }
        )

    def on_totem(self, ring: tuple[int, int], members: list[int]) -> None:
        self.ring = ring
        self._event({"kind": "totem", "ring": list(ring), "members": sorted(members)})
        if self.soak is not None:
            self._record(["config", time.monotonic_ns(), ring[0], ring[1], sorted(members)])

    def _record(self, rec: list[Any]) -> None:
        if len(self.history) < MAX_HISTORY:
            self.history.append(rec)
        elif self.soak is not None:
            self.soak["overflow"] = True

    def _event(self, ev: dict[str, Any]) -> None:
        ev["t"] = time.monotonic_ns()
        if len(self.events) < MAX_EVENTS:
            self.events.append(ev)

    # -- commands ----------------------------------------------------------------------------------
    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Carry out one command and return its answer (always with "ok")."""
        op = cmd.get("op")
        try:
            if op == "connect":
                return self.connect()
            if op == "events":
                evs, self.events = self.events, []
                return {"ok": True, "events": evs}
            if op == "wait_members":
                return self.wait_members(sorted(cmd["members"]), int(cmd["since"]), float(cmd["timeout"]))
            if op == "round":
                return self.run_round(cmd)
            if op == "soak":
                return self.set_soak(cmd)
            if op == "history":
                recs, self.history = self.history, []
                return {
                    "ok": True,
                    "records": recs,
                    "overflow": bool(self.soak and self.soak.get("overflow")),
                }
            if op == "ping":
                return {"ok": True, "connected": self.backend is not None, "t": time.monotonic_ns()}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # report to the orchestrator, keep serving
            self.drop_backend()
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def connect(self) -> dict[str, Any]:
        self.drop_backend()
        self.ring = (0, 0)  # deliveries before this incarnation's first configuration show as such
        backend = make_backend(self.backend_name, self, self.socket_path)
        backend.connect(self.group + "-ctl" if self.cbin else self.group)
        # Callbacks run only from dispatch(), so nothing of this connection was seen before here.
        self.backend = backend
        if self.soak is not None:
            # A new client incarnation (an EVS process).
            self.incarnation += 1
            self._record(["boot", time.monotonic_ns()])
        # Events that came with the join's reply are held by the client library: hand them on now,
        # since the socket will not wake us for them.
        backend.dispatch()
        self.me = backend.nodeid
        if self.cbin:
            self.start_cclient(self.cbin)
        return {"ok": True, "nodeid": self.me, "t": time.monotonic_ns()}

    def start_cclient(self, binary: str) -> None:
        """(Re)start the C client and wait for its join; raises ConnectionError if it fails."""
        if self.cclient is not None:
            self.cclient.close()
            self.cclient = None
        cc = CClient(binary, self.group)
        try:
            ans = self.await_c(cc, C_READY_TIMEOUT_S)
        except BaseException:
            cc.close()
            raise
        if not ans.get("ok"):
            cc.close()
            raise ConnectionError(f"C client: {ans.get('error')}")
        self.cclient = cc

    def await_c(self, cc: CClient, timeout_s: float) -> dict[str, Any]:
        """Wait for the C client's next answer, dispatching our own connection meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            ans = cc.poll_answer() if b"\n" in cc._buf else None
            if ans is not None:
                return ans
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the C client")
            fds = [cc.fd] + ([self.backend.fd] if self.backend is not None else [])
            ready, _, _ = select.select(fds, [], [], min(left, 1.0))
            if self.backend is not None and self.backend.fd in ready:
                self.backend.dispatch()
            if cc.fd in ready:
                ans = cc.poll_answer()
                if ans is not None:
                    return ans

    def drop_backend(self) -> None:
        if self.cclient is not None:
            self.cclient.close()
            self.cclient = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
            if self.soak is not None:
                self._record(["crash", time.monotonic_ns()])

    def set_soak(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Start (rate > 0) or stop (rate 0) soak sending; start also sets the node id for payloads."""
        rate = float(cmd.get("rate", 0))
        if self.soak is None:
            self.soak = {"node": int(cmd["node"])}
        self.soak.update({"rate": rate, "size": int(cmd.get("size", 64)), "reconnect": True})
        self.next_send_ns = time.monotonic_ns()
        return {"ok": True, "connected": self.backend is not None}

    def soak_step(self) -> float:
        """Send the soak messages that are due, reconnect when disconnected; return seconds to wait."""
        soak = self.soak
        assert soak is not None
        now = time.monotonic_ns()
        if self.backend is None:
            if now >= self.next_connect_ns:
                self.next_connect_ns = now + int(SOAK_RECONNECT_S * 1e9)
                try:
                    self.connect()
                except Exception as exc:  # the daemon is not (yet) back; try again soon
                    self.error = f"{type(exc).__name__}: {exc}"
            return SOAK_RECONNECT_S
        if soak["rate"] <= 0:
            return 1.0
        interval = int(1e9 / soak["rate"])
        while now >= self.next_send_ns and self.backend is not None:
            payload = f"n{soak['node']}.{self.incarnation}.{self.soak_seq}|".encode()
            payload = SOAK_PREFIX + payload + b"." * max(0, soak["size"] - len(payload) - len(SOAK_PREFIX))
            t = time.monotonic_ns()
            try:
                ok = self.backend.mcast(payload)
            except Exception as exc:  # daemon gone mid-send: it may or may not have been sent
                self._record(["sent", t, payload.hex()])
                self.soak_seq += 1
                self.error = f"{type(exc).__name__}: {exc}"
                self.drop_backend()
                return SOAK_RECONNECT_S
            if not ok:
                break  # flow control: try this one again at the next step (same seq, not yet sent)
            self._record(["sent", t, payload.hex()])
            self.soak_seq += 1
            self.next_send_ns = max(self.next_send_ns + interval, now - 10 * interval)
        return max(0.0, (self.next_send_ns - time.monotonic_ns()) / 1e9)

    def pump(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the daemon's fd and dispatch. Raises on a lost connection."""
        be = self._need()
        ready, _, _ = select.select([be.fd], [], [], max(timeout_s, 0.0))
        if ready:
            be.dispatch()

    def wait_members(self, want: list[int], since: int, timeout_s: float) -> dict[str, Any]:
        """Wait for a configuration change at or after `since` whose members are `want`.

        Totem changes are preferred; a backend without them reports group changes. Returns its time.
        """
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["t"] >= since and ev["members"] == want and ev["kind"] in ("totem", "ring"):
                    return {"ok": True, "t": ev["t"], "event": ev}
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "error": "timeout", "events": self.events[-5:]}
            self.pump(min(left, 0.05))

    def run_round(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send (if this node is a sender) for `duration` s, then wait for every sender's last marker."""
        if self.cbin:
            return self.run_c_round(cmd)
        cpu0 = cpu_s()
        t_wall0 = time.monotonic()
        ans = self.run_py_round(cmd)
        ans["client_cpu_s"] = cpu_s() - cpu0
        ans["client_wall_s"] = time.monotonic() - t_wall0
        return ans

    def run_c_round(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The round carried out by the C client (same header, same counting)."""
        cc = self.cclient
        if cc is None:
            raise ConnectionError("C client not running")
        senders = {int(s) for s in cmd["senders"]}
        cc.send(
            f"round {int(cmd['round'])} {int(cmd['size'])} {1 if self.me in senders else 0}"
            f" {float(cmd['duration'])} {float(cmd.get('rate', 0))} {int(cmd.get('start_at', 0))}"
            f" {float(cmd.get('timeout', 30))} {len(senders)} {1 if cmd.get('keep') else 0}"
        )
        ans = self.await_c(cc, float(cmd["duration"]) + 2 * float(cmd.get("timeout", 30)) + 5)
        ans.setdefault("ok", False)
        return ans

    def run_py_round(self, cmd: dict[str, Any]) -> dict[str, Any]:
        be = self._need()
        senders = {int(s) for s in cmd["senders"]}
        rnd = Round(int(cmd["round"]), senders, bool(cmd.get("keep", False)))
        self.round = rnd
        size = max(int(cmd["size"]), HEADER.size)
        rate = float(cmd.get("rate", 0))
        duration = float(cmd["duration"])
        pad = b"\0" * (size - HEADER.size)
        sent = blocked = 0
        # Every driver gets the command first and starts at the same instant, so no node misses
        # the first messages of the round.
        start_at = int(cmd.get("start_at", 0))
        while time.monotonic_ns() < start_at:
            self.pump((start_at - time.monotonic_ns()) / 1e9)
        t0 = time.monotonic_ns()
        # A backend with a pipelined send (cmanlk) uses it for the rounds; soak mode keeps `mcast`.
        mcast = getattr(be, "mcast_pipelined", be.mcast)
        if self.me in senders:
            end = t0 + int(duration * 1e9)
            interval = int(1e9 / rate) if rate > 0 else 0
            next_at = t0
            while True:
                now = time.monotonic_ns()
                if now >= end:
                    break
                if interval and now < next_at:
                    self.pump((next_at - now) / 1e9)
                    continue
                msg = HEADER.pack(MAGIC, rnd.number, self.me, KIND_DATA, sent, now) + pad
                if mcast(msg):
                    sent += 1
                    if len(rnd.calls_ns) < MAX_LATENCY_SAMPLES:
                        rnd.calls_ns.append(be.last_call_ns)
                    next_at += interval
                    if interval or sent % SEND_BATCH == 0:
                        self.pump(0)
                else:
                    blocked += 1
                    self.pump(POLL_S)
            last = HEADER.pack(MAGIC, rnd.number, self.me, KIND_LAST, sent, time.monotonic_ns())
            deadline_last = time.monotonic() + float(cmd.get("timeout", 30))
            while not mcast(last):
                if time.monotonic() > deadline_last:
                    break
                self.pump(POLL_S)
        t_sent = time.monotonic_ns()
        deadline = time.monotonic() + float(cmd.get("timeout", 30))
        while not senders <= rnd.lasts and time.monotonic() < deadline:
            self.pump(min(0.05, max(deadline - time.monotonic(), 0)))
        self.round = None
        return self._round_answer(rnd, sent, blocked, t0, t_sent, senders <= rnd.lasts)

    def _round_answer(
        self, rnd: Round, sent: int, blocked: int, t0: int, t_sent: int, complete: bool
    ) -> dict[str, Any]:
        lat = sorted(rnd.latencies_ns)
        ans: dict[str, Any] = {
            "ok": True,
            "complete": complete,
            "sent": sent,
            "blocked": blocked,
            "t_start": t0,
            "t_sent": t_sent,
            "received": rnd.received,
            "first_ns": rnd.first_ns,
            "last_ns": rnd.last_ns,
            "max_gap_ns": rnd.max_gap_ns,
            "max_gap_at_ns": rnd.max_gap_at_ns,
            "out_of_order": rnd.out_of_order,
            "lat_n": len(lat),
        }
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            ans[f"lat_{name}_ns"] = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
        ans["lat_max_ns"] = lat[-1] if lat else None
        calls = sorted(rnd.calls_ns)
        for name, q in (("p50", 0.50), ("p99", 0.99)):
            ans[f"call_{name}_ns"] = calls[min(len(calls) - 1, int(q * len(calls)))] if calls else None
        if rnd.keep:
            ans["deliveries"] = rnd.deliveries
        return ans

    def _need(self) -> Backend:
        if self.backend is None:
            raise ConnectionError("not connected")
        return self.backend

    # -- main loop ----------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer commands from stdin until EOF; between commands keep dispatching events."""
        stdin = sys.stdin.buffer
        buf = b""
        while True:
            wait = self.soak_step() if self.soak is not None else 1.0
            fds = [stdin.fileno()] + ([self.backend.fd] if self.backend is not None else [])
            ready, _, _ = select.select(fds, [], [], min(wait, 1.0))
            if self.backend is not None and self.backend.fd in ready:
                try:
                    self.backend.dispatch()
                except Exception as exc:  # the daemon went away; say so on the next command
                    self.error = str(exc)
                    self.drop_backend()
            if stdin.fileno() in ready:
                chunk = os.read(stdin.fileno(), 65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    answer = self.handle(json.loads(line))
                    sys.stdout.write(json.dumps(answer) + "\n")
                    sys.stdout.flush()


def make_backend(name: str, driver: Driver, socket_path: str | None) -> Backend:
    """Build the named backend with the driver's callbacks."""
    if name == "corosync":
        from bench.cpg_ctypes import Cpg

        return Cpg(driver.on_deliver, driver.on_confchg, driver.on_totem)
    if name == "cmanlk":
        # Imported by name: the module needs cmanlk.client, which may not exist in a checkout.
        module = importlib.import_module("bench.cmanlk_backend")
        backend: Backend = module.CmanlkBackend(
            driver.on_deliver, driver.on_confchg, driver.on_totem, socket_path
        )
        return backend
    raise ValueError(f"unknown backend {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("corosync", "cmanlk"), required=True)
    ap.add_argument("--group", default="cmkbench")
    ap.add_argument("--socket", default=None, help="cmanlk IPC socket path")
    ap.add_argument("--cbin", default=None, help="run the rounds with this C client (bench/cpgbench.c)")
    args = ap.parse_args()
    Driver(args.backend, args.group, args.socket, args.cbin).serve()


if __name__ == "__main__":
    main()
