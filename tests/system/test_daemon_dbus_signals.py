"""cmanlkd's D-Bus signals, seen by a real external client (gdbus monitor) on a private system-like bus
with the project's policy, while a node of a network-namespace cluster is killed and restarted; and
the privileged methods refused to an unprivileged caller of the live daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adapters.dbusbus import PrivateBus
from tests.system.conftest import Cluster

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("dbus-daemon", "gdbus", "setpriv")),
        reason="needs root, dbus-daemon, gdbus (libglib2.0-bin) and setpriv",
    ),
]

DEST = "org.cmanlk.Cluster"
PATH = "/org/cmanlk/Cluster"
IFACE = "org.cmanlk.Cluster1"
SUBSCRIBE_S = 2.0  # gdbus monitor subscribes from a worker thread after it starts


def gdbus_call(
    bus: PrivateBus, method: str, *args: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    cmd = ["gdbus", "call", "--address", bus.address, "--dest", DEST, "--object-path", PATH,
           "--method", f"{IFACE}.{method}", *args]  # fmt: skip
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)


def wait_for_text(path: Path, needles: list[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if all(n in text for n in needles):
            return text
        time.sleep(0.1)
    missing = [n for n in needles if n not in text]
    raise AssertionError(f"gdbus monitor never showed {missing}; it printed:\n{text[-3000:]}")


def test_kill_and_restart_send_membership_node_and_quorum_signals(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    with PrivateBus() as bus:
        c = cluster_factory([1, 2, 3], cmanlk_extra={1: "  dbus: yes\n"})
        c.start(1, env_extra={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
        c.start(2)
        c.start(3)
        c.wait_ring([1, 2, 3])
        out = tmp_path / "monitor.txt"
        with out.open("w") as sink:
            monitor = subprocess.Popen(
                ["gdbus", "monitor", "--address", bus.address, "--dest", DEST, "--object-path", PATH],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            time.sleep(SUBSCRIBE_S)
            c.kill(3)
            c.wait_ring([1, 2], members=[1, 2])
            text = wait_for_text(out, [
                f"{IFACE}.MembershipChanged",
                f"{IFACE}.NodeLeft (uint32 3, 'nodedown')",
                f"{IFACE}.QuorumChanged (true, uint32 2, uint32 2)",
            ], 15.0)  # fmt: skip
            changed = [ln for ln in text.splitlines() if f"{IFACE}.MembershipChanged" in ln][-1]
            assert "[(uint32 3, 'nodedown')]" in changed, changed  # left, with its reason
            assert "(uint32 1, 'n1'), (2, 'n2')]" in changed, changed  # members after the kill

            c.start(3)
            c.wait_ring([1, 2, 3], members=[1, 2, 3])
            text = wait_for_text(out, [
                f"{IFACE}.NodeJoined (uint32 3, 'n3')",
                f"{IFACE}.QuorumChanged (true, uint32 2, uint32 3)",
            ], 15.0)  # fmt: skip
            changed = [ln for ln in text.splitlines() if f"{IFACE}.MembershipChanged" in ln][-1]
            assert "[(uint32 3, 'n3')]" in changed, changed  # joined
            assert "'Members'" in text and "PropertiesChanged" in text
        finally:
            monitor.kill()
            monitor.wait(timeout=10)

        refused = gdbus_call(bus, "SetExpectedVotes", "3", as_nobody=True)
        assert refused.returncode != 0 and "AccessDenied" in refused.stderr, refused.stderr
        refused = gdbus_call(bus, "FenceAck", "3", as_nobody=True)
        assert refused.returncode != 0 and "AccessDenied" in refused.stderr, refused.stderr
        allowed = gdbus_call(bus, "SetExpectedVotes", "3")
        assert allowed.returncode == 0, allowed.stderr
        assert c.alive(1)
