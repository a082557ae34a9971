"""The libqb server adapter: real sockets, real /dev/shm rings, the Python libqb client on the other end.

The faces run over a one-node simulated Stack (tests/unit/libqbfaces.py); the server listens on
names private to this test run (a real corosync may run beside us), in both channel types.
Hostile clients (garbage handshakes, truncated files, clients that never read) cost the daemon
nothing but a counter and their own connection.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import struct
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmanlk.client.corosync import Cmap, CmapError
from cmanlk.client.libqb import LibqbClient, LibqbError
from cmanlk.errors import ErrorCode
from cmanlk.runtime.libqb import setup
from cmanlk.runtime.libqb.server import LibqbServer
from cmanlk.services.cmap.store import text, u8
from tests.unit.libqbfaces import FaceCluster, cmap_get, cpg_join, cpg_mcast, error_of, header, id_of


class Harness:
    def __init__(
        self, channel: str, shm: Path, ready: bool = True, allow: bool = True, **options: int
    ) -> None:
        self.cluster = FaceCluster(1)
        self.cluster.boot()
        self.cluster.settle()
        self.view = self.cluster.view(1)
        tag = f"cmanlk-test-{os.getpid()}-{id(self)}"
        self.names = {name: f"{tag}-{name}" for name in self.view.faces}
        self.ready = ready
        self.server = LibqbServer(
            self.view.faces.values(),
            allows=lambda uid, gid: allow and self.view.cmap.allows(uid, gid),
            ready=lambda: self.ready,
            ipc_type=channel,
            shm_dir=str(shm),
            pid_file=shm / "libqb.pid",
            names=self.names,
            **options,
        )

    async def connect(self, service: str) -> LibqbClient:
        return await asyncio.to_thread(LibqbClient.connect, self.names[service])

    async def call(self, client: LibqbClient, request: bytes) -> bytes:
        return await asyncio.to_thread(client.call, request)

    def pump(self, span_ms: int = 500) -> None:
        """Run the simulated ring and hand the faces' events to the server."""
        self.cluster.run(span_ms)
        self.server.deliver(self.view.outbox)
        self.view.outbox.clear()
        self.server.wake()


