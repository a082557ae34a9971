"""cmanlk-tool against the in-memory backend through the real socket: human tables, --json
schemas (docs/cli-json.md), exit codes 0/1/2/3, privileged changes, not-supported requests,
monitor."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from cmanlk.client import cli
from cmanlk.runtime.backend import DlmStatus, KillNode
from cmanlk.types import NodeId, RingId
from tests.unit.ipcharness import Harness, harness

__all__ = ["harness"]  # the fixture, re-exported so pytest finds it here


def run(harness: Harness, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["-s", harness.path, *argv], out=out)
    return code, out.getvalue()


def test_status_human_output_and_exit_code(harness: Harness):
    harness.on_loop(harness.backend.change_membership, RingId(8, NodeId(1)), (NodeId(1), NodeId(2)))
    code, text = run(harness, "status")
    assert code == 0
    assert "Quorum information\n------------------\n" in text
    assert "Cluster name:     testcluster\n" in text and "Ring ID:          1.8\n" in text
    assert "Quorate:          Yes\n" in text and "Flags:            Quorate\n" in text
    assert "         1          1 node1 (local)\n" in text and "         2          1 node2\n" in text


def test_quorum_exit_code_is_2_when_not_quorate_as_corosync_quorumtool(harness: Harness):
    assert run(harness, "quorum")[0] == 0
    harness.backend.quorum.update(quorate=False, quorum=2, total_votes=1, expected_votes=3, wait_for_all=True)
    code, text = run(harness, "quorum")
    assert code == 2  # corosync-quorumtool -s: EXIT_NOT_QUORATE
    assert "Quorate:          No\n" in text and "Quorum:           2 Activity blocked\n" in text
    assert "Flags:            WaitForAll\n" in text
    code, text = run(harness, "--json", "quorum")
    assert code == 2
    body = json.loads(text)
    assert body == {
        "schema": 1,
        "command": "quorum",
        "quorate": False,
        "expected_votes": 3,
        "highest_expected": 3,
        "total_votes": 1,
        "quorum": 2,
        "flags": ["WaitForAll"],
        "wait_for_all_status": False,
        "node_id": 1,
        "ring_id": "1.4",
    }
    assert run(harness, "status", "--json")[0] == 2


def test_json_schemas_of_read_commands(harness: Harness):
    harness.on_loop(harness.backend.change_membership, RingId(8, NodeId(1)), (NodeId(1), NodeId(2)))
    code, text = run(harness, "nodes", "--json")
    assert code == 0
    nodes = json.loads(text)
    assert nodes["schema"] == 1 and nodes["command"] == "nodes"
    assert nodes["nodes"][0] == {
        "nodeid": 1,
        "name": "node1",
        "votes": 1,
        "state": "member",
        "local": True,
        "addresses": ["192.0.2.1"],
    }
    assert [(n["nodeid"], n["state"]) for n in nodes["nodes"]] == [(1, "member"), (2, "member"), (3, "dead")]
    status = json.loads(run(harness, "--json", "status")[1])
    keys = {"schema", "command", "node_id", "cluster_name", "ring_id", "state", "members", "quorum", "nodes"}
    assert set(status) == keys
    assert status["members"] == [1, 2] and status["quorum"]["quorate"] is True
    harness.backend.links.append({"nodeid": 2, "link": 0, "up": True, "address": "192.0.2.2"})
    links = json.loads(run(harness, "links", "--json")[1])
    assert links["links"] == [{"nodeid": 2, "link": 0, "up": True, "address": "192.0.2.2"}]
    assert links["local"] == [] and links["node_id"] == 1
    assert json.loads(run(harness, "groups", "--json")[1])["groups"] == []
    version = json.loads(run(harness, "version", "--json")[1])
    assert version["daemon_version"] == "memory" and version["daemon_protocol"] == 2


def test_nodes_and_groups_tables(harness: Harness):
    from cmanlk.client import Client

    with Client.connect(harness.path) as c:
        c.cpg_join("fence:default", pid=321)
        code, text = run(harness, "groups")
        assert code == 0
        assert text.splitlines()[1].split() == ["fence:default", "1", "1:321"]
    text = run(harness, "nodes")[1]
    assert text.splitlines()[0].split() == ["Nodeid", "Votes", "State", "Name"]
    assert text.splitlines()[1].split() == ["1", "1", "member", "node1", "(local)"]


def test_changes_and_errors(harness: Harness, capsys: pytest.CaptureFixture[str]):
    assert run(harness, "expected", "3") == (0, "expected votes set to 3\n")
    assert harness.backend.quorum["expected_votes"] == 3
    assert run(harness, "votes", "2", "-n", "2")[0] == 0
    code, _ = run(harness, "expected", "0")
    assert code == 1 and "invalid_param" in capsys.readouterr().err
    for argv in (("kill", "2"), ("fence-ack", "2"), ("dlm",), ("leave",)):
        code, _ = run(harness, *argv)
        assert code == 1
        assert "not_supported" in capsys.readouterr().err
    harness.backend.admin_results[DlmStatus] = {"lockspaces": [{"name": "gfs2fs", "state": "running"}]}
    code, text = run(harness, "dlm")
    assert code == 0 and text.splitlines()[1].split()[:2] == ["gfs2fs", "running"]


def test_links_shows_addresses_and_counters_as_corosync_cfgtool_s(harness: Harness):
    harness.backend.link_status.append({
        "index": 0, "interface": "eth0", "local_address": "192.0.2.1", "up": True, "reason": "",
        "peers": [{"node": 2, "address": "192.0.2.2", "reachable": True, "reason": ""},
                  {"node": 3, "address": "192.0.2.3", "reachable": False, "reason": "never heard from"}],
        "counters": {"sent": 12, "received": 10, "dropped_unlisted_source": 1},
    })
    code, text = run(harness, "links")
    assert code == 0
    assert text.splitlines() == [
        "Local node ID 1",
        "LINK ID 0",
        "\taddr\t= 192.0.2.1 (eth0)",
        "\tstate\t= up",
        "\tstatus:",
        "\t\tnodeid:          1:\tlocalhost",
        "\t\tnodeid:          2:\tconnected (192.0.2.2)",
        "\t\tnodeid:          3:\tdisconnected (192.0.2.3: never heard from)",
        "\tcounters: dropped_unlisted_source 1, received 10, sent 12",
    ]
    assert json.loads(run(harness, "--json", "links")[1])["local"][0]["counters"]["sent"] == 12


def test_usage_and_unreachable_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # 2 is "not quorate" (corosync-quorumtool); a usage error is EX_USAGE
    assert cli.main(["expected"]) == 64
    assert cli.main(["no-such-command"]) == 64
    assert cli.main([]) == 64
    assert cli.main(["--help"]) == 0
    code = cli.main(["-s", str(tmp_path / "none.sock"), "status"], out=io.StringIO())
    assert code == 1 and "is cmanlkd running?" in capsys.readouterr().err


def test_monitor_prints_current_view_then_changes(harness: Harness):
    out = io.StringIO()
    done = threading.Event()
    result: list[int] = []

    def monitor() -> None:
        result.append(cli.main(["-s", harness.path, "--json", "monitor", "--count", "2"], out=out))
        done.set()

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    for _ in range(100):  # wait until the monitor's first view is out, so it is subscribed
        if out.getvalue():
            break
        done.wait(0.05)
    harness.on_loop(harness.backend.change_membership, RingId(12, NodeId(1)), (NodeId(1), NodeId(3)))
    assert done.wait(10) and result == [0]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["data"]["current"]) for x in lines] == [("track", True), ("track", False)]
    assert lines[1]["data"]["changes"] == [{"nodeid": 3, "name": "node3", "change": "joined"}]


def test_kill_reports_what_the_daemon_did(harness: Harness):
    harness.backend.admin_results[KillNode] = {"result": "kill_sent", "nodeid": 2}
    code, text = run(harness, "kill", "2")
    assert code == 0 and text == "node 2: kill request sent; it leaves the cluster and its daemon exits\n"
    assert harness.backend.admin_log[-1] == KillNode(NodeId(2))
    assert run(harness, "kill", "2", "--reason", "maintenance")[0] == 0
    assert harness.backend.admin_log[-1] == KillNode(NodeId(2), "maintenance")
    harness.backend.admin_results[KillNode] = {"result": "leaving", "node_id": 1}
    assert run(harness, "kill", "1") == (0, "node 1 is this node: leaving the cluster\n")
