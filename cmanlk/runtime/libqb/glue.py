"""The libqb server wired to a running Node: the NodeView the faces read, and what flows between them.

`NodeLibqb(node)` builds the five faces (cmap first: the others read its key tree), the server,
and a listener on the node's notifications:

- every notification goes to every face; their outputs (events, late responses) to the server;
- cpg deliveries, configuration changes and new memberships wake requests held for flow control;
- the first published membership opens the doors (corosync refuses connections until its first
  synchronisation completes);
- a SHUTDOWN delivered from this node (libcfg's try-shutdown) makes the node leave, as corosync's
  cfg calls shutdown_request;
- a RELOAD_CONFIG delivered from any node (corosync-cfgtool -R, cmanlk-tool reload) makes this
  node re-read its file: the node takes the new configuration (cmanlk.runtime.node reload rules),
  cmap's key tree follows, and when the request was ours its client is answered.

Local requests the faces make go to the Stack through `Node.handle_request`; the Stack answers
while it handles them, so `submit` returns that answer directly (request ids are taken from their
own range so they never meet the IPC server's or the node's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

from cmanlk.config import ClusterConfig, load_config
from cmanlk.errors import ConfigError, ErrorCode, UsageError
from cmanlk.runtime.libqb.server import LibqbServer
from cmanlk.runtime.node import Node, RequestBuilder
from cmanlk.runtime.transport import LinkStatus
from cmanlk.services.cfg.lib import CfgLib
from cmanlk.services.cfg.service import NodeShutDown, ReloadRequested
from cmanlk.services.cmap.lib import CmapLib
from cmanlk.services.cmap.service import CmapSync
from cmanlk.services.cmap.store import Value, u64
from cmanlk.services.cpg.lib import CpgLib
from cmanlk.services.cpg.service import CpgConfchg, CpgDeliver, CpgService, CpgTotemConfchg, Handle
from cmanlk.services.lib import LibFace
from cmanlk.services.quorum.lib import QuorumLib
from cmanlk.services.votequorum.lib import VotequorumLib
from cmanlk.services.votequorum.service import VotequorumService
from cmanlk.stack import MembershipChanged, RequestResult, Stack
from cmanlk.totem.actions import DeliverConfiguration
from cmanlk.types import Instant, NodeId, RingId

log = logging.getLogger("cmanlk.libqb")

FIRST_REQUEST_ID = 1 << 48
STOP_TRACKERS_S = 120.0
"""How long a requested leave waits for the cfg shutdown trackers it stopped (pacemaker moves its
resources away first); then the node leaves anyway."""
_WAKING = (CpgDeliver, CpgConfchg, MembershipChanged, DeliverConfiguration)
_CPG_ONLY = (CpgDeliver, CpgConfchg, CpgTotemConfchg)
"""cpg's traffic goes to the cpg face alone: the hot path (one delivery per message) skips the rest."""


