"""cmanlkd's own dlm_controld: drives the kernel DLM from the node's membership, quorum and cpg.

`DlmDaemon` is a companion of the `Node` (it runs under the node's TaskGroup). It owns one pure
`cmanlk.dlm.companion.DlmCompanion` (around `cmanlk.dlm.control.DlmCtl`: every decision, the
holding of group events until the cluster view caught up included, lives there, so the simulator
drives the same code) and is its runtime, the way `node.py` is the Stack's:

- inputs: the node's notifications (`MembershipChanged`, `QuorumChanged` → `ClusterChanged` with
  the nodelist's addresses; `CpgConfchg`/`CpgDeliver` of our own groups → `GroupConfchg`/
  `GroupMessage`), kernel uevents (online/offline/remove of /kernel/dlm/<ls> → `LockspaceOnline`/
  `LockspaceOffline`/`LockspaceRemoved`; lost uevents → `KernelLockspaces` from sysfs), fence
  agent exits, admin fence acks, one timer at `next_deadline`;
- outputs, in dlmctl's order: configfs/sysfs actions (`kernel_glue.configfs.carry_out`), cpg
  requests on the node's Stack with one daemon-internal handle (group "dlm:ls:<name>" per
  lockspace, plus "cmanlk:dlm" where fencing results are announced), fence agent runs
  (`cmanlk.runtime.fence.FenceRunner`).

Startup (dlm_controld's order, shared/reference/dlm-controld-protocol.md §3): load configfs and
dlm, mount configfs, remove a cluster a previous daemon left behind, open the uevent socket,
then join the lockspaces the kernel already waits for and configure the cluster once quorate.
`cmanlk { dlm: auto }` does nothing on a host without the dlm module (a daemon without DLM is
normal); `dlm: yes` fails the daemon when the kernel DLM cannot be set up.

Cpg requests are sent in order by one task: the Stack refuses joins and sends with `try_again`
while a new membership is synchronised (libcpg callers retry the same way), so each request is
retried with GROUP_RETRY's growing pauses until accepted or 60 s passed.

A kernel action that fails is logged and counted (`kernel_errors`) and the rest of the batch
still runs: ENOENT on a lockspace attribute means its last user went away meanwhile (the
remove uevent follows), anything else is a disagreement with the kernel an admin must see.

Shutdown (the node stops: the companion is cancelled): `ShutdownRequested` removes comms and
cluster (dlmctl refuses while lockspaces exist — the kernel still needs them), agents are
killed, the uevent socket closed.

Deviation from dlm_controld: no dlm-monitor/plock devices and no dlm_tool socket; status and
fence acks go through cmanlkd's IPC (`cmanlk-tool dlm`, `cmanlk-tool fence-ack N`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cmanlk.client.connection import RetryPolicy
from cmanlk.config import ClusterConfig
from cmanlk.dlm import control as dlmctl
from cmanlk.dlm.companion import (
    DLMD_HANDLE,
    FENCE_GROUP,
    CompanionOutput,
    DlmCompanion,
)
from cmanlk.dlm.control import (
    DlmCtl,
    DlmEvent,
    DlmSettings,
    FenceAgentExited,
    KernelLockspaces,
    LockspaceOffline,
    LockspaceOnline,
    LockspaceRemoved,
)
from cmanlk.dlm.fencing import FencingPolicy, RunFenceAgent
from cmanlk.errors import ErrorCode, KernelError, UsageError
from cmanlk.runtime import clock
from cmanlk.runtime.fence import FenceDevice, FenceRunner
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import CpgJoin, CpgLeave, CpgMcast, CpgRequest
from cmanlk.stack import ServiceRequest
from cmanlk.types import Instant, NodeId
from kernel_glue.configfs import carry_out, clear_stale, parse_sockaddr_storage
from kernel_glue.dlm_protocol import DlmControl, DlmSysfs, DlmUeventSource, LockspaceUevent, UeventsLost

log = logging.getLogger("cmanlk.dlmd")

GROUP_RETRY = RetryPolicy(first_s=0.005, longest_s=0.25, limit_s=60.0)
"""Re-sending a cpg request refused with try_again/busy (or not answered): pauses from 5 ms (a
sync takes ~ms) doubling to 250 ms; a request still refused after 60 s is dropped and logged (a
sync never lasts this long unless the ring keeps re-forming; the lockspace then shows what it
waits for)."""
MAX_PENDING_GROUP_OPS = 4096
"""cpg requests queued for the sender: a few per lockspace change, MAX_LOCKSPACES lockspaces."""
GROUP_REQUEST_TIMEOUT_S = 5.0
RETRYABLE = frozenset({ErrorCode.TRY_AGAIN, ErrorCode.BUSY, ErrorCode.TIMEOUT})
"""cpg refusals that clear by themselves: sync running, join/leave of this group still in flight,
no answer in time."""
DLM_CONFIGFS = "/sys/kernel/config/dlm"
AGENT_TAIL_SHOWN = 200
"""Characters of a fence agent's output shown in the status: its last line or two."""
DLM_SYSFS = "/sys/kernel/dlm"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NodeLike(Protocol):
    """What DlmDaemon needs of the running node (cmanlk.runtime.node.Node fits)."""

    me: NodeId

    def add_listener(self, listener: Callable[[object], None]) -> None: ...

    def remove_listener(self, listener: Callable[[object], None]) -> None: ...

    def request(
        self, build: Callable[[Instant, int], ServiceRequest], timeout_s: float = ...
    ) -> Awaitable[str]: ...


