"""transport: udp — cmanlkd over real IP multicast (IPv4 and IPv6 groups) in network namespaces:
the ring forms, survives a kill -9 and takes the node back, and MCASTs travel as one datagram each."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.system.conftest import Cluster

pytestmark = pytest.mark.system


@pytest.mark.parametrize(("family", "group"), [("ipv4", "239.192.77.1"), ("ipv6", "ff15::77")])
def test_multicast_ring_forms_survives_a_kill_and_rejoins(
    cluster_factory: Callable[..., Cluster], family: str, group: str
) -> None:
    extra = f"  transport: udp\n  interface {{\n    linknumber: 0\n    mcastaddr: {group}\n  }}\n"
    c = cluster_factory([1, 2, 3], family=family, totem_extra=extra)
    c.start_all()
    c.wait_ring([1, 2, 3])
    status = c.status(1)
    assert status is not None
    link = status["links"][0]
    assert group in link["local_address"], link
    c.kill(3)
    c.wait_ring([1, 2], members=[1, 2])
    c.start(3)
    c.wait_ring([1, 2, 3], members=[1, 2, 3])
    status = c.status(2)
    assert status is not None and status["members"] == [1, 2, 3]
    counters = status["links"][0].get("counters", {})
    assert counters.get("received", 0) > 0 and not any(k.startswith("dropped_unlisted") for k in counters)
