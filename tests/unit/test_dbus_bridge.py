"""The daemon's D-Bus bridge answers what docs/dbus.md promises: FenceAck reaches DLM control,
`Lockspaces` is filled from it, and lockspace state changes become LockspaceStateChanged notices.
The DLM runtime is an in-memory stand-in behind the real NodeBackend, or the MemoryBackend twin
(this is the bridge's logic only; the daemon on a real bus is tests/system/test_daemon_dbus.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from cmanlk.errors import ErrorCode, UsageError
from cmanlk.runtime import dbus_status as ds
from cmanlk.runtime.backend import MemoryBackend, NodeBackend
from cmanlk.runtime.dbus_bridge import DbusBridge
from cmanlk.runtime.status import LockspaceView
from cmanlk.types import NodeId


@dataclass
class StubDlm:
    lockspaces: list[dict[str, Any]] = field(default_factory=list)
    acked: list[NodeId] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"lockspaces": self.lockspaces}

    def fence_ack(self, nodeid: NodeId) -> dict[str, Any]:
        if nodeid == 1:
            raise UsageError(ErrorCode.INVALID_PARAM, "a node cannot acknowledge its own fencing")
        self.acked.append(nodeid)
        return {"result": "acknowledged"}


class StubNode:
    """Only what NodeBackend reads for a snapshot: one that does not change."""

    def __init__(self) -> None:
        self.snap = MemoryBackend().snapshot()

    def snapshot(self) -> Any:
        return self.snap


class Recorder:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, notice: Any) -> None:
        self.published.append(notice)


def test_fence_ack_reaches_dlm_control() -> None:
    dlm = StubDlm()
    bridge = DbusBridge(NodeBackend(StubNode(), dlm))  # type: ignore[arg-type]
    assert asyncio.run(bridge.submit(ds.FenceAck(NodeId(2)))) == "fence ack for node 2: acknowledged"
    assert dlm.acked == [2]
    with pytest.raises(UsageError) as own:
        asyncio.run(bridge.submit(ds.FenceAck(NodeId(1))))
    assert own.value.code is ErrorCode.INVALID_PARAM


def test_fence_ack_without_dlm_control_says_why() -> None:
    bridge = DbusBridge(NodeBackend(StubNode()))  # type: ignore[arg-type]
    with pytest.raises(UsageError) as off:
        asyncio.run(bridge.submit(ds.FenceAck(NodeId(2))))
    assert off.value.code is ErrorCode.NOT_SUPPORTED and "dlm: no" in str(off.value)


def test_lockspaces_are_filled_and_their_changes_published() -> None:
    dlm = StubDlm([{"name": "gfs0", "state": "joining"}])
    backend = NodeBackend(StubNode(), dlm)  # type: ignore[arg-type]
    bridge = DbusBridge(backend)
    recorder = Recorder()
    bridge.service = recorder
    assert bridge.snapshot().lockspaces == (LockspaceView("gfs0", "joining"),)
    assert backend.snapshot() is backend.snapshot()  # the same object while nothing changed
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


def test_memory_backend_lists_its_lockspaces() -> None:
    memory = MemoryBackend()
    memory.lockspaces = [{"name": "gfs0", "state": "started"}]
    assert memory.snapshot().lockspaces == (LockspaceView("gfs0", "started"),)
