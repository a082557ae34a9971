"""The IPC server on a real Unix socket with the in-memory backend: hello and versions, malformed
frames, queries, track (current view then changes), cpg through the socket, privileged ops,
SO_PEERCRED refusal of an unprivileged uid, and a slow client told then cut off without
stalling the others."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmanlk.client import Client, ClientError, ConnectionClosed
from cmanlk.client import proto as ipcproto
from cmanlk.runtime.backend import FenceAck, MemoryBackend
from cmanlk.runtime.ipc import IpcConfig, IpcServer
from cmanlk.services.votequorum.service import QuorumChanged
from cmanlk.types import NodeId, RingId
from tests.unit.ipcharness import Harness

REPO = Path(__file__).resolve().parents[2]
# The venv's interpreter lives under /root (not reachable by nobody); the client needs only the stdlib.
SYSTEM_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # World-traversable, so a subprocess running as nobody can reach the socket.
    path = Path(tempfile.mkdtemp(prefix="cmk-ipc-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def harness(sockdir: Path) -> Iterator[Harness]:
    h = Harness(IpcConfig(path=str(sockdir / "cmanlk.sock"), request_timeout_s=2.0))
    yield h
    h.close()


def raw_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_frames(s: socket.socket, count: int) -> list[ipcproto.Frame]:
    decoder = ipcproto.FrameDecoder()
    frames: list[ipcproto.Frame] = []
    while len(frames) < count:
        data = s.recv(65536)
        if not data:
            break
        frames += [f for f in decoder.feed(data) if isinstance(f, ipcproto.Frame)]
    return frames


def test_first_request_must_be_hello_and_versions_are_negotiated(harness: Harness):
    with raw_connect(harness.path) as s:
        s.sendall(ipcproto.request(1, "status"))
        (f,) = read_frames(s, 1)
        assert (f.kind, f.header["id"], f.header["code"]) == ("error", 1, "hello_required")
        s.sendall(ipcproto.request(2, "hello", {"versions": [99]}))
        (f,) = read_frames(s, 1)
        assert f.header["code"] == "version_unsupported"
        s.sendall(ipcproto.request(3, "hello", {"versions": [1, 99]}))
        (f,) = read_frames(s, 1)
        assert f.kind == "reply" and f.header["result"]["version"] == 1
        assert f.header["result"]["node_id"] == 1 and f.header["result"]["privileged"] is True


def test_malformed_requests_get_errors_and_the_daemon_serves_others(harness: Harness):
    with raw_connect(harness.path) as s:
        head = b"{not json"
        s.sendall(struct.pack(">II", 4 + len(head), len(head)) + head)
        s.sendall(ipcproto.encode_frame({"kind": "request", "id": "x", "op": "hello"}))
        s.sendall(ipcproto.request(5, "hello", {"versions": [1]}))
        s.sendall(ipcproto.request(6, "no_such_op"))
        s.sendall(ipcproto.request(7, "set_votes", {"votes": "three"}))
        frames = read_frames(s, 5)
        assert [f.header.get("code") for f in frames] == [
            "bad_request",
            "bad_request",
            None,
            "unknown_op",
            "bad_request",
        ]
        # A frame length out of bounds cannot be resynchronised: error, then the connection closes.
        s.sendall(struct.pack(">II", 0x7FFFFFFF, 4))
        (f,) = read_frames(s, 1)
        assert f.header["code"] == "bad_frame"
        assert s.recv(100) == b""
    with Client.connect(harness.path) as c:
        assert c.status()["node_id"] == 1


def test_queries_membership_quorum_nodes(harness: Harness):
    harness.on_loop(harness.backend.change_membership, RingId(8, NodeId(1)), (NodeId(1), NodeId(2)))
    with Client.connect(harness.path) as c:
        assert c.server["cluster_name"] == "testcluster"
        m = c.membership()
        assert m["ring_id"] == "1.8" and m["ring_seq"] == 8
        assert m["members"] == [
            {"nodeid": 1, "name": "node1", "addresses": ["192.0.2.1"]},
            {"nodeid": 2, "name": "node2", "addresses": ["192.0.2.2"]},
        ]
        q = c.quorum()
        assert q["quorate"] is True and q["members"] == [1, 2]
        states = {n["nodeid"]: (n["state"], n["local"]) for n in c.nodes()}
        assert states == {1: ("member", True), 2: ("member", False), 3: ("dead", False)}
        assert "ipc" in c.stats()


def test_track_sends_current_view_then_changes(harness: Harness):
    with Client.connect(harness.path) as c:
        c.track_start(quorum=True)
        first = c.next_event(5)
        assert first is not None and first.name == "track" and first.data["current"] is True
        assert [m["nodeid"] for m in first.data["members"]] == [1]
        harness.on_loop(
            harness.backend.change_membership, RingId(12, NodeId(1)), (NodeId(1), NodeId(2), NodeId(3))
        )
        change = c.next_event(5)
        assert change is not None and change.data["view_number"] == 12
        assert [(m["nodeid"], m["change"]) for m in change.data["changes"]] == [(2, "joined"), (3, "joined")]
        harness.on_loop(harness.backend.change_membership, RingId(16, NodeId(1)), (NodeId(1), NodeId(3)))
        change = c.next_event(5)
        assert [(m["nodeid"], m["change"]) for m in change.data["changes"]] == [(2, "left")]
        assert [m["nodeid"] for m in change.data["members"]] == [1, 3]
        state = harness.backend.cpg  # any object with the right fields would do; use the real type
        del state
        q = QuorumChanged(False, 2, 1, 3, ((NodeId(1), 1),), RingId(16, NodeId(1)), None)  # type: ignore[arg-type]
        harness.on_loop(harness.backend.publish, q)
        ev = c.next_event(5)
        assert ev is not None and ev.name == "quorum" and ev.data["quorate"] is False
        c.track_stop()
        harness.on_loop(harness.backend.change_membership, RingId(20, NodeId(1)), (NodeId(1),))
        assert c.next_event(0.3) is None


def test_cpg_join_send_receive_and_process_down(harness: Harness):
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    with Client.connect(harness.path) as a, Client.connect(harness.path) as b:
        a.cpg_join("grp", pid=100)
        ev = a.cpg_receive(5)
        assert ev is not None and ev.name == "cpg_confchg"
        assert ev.data["joined"] == [{"nodeid": 1, "pid": 100, "reason": 1}]
        b.cpg_join("grp", pid=200)
        assert b.cpg_receive(5).data["members"] == [
            {"nodeid": 1, "pid": 100, "reason": 0},
            {"nodeid": 1, "pid": 200, "reason": 0},
        ]
        assert a.cpg_receive(5).data["joined"] == [{"nodeid": 1, "pid": 200, "reason": 1}]
        with pytest.raises(ClientError) as info:
            b.cpg_join("grp", pid=200)
        assert info.value.code == "exist"
        with pytest.raises(ClientError) as info:
            b.cpg_send("x" * 129, b"")
        assert info.value.code == "name_too_long"
        b.cpg_send("grp", payload[: 1024 * 1024 - 189])
        for c in (a, b):
            ev = c.cpg_receive(5)
            assert ev is not None and ev.name == "cpg_deliver"
            assert ev.data == {"group": "grp", "nodeid": 1, "pid": 200}
            assert ev.payload == payload[: 1024 * 1024 - 189]
        assert {"name": "grp", "members": [[1, 100], [1, 200]]} in a.groups()
        b.close()
        ev = a.cpg_receive(5)
        assert ev is not None and ev.data["left"] == [{"nodeid": 1, "pid": 200, "reason": 5}]
        a.cpg_leave("grp")
        assert a.cpg_receive(5).data["left"] == [{"nodeid": 1, "pid": 100, "reason": 2}]


def test_privileged_requests_and_not_supported(harness: Harness):
    with Client.connect(harness.path) as c:
        c.set_expected(3)
        assert harness.backend.quorum["expected_votes"] == 3
        with pytest.raises(ClientError) as info:
            c.set_expected(0)
        assert info.value.code == "invalid_param"
        for call in (lambda: c.kill(2), lambda: c.fence_ack(2), c.dlm, c.leave):
            with pytest.raises(ClientError) as info:
                call()
            assert info.value.code == "not_supported"
        harness.backend.admin_results[FenceAck] = {"nodeid": 2}
        c.fence_ack(2)
        assert harness.backend.admin_log[-1] == FenceAck(NodeId(2))


def test_stale_socket_is_replaced_and_live_one_is_not(sockdir: Path):
    path = sockdir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a crashed daemon leaves behind
    h = Harness(IpcConfig(path=str(path)))
    try:
        with Client.connect(str(path)) as c:
            assert c.status()["node_id"] == 1
        with pytest.raises(OSError, match="another running daemon"):
            h.run(IpcServer(MemoryBackend(), IpcConfig(path=str(path))).start())
    finally:
        h.close()
    assert not path.exists()
    with pytest.raises(ConnectionClosed):
        Client.connect(str(path))


_NOBODY_SCRIPT = """
import sys
from cmanlk.client import Client, ClientError
try:
    with Client.connect(sys.argv[1]) as c:
        try:
            c.set_expected(2)
        except ClientError as e:
            print("privileged", e.code)
        print("connected", c.status()["node_id"])
