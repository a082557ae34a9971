"""cmanlkd: the cluster membership daemon (see docs/cmanlkd.8.md).

    cmanlkd [-c FILE] [-f] [--check-config] [--debug] [--nodeid N] [--wait-for-address S]

The start checks (cmanlk.runtime.preflight) are one function that `--check-config` runs too, so
the check says OK exactly for the files the start gets past, in the same words when it does not.

Process behaviour:
- SIGTERM/SIGINT: graceful leave (peers see a leave JOIN and reform at once), then exit 0. When
  programs track cfg shutdown (pacemakerd), they are stopped first and the leave waits for them
  (docs/libqb.md, "Leaving"); a second signal leaves at once.
- SIGHUP: re-read the file; a valid file updates the nodelist and logging at run time; an invalid
  one is reported (every problem) and the running configuration is kept.
- systemd: READY=1 after the first ring forms, STATUS on every membership change, WATCHDOG=1
  when WatchdogSec= is set, STOPPING=1 on leave; journald-friendly stderr (no timestamps).
- Without -f the daemon detaches (double fork); with -f it stays in the foreground (systemd).
- One daemon per run directory: `<run_dir>/cmanlkd.pid` is locked for the daemon's lifetime.
- Local APIs: cmanlk's own socket `<run_dir>/cmanlk.sock` (docs/ipc.md) and corosync's libqb IPC
  (cmap, cfg, cpg, quorum, votequorum; docs/libqb.md) for corosync's client libraries and tools.

Exit codes: 0 left cleanly (or --check-config found no error), 1 configuration error,
2 usage error, 3 runtime failure (sockets, directories, another instance, a kernel DLM that
`cmanlk { dlm: yes }` cannot set up), 4 internal error (a bug),
5 killed: a peer's kill request (cmanlk-tool kill, corosync-cfgtool -k) named this node; it left
the ring and must not be restarted automatically (the unit has RestartPreventExitStatus=5).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from cmanlk.config import DEFAULT_CONFIG_PATH, ClusterConfig, TransportKind, load_config
from cmanlk.errors import ConfigError, InternalError, KernelError
from cmanlk.runtime import sched
from cmanlk.runtime.edges import companions
from cmanlk.runtime.libqb.glue import NodeLibqb
from cmanlk.runtime.logsetup import setup_logging
from cmanlk.runtime.node import Node
from cmanlk.runtime.notify import Notifier
from cmanlk.runtime.preflight import Prepared, prepare

log = logging.getLogger("cmanlk.daemon")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERNAL = 4
EXIT_KILLED = 5

LOCAL_ADDRESS_WAIT_S = 30.0
"""How long, by default, to wait at start for one of the nodelist addresses to appear on this host
(boot order: the network may come up after us); `--wait-for-address` sets it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command line (argparse exits with status 2 on a usage error)."""
    p = argparse.ArgumentParser(prog="cmanlkd", description="cmanlk cluster membership daemon")
    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("CMANLK_CONFIG", DEFAULT_CONFIG_PATH),
        help=f"corosync.conf to use (default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument("-f", "--foreground", action="store_true", help="do not detach")
    p.add_argument("--check-config", action="store_true", help="validate the file, print problems, exit")
    p.add_argument("--debug", action="store_true", help="log at debug level")
    p.add_argument(
        "-p",
        "--no-realtime",
        action="store_true",
        help="keep the scheduling and memory as started (ignore system.sched_rr/priority; no mlockall)",
    )
    p.add_argument(
        "-n",
        "--nodeid",
        type=int,
        default=None,
        help="this node's id (default: the node whose ring0_addr is a local address)",
    )
    p.add_argument(
        "--wait-for-address",
        type=float,
        default=LOCAL_ADDRESS_WAIT_S,
        metavar="SECONDS",
        help=f"wait this long for a nodelist ring0_addr to become local (default {LOCAL_ADDRESS_WAIT_S:.0f}; "
        "--check-config never waits)",
    )
    return p.parse_args(argv)


def check_config(args: argparse.Namespace) -> int:
    """--check-config: the daemon's start checks without starting; print every problem and return
    the exit code (0 no error, 1 errors)."""
    path = args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    found = prepare(config, nodeid=args.nodeid)
    warnings = [*config.warnings, *found.warnings]
    for problem in warnings:
        print(f"warning: {problem}", file=sys.stderr)
    for note in found.notes:
        print(f"note: {note}")
    if found.errors:
        for problem in found.errors:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{path}: {len(found.errors)} error(s): cmanlkd would not start", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{path}: OK ({len(config.nodes)} nodes, transport {config.transport.value}, "
        f"token {config.totem.token_ms} ms, {len(warnings)} warning(s))"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cmanlkd`; returns the process exit code."""
    args = parse_args(argv)
    if args.check_config:
        return check_config(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"cmanlkd: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging, debug=args.debug, foreground=args.foreground)
    for problem in config.warnings:
        log.warning("config: %s", problem)
    if not args.foreground:
        _daemonize()
    if not args.no_realtime:
        sched.apply(config.cmanlk.sched_rr, config.cmanlk.priority)
    prepared = _prepare(config, args)
    if prepared.errors:
        return prepared.exit_code
    try:
        lock = _lock_pidfile(Path(config.cmanlk.run_dir))
    except OSError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            return runner.run(_serve(args, prepared))
    finally:
        os.close(lock)


def _loop_factory(config: ClusterConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop with CMANLK_UVLOOP=1 (and the `fast` extra installed), else asyncio's.

    Opt-in, not the default: with udpu it cut the daemon's CPU per cpg message by 10-15 % for
    libqb (C) clients, but it made cmanlk's own IPC clients slower on a loaded host (the bench's
    pipelined send call 17 -> 288 us, a restarted node 1.4 -> 10.8 s to reach every client, load
    11-12), and it cannot open pyroute2's AF_NETLINK endpoint, which the native transport's
    rtnetlink watch needs ("invalid family 16"). docs/bench.md has the figures."""
    if os.environ.get("CMANLK_UVLOOP", "0") != "1" or config.transport is TransportKind.NATIVE:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _prepare(config: ClusterConfig, args: argparse.Namespace) -> Prepared:
    """The start checks of --check-config (cmanlk.runtime.preflight), logged; waits for an address."""
    notifier = Notifier()
    waiting: list[str] = []

    def on_wait(what: str) -> None:
        if not waiting:
            log.warning("%s", what)
            waiting.append(what)
        notifier.notify(STATUS=what, WATCHDOG="1")

    prepared = prepare(config, nodeid=args.nodeid, address_wait_s=max(0.0, args.wait_for_address),
                       on_wait=on_wait)
    notifier.close()
    for note in prepared.notes:
        log.info("%s", note)
    for problem in prepared.warnings:
        log.warning("%s", problem)
    for problem in prepared.errors:
        log.error("%s", problem)
    return prepared


async def _serve(args: argparse.Namespace, prepared: Prepared) -> int:
    config, me = prepared.config, prepared.me
    assert me is not None and prepared.transport is not None  # prepare() found no error
    try:
        node = Node(config, me, transport=prepared.transport, notifier=Notifier())
        libqb = NodeLibqb(node)
        node.companions = (*companions(node, config), libqb.run)
        node.before_leave = libqb.before_leave
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config: %s", problem)
        return EXIT_CONFIG
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_stop_signal, node, sig, libqb)
    loop.add_signal_handler(signal.SIGHUP, _on_reload_signal, node, args.config, libqb)
    try:
        await node.run()
    except OSError as exc:
        log.error("stopped: %s", exc)
        return EXIT_RUNTIME
    except KernelError as exc:
        # `dlm: yes` and no usable kernel DLM (module missing, configfs not mountable, a configfs
        # tree we cannot write): the host is at fault, not the file, and not a bug
        log.error("stopped: the kernel DLM cannot be set up (cmanlk { dlm: yes }): %s", exc)
        return EXIT_RUNTIME
    except InternalError as exc:  # the node logged the traceback where it detected it
        log.critical("internal error: %s", exc)
        return EXIT_INTERNAL
    except Exception as exc:  # a bug somewhere below: logged with its traceback, distinct exit code
        log.critical("internal error: %r", exc, exc_info=True)
        return EXIT_INTERNAL
    if node.killed_by is not None:
        log.error(
            "exiting with status %d: killed by node %d (%s); start the daemon again to rejoin",
            EXIT_KILLED,
            node.killed_by.requester,
            node.killed_by.reason,
        )
        return EXIT_KILLED
    log.info("left the cluster; exiting")
    return EXIT_OK


def _on_stop_signal(node: Node, sig: signal.Signals, libqb: NodeLibqb | None = None) -> None:
    log.info("%s received: leaving", sig.name)
    if libqb is not None:
        libqb.stop_requested()  # a second signal: leave without waiting for pacemaker any longer
    node.request_leave()


def _on_reload_signal(node: Node, path: str, libqb: NodeLibqb | None = None) -> None:
    log.info("SIGHUP received: reloading %s", path)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        log.error("reload: %d error(s); keeping the running configuration", len(exc.problems))
        return
    node.request_reload(config)
    if libqb is not None:
        libqb.config_reloaded(config)  # cmap's key tree follows the file


def _lock_pidfile(run_dir: Path) -> int:
    """Create and lock `<run_dir>/cmanlkd.pid`; return its fd. Raises OSError if another runs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "cmanlkd.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(exc.errno, f"another cmanlkd is running with run_dir {run_dir}") from exc
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _daemonize() -> None:
    """Detach: double fork, new session, stdio to /dev/null (logging keeps syslog/logfile)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
