"""Helpers for the cpg and cmanlk-tool system tests: a cpg load client run inside a namespace, and
`cmanlk-tool` runs against one node's socket.

The load client is this module run as a program, inside a node's namespace (`ip netns exec`):

    python -m tests.system.cpghelpers cmanlk --socket S --group G --me 1 --count 10000 \
        --members 3 --out result.json [--progress progress.txt]
    python -m tests.system.cpghelpers libcpg ...        # Debian's libcpg (bench/cpg_ctypes.py)

With `--progress P` it writes its delivery count to P and, a cmanlk client, its send count to
P with the suffix ".sent" (every PROGRESS_EVERY).

It joins the group, waits until `--members` processes are in it (the start barrier, seen through
its own confchgs), sends `--count` messages "<me>:<counter>" one after another (waiting out flow
control) while it records every delivery and confchg, then keeps reading until it has delivered
every message of every sender that is still a member (a sender named as left in a confchg is
done). With `--extra N`, once a confchg names a member as left, each live client sends N more
messages, so some are surely ordered after the change. It writes what it saw to `--out` as JSON:

    {"events": ["D <nodeid> <payload>", "C members=… left=… joined=…", …],
     "first_send": t, "last_send": t, "done": t, "delivered": n, "error": "",
     "marks": [time of every PROGRESS_EVERY-th delivery]}

(times are time.monotonic(), the same clock in every namespace). Recording stops at the delivery
that completes the run, which is the same point of the agreed order on every member, so the
sequences of all members can be compared whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT_S = 20.0
PROGRESS_EVERY = 500
"""Deliveries between two writes of the progress file."""


# --- what a client saw ------------------------------------------------------------------------------


@dataclass
class Recorder:
    """The delivery sequence of one client and its stop condition."""

    me: int
    count: int
    members: int
    progress: Path | None
    extra: int = 0
    events: list[str] = field(default_factory=list)
    got: dict[int, int] = field(default_factory=dict)
    departed: set[int] = field(default_factory=set)
    senders: set[int] = field(default_factory=set)
    in_group: int = 0
    started: bool = False
    done: bool = False
    error: str = ""
    delivered: int = 0
    marks: list[float] = field(default_factory=list)

    def deliver(self, nodeid: int, payload: bytes) -> None:
        if self.done:
            return
        text = payload.decode(errors="replace")
        self.events.append(f"D {nodeid} {text}")
        sender, _, counter = text.partition(":")
        if sender.isdigit() and counter.isdigit():
            s = int(sender)
            want = self.got.get(s, 0)
            if int(counter) != want:  # per-sender FIFO, no gaps, no duplicates
                self.error = self.error or f"from {s}: got counter {counter}, expected {want}"
            self.got[s] = int(counter) + 1
        self.delivered += 1
        if self.delivered % PROGRESS_EVERY == 0:
            self.marks.append(time.monotonic())
        if self.progress is not None and self.delivered % PROGRESS_EVERY == 0:
            write_progress(self.progress, self.delivered)
        self._check_done()

    def confchg(
        self, members: Sequence[tuple[int, int]], left: Sequence[tuple[int, int, int]],
        joined: Sequence[tuple[int, int, int]],
    ) -> None:
        if self.done:
            return
        self.events.append(
            "C members=" + ",".join(f"{n}:{p}" for n, p in sorted(members))
            + " left=" + ",".join(f"{n}:{p}:{r}" for n, p, r in sorted(left))
            + " joined=" + ",".join(f"{n}:{p}:{r}" for n, p, r in sorted(joined))
        )
        self.in_group = len(members)
        if not self.started and self.in_group >= self.members:
            self.started = True
            self.senders = {n for n, _ in members}
        self.departed |= {n for n, _, _ in left}
        self._check_done()

    def wanted(self) -> int:
        """Messages each live sender sends: `count`, plus `extra` once a member has left."""
        return self.count + (self.extra if self.departed else 0)

    def _check_done(self) -> None:
        if self.started and self.senders and all(
            self.got.get(s, 0) >= self.wanted() or s in self.departed for s in self.senders
        ):
            self.done = True


# --- the two client flavours ------------------------------------------------------------------------


def _run_cmanlk(args: argparse.Namespace, rec: Recorder, times: dict[str, float]) -> None:
    from cmanlk.client import Client, Event

    def record(event: Event | None) -> None:
        if event is None:
            return
        if event.name == "cpg_deliver":
            rec.deliver(int(event.data.get("nodeid", 0)), event.payload)
        elif event.name == "cpg_confchg":
            rec.confchg(
                [(int(m["nodeid"]), int(m["pid"])) for m in event.data.get("members", [])],
                [(int(m["nodeid"]), int(m["pid"]), int(m["reason"])) for m in event.data.get("left", [])],
                [(int(m["nodeid"]), int(m["pid"]), int(m["reason"])) for m in event.data.get("joined", [])],
            )

    deadline = time.monotonic() + args.timeout
    with Client.connect(args.socket) as client:
        client.cpg_join(args.group)
        while not rec.started and time.monotonic() < deadline:
            record(client.cpg_receive(0.2))
        if not rec.started:
            raise TimeoutError(f"only {rec.in_group} of {rec.members} members joined")
        times["first_send"] = time.monotonic()
        pace = 1.0 / args.rate if args.rate > 0 else 0.0
        for i in range(args.count):
            if pace:
                time.sleep(max(0.0, times["first_send"] + i * pace - time.monotonic()))
            client.cpg_send(args.group, f"{args.me}:{i}".encode())
            if rec.progress is not None and i % PROGRESS_EVERY == 0:
                write_progress(rec.progress.with_suffix(".sent"), i)
            while (event := client.next_event(0)) is not None:
                record(event)
        sent = args.count
        while not rec.done and time.monotonic() < deadline:
            if sent < rec.wanted():  # a member left: send `extra` more, after the change
                client.cpg_send(args.group, f"{args.me}:{sent}".encode())
                sent += 1
                while (event := client.next_event(0)) is not None:
                    record(event)
                continue
            times["last_send"] = time.monotonic()
            record(client.cpg_receive(0.2))


def _run_libcpg(args: argparse.Namespace, rec: Recorder, times: dict[str, float]) -> None:
    sys.path.insert(0, str(REPO))
    from bench.cpg_ctypes import Cpg

    cpg = Cpg(
        lambda nodeid, pid, msg: rec.deliver(nodeid, msg),
        lambda members, left, joined: rec.confchg(members, left, joined),
        lambda ring, members: None,
    )
    deadline = time.monotonic() + args.timeout

    def pump(wait_s: float) -> None:
        ready, _, _ = select.select([cpg.fd], [], [], wait_s)
        if ready:
            cpg.dispatch()

    cpg.connect(args.group)
    try:
        while not rec.started and time.monotonic() < deadline:
            pump(0.2)
        if not rec.started:
            raise TimeoutError(f"only {rec.in_group} of {rec.members} members joined")
        times["first_send"] = time.monotonic()
        sent = 0
        while not rec.done and time.monotonic() < deadline:
            if sent < rec.wanted():  # `count`, and `extra` more after a member left
                while not cpg.mcast(f"{args.me}:{sent}".encode()):  # CS_ERR_TRY_AGAIN: flow control
                    if time.monotonic() > deadline:
                        raise TimeoutError("cpg_mcast_joined kept answering try again")
                    pump(0.01)
                sent += 1
                pump(0)
                continue
            times["last_send"] = time.monotonic()
            pump(0.2)
    finally:
        cpg.close()


def client_main(argv: Sequence[str] | None = None) -> int:
    """The load client (see the module docstring). Returns 0 when the run completed."""
    parser = argparse.ArgumentParser(prog="cpghelpers")
    parser.add_argument("flavour", choices=("cmanlk", "libcpg"))
    parser.add_argument("--socket", default="")
    parser.add_argument("--group", required=True)
    parser.add_argument("--me", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--extra", type=int, default=0, help="more messages to send once a member left")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--progress", type=Path)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=0.0, help="cmanlk: sends per second (0: no pacing)")
    args = parser.parse_args(argv)
    rec = Recorder(args.me, args.count, args.members, args.progress, args.extra)
    times: dict[str, float] = {}
    run: Callable[[argparse.Namespace, Recorder, dict[str, float]], None] = (
        _run_cmanlk if args.flavour == "cmanlk" else _run_libcpg
    )
    try:
        run(args, rec, times)
        if not rec.done:
            rec.error = rec.error or f"not done before the timeout: {rec.got} departed {sorted(rec.departed)}"
    except Exception as exc:  # any failure: the test reads the reason from the result file
        rec.error = rec.error or f"{type(exc).__name__}: {exc}"
    result = {
        "events": rec.events,
        "delivered": rec.delivered,
        "done": time.monotonic(),
        "first_send": times.get("first_send", 0.0),
        "last_send": times.get("last_send", 0.0),
        "error": rec.error,
        "marks": rec.marks,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, args.out)
    return 0 if not rec.error else 1


# --- test side ----------------------------------------------------------------------------------------


def socket_path(run_dir: Path) -> str:
    """The daemon's IPC socket under its run_dir."""
    return str(run_dir / "cmanlk.sock")


