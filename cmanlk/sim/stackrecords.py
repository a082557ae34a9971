"""What the stack mode records beside the Totem records (cmanlk/sim/history.py).

A `StackHost` (cmanlk/sim/stackhost.py) appends these to its node's history in the order they
happen on that node, between the same Booted/Crashed/Left marks, so the service checker
(cmanlk/sim/service_checks.py) cuts incarnations exactly as the EVS checker does. The EVS
checker ignores them. Facts about the whole cluster at one instant (is the victim of a fence
agent in a live quorate partition? is a removed lockspace member fenced?) are judged by the
host when they happen, with the simulator's ground truth, and recorded here as data.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmanlk.types import Instant, NodeId, RingId

Proc = tuple[NodeId, int]  # a cpg process: (node id, pid)
ProcReason = tuple[NodeId, int, int]  # (node id, pid, cpg reason)


@dataclass(frozen=True, slots=True)
class QuorumSeen:
    """A QuorumChanged notification (what votequorum's clients are told)."""

    t: Instant
    ring_id: RingId | None
    members: tuple[NodeId, ...]
    votes: tuple[tuple[NodeId, int], ...]
    quorate: bool
    quorum: int
    total: int
    expected: int
    highest_expected: int
    wfa_status: bool


@dataclass(frozen=True, slots=True)
class ViewPublished:
    """The Stack's MembershipChanged: sync completed for `ring_id`."""

    t: Instant
    ring_id: RingId
    members: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class SyncStep:
    """A sync v2 callback of `service`: init, done (sync_process finished), activate or abort; or
    service "stack", step "start": the Stack's SyncStarting, recorded in delivery order (the callbacks
    are recorded as they run, ahead of the notifications of the same Stack step)."""

    t: Instant
    service: str
    step: str
    ring_id: RingId | None


@dataclass(frozen=True, slots=True)
class CpgState:
    """cpg's process list (`groups()`), taken at a sync's init and at its abort."""

    t: Instant
    at: str
    ring_id: RingId | None
    groups: tuple[tuple[bytes, tuple[Proc, ...]], ...]


@dataclass(frozen=True, slots=True)
class CpgView:
    """A CpgConfchg for `handles` of this node."""

    t: Instant
    handles: tuple[int, ...]
    group: bytes
    members: tuple[Proc, ...]
    joined: tuple[ProcReason, ...]
    left: tuple[ProcReason, ...]


@dataclass(frozen=True, slots=True)
class CpgMsg:
    """A CpgDeliver for `handles` of this node."""

    t: Instant
    handles: tuple[int, ...]
    group: bytes
    sender: Proc
    payload: bytes


@dataclass(frozen=True, slots=True)
class CpgRing:
    """A CpgTotemConfchg: the ring the handles' views now belong to."""

    t: Instant
    handles: tuple[int, ...]
    ring_id: RingId
    members: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class ClientOp:
    """A local client's request, accepted (`error` None) or refused."""

    t: Instant
    op: str
    handle: int
    group: bytes
    pid: int
    payload: bytes = b""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KernelControl:
    """The DLM wrote control `value` for `lockspace` with these kernel nodes.

    For a start (1): `quorate` is the node's votequorum decision at that instant, `fresh` whether
    that decision is for the ring Totem installed last (not an older ring's, kept while the new
    ring's sync has not reached votequorum: then the node's next decision must be quorate too),
    `unfenced` the
    members removed since the last start that failed (cpg NODEDOWN/PROCDOWN) and were not
    powered off since (the simulator's ground truth).
    """

    t: Instant
    lockspace: str
    value: int
    nodes: tuple[NodeId, ...]
    quorate: bool = True
    unfenced: tuple[NodeId, ...] = ()
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class FenceRun:
    """This node ran the fence agent against `victim`.

    `quorate`/`members`/`fresh`: the node's own votequorum decision (and whether it is for its
    current ring, as in KernelControl) and membership then;
    `in_quorate_partition`: live nodes whose quorate ring (real: every member up, connected and in
    that ring) contains the victim at that instant (ground truth).
    """

    t: Instant
    victim: NodeId
    attempt: int
    quorate: bool
    members: tuple[NodeId, ...]
    in_quorate_partition: tuple[NodeId, ...]
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class FenceExit:
    """The agent against `victim` ended with `code` (0: the victim is off)."""

    t: Instant
    victim: NodeId
    code: int


@dataclass(frozen=True, slots=True)
class LockspaceOp:
    """A local lockspace join or leave (the kernel's uevent), and how the kernel saw it end."""

    t: Instant
    op: str
    name: str


StackRecord = (QuorumSeen | ViewPublished | SyncStep | CpgState | CpgView | CpgMsg | CpgRing | ClientOp
               | KernelControl | FenceRun | FenceExit | LockspaceOp)
STACK_RECORD_TYPES = (QuorumSeen, ViewPublished, SyncStep, CpgState, CpgView, CpgMsg, CpgRing, ClientOp,
                      KernelControl, FenceRun, FenceExit, LockspaceOp)


def describe_stack_record(rec: StackRecord) -> str:
    """One line for excerpts."""
    at = f"{rec.t / 1e6:10.3f}ms"
    fields = ", ".join(f"{k}={getattr(rec, k)!r}" for k in rec.__slots__ if k != "t")
    return f"{at} {type(rec).__name__}({fields})"