except ClientError as e:
    print("refused", e.code, e)
"""


def _run_as_nobody(path: str) -> str:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", _NOBODY_SCRIPT, path],
        user=65534,
        group=65534,
        extra_groups=[],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@NEEDS_ROOT
def test_unprivileged_uid_is_refused_with_a_clear_error(harness: Harness):
    out = _run_as_nobody(harness.path)
    assert out.startswith("refused permission_denied"), out
    assert "uid 65534 may not use" in out and "root only" in out
    assert harness.server.stats.get("refused_permission_denied") == 1


@NEEDS_ROOT
def test_group_member_may_query_but_not_change(sockdir: Path):
    h = Harness(IpcConfig(path=str(sockdir / "g.sock"), group="nogroup"))
    try:
        out = _run_as_nobody(h.path)
        assert out.splitlines() == ["privileged permission_denied", "connected 1"], out
        assert oct(os.stat(h.path).st_mode & 0o777) == "0o660"
    finally:
        h.close()


def test_slow_client_is_told_then_disconnected_without_stalling_others(
    sockdir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="cmanlk.ipc")
    bound = 512 * 1024
    h = Harness(IpcConfig(path=str(sockdir / "slow.sock"), queue_bytes=bound))
    try:
        slow = raw_connect(h.path)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(ipcproto.request(1, "hello", {"versions": [1]}))
        slow.sendall(ipcproto.request(2, "cpg_join", {"group": "g", "pid": 1}))
        read_frames(slow, 3)  # hello and join replies, own confchg
        seen_by_slow: list[str] = []

        def crawl() -> None:  # a reader far slower than the sender: 4 KiB per 5 ms
            decoder = ipcproto.FrameDecoder()
            with contextlib.suppress(OSError):
                for _ in range(5000):
                    data = slow.recv(4096)
                    if not data:
                        return
                    for f in decoder.feed(data):
                        if isinstance(f, ipcproto.Frame):
                            seen_by_slow.append(str(f.header.get("event") or f.header.get("code")))
                    time.sleep(0.005)

        reader = threading.Thread(target=crawl, daemon=True)
        reader.start()
        with Client.connect(h.path) as fast:
            fast.cpg_join("g", pid=2)
            chunk = b"z" * 60_000
            seen = []
            for _ in range(60):  # 3.6 MB, sent at memory speed
                fast.cpg_send("g", chunk)
                seen += list(fast.events(0))
            assert fast.status()["clients"] == 1
            confchg = [e for e in seen + list(fast.events(1)) if e.name == "cpg_confchg"]
            assert confchg and confchg[-1].data["left"] == [{"nodeid": 1, "pid": 1, "reason": 5}]
            assert sum(1 for e in seen if e.name == "cpg_deliver") == 60  # the sender got all its own
        reader.join(30)
        assert not reader.is_alive()  # the slow client saw EOF
        assert h.server.stats.get("client_overflow") == 1
        # Told first (flow), then why it is cut off (too_slow), then EOF.
        assert seen_by_slow[-2:] == ["flow", "too_slow"], seen_by_slow
        # The log says how far behind it was (it used to say "0 bytes queued": the figure was
        # read after the backlog had been freed).
        (line,) = [r.getMessage() for r in caplog.records if "did not read its events" in r.getMessage()]
        unread = int(line.split("events, ")[1].split(" bytes")[0])
        assert unread > bound, line
        assert f"(bound {bound} bytes" in line
    finally:
        slow.close()
        h.close()


def test_clients_stalled_mid_frame_or_before_hello_are_closed_and_free_their_slots(sockdir: Path):
    """A header whose body never comes held a slot forever; 256 such clients locked everyone out."""
    config = IpcConfig(path=str(sockdir / "stall.sock"), max_clients=4, frame_deadline_s=0.5)
    h = Harness(config)
    stalled: list[socket.socket] = []
    try:
        for i in range(4):
            s = raw_connect(h.path)
            if i % 2:  # hello done, then the head of a 1000-byte frame and nothing more
                s.sendall(ipcproto.request(1, "hello", {"versions": [1]}))
                read_frames(s, 1)
                s.sendall(struct.pack(">II", 1000, 20))
            stalled.append(s)  # the others: connected and silent, no hello
        deadline = time.monotonic() + 10
        while True:
            try:
                with Client.connect(h.path) as c:
                    assert c.status()["node_id"] == 1
                break
            except ClientError as exc:
                assert exc.code == "no_resources"
                assert time.monotonic() < deadline, "the stalled clients still hold every slot"
                time.sleep(0.1)
        for i, s in enumerate(stalled):
            frames = read_frames(s, 2)
            assert [(f.header["code"], f.header["id"]) for f in frames] == [("timeout", None)], frames
            assert ("a frame it began" if i % 2 else "hello") in frames[0].header["message"]
            assert s.recv(1) == b""  # closed
        assert h.server.stats.get("stalled") == 4
    finally:
        for s in stalled:
            s.close()
        h.close()


_HOLD_SCRIPT = """
import sys
from cmanlk.client import Client, ClientError
held = []
for _ in range(int(sys.argv[2])):
    try:
        held.append(Client.connect(sys.argv[1]))
        print("connected", flush=True)
    except ClientError as e:
        print("refused", e, flush=True)
