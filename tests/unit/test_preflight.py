"""The start checks (cmanlk.runtime.preflight): what the daemon's start would stop on, found without
starting — on this host, with loopback addresses and private directories only."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmanlk.config import load_config
from cmanlk.runtime.preflight import EXIT_CONFIG, EXIT_RUNTIME, Prepared, prepare

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the checks read root-only state (ports, dirs)")


@pytest.fixture
def held_port() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket bound on 127.0.0.1, as a corosync still running holds its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock, int(sock.getsockname()[1])
    sock.close()


def write(tmp_path: Path, port: int, *, nodes: tuple[str, ...] = ("127.0.0.1",), totem: str = "",
          cmanlk: str = "", logging: str = "") -> Path:
    entries = "".join(f"  node {{\n    ring0_addr: {a}\n    nodeid: {i}\n  }}\n"
                      for i, a in enumerate(nodes, 1))
    path = tmp_path / "corosync.conf"
    path.write_text(
        f"totem {{\n  version: 2\n  cluster_name: pre\n  transport: udpu\n{totem}"
        f"  interface {{\n    mcastport: {port}\n  }}\n}}\n"
        f"nodelist {{\n{entries}}}\n"
        f"logging {{\n  to_stderr: yes\n{logging}}}\n"
        f"cmanlk {{\n  run_dir: {tmp_path}/run\n  state_dir: {tmp_path}/state\n{cmanlk}}}\n"
    )
    return path


def check(path: Path, **kwargs: object) -> Prepared:
    return prepare(load_config(path), **kwargs)  # type: ignore[arg-type]


def messages(found: Prepared) -> list[str]:
    return [p.message for p in found.errors]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_startable_file_has_no_problem_and_creates_nothing(tmp_path: Path) -> None:
    found = check(write(tmp_path, free_port()))
    assert found.errors == [] and found.exit_code == 0 and found.me == 1
    assert found.transport is not None  # built, not started: the daemon runs this object
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()


def test_a_port_held_by_another_program_stops_the_start(
    tmp_path: Path, held_port: tuple[socket.socket, int]
) -> None:
    found = check(write(tmp_path, held_port[1]))
    assert messages(found) == [
        f"127.0.0.1 port {held_port[1]} is in use by another program (a corosync still running? "
        "stop it first: docs/migration.md)"
    ]
    assert found.exit_code == EXIT_RUNTIME


def test_a_running_cmanlkd_is_a_note_and_its_ports_are_not_probed(
    tmp_path: Path, held_port: tuple[socket.socket, int]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / "cmanlkd.pid", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        found = check(write(tmp_path, held_port[1]))
    finally:
        os.close(fd)
    assert found.errors == [] and found.running_pid == 4242
    assert any("cmanlkd (pid 4242) is running" in n for n in found.notes)


def test_which_node_this_is(tmp_path: Path) -> None:
    port = free_port()
    both = check(write(tmp_path, port, nodes=("127.0.0.1", "127.0.0.2")))
    assert messages(both) == [
        "the ring0_addr of nodes 1, 2 are all addresses of this host; give --nodeid to say which node this is"
    ]
    assert both.exit_code == EXIT_CONFIG
    assert check(write(tmp_path, port, nodes=("127.0.0.1", "127.0.0.2")), nodeid=2).me == 2
    assert messages(check(write(tmp_path, port), nodeid=7)) == ["--nodeid 7 is not in the nodelist"]


def test_the_daemon_waits_for_an_address_and_then_says_which_were_looked_for(tmp_path: Path) -> None:
    seen: list[str] = []
    start = time.monotonic()
    path = write(tmp_path, free_port(), nodes=("203.0.113.1",))
    found = check(path, address_wait_s=1.0, on_wait=seen.append)
    assert time.monotonic() - start >= 1.0 and seen
    assert messages(found) == [
        "no ring0_addr of the nodelist (1=203.0.113.1) is an address of this host; "
        "fix the nodelist or give --nodeid"
    ]


def test_the_key_file_of_the_native_transport_is_checked(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    text = write(tmp_path, free_port(), cmanlk=f"  keyfile: {key}\n").read_text().replace("udpu", "knet")
    path = tmp_path / "knet.conf"
    path.write_text(text.replace("127.0.0.1", "127.0.0.1\n    name: a"))
    # knet on loopback is refused anyway; the key problem comes first and says what to do
    found = check(path)
    assert messages(found)[0] == "cannot read key file: No such file or directory"
    assert found.errors[0].file == str(key)
    key.write_bytes(os.urandom(64))
    key.chmod(0o644)
    assert "key file mode is 0644; it must be 0400 or 0600" in messages(check(path))


def test_directories_that_cannot_be_created_stop_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    text = write(tmp_path, free_port()).read_text()
    (tmp_path / "c.conf").write_text(text.replace(f"state_dir: {tmp_path}/state", f"state_dir: {blocker}/x"))
    found = check(tmp_path / "c.conf")
    assert messages(found) == [f"cannot create or write {blocker}/x: Not a directory: {blocker}"]
    assert found.exit_code == EXIT_RUNTIME


def test_what_the_daemon_survives_is_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\n")  # not executable
    found = check(write(
        tmp_path, free_port(),
        cmanlk=f"  ipc_group: nosuchgroup-cmanlk\n  dlm: auto\n  dlm_fence_agent: {agent}\n",
        logging=f"  to_logfile: yes\n  logfile: {blocker}/corosync.log\n",
    ))
    assert found.errors == []
    warned = sorted(str(w) for w in found.warnings)
    group = "group 'nosuchgroup-cmanlk' does not exist; only root may use the IPC socket"
    assert any(group in w for w in warned)
    assert any(f"cannot open log file {blocker}/corosync.log: Not a directory" in w for w in warned)
    assert any(f"fence agent {agent} is not an executable file" in w for w in warned)
