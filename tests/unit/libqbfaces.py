"""The library faces over the simulator: real Stacks (votequorum, cmap, cfg, cpg) in virtual time.

`FaceCluster(n)` boots n simulated nodes from a generated corosync.conf; `cluster.view(node)` is
that node's NodeView with its five faces (`view.face("cpg")` …); `view.call(face, request)`
serves one request as the libqb server would and returns what came out; events the notifications
produce pile up in `view.outbox`. Requests are built with the small encoders below, as the client
libraries lay them out.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cmanlk.config import ClusterConfig, parse_config
from cmanlk.errors import ErrorCode
from cmanlk.runtime.transport import LinkStatus, PeerReachability
from cmanlk.services.base import Notification
from cmanlk.services.cfg.lib import CfgLib
from cmanlk.services.cfg.service import CfgService
from cmanlk.services.cmap.lib import CmapLib
from cmanlk.services.cmap.service import CmapSync
from cmanlk.services.cmap.store import Value
from cmanlk.services.cpg.lib import CpgLib
from cmanlk.services.cpg.service import CpgService, Handle
from cmanlk.services.lib import Event, LibFace, LibOutput, Peer, Response
from cmanlk.services.quorum.lib import QuorumLib
from cmanlk.services.votequorum.lib import VotequorumLib
from cmanlk.services.votequorum.service import VotequorumService
from cmanlk.sim.cluster import Cluster
from cmanlk.stack import RequestResult, Stack, StackConfig, default_services
from cmanlk.types import Instant, NodeId, RingId, ms

MAX_MSG = 1 << 20


def config_text(n: int, extra: str = "") -> str:
    nodes = "".join(
        f"  node {{\n    ring0_addr: 10.9.0.{i}\n    nodeid: {i}\n    name: n{i}\n  }}\n"
        for i in range(1, n + 1)
    )
    return (
        "totem {\n  version: 2\n  cluster_name: faces\n  transport: udpu\n  token: 1000\n}\n"
        f"nodelist {{\n{nodes}}}\nquorum {{\n  provider: corosync_votequorum\n}}\n{extra}"
    )


class SimView:
    """cmanlk.services.lib.NodeView over one simulated node, with that node's faces."""

    def __init__(self, cluster: FaceCluster, me: NodeId) -> None:
        self.cluster = cluster
        self._me = me
        self._next = 1
        self._awaiting = 0
        self._answer: RequestResult | None = None
        self.outbox: list[LibOutput] = []
        self.notes: list[object] = []
        self.cmap = CmapLib(self, cluster.config)
        self.faces: dict[str, LibFace] = {
            "cmap": self.cmap,
            "cfg": CfgLib(self, self.cmap.store),
            "cpg": CpgLib(self),
            "quorum": QuorumLib(self),
            "votequorum": VotequorumLib(self),
        }
        self._handles = 0

    # --- NodeView --------------------------------------------------------------------------------

    @property
    def me(self) -> NodeId:
        return self._me

    @property
    def now(self) -> Instant:
        return self.cluster.sim.now

    def submit(self, make: Callable[[Instant, int], object]) -> RequestResult:
        rid = self._next
        self._next += 1
        node = self.cluster.sim.nodes[self._me]
        if node.core is None:
            return RequestResult(rid, "not_running", "down")
        self._awaiting, self._answer = rid, None
        self.cluster.sim._feed(node, make(self.now, rid))
        self._awaiting = 0
        assert self._answer is not None, "the Stack answers local requests at once"
        return self._answer

    def cpg_mcast(self, handle: Handle, group: bytes, payload: bytes) -> ErrorCode | None:
        node = self.cluster.sim.nodes[self._me]
        if node.core is None:
            return ErrorCode.NOT_RUNNING
        core = node.core
        assert isinstance(core, _Hooked)
        error, actions = core.local_mcast(self.now, handle, group, payload)
        self.cluster.sim._apply(node, actions)
        return error

    def stack(self) -> Stack:
        return self.cluster.sim.nodes[self._me].core.stack  # type: ignore[union-attr]

    def cpg(self) -> CpgService | None:
        svc = self.stack().services.get(2)
        return svc if isinstance(svc, CpgService) else None

    def votequorum(self) -> VotequorumService | None:
        svc = self.stack().services.get(5)
        return svc if isinstance(svc, VotequorumService) else None

    def membership(self) -> tuple[RingId, tuple[NodeId, ...]]:
        stack = self.stack()
        return stack.ring_id or RingId(0, NodeId(0)), stack.members

    def config(self) -> ClusterConfig:
        return self.cluster.config

    def links(self) -> Sequence[LinkStatus]:
        members = self.stack().members
        peers = tuple(
            PeerReachability(n.nodeid, n.addresses[0], n.nodeid in members)
            for n in self.cluster.config.nodes
            if n.nodeid != self._me
        )
        return [LinkStatus(0, None, f"10.9.0.{self._me}", True, peers)]

    def is_quorum_configured(self) -> bool:
        return True

    def node_ips(self, nodeid: NodeId) -> Sequence[str]:
        node = self.cluster.config.node(nodeid)
        return [node.addresses[0]] if node is not None else []

    def reopen_logs(self) -> bool:
        return True

    def config_versions(self) -> Mapping[NodeId, int]:
        svc = self.stack().services.get(0)
        return dict(svc.versions) if isinstance(svc, CmapSync) else {}

    def stats_keys(self) -> Mapping[str, Value]:
        return {}

    # --- the server's part -------------------------------------------------------------------------

    def on_note(self, note: object) -> None:
        if isinstance(note, RequestResult) and note.request_id == self._awaiting:
            self._answer = note
            return
        self.notes.append(note)
        for face in self.faces.values():
            self.outbox += face.notify(note)

    def face(self, name: str) -> Any:
        return self.faces[name]

    def connect(self, name: str, pid: int = 4242, uid: int = 0, gid: int = 0) -> Peer:
        self._handles += 1
        peer = Peer(Handle((1 << 40) + self._handles), pid, uid, gid, MAX_MSG)
        self.outbox += self.faces[name].connect(peer)
        return peer

    def call(self, name: str, peer: Peer, request: bytes) -> list[LibOutput]:
        return self.faces[name].request(peer, request)

    def answer(self, name: str, peer: Peer, request: bytes) -> bytes:
        """Serve a request that must get exactly one response; return it."""
        out = self.call(name, peer, request)
        responses = [o for o in out if isinstance(o, Response) and o.handle == peer.handle]
        assert len(responses) == 1, out
        return responses[0].data

    def events(self, peer: Peer) -> list[bytes]:
        """Take the events queued for `peer` from the outbox."""
        mine = [o.data for o in self.outbox if isinstance(o, Event) and o.handle == peer.handle]
        self.outbox = [o for o in self.outbox if not (isinstance(o, Event) and o.handle == peer.handle)]
        return mine


