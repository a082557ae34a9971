"""What cmanlkd checks before it starts, as one function that `--check-config` runs too.

`prepare(config, ...)` takes a loaded ClusterConfig (`load_config` already parsed it, resolved
its host names and checked its IPv6 scopes) and runs, on this host, every check the daemon's
start depends on, in the order the start needs them:

1. `run_dir` and `state_dir` can be created and written (the pid file, the IPC socket, the ring
   seq file);
2. which node this is: `--nodeid`, else the one node whose ring0_addr is an address of this host
   (the daemon waits up to `address_wait_s` for it to appear: the network may come up after us;
   `--check-config` does not wait);
3. the transport builds — by building it with `build_transport`, the very object the daemon then
   runs: the key file of an encrypted native transport (present, 0400/0600, 32..4096 bytes), the
   `cryptography` package, the native transport's refusals (a loopback address, as in Debian's
   stock corosync.conf);
4. this node's address and port on each link are free: a corosync still running holds them
   (skipped when a cmanlkd already holds this run_dir: the check then runs before a reload);
5. `cmanlk { dlm: yes }`: this kernel has a DLM (a module or its configfs tree).

Warnings, which the daemon logs and starts anyway: an `ipc_group` that does not exist (only root
may connect), a log file that cannot be opened (logging goes on without it), a fence agent that
is not an executable file, a native link whose address is not on this host yet (it is bound when
it appears).

Because the daemon's start and `--check-config` call this one function, the check says OK exactly
for the files the start gets past, and both say the same words when it does not: every problem is
a `ConfigProblem`, printed as `file:line: key: message` by the check and logged by the daemon.
Nothing here creates a file or leaves a socket open; the port probe binds and closes at once.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cmanlk.config import ClusterConfig, TransportKind
from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.runtime import statedir
from cmanlk.runtime.transport import Transport, build_transport
from cmanlk.runtime.udpu import local_candidates, resolve
from cmanlk.types import NodeId

EXIT_CONFIG = 1
EXIT_RUNTIME = 3
ADDRESS_POLL_S = 0.5
"""How often the nodelist is compared with this host's addresses while the daemon waits."""
PIDFILE = "cmanlkd.pid"


@dataclass
class Prepared:
    """What `prepare` found: the node, its transport (built, not started) and every problem.

    `errors` stop the start; `exit_code` is the daemon's exit status for them (1 for the file,
    3 for the host: directories, ports, the kernel). `notes` are facts an administrator wants to
    see (derived nodeids, this node, a cmanlkd already running).
    """

    config: ClusterConfig
    me: NodeId | None = None
    transport: Transport | None = None
    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0
    running_pid: int | None = None

    def error(self, key: str, message: str, code: int, line: int = 0, source: str | None = None) -> None:
        self.errors.append(ConfigProblem(source or self.config.source, line, key, message))
        if self.exit_code != EXIT_CONFIG:
            self.exit_code = code

    def warn(self, key: str, message: str, line: int = 0) -> None:
        self.warnings.append(ConfigProblem(self.config.source, line, key, message))


