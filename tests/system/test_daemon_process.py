"""Process behaviour of cmanlkd: systemd notify, journald-style logs, pid lock, exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cmanlk.runtime.notify import Notifier
from tests.system.conftest import REPO, Cluster

pytestmark = pytest.mark.system


def receive_all(sock: socket.socket, until: Callable[[list[str]], bool], timeout_s: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_sd_notify_ready_status_watchdog_stopping(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = cluster_factory([1, 2])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        address = str(tmp_path / "notify")
        sock.bind(address)
        c.start(1, env_extra={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        c.start(2)
        msgs = receive_all(sock, lambda got: any("READY=1" in m for m in got), 15.0)
        ready = [m for m in msgs if "READY=1" in m]
        assert ready, msgs
        assert "STATUS=ring " in ready[0] and f"MAINPID={c.pid(1)}" in ready[0]
        # watchdog pings every 200 ms (half of WATCHDOG_USEC)
        pings = receive_all(sock, lambda got: sum("WATCHDOG=1" in m for m in got) >= 3, 3.0)
        assert sum("WATCHDOG=1" in m for m in pings) >= 3, pings
        assert c.stop(1) == 0
        rest = receive_all(sock, lambda got: any("STOPPING=1" in m for m in got), 5.0)
        assert any("STOPPING=1" in m for m in rest), rest


def test_notifier_speaks_to_an_abstract_socket() -> None:
    # Abstract sockets belong to a network namespace, so this one is tested in ours, directly.
    name = f"cmk{os.getpid()}notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == 1.0
        assert notifier.ready("ring 1.4: 1 members")
        sock.settimeout(5)
        assert sock.recv(4096).decode().startswith("READY=1\nSTATUS=ring 1.4: 1 members\nMAINPID=")
        notifier.close()
    assert not Notifier({}).ready("x")
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_journal_stream_drops_timestamps_and_adds_priorities(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1])
    log = c.log_path(1)
    log.touch()
    st = os.stat(log)
    c.start(1, env_extra={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    c.wait_ring([1])
    c.stop(1)
    lines = [line for line in log.read_text().splitlines() if line]
    assert lines and all(line.startswith("<") for line in lines), lines[:5]
    assert any(line.startswith("<6>cmanlk.node: new membership") for line in lines)


def test_second_daemon_with_the_same_run_dir_refuses_to_start(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1])
    c.start(1)
    c.wait_ring([1])
    proc = c.lab.run(1, sys.executable, "-m", "cmanlk.daemon", "-f", "-c", str(c.conf_path(1)), check=False)
    assert proc.returncode == 3
    assert "another cmanlkd is running" in proc.stderr
    assert c.alive(1)


def test_config_errors_exit_1_and_name_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("totem {\n  version: 2\n  token: -1\n}\nnodelist {\n  node {\n    nodeid: 1\n  }\n}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["--check-config"], ["-f"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cmanlk.daemon", *args, "-c", str(bad)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert proc.returncode == 1, proc.stderr
        assert f"{bad}:3: totem.token" in proc.stderr and f"{bad}:6: nodelist.node.ring0_addr" in proc.stderr


def test_unknown_local_address_exits_with_a_config_error(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1], listed=[2, 3])  # node 1's namespace holds none of the listed addresses
    proc = c.lab.run(
        1,
        sys.executable,
        "-m",
        "cmanlk.daemon",
        "-f",
        "-c",
        str(c.conf_path(1)),
        "--nodeid",
        "1",
        check=False,
    )
    assert proc.returncode == 1 and "--nodeid 1 is not in the nodelist" in proc.stderr


def test_without_foreground_the_daemon_detaches_and_leaves_on_sigterm(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory([1, 2])
    c.start(2)
    conf = c.conf_path(1).read_text().replace("logging {\n", "logging {\n  to_logfile: yes\n  logfile: LOG\n")
    c.conf_path(1).write_text(conf.replace("LOG", str(c.workdir / "detached.log")))
    started = time.monotonic()
    proc = c.lab.run(
        1, "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "cmanlk.daemon", "-c", str(c.conf_path(1))
    )
    # the parent returned once the child was detached (a foreground daemon never returns; the bound is
    # generous because start-up checks take seconds on a loaded 2-core machine: 12 s seen at load 10)
    assert proc.returncode == 0 and time.monotonic() - started < 30
    c.wait_ring([1, 2])
    pid = int((c.run_dir(1) / "cmanlkd.pid").read_text())
    assert c.status(1)["pid"] == pid  # type: ignore[index]
    os.kill(pid, 15)
    c.wait_ring([2], timeout_s=5.0)
    c.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5.0, "detached daemon exit")
    assert "left the cluster; exiting" in (c.workdir / "detached.log").read_text()


def _vm_locked_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    return 0


def test_realtime_scheduling_and_locked_memory_as_corosync(cluster_factory: Callable[..., Cluster]) -> None:
    """Default `system.sched_rr: yes`: SCHED_RR at the top priority, memory locked; `sched_rr: no`
    with `priority: 5` → ordinary scheduling at nice 5, nothing locked beyond the defaults."""
    c = cluster_factory([1, 2])
    c.conf_path(2).write_text(c.config_text(2, [1, 2]) + "system {\n  sched_rr: no\n  priority: 5\n}\n")
    c.start_all()
    c.wait_ring([1, 2])
    rr = c.pid(1)
    assert os.sched_getscheduler(rr) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR
    assert os.sched_getparam(rr).sched_priority == os.sched_get_priority_max(os.SCHED_RR)
    assert _vm_locked_kib(rr) > 0
    other = c.pid(2)
    assert os.sched_getscheduler(other) & ~os.SCHED_RESET_ON_FORK == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, other) == 5
    assert "scheduling: SCHED_RR priority 99, memory locked" in c.log_path(1).read_text()
    assert "scheduling: SCHED_OTHER nice 5" in c.log_path(2).read_text()
