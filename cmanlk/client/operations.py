"""The operations of cmanlkd's local API (docs/ipc.md, "Requests"), written once for both clients.

Each is a generator function over a `Connection` (cmanlk/client/connection.py): it yields the
I/O it needs (`Write`, `Read`, `POLL`), gets the time back, and returns its result; the blocking
`Client` and the asyncio `AsyncClient` (api.py) run them with their own sockets, so neither
holds any logic of its own. Pure: time comes only from the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cmanlk.client import proto as ipcproto
from cmanlk.client.connection import (
    CALL_TIMEOUT_S,
    CLIENT_RETRY,
    POLL,
    SEND_RETRY_TIMEOUT_S,
    WRITE_COALESCE_BYTES,
    ClientError,
    Connection,
    Event,
    Operation,
    Read,
    Retry,
    RetryPolicy,
    Write,
)
from cmanlk.errors import ErrorCode


def call(
    conn: Connection, op: str, args: dict[str, Any] | None = None, payload: bytes = b""
) -> Operation[dict[str, Any]]:
    """Send one request and return its result. Raises ClientError / ConnectionClosed."""
    request_id, data = conn.begin_request(op, args, payload)
    try:
        now = yield Write(data)
        deadline = now + CALL_TIMEOUT_S
        while (result := conn.take_reply(request_id)) is None:
            if now >= deadline:
                raise ClientError(ErrorCode.TIMEOUT, f"no reply to {op} in {CALL_TIMEOUT_S} s")
            now = yield Read(deadline)
        return result
    finally:
        conn.forget(request_id)


def hello(
    conn: Connection, client: str, versions: tuple[int, ...] = ipcproto.SUPPORTED_VERSIONS
) -> Operation[dict[str, Any]]:
    """Negotiate the protocol version (the first request): offer `versions`, name the client
    `client`; returns the daemon's hello result."""
    result = yield from call(conn, "hello", {"versions": list(versions), "client": client})
    conn.configure(result)
    return result


def retrying(
    conn: Connection,
    op: str,
    args: dict[str, Any],
    payload: bytes = b"",
    timeout_s: float = SEND_RETRY_TIMEOUT_S,
) -> Operation[dict[str, Any]]:
    """`call`, retried while the daemon answers try_again (CLIENT_RETRY's pauses, for at most
    `timeout_s` from the first refusal); events that arrive meanwhile are kept."""
    retry: Retry | None = None
    while True:
        try:
            return (yield from call(conn, op, args, payload))
        except ClientError as exc:
            if exc.error is not ErrorCode.TRY_AGAIN:
                raise
            now = yield POLL
            if retry is None:
                retry = RetryPolicy(CLIENT_RETRY.first_s, CLIENT_RETRY.longest_s, timeout_s).start(now)
            pause = retry.next_pause(now)
            if pause is None:
                raise
        yield from _wait(conn, now + pause)


def status(conn: Connection) -> Operation[dict[str, Any]]:
    """Node id, cluster name, totem state, ring id, members, quorate, clients."""
    return (yield from call(conn, "status"))


def membership(conn: Connection) -> Operation[dict[str, Any]]:
    """{ring_id, ring_seq, ring_rep, members: [{nodeid, name, addresses}]}."""
    return (yield from call(conn, "membership"))


def quorum(conn: Connection) -> Operation[dict[str, Any]]:
    """votequorum's state: quorate, quorum, total_votes, expected_votes, flags, …."""
    return (yield from call(conn, "quorum"))


def nodes(conn: Connection) -> Operation[list[dict[str, Any]]]:
    """Configured and seen nodes: nodeid, name, addresses, votes, state, local."""
    return list((yield from call(conn, "nodes")).get("nodes", []))


def links(conn: Connection) -> Operation[list[dict[str, Any]]]:
    """Per node and link: up/down and the address."""
    return list((yield from call(conn, "links")).get("links", []))


def stats(conn: Connection) -> Operation[dict[str, Any]]:
    """Daemon and IPC counters."""
    return (yield from call(conn, "stats"))


def groups(conn: Connection) -> Operation[list[dict[str, Any]]]:
    """cpg groups: [{name, members: [[nodeid, pid], …]}]."""
    return list((yield from call(conn, "groups")).get("groups", []))