def child_env() -> dict[str, str]:
    """Environment for a Python child that imports this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    return env


def tool(
    namespace: str, socket: str, *args: str, prefix: Sequence[str] = (), python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """Run `cmanlk-tool -s socket ARGS` inside `namespace` (bounded); `prefix` wraps the
    interpreter (setpriv …). Never raises on a non-zero exit."""
    cmd = ["ip", "netns", "exec", namespace, *prefix, python, "-m", "cmanlk.client.cli", "-s", socket, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=child_env())


def tool_json(namespace: str, socket: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `cmanlk-tool --json ARGS`; return (exit code, the parsed object). Raises AssertionError
    with the tool's stderr when it printed no JSON."""
    proc = tool(namespace, socket, "--json", *args)
    try:
        body = json.loads(proc.stdout)
    except ValueError:
        what = f"cmanlk-tool {args} exit {proc.returncode}: {proc.stdout!r} {proc.stderr!r}"
        raise AssertionError(what) from None
    assert isinstance(body, dict)
    return proc.returncode, body


def client_command(flavour: str, out: Path, **opts: object) -> list[str]:
    """The argv of a load client (see the module docstring)."""
    argv = [sys.executable, "-m", "tests.system.cpghelpers", flavour, "--out", str(out)]
    for key, value in opts.items():
        argv += [f"--{key}", str(value)]
    return argv


