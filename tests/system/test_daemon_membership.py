"""Real cmanlkd daemons (udpu) in network namespaces: rings form, fail, rejoin, split and merge.

Timers: token 300 ms, token_coefficient 0, so consensus = 360 ms and a failure costs about
token + consensus (+ one join round). The bounds asserted below are that figure with generous
slack for a 2-core machine shared with other work.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.system.conftest import Cluster

pytestmark = pytest.mark.system

FORM_TIMEOUT_S = 15.0


@pytest.mark.parametrize(
    ("family", "bind_interface"),
    [("ipv4", False), ("ipv6", False), ("link-local", True)],
    ids=["ipv4", "ipv6-ula", "ipv6-link-local"],
)
def test_three_daemons_form_one_ring(
    cluster_factory: Callable[..., Cluster], family: str, bind_interface: bool
) -> None:
    c = cluster_factory([1, 2, 3], family=family, bind_interface=bind_interface)
    c.start_all()
    c.wait_ring([1, 2, 3], timeout_s=FORM_TIMEOUT_S)
    for n in (1, 2, 3):
        st = c.status(n)
        assert st is not None
        assert st["state"] == "OPERATIONAL" and st["quorate"] is True
        assert st["ring_rep"] == 1  # the lowest node id represents the ring
        link = st["links"][0]
        assert link["up"] and all(p["reachable"] for p in link["peers"])
        if bind_interface:
            assert link["interface"] == "eth0" and link["local_address"].endswith("%eth0")
        assert (c.state_dir(n) / f"ringid_{n}").stat().st_size == 8


def test_kill9_survivors_reform_within_the_timer_bound(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    old = c.ring(1)
    killed_at = time.monotonic()
    c.kill(3)
    took = c.wait_ring([1, 2], timeout_s=10.0)
    # token (300) + consensus (360) + join rounds and commit: ~0.7 s; allow 3 s on a busy host.
    assert took < 3.0, f"survivors took {took:.2f} s"
    assert c.ring(1) != old
    st = c.status(1)
    assert st is not None and st["quorate"] is True  # 2 of 3 votes
    assert time.monotonic() - killed_at < 10


def test_restarted_node_rejoins_with_a_higher_ring_seq(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    c.kill(2)
    c.wait_ring([1, 3])
    seq_before = c.status(1)["ring_seq"]  # type: ignore[index]
    persisted = int.from_bytes((c.state_dir(2) / "ringid_2").read_bytes(), "little")
    assert persisted > 0
    c.start(2)
    c.wait_ring([1, 2, 3])
    assert c.status(2)["ring_seq"] > max(seq_before, persisted)  # type: ignore[index]


def test_partition_makes_two_rings_and_heal_merges_them(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    c.lab.partition(3, [1, 2])
    c.wait_ring([1, 2], timeout_s=10.0)
    c.wait_ring([3], timeout_s=10.0)
    assert c.status(3)["quorate"] is False  # type: ignore[index]
    assert c.status(1)["quorate"] is True  # type: ignore[index]
    c.lab.heal(3)
    took = c.wait_ring([1, 2, 3], timeout_s=10.0)
    assert took < 5.0, f"merge took {took:.2f} s"


def test_ten_percent_loss_keeps_membership_stable(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3], token_ms=500)
    c.start_all()
    c.wait_ring([1, 2, 3])
    changes = {n: c.status(n)["membership_changes"] for n in (1, 2, 3)}  # type: ignore[index]
    ring = c.ring(1)
    for n in (1, 2, 3):
        c.lab.loss(n, 10)
    time.sleep(6.0)
    for n in (1, 2, 3):
        st = c.status(n)
        assert st is not None and st["ring_id"] == ring and st["members"] == [1, 2, 3], c.describe()
        assert st["membership_changes"] == changes[n], c.logs()
    # the loss really happened: tokens were retransmitted somewhere
    retransmits = sum(c.status(n)["stats"]["totem"]["token_retransmits"] for n in (1, 2, 3))  # type: ignore[index]
    assert retransmits > 0


def test_sigterm_is_a_leave_peers_reform_well_below_the_token_timeout(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # A long token (3 s) makes the difference between a leave and a failure obvious.
    c = cluster_factory([1, 2, 3], token_ms=3000)
    c.start_all()
    c.wait_ring([1, 2, 3], timeout_s=20.0)
    start = time.monotonic()
    assert c.stop(3) == 0
    took = c.wait_ring([1, 2], timeout_s=10.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"leave took {elapsed:.2f} s (token is 3 s, failure detection ~6.6 s)"
    assert took < 1.5
    log = c.log_path(3).read_text()
    assert "leaving the cluster" in log and "left the cluster; exiting" in log


def test_sighup_reloads_the_nodelist(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3], listed=[1, 2])
    c.write_config(3, [1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2])

    def dropped_unlisted() -> bool:
        st = c.status(1)
        return bool(st) and st["stats"]["transport"].get("dropped_unlisted_source", 0) > 0  # type: ignore[index]

    # status.json is rewritten every 2 s: wait for a rewrite that counts node 3's datagrams
    c.wait_until(dropped_unlisted, 8.0, "node 1 counting datagrams from unlisted node 3")
    assert c.members(3) == [3]  # nodes 1 and 2 drop its datagrams: it is not in their nodelist
    for n in (1, 2):
        c.write_config(n, [1, 2, 3])
        c.signal(n, signal.SIGHUP)
    c.wait_ring([1, 2, 3], timeout_s=10.0)
    assert "reload: nodelist now [1 2 3]" in c.log_path(1).read_text()


def test_sighup_with_a_broken_file_keeps_running(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2])
    c.start_all()
    c.wait_ring([1, 2])
    c.conf_path(1).write_text(c.conf_path(1).read_text().replace("token: 300", "token: soon"))
    c.signal(1, signal.SIGHUP)
    c.wait_until(
        lambda: "keeping the running configuration" in c.log_path(1).read_text(), 5.0, "reload refusal"
    )
    assert c.alive(1)
    assert "totem.token" in c.log_path(1).read_text()
    assert c.members(1) == [1, 2]


def test_sighup_removing_a_stopped_node_keeps_the_ring(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    assert c.stop(3) == 0
    c.wait_ring([1, 2])
    ring = c.ring(1)
    for n in (1, 2):
        c.write_config(n, [1, 2])
        c.signal(n, signal.SIGHUP)
    c.wait_until(lambda: "reload: nodelist now [1 2]" in c.log_path(2).read_text(), 5.0, "reload on node 2")
    time.sleep(1.0)
    assert c.ring(1) == ring and c.members(2) == [1, 2]
    st = c.status(1)
    assert st is not None and [p["node"] for p in st["links"][0]["peers"]] == [2]