def dlm(conn: Connection) -> Operation[dict[str, Any]]:
    """DLM lockspaces and fencing (ClientError not_supported when the daemon has no DLM glue)."""
    return (yield from call(conn, "dlm"))


def track_start(
    conn: Connection, *, membership: bool = True, quorum: bool = False, changes_only: bool = False
) -> Operation[None]:
    """Subscribe: the current view comes first as a `track` event, then every change."""
    args = {"membership": membership, "quorum": quorum, "changes_only": changes_only}
    yield from call(conn, "track_start", args)


def track_stop(conn: Connection) -> Operation[None]:
    """Stop membership and quorum events."""
    yield from call(conn, "track_stop")


def next_event(conn: Connection, timeout: float | None = None) -> Operation[Event | None]:
    """The next event, waiting up to `timeout` seconds (None: forever); None on timeout.

    Raises ConnectionClosed when the daemon goes away (after the events it sent were read).
    """
    return (yield from _next_event(conn, timeout, lambda event: True))


def cpg_receive(conn: Connection, timeout: float | None = None) -> Operation[Event | None]:
    """The next cpg event (cpg_deliver, cpg_confchg, cpg_totem_confchg); others are skipped."""
    return (yield from _next_event(conn, timeout, lambda event: event.name.startswith("cpg_")))


def cpg_join(
    conn: Connection, group: str, pid: int | None = None, *, initial_totem_conf: bool = False
) -> Operation[None]:
    """Join `group` as `pid` (default: this process). Retries try_again (sync in progress)."""
    args: dict[str, Any] = {"group": group, "initial_totem_conf": initial_totem_conf}
    if pid is not None:
        args["pid"] = pid
    yield from retrying(conn, "cpg_join", args)


def cpg_leave(conn: Connection, group: str) -> Operation[None]:
    """Leave `group`; the confchg naming us as left (reason 2) follows as an event."""
    yield from retrying(conn, "cpg_leave", {"group": group})


def cpg_send(
    conn: Connection, group: str, payload: bytes, retry_timeout_s: float = SEND_RETRY_TIMEOUT_S
) -> Operation[None]:
    """Multicast `payload` to `group` in agreed order, waiting for the daemon's acceptance
    (one request/reply round trip; retries try_again up to `retry_timeout_s`).

    Raises SendError first if an earlier pipelined send was refused, ClientError otherwise.
    """
    conn.raise_refusal()
    yield from retrying(conn, "cpg_send", {"group": group}, payload, retry_timeout_s)


def cpg_mcast(
    conn: Connection,
    group: str,
    payload: bytes,
    *,
    block: bool = True,
    timeout_s: float = SEND_RETRY_TIMEOUT_S,
) -> Operation[bool]:
    """Pipelined multicast of `payload` to `group` in agreed order: no reply is awaited.

    Returns True once the message is written. While the daemon reports this connection slow, or
    the window of unacknowledged sends is full, it reads (keeping events) until that clears — up
    to `timeout_s`, then ClientError(try_again) — or, with `block=False`, returns False at once.
    Raises SendError when an earlier pipelined send was refused, ClientError(too_large /
    name_too_long) for a message the daemon could not take. Against a version-1 daemon this is
    `cpg_send`.
    """
    if conn.awaiting_acks:
        yield POLL  # take the acknowledgements and refusals that came (never waits)
    conn.raise_refusal()
    if not conn.pipelined:
        try:
            yield from cpg_send(conn, group, payload, timeout_s if block else 0)
        except ClientError as exc:
            if exc.error is ErrorCode.TRY_AGAIN and not block:
                return False
            raise
        return True
    size = len(payload)
    if conn.slow or not conn.has_room(size):
        if not (yield from _pipeline_room(conn, size, block, timeout_s)):
            return False
    yield Write(conn.mcast_frame(group, payload))
    return True


