"""cmanlkd on D-Bus: a running daemon serves org.cmanlk.Cluster with its live membership."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests.adapters.dbusbus import PrivateBus
from tests.system.conftest import Cluster
from tests.system.netns import sh

pytestmark = pytest.mark.system

DEST = ("org.cmanlk.Cluster", "/org/cmanlk/Cluster", "org.cmanlk.Cluster1")


def get_property(bus: PrivateBus, name: str) -> str:
    proc = sh("busctl", f"--address={bus.address}", "get-property", *DEST, name, check=False)
    return proc.stdout.strip()


def test_daemon_publishes_membership_and_quorum_on_dbus(cluster_factory: Callable[..., Cluster]) -> None:
    if shutil.which("dbus-daemon") is None or shutil.which("busctl") is None:
        pytest.skip("dbus-daemon and busctl are needed (scripts/setup.sh installs them)")
    with PrivateBus() as bus:
        c = cluster_factory([1, 2], cmanlk_extra={1: "  dbus: yes\n"})
        c.start(1, env_extra={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
        c.start(2)
        c.wait_ring([1, 2])
        c.wait_until(lambda: get_property(bus, "Quorate") == "b true", 10.0, "Quorate on D-Bus")
        assert get_property(bus, "LocalNodeId") == "u 1"
        assert get_property(bus, "ClusterName") == 's "systest"'
        members = get_property(bus, "Members")
        assert members.startswith("a(us) 2 1") and "n2" in members, members
        assert get_property(bus, "Lockspaces") == "a(ss) 0"  # DLM control is off in these daemons
        # FenceAck is answered, not_supported only because nothing waits for fencing here
        ack = sh("busctl", f"--address={bus.address}", "call", *DEST, "FenceAck", "u", "2", check=False)
        assert ack.returncode != 0 and "DLM control is off here" in ack.stderr, ack.stdout + ack.stderr
        c.stop(2)
        c.wait_until(
            lambda: get_property(bus, "Members").startswith("a(us) 1 1"), 10.0, "node 2 gone on D-Bus"
        )
