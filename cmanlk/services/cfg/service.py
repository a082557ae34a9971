"""The configuration service (service 1, corosync's exec/cfg.c): kill, shutdown and reload over the ring.

What travels (group "a", header id = (1 << 16) | function, layout with every field aligned(8)):

| fn | message | size | fields |
|----|---------|------|--------|
| 0 | RINGREENABLE | 24 | sender (mar_message_source_t) — corosync does nothing with it; counted |
| 1 | KILLNODE | 288 | nodeid u32 @16, reason mar_name_t @24 (u16 length @24, value[256] @32) |
| 2 | SHUTDOWN | 16 | header only: the sender is shutting down (corosync-cfgtool -H) |
| 3 | RELOAD_CONFIG | 32 | source {nodeid u32 @16, conn u64 @24}: every node re-reads its config |
| 4 | CRYPTO_RECONFIG | 24 | knet crypto change — not used with udpu; counted |

KILLNODE (`corosync-cfgtool -k N`, `cmanlk-tool kill N`): the requesting node checks that N is a
member of the current configuration (corosync: `runtime.members.N.status` is "joined", else
CS_ERR_NOT_EXIST) and multicasts the message; every node receives it in agreed order, and node N
reports `KilledByNode(requester, reason)` upward — corosync logs "Killed by node R : reason" and
exits; our runtime logs the same facts and leaves the ring (docs/cmanlkd.8.md). Both are
wire-compatible: a corosync node's kill stops a cmanlk node and ours stops a corosync node.

SHUTDOWN (`ShutdownRequest`, after libcfg's try-shutdown vote) is reported on every node as
`NodeShutDown(sender)`; the runtime leaves the ring when the sender is itself, as corosync's
message_handler_req_exec_cfg_shutdown calls shutdown_request. RELOAD_CONFIG
(`ReloadConfigRequest`, corosync-cfgtool -R, cmanlk-tool reload) is reported on every node as
`ReloadRequested(requester, cookie)`: each node re-reads its file, and the requester answers its
waiting client (`cookie` is the opaque connection field of the message source, ours or a
corosync node's). Both interoperate with corosync nodes in either direction.

cfg keeps no state that needs synchronising (corosync's cfg engine has no sync_init), so it is
not listed in SERVICE_BUILD (`synchronises = False`).

Deviations: corosync multicasts KILLNODE with the SAFE guarantee; the Stack sends every service
message AGREED (the target still acts on it in the same total order; SAFE only delays delivery
until every member has it). The reason is decoded as UTF-8 with replacement and its control
characters are replaced by "?", so a peer cannot forge log lines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmanlk.errors import ErrorCode, MalformedPacket, UsageError
from cmanlk.services import wire as svcwire
from cmanlk.services.base import CFG_SERVICE, Notification, SendMessage, ServiceOutput
from cmanlk.totem.actions import ConfigKind, DeliverConfiguration
from cmanlk.types import NodeId, RingId

MESSAGE_REQ_EXEC_CFG_RINGREENABLE = 0
MESSAGE_REQ_EXEC_CFG_KILLNODE = 1
MESSAGE_REQ_EXEC_CFG_SHUTDOWN = 2
MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG = 3
MESSAGE_REQ_EXEC_CFG_CRYPTO_RECONFIG = 4

KILLNODE_NODEID_OFFSET = 16
KILLNODE_REASON_OFFSET = 24
KILLNODE_SIZE = KILLNODE_REASON_OFFSET + svcwire.MAR_NAME_SIZE  # 288, as sizeof() on x86-64
SHUTDOWN_SIZE = 16
RELOAD_CONFIG_SIZE = 32  # header, mar_message_source_t {nodeid aligned(8), void *conn aligned(8)}
REASON_MAX_BYTES = svcwire.MAR_NAME_VALUE_MAX - 1  # libcfg: CS_ERR_NAME_TOO_LONG from 256 on

KILL_REASON = "Killed by an administrator (cmanlk-tool kill)"
"""The reason cmanlkd sends with a kill from its local API (corosync-cfgtool's: "Killed by
corosync-cfgtool")."""

_U32 = struct.Struct("<I")
_SOURCE = struct.Struct("<I4xQ")
_IGNORED = {
    MESSAGE_REQ_EXEC_CFG_RINGREENABLE: "cfg_ringreenable_ignored",
    MESSAGE_REQ_EXEC_CFG_CRYPTO_RECONFIG: "cfg_crypto_reconfig_ignored",
}


# --- local request and upward notifications -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KillNodeRequest:
    """A local administrator's request: node `nodeid` must leave the cluster (Stack ServiceRequest)."""

    nodeid: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class ShutdownRequest:
    """This node shuts down (libcfg's try-shutdown was agreed): multicast SHUTDOWN."""


@dataclass(frozen=True, slots=True)
class ReloadConfigRequest:
    """Every node must re-read its configuration; `cookie` comes back in ReloadRequested."""

    cookie: int


@dataclass(frozen=True, slots=True)
class ReloadRequested(Notification):
    """A RELOAD_CONFIG was delivered: re-read the configuration; answer `cookie` if `requester` is us."""

    requester: NodeId
    cookie: int


@dataclass(frozen=True, slots=True)
class KilledByNode(Notification):
    """A KILLNODE naming this node was delivered: `requester` asked us to leave, for `reason`."""

    requester: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class KillRequested(Notification):
    """A KILLNODE naming another node was delivered (every node logs who asked to kill whom)."""

    requester: NodeId
    target: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class NodeShutDown(Notification):
    """A SHUTDOWN was delivered: `nodeid` is being shut down by its administrator."""

    nodeid: NodeId


# --- wire ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KillNodeMessage:
    """A decoded KILLNODE: the node that must go, and the requester's reason (raw bytes)."""

    nodeid: NodeId
    reason: bytes


def encode_killnode(nodeid: NodeId, reason: bytes) -> bytes:
    """Return the 288-byte KILLNODE. Raises ValueError when `reason` is over 255 bytes or has a NUL."""
    header = svcwire.encode_request_header(
        svcwire.service_message_id(CFG_SERVICE, MESSAGE_REQ_EXEC_CFG_KILLNODE), KILLNODE_SIZE
    )
    body = _U32.pack(nodeid) + bytes(KILLNODE_REASON_OFFSET - KILLNODE_NODEID_OFFSET - _U32.size)
    return header + body + svcwire.encode_mar_name(reason)


def decode_killnode(message: bytes) -> KillNodeMessage:
    """Decode a KILLNODE. Raises MalformedPacket("cfg_killnode_short") below 288 bytes."""
    svcwire.check_size(message, KILLNODE_SIZE, "cfg_killnode")
    (nodeid,) = _U32.unpack_from(message, KILLNODE_NODEID_OFFSET)
    return KillNodeMessage(NodeId(nodeid), svcwire.decode_mar_name(message, KILLNODE_REASON_OFFSET))


def encode_shutdown() -> bytes:
    """Return the 16-byte SHUTDOWN."""
    message_id = svcwire.service_message_id(CFG_SERVICE, MESSAGE_REQ_EXEC_CFG_SHUTDOWN)
    return svcwire.encode_request_header(message_id, SHUTDOWN_SIZE)


def encode_reload_config(nodeid: NodeId, cookie: int) -> bytes:
    """Return the 32-byte RELOAD_CONFIG with source {nodeid, conn = cookie}."""
    message_id = svcwire.service_message_id(CFG_SERVICE, MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG)
    return svcwire.encode_request_header(message_id, RELOAD_CONFIG_SIZE) + _SOURCE.pack(nodeid, cookie)


def decode_reload_config(message: bytes) -> int:
    """The source's conn field (our cookie) of a RELOAD_CONFIG. Raises MalformedPacket when short."""
    svcwire.check_size(message, RELOAD_CONFIG_SIZE, "cfg_reload_config")
    _nodeid, cookie = _SOURCE.unpack_from(message, svcwire.REQUEST_HEADER_SIZE)
    return int(cookie)


def printable_reason(raw: bytes) -> str:
    """Return `raw` as text safe for one log line (UTF-8 with replacement, controls as "?")."""
    text = raw.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


# --- the service -----------------------------------------------------------------------------------


class CfgService:
    """Service 1 for node `me` (implements cmanlk.services.base.Service and LocalRequestHandler)."""

    service_id = CFG_SERVICE
    name = "cfg"
    synchronises = False  # corosync's cfg engine has no sync callbacks

    def __init__(self, me: NodeId) -> None:
        self.me = me
        self.members: tuple[NodeId, ...] = ()
        self.killed_by: NodeId | None = None
        """The requester of the first KILLNODE naming us (later ones are not reported again)."""
        self.stats: dict[str, int] = {}

    # --- Service ---------------------------------------------------------------------------------

    def on_configuration(self, change: DeliverConfiguration) -> list[ServiceOutput]:
        """Track the regular configuration: the nodes a kill may name (corosync's "joined")."""
        if change.kind is ConfigKind.REGULAR:
            self.members = tuple(change.members)
        return []

    def sync_init(
        self, ring_id: RingId, members: tuple[NodeId, ...], transitional_members: tuple[NodeId, ...]
    ) -> list[ServiceOutput]:
        """Nothing to synchronise (not called: cfg is not in the sync list)."""
        return []

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        """Nothing to send; done at once."""
        return True, []

    def sync_activate(self) -> list[ServiceOutput]:
        """Nothing to apply."""
        return []

    def sync_abort(self) -> None:
        """Nothing to drop."""

    def on_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        """Act on a delivered cfg message. Raises MalformedPacket for a short KILLNODE or an
        unknown function."""
        if function == MESSAGE_REQ_EXEC_CFG_KILLNODE:
            return self._on_killnode(sender, decode_killnode(message))
        if function == MESSAGE_REQ_EXEC_CFG_SHUTDOWN:
            return [NodeShutDown(sender)]
        if function == MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG:
            return [ReloadRequested(sender, decode_reload_config(message))]
        reason = _IGNORED.get(function)
        if reason is None:
            raise MalformedPacket("cfg_function_unknown", f"function {function} from {sender}")
        self.stats[reason] = self.stats.get(reason, 0) + 1
        return []

    # --- LocalRequestHandler -----------------------------------------------------------------------

    def on_local_request(self, request: object) -> list[ServiceOutput]:
        """KillNodeRequest: multicast KILLNODE for a current member; ShutdownRequest: SHUTDOWN;
        ReloadConfigRequest: RELOAD_CONFIG.

        Raises UsageError "not_found" when the node to kill is not a member of the current
        configuration (corosync: CS_ERR_NOT_EXIST), "invalid_param" for a reason over 255 bytes
        or with a NUL or a cookie that is not a u64, "not_supported" for any other request.
        """
        if isinstance(request, ShutdownRequest):
            return [SendMessage(MESSAGE_REQ_EXEC_CFG_SHUTDOWN, encode_shutdown())]
        if isinstance(request, ReloadConfigRequest):
            if not 0 <= request.cookie < 1 << 64:
                raise UsageError(ErrorCode.INVALID_PARAM, f"cookie {request.cookie} is not a u64")
            message = encode_reload_config(self.me, request.cookie)
            return [SendMessage(MESSAGE_REQ_EXEC_CFG_RELOAD_CONFIG, message)]
        if not isinstance(request, KillNodeRequest):
            raise UsageError(ErrorCode.NOT_SUPPORTED, f"cfg takes no {type(request).__name__}")
        if request.nodeid not in self.members:
            members = " ".join(str(m) for m in self.members) or "none"
            raise UsageError(
                ErrorCode.NOT_A_MEMBER,
                f"node {request.nodeid} is not a member of the cluster (members: {members})",
            )
        reason = request.reason.encode("utf-8")
        if len(reason) > REASON_MAX_BYTES or b"\0" in reason:
            text = f"the reason must be at most {REASON_MAX_BYTES} bytes, no NUL"
            raise UsageError(ErrorCode.INVALID_PARAM, text)
        return [SendMessage(MESSAGE_REQ_EXEC_CFG_KILLNODE, encode_killnode(request.nodeid, reason))]

    # --- internals ---------------------------------------------------------------------------------

    def _on_killnode(self, sender: NodeId, kill: KillNodeMessage) -> list[ServiceOutput]:
        reason = printable_reason(kill.reason)
        if kill.nodeid != self.me:
            return [KillRequested(sender, kill.nodeid, reason)]
        if self.killed_by is not None:
            # corosync exits at the first; we are already leaving, a repeat changes nothing.
            self.stats["cfg_killnode_repeated"] = self.stats.get("cfg_killnode_repeated", 0) + 1
            return []
        self.killed_by = sender
        return [KilledByNode(sender, reason)]