def prepare(
    config: ClusterConfig,
    *,
    nodeid: int | None = None,
    address_wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Prepared:
    """Run the start checks of the module docstring on `config`; return what was found.

    `nodeid` is `--nodeid`. `address_wait_s` bounds the wait for a local ring0_addr; `on_wait` is
    called with a description at each poll while it waits (the daemon logs it once and keeps
    systemd's watchdog fed). A cmanlkd already running with this run_dir is a note, and its ports
    are not probed: the daemon then stops on the pid file it cannot lock, the check is a check
    before a reload. Never raises for a problem of the file or the host: they are in the result.
    """
    out = Prepared(config)
    for node in config.nodes:
        if node.nodeid_derived_from is not None:
            out.notes.append(f"node {node.nodeid}: nodeid derived from ring0_addr {node.nodeid_derived_from}")
    _check_directories(out)
    out.running_pid = running_pid(Path(config.cmanlk.run_dir))
    if out.running_pid is not None:
        out.notes.append(
            f"cmanlkd (pid {out.running_pid}) is running with run_dir {config.cmanlk.run_dir}: its ports "
            "are not probed; SIGHUP applies this file's nodelist and logging (docs/config.md, Reload)"
        )
    out.me = _local_node(out, nodeid, address_wait_s, on_wait)
    if out.me is None:
        return out
    out.transport = _build_transport(out, out.me)
    if out.transport is not None and out.running_pid is None:
        _probe_ports(out, out.me)
    _check_kernel_dlm(out)
    _check_ipc_group(out)
    _check_logfile(out)
    _check_fence_agents(out)
    return out


def running_pid(run_dir: Path) -> int | None:
    """Return the pid of the cmanlkd holding `<run_dir>/cmanlkd.pid` locked, or None."""
    try:
        fd = os.open(run_dir / PIDFILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)
    return None


# --- the checks, in the order prepare() runs them ----------------------------------------------


def _check_directories(out: Prepared) -> None:
    settings = out.config.cmanlk
    for key, path in (("cmanlk.run_dir", settings.run_dir), ("cmanlk.state_dir", settings.state_dir)):
        why = statedir.creation_problem(path)
        if why is not None:
            out.error(key, f"cannot create or write {path}: {why}", EXIT_RUNTIME)


def _local_node(
    out: Prepared, wanted: int | None, wait_s: float, on_wait: Callable[[str], None] | None
) -> NodeId | None:
    config = out.config
    if wanted is not None:
        if config.node(NodeId(wanted)) is None:
            out.error("nodelist", f"--nodeid {wanted} is not in the nodelist", EXIT_CONFIG)
            return None
        return NodeId(wanted)
    deadline = time.monotonic() + wait_s
    listed = ", ".join(f"{n.nodeid}={n.addresses[0]}" for n in config.nodes)
    while True:
        found = local_candidates(config.node_addresses(), 0, config.ip_version)
        if len(found) == 1:
            out.notes.append(f"this is node {found[0]} (its ring0_addr is an address of this host)")
            return found[0]
        if len(found) > 1:
            ids = ", ".join(str(n) for n in found)
            out.error("nodelist", f"the ring0_addr of nodes {ids} are all addresses of this host; "
                      "give --nodeid to say which node this is", EXIT_CONFIG)
            return None
        if time.monotonic() >= deadline:  # the same words after a wait: the daemon logged the wait
            out.error("nodelist", f"no ring0_addr of the nodelist ({listed}) is an address of this host; "
                      "fix the nodelist or give --nodeid", EXIT_CONFIG)
            return None
        if on_wait is not None:
            on_wait(f"no ring0_addr of the nodelist ({listed}) is an address of this host yet; "
                    f"waiting up to {wait_s:.0f} s")
        time.sleep(ADDRESS_POLL_S)


def _build_transport(out: Prepared, me: NodeId) -> Transport | None:
    try:
        return build_transport(out.config, me)
    except ConfigError as exc:
        for problem in exc.problems:
            out.errors.append(problem)
        out.exit_code = EXIT_CONFIG
    except ImportError as exc:  # the native transport's crypto needs the cryptography package
        out.error("totem.crypto_cipher", f"encryption needs the Python package cryptography "
                  f"(Debian: python3-cryptography): {exc}", EXIT_CONFIG)
    except OSError as exc:
        out.error("nodelist", f"cannot set up the transport: {exc.strerror or exc}", EXIT_RUNTIME)
    return None


def _probe_ports(out: Prepared, me: NodeId) -> None:
    """Bind (and close at once) what the transport binds at start, without SO_REUSEADDR."""
    config = out.config
    mine = config.node(me)
    if mine is None:
        return
    for link, text in mine.addresses.items():
        port = config.link(link).port
        binds = [port]
        if config.transport is TransportKind.UDP:
            binds = [port, port - 1]  # udp receives on mcastport and sends from mcastport - 1
        for bind_port in binds:
            why = _bind_problem(text, bind_port, config.ip_version)
            if why is None:
                continue
            key = f"nodelist.node.ring{link}_addr"
            if why.errno == errno.EADDRINUSE:
                out.error(key, f"{text} port {bind_port} is in use by another program (a corosync still "
                          "running? stop it first: docs/migration.md)", EXIT_RUNTIME, mine.line)
            elif config.transport is TransportKind.NATIVE and link != 0:
                out.warn(key, f"link {link}: {text} is not an address of this host yet "
                         f"({why.strerror}); the link is bound when it appears", mine.line)
            else:
                why_text = f"cannot bind {text} port {bind_port}: {why.strerror}"
                out.error(key, why_text, EXIT_RUNTIME, mine.line)


def _bind_problem(text: str, port: int, ip_version: str) -> OSError | None:
    try:
        endpoint = resolve(text, port, ip_version)
        with socket.socket(endpoint.family, socket.SOCK_DGRAM) as sock:
            sock.bind(endpoint.sockaddr)
    except OSError as exc:
        return exc
    return None


def _check_kernel_dlm(out: Prepared) -> None:
    if out.config.cmanlk.dlm != "yes":
        return
    from cmanlk.runtime.dlmd import dlm_available

    if not dlm_available():
        out.error("cmanlk.dlm", "dlm: yes, but this kernel has no DLM (no dlm module, no "
                  "/sys/kernel/config/dlm); load it or set dlm: no", EXIT_RUNTIME)


def _check_ipc_group(out: Prepared) -> None:
    name = out.config.cmanlk.ipc_group
    if name is None:
        return
    try:
        grp.getgrnam(name)
    except KeyError:
        out.warn("cmanlk.ipc_group", f"group {name!r} does not exist; only root may use the IPC socket")


def _check_logfile(out: Prepared) -> None:
    from cmanlk.runtime.logsetup import logfile_problem

    why = logfile_problem(out.config.logging)
    if why is not None:
        out.warn("logging.logfile", f"{why}; the daemon logs without it")


def _check_fence_agents(out: Prepared) -> None:
    if out.config.cmanlk.dlm == "no":
        return
    for device in out.config.cmanlk.fence_devices:
        if not (os.path.isfile(device.agent) and os.access(device.agent, os.X_OK)):
            out.warn("cmanlk.fence.agent", f"node {device.nodeid}: fence agent {device.agent} is not an "
                     "executable file; fencing that node fails until it is", device.line)