def cpg_mcast_many(
    conn: Connection, group: str, payloads: Iterable[bytes], *, timeout_s: float = SEND_RETRY_TIMEOUT_S
) -> Operation[int]:
    """Pipelined multicast of every payload, in order, joined into few large writes.

    Returns how many were sent (all of them). Waits for window room as cpg_mcast does; raises as
    cpg_mcast (a ClientError after some were sent leaves those sent).
    """
    conn.raise_refusal()
    count = 0
    if not conn.pipelined:
        for payload in payloads:
            yield from cpg_send(conn, group, payload, timeout_s)
            count += 1
        return count
    batch: list[bytes] = []
    size = 0
    for payload in payloads:
        if conn.slow or not conn.has_room(len(payload)):
            if batch:
                yield from _write_batch(batch)
                batch, size = [], 0
            yield from _pipeline_room(conn, len(payload), True, timeout_s)
        frame = conn.mcast_frame(group, payload)
        batch.append(frame)
        size += len(frame)
        count += 1
        if size >= WRITE_COALESCE_BYTES:
            yield from _write_batch(batch)
            batch, size = [], 0
    if batch:
        yield from _write_batch(batch)
    return count


def cpg_flush(conn: Connection, timeout_s: float = CALL_TIMEOUT_S) -> Operation[None]:
    """Wait until the daemon has handled every pipelined send; raise the first refusal.

    Raises SendError for a refused send, ClientError(timeout) when acknowledgements do not come
    within `timeout_s`, ConnectionClosed when the daemon goes away.
    """
    deadline = (yield POLL) + timeout_s
    while (count := conn.outstanding[0]) and not conn.closed:
        if (yield Read(deadline)) >= deadline and conn.outstanding[0]:
            raise ClientError(ErrorCode.TIMEOUT, f"{count} pipelined sends not acknowledged in {timeout_s} s")
    conn.raise_refusal()
    conn.raise_failure()


def set_expected(conn: Connection, expected_votes: int) -> Operation[None]:
    """Set expected votes cluster-wide (root)."""
    yield from call(conn, "set_expected", {"expected_votes": expected_votes})


def set_votes(conn: Connection, votes: int, nodeid: int = 0) -> Operation[None]:
    """Set the votes of `nodeid` (0: this node) cluster-wide (root)."""
    yield from call(conn, "set_votes", {"votes": votes, "nodeid": nodeid})


def leave(conn: Connection) -> Operation[None]:
    """Make this node leave the cluster cleanly (root)."""
    yield from call(conn, "leave")


def kill(conn: Connection, nodeid: int, reason: str | None = None) -> Operation[None]:
    """Ask node `nodeid` to leave the cluster (root); `reason` is logged by the target."""
    yield from call(conn, "kill", {"nodeid": nodeid, **({"reason": reason} if reason else {})})


def fence_ack(conn: Connection, nodeid: int) -> Operation[None]:
    """Confirm node `nodeid` is fenced/off so DLM recovery may go on (root)."""
    yield from call(conn, "fence_ack", {"nodeid": nodeid})


# --- helpers of the operations -------------------------------------------------------------------------


def _wait(conn: Connection, until: float) -> Operation[None]:
    """Let time pass until `until`, reading (keeping events) meanwhile."""
    conn.raise_failure()
    while (yield Read(until)) < until:
        conn.raise_failure()


def _next_event(
    conn: Connection, timeout: float | None, wanted: Callable[[Event], bool]
) -> Operation[Event | None]:
    deadline = None if timeout is None else (yield POLL) + timeout
    while True:
        while (event := conn.pop_event()) is not None:
            if wanted(event):
                return event
        conn.raise_failure()
        now = yield Read(deadline)
        if deadline is not None and now >= deadline:
            event = conn.pop_event()
            while event is not None and not wanted(event):
                event = conn.pop_event()
            return event


def _pipeline_room(conn: Connection, size: int, block: bool, timeout_s: float) -> Operation[bool]:
    """Read until the daemon no longer reports us slow and `size` more bytes fit the window.

    Returns False at once with `block=False`; raises ClientError(try_again) after `timeout_s`.
    """
    if not block:
        yield POLL
        return not conn.slow and conn.has_room(size)
    deadline = (yield POLL) + timeout_s
    while conn.slow or not conn.has_room(size):
        conn.raise_failure()
        if (yield Read(deadline)) >= deadline and (conn.slow or not conn.has_room(size)):
            if conn.slow:
                why = f"the daemon reports this connection slow for {timeout_s} s: read events"
            else:
                why = f"{conn.outstanding[0]} pipelined sends unacknowledged for {timeout_s} s"
            raise ClientError(ErrorCode.TRY_AGAIN, why)
    return True


def _write_batch(batch: list[bytes]) -> Operation[None]:
    yield Write(b"".join(batch))
