"""The status snapshot of a real one-node Node (udpu on 127.0.0.1, the real Stack): one frozen
object per change, shared by every reader in between; counters read afresh; status.json, the
IPC answers and the D-Bus properties rendered from the same object."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from cmanlk.config import load_config
from cmanlk.runtime.backend import NodeBackend
from cmanlk.runtime.dbus_bridge import DbusBridge
from cmanlk.runtime.dbus_interface import property_values
from cmanlk.runtime.node import Node
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import CpgJoin, Handle
from cmanlk.stack import ServiceRequest, SetVotes
from cmanlk.types import NodeId

from .test_daemon_dlm_exit import _conf


async def _until(predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls the node's state, bounded by the timeout
            await asyncio.sleep(0.02)


def test_one_snapshot_per_change_shared_by_every_reader(tmp_path: Path) -> None:
    config = load_config(str(_conf(tmp_path, "no")))

    async def body() -> None:
        node = Node(config, NodeId(1), rng=random.Random(1))
        running = asyncio.create_task(node.run())
        try:
            await _until(lambda: node.snapshot().members == (NodeId(1),), 10)
            first = node.snapshot()
            assert node.snapshot() is first  # nothing changed: the same object
            assert first.quorate is True and first.state == "OPERATIONAL"
            # A votequorum change (no membership change) is a change.
            await node.request(lambda t, rid: SetVotes(t, NodeId(1), 2, rid))
            await _until(lambda: node.snapshot().votes == 2, 5)
            second = node.snapshot()
            assert second is not first and second.quorum is not None and second.quorum.total_votes == 2
            # A cpg process list change is one too, also with no local handle to notify.
            join = CpgJoin(Handle(7), b"grp", 42)
            await node.request(lambda t, rid: ServiceRequest(t, CPG_SERVICE, join, rid))
            await _until(lambda: [g.name for g in node.snapshot().groups] == ["grp"], 5)
            third = node.snapshot()
            assert node.snapshot() is third
            # Every reader renders the same object.
            backend = NodeBackend(node)
            assert backend.snapshot() is third and DbusBridge(backend).snapshot() is third
            assert property_values(third)["Votes"] == 2
            # Counters are read afresh, not cached with the snapshot.
            tokens = node.counters().stats["totem"]["tokens_seen"]  # type: ignore[index]
            await _until(lambda: node.counters().stats["totem"]["tokens_seen"] > tokens, 5)  # type: ignore[index]
            assert node.snapshot() is third
        finally:
            node.request_leave()
            await asyncio.wait_for(running, 10)
        status = json.loads((Path(config.cmanlk.run_dir) / "status.json").read_text())
        assert status["quorum"]["total_votes"] == 2 and status["members"] == [1]
        assert status["state"] == "LEFT" and "totem" in status["stats"]

    asyncio.run(asyncio.wait_for(body(), 40))
