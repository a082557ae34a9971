"""No corosync.conf is OK for `cmanlkd --check-config` and then refused, or stuck, at start.

For every file of tests/system/corpus/ (real-world formats: corosync's example, votequorum(5),
pcs, Debian's stock file, …; see its README): a network namespace holding that node's addresses
on dummy NICs, with its own /etc/hosts and a resolver that answers nothing; `--check-config`
there; then the daemon there. A file the check calls OK must form its (one-node) ring within a
bound and leave cleanly on SIGTERM; a file the check refuses must make the daemon stop, non-zero,
with every error message the check printed. Each file's header also says what to expect, so a
change of verdict is seen. All daemons of the corpus run at once (bounded in time); the
namespaces and their /etc/netns entries are removed at the end.

A second test runs Debian's corosync in a namespace and shows that the check and the daemon both
refuse to start beside it, naming the port it holds, where a switch from corosync would
otherwise fail later and less clearly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.netlab import NetLab

pytestmark = [pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
START_BOUND_S = 90.0
"""A file the check calls OK forms its ring within this (pcs-totem-options: token 10 s, so the
lone node waits out a 12 s consensus; the rest take 4-5 s; all start at once on a shared host)."""
REFUSE_BOUND_S = 60.0
"""A refused file's daemon is gone within this (it waits --wait-for-address 2 s at most)."""
ADDRESS_WAIT_S = "2"


@dataclass
class Entry:
    """One corpus file and what its header asks for."""

    path: Path
    nics: dict[str, list[str]]
    hosts: dict[str, str]
    key: bool
    expect: str
    node: int = 0
    workdir: Path = Path()
    conf: Path = Path()
    check: subprocess.CompletedProcess[str] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "daemon.log"


def read_entry(path: Path) -> Entry:
    header = dict(re.findall(r"^# ([a-z-]+): (.*)$", path.read_text(), re.MULTILINE))
    nics: dict[str, list[str]] = {}
    for part in header["this-node"].split(";"):
        name, *addrs = part.split()
        nics[name] = addrs
    hosts = dict(item.split("=", 1) for item in header.get("hosts", "").split())
    return Entry(path, nics, hosts, header.get("key", "no") == "yes", header["expect"])


class CorpusLab(NetLab):
    """One namespace per corpus file. Each NIC is one end of a veth pair whose other end stays in
    the same namespace (carrier up, connected to nothing): files that share addresses never hear
    each other, and nothing leaves the namespace."""

    entries: dict[int, Entry]

    def add_nic(self, node: int, link: int, name: str | None = None) -> None:
        entry = self.entries[node]
        nic = name or sorted(entry.nics)[link]
        self.ip(node, "link", "add", nic, "type", "veth", "peer", "name", f"{nic}-end")
        for address in entry.nics[nic]:
            self.ip(node, "addr", "add", address, "dev", nic, *(["nodad"] if ":" in address else []))
        self.ip(node, "link", "set", f"{nic}-end", "up")
        self.ip(node, "link", "set", nic, "up")


