"""The D-Bus edge against a real dbus-daemon (system-like private bus with the project's policy).

The service runs against an in-memory backend; the checks use real external clients (busctl,
gdbus, also as uid 65534) and a dbus-fast client: properties, signals with their contents,
introspection equal to dbus/org.cmanlk.Cluster1.xml, root-only privileged methods (refused by the
policy and, where the policy lets the call through, by the service's uid check), a stalled bus
(dbus-daemon stopped with SIGSTOP) that costs counted signals but never blocks the publisher,
and a bus restart the service survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from cmanlk.runtime.dbus_service import BUS_NAME, INTERFACE, MAX_PENDING_ADMIN_CALLS, OBJECT_PATH, DbusService
from cmanlk.runtime.dbus_status import (
    LinkNotice,
    LockspaceNotice,
    SetExpectedVotes,
    SetVotes,
    StatusNotice,
)
from cmanlk.runtime.status import PathView
from cmanlk.types import NodeId
from tests.adapters.dbusbus import REPO, MemoryCluster, PrivateBus, run, with_quorum

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("dbus-daemon", "busctl", "gdbus", "setpriv")),
        reason="needs root, dbus-daemon, busctl (systemd), gdbus (libglib2.0-bin) and setpriv",
    ),
]

SIGNAL_WAIT_S = 5.0
INTERFACE_FILE = REPO / "dbus" / "org.cmanlk.Cluster1.xml"


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (no pytest-asyncio dependency)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


@pytest.fixture
def bus():
    with PrivateBus("project") as b:
        yield b


@pytest.fixture
def open_bus():
    with PrivateBus("open") as b:
        yield b


@contextlib.asynccontextmanager
async def serving(bus: PrivateBus, backend: MemoryCluster, **options: Any) -> AsyncIterator[DbusService]:
    service = DbusService(backend, **options)
    assert await service.start(bus.address, wait_s=5.0), "service did not acquire its name"
    try:
        yield service
    finally:
        await service.stop()


class SignalClient:
    """A dbus-fast client that collects every signal org.cmanlk.Cluster sends."""

    def __init__(self, client: MessageBus) -> None:
        self.client = client
        self.signals: asyncio.Queue[Message] = asyncio.Queue()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, address: str) -> AsyncIterator[SignalClient]:
        client = await MessageBus(bus_address=address).connect()
        self = cls(client)

        def collect(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.path == OBJECT_PATH:
                self.signals.put_nowait(msg)

        client.add_message_handler(collect)
        await client.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}'"],
            )
        )
        try:
            yield self
        finally:
            client.disconnect()

    async def next(self) -> tuple[str, list[Any]]:
        async with asyncio.timeout(SIGNAL_WAIT_S):
            msg = await self.signals.get()
        return str(msg.member), plain(list(msg.body))

    async def proxy(self) -> Any:
        node = await self.client.introspect(BUS_NAME, OBJECT_PATH)
        return self.client.get_proxy_object(BUS_NAME, OBJECT_PATH, node).get_interface(INTERFACE)


async def eventually(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> None:
    """Wait until `predicate()` holds, polling every `step_s`; fail after `timeout_s`."""
    for _ in range(int(timeout_s / step_s) + 1):
        if predicate():
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"condition not reached within {timeout_s} s")


def plain(value: Any) -> Any:
    """Structs arrive as tuples or lists depending on the path taken: compare as lists."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


async def busctl(bus: PrivateBus, *args: str, as_nobody: bool = False) -> tuple[int, str, str]:
    return await run("busctl", f"--address={bus.address}", *args, as_nobody=as_nobody)


async def get_property(bus: PrivateBus, name: str, as_nobody: bool = False) -> Any:
    status, out, err = await busctl(
        bus, "get-property", "--json=short", BUS_NAME, OBJECT_PATH, INTERFACE, name, as_nobody=as_nobody
    )
    assert status == 0, err
    return json.loads(out)["data"]


