"""Real cmanlkd processes with the native transport and TWO links per node (issues 3 and 6).

Three nodes; link 0 is IPv4 on `eth0` (bridge br0 of the daemon engineer's Lab), link 1 is IPv6
ULA on `eth1`, a second veth per node plugged into a second bridge br1 that this file adds to the
Lab's switch namespace. Both links are named in the configuration (`interface { name: ethN }`),
so each is bound with SO_BINDTODEVICE to that device.

What is proven, with the daemons' own status.json and logs as the only observations:
- carrier loss / admin down of one node's link 0 does not reform the ring (same ring id, no new
  configuration): traffic continues on link 1; the failover time is measured from the daemons'
  log lines (local carrier loss on the cut node, the peer's NOTICE on the others) and printed;
  the link is shown down in status.json, then up again after `ip link set up`;
- link 0's interface renamed away and back, deleted and re-created, and its address removed and
  re-added: the link is marked down, rebound when usable, the ring stays whole and unchanged,
  no daemon crashes and nothing is ever bound to lo;
- with a single link, deleting and re-creating its interface drops the node out of the ring and
  it rejoins (a new ring of all members) without a crash.

Namespaces are the Lab's (removed by its fixture, also on failure); br1 and the eth1 veths live in
those namespaces and go with them.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.system.conftest import Cluster
from tests.system.netns import Lab, ipv4, ula1

pytestmark = pytest.mark.system

TOKEN_MS = 500
"""Token timeout of the test clusters. A failover slower than this would reform the ring, so a
ring that survives a cut proves the failover beat it (heartbeat: ping 125 ms, timeout 250 ms)."""
STATUS_WAIT_S = 6.0
"""status.json is rewritten every 2 s (and on membership changes): waits on it allow 3 rewrites."""
QUIET_S = 2.0
"""How long the ring is watched after a cut/return: four token timeouts."""
FAILOVER_BUDGET_MS = 250
"""Carrier loss is reported by rtnetlink at once; the peers learn it from the cut node's NOTICE."""
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


# -- lab and configuration ---------------------------------------------------------------------------
def add_second_link(lab: Lab, nodes: list[int]) -> None:
    """Add bridge br1 to the Lab's switch and an `eth1` (fd78::N/64, no DAD) per node on it."""
    lab.add_bridge(1)
    for n in nodes:
        lab.add_nic(n, 1)


def recreate_eth0(lab: Lab, node: int) -> None:
    """Re-create node's eth0 exactly as the Lab made it (same name, addresses, bridge port)."""
    lab.add_nic(node, 0)


def native_config(c: Cluster, node: int, links: int, key: str) -> str:
    interfaces = "".join(
        f"  interface {{\n    linknumber: {lk}\n    name: eth{lk}\n    knet_link_priority: {2 - lk}\n  }}\n"
        for lk in range(links)
    )
    entries = "".join(
        f"  node {{\n    ring0_addr: {ipv4(n)}\n"
        + (f"    ring1_addr: {ula1(n)}\n" if links > 1 else "")
        + f"    nodeid: {n}\n    name: n{n}\n  }}\n"
        for n in c.nodes
    )
    return (
        "totem {\n  version: 2\n  cluster_name: linktest\n  transport: knet\n"
        f"  token: {TOKEN_MS}\n  token_coefficient: 0\n  link_mode: passive\n"
        f"  crypto_cipher: aes256\n  crypto_hash: sha256\n{interfaces}}}\n"
        f"nodelist {{\n{entries}}}\n"
        "quorum {\n  provider: corosync_votequorum\n}\n"
        "logging {\n  to_stderr: yes\n  timestamp: hires\n}\n"
        f"cmanlk {{\n  state_dir: {c.state_dir(node)}\n  run_dir: {c.run_dir(node)}\n"
        f"  keyfile: {key}\n  dbus: no\n}}\n"
    )


def linked_cluster(factory: Callable[..., Cluster], nodes: list[int], links: int) -> Cluster:
    """Build (not start) a native-transport cluster with `links` named links per node."""
    c = factory(nodes)
    if links > 1:
        add_second_link(c.lab, nodes)
    key = c.workdir / "authkey"
    c.lab.run(nodes[0], sys.executable, "-m", "cmanlk.keygen", "-k", str(key))
    for n in nodes:
        c.conf_path(n).write_text(native_config(c, n, links, str(key)))
    return c