@pytest.fixture
def corpus_lab(tmp_path: Path) -> Iterator[tuple[CorpusLab, list[Entry]]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    entries = [read_entry(p) for p in sorted(CORPUS.glob("*.conf"))]
    lab = CorpusLab(links=max(len(e.nics) for e in entries), tag="q")
    lab.entries = {}
    etc_dirs: list[Path] = []
    with lab:
        try:
            for number, entry in enumerate(entries, 1):
                entry.node = number
                entry.workdir = tmp_path / entry.path.stem
                entry.workdir.mkdir()
                lab.entries[number] = entry
                lab.links = len(entry.nics)
                lab.add_node(number)
                etc = Path("/etc/netns") / lab.ns(number)  # `ip netns exec` mounts these over /etc
                etc.mkdir(parents=True)
                etc_dirs.append(etc)
                hosts = "".join(f"{addr} {name}\n" for name, addr in entry.hosts.items())
                (etc / "hosts").write_text("127.0.0.1 localhost\n" + hosts)
                (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing answers there
                entry.conf = prepare_copy(entry)
            yield lab, entries
        finally:
            for etc in etc_dirs:
                shutil.rmtree(etc, ignore_errors=True)
            try:
                os.rmdir("/etc/netns")
            except OSError:
                pass  # not empty: another run uses it


def prepare_copy(entry: Entry) -> Path:
    """The file as written, with its state kept in the test's directory and nothing sent to the
    host's syslog or log files; the namespace gets the key when the header says so."""
    work = entry.workdir
    text = entry.path.read_text()
    text = re.sub(r"(?m)^(\s*)logfile: \S+", rf"\1logfile: {work}/corosync.log", text)
    text = text.replace("to_syslog: yes", "to_syslog: no")
    key = work / "authkey"
    if entry.key:
        key.write_bytes(os.urandom(256))
        key.chmod(0o400)
    text += (f"\ncmanlk {{\n  run_dir: {work}/run\n  state_dir: {work}/state\n  keyfile: {key}\n"
             "  dbus: no\n}\n")
    conf = work / "corosync.conf"
    conf.write_text(text)
    return conf


def daemon_cmd(conf: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cmanlk.daemon", "-c", str(conf), *extra]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return {**out, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def formed(entry: Entry) -> bool:
    try:
        status = json.loads((entry.workdir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(status.get("state") == "OPERATIONAL" and status.get("node_id") in status.get("members", []))


def test_check_config_and_the_daemon_agree_on_every_corpus_file(
    corpus_lab: tuple[CorpusLab, list[Entry]],
) -> None:
    lab, entries = corpus_lab
    for entry in entries:
        entry.check = lab.run(entry.node, *daemon_cmd(entry.conf, "--check-config"), check=False)
        entry.errors = [line.removeprefix("error: ") for line in entry.check.stderr.splitlines()
                        if line.startswith("error: ")]
    verdicts = {e.path.name: ("ok" if e.check and e.check.returncode == 0 else e.errors) for e in entries}
    for entry in entries:  # what each header expects, so a change of verdict shows
        assert entry.check is not None
        if entry.expect == "ok":
            assert entry.check.returncode == 0, f"{entry.path.name}: {entry.check.stderr}"
        else:
            words = entry.expect.removeprefix("refused: ")
            assert entry.check.returncode == 1 and entry.errors, f"{entry.path.name}: {entry.check.stdout}"
            first = entry.errors[0]
            assert words in first, f"{entry.path.name}: first error {first!r}, want {words!r}"
    for entry in entries:
        cmd = daemon_cmd(entry.conf, "-f", "-p", "--wait-for-address", ADDRESS_WAIT_S)
        entry.daemon = lab.popen(entry.node, cmd, entry.log, env())
    deadline = time.monotonic() + START_BOUND_S
    pending = list(entries)
    while pending and time.monotonic() < deadline:
        for entry in list(pending):
            assert entry.daemon is not None
            if verdicts[entry.path.name] == "ok":
                stopped = f"{entry.path.name}: OK for the check, then stopped:\n"
                assert entry.daemon.poll() is None, stopped + tail(entry)
                if formed(entry):
                    pending.remove(entry)
            elif entry.daemon.poll() is not None:
                pending.remove(entry)
        time.sleep(0.2)
    assert not pending, "stuck (no ring, no exit) within the bound: " + ", ".join(
        f"{e.path.name}\n{tail(e)}" for e in pending
    )
    for entry in entries:
        assert entry.daemon is not None
        log = entry.log.read_text(errors="replace")
        if verdicts[entry.path.name] == "ok":
            entry.daemon.send_signal(signal.SIGTERM)
            assert entry.daemon.wait(timeout=30) == 0, f"{entry.path.name}: unclean leave\n" + tail(entry)
            continue
        assert entry.daemon.returncode in (1, 3), f"{entry.path.name}: exit {entry.daemon.returncode}\n{log}"
        for message in entry.errors:  # the daemon stops with the check's own words
            assert message in log, f"{entry.path.name}: the check said {message!r}; the daemon:\n{log}"


def tail(entry: Entry, lines: int = 15) -> str:
    try:
        return "\n".join(entry.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def test_a_running_corosync_stops_the_check_and_the_start_with_its_port_named(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("corosync") is None:
        pytest.skip("needs root and Debian's corosync (scripts/setup.sh installs it)")
    nodelist = "".join(f"  node {{\n    ring0_addr: 10.75.0.{n}\n    nodeid: {n}\n  }}\n" for n in (1, 2))
    base = ("totem {\n  version: 2\n  cluster_name: switch\n  transport: udpu\n}\n"
            f"nodelist {{\n{nodelist}}}\nquorum {{\n  provider: corosync_votequorum\n  two_node: 1\n}}\n"
            "logging {\n  to_stderr: yes\n  to_syslog: no\n}\n")
    (tmp_path / "cs-state").mkdir()
    corosync_conf = tmp_path / "corosync.conf"
    corosync_conf.write_text(base + f"system {{\n  state_dir: {tmp_path}/cs-state\n}}\n")
    ours = tmp_path / "cmanlk.conf"
    dirs = f"  run_dir: {tmp_path}/run\n  state_dir: {tmp_path}/state\n"
    ours.write_text(base + f"cmanlk {{\n{dirs}  dbus: no\n}}\n")
    entry = Entry(ours, {"eth0": ["10.75.0.1/24"]}, {}, False, "refused", node=1, workdir=tmp_path, conf=ours)
    lab = CorpusLab(tag="q")
    lab.entries = {1: entry}
    with lab:
        lab.add_node(1)
        corosync = lab.popen(1, ["corosync", "-f", "-c", str(corosync_conf)], tmp_path / "corosync.log")
        try:
            deadline = time.monotonic() + 20
            log = tmp_path / "corosync.log"
            while "ready to provide service" not in log.read_text(errors="replace"):
                assert corosync.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            check = lab.run(1, *daemon_cmd(ours, "--check-config"), check=False)
            expected = "10.75.0.1 port 5405 is in use by another program (a corosync still running?"
            assert check.returncode == 1 and expected in check.stderr, check.stdout + check.stderr
            start = lab.run(1, *daemon_cmd(ours, "-f", "-p"), check=False)
            assert start.returncode == 3 and expected in start.stderr, start.stderr
            assert corosync.poll() is None  # nothing was stopped
        finally:
            corosync.send_signal(signal.SIGTERM)  # lets corosync remove its libqb files in /dev/shm
            try:
                corosync.wait(timeout=10)
            except subprocess.TimeoutExpired:
                corosync.kill()