async def gdbus_call(
    bus: PrivateBus, method: str, *args: str, as_nobody: bool = False
) -> tuple[int, str, str]:
    return await run(
        "gdbus",
        "call",
        "--address",
        bus.address,
        "--dest",
        BUS_NAME,
        "--object-path",
        OBJECT_PATH,
        "--method",
        f"{INTERFACE}.{method}",
        *args,
        as_nobody=as_nobody,
    )


def interface_shape(xml_text: str) -> list[tuple[str, str, tuple[tuple[str, ...], ...]]]:
    """Members of org.cmanlk.Cluster1 in introspection XML, comments and layout ignored."""
    root = ET.fromstring(xml_text)
    ifaces = [i for i in root.iter("interface") if i.get("name") == INTERFACE]
    assert len(ifaces) == 1
    shape = []
    for member in ifaces[0]:
        details = tuple(tuple(sorted(child.attrib.items())) for child in member)
        shape.append((member.tag, member.get("name", ""), tuple(sorted(member.attrib.items())), details))
    return sorted(shape)  # type: ignore[arg-type]


@run_async
async def test_properties_read_the_same_through_busctl_gdbus_and_dbus_fast(bus: PrivateBus) -> None:
    backend = MemoryCluster()
    async with serving(bus, backend), SignalClient.connect(bus.address) as client:
        assert await get_property(bus, "ClusterName") == "alpha"
        assert await get_property(bus, "LocalNodeId") == 1
        assert await get_property(bus, "RingId") == [1, 12]
        assert await get_property(bus, "Members") == [[1, "node1"], [2, "node2"], [3, "node3"]]
        assert await get_property(bus, "Quorate") is True
        assert [await get_property(bus, p) for p in ("Votes", "ExpectedVotes", "TotalVotes", "Quorum")] == [
            1,
            3,
            3,
            2,
        ]
        assert await get_property(bus, "Links") == [[2, 0, True], [3, 0, True]]
        assert await get_property(bus, "Lockspaces") == [["gfs2fs", "running"]]
        # Anyone may read: the policy lets uid 65534 get properties and call the query methods.
        assert await get_property(bus, "Members", as_nobody=True) == [
            [1, "node1"],
            [2, "node2"],
            [3, "node3"],
        ]
        status, out, err = await gdbus_call(bus, "GetQuorum", as_nobody=True)
        assert status == 0, err
        assert "'Quorate': <true>" in out and "'Quorum': <uint32 2>" in out and "'wait_for_all'" in out
        status, out, err = await gdbus_call(bus, "GetNodes", as_nobody=True)
        assert status == 0, err
        assert out.strip() == (
            "([(uint32 1, 'node1', 'member', uint32 1), "
            "(2, 'node2', 'member', 1), (3, 'node3', 'member', 1)],)"
        )

        iface = await client.proxy()
        assert await iface.get_cluster_name() == "alpha"
        assert tuple(await iface.get_ring_id()) == (1, 12)
        status_dict = await iface.call_get_status()
        assert status_dict["TotalVotes"].value == 3
        assert status_dict["QuorumFlags"].value == ["wait_for_all"]
        assert status_dict["DroppedSignals"].value == 0


@run_async
async def test_live_introspection_equals_the_interface_file(bus: PrivateBus) -> None:
    async with serving(bus, MemoryCluster()):
        status, live_gdbus, err = await run(
            "gdbus",
            "introspect",
            "--xml",
            "--address",
            bus.address,
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
        )
        assert status == 0, err
        status, live_busctl, err = await busctl(bus, "introspect", "--xml-interface", BUS_NAME, OBJECT_PATH)
        assert status == 0, err
    expected = interface_shape(INTERFACE_FILE.read_text())
    assert interface_shape(live_gdbus) == expected
    assert interface_shape(live_busctl) == expected
    assert {name for kind, name, _, _ in expected if kind == "property"} == {
        "ClusterName",
        "LocalNodeId",
        "RingId",
        "Members",
        "Quorate",
        "Votes",
        "ExpectedVotes",
        "TotalVotes",
        "Quorum",
        "Links",
        "Lockspaces",
    }