# -- observations --------------------------------------------------------------------------------------
def link_status(c: Cluster, node: int, link: int) -> dict[str, Any]:
    st = c.status(node)
    if st is None:
        return {}
    return next((lk for lk in st["links"] if lk["index"] == link), {})


def link_usable(c: Cluster, node: int, link: int) -> bool:
    """status.json says: `link` of `node` is bound with carrier and every peer is reachable on it."""
    lk = link_status(c, node, link)
    return bool(lk) and lk["up"] and lk["reason"].endswith(" up") and all(p["reachable"] for p in lk["peers"])


def link_local_down(c: Cluster, node: int, link: int) -> bool:
    """status.json says: the local side of `link` is unbound or without carrier."""
    lk = link_status(c, node, link)
    return bool(lk) and (not lk["up"] or lk["reason"].endswith("no carrier"))


def peers_see_path_down(c: Cluster, node: int, link: int) -> bool:
    """Every other node reports `node` unreachable on `link`."""
    for other in c.nodes:
        if other == node:
            continue
        lk = link_status(c, other, link)
        if not lk or any(p["reachable"] for p in lk["peers"] if p["node"] == node):
            return False
    return True


Snapshot = dict[int, tuple[str, str, int, list[int]]]


def snapshot(c: Cluster) -> Snapshot:
    """Per node: (ring id, totem ring id, membership changes, members)."""
    out = {}
    for n in c.nodes:
        st = c.status(n)
        assert st is not None, f"node {n} has no status.json"
        out[n] = (st["ring_id"], st["totem_ring_id"], st["membership_changes"], st["members"])
    return out


def delivered_per_link(c: Cluster, node: int) -> dict[int, int]:
    """Totem datagrams delivered per link, from a status.json written after this call."""
    asked = time.time()
    c.wait_until(lambda: (c.status(node) or {}).get("updated_at", 0) > asked, STATUS_WAIT_S,
                 f"a fresh status.json of node {node}")
    st = c.status(node)
    assert st is not None
    return {lk["index"]: int(lk["counters"].get("delivered", 0)) for lk in st["links"]}


def log_text(c: Cluster, node: int) -> str:
    return c.log_path(node).read_text(errors="replace")


def first_log_time(c: Cluster, node: int, needle: str, after: float) -> float | None:
    """Wall time (s) of the first log line of `node` containing `needle` at or after `after`."""
    for line in log_text(c, node).splitlines():
        m = LOG_TIME.match(line)
        if m and needle in line:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if t >= after - 0.001:
                return t
    return None


def assert_whole_and_unchanged(c: Cluster, before: Snapshot, what: str) -> None:
    """Watch QUIET_S: every daemon alive, same ring, no new configuration, all members."""
    end = time.monotonic() + QUIET_S
    while time.monotonic() < end:
        for n in c.nodes:
            assert c.alive(n), f"cmanlkd node {n} died during {what}\n" + c.logs()
        time.sleep(0.1)
    after = snapshot(c)
    assert after == before, f"ring changed during {what}: {before} -> {after}\n" + c.describe() + c.logs()
    for n in c.nodes:
        text = log_text(c, n)
        assert "Traceback" not in text, f"node {n} logged a traceback during {what}\n" + text[-4000:]


def assert_never_bound_to_lo(c: Cluster) -> None:
    for n in c.nodes:
        devices = set(re.findall(r"link \d+ bound to (\S+) ", log_text(c, n)))
        assert devices <= {"eth0", "eth1"}, f"node {n} bound links to {devices}"
        assert devices, f"node {n} logged no binding"


def start_two_link_ring(factory: Callable[..., Cluster]) -> Cluster:
    c = linked_cluster(factory, [1, 2, 3], links=2)
    c.start_all()
    c.wait_ring([1, 2, 3], timeout_s=20.0)
    c.wait_until(lambda: all(link_usable(c, n, lk) for n in c.nodes for lk in (0, 1)), 10.0,
                 "both links usable to every peer on every node")
    return c