@dataclass
class DlmdStats:
    """Counters shown by `cmanlk-tool dlm --json` (key "daemon")."""

    kernel_errors: dict[str, int] = field(default_factory=dict)
    group_requests: int = 0
    group_retries: int = 0
    group_dropped: int = 0
    group_events_held: int = 0
    uevents: int = 0
    uevents_lost: int = 0

    def as_dict(self) -> dict[str, object]:
        """Return the counters as plain data."""
        return {"kernel_errors": dict(self.kernel_errors), "group_requests": self.group_requests,
                "group_retries": self.group_retries, "group_dropped": self.group_dropped,
                "group_events_held": self.group_events_held,
                "uevents": self.uevents, "uevents_lost": self.uevents_lost}


class DlmDaemon:
    """The DLM control companion of one node. `await run()` under the node's TaskGroup."""

    def __init__(
        self,
        node: NodeLike,
        settings: DlmSettings,
        *,
        control: DlmControl,
        sysfs: DlmSysfs,
        uevents: DlmUeventSource,
        addrs: Mapping[NodeId, tuple[IPAddress, ...]],
        fence_devices: Mapping[NodeId, FenceDevice] | None = None,
        prepare: Callable[[], object] | None = None,
        optional: bool = False,
    ) -> None:
        """Build the companion (nothing runs before `run()`).

        `prepare` makes the kernel DLM usable (kmod.ensure_dlm_kernel; run in a thread, may raise
        KernelError). `optional` (`dlm: auto`): a kernel that cannot be set up disables the
        companion instead of stopping the node. Raises ConfigError when a fence device is invalid.
        """
        self.node = node
        self.companion = DlmCompanion(settings, addrs, os.getpid())
        self.control = control
        self.sysfs = sysfs
        self.uevents = uevents
        self.fence = FenceRunner(fence_devices or {}, self._on_agent_exit)
        self.prepare = prepare
        self.optional = optional
        self.stats = DlmdStats()
        self._outbox: asyncio.Queue[CpgRequest] = asyncio.Queue(MAX_PENDING_GROUP_OPS)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: Instant | None = None

    @property
    def ctl(self) -> DlmCtl:
        """The pure lockspace and fencing core (the companion's)."""
        return self.companion.ctl

    @property
    def ready(self) -> bool:
        return self.companion.ready

    # -- public API -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Set up the kernel, then serve until cancelled; cleans up on the way out.

        Raises KernelError when the kernel DLM cannot be set up (the node then stops).
        """
        self.node.add_listener(self._on_notification)
        try:
            try:
                await self._setup_kernel()
            except KernelError as exc:
                if not self.optional:
                    raise
                log.warning("dlm: auto: kernel DLM not usable (%s); DLM control disabled", exc)
                return
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send_loop(), name="dlmd-cpg")
                self._carry_out_all(self.companion.start(clock.now(), tuple(self.sysfs.lockspaces())))
                await self._uevent_loop()
        finally:
            self._shutdown()
            await self.fence.close()
            await self.uevents.close()

    async def _setup_kernel(self) -> None:
        if self.prepare is not None:
            await asyncio.to_thread(self.prepare)
        removed = clear_stale(self.control)
        if removed:
            log.warning("dlm: removed a cluster left by a previous daemon: %s", ", ".join(removed))
        await self.uevents.start()
        log.info("dlm: kernel DLM ready (cluster %s, fencing %s)", self.ctl.settings.cluster_name,
                 "on" if self.ctl.settings.fencing.enabled else "off")

    def status(self) -> dict[str, Any]:
        """Return dlmctl's state plus the daemon's counters (the `dlm` IPC reply, docs/cli-json.md).

        Each fencing victim also carries `for_ns` (how long it has been a victim), whether it
        has a fence device, and `agent`: the last agent run's exit code, duration and output
        tail (None before the first run ends).
        """
        now = clock.now()
        out = self.ctl.status(now)
        agents = {n: {"exit_code": o.exit_code, "seconds": round(o.seconds, 3),
                      "output_tail": o.output_tail[-AGENT_TAIL_SHOWN:]} for n, o in self.fence.last.items()}
        fencing = out.get("fencing")
        if isinstance(fencing, dict):
            for v in fencing.get("victims", []):
                nodeid = NodeId(int(v["nodeid"]))
                v["for_ns"] = int(now - int(v["since_ns"]))
                v["has_device"] = nodeid in self.fence.devices
                v["agent"] = agents.get(nodeid)
        self.stats.group_events_held = self.companion.stats.group_events_held
        out["daemon"] = {**self.stats.as_dict(), "ready": self.ready, "node_id": int(self.node.me),
                         "fence_agents": {str(n): a for n, a in agents.items()}}
        return out

    def fence_ack(self, nodeid: NodeId) -> dict[str, Any]:
        """An admin confirms `nodeid` is off: recovery may go on. Returns the reply."""
        if nodeid == self.node.me:
            raise UsageError(ErrorCode.INVALID_PARAM, "a node cannot acknowledge its own fencing")
        self._carry_out_all(self.companion.fence_ack(clock.now(), nodeid))
        return {"result": "acknowledged", "nodeid": int(nodeid),
                "waiting": {ls["name"]: ls["waiting_for"] for ls in self.status()["lockspaces"]}}

    # -- inputs ---------------------------------------------------------------------------------
    def _on_notification(self, item: object) -> None:
        self._carry_out_all(self.companion.notification(clock.now(), item))

    def _on_agent_exit(self, nodeid: NodeId, exit_code: int) -> None:
        self._feed(FenceAgentExited(clock.now(), nodeid, exit_code))

    async def _uevent_loop(self) -> None:
        async for ev in self.uevents.events():
            self.stats.uevents += 1
            match ev:
                case LockspaceUevent(action="online", lockspace=name):
                    log.info("lockspace %s: join requested by the kernel", name)
                    self._feed(LockspaceOnline(clock.now(), name))
                case LockspaceUevent(action="offline", lockspace=name):
                    log.info("lockspace %s: leave requested by the kernel", name)
                    self._feed(LockspaceOffline(clock.now(), name))
                case LockspaceUevent(action="remove", lockspace=name):
                    self._feed(LockspaceRemoved(clock.now(), name))
                case UeventsLost():
                    self.stats.uevents_lost += 1
                    self._feed(KernelLockspaces(clock.now(), tuple(self.sysfs.lockspaces())))
                case _:
                    log.debug("uevent %s", ev)

    # -- the core and its actions ---------------------------------------------------------------
    def _feed(self, event: DlmEvent) -> None:
        """Hand `event` to the companion and carry out its outputs in order; re-arm the timer."""
        self._carry_out_all(self.companion.event(event))

    def _carry_out_all(self, outputs: list[CompanionOutput]) -> None:
        for output in outputs:
            match output:
                case CpgJoin() | CpgLeave() | CpgMcast():
                    self._queue(output)
                case RunFenceAgent():
                    self.fence.carry_out(output)
                case _:
                    self._kernel(output)
        self._arm_timer()

    def _kernel(self, action: dlmctl.KernelAction) -> None:
        # logged before it is carried out, failed or not: with `logger_subsys { subsys: dlmd
        # debug: on }` the log holds the kernel protocol in the reference traces' format
        log.debug("kernel: %s", describe_kernel_action(action))
        try:
            carry_out(action, self.control, self.sysfs)
        except KernelError as exc:
            key = errno.errorcode.get(exc.errno, str(exc.errno))
            self.stats.kernel_errors[key] = self.stats.kernel_errors.get(key, 0) + 1
            gone = isinstance(action, dlmctl.SysfsWrite) and exc.errno == errno.ENOENT
            log.log(logging.INFO if gone else logging.ERROR, "dlm: %s failed: %s", type(action).__name__, exc)

    def _queue(self, request: CpgRequest) -> None:
        try:
            self._outbox.put_nowait(request)
        except asyncio.QueueFull:
            self.stats.group_dropped += 1
            log.error("dlm: %d cpg requests pending; %s dropped", MAX_PENDING_GROUP_OPS,
                      type(request).__name__)

    async def _send_loop(self) -> None:
        """Send cpg requests in order; each is retried while the Stack answers try_again."""
        while True:
            request = await self._outbox.get()
            self.stats.group_requests += 1
            retry = GROUP_RETRY.start(time.monotonic())
            build = _cpg_request(request)
            while True:
                try:
                    await self.node.request(build, GROUP_REQUEST_TIMEOUT_S)
                    break
                except UsageError as exc:
                    if exc.code is ErrorCode.NOT_RUNNING:
                        return  # the node left: nothing more to send
                    pause = retry.next_pause(time.monotonic()) if exc.code in RETRYABLE else None
                    if pause is None:
                        self.stats.group_dropped += 1
                        log.error("dlm: cpg %s refused: %s (%s)", type(request).__name__, exc, exc.code)
                        break
                self.stats.group_retries += 1
                await asyncio.sleep(pause)

    def _arm_timer(self) -> None:
        deadline = self.companion.next_deadline
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._carry_out_all(self.companion.deadline(clock.now()))

    def _shutdown(self) -> None:
        if self.companion.stopped:
            return
        self.node.remove_listener(self._on_notification)
        for action in self.companion.shutdown(clock.now()):
            self._kernel(action)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _cpg_request(request: CpgRequest) -> Callable[[Instant, int], ServiceRequest]:
    def build(now: Instant, request_id: int) -> ServiceRequest:
        return ServiceRequest(now, CPG_SERVICE, request, request_id)

    return build


def describe_kernel_action(action: dlmctl.KernelAction) -> str:
    """Return `action` as a line of the kernel protocol traces (shared/kernel-lab/traces).

    `mkdir   <path>`, `rmdir   <path>`, `write   <path> '<value>'` with full configfs/sysfs
    paths and the value as a Python bytes literal's body; a comms address as
    `AF_INET 10.0.0.1 (sockaddr_storage, 128 bytes)`.
    """
    match action:
        case dlmctl.ConfigfsMkdir(path):
            return f"mkdir   {DLM_CONFIGFS}/{path}"
        case dlmctl.ConfigfsRmdir(path):
            return f"rmdir   {DLM_CONFIGFS}/{path}"
        case dlmctl.ConfigfsWrite(path, value) if path.endswith("/addr"):
            addr = parse_sockaddr_storage(value)
            family = "AF_INET6" if isinstance(addr, ipaddress.IPv6Address) else "AF_INET"
            return f"write   {DLM_CONFIGFS}/{path} {family} {addr} (sockaddr_storage, {len(value)} bytes)"
        case dlmctl.ConfigfsWrite(path, value):
            return f"write   {DLM_CONFIGFS}/{path} {_quoted(value)}"
        case dlmctl.SysfsWrite(lockspace, attr, value):
            return f"write   {DLM_SYSFS}/{lockspace}/{attr} {_quoted(value)}"
    return repr(action)


def _quoted(value: bytes) -> str:
    return "'" + repr(value)[2:-1] + "'"


# -- building it from the configuration ---------------------------------------------------------


def dlm_available() -> bool:
    """Is the kernel DLM here or loadable (configfs dir, loaded module, or a module file)?"""
    if os.path.isdir(DLM_CONFIGFS) or os.path.isdir("/sys/module/dlm"):
        return True
    release = os.uname().release
    base = f"/lib/modules/{release}"
    try:
        with open(f"{base}/modules.dep", encoding="utf-8", errors="replace") as f:
            return any(line.split(":", 1)[0].rsplit("/", 1)[-1].startswith("dlm.ko") for line in f)
    except OSError:
        return False


def node_ip_addresses(config: ClusterConfig) -> dict[NodeId, tuple[IPAddress, ...]]:
    """Return each nodelist node's link addresses as IP addresses, in link order.

    Names are resolved once (the DLM's comms need addresses); an unresolvable one is skipped
    and logged, so that node's kernel connections cannot form until the name resolves.
    """
    out: dict[NodeId, tuple[IPAddress, ...]] = {}
    for node in config.nodes:
        addrs: list[IPAddress] = []
        for link in node.addresses:
            text = node.addresses[link].partition("%")[0]
            try:
                addrs.append(ipaddress.ip_address(text))
                continue
            except ValueError:
                pass
            try:
                info = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.error("dlm: cannot resolve %s of node %d: %s", text, node.nodeid, exc)
                continue
            addrs.append(ipaddress.ip_address(str(info[0][4][0]).partition("%")[0]))
        out[node.nodeid] = tuple(dict.fromkeys(addrs))
    return out


def build_dlm_daemon(node: NodeLike, config: ClusterConfig) -> DlmDaemon | None:
    """Return the companion `config` asks for (`cmanlk { dlm: ... }`), or None when DLM is off.

    `auto` is off on a host without the dlm module. Raises ConfigError on a bad fence device.
    """
    wanted = config.cmanlk.dlm
    if wanted == "no":
        return None
    if wanted == "auto" and not dlm_available():
        log.info("dlm: auto: no dlm kernel module here; DLM control disabled")
        return None
    from kernel_glue.configfs import ConfigfsDlm
    from kernel_glue.kmod import ensure_dlm_kernel
    from kernel_glue.sysfs import SysfsDlm
    from kernel_glue.uevents import DlmUeventWatch

    # per-node devices: `cmanlk { fence {...} }` blocks and dlm_fence_agent, merged by config.py
    devices = {d.nodeid: FenceDevice(d.agent, d.nodename, d.options)
               for d in config.cmanlk.fence_devices}
    policy = FencingPolicy(enabled=config.cmanlk.dlm_fencing, nodes_with_agent=frozenset(devices))
    settings = DlmSettings(cluster_name=config.cluster_name, me=node.me, fencing=policy)
    return DlmDaemon(node, settings, control=ConfigfsDlm(), sysfs=SysfsDlm(), uevents=DlmUeventWatch(),
                     addrs=node_ip_addresses(config), fence_devices=devices, prepare=ensure_dlm_kernel,
                     optional=wanted == "auto")


__all__ = ["DLMD_HANDLE", "FENCE_GROUP", "DlmDaemon", "NodeLike", "build_dlm_daemon",
           "describe_kernel_action", "dlm_available", "node_ip_addresses"]