@run_async
async def test_node_failure_sends_membership_node_left_quorum_link_and_properties_changed(
    bus: PrivateBus,
) -> None:
    backend = MemoryCluster()
    async with serving(bus, backend) as service, SignalClient.connect(bus.address) as client:
        monitor = await asyncio.create_subprocess_exec(
            "gdbus",
            "monitor",
            "--address",
            bus.address,
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert monitor.stdout is not None
            # gdbus subscribes from a worker thread after its banner: probe until it sees signals.
            async with asyncio.timeout(SIGNAL_WAIT_S):
                line = b""
                while b"LockspaceStateChanged" not in line:
                    service.publish(LockspaceNotice("probe", "probe"))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            line = await monitor.stdout.readline()
                while (await client.next())[0] != "LockspaceStateChanged":
                    pass
                await asyncio.sleep(0.2)  # let the rest of the probes arrive, then forget them
                while not client.signals.empty():
                    client.signals.get_nowait()

            for notice in backend.kill(3):
                service.publish(notice)

            assert await client.next() == (
                "MembershipChanged",
                [[1, 16], [[1, "node1"], [2, "node2"]], [], [[3, "nodedown"]]],
            )
            assert await client.next() == ("NodeLeft", [3, "nodedown"])
            assert await client.next() == ("QuorumChanged", [True, 2, 2])
            assert await client.next() == ("LinkStatusChanged", [3, 0, False])
            member, (iface, changed, invalidated) = await client.next()
            assert (member, iface, invalidated) == ("PropertiesChanged", INTERFACE, [])
            assert {k: plain(v.value) for k, v in changed.items()} == {
                "RingId": [1, 16],
                "Members": [[1, "node1"], [2, "node2"]],
                "TotalVotes": 2,
                "Links": [[2, 0, True], [3, 0, False]],
            }

            seen = ""
            async with asyncio.timeout(SIGNAL_WAIT_S):
                while "org.freedesktop.DBus.Properties.PropertiesChanged" not in seen:
                    seen += (await monitor.stdout.readline()).decode()
            assert (
                "org.cmanlk.Cluster1.MembershipChanged ((uint32 1, uint64 16), "
                "[(uint32 1, 'node1'), (2, 'node2')], @a(us) [], [(uint32 3, 'nodedown')])"
            ) in seen
            assert "org.cmanlk.Cluster1.NodeLeft (uint32 3, 'nodedown')" in seen
            assert "org.cmanlk.Cluster1.QuorumChanged (true, uint32 2, uint32 2)" in seen
            assert "org.cmanlk.Cluster1.LinkStatusChanged (uint32 3, uint32 0, false)" in seen
            assert "'TotalVotes': <uint32 2>" in seen
            assert "'Links': <[(uint32 2, uint32 0, true), (3, 0, false)]>" in seen
        finally:
            monitor.kill()
            await monitor.wait()
        assert await get_property(bus, "Members") == [[1, "node1"], [2, "node2"]]
        assert service.stats.dropped_notices == 0


@run_async
async def test_privileged_methods_are_for_root_only_by_policy(bus: PrivateBus) -> None:
    backend = MemoryCluster()
    async with serving(bus, backend) as service, SignalClient.connect(bus.address) as client:
        for method, args in (("SetExpectedVotes", ("2",)), ("SetVotes", ("0", "3")), ("FenceAck", ("3",))):
            status, _, err = await gdbus_call(bus, method, *args, as_nobody=True)
            assert status != 0 and "org.freedesktop.DBus.Error.AccessDenied" in err, (method, err)
        status, _, err = await busctl(
            bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "SetExpectedVotes", "u", "2", as_nobody=True
        )
        assert status != 0 and "Access denied" in err
        status, _, err = await busctl(
            bus,
            "call",
            BUS_NAME,
            OBJECT_PATH,
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            INTERFACE,
            "Votes",
            "u",
            "9",
            as_nobody=True,
        )
        assert status != 0 and "Access denied" in err
        assert backend.requests == [] and service.stats.admin_calls == 0  # the policy stopped them

        status, out, err = await busctl(
            bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "SetExpectedVotes", "u", "2"
        )
        assert status == 0, err
        assert out.startswith('s "SetExpectedVotes(expected_votes=2) done"')
        status, out, err = await gdbus_call(bus, "SetVotes", "0", "2")
        assert status == 0, err
        assert backend.requests == [SetExpectedVotes(2), SetVotes(NodeId(0), 2)]
        # The daemon publishes after a change; the property change reaches clients.
        service.publish(StatusNotice())
        member, (_, changed, _) = await client.next()
        assert member == "PropertiesChanged"
        assert {k: plain(v.value) for k, v in changed.items()} == {"ExpectedVotes": 2, "Votes": 2}

        # An illegal request is a named error with the daemon's message, not a crash.
        status, _, err = await gdbus_call(bus, "SetExpectedVotes", "0")
        assert status != 0
        assert "GDBus.Error:org.cmanlk.Cluster1.Error.InvalidParam: expected votes must be at least 1" in err
        status, _, err = await gdbus_call(bus, "SetVotes", "7", "1")
        assert "org.cmanlk.Cluster1.Error.NotFound" in err
        assert await get_property(bus, "ExpectedVotes") == 2


@run_async
async def test_service_checks_the_caller_uid_even_when_the_policy_lets_the_call_through(
    open_bus: PrivateBus,
) -> None:
    backend = MemoryCluster()
    async with serving(open_bus, backend) as service:
        for method, args in (("SetExpectedVotes", ("2",)), ("SetVotes", ("0", "3")), ("FenceAck", ("3",))):
            status, _, err = await gdbus_call(open_bus, method, *args, as_nobody=True)
            assert status != 0
            assert "GDBus.Error:org.cmanlk.Cluster1.Error.PermissionDenied" in err, err
            assert "uid 65534" in err
        assert backend.requests == []
        assert (service.stats.admin_calls, service.stats.admin_denied) == (3, 3)
        status, out, err = await gdbus_call(open_bus, "FenceAck", "3")
        assert status == 0, err
        assert "FenceAck(nodeid=3) done" in out
        assert await get_property(open_bus, "Quorate")  # the service is still serving


@run_async
async def test_privileged_call_beyond_the_timeout_gets_a_timeout_error_and_others_still_served(
    open_bus: PrivateBus,
) -> None:
    backend = MemoryCluster()
    backend.submit_delay_s = 2.0
    async with serving(open_bus, backend, admin_timeout_s=0.3):
        slow = asyncio.create_task(gdbus_call(open_bus, "FenceAck", "2"))
        assert await get_property(open_bus, "ClusterName") == "alpha"  # not stuck behind the call
        status, _, err = await slow
        assert status != 0 and "org.cmanlk.Cluster1.Error.Timeout: no outcome within 0.3 s" in err


@run_async
async def test_privileged_calls_beyond_the_pending_bound_are_refused_busy(open_bus: PrivateBus) -> None:
    backend = MemoryCluster()
    backend.submit_delay_s = 1.0
    async with serving(open_bus, backend), SignalClient.connect(open_bus.address) as client:
        calls = [
            client.client.call(
                Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member="FenceAck",
                        signature="u", body=[2])
            )
            for _ in range(MAX_PENDING_ADMIN_CALLS + 2)
        ]  # fmt: skip
        replies = await asyncio.gather(*calls)
    errors = [r.error_name for r in replies if r.message_type is MessageType.ERROR]
    assert errors == ["org.cmanlk.Cluster1.Error.Busy"] * 2
    assert len(backend.requests) == MAX_PENDING_ADMIN_CALLS


