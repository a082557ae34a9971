"""cmanlkd: the cluster membership daemon (see docs/cmanlkd.8.md).

    cmanlkd [-c FILE] [-f] [--check-config] [--debug] [--nodeid N]

Process behaviour:
- SIGTERM/SIGINT: graceful leave (peers see a leave JOIN and reform at once), then exit 0.
- SIGHUP: re-read the file; a valid file updates the nodelist and logging at run time; an invalid
  one is reported (every problem) and the running configuration is kept.
- systemd: READY=1 after the first ring forms, STATUS on every membership change, WATCHDOG=1
  when WatchdogSec= is set, STOPPING=1 on leave; journald-friendly stderr (no timestamps).
- Without -f the daemon detaches (double fork); with -f it stays in the foreground (systemd).
- One daemon per run directory: `<run_dir>/cmanlkd.pid` is locked for the daemon's lifetime.

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
import time
from pathlib import Path

from cmanlk.config import DEFAULT_CONFIG_PATH, ClusterConfig, load_config
from cmanlk.errors import ConfigError, InternalError, KernelError
from cmanlk.runtime import sched
from cmanlk.runtime.edges import companions
from cmanlk.runtime.logsetup import setup_logging
from cmanlk.runtime.node import Node
from cmanlk.runtime.notify import Notifier
from cmanlk.runtime.udpu import find_local_node
from cmanlk.types import NodeId

log = logging.getLogger("cmanlk.daemon")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERNAL = 4
EXIT_KILLED = 5

LOCAL_ADDRESS_WAIT_S = 30.0
"""How long to wait at start for one of the nodelist addresses to appear on this host (boot
order: the network may come up after us)."""
LOCAL_ADDRESS_POLL_S = 0.5


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
    return p.parse_args(argv)


def check_config(path: str) -> int:
    """--check-config: print every problem (errors and warnings); return the exit code."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    for problem in config.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    print(
        f"{path}: OK ({len(config.nodes)} nodes, transport {config.transport.value}, "
        f"token {config.totem.token_ms} ms, {len(config.warnings)} warning(s))"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cmanlkd`; returns the process exit code."""
    args = parse_args(argv)
    if args.check_config:
        return check_config(args.config)
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
    try:
        lock = _lock_pidfile(Path(config.cmanlk.run_dir))
    except OSError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    try:
        return asyncio.run(_serve(args, config))
    finally:
        os.close(lock)


async def _serve(args: argparse.Namespace, config: ClusterConfig) -> int:
    me = await _local_node(config, args.nodeid)
    if me is None:
        return EXIT_CONFIG
    try:
        node = Node(config, me, notifier=Notifier())
        node.companions = companions(node, config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config: %s", problem)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot set up the transport: %s", exc)
        return EXIT_RUNTIME
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_stop_signal, node, sig)
    loop.add_signal_handler(signal.SIGHUP, _on_reload_signal, node, args.config)
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


async def _local_node(config: ClusterConfig, wanted: int | None) -> NodeId | None:
    if wanted is not None:
        if config.node(NodeId(wanted)) is None:
            log.error("--nodeid %d is not in the nodelist of %s", wanted, config.source)
            return None
        return NodeId(wanted)
    deadline = time.monotonic() + LOCAL_ADDRESS_WAIT_S
    first = True
    while True:
        me = find_local_node(config.node_addresses(), 0, config.ip_version)
        if me is not None:
            log.info("this is node %d (its ring0_addr is local)", me)
            return me
        if time.monotonic() >= deadline:
            log.error("no nodelist ring0_addr is a unique local address of this host; use --nodeid")
            return None
        if first:
            log.warning("no nodelist ring0_addr is local yet; waiting up to %.0f s", LOCAL_ADDRESS_WAIT_S)
            first = False
        await asyncio.sleep(LOCAL_ADDRESS_POLL_S)


def _on_stop_signal(node: Node, sig: signal.Signals) -> None:
    log.info("%s received: leaving", sig.name)
    node.request_leave()


def _on_reload_signal(node: Node, path: str) -> None:
    log.info("SIGHUP received: reloading %s", path)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        log.error("reload: %d error(s); keeping the running configuration", len(exc.problems))
        return
    node.request_reload(config)


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
