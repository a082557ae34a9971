"""The daemon's D-Bus bridge answers what docs/dbus.md promises: FenceAck reaches DLM control,
`Lockspaces` is filled from it, and lockspace state changes become LockspaceStateChanged notices.
The node and DLM control are in-memory stand-ins (this is the bridge's logic only; the daemon on a
real bus is tests/system/test_daemon_dbus.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from cmanlk.config import parse_config
from cmanlk.daemon import DbusBridge
from cmanlk.errors import UsageError
from cmanlk.runtime import dbus_status as ds
from cmanlk.types import NO_RING, NodeId

CONFIG = parse_config(
    "totem {\n  version: 2\n  cluster_name: b\n  transport: udpu\n}\n"
    "nodelist {\n  node {\n    ring0_addr: 10.0.0.1\n    nodeid: 1\n  }\n"
    "  node {\n    ring0_addr: 10.0.0.2\n    nodeid: 2\n  }\n}\n"
)


class NoLinks:
    def links(self) -> list[Any]:
        return []


@dataclass
class StubNode:
    config: Any = CONFIG
    me: int = 1
    members: tuple[int, ...] = (1,)
    ring_id: Any = NO_RING
    quorum_state: Any = None
    transport: Any = field(default_factory=NoLinks)


@dataclass
class StubDlm:
    lockspaces: list[dict[str, Any]] = field(default_factory=list)
    acked: list[NodeId] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"lockspaces": self.lockspaces}

    def fence_ack(self, nodeid: NodeId) -> dict[str, Any]:
        if nodeid == 1:
            raise UsageError("invalid_param", "a node cannot acknowledge its own fencing")
        self.acked.append(nodeid)
        return {"result": "acknowledged"}


class Recorder:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, notice: Any) -> None:
        self.published.append(notice)


def test_fence_ack_reaches_dlm_control() -> None:
    dlm = StubDlm()
    bridge = DbusBridge(StubNode(), dlm)  # type: ignore[arg-type]
    assert asyncio.run(bridge.submit(ds.FenceAck(NodeId(2)))) == "fencing of node 2 acknowledged"
    assert dlm.acked == [2]
    with pytest.raises(UsageError) as own:
        asyncio.run(bridge.submit(ds.FenceAck(NodeId(1))))
    assert own.value.code == "invalid_param"


def test_fence_ack_without_dlm_control_says_why() -> None:
    bridge = DbusBridge(StubNode())  # type: ignore[arg-type]
    with pytest.raises(UsageError) as off:
        asyncio.run(bridge.submit(ds.FenceAck(NodeId(2))))
    assert off.value.code == "not_supported" and "dlm: no" in str(off.value)


def test_lockspaces_are_filled_and_their_changes_published() -> None:
    dlm = StubDlm([{"name": "gfs0", "state": "joining"}])
    bridge = DbusBridge(StubNode(), dlm)  # type: ignore[arg-type]
    recorder = Recorder()
    bridge.service = recorder
    assert bridge.snapshot().lockspaces == (ds.LockspaceInfo("gfs0", "joining"),)
    bridge.poll_once()
    dlm.lockspaces = [{"name": "gfs0", "state": "running"}, {"name": "lab", "state": "joining"}]
    bridge.poll_once()
    bridge.poll_once()  # nothing changed: nothing published
    dlm.lockspaces = [{"name": "lab", "state": "joining"}]
    bridge.poll_once()
    assert recorder.published == [
        ds.LockspaceNotice("gfs0", "joining"),
        ds.LockspaceNotice("gfs0", "running"),
        ds.LockspaceNotice("lab", "joining"),
        ds.LockspaceNotice("gfs0", "removed"),
    ]