@run_async
async def test_second_service_waits_for_the_name_and_takes_over_when_the_first_stops(bus: PrivateBus) -> None:
    first_backend, second_backend = MemoryCluster(), MemoryCluster()
    second_backend.status = replace(second_backend.status, cluster_name="beta")
    second = DbusService(second_backend)
    async with serving(bus, first_backend):
        assert not await second.start(bus.address, wait_s=0.5)  # the name is taken: retrying
        second.publish(StatusNotice())  # not serving yet: counted, no exception
        assert await get_property(bus, "ClusterName") == "alpha"
    try:
        async with asyncio.timeout(5.0):
            await second.wait_connected()
        assert await get_property(bus, "ClusterName") == "beta"
        assert second.stats.dropped_by_reason == {"not connected": 1}
    finally:
        await second.stop()


@run_async
async def test_service_started_before_the_bus_connects_once_it_appears(bus: PrivateBus) -> None:
    bus.kill()
    service = DbusService(MemoryCluster())
    try:
        assert not await service.start(bus.address, wait_s=0.3)
        bus.start()
        async with asyncio.timeout(5.0):
            await service.wait_connected()
        assert await get_property(bus, "Quorum") == 2
    finally:
        await service.stop()


@run_async
async def test_stalled_bus_drops_counted_signals_and_never_blocks_the_publisher(
    bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cmanlk.runtime.dbus_service")
    backend = MemoryCluster()
    async with serving(bus, backend) as service, SignalClient.connect(bus.address) as client:
        bus.pause()
        # publish() is synchronous (it cannot wait for the bus) and its queue is bounded; what a
        # stalled bus costs is shown by the drops, not by wall-clock bounds (they failed at load 4).
        assert not inspect.iscoroutinefunction(service.publish)
        try:
            for i in range(4000):
                up = i % 2 == 0
                backend.status = replace(backend.status, paths=(PathView(NodeId(2), 0, up),))
                service.publish(LinkNotice(NodeId(2), 0, up))
                if i % 100 == 0:  # let the drain task run: it must not wait on the stalled bus
                    await asyncio.sleep(0.005)
            stalled = service.stats
        finally:
            bus.resume()
        assert stalled.connected
        assert stalled.dropped_by_reason.get("queue full", 0) > 1000, stalled
        drop_warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drop_warnings) == 1, [r.getMessage() for r in drop_warnings]  # rate-limited

        # After the stall: same connection, clients are served and new signals arrive.
        assert await get_property(bus, "Links") == [[2, 0, False]]
        status, out, _ = await gdbus_call(bus, "GetStatus")
        assert status == 0 and re.search(r"'DroppedSignals': <uint64 (\d+)>", out)
        backend.status = with_quorum(backend.status, quorate=False)
        service.publish(StatusNotice())
        async with asyncio.timeout(SIGNAL_WAIT_S):  # after what was queued before the stall
            member, body = await client.next()
            while member != "PropertiesChanged" or "Quorate" not in body[1]:
                member, body = await client.next()
        assert body[1]["Quorate"].value is False
        assert service.stats.connects == 1


@run_async
async def test_bus_restart_is_survived_with_reconnect(bus: PrivateBus) -> None:
    backend = MemoryCluster()
    async with serving(bus, backend) as service:
        bus.kill()
        await eventually(lambda: not service.stats.connected, 5.0)
        service.publish(StatusNotice())  # the daemon carries on: counted, no exception
        assert service.stats.dropped_by_reason["not connected"] >= 1
        bus.start()
        await eventually(lambda: service.stats.connected, 10.0)
        assert service.stats.connects == 2
        assert await get_property(bus, "ClusterName") == "alpha"
