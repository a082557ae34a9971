"""The votequorum service (service 5): corosync's wire messages around cmanlk/services/votequorum/policy.py.

corosync-wire.md §8. Messages on group "a" (packed after the 16-byte header):

| fn | message | size | fields |
|----|---------|------|--------|
| 0 | NODEINFO | 32 | nodeid u32, votes u32, expected_votes u32, flags u32 |
| 1 | RECONFIGURE | 28 | nodeid u32, value u32, param u8, 3 pad |
| 2 | QDEVICE_REG | 275 | operation u32, name[255] — parsed and ignored |
| 3 | QDEVICE_RECONFIGURE | 526 | old name[255], new name[255] — parsed and ignored |

During sync_process each node multicasts NODEINFO for itself and for the qdevice pseudo node 0;
receivers update their node table (quorum.py). Local requests (set expected votes, set votes,
cancel wait_for_all) are validated locally like votequorum's library handlers and then multicast
as RECONFIGURE, so every node applies them at the same point of the total order.

Upward: `QuorumChanged` after every synchronisation and whenever the decision changes outside
one (as votequorum's quorum notification), `ExpectedVotesChanged` when expected votes move.

Deviation: corosync multicasts a NODEINFO at service start, before any ring exists; ours goes out
with the first synchronisation (which every ring runs), one message later for the same effect.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmanlk.errors import MalformedPacket
from cmanlk.services import wire as svcwire
from cmanlk.services.base import VOTEQUORUM_SERVICE, Notification, SendMessage, ServiceOutput
from cmanlk.services.votequorum.policy import (
    PARAM_CANCEL_WFA,
    PARAM_EXPECTED_VOTES,
    PARAM_NODE_VOTES,
    NodeInfo,
    Quorum,
    QuorumConfig,
    QuorumState,
)
from cmanlk.totem.actions import DeliverConfiguration
from cmanlk.types import Instant, NodeId, RingId, after, ms

MESSAGE_REQ_EXEC_VOTEQUORUM_NODEINFO = 0
MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE = 1
MESSAGE_REQ_EXEC_VOTEQUORUM_QDEVICE_REG = 2
MESSAGE_REQ_EXEC_VOTEQUORUM_QDEVICE_RECONFIGURE = 3

QDEVICE_MAX_NAME_LEN = 255
NODEINFO_SIZE = 32
RECONFIGURE_SIZE = 28
QDEVICE_REG_SIZE = 16 + 4 + QDEVICE_MAX_NAME_LEN
QDEVICE_RECONFIGURE_SIZE = 16 + 2 * QDEVICE_MAX_NAME_LEN

_NODEINFO = struct.Struct("<IIII")
_RECONFIGURE = struct.Struct("<IIB3x")


@dataclass(frozen=True, slots=True)
class QuorumChanged(Notification):
    """The quorum decision after a synchronisation or a change (votequorum's quorum notification).

    `members` pairs each member node id with its votes; `state` has every detail.
    """

    quorate: bool
    quorum: int
    total_votes: int
    expected_votes: int
    members: tuple[tuple[NodeId, int], ...]
    ring_id: RingId | None
    state: QuorumState


@dataclass(frozen=True, slots=True)
class ExpectedVotesChanged(Notification):
    """Our expected votes changed (votequorum's expected-votes notification)."""

    expected_votes: int


def encode_nodeinfo(info: NodeInfo) -> bytes:
    """Return the 32-byte NODEINFO message."""
    header = svcwire.encode_request_header(
        svcwire.service_message_id(VOTEQUORUM_SERVICE, MESSAGE_REQ_EXEC_VOTEQUORUM_NODEINFO), NODEINFO_SIZE
    )
    return header + _NODEINFO.pack(info.nodeid, info.votes, info.expected_votes, info.flags)


def decode_nodeinfo(message: bytes) -> NodeInfo:
    """Decode a NODEINFO. Raises MalformedPacket when shorter than 32 bytes."""
    svcwire.check_size(message, NODEINFO_SIZE, "votequorum_nodeinfo")
    nodeid, votes, expected, flags = _NODEINFO.unpack_from(message, svcwire.REQUEST_HEADER_SIZE)
    return NodeInfo(NodeId(nodeid), votes, expected, flags)


def encode_reconfigure(nodeid: NodeId, value: int, param: int) -> bytes:
    """Return the 28-byte RECONFIGURE message."""
    header = svcwire.encode_request_header(
        svcwire.service_message_id(VOTEQUORUM_SERVICE, MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE),
        RECONFIGURE_SIZE,
    )
    return header + _RECONFIGURE.pack(nodeid, value, param)


def decode_reconfigure(message: bytes) -> tuple[NodeId, int, int]:
    """Return (nodeid, value, param) of a RECONFIGURE. Raises MalformedPacket when short."""
    svcwire.check_size(message, RECONFIGURE_SIZE, "votequorum_reconfigure")
    nodeid, value, param = _RECONFIGURE.unpack_from(message, svcwire.REQUEST_HEADER_SIZE)
    return NodeId(nodeid), value, param


class VotequorumService:
    """Service 5 for node `me` (implements cmanlk.services.base.Service and TimedService)."""

    service_id = VOTEQUORUM_SERVICE
    name = "votequorum"

    def __init__(self, me: NodeId, config: QuorumConfig) -> None:
        """Raises ConfigError when `config` is not acceptable to votequorum."""
        self.me = me
        self.quorum = Quorum(config.resolve(me), me)
        self._now = Instant(0)
        self._lms_deadline: Instant | None = None
        self._nodeinfo_sent = False
        self.stats: dict[str, int] = {"qdevice_ignored": 0}

    # --- Service -------------------------------------------------------------------------------

    def on_configuration(self, change: DeliverConfiguration) -> list[ServiceOutput]:
        """votequorum has no confchg handler; membership arrives through sync_init."""
        return []

    def sync_init(
        self, ring_id: RingId, members: tuple[NodeId, ...], transitional_members: tuple[NodeId, ...]
    ) -> list[ServiceOutput]:
        """Mark departed nodes dead; (re)arm the last_man_standing window when due."""
        self._nodeinfo_sent = False
        if self.quorum.sync_init(ring_id, members):
            window = ms(self.quorum.policy.last_man_standing_window_ms)
            self._lms_deadline = after(self._now, window)
        return []

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        """Send NODEINFO for ourselves and for the qdevice pseudo node, once per sync."""
        if self._nodeinfo_sent:
            return True, []
        self._nodeinfo_sent = True
        infos = (self.quorum.my_node_info(), self.quorum.qdevice_node_info())
        return True, [SendMessage(MESSAGE_REQ_EXEC_VOTEQUORUM_NODEINFO, encode_nodeinfo(i)) for i in infos]

    def sync_activate(self) -> list[ServiceOutput]:
        """Recompute and notify the decision for the new membership."""
        self.quorum.sync_activate()
        return self._notifications()

    def sync_abort(self) -> None:
        """Nothing to undo (votequorum_sync_abort is empty too)."""

    def on_message(self, sender: NodeId, function: int, message: bytes) -> list[ServiceOutput]:
        """Apply a delivered votequorum message. Raises MalformedPacket for short/unknown ones."""
        if function == MESSAGE_REQ_EXEC_VOTEQUORUM_NODEINFO:
            self.quorum.node_info(sender, decode_nodeinfo(message))
        elif function == MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE:
            nodeid, value, param = decode_reconfigure(message)
            self.quorum.reconfigure(sender, param, nodeid, value)
        elif function == MESSAGE_REQ_EXEC_VOTEQUORUM_QDEVICE_REG:
            svcwire.check_size(message, QDEVICE_REG_SIZE, "votequorum_qdevice_reg")
            self.stats["qdevice_ignored"] += 1
        elif function == MESSAGE_REQ_EXEC_VOTEQUORUM_QDEVICE_RECONFIGURE:
            svcwire.check_size(message, QDEVICE_RECONFIGURE_SIZE, "votequorum_qdevice_reconfigure")
            self.stats["qdevice_ignored"] += 1
        else:
            raise MalformedPacket("votequorum_unknown_function", f"function {function}")
        return self._notifications()

    # --- TimedService --------------------------------------------------------------------------

    @property
    def next_deadline(self) -> Instant | None:
        """The last_man_standing window's end, when armed."""
        return self._lms_deadline

    def advance(self, now: Instant) -> list[ServiceOutput]:
        """Record the time; when the LMS window has passed, lower expected votes if quorate."""
        self._now = now
        if self._lms_deadline is not None and now >= self._lms_deadline:
            self._lms_deadline = None
            self.quorum.lms_window_elapsed()
            return self._notifications()
        return []

    # --- local requests (validated here, applied when the RECONFIGURE is delivered) ------------

    def request_set_expected(self, expected_votes: int) -> list[ServiceOutput]:
        """Ask every node to use `expected_votes`. Raises UsageError when votequorum would refuse."""
        self.quorum.check_set_expected(expected_votes)
        message = encode_reconfigure(self.me, expected_votes, PARAM_EXPECTED_VOTES)
        return [SendMessage(MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE, message)]

    def request_set_votes(self, nodeid: NodeId, votes: int) -> list[ServiceOutput]:
        """Ask every node to give `nodeid` `votes` votes. Raises UsageError when refused."""
        self.quorum.check_set_votes(nodeid, votes)
        message = encode_reconfigure(nodeid, votes, PARAM_NODE_VOTES)
        return [SendMessage(MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE, message)]

    def request_cancel_wait_for_all(self) -> list[ServiceOutput]:
        """Ask every node to stop waiting for all nodes (corosync-quorumtool -a)."""
        message = encode_reconfigure(self.me, 0, PARAM_CANCEL_WFA)
        return [SendMessage(MESSAGE_REQ_EXEC_VOTEQUORUM_RECONFIGURE, message)]

    def leaving(self) -> list[ServiceOutput]:
        """Before a clean shutdown: with allow_downscale tell peers we leave (NODEINFO LEAVING)."""
        if not self.quorum.set_leaving():
            return []
        info = self.quorum.my_node_info()
        return [SendMessage(MESSAGE_REQ_EXEC_VOTEQUORUM_NODEINFO, encode_nodeinfo(info))]

    @property
    def state(self) -> QuorumState:
        """The current quorum decision."""
        return self.quorum.state()

    def _notifications(self) -> list[ServiceOutput]:
        quorum_due, expected_due = self.quorum.take_notifications()
        out: list[ServiceOutput] = []
        state = self.quorum.state()
        if expected_due:
            out.append(ExpectedVotesChanged(state.expected_votes))
        if quorum_due:
            out.append(
                QuorumChanged(
                    quorate=state.quorate,
                    quorum=state.quorum,
                    total_votes=state.total_votes,
                    expected_votes=state.expected_votes,
                    members=state.node_votes,
                    ring_id=state.ring_id,
                    state=state,
                )
            )
        return out