def cut_and_measure(c: Cluster, cut: Callable[[], object], label: str) -> float:
    """Cut node 1's link 0; return the failover time in ms (the last peer to learn of it)."""
    t_cut = time.time()
    cut()
    c.wait_until(lambda: peers_see_path_down(c, 1, 0), STATUS_WAIT_S, f"{label}: peers see it down")
    local = first_log_time(c, 1, "link 0 local side down", t_cut)
    notices = [first_log_time(c, n, "link 0 to node 1 down", t_cut) for n in (2, 3)]
    assert local is not None, f"{label}: node 1 did not log its link 0 down\n" + log_text(c, 1)[-3000:]
    assert all(t is not None for t in notices), f"{label}: a peer logged no link 0 down\n" + c.logs()
    failover_ms = (max(t for t in notices if t is not None) - t_cut) * 1000
    print(f"\n{label}: node 1 saw link 0 down after {(local - t_cut) * 1000:.0f} ms, "
          f"peers after {failover_ms:.0f} ms (log resolution 1 ms)")
    return failover_ms


# -- tests ----------------------------------------------------------------------------------------------
def test_link0_down_fails_over_to_link1_without_reforming_the_ring(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = start_two_link_ring(cluster_factory)
    before = snapshot(c)
    d_start = delivered_per_link(c, 1)
    d_cut = delivered_per_link(c, 1)
    on0, on1 = d_cut[0] - d_start[0], d_cut[1] - d_start[1]
    print(f"\nbefore the cut node 1 received {on0} totem datagrams on link 0, {on1} on link 1")
    assert on0 > 5 * on1 and on0 > 0, "passive mode: link 0 (priority 2) should carry the traffic"

    failover_ms = cut_and_measure(c, lambda: c.lab.run(1, "ip", "link", "set", "dev", "eth0", "down"),
                                  "ip link set eth0 down on node 1")
    assert failover_ms < FAILOVER_BUDGET_MS
    # status.json follows the log by up to a refresh: wait for node 1's own view of the cut.
    c.wait_until(lambda: link_local_down(c, 1, 0), STATUS_WAIT_S, "node 1's status shows link 0 down")
    assert link_usable(c, 1, 1), "link 1 of node 1 should carry the traffic now"
    d_down = delivered_per_link(c, 1)
    assert_whole_and_unchanged(c, before, "link 0 down")
    d_later = delivered_per_link(c, 1)
    on0, on1 = d_later[0] - d_down[0], d_later[1] - d_down[1]
    print(f"with link 0 down node 1 received {on0} totem datagrams on link 0, {on1} on link 1")
    assert on0 == 0 and on1 > 0, "traffic should continue on link 1 only"

    c.lab.run(1, "ip", "link", "set", "dev", "eth0", "up")
    took = c.wait_until(lambda: all(link_usable(c, n, 0) for n in c.nodes), STATUS_WAIT_S, "link 0 back up")
    print(f"link 0 back up in status.json of every node {took:.1f} s after `ip link set up` "
          "(status.json refresh 2 s)")
    assert_whole_and_unchanged(c, before, "link 0 up again")
    assert_never_bound_to_lo(c)


def test_carrier_loss_from_the_far_end_fails_over(cluster_factory: Callable[..., Cluster]) -> None:
    """Carrier loss proper: the bridge-side end of node 1's veth goes down, eth0 stays admin up."""
    c = start_two_link_ring(cluster_factory)
    before = snapshot(c)
    failover_ms = cut_and_measure(c, lambda: c.lab.carrier(1, 0, up=False),
                                  "carrier loss on node 1's eth0 (peer end down)")
    assert failover_ms < FAILOVER_BUDGET_MS
    c.wait_until(lambda: link_status(c, 1, 0).get("reason", "").endswith("no carrier"), STATUS_WAIT_S,
                 "node 1's status shows link 0 without carrier")  # fmt: skip
    lk = link_status(c, 1, 0)
    assert lk["up"] and lk["reason"].endswith("no carrier"), lk
    assert_whole_and_unchanged(c, before, "carrier loss")
    c.lab.carrier(1, 0, up=True)
    c.wait_until(lambda: all(link_usable(c, n, 0) for n in c.nodes), STATUS_WAIT_S, "link 0 back (carrier)")
    assert_whole_and_unchanged(c, before, "carrier back")


def test_link0_renamed_deleted_readdressed_is_rebound_and_the_ring_stays_whole(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = start_two_link_ring(cluster_factory)
    before = snapshot(c)

    def cycle(label: str, cut: list[tuple[str, ...]], restore: Callable[[], object]) -> None:
        t_cut = time.time()
        for cmd in cut:
            c.lab.run(1, *cmd)
        c.wait_until(lambda: peers_see_path_down(c, 1, 0) and link_local_down(c, 1, 0), STATUS_WAIT_S,
                     f"{label}: link 0 of node 1 down")
        down_at = first_log_time(c, 1, "link 0 local side down", t_cut)
        assert down_at is not None, f"{label}: no 'local side down' line\n" + log_text(c, 1)[-3000:]
        assert_whole_and_unchanged(c, before, label)
        t_restore = time.time()
        restore()
        c.wait_until(lambda: all(link_usable(c, n, 0) for n in c.nodes), STATUS_WAIT_S, f"{label}: link 0 up")
        bound_at = first_log_time(c, 1, "link 0 bound to eth0", t_restore)
        assert bound_at is not None, f"{label}: not rebound to eth0\n" + log_text(c, 1)[-3000:]
        print(f"\n{label}: down logged after {(down_at - t_cut) * 1000:.0f} ms, "
              f"rebound {(bound_at - t_restore) * 1000:.0f} ms after restore")
        assert_whole_and_unchanged(c, before, f"{label} (restored)")

    def rename_back() -> None:
        c.lab.run(1, "ip", "link", "set", "dev", "ethz", "name", "eth0")
        c.lab.run(1, "ip", "link", "set", "dev", "eth0", "up")

    cycle("rename eth0 -> ethz",
          [("ip", "link", "set", "dev", "eth0", "down"), ("ip", "link", "set", "dev", "eth0", "name", "ethz"),
           ("ip", "link", "set", "dev", "ethz", "up")],
          rename_back)
    # Renamed and up, ethz still held 10.77.0.1: the link must not follow the address to it.
    assert "bound to ethz" not in log_text(c, 1)
    cycle("delete eth0", [("ip", "link", "del", "eth0")], lambda: recreate_eth0(c.lab, 1))
    cycle("remove eth0's address", [("ip", "addr", "del", f"{ipv4(1)}/24", "dev", "eth0")],
          lambda: c.lab.run(1, "ip", "addr", "add", f"{ipv4(1)}/24", "dev", "eth0"))

    # What an administrator does by hand (docs/links.md): touch <run_dir>/rebind. Every link
    # is re-bound in place; the ring does not notice.
    t_touch = time.time()
    (c.run_dir(1) / "rebind").touch()
    c.wait_until(lambda: first_log_time(c, 1, "rebind requested", t_touch) is not None, 5.0, "trigger seen")
    assert_whole_and_unchanged(c, before, "rebind trigger")
    assert all(link_usable(c, 1, lk) for lk in (0, 1))
    assert_never_bound_to_lo(c)


def test_single_link_interface_deleted_and_recreated_node_drops_out_and_rejoins(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = linked_cluster(cluster_factory, [1, 2, 3], links=1)
    c.start_all()
    c.wait_ring([1, 2, 3], timeout_s=20.0)
    ring_before = c.ring(1)

    c.lab.run(1, "ip", "link", "del", "eth0")
    took_out = c.wait_ring([2, 3], timeout_s=10.0)
    c.wait_until(lambda: c.members(1) == [1], 10.0, "node 1 alone in its own ring")
    assert c.alive(1)
    recreate_eth0(c.lab, 1)
    took_back = c.wait_ring([1, 2, 3], timeout_s=15.0)
    print(f"\nsingle link deleted: {{2,3}} re-formed in {took_out:.1f} s; after re-creating eth0 the "
          f"ring of all three re-formed in {took_back:.1f} s")
    assert c.ring(1) != ring_before
    for n in c.nodes:
        assert c.alive(n)
        assert "Traceback" not in log_text(c, n)
    assert_never_bound_to_lo(c)
