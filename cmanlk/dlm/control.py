"""Kernel DLM control: the decisions dlm_controld makes, as a pure core.

Input events: the cluster membership and quorum (`ClusterChanged`), lockspace uevents
(`LockspaceOnline`/`LockspaceOffline`), the process group of each lockspace ("dlm:ls:<name>",
carried by cpg: `GroupConfchg`, `GroupMessage`), fencing results and acknowledgements, time.
Output actions: configfs mkdir/write/rmdir, sysfs writes, group joins/leaves/messages and fence
agent runs, in the order the runtime must carry them out.

The kernel protocol follows dlm_controld 4.2.0 as traced on Linux 6.1
(shared/reference/dlm-controld-protocol.md §3; tests/unit/test_dlmctl.py replays the traces):

- cluster setup once quorate: mkdir cluster; [log_debug]; mark; recover_callbacks; cluster_name;
  then per member (us first): mkdir comms/N; nodeid; addr (one write per address, up to 3);
  mark; local "1" on our own node;
- join (uevent online): write id = crc32("dlm:ls:<name>\\0"); mkdir spaces/<ls>; join the group;
  once every group member has sent its "start" for the current membership: nodes/N (nodeid,
  weight) per member, control "1", event_done "0";
- another node joins/leaves: control "0"; mkdir or rmdir nodes/N; control "1" (when agreed);
- our leave (uevent offline): control "0"; rmdir nodes/*; rmdir spaces/<ls>; event_done "0";
- a node N fails: rmdir comms/N at once; control "0" in every lockspace N was in; recovery
  (rmdir nodes/N, control "1") only when quorate, every failed node is fenced
  (cmanlk/dlm/fencing.py) and all survivors started.
Configfs values are ASCII without newline, sysfs values end in NUL: exactly dlm_controld's bytes.

Agreement: cpg delivers a configuration change and the messages sent after it in the same
order on every member (virtual synchrony), so "every member sent start after confchg k" is
known identically everywhere; a start carries the sender's member list and is ignored when
it does not match ours (it belongs to another change).

Deviations from dlm_controld: no plock or lockspace-option negotiation (nodir, fs
registration); fencing covers nodes that left a lockspace group with NODEDOWN/PROCDOWN, not
every failed cluster member; the kernel's cluster attributes are globals that survive rmdir
of `cluster`, so an explicitly configured protocol or tcp_port is always written.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import zlib
from dataclasses import dataclass, field

from cmanlk.dlm.fencing import FenceAction, Fencing, FencingPolicy
from cmanlk.types import Instant, NodeId

log = logging.getLogger(__name__)

GROUP_PREFIX = "dlm:ls:"
"""cpg group of a lockspace, as dlm_controld names it."""
LOCKSPACE_NAME_MAX = 64
"""DLM_LOCKSPACE_LEN: the kernel refuses longer names."""
MAX_LOCKSPACES = 1024
"""Bound on lockspaces we track (each is a kernel object a local process made)."""
MAX_GROUP_MEMBERS = 384
"""More members than a corosync cluster can have: larger confchgs are refused as malformed."""
MAX_ADDRS_PER_NODE = 3
"""DLM_MAX_ADDR_COUNT: the kernel keeps at most 3 addresses per node."""
START_MAGIC = b"cmanlk-dlm-start "
ENOTCONN = 107
"""event_done value refusing a join while the cluster is not set up (-ENOTCONN)."""
CPG_REASON_JOIN, CPG_REASON_LEAVE, CPG_REASON_NODEDOWN, CPG_REASON_NODEUP, CPG_REASON_PROCDOWN = 1, 2, 3, 4, 5

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def lockspace_global_id(name: str) -> int:
    """Return the id every node writes to /sys/kernel/dlm/<name>/id: crc32 of "dlm:ls:<name>\\0"."""
    return zlib.crc32(GROUP_PREFIX.encode() + name.encode() + b"\0")


def group_name(lockspace: str) -> str:
    """Return the cpg group of `lockspace`."""
    return GROUP_PREFIX + lockspace


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterChanged:
    """The cluster membership or quorum changed. `addrs` gives each member's link addresses."""

    now: Instant
    members: tuple[NodeId, ...]
    quorate: bool
    addrs: tuple[tuple[NodeId, tuple[IPAddress, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterSyncing:
    """A new ring's synchronisation began: the quorum we hold is an older ring's, and the new
    one's is unknown until the next ClusterChanged. Until then nothing starts and nobody is shot
    on it (dlm_controld waits for the quorum's ring to be cpg's: check_ringid_done)."""

    now: Instant


@dataclass(frozen=True, slots=True)
class LockspaceOnline:
    """uevent online@/kernel/dlm/<name>: a local process creates the lockspace; the kernel waits."""

    now: Instant
    name: str


@dataclass(frozen=True, slots=True)
class LockspaceOffline:
    """uevent offline@/kernel/dlm/<name>: the last local user released it; the kernel waits."""

    now: Instant
    name: str


@dataclass(frozen=True, slots=True)
class LockspaceRemoved:
    """uevent remove@/kernel/dlm/<name>: the kernel object is gone (after our leave, or a join
    whose caller gave up); anything still configured for it is removed."""

    now: Instant
    name: str


@dataclass(frozen=True, slots=True)
class GroupConfchg:
    """A cpg configuration change of `group`: members after it, who joined, who left and why."""

    now: Instant
    group: str
    members: tuple[NodeId, ...]
    joined: tuple[NodeId, ...]
    left: tuple[tuple[NodeId, int], ...]
    """(node, cpg reason): 2 LEAVE (clean), 3 NODEDOWN, 5 PROCDOWN (both need fencing)."""


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """A message delivered in `group` (agreed order), from `sender`."""

    now: Instant
    group: str
    sender: NodeId
    payload: bytes


@dataclass(frozen=True, slots=True)
class FenceAgentExited:
    """The fence agent we ran for `nodeid` ended with `exit_code` (0 = fenced)."""

    now: Instant
    nodeid: NodeId
    exit_code: int


@dataclass(frozen=True, slots=True)
class FenceAck:
    """An administrator acknowledged that `nodeid` is off (cmanlk-tool fence-ack)."""

    now: Instant
    nodeid: NodeId


@dataclass(frozen=True, slots=True)
class FencedElsewhere:
    """Another node announced that `nodeid` is fenced."""

    now: Instant
    nodeid: NodeId
    how: str


@dataclass(frozen=True, slots=True)
class DaemonsChanged:
    """The daemons' own group changed: `left` daemons stopped (or were cut off), `restarted` ones
    joined afresh (a new process: cpg JOIN, not the NODEUP of a merge)."""

    now: Instant
    left: tuple[NodeId, ...]
    restarted: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """`next_deadline` has passed."""

    now: Instant


@dataclass(frozen=True, slots=True)
class KernelLockspaces:
    """The lockspaces /sys/kernel/dlm shows, read after uevents were lost: unknown ones are joined."""

    now: Instant
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """The daemon stops: remove what we created (refused while lockspaces exist)."""

    now: Instant


DlmEvent = (ClusterChanged | ClusterSyncing | LockspaceOnline | LockspaceOffline | LockspaceRemoved
            | GroupConfchg | GroupMessage | FenceAgentExited | FenceAck | FencedElsewhere | DaemonsChanged
            | DeadlineReached | KernelLockspaces | ShutdownRequested)


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigfsMkdir:
    """mkdir <configfs dlm root>/<path>."""

    path: str


@dataclass(frozen=True, slots=True)
class ConfigfsWrite:
    """Write `value` (exact bytes, one write) to <configfs dlm root>/<path>."""

    path: str
    value: bytes


@dataclass(frozen=True, slots=True)
class ConfigfsRmdir:
    """rmdir <configfs dlm root>/<path>."""

    path: str


@dataclass(frozen=True, slots=True)
class SysfsWrite:
    """Write `value` (exact bytes) to /sys/kernel/dlm/<lockspace>/<attr>."""

    lockspace: str
    attr: str
    value: bytes


@dataclass(frozen=True, slots=True)
class JoinGroup:
    """Join cpg group `group`."""

    group: str


@dataclass(frozen=True, slots=True)
class LeaveGroup:
    """Leave cpg group `group`."""

    group: str


@dataclass(frozen=True, slots=True)
class SendGroupMessage:
    """Multicast `payload` to cpg group `group` (agreed order, delivered to us too)."""

    group: str
    payload: bytes


KernelAction = ConfigfsMkdir | ConfigfsWrite | ConfigfsRmdir | SysfsWrite
DlmAction = KernelAction | JoinGroup | LeaveGroup | SendGroupMessage | FenceAction


# -- configuration and state -------------------------------------------------------------------


class DlmTransport(enum.Enum):
    """cluster/protocol: DETECT leaves the kernel default (TCP) with one link, SCTP with several."""

    DETECT = "detect"
    TCP = "tcp"
    SCTP = "sctp"


@dataclass(frozen=True, slots=True)
class DlmSettings:
    """What the DLM glue is configured with."""

    cluster_name: str
    me: NodeId
    transport: DlmTransport = DlmTransport.DETECT
    tcp_port: int | None = None
    mark: int = 0
    log_debug: bool = False
    recover_callbacks: bool = True
    fencing: FencingPolicy = field(default_factory=FencingPolicy)


class LsState(enum.Enum):
    """Where a lockspace stands on this node."""

    JOINING = "joining"  # online seen, waiting for the first agreed membership
    STARTED = "started"  # control 1 written for the current membership
    STOPPED = "stopped"  # control 0 written; waiting for agreement/quorum/fencing


@dataclass
class _Change:
    members: tuple[NodeId, ...]
    started_by: set[NodeId]
    failed: set[NodeId]
    since: Instant


@dataclass
class _Lockspace:
    name: str
    global_id: int
    state: LsState
    since: Instant
    configured: set[NodeId] = field(default_factory=set)
    members: tuple[NodeId, ...] = ()
    change: _Change | None = None
    join_pending: bool = True


def _cfg(value: int | str) -> bytes:
    return str(value).encode()


def _sys(value: int) -> bytes:
    return f"{value}\0".encode()


def sockaddr_storage(addr: IPAddress) -> bytes:
    """Return `addr` as the 128-byte struct sockaddr_storage that comms/<n>/addr takes.

    Family in host order (little-endian, as dlm_controld writes it on x86/arm), port 0 (the DLM
    uses its own tcp_port); IPv6 puts the address at offset 8 after flowinfo.
    """
    if isinstance(addr, ipaddress.IPv4Address):
        raw = (2).to_bytes(2, "little") + b"\0\0" + addr.packed
    else:
        raw = (10).to_bytes(2, "little") + b"\0" * 6 + addr.packed
    return raw.ljust(128, b"\0")


def encode_start(members: tuple[NodeId, ...]) -> bytes:
    """Return the "start" message for a change to `members`."""
    return START_MAGIC + ",".join(str(n) for n in sorted(members)).encode()


def decode_start(payload: bytes) -> tuple[NodeId, ...] | None:
    """Return the member list of a start message, or None if `payload` is not one (never raises)."""
    if not payload.startswith(START_MAGIC) or len(payload) > len(START_MAGIC) + 11 * MAX_GROUP_MEMBERS:
        return None
    try:
        ids = tuple(NodeId(int(x)) for x in payload[len(START_MAGIC):].split(b","))
    except ValueError:
        return None
    return ids if all(0 < n < 1 << 32 for n in ids) else None


class DlmCtl:
    """The lockspace and fencing decisions of one node. `handle` is the only way in."""

    def __init__(self, settings: DlmSettings) -> None:
        self.settings = settings
        self.me = settings.me
        self.fencing = Fencing(settings.me, settings.fencing)
        self.cluster_ready = False
        self.quorate = False
        self.members: tuple[NodeId, ...] = ()
        self.comms: set[NodeId] = set()
        self.lockspaces: dict[str, _Lockspace] = {}
        self.leaving: dict[str, Instant | None] = {}
        """Lockspaces whose group we left and whose own leave confchg has not come yet, with the
        time of an online uevent that waits for it (None: none). cpg refuses a join of a group
        while our leave of it is in flight (`exist`, as corosync), so a lockspace joined again at
        once would wait for its event_done forever (stack seed 1756); dlm_controld also keeps a
        leaving lockspace until its leave confchg."""
        self.dropped: dict[str, int] = {}
        """Inputs ignored, by reason (malformed or unexpected group messages, refused joins...)."""

    @property
    def next_deadline(self) -> Instant | None:
        """When to feed DeadlineReached (fence agent retries)."""
        return self.fencing.next_deadline

    def handle(self, event: DlmEvent) -> list[DlmAction]:
        """Return the actions `event` calls for, in the order they must be carried out."""
        match event:
            case ClusterChanged():
                return self._on_cluster(event)
            case LockspaceOnline(now, name):
                return self._on_online(now, name)
            case LockspaceOffline(now, name):
                return self._on_offline(name)
            case LockspaceRemoved(now, name):
                return self._on_removed(name)
            case GroupConfchg():
                return self._on_confchg(event)
            case GroupMessage():
                return self._on_message(event)
            case ClusterSyncing():
                self.quorate = False
                self.fencing.quorum_unknown()
                return []
            case FenceAgentExited(now, nodeid, exit_code):
                return self._after_fencing(now, self.fencing.agent_exited(now, nodeid, exit_code))
            case FenceAck(now, nodeid):
                return self._after_fencing(now, self.fencing.ack(now, nodeid))
            case FencedElsewhere(now, nodeid, how):
                return self._after_fencing(now, self.fencing.fenced_elsewhere(now, nodeid, how))
            case DaemonsChanged(now, left, restarted):
                actions = self.fencing.peers_left(now, left)
                for n in restarted:
                    actions += self.fencing.restarted(now, n)
                return self._after_fencing(now, actions)
            case DeadlineReached(now):
                return self._after_fencing(now, self.fencing.deadline(now))
            case KernelLockspaces(now, names):
                # an online uevent may have been lost: the kernel waits for those joins forever
                return [a for n in names if n not in self.lockspaces for a in self._on_online(now, n)]
            case ShutdownRequested():
                return self._on_shutdown()
        return []

    # -- cluster ---------------------------------------------------------------------------------
    def _on_cluster(self, ev: ClusterChanged) -> list[DlmAction]:
        members = tuple(sorted(set(ev.members)))[:MAX_GROUP_MEMBERS]
        addrs = dict(ev.addrs)
        self.quorate = ev.quorate
        self.members = members
        out: list[DlmAction] = []
        if not self.cluster_ready:
            if not ev.quorate:
                return []  # dlm_controld configures the kernel only once quorate
            out += self._cluster_setup(addrs)
            self.cluster_ready = True
        lost = sorted(self.comms - set(members))
        for n in lost:
            # as soon as the cluster loses N: close its connections and stop every lockspace
            # N is in; recovery waits for the group change, quorum and fencing
            out.append(ConfigfsRmdir(f"cluster/comms/{n}"))
            self.comms.discard(n)
        for ls in self.lockspaces.values():
            if any(n in ls.members for n in lost) and ls.state is LsState.STARTED:
                out.append(SysfsWrite(ls.name, "control", _sys(0)))
                ls.state = LsState.STOPPED
                ls.since = ev.now
        for n in members:
            if n not in self.comms:
                out += self._comm_add(n, addrs.get(n, ()))
        out += self.fencing.membership(ev.now, members, ev.quorate)
        return out + self._maybe_complete_all(ev.now)

    def _cluster_setup(self, addrs: dict[NodeId, tuple[IPAddress, ...]]) -> list[DlmAction]:
        s = self.settings
        out: list[DlmAction] = [ConfigfsMkdir("cluster")]
        if s.log_debug:
            out.append(ConfigfsWrite("cluster/log_debug", b"1"))
        out.append(ConfigfsWrite("cluster/mark", _cfg(s.mark)))
        if s.recover_callbacks:
            out.append(ConfigfsWrite("cluster/recover_callbacks", b"1"))
        out.append(ConfigfsWrite("cluster/cluster_name", s.cluster_name.encode()))
        links = max((len(a) for a in addrs.values()), default=1)
        proto = s.transport
        if proto is DlmTransport.DETECT and links > 1:
            proto = DlmTransport.SCTP  # dlm_controld's "detect": several links need SCTP multihoming
        if proto is not DlmTransport.DETECT:
            out.append(ConfigfsWrite("cluster/protocol", b"1" if proto is DlmTransport.SCTP else b"0"))
        if s.tcp_port is not None:
            out.append(ConfigfsWrite("cluster/tcp_port", _cfg(s.tcp_port)))
        # our own node first: the kernel's lowcomms needs the local address before others
        if self.me in self.members:
            out += self._comm_add(self.me, addrs.get(self.me, ()))
        return out

    def _comm_add(self, n: NodeId, addrs: tuple[IPAddress, ...]) -> list[DlmAction]:
        base = f"cluster/comms/{n}"
        out: list[DlmAction] = [ConfigfsMkdir(base), ConfigfsWrite(f"{base}/nodeid", _cfg(n))]
        out += [ConfigfsWrite(f"{base}/addr", sockaddr_storage(a)) for a in addrs[:MAX_ADDRS_PER_NODE]]
        if addrs:  # the kernel finds the node for `mark` by its address (ENOENT before one)
            out.append(ConfigfsWrite(f"{base}/mark", _cfg(self.settings.mark)))
        if n == self.me:
            out.append(ConfigfsWrite(f"{base}/local", b"1"))
        self.comms.add(n)
        return out

    def _on_shutdown(self) -> list[DlmAction]:
        if self.lockspaces:
            self._drop("shutdown_with_lockspaces")
            return []
        out: list[DlmAction] = [ConfigfsRmdir(f"cluster/comms/{n}") for n in sorted(self.comms, reverse=True)]
        if self.cluster_ready:
            out.append(ConfigfsRmdir("cluster"))
        self.comms.clear()
        self.cluster_ready = False
        return out

    # -- lockspaces ------------------------------------------------------------------------------
    def _on_online(self, now: Instant, name: str) -> list[DlmAction]:
        if name in self.lockspaces:
            self._drop("online_twice")
            return []
        if name in self.leaving:
            self.leaving[name] = now  # joined once our leave's confchg comes (_on_confchg)
            return []
        if not self.cluster_ready or len(self.lockspaces) >= MAX_LOCKSPACES \
                or len(name.encode()) > LOCKSPACE_NAME_MAX:
            # refuse the join: dlm_new_lockspace() in the kernel returns this error. Once the
            # cluster is configured a join is accepted even without quorum: it waits for it,
            # as a dlm_controld join does, instead of failing a mount during a short loss
            # of quorum.
            self._drop("join_refused")
            return [SysfsWrite(name, "event_done", _sys(-ENOTCONN))]
        ls = _Lockspace(name, lockspace_global_id(name), LsState.JOINING, now)
        self.lockspaces[name] = ls
        return [SysfsWrite(name, "id", _sys(ls.global_id)), ConfigfsMkdir(f"cluster/spaces/{name}"),
                JoinGroup(group_name(name))]

    def _on_offline(self, name: str) -> list[DlmAction]:
        ls = self.lockspaces.pop(name, None)
        if ls is None:
            # not ours (created before we started?): let the kernel finish the release
            return [SysfsWrite(name, "event_done", _sys(0))]
        out: list[DlmAction] = [SysfsWrite(name, "control", _sys(0))]
        # dlm_controld removes the nodes newest first (its list order): highest id first here
        nodes = sorted(ls.configured, reverse=True)
        out += [ConfigfsRmdir(f"cluster/spaces/{name}/nodes/{n}") for n in nodes]
        out += [ConfigfsRmdir(f"cluster/spaces/{name}"), SysfsWrite(name, "event_done", _sys(0)),
                LeaveGroup(group_name(name))]
        self.leaving[name] = None
        return out

    def _on_removed(self, name: str) -> list[DlmAction]:
        ls = self.lockspaces.pop(name, None)
        if ls is None:
            return []  # the normal case: our leave already removed everything
        self._drop("lockspace_removed_while_joined")
        base = f"cluster/spaces/{name}"
        nodes = sorted(ls.configured, reverse=True)
        out: list[DlmAction] = [ConfigfsRmdir(f"{base}/nodes/{n}") for n in nodes]
        self.leaving[name] = None
        return [*out, ConfigfsRmdir(base), LeaveGroup(group_name(name))]

    def _on_confchg(self, ev: GroupConfchg) -> list[DlmAction]:
        name = ev.group[len(GROUP_PREFIX):] if ev.group.startswith(GROUP_PREFIX) else None
        if name in self.leaving and self.me not in ev.members and name not in self.lockspaces:
            assert name is not None
            online = self.leaving.pop(name)  # our own leave completed
            return [] if online is None else self._on_online(ev.now, name)
        if name in self.leaving and name not in self.lockspaces:
            return self._witness_failures(ev)
        ls = self._lockspace_of(ev.group)
        if ls is None or len(ev.members) > MAX_GROUP_MEMBERS:
            self._drop("confchg_unknown_group")
            return []
        if self.me not in ev.members:
            return []  # our own leave completing: the kernel side is already done
        out: list[DlmAction] = []
        failed = {n for n, reason in ev.left if reason in (CPG_REASON_NODEDOWN, CPG_REASON_PROCDOWN)}
        for n in sorted(failed):
            out += self.fencing.node_failed(ev.now, n, tuple(ev.members))
        if ls.state is LsState.STARTED:
            out.append(SysfsWrite(ls.name, "control", _sys(0)))
            ls.state = LsState.STOPPED
            ls.since = ev.now
        prior = ls.change.failed if ls.change is not None else set()
        members = tuple(sorted(ev.members))
        ls.members = members
        ls.change = _Change(members, set(), (prior | failed) - set(members), ev.now)
        out.append(SendGroupMessage(ev.group, encode_start(members)))
        return out

    def _witness_failures(self, ev: GroupConfchg) -> list[DlmAction]:
        """A change of a group we are leaving, still with us: its failures are ours to fence too.

        The other members count every member of the change among the failed node's witnesses
        (fencing.py, "Roles") and wait for the lowest one to fence it; had we ignored the change
        because our lockspace is gone, nobody would (cmanlk-sim --stack seed 5, --nodes 2-4)."""
        out: list[DlmAction] = []
        if self.me not in ev.members or len(ev.members) > MAX_GROUP_MEMBERS:
            return out
        failed = {n for n, reason in ev.left if reason in (CPG_REASON_NODEDOWN, CPG_REASON_PROCDOWN)}
        for n in sorted(failed):
            out += self.fencing.node_failed(ev.now, n, tuple(ev.members))
        return out

    def _on_message(self, ev: GroupMessage) -> list[DlmAction]:
        ls = self._lockspace_of(ev.group)
        members = decode_start(ev.payload)
        if ls is None or members is None:
            self._drop("message_malformed_or_unknown_group")
            return []
        if ls.change is None or members != ls.change.members or ev.sender not in members:
            self._drop("start_for_another_change")
            return []
        ls.change.started_by.add(ev.sender)
        return self._maybe_complete(ev.now, ls)

    def _after_fencing(self, now: Instant, actions: list[FenceAction]) -> list[DlmAction]:
        out: list[DlmAction] = list(actions)
        return out + self._maybe_complete_all(now)

    def _maybe_complete_all(self, now: Instant) -> list[DlmAction]:
        out: list[DlmAction] = []
        for ls in list(self.lockspaces.values()):
            out += self._maybe_complete(now, ls)
        return out

    def _maybe_complete(self, now: Instant, ls: _Lockspace) -> list[DlmAction]:
        """Start the kernel on the agreed membership once nothing blocks recovery."""
        ch = ls.change
        if ch is None or self.waiting_for(ls.name):
            return []
        out: list[DlmAction] = []
        base = f"cluster/spaces/{ls.name}/nodes"
        for n in sorted(ls.configured - set(ch.members)):
            out.append(ConfigfsRmdir(f"{base}/{n}"))
        for n in ch.members:
            if n not in ls.configured:
                out += [ConfigfsMkdir(f"{base}/{n}"), ConfigfsWrite(f"{base}/{n}/nodeid", _cfg(n)),
                        ConfigfsWrite(f"{base}/{n}/weight", b"1")]
        ls.configured = set(ch.members)
        out.append(SysfsWrite(ls.name, "control", _sys(1)))
        if ls.join_pending:
            out.append(SysfsWrite(ls.name, "event_done", _sys(0)))
            ls.join_pending = False
        ls.state = LsState.STARTED
        ls.since = now
        ls.change = None
        return out

    def waiting_for(self, name: str) -> list[str]:
        """Return what keeps lockspace `name` from starting ([] when nothing does)."""
        ls = self.lockspaces.get(name)
        if ls is None or ls.change is None:
            return []
        why: list[str] = []
        if not self.quorate:
            why.append("quorum")
        # every unfenced victim blocks every lockspace, not only those it was in: a node that
        # failed unfenced may still be alive in another partition and write to shared storage
        # (dlm_controld likewise waits while any fencing is in progress)
        why += [f"fencing of node {n}" for n in self.fencing.unfenced()]
        missing = [n for n in ls.change.members if n not in ls.change.started_by]
        if missing:
            why.append("start from node " + ",".join(str(n) for n in missing))
        return why

    def status(self, now: Instant) -> dict[str, object]:
        """Return the state as plain data, for `cmanlk-tool dlm --json` (times in ns)."""
        return {
            "cluster": {"configured": self.cluster_ready, "quorate": self.quorate,
                        "members": [int(n) for n in self.members],
                        "comms": sorted(int(n) for n in self.comms)},
            "lockspaces": [
                {"name": ls.name, "global_id": ls.global_id, "state": ls.state.value,
                 "members": [int(n) for n in ls.members],
                 "kernel_nodes": sorted(int(n) for n in ls.configured),
                 "since_ns": int(ls.since), "for_ns": int(now - ls.since),
                 "waiting_for": self.waiting_for(ls.name)}
                for ls in self.lockspaces.values()],
            "fencing": {"enabled": self.settings.fencing.enabled, "fencer": self.fencing.is_fencer,
                        "victims": self.fencing.status()},
            "dropped": dict(self.dropped),
        }

    def _lockspace_of(self, group: str) -> _Lockspace | None:
        if not group.startswith(GROUP_PREFIX):
            return None
        return self.lockspaces.get(group[len(GROUP_PREFIX):])

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log.debug("dlmctl: ignored input (%s)", reason)
