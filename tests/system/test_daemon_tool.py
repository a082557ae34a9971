"""cmanlk-tool against real cmanlkd daemons, each run inside its node's namespace on that node's socket.

- every node reports the same ring and members (`status --json`); `quorum` exits 0 when quorate
  and 2 when not (as corosync-quorumtool -s); `nodes`, `links` (addresses, counters), `groups`,
  `version` work with and without --json;
- `expected N` and `votes N` are cluster-wide: `quorum --json` shows them on every node;
- kill -9 of two nodes of three leaves the survivor inquorate; a two_node cluster keeps quorum
  when one of its two nodes is killed (votequorum's two_node);
- a malformed request (raw bytes) and an unauthorised peer (uid 65534) get error replies while
  the daemon keeps serving its other clients.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmanlk.client import Client
from cmanlk.client import proto as ipcproto
from tests.system import cpghelpers as h
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

EXIT_NOT_QUORATE = 2  # as corosync-quorumtool -s
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
"""An interpreter uid 65534 may run (the venv's lives under /root, mode 0700)."""


def run_tool(c: Cluster, node: int, *args: str) -> Any:
    """`cmanlk-tool ARGS` in node's namespace on its socket (CompletedProcess)."""
    return h.tool(c.lab.ns(node), h.socket_path(c.run_dir(node)), *args)


def tool_json(c: Cluster, node: int, *args: str) -> tuple[int, dict[str, Any]]:
    return h.tool_json(c.lab.ns(node), h.socket_path(c.run_dir(node)), *args)


def quorum_on(c: Cluster, node: int) -> dict[str, Any]:
    return tool_json(c, node, "quorum")[1]


def test_every_node_reports_one_ring_and_the_read_commands_work(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    views = {}
    for n in (1, 2, 3):
        code, st = tool_json(c, n, "status")
        assert code == 0 and st["schema"] == 1 and st["command"] == "status"
        assert st["node_id"] == n and st["state"] == "OPERATIONAL" and st["quorum"]["quorate"] is True
        views[n] = (st["ring_id"], st["members"])
        code, q = tool_json(c, n, "quorum")
        assert code == 0 and q["quorate"] and q["total_votes"] == 3 and q["quorum"] == 2
        text = run_tool(c, n, "status")
        assert text.returncode == 0 and "Quorate:          Yes" in text.stdout, text.stdout
        assert run_tool(c, n, "quorum").returncode == 0
    assert views[1] == views[2] == views[3] and views[1][1] == [1, 2, 3], views

    code, nodes = tool_json(c, 2, "nodes")
    assert code == 0
    assert [(x["nodeid"], x["name"], x["state"], x["local"]) for x in nodes["nodes"]] == [
        (1, "n1", "member", False), (2, "n2", "member", True), (3, "n3", "member", False),
    ]
    text = run_tool(c, 2, "nodes").stdout
    assert "n2 (local)" in text and "member" in text

    # udpu has no probes: a peer is "up" when it is a member of our ring or was heard from in the
    # last 10 s. On an idle ring node 3 hears only node 2 (its token predecessor); node 1 is up
    # because it is in the ring.
    code, links = tool_json(c, 3, "links")
    assert code == 0 and {(x["nodeid"], x["up"]) for x in links["links"]} == {(1, True), (2, True)}
    assert {(x["nodeid"], x["address"]) for x in links["links"]} == {(1, "10.77.0.1"), (2, "10.77.0.2")}
    assert links["local"][0]["local_address"] == "10.77.0.3" and "received" in links["local"][0]["counters"]
    text = run_tool(c, 3, "links").stdout
    assert "\tconnected (10.77.0.2)" in text and "\tconnected (10.77.0.1)" in text, text
    assert "disconnected" not in text and "addr\t= 10.77.0.3" in text, text

    code, version = tool_json(c, 1, "version")
    assert code == 0 and version["daemon_protocol"] == 2 and version["daemon_error"] == ""
    assert version["daemon_version"] == version["tool_version"]
    assert "cmanlkd" in run_tool(c, 1, "version").stdout

    with Client.connect(h.socket_path(c.run_dir(1))) as member:
        member.cpg_join("tool:test", pid=4242)

        def listed_everywhere() -> bool:
            want = {"name": "tool:test", "members": [{"nodeid": 1, "pid": 4242}]}
            return all(tool_json(c, n, "groups")[1]["groups"] == [want] for n in (1, 2, 3))

        c.wait_until(listed_everywhere, 10.0, "the group listed on every node")
        text = run_tool(c, 3, "groups")
        assert text.returncode == 0 and "tool:test" in text.stdout and "1:4242" in text.stdout


def test_expected_and_votes_change_quorum_on_every_node(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    done = run_tool(c, 1, "expected", "5")
    assert done.returncode == 0, done.stderr
    c.wait_until(
        lambda: all(quorum_on(c, n)["expected_votes"] == 5 for n in (1, 2, 3)), 10.0, "expected 5 everywhere"
    )
    for n in (1, 2, 3):
        q = quorum_on(c, n)
        assert q["quorum"] == 3 and q["total_votes"] == 3 and q["quorate"] is True, q
    done = run_tool(c, 3, "votes", "2")
    assert done.returncode == 0, done.stderr
    c.wait_until(
        lambda: all(quorum_on(c, n)["total_votes"] == 4 for n in (1, 2, 3)), 10.0, "4 votes everywhere"
    )
    votes = {x["nodeid"]: x["votes"] for x in tool_json(c, 1, "nodes")[1]["nodes"]}
    assert votes == {1: 1, 2: 1, 3: 2}
    # refused as votequorum refuses it: below the total votes of a quorate cluster
    refused = run_tool(c, 2, "expected", "2")
    assert refused.returncode == 1 and "invalid_param" in refused.stderr


def test_survivor_of_two_kills_is_not_quorate(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    assert run_tool(c, 1, "quorum").returncode == 0
    c.kill(2)
    c.kill(3)
    c.wait_ring([1], timeout_s=10.0)
    c.wait_until(lambda: run_tool(c, 1, "quorum").returncode == EXIT_NOT_QUORATE, 5.0, "inquorate")
    code, q = tool_json(c, 1, "quorum")
    assert code == EXIT_NOT_QUORATE and q["quorate"] is False and q["total_votes"] == 1 and q["quorum"] == 2
    text = run_tool(c, 1, "quorum")
    assert "Quorate:          No" in text.stdout and "Activity blocked" in text.stdout
    assert run_tool(c, 1, "status").returncode == EXIT_NOT_QUORATE


def test_two_node_cluster_stays_quorate_when_one_is_killed(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2])
    for n in (1, 2):
        text = c.conf_path(n).read_text()
        quorum = "provider: corosync_votequorum\n"
        c.conf_path(n).write_text(text.replace(quorum, quorum + "  two_node: 1\n"))
    c.start_all()
    c.wait_ring([1, 2])
    code, q = tool_json(c, 1, "quorum")
    assert code == 0 and "2Node" in q["flags"] and "WaitForAll" in q["flags"], q
    assert q["expected_votes"] == 2 and q["quorum"] == 1
    c.kill(2)
    c.wait_ring([1], timeout_s=10.0)
    code, q = tool_json(c, 1, "quorum")
    assert code == 0 and q["quorate"] is True and q["total_votes"] == 1, q


# --- hostile and unauthorised clients -------------------------------------------------------------


def _raw(path: str, data: bytes) -> tuple[list[ipcproto.Frame], bool]:
    """Send raw bytes; return the frames answered within a second and whether the daemon closed."""
    decoder = ipcproto.FrameDecoder()
    frames: list[ipcproto.Frame] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(path)
        s.sendall(data)
        closed = False
        try:
            while chunk := s.recv(65536):
                frames += [f for f in decoder.feed(chunk) if isinstance(f, ipcproto.Frame)]
            closed = True
        except TimeoutError:
            pass
    return frames, closed


def _framed(header: bytes) -> bytes:
    return struct.pack(">II", 4 + len(header), len(header)) + header


@pytest.fixture
def public_link(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Hard-link a socket into a directory uid 65534 can traverse (pytest's tmp dirs are 0700);
    a hard link reaches the same socket, and the daemon still sees the caller's credentials."""
    made: list[Path] = []

    def link(path: str) -> str:
        where = Path(f"/tmp/cmk{os.getpid()}pub")
        where.mkdir(mode=0o755, exist_ok=True)
        made.append(where)
        target = where / "cmanlk.sock"
        target.unlink(missing_ok=True)
        os.link(path, target)
        return str(target)

    yield link
    for where in made:
        shutil.rmtree(where, ignore_errors=True)


def test_malformed_and_unauthorised_clients_get_errors_and_others_are_served(
    cluster_factory: Callable[..., Cluster], public_link: Callable[[str], str]
) -> None:
    c = cluster_factory([1, 2])
    c.start_all()
    c.wait_ring([1, 2])
    path = h.socket_path(c.run_dir(1))
    with Client.connect(path) as bystander:
        # a frame length past every bound: bad_frame, then the daemon hangs up
        frames, closed = _raw(path, b"\xff\xff\xff\xff garbage")
        assert [f.header.get("code") for f in frames] == ["bad_frame"] and closed
        frames, closed = _raw(path, b"GET / HTTP/1.0\r\n\r\n")
        assert [f.header.get("code") for f in frames] == ["bad_frame"] and closed
        # well framed, not JSON: bad_request, and the same connection still answers a hello
        hello = ipcproto.request(1, "hello", {"versions": [1]})
        frames, closed = _raw(path, _framed(b"{not json") + _framed(b"[1, 2]") + hello)
        kinds = [(f.kind, f.header.get("code")) for f in frames]
        assert kinds == [("error", "bad_request"), ("error", "bad_request"), ("reply", None)], kinds
        assert not closed
        # a request before hello
        frames, _ = _raw(path, ipcproto.request(7, "status"))
        assert [(f.header.get("id"), f.header.get("code")) for f in frames] == [(7, "hello_required")]

        # uid 65534 through setpriv: refused with permission_denied naming the rule
        link = public_link(path)
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        denied = h.tool(c.lab.ns(1), link, "status", prefix=prefix, python=SYSTEM_PYTHON)
        assert denied.returncode == 1, (denied.stdout, denied.stderr)
        assert "permission_denied" in denied.stderr and f"uid {NOBODY}" in denied.stderr, denied.stderr
        as_json = h.tool(c.lab.ns(1), link, "--json", "version", prefix=prefix, python=SYSTEM_PYTHON)
        assert json.loads(as_json.stdout)["daemon_error"] == "permission_denied"

        # the daemon kept serving: the connection opened before, and a new one
        assert bystander.status()["node_id"] == 1
        ipc = bystander.stats()["ipc"]
        assert ipc.get("bad_frame", 0) >= 2 and ipc.get("bad_request", 0) >= 2, ipc
        assert ipc.get("refused_permission_denied", 0) >= 2, ipc
    assert run_tool(c, 1, "quorum").returncode == 0
    assert c.alive(1)
