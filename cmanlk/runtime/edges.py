"""The edges that run beside the node, as its companions: the IPC server always, the DLM runtime
when `cmanlk { dlm }` asks for it, D-Bus when wanted (docs/config.md). All of them see the
daemon through one Backend (cmanlk/runtime/backend.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cmanlk.config import ClusterConfig
from cmanlk.runtime.backend import NodeBackend
from cmanlk.runtime.dbus_bridge import dbus_companion, dbus_wanted
from cmanlk.runtime.ipc import IpcConfig, IpcServer
from cmanlk.runtime.node import Node

log = logging.getLogger("cmanlk.daemon")

Companion = Callable[[], Coroutine[Any, Any, None]]


def companions(node: Node, config: ClusterConfig) -> tuple[Companion, ...]:
    """The coroutine functions to run under the node (Node.companions).

    Raises ConfigError when the DLM runtime's configuration is invalid (a fence device).
    """
    from cmanlk.runtime.dlmd import build_dlm_daemon

    dlmd = build_dlm_daemon(node, config)  # None unless cmanlk { dlm: yes|auto }
    backend = NodeBackend(node, dlmd)
    socket_path = str(Path(config.cmanlk.run_dir) / "cmanlk.sock")
    ipc_config = IpcConfig(path=socket_path, group=config.cmanlk.ipc_group)

    async def ipc() -> None:
        server = IpcServer(backend, ipc_config)
        await server.start()  # OSError (path held by a live server) stops the daemon: exit 3
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    out: list[Companion] = [ipc]
    if dlmd is not None:
        out.append(dlmd.run)
    if dbus_wanted(config):
        try:
            out.append(dbus_companion(backend))
        except ImportError as exc:
            log.warning("D-Bus disabled: %s", exc)
    return tuple(out)