class _Hooked:
    """A Stack whose notifications go to its node's faces (the runtime's listener)."""

    def __init__(self, stack: Stack, cluster: FaceCluster) -> None:
        self.stack = stack
        self.cluster = cluster

    def handle(self, event: object) -> list[Any]:
        actions = self.stack.handle(event)  # type: ignore[arg-type]
        self._notes(actions)
        return actions

    def local_mcast(self, now: Instant, handle: Handle, group: bytes, payload: bytes) -> tuple[Any, list]:
        error, actions = self.stack.local_mcast(now, handle, group, payload)
        self._notes(actions)
        return error, actions

    def _notes(self, actions: list[Any]) -> None:
        view = self.cluster.views.get(self.stack.me)
        if view is not None:
            for a in actions:
                if isinstance(a, Notification):
                    view.on_note(a)

    @property
    def next_deadline(self) -> Instant | None:
        return self.stack.next_deadline


class FaceCluster:
    """n simulated nodes with the faces on each (module docstring)."""

    def __init__(self, n: int, seed: int = 5, extra_config: str = "") -> None:
        self.config = parse_config(config_text(n, extra_config))
        services = default_services(self.config.quorum, None, (CfgService, CpgService))
        stack_config = StackConfig(self.config.totem, self.config.quorum, services)
        self.views: dict[NodeId, SimView] = {}

        def factory(config: Any, me: NodeId, rng: random.Random, ring_seq: int) -> _Hooked:
            return _Hooked(Stack(stack_config, me, rng, ring_seq), self)

        self.sim = Cluster(self.config.totem, seed=seed, factory=factory)
        self.nodes = tuple(NodeId(i) for i in range(1, n + 1))
        for nodeid in self.nodes:
            self.views[nodeid] = SimView(self, nodeid)

    def boot(self, *nodes: int) -> None:
        for n in nodes or self.nodes:
            self.sim.boot(NodeId(n))

    def settle(self, nodes: Sequence[int] | None = None, members: Sequence[int] | None = None) -> None:
        want = tuple(NodeId(n) for n in (members if members is not None else nodes or self.nodes))
        up = [NodeId(n) for n in (nodes or self.nodes)]

        def settled() -> bool:
            for n in up:
                node = self.sim.nodes[n]
                if node.core is None:
                    return False
                stack = node.core.stack  # type: ignore[attr-defined]
                if stack.members != want or stack.is_synchronising:
                    return False
            return True

        assert self.sim.run_for(ms(8000), settled), "the ring did not settle"

    def run(self, span_ms: int, until: Callable[[], bool] | None = None) -> bool:
        return self.sim.run_for(ms(span_ms), until)

    def view(self, n: int) -> SimView:
        return self.views[NodeId(n)]