class NodeView:
    """cmanlk.services.lib.NodeView over a running Node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._ips: dict[str, list[str]] = {}
        self.libqb_counters: Callable[[], Mapping[str, int]] = dict

    @property
    def me(self) -> NodeId:
        return self.node.me

    @property
    def now(self) -> Instant:
        return Instant(time.monotonic_ns())

    def submit(self, make: RequestBuilder) -> RequestResult:
        try:
            answer = self.node.submit(make)
        except UsageError as exc:
            return RequestResult(0, exc.code, str(exc))
        if isinstance(answer, asyncio.Future):  # the Stack answers while it handles a request
            answer.cancel()
            return RequestResult(0, ErrorCode.LIBRARY, "the core gave no answer to a local request")
        return answer

    def cpg_mcast(self, handle: Handle, group: bytes, payload: bytes) -> ErrorCode | None:
        try:
            return self.node.cpg_mcast(handle, group, payload)
        except UsageError as exc:
            return exc.code

    def _stack(self) -> Stack | None:
        core = self.node.core
        return core if isinstance(core, Stack) else None

    def cpg(self) -> CpgService | None:
        stack = self._stack()
        svc = stack.services.get(CpgService.service_id) if stack is not None else None
        return svc if isinstance(svc, CpgService) else None

    def votequorum(self) -> VotequorumService | None:
        stack = self._stack()
        svc = stack.services.get(VotequorumService.service_id) if stack is not None else None
        return svc if isinstance(svc, VotequorumService) else None

    def membership(self) -> tuple[RingId, tuple[NodeId, ...]]:
        snapshot = self.node.snapshot()
        return snapshot.ring_id, snapshot.members

    def config(self) -> ClusterConfig:
        return self.node.config

    def links(self) -> Sequence[LinkStatus]:
        return self.node.transport.links()

    def is_quorum_configured(self) -> bool:
        return self.node.config.quorum_provider == "corosync_votequorum"

    def node_ips(self, nodeid: NodeId) -> Sequence[str]:
        node = self.node.config.node(nodeid)
        if node is None:
            return []
        out: list[str] = []
        for link in sorted(node.addresses):
            out += self._resolve(node.addresses[link])[:1]
        return out

    def _resolve(self, text: str) -> list[str]:
        host = text.partition("%")[0]
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        if host not in self._ips:  # a host name: resolved once (the transport did at start)
            try:
                infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
                self._ips[host] = [str(info[4][0]) for info in infos]
            except OSError:
                self._ips[host] = []
        return self._ips[host]

    def reopen_logs(self) -> bool:
        from cmanlk.runtime.logsetup import setup_logging

        try:
            setup_logging(self.node.config.logging, debug=logging.getLogger().level == logging.DEBUG)
        except OSError as exc:
            log.error("reopening the log files failed: %s", exc)
            return False
        return True

    def config_versions(self) -> Mapping[NodeId, int]:
        stack = self._stack()
        svc = stack.services.get(CmapSync.service_id) if stack is not None else None
        return dict(svc.versions) if isinstance(svc, CmapSync) else {}

    def stats_keys(self) -> Mapping[str, Value]:
        out: dict[str, Value] = {}
        stack = self._stack()
        if stack is not None:
            for f in fields(stack.totem.stats):
                value = getattr(stack.totem.stats, f.name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    out[f"stats.srp.{f.name}"] = u64(value)
        for key, value in self.libqb_counters().items():
            out[f"stats.ipcs.global.{key}"] = u64(value)
        return out


def _proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class NodeLibqb:
    """The libqb IPC of one node (module docstring). `run` is a companion coroutine of the Node."""

    def __init__(self, node: Node, *, shm_dir: str = "/dev/shm") -> None:
        self.node = node
        self.view = NodeView(node)
        self.cmap = CmapLib(self.view, node.config)
        self.cfg = CfgLib(self.view, self.cmap.store)
        self.cpg = CpgLib(self.view)
        self.faces: tuple[LibFace, ...] = (
            self.cmap,
            self.cfg,
            self.cpg,
            QuorumLib(self.view),
            VotequorumLib(self.view),
        )
        self._ready = False
        self._leave_now = False
        self._voted = False
        self._stop_asked = False
        self.server = LibqbServer(
            self.faces,
            allows=self.cmap.allows,
            ready=lambda: self._ready,
            ipc_type=node.config.qb_ipc_type,
            shm_dir=shm_dir,
            pid_file=Path(node.config.cmanlk.run_dir) / "libqb.pid",
        )
        self.view.libqb_counters = self.server.counters
        node.add_listener(self._on_note, deliveries=self._on_deliveries)

    async def run(self) -> None:
        """Serve until cancelled. When another server holds the names, log it and serve nothing."""
        try:
            await self.server.start()
        except OSError as exc:
            log.error("libqb IPC not served: %s", exc)
        try:
            await asyncio.Event().wait()
        finally:
            await self.server.close()

    async def before_leave(self) -> None:
        """Before a requested leave: stop the programs that track cfg shutdown and wait for them.

        corosync leaves this to systemd (stopping corosync.service stops pacemaker.service first,
        which Requires= it); for a leave asked of cmanlkd directly (SIGTERM, cmanlk-tool leave)
        cmanlkd does the same: the trackers get TESTSHUTDOWN, then SIGTERM, and the node leaves
        once their connections have closed (at most STOP_TRACKERS_S, or until a second stop signal), so
        pacemaker shuts down cleanly and its peers see a clean shutdown, not a lost node. Not after
        a libcfg try-shutdown the trackers agreed to (or that was forced): corosync then leaves at
        once, and so does cmanlkd.
        """
        handles = [h for h in self.cfg.trackers() if h in self.server.sessions]
        if not handles or self._voted:
            return
        self.server.deliver(self.cfg.announce_shutdown())
        for handle in handles:
            pid = self.server.sessions[handle].peer.pid
            log.warning(
                "leaving: stopping pid %d (%s), which tracks cfg shutdown, first", pid, _proc_name(pid)
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TRACKERS_S
        while any(h in self.server.sessions for h in handles) and not self._leave_now:
            if time.monotonic() >= deadline:
                log.error("leaving: cfg shutdown trackers still connected after %.0f s; leaving anyway",
                          STOP_TRACKERS_S)  # fmt: skip
                return
            await asyncio.sleep(0.2)
        log.info("leaving: the cfg shutdown trackers have stopped")

    def stop_requested(self) -> None:
        """A stop signal arrived; at the second, stop waiting for the trackers."""
        if self._stop_asked:
            self._leave_now = True
        self._stop_asked = True

    def config_reloaded(self, config: ClusterConfig) -> None:
        """The daemon took a new configuration (SIGHUP): cmap's key tree follows."""
        self.server.deliver(self.cmap.reload(config))

    def _on_deliveries(self, notes: list[CpgDeliver]) -> None:
        """The hot path: a run of cpg deliveries (a frame's, mostly): every event written, one wake."""
        self.server.deliver(self.cpg.deliveries(notes))
        self.server.wake()

    def _on_note(self, note: object) -> None:
        # CpgDelivers come in runs to _on_deliveries (add_listener's deliveries=), never here
        if isinstance(note, RequestResult):  # answers reach their submitter directly (Node.submit)
            return
        if isinstance(note, _CPG_ONLY):
            self.server.deliver(self.cpg.notify(note))
            self.server.wake()
            return
        if isinstance(note, MembershipChanged):
            self._ready = True
        outputs = []
        for face in self.faces:
            outputs += face.notify(note)
        self.server.deliver(outputs)
        if isinstance(note, _WAKING):
            self.server.wake()
        if isinstance(note, NodeShutDown) and note.nodeid == self.node.me:
            log.info("shut down through libcfg (try-shutdown): leaving the cluster")
            self._voted = True  # the trackers had their say: leave without stopping them (corosync)
            self.node.request_leave()
        elif isinstance(note, ReloadRequested):
            self._reload(note)

    def _reload(self, note: ReloadRequested) -> None:
        log.info("configuration reload requested by node %d (corosync-cfgtool -R)", note.requester)
        status = ErrorCode.OK
        try:
            config = load_config(self.node.config.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            status = ErrorCode.INVALID_PARAM
            config = self.node.config
        else:
            self.node.request_reload(config)
        outputs = self.cmap.reload(config, status)
        if note.requester == self.node.me:
            outputs += self.cfg.reloaded(note.cookie, status)
        self.server.deliver(outputs)
