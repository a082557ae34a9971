"""An IpcServer with its MemoryBackend on an event loop in a thread, for tests that talk to it
through the real socket (the CLI and client tests share it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from cmanlk.runtime.backend import MemoryBackend
from cmanlk.runtime.ipc import IpcConfig, IpcServer


class Harness:
    """An IpcServer and its MemoryBackend on an event loop in a thread; tests talk through the socket."""

    def __init__(self, config: IpcConfig) -> None:
        self.config = config
        self.path = config.path
        self.backend = MemoryBackend(node_id=1, cluster_name="testcluster")
        self.backend.names.update({2: "node2", 3: "node3"})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = IpcServer(self.backend, config)
        self.run(self.server.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def on_loop(self, fn: Any, *args: Any) -> Any:
        """Call `fn(*args)` on the loop's thread; return its result or raise its exception here."""
        done: Future[Any] = Future()

        def call() -> None:
            try:
                done.set_result(fn(*args))
            except Exception as exc:  # handed to the test thread
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return done.result(10)

    def close(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(IpcConfig(path=str(tmp_path / "cmanlk.sock"), request_timeout_s=2.0))
    yield h
    h.close()
