"""Local clients of real cmanlkd daemons (cmanlk.client over <run_dir>/cmanlk.sock).

Issue 3: a test reads membership from each daemon. And the ordering promise end to end: with 10 %
random loss on every node, cpg messages from two senders reach every member, none lost, none
duplicated, in one agreed order.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from cmanlk.client import Client, ClientError
from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

MESSAGES_PER_SENDER = 200


def connect(c: Cluster, node: int) -> Client:
    return Client.connect(str(c.run_dir(node) / "cmanlk.sock"))


def test_each_daemon_reports_the_same_membership_over_ipc(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    views = []
    for n in (1, 2, 3):
        with connect(c, n) as client:
            status = client.status()
            membership = client.membership()
            quorum = client.quorum()
            assert status["node_id"] == n
            views.append((membership["ring_id"], [m["nodeid"] for m in membership["members"]]))
            assert quorum["quorate"] is True and quorum["total_votes"] == 3
            nodes = {x["nodeid"]: x for x in client.nodes()}
            assert set(nodes) == {1, 2, 3} and nodes[2]["name"] == "n2"
            assert {(lk["nodeid"], lk["up"]) for lk in client.links()} == {
                (m, True) for m in (1, 2, 3) if m != n
            }
    assert views[0] == views[1] == views[2] and views[0][1] == [1, 2, 3]


def test_membership_tracking_sees_a_node_fail(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    with connect(c, 1) as client:
        client.track_start()
        first = client.next_event(5.0)
        assert first is not None and first.name == "track"
        c.kill(3)
        deadline = time.monotonic() + 10
        seen: list[int] = []
        while time.monotonic() < deadline:
            event = client.next_event(1.0)
            if event is not None and event.name == "track":
                seen = [m["nodeid"] if isinstance(m, dict) else m for m in event.data.get("members", [])]
                if seen == [1, 2]:
                    break
        assert seen == [1, 2]


def test_cpg_messages_survive_ten_percent_loss_in_one_agreed_order(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2, 3], token_ms=500)
    c.start_all()
    c.wait_ring([1, 2, 3])
    clients = {n: connect(c, n) for n in (1, 2, 3)}
    try:
        for n, client in clients.items():
            client.cpg_join("order", pid=1000 + n)
        for n in (1, 2, 3):
            c.lab.loss(n, 10)
        for i in range(MESSAGES_PER_SENDER):
            for sender in (1, 2):
                clients[sender].cpg_send("order", f"{sender}:{i}".encode())
        received: dict[int, list[str]] = {n: [] for n in clients}
        deadline = time.monotonic() + 60
        want = 2 * MESSAGES_PER_SENDER
        while time.monotonic() < deadline and any(len(v) < want for v in received.values()):
            for n, client in clients.items():
                event = client.cpg_receive(0.05)
                if event is not None and event.name == "cpg_deliver":
                    received[n].append(event.payload.decode())
        for n in (1, 2, 3):
            assert len(received[n]) == want, f"node {n} got {len(received[n])} of {want}"
            assert len(set(received[n])) == want  # no duplicates
            for sender in (1, 2):  # each sender's messages in its sending order
                mine = [m for m in received[n] if m.startswith(f"{sender}:")]
                assert mine == [f"{sender}:{i}" for i in range(MESSAGES_PER_SENDER)]
        assert received[1] == received[2] == received[3]  # one agreed order
        assert c.members(1) == [1, 2, 3]
        # the loss was real: lost MCASTs were requested and sent again (live counters over IPC)
        totem = [clients[n].stats()["daemon"]["totem"] for n in (1, 2, 3)]
        assert sum(t["retransmits"] for t in totem) > 0, totem
    finally:
        for client in clients.values():
            try:
                client.close()
            except ClientError:
                pass


def test_leave_over_ipc_stops_the_daemon_cleanly(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2])
    c.start_all()
    c.wait_ring([1, 2])
    with connect(c, 2) as client:
        client.leave()
    assert c.procs[2].wait(timeout=10) == 0
    c.wait_ring([1], timeout_s=5.0)