def read_result(path: Path) -> dict[str, Any] | None:
    """The load client's result file, or None while it is still running."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_progress(path: Path, count: int) -> None:
    """Replace the count in `path` at once (a reader never sees half a number)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(str(count))
    os.replace(tmp, path)


def read_progress(path: Path) -> int:
    """Deliveries a load client has reported so far (0 before the first report)."""
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def wait_results(paths: dict[int, Path], timeout_s: float) -> dict[int, dict[str, Any]]:
    """Wait (bounded) until every client wrote its result; raise AssertionError naming the missing."""
    deadline = time.monotonic() + timeout_s
    results: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for n, path in paths.items():
            if n not in results and (r := read_result(path)) is not None:
                results[n] = r
        if len(results) == len(paths):
            return results
        time.sleep(0.1)
    raise AssertionError(f"clients {sorted(set(paths) - set(results))} wrote no result in {timeout_s} s")


def from_barrier(events: Sequence[str], members: int) -> list[str]:
    """The sequence from the confchg that first shows `members` processes (the start barrier: the
    last join, which every member delivers at the same point) on. Earlier confchgs differ by
    design: each client saw the group only from its own join."""
    for i, e in enumerate(events):
        if e.startswith("C members=") and len(e.split()[1].removeprefix("members=").split(",")) >= members:
            return list(events[i:])
    return []


def deliveries(events: Sequence[str]) -> list[str]:
    """Only the deliveries of a recorded sequence."""
    return [e for e in events if e.startswith("D ")]


def digest(events: Sequence[str]) -> str:
    """A short hash of a recorded sequence (order matters)."""
    h = hashlib.sha256()
    for e in events:
        h.update(e.encode() + b"\n")
    return h.hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(client_main())
