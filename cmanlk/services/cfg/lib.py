"""libcfg's face of the cfg service (corosync 3.1.7 exec/cfg.c, ipc_cfg.h).

Requests and their answers (response ids do not follow the request ids):

| id | request | size | answer (id), size |
|----|---------|------|-------------------|
| 0 | RINGSTATUSGET | 16 | 0, 10 272: count @24, names 16 × 128 @32, statuses 16 × 512 @2080 |
| 1 | RINGREENABLE | 16 | 1, 24: CS_ERR_NOT_SUPPORTED (corosync 3 too) |
| 2 | KILLNODE | 288: nodeid @16, reason {u16 length @24, text @26} | 8, 24 |
| 3 | TRYSHUTDOWN | 24: flags @16 (REQUEST 0, REGARDLESS 1, IMMEDIATE 2) | 9, 24 — maybe later |
| 4 | REPLYTOSHUTDOWN | 24: response @16 (NO 0, YES 1) | 13, 24 |
| 5 | GET_NODE_ADDRS | 24: nodeid @16 (0: us) | 11, 32 + 16n: family @24, n @28, addresses @32 |
| 6 | LOCAL_GET | 16 | 12, 32: nodeid @24 |
| 7 | RELOAD_CONFIG | 16 | 14, 24 — once every node has reloaded |
| 8 | REOPEN_LOG_FILES | 16 | 15, 24 |
| 9 | NODESTATUSGET | 32: nodeid @16, version @24 (1) | 16, 4 200 (version 1) or 32 |
| 10 | TRACKSTART | 24: flags u8 @16 | 2, 24 |
| 11 | TRACKSTOP | 16 | 3, 24 |

The only event is TESTSHUTDOWN (10, 32: flags @24; header.error CS_OK, or CS_ERR_TIMEOUT when
the vote timed out).

Shutdown vote (cfg.c): TRACKSTART puts the connection on the trackers' list. TRYSHUTDOWN with
IMMEDIATE, or with no other tracker, answers CS_OK and shuts the node down at once; otherwise
every other tracker gets TESTSHUTDOWN, a timer of `cfg.shutdown_timeout` (cmap, ms; default
5000) starts and the answer waits until all have replied: all YES, or flags REGARDLESS, is CS_OK
and the shutdown; any NO is CS_ERR_BUSY. A timeout counts the missing replies as NO and sends
TESTSHUTDOWN with CS_ERR_TIMEOUT. A second TRYSHUTDOWN during a vote is CS_ERR_EXIST,
REPLYTOSHUTDOWN outside one CS_ERR_ACCESS; a tracker that leaves votes YES; the requester leaving
cancels the vote. The shutdown itself is a SHUTDOWN multicast (cfg's ShutdownRequest): the
runtime leaves the ring when it is delivered back to us, as corosync.

RELOAD_CONFIG multicasts corosync's RELOAD_CONFIG; each node re-reads its file when it is
delivered, and our client gets its answer (`reloaded`) with the outcome of our own reload.

Node status (NODESTATUSGET, `corosync-cfgtool -s`): a node is reachable when it is in the
current membership. With udpu, link 0 is enabled while the socket is bound, connected while the
node is reachable, and its address field holds that node's address (totemudpu.c); with the native
transport each configured link reports its local and remote address and whether the peer answers
on it (as knet's link status).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from cmanlk.config import TransportKind
from cmanlk.errors import ErrorCode
from cmanlk.services.base import CFG_SERVICE
from cmanlk.services.cfg.service import KillNodeRequest, ReloadConfigRequest, ShutdownRequest
from cmanlk.services.cmap.store import CmapStore, ValueType
from cmanlk.services.cpg.service import Handle
from cmanlk.services.lib import (
    Event,
    FaceBase,
    LibOutput,
    NodeView,
    Peer,
    Response,
    padded,
    response,
    result_code,
)
from cmanlk.stack import ServiceRequest
from cmanlk.types import Instant, NodeId, after, ms

REQ_RINGSTATUSGET, REQ_RINGREENABLE, REQ_KILLNODE, REQ_TRYSHUTDOWN = 0, 1, 2, 3
REQ_REPLYTOSHUTDOWN, REQ_GET_NODE_ADDRS, REQ_LOCAL_GET, REQ_RELOAD_CONFIG = 4, 5, 6, 7
REQ_REOPEN_LOG_FILES, REQ_NODESTATUSGET, REQ_TRACKSTART, REQ_TRACKSTOP = 8, 9, 10, 11

RES_RINGSTATUSGET, RES_RINGREENABLE, RES_STATETRACKSTART, RES_STATETRACKSTOP = 0, 1, 2, 3
RES_KILLNODE, RES_TRYSHUTDOWN, RES_TESTSHUTDOWN, RES_GET_NODE_ADDRS = 8, 9, 10, 11
RES_LOCAL_GET, RES_REPLYTOSHUTDOWN, RES_RELOAD_CONFIG = 12, 13, 14
RES_REOPEN_LOG_FILES, RES_NODESTATUSGET = 15, 16

SHUTDOWN_REQUEST, SHUTDOWN_REGARDLESS, SHUTDOWN_IMMEDIATE = 0, 1, 2
REPLY_NO, REPLY_YES = 0, 1
DEFAULT_SHUTDOWN_TIMEOUT_MS = 5000
NODE_STATUS_V1 = 1
MAX_LINKS = 8
MAX_INTERFACES = 16
MAX_HOST_LEN = 256
MAX_PENDING_RELOADS = 64
"""Reload requests of this node waiting for their RELOAD_CONFIG to come back."""
AF_INET, AF_INET6 = 2, 10

_U32 = struct.Struct("<I")
_LINK = struct.Struct("<BBBxI256s256s")  # enabled, connected, dynconnected, mtu, src, dst: 520 bytes
_NODE_HEAD = struct.Struct("<IIBBBBBB2x")  # version, nodeid, reachable, remote, external, onwire ×3


@dataclass(slots=True)
class _Vote:
    requester: Handle
    flags: int
    expected: int
    deadline: Instant
    yes: int = 0
    no: int = 0


@dataclass(slots=True)
class _State:
    trackers: dict[Handle, int | None] = field(default_factory=dict)  # handle → reply (None: not yet)
    vote: _Vote | None = None
    reloads: dict[int, Handle] = field(default_factory=dict)
    next_cookie: int = 1


class CfgLib(FaceBase[None]):
    """Service 1's library face (cmanlk.services.lib.LibFace, with a timer: `next_deadline`)."""

    service_id = CFG_SERVICE
    name = "cfg"

    def __init__(self, node: NodeView, cmap: CmapStore | None = None) -> None:
        self.node = node
        self.cmap = cmap
        self._s = _State()
        self.shutdowns = 0
        """Shutdowns agreed (each multicast one SHUTDOWN)."""
        super().__init__(
            {
                REQ_RINGSTATUSGET: (16, self._ringstatusget),
                REQ_RINGREENABLE: (16, self._ringreenable),
                REQ_KILLNODE: (288, self._killnode),
                REQ_TRYSHUTDOWN: (24, self._tryshutdown),
                REQ_REPLYTOSHUTDOWN: (24, self._replytoshutdown),
                REQ_GET_NODE_ADDRS: (24, self._get_node_addrs),
                REQ_LOCAL_GET: (16, self._local_get),
                REQ_RELOAD_CONFIG: (16, self._reload_config),
                REQ_REOPEN_LOG_FILES: (16, self._reopen_log_files),
                REQ_NODESTATUSGET: (32, self._nodestatusget),
                REQ_TRACKSTART: (24, self._trackstart),
                REQ_TRACKSTOP: (16, self._trackstop),
            }
        )

    # --- LibFace ---------------------------------------------------------------------------------

    def disconnect(self, handle: Handle) -> list[LibOutput]:
        """A leaving tracker votes YES; a leaving requester cancels the vote (cfg_lib_exit_fn)."""
        for cookie in [c for c, h in self._s.reloads.items() if h == handle]:
            del self._s.reloads[cookie]
        return self._remove_tracker(handle)

    def notify(self, note: object) -> list[LibOutput]:
        """cfg's callbacks come from its own vote, not from Stack notifications."""
        return []

    @property
    def next_deadline(self) -> Instant | None:
        """The end of the shutdown vote in progress."""
        return self._s.vote.deadline if self._s.vote is not None else None

    def advance(self, now: Instant) -> list[LibOutput]:
        """The vote timed out: undecided trackers count as NO (shutdown_timer_fn)."""
        vote = self._s.vote
        if vote is None or now < vote.deadline:
            return []
        vote.no = vote.expected
        out = self._check_vote()
        testshutdown = response(RES_TESTSHUTDOWN, ErrorCode.TIMEOUT, padded(_U32.pack(vote.flags), 8))
        out += [Event(h, testshutdown) for h in self._s.trackers]
        return out

    def trackers(self) -> tuple[Handle, ...]:
        """The connections that track shutdown (pacemakerd does)."""
        return tuple(self._s.trackers)

    def announce_shutdown(self, flags: int = SHUTDOWN_REGARDLESS) -> list[LibOutput]:
        """TESTSHUTDOWN to every tracker, outside a vote: the daemon was told to leave and will
        ("forced", pacemakerd logs); their replies are answered CS_ERR_ACCESS, as corosync answers
        a reply with no vote open."""
        testshutdown = response(RES_TESTSHUTDOWN, ErrorCode.OK, padded(_U32.pack(flags), 8))
        return [Event(h, testshutdown) for h in self._s.trackers]

    def reloaded(self, cookie: int, status: ErrorCode) -> list[LibOutput]:
        """Our RELOAD_CONFIG came back and this node reloaded: answer the waiting client."""
        handle = self._s.reloads.pop(cookie, None)
        if handle is None:
            return []
        return [Response(handle, response(RES_RELOAD_CONFIG, status))]

    # --- requests --------------------------------------------------------------------------------

    def _ringstatusget(self, peer: Peer, message: bytes) -> list[LibOutput]:
        names = bytearray(MAX_INTERFACES * 128)
        statuses = bytearray(MAX_INTERFACES * 512)
        rings = self._ring_status()[:MAX_INTERFACES]
        for i, (name, status) in enumerate(rings):
            names[i * 128 : i * 128 + len(name)] = name[:127]
            statuses[i * 512 : i * 512 + len(status)] = status[:511]
        body = padded(_U32.pack(len(rings)), 8) + bytes(names) + bytes(statuses)
        return [Response(peer.handle, response(RES_RINGSTATUSGET, ErrorCode.OK, body))]

    def _ringreenable(self, peer: Peer, message: bytes) -> list[LibOutput]:
        return [Response(peer.handle, response(RES_RINGREENABLE, ErrorCode.NOT_SUPPORTED))]

    def _killnode(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (nodeid,) = _U32.unpack_from(message, 16)
        (length,) = struct.unpack_from("<H", message, 24)
        raw = message[26 : 26 + min(length, 256)].split(b"\0", 1)[0]
        reason = raw.decode("utf-8", "replace")
        request = KillNodeRequest(NodeId(nodeid), reason)
        result = self.node.submit(lambda now, rid: ServiceRequest(now, CFG_SERVICE, request, rid))
        return [Response(peer.handle, response(RES_KILLNODE, result_code(result.error)))]

    def _tryshutdown(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (flags,) = _U32.unpack_from(message, 16)
        s = self._s
        if flags == SHUTDOWN_IMMEDIATE:
            return [Response(peer.handle, response(RES_TRYSHUTDOWN, ErrorCode.OK)), *self._shut_down()]
        if s.vote is not None:
            return [Response(peer.handle, response(RES_TRYSHUTDOWN, ErrorCode.EXIST))]
        others = [h for h in s.trackers if h != peer.handle]
        if not others:
            return [Response(peer.handle, response(RES_TRYSHUTDOWN, ErrorCode.OK)), *self._shut_down()]
        for handle in others:
            s.trackers[handle] = None
        deadline = after(self.node.now, ms(self._shutdown_timeout_ms()))
        s.vote = _Vote(peer.handle, flags, len(others), deadline)
        testshutdown = response(RES_TESTSHUTDOWN, ErrorCode.OK, padded(_U32.pack(flags), 8))
        return [Event(h, testshutdown) for h in others]  # the answer waits for the vote

    def _replytoshutdown(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (reply,) = _U32.unpack_from(message, 16)
        vote = self._s.vote
        if vote is None:
            return [Response(peer.handle, response(RES_REPLYTOSHUTDOWN, ErrorCode.PERMISSION_DENIED))]
        if reply:
            vote.yes += 1
        else:
            vote.no += 1
        if peer.handle in self._s.trackers:
            self._s.trackers[peer.handle] = REPLY_YES if reply else REPLY_NO
        out = self._check_vote()
        return [*out, Response(peer.handle, response(RES_REPLYTOSHUTDOWN, ErrorCode.OK))]

    def _get_node_addrs(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (nodeid,) = _U32.unpack_from(message, 16)
        target = self.node.me if nodeid == 0 else NodeId(nodeid)
        packed: list[bytes] = []
        family = 0
        for text in self.node.node_ips(target)[:MAX_INTERFACES]:
            try:
                ip = ipaddress.ip_address(text.partition("%")[0])
            except ValueError:
                continue
            family = family or (AF_INET if ip.version == 4 else AF_INET6)
            packed.append(ip.packed.ljust(16, b"\0"))
        if not packed:
            return [Response(peer.handle, response(RES_GET_NODE_ADDRS, ErrorCode.NOT_EXIST, bytes(8)))]
        body = struct.pack("<II", family, len(packed)) + b"".join(packed)
        return [Response(peer.handle, response(RES_GET_NODE_ADDRS, ErrorCode.OK, body))]

    def _local_get(self, peer: Peer, message: bytes) -> list[LibOutput]:
        body = padded(_U32.pack(self.node.me), 8)
        return [Response(peer.handle, response(RES_LOCAL_GET, ErrorCode.OK, body))]

    def _reload_config(self, peer: Peer, message: bytes) -> list[LibOutput]:
        s = self._s
        if len(s.reloads) >= MAX_PENDING_RELOADS:
            return [Response(peer.handle, response(RES_RELOAD_CONFIG, ErrorCode.TRY_AGAIN))]
        cookie = s.next_cookie
        s.next_cookie += 1
        request = ReloadConfigRequest(cookie)
        result = self.node.submit(lambda now, rid: ServiceRequest(now, CFG_SERVICE, request, rid))
        if result.error is not None:
            return [Response(peer.handle, response(RES_RELOAD_CONFIG, result_code(result.error)))]
        s.reloads[cookie] = peer.handle  # answered by `reloaded` (module docstring)
        return []

    def _reopen_log_files(self, peer: Peer, message: bytes) -> list[LibOutput]:
        error = ErrorCode.OK if self.node.reopen_logs() else ErrorCode.LIBRARY
        return [Response(peer.handle, response(RES_REOPEN_LOG_FILES, error))]

    def _nodestatusget(self, peer: Peer, message: bytes) -> list[LibOutput]:
        (nodeid,) = _U32.unpack_from(message, 16)
        (version,) = _U32.unpack_from(message, 24)
        target = NodeId(nodeid)
        if self.node.config().node(target) is None:
            return [
                Response(peer.handle, response(RES_NODESTATUSGET, ErrorCode.FAILED_OPERATION, bytes(8)))
            ]
        if version != NODE_STATUS_V1:
            return [Response(peer.handle, response(RES_NODESTATUSGET, ErrorCode.NOT_SUPPORTED, bytes(8)))]
        return [Response(peer.handle, response(RES_NODESTATUSGET, ErrorCode.OK, self._node_status(target)))]

    def _trackstart(self, peer: Peer, message: bytes) -> list[LibOutput]:
        s = self._s
        out: list[LibOutput] = []
        if peer.handle not in s.trackers:
            s.trackers[peer.handle] = None
            if s.vote is not None:  # a vote is running: ask the newcomer too
                s.vote.expected += 1
                testshutdown = response(RES_TESTSHUTDOWN, ErrorCode.OK, padded(_U32.pack(s.vote.flags), 8))
                out.append(Event(peer.handle, testshutdown))
        out.append(Response(peer.handle, response(RES_STATETRACKSTART, ErrorCode.OK)))
        return out

    def _trackstop(self, peer: Peer, message: bytes) -> list[LibOutput]:
        out = self._remove_tracker(peer.handle)
        return [*out, Response(peer.handle, response(RES_STATETRACKSTOP, ErrorCode.OK))]

    # --- the vote --------------------------------------------------------------------------------

    def _remove_tracker(self, handle: Handle) -> list[LibOutput]:
        s = self._s
        if s.vote is not None and s.vote.requester == handle:
            s.vote = None  # the requester left: the vote is off
        if handle not in s.trackers:
            return []
        reply = s.trackers.pop(handle)
        if s.vote is None:
            return []
        if reply == REPLY_YES:
            s.vote.yes -= 1
        elif reply == REPLY_NO:
            s.vote.no -= 1
        s.vote.yes += 1  # leaving is an implicit YES
        return self._check_vote()

    def _check_vote(self) -> list[LibOutput]:
        vote = self._s.vote
        if vote is None or vote.yes + vote.no < vote.expected:
            return []
        self._s.vote = None
        if vote.yes >= vote.expected or vote.flags == SHUTDOWN_REGARDLESS:
            return [Response(vote.requester, response(RES_TRYSHUTDOWN, ErrorCode.OK)), *self._shut_down()]
        return [Response(vote.requester, response(RES_TRYSHUTDOWN, ErrorCode.BUSY))]

    def _shut_down(self) -> list[LibOutput]:
        self.shutdowns += 1
        self.node.submit(lambda now, rid: ServiceRequest(now, CFG_SERVICE, ShutdownRequest(), rid))
        return []

    def _shutdown_timeout_ms(self) -> int:
        value = self.cmap.get("cfg.shutdown_timeout") if self.cmap is not None else None
        if value is not None and value.type is ValueType.UINT32:
            return int(value.python())
        return DEFAULT_SHUTDOWN_TIMEOUT_MS

    # --- status ----------------------------------------------------------------------------------

    def _node_status(self, nodeid: NodeId) -> bytes:
        _ring, members = self.node.membership()
        reachable = nodeid in members or nodeid == self.node.me
        config = self.node.config()
        links = {lk.index: lk for lk in self.node.links()}
        node = config.node(nodeid)
        entries: list[bytes] = []
        for index in range(MAX_LINKS):
            address = node.addresses[index] if node is not None and index in node.addresses else None
            link = links.get(index)
            if address is None or link is None:
                entries.append(bytes(_LINK.size))
                continue
            peer = next((p for p in link.peers if p.node == nodeid), None)
            if config.transport is TransportKind.NATIVE:
                connected = nodeid == self.node.me or (peer is not None and peer.reachable)
                src, dst = (link.local_address or "").encode(), address.encode()
            else:
                connected, src, dst = reachable, address.encode(), b""
            entries.append(
                _LINK.pack(
                    int(link.up), int(connected), int(connected), config.totem.netmtu, src[:255], dst[:255]
                )
            )
        head = _NODE_HEAD.pack(NODE_STATUS_V1, nodeid, int(reachable), 0, 0, 0, 0, 0)
        return head + b"".join(entries)

    def _ring_status(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        config = self.node.config()
        order = [n.nodeid for n in config.nodes]
        for link in self.node.links():
            name = f"{link.index} {link.local_address or ''}".encode()
            if config.transport is TransportKind.NATIVE:
                reach = {p.node: p.reachable for p in link.peers}
                chars = ["n" if n == self.node.me else ("3" if reach.get(n) else "1") for n in order]
                status = "".join(chars).encode()
            else:
                status = b"OK" if link.up else b"FAULTY"
            out.append((name, status))
        return out