# --- request encoders (the client libraries' layouts) ------------------------------------------------


def header(message_id: int, size: int) -> bytes:
    return struct.pack("<i4xi4x", message_id, size)


def cpg_name(group: bytes) -> bytes:
    return struct.pack("<I4x128s", len(group), group)


def cpg_join(group: bytes, pid: int, flags: int = 0) -> bytes:
    return header(0, 168) + cpg_name(group) + struct.pack("<I4xI4x", pid, flags)


def cpg_leave(group: bytes, pid: int) -> bytes:
    return header(1, 160) + cpg_name(group) + struct.pack("<I4x", pid)


def cpg_mcast(payload: bytes) -> bytes:
    return (
        struct.pack("<i4xi4xi4x", 2, 40 + len(payload), 0) + struct.pack("<I4xI4x", 2, len(payload)) + payload
    )


def cpg_partial(kind: int, msglen: int, fragment: bytes) -> bytes:
    head = struct.pack("<i4xi4xi4x", 12, 56 + len(fragment), 0)
    return head + struct.pack("<I4xI4xI4xI4x", 2, msglen, len(fragment), kind) + fragment


def cmap_name(key: str) -> bytes:
    raw = key.encode()
    return struct.pack("<H6x256s", len(raw), raw)


def cmap_get(key: str, room: int = 16) -> bytes:
    return header(2, 288) + cmap_name(key) + struct.pack("<Q", room)


def cmap_set(key: str, kind: int, value: bytes) -> bytes:
    return header(0, 296 + len(value)) + cmap_name(key) + struct.pack("<QB7x", len(value), kind) + value


def cmap_track_add(key: str, track_type: int, cookie: int) -> bytes:
    return header(7, 296) + cmap_name(key) + struct.pack("<i4xQ", track_type, cookie)


def error_of(data: bytes) -> ErrorCode | int:
    """The answer's cs_error_t as an ErrorCode (the number itself when corosync defines none)."""
    number = int(struct.unpack_from("<i", data, 16)[0])
    return ErrorCode.from_cs_error(number) or number


def id_of(data: bytes) -> int:
    return int(struct.unpack_from("<i", data, 0)[0])