sys.stdin.read()
"""


@NEEDS_ROOT
def test_the_last_slots_are_kept_for_root(sockdir: Path):
    config = IpcConfig(path=str(sockdir / "full.sock"), group="nogroup", max_clients=3, root_reserved=1)
    h = Harness(config)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    nobody = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", _HOLD_SCRIPT, h.path, "3"], user=65534, group=65534, extra_groups=[],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert nobody.stdout is not None
        lines = [nobody.stdout.readline().strip() for _ in range(3)]
        assert lines[:2] == ["connected", "connected"], lines
        assert lines[2].startswith("refused no_resources: too many clients (at most 2, 1 more for root)")
        with Client.connect(h.path) as root:  # the kept slot
            assert root.status()["clients"] == 3
    finally:
        nobody.communicate("", timeout=30)
        h.close()


def test_frame_codec_bounds():
    with pytest.raises(ipcproto.ProtocolError):
        ipcproto.encode_frame({}, bytes(ipcproto.MAX_PAYLOAD_BYTES + 1))
    frame = ipcproto.event("x", {"a": 1}, b"\x00\xff")
    decoder = ipcproto.FrameDecoder()
    out = []
    for i in range(len(frame)):  # byte by byte
        out += decoder.feed(frame[i : i + 1])
    assert out == [ipcproto.Frame({"kind": "event", "event": "x", "data": {"a": 1}}, b"\x00\xff")]
    assert json.loads(frame[8 : 8 + struct.unpack(">I", frame[4:8])[0]])["event"] == "x"


def test_client_reset_with_unread_replies_ends_quietly_and_others_are_served(harness: Harness):
    """A client that dies with replies still unread makes the server's read fail with ECONNRESET:
    that connection ends like an EOF (no unhandled exception), the daemon serves the next one."""
    unhandled: list[dict[str, Any]] = []
    record = lambda _loop, ctx: unhandled.append(ctx)  # noqa: E731
    harness.loop.call_soon_threadsafe(harness.loop.set_exception_handler, record)
    with raw_connect(harness.path) as s:
        s.sendall(ipcproto.request(1, "hello", {"versions": [1]}))
        read_frames(s, 1)
        s.sendall(b"".join(ipcproto.request(i, "status") for i in range(2, 60)))
        time.sleep(0.3)  # the replies wait, unread, in our receive queue
    with Client.connect(harness.path) as c:
        assert c.status()["node_id"] == 1
    time.sleep(0.2)
    assert not unhandled, unhandled
