"""`cmanlk-tool dlm [--json]`: lockspaces (members, stopped/started, what they wait for) and the
fencing state (nodes waiting for fencing, since when, attempts, the last agent result), from the
daemon's `dlm` reply (cmanlk.runtime.dlmd.DlmDaemon.status) through the real socket."""

from __future__ import annotations

import io
import json

from cmanlk.client import cli
from cmanlk.runtime.backend import DlmStatus
from tests.unit.ipcharness import Harness, harness

__all__ = ["harness"]

# the shape DlmDaemon.status() answers on node 1 while node 3 failed and its agent failed once
# and node 4 (no fence device) waits for `cmanlk-tool fence-ack 4`
REPLY = {
    "cluster": {"configured": True, "quorate": True, "members": [1, 2], "comms": [1, 2]},
    "lockspaces": [
        {"name": "gfs0", "global_id": 3603097754, "state": "stopped", "members": [1, 2],
         "kernel_nodes": [1, 2, 3], "since_ns": 5_000_000_000, "for_ns": 12_000_000_000,
         "waiting_for": ["fencing of node 3", "fencing of node 4"]},
        {"name": "lab1", "global_id": 943331636, "state": "started", "members": [1, 2],
         "kernel_nodes": [1, 2], "since_ns": 1_000_000_000, "for_ns": 16_000_000_000, "waiting_for": []},
    ],
    "fencing": {"enabled": True, "fencer": True, "victims": [
        {"nodeid": 3, "state": "retry", "since_ns": 5_000_000_000, "for_ns": 12_300_000_000, "attempts": 1,
         "last_exit": 1, "next_attempt_ns": 18_000_000_000, "fenced_at_ns": None, "how": None,
         "has_device": True,
         "agent": {"exit_code": 1, "seconds": 2.5,
                   "output_tail": "Connecting...\nFailed: Unable to obtain correct plug status\n"}},
        {"nodeid": 4, "state": "waiting", "since_ns": 5_000_000_000, "for_ns": 12_300_000_000, "attempts": 0,
         "last_exit": None, "next_attempt_ns": None, "fenced_at_ns": None, "how": None, "has_device": False,
         "agent": None},
        {"nodeid": 5, "state": "fenced", "since_ns": 1_000_000_000, "for_ns": 16_000_000_000, "attempts": 0,
         "last_exit": None, "next_attempt_ns": None, "fenced_at_ns": 2_000_000_000, "how": "ack",
         "has_device": False, "agent": None},
    ]},
    "daemon": {"ready": True, "node_id": 1, "kernel_errors": {}, "uevents": 7},
    "dropped": {},
}


def run(harness: Harness, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["-s", harness.path, *argv], out=out)
    return code, out.getvalue()


def test_json_has_lockspaces_with_stopped_flag_and_fencing_with_the_waiting_nodes(harness: Harness) -> None:
    harness.backend.admin_results[DlmStatus] = REPLY
    code, text = run(harness, "--json", "dlm")
    body = json.loads(text)
    assert code == 0 and body["schema"] == 1 and body["command"] == "dlm"
    assert body["cluster"] == REPLY["cluster"]
    assert [(ls["name"], ls["state"], ls["stopped"], ls["members"]) for ls in body["lockspaces"]] == [
        ("gfs0", "stopped", True, [1, 2]), ("lab1", "started", False, [1, 2])]
    assert body["lockspaces"][0]["waiting_for"] == ["fencing of node 3", "fencing of node 4"]
    assert body["fencing"]["waiting"] == [3, 4]
    assert body["fencing"]["fencer"] is True
    v3 = body["fencing"]["victims"][0]
    assert (v3["nodeid"], v3["state"], v3["attempts"], v3["for_ns"]) == (3, "retry", 1, 12_300_000_000)
    assert v3["agent"]["exit_code"] == 1 and "plug status" in v3["agent"]["output_tail"]
    assert body["daemon"]["node_id"] == 1


def test_human_output_shows_what_each_lockspace_waits_for_and_each_victim(harness: Harness) -> None:
    harness.backend.admin_results[DlmStatus] = REPLY
    code, text = run(harness, "dlm")
    lines = text.splitlines()
    assert code == 0
    assert lines[0] == "Kernel DLM cluster: configured, members [1 2]"
    assert lines[2].split()[:4] == ["gfs0", "stopped", "1", "2"]
    assert lines[2].endswith("fencing of node 3, fencing of node 4")
    assert lines[3].split() == ["lab1", "started", "1", "2", "-"]
    assert lines[4] == "Fencing: enabled, this node is the fencer"
    v3, v4, v5 = lines[6:9]
    assert v3.split()[:4] == ["3", "retry", "12.3s", "1"]
    assert v3.endswith("exit 1: Failed: Unable to obtain correct plug status")
    assert v4.split()[:4] == ["4", "waiting", "12.3s", "0"]
    assert v4.endswith("no device: waiting for fence-ack")
    assert v5.split()[:2] == ["5", "fenced"] and "(ack)" in v5


def test_a_daemon_without_fencing_data_still_lists_lockspaces(harness: Harness) -> None:
    harness.backend.admin_results[DlmStatus] = {"lockspaces": [{"name": "gfs2fs", "state": "started"}]}
    code, text = run(harness, "dlm")
    assert code == 0 and text.splitlines()[1].split()[:2] == ["gfs2fs", "started"]
    body = json.loads(run(harness, "--json", "dlm")[1])
    assert body["fencing"] == {"victims": [], "waiting": []} and body["lockspaces"][0]["stopped"] is False