def in_loop(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """The test body runs in a fresh event loop, with the server."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


@pytest.fixture
def shm() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmanlk-libqb-", dir="/dev/shm") as d:
        yield Path(d)


@pytest.fixture(params=["shm", "socket"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def connection_dirs(shm: Path) -> list[Path]:
    return [p for p in shm.iterdir() if p.is_dir() and p.name.startswith("qb-")]


@in_loop
async def test_cmap_get_set_and_iterate_over_both_channel_types(shm: Path, channel: str) -> None:
    h = Harness(channel, shm)
    await h.server.start()
    try:
        client = await h.connect("cmap")
        assert client.kind == (setup.IPC_SHM if channel == "shm" else setup.IPC_SOCKET)
        cmap = Cmap(client)
        assert await asyncio.to_thread(cmap.get, "totem.cluster_name") == text("faces")
        await asyncio.to_thread(cmap.set, "uidgid.gid.4000", u8(1))
        assert h.view.cmap.allows(1000, 4000)
        keys = await asyncio.to_thread(lambda: list(cmap.keys("nodelist.node.0.")))
        assert [k for k, _, _ in keys] == [
            "nodelist.node.0.name",
            "nodelist.node.0.nodeid",
            "nodelist.node.0.ring0_addr",
        ]
        with pytest.raises(CmapError) as info:
            await asyncio.to_thread(cmap.set, "totem.transport", text("knet"))
        assert info.value.code is ErrorCode.PERMISSION_DENIED and info.value.error == 11
        assert len(connection_dirs(shm)) == 1
        client.close()
        for _ in range(100):
            if not connection_dirs(shm):
                break
            await asyncio.sleep(0.01)
        assert connection_dirs(shm) == []  # its files went with it
    finally:
        await h.server.close()


@in_loop
async def test_events_reach_the_client_and_tracks_follow_other_connections(shm: Path, channel: str) -> None:
    h = Harness(channel, shm)
    await h.server.start()
    try:
        watcher = Cmap(await h.connect("cmap"))
        await asyncio.to_thread(watcher.track, "runtime.test.")
        writer = Cmap(await h.connect("cmap"))
        await asyncio.to_thread(writer.set, "runtime.test.a", u8(7))
        change = await asyncio.to_thread(lambda: next(watcher.changes(5.0)))
        assert (change.key, change.new, change.old) == ("runtime.test.a", u8(7), None)
        cpg = await h.connect("cpg")
        assert error_of(await h.call(cpg, cpg_join(b"grp", 99))) == ErrorCode.OK
        h.pump()
        confchg = await asyncio.to_thread(cpg.event, 5.0)
        assert confchg is not None and id_of(confchg) == 4
        await asyncio.to_thread(cpg.send, cpg_mcast(b"over the ring"))
        await asyncio.sleep(0.05)
        h.pump()
        deliveries = []
        while True:
            event = await asyncio.to_thread(cpg.event, 2.0)
            if event is None:
                break
            deliveries.append(event)
            if id_of(event) == 5:
                break
        assert deliveries[-1][184:] == b"over the ring"
        for client in (watcher.client, writer.client, cpg):
            client.close()
    finally:
        await h.server.close()


@in_loop
async def test_connections_are_refused_until_ready_and_for_strangers(shm: Path) -> None:
    h = Harness("shm", shm, ready=False)
    await h.server.start()
    try:
        with pytest.raises(LibqbError) as info:
            await h.connect("quorum")
        assert info.value.errno == errno.EAGAIN
        h.ready = True
        client = await h.connect("quorum")
        reply = await h.call(client, header(3, 16))
        assert struct.unpack_from("<I", reply, 24)[0] == 1
        client.close()
    finally:
        await h.server.close()
    strict = Harness("shm", shm, allow=False)
    await strict.server.start()
    try:
        with pytest.raises(LibqbError) as info:
            await strict.connect("cmap")
        assert info.value.errno == errno.EACCES
        assert connection_dirs(shm) == []  # nothing is created for a refused client
    finally:
        await strict.server.close()


@in_loop
async def test_a_garbage_handshake_and_a_silent_client_are_closed(shm: Path) -> None:
    h = Harness("shm", shm)
    await h.server.start()
    try:
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.connect(setup.abstract_address(h.names["cmap"]))
        bad.sendall(struct.pack("<i4xi4xI4x", 5, 24, 1 << 20))  # not AUTHENTICATE
        bad.settimeout(5.0)
        assert await asyncio.to_thread(bad.recv, 100) == b""
        bad.close()
        assert h.server.stats.get("setup_not_authenticate") == 1
        client = await h.connect("cmap")  # the server is still fine
        assert error_of(await h.call(client, cmap_get("totem.token"))) == ErrorCode.OK
        client.close()
    finally:
        await h.server.close()


@in_loop
async def test_a_client_that_truncates_its_ring_is_disconnected_not_the_daemon(shm: Path) -> None:
    h = Harness("shm", shm)
    await h.server.start()
    try:
        client = await h.connect("cmap")
        (directory,) = connection_dirs(shm)
        os.truncate(directory / "qb-request-cmap-data", 0)
        client.setup.send(b"\1")  # as if a request were queued
        for _ in range(200):
            if not h.server.sessions:
                break
            await asyncio.sleep(0.01)
        assert not h.server.sessions and h.server.stats.get("channel_broken") == 1
        client.close()
        other = await h.connect("cmap")
        assert error_of(await h.call(other, cmap_get("totem.token"))) == ErrorCode.OK
        other.close()
    finally:
        await h.server.close()


@in_loop
async def test_a_client_that_never_reads_its_events_is_throttled_then_disconnected(shm: Path) -> None:
    h = Harness("shm", shm, queue_bytes=64 * 1024, queue_events=64)
    await h.server.start()
    try:
        sleeper = await h.connect("cpg")
        (sleeper_handle,) = h.server.sessions
        assert error_of(await h.call(sleeper, cpg_join(b"flood", 7))) == ErrorCode.OK
        h.pump()
        throttled = False
        for _ in range(2000):  # its own messages come back to it: its ring fills, then its queue
            try:
                await asyncio.to_thread(sleeper.send, cpg_mcast(bytes(4000)))
            except LibqbError as exc:
                assert exc.errno == errno.EAGAIN
                throttled = True
                break
            h.pump(20)
        assert throttled and h.server.sessions  # throttled: its sends wait, its backlog is bounded
        sender = await h.connect("cpg")
        assert error_of(await h.call(sender, cpg_join(b"flood", 8))) == ErrorCode.OK
        for _ in range(2000):  # another member keeps talking: the sleeper's backlog passes the bound
            await asyncio.to_thread(sender.send, cpg_mcast(bytes(4000)))
            h.pump(20)
            while await asyncio.to_thread(sender.event, 0.0) is not None:
                pass
            if sleeper_handle not in h.server.sessions:
                break
        assert sleeper_handle not in h.server.sessions and h.server.stats.get("disconnect_too_slow") == 1
        sleeper.close()
        sender.close()
    finally:
        await h.server.close()


@in_loop
async def test_directories_of_a_dead_earlier_daemon_are_removed_at_start(shm: Path) -> None:
    stale = shm / "qb-999999-1234-7-abcdef"
    stale.mkdir()
    (stale / "qb-request-cpg-header").write_bytes(b"x")
    (shm / "libqb.pid").write_text("999999\n")
    alive = shm / f"qb-{os.getppid()}-1-2-keep"
    alive.mkdir()
    h = Harness("shm", shm)
    await h.server.start()
    await h.server.close()
    assert not stale.exists() and alive.exists()
    assert h.server.stats.get("stale_removed") == 1
