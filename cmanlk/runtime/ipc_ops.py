"""The requests of the local API (docs/ipc.md, "Requests"): what each op does and answers.

The IPC server (ipc.py) reads a request frame, checks hello and privileges, and calls the op's
handler here with the connection, the args and the payload. Queries render the daemon's status
snapshot (cmanlk/runtime/status.py) — the same object the D-Bus properties and status.json come
from — and the counters; cpg and votequorum requests become Stack events through the server's
`request()`; the rest go to the backend's `admin()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cmanlk.client import proto as ipcproto
from cmanlk.client.proto import ProtocolError
from cmanlk.errors import ErrorCode
from cmanlk.runtime.backend import AdminCommand, DlmStatus, FenceAck, KillNode, LeaveCluster
from cmanlk.runtime.status import Snapshot, plain, quorum_dict
from cmanlk.services.base import CPG_SERVICE
from cmanlk.services.cpg.service import CpgJoin, CpgLeave, CpgMcast
from cmanlk.stack import ServiceRequest, SetExpectedVotes, SetVotes
from cmanlk.types import NodeId, RingId

if TYPE_CHECKING:
    from cmanlk.runtime.ipc import IpcServer, _Client


@dataclass(frozen=True, slots=True)
class Call:
    """One request being served: who asked, its args and payload."""

    server: IpcServer
    client: _Client
    args: dict[str, Any]
    payload: bytes


Handler = Callable[[Call], Awaitable[dict[str, Any]]]


async def _hello(call: Call) -> dict[str, Any]:
    client = call.client
    client.version = ipcproto.negotiate(call.args.get("versions"))
    client.compact = client.version >= ipcproto.COMPACT_VERSION
    snapshot = call.server.backend.snapshot()
    extra: dict[str, Any] = {}
    if client.compact:
        config = call.server.config
        extra["capabilities"] = list(ipcproto.CAPABILITIES)
        extra["mcast_window"] = {"messages": config.mcast_window_messages, "bytes": config.mcast_window_bytes}
    return {
        **extra,
        "version": client.version,
        "server": "cmanlkd",
        "server_version": snapshot.version,
        "node_id": snapshot.node_id,
        "cluster_name": snapshot.cluster_name,
        "uid": client.cred.uid,
        "privileged": client.cred.uid == 0,
    }


async def _status(call: Call) -> dict[str, Any]:
    s = call.server.backend.snapshot()
    return {
        "node_id": s.node_id,
        "cluster_name": s.cluster_name,
        "version": s.version,
        "state": s.state,
        **ring_fields(s.ring_id),
        "members": list(s.members),
        "quorate": s.quorate,
        "clients": call.server.client_count,
    }


async def _membership(call: Call) -> dict[str, Any]:
    s = call.server.backend.snapshot()
    nodes = {n.nodeid: n for n in s.nodes}
    members = [
        {"nodeid": m, "name": s.name_of(m), "addresses": list(nodes[m].addresses) if m in nodes else []}
        for m in s.members
    ]
    return {**ring_fields(s.ring_id), "members": members}


async def _quorum(call: Call) -> dict[str, Any]:
    s = call.server.backend.snapshot()
    out = quorum_dict(s.quorum)
    out.setdefault("quorate", False)
    out.update(node_id=s.node_id, ring_id=str(s.ring_id), members=list(s.members))
    return out


async def _nodes(call: Call) -> dict[str, Any]:
    s = call.server.backend.snapshot()
    nodes = [
        {"nodeid": n.nodeid, "name": n.name, "addresses": list(n.addresses), "votes": n.votes,
         "state": n.state, "local": n.nodeid == s.node_id}
        for n in s.nodes
    ]  # fmt: skip
    return {"nodes": nodes}


async def _links(call: Call) -> dict[str, Any]:
    """`links`: one row per (peer, link); `local`: per local link its address, state and counters."""
    backend = call.server.backend
    s = backend.snapshot()
    return {
        "links": [{"nodeid": p.nodeid, "link": p.link, "up": p.up, "address": p.address} for p in s.paths],
        "local": [plain(lk.as_dict()) for lk in backend.counters().links],
        "node_id": s.node_id,
    }


async def _stats(call: Call) -> dict[str, Any]:
    return {"daemon": plain(call.server.backend.counters().stats), "ipc": dict(call.server.stats)}


async def _groups(call: Call) -> dict[str, Any]:
    groups = call.server.backend.snapshot().groups
    return {"groups": [{"name": g.name, "members": [list(m) for m in g.members]} for g in groups]}


async def _track_start(call: Call) -> dict[str, Any]:
    call.client.track_membership = bool(call.args.get("membership", True))
    call.client.track_quorum = bool(call.args.get("quorum", False))
    call.client.changes_only = bool(call.args.get("changes_only", False))
    return {}


async def _track_stop(call: Call) -> dict[str, Any]:
    call.client.track_membership = call.client.track_quorum = False
    return {}


async def _cpg_join(call: Call) -> dict[str, Any]:
    group = ipcproto.group_name(call.args.get("group"))
    pid = call.args.get("pid", call.client.cred.pid)
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "pid must be an integer")
    initial = bool(call.args.get("initial_totem_conf", False))
    call.client.used_cpg = True
    request = CpgJoin(call.client.handle, group, pid, initial)
    await call.server.request(lambda t, rid: ServiceRequest(t, CPG_SERVICE, request, rid))
    return {"group": ipcproto.group_text(group), "pid": pid}


async def _cpg_leave(call: Call) -> dict[str, Any]:
    request = CpgLeave(call.client.handle, ipcproto.group_name(call.args.get("group")))
    await call.server.request(lambda t, rid: ServiceRequest(t, CPG_SERVICE, request, rid))
    return {}


async def _cpg_send(call: Call) -> dict[str, Any]:
    request = CpgMcast(call.client.handle, ipcproto.group_name(call.args.get("group")), call.payload)
    await call.server.request(lambda t, rid: ServiceRequest(t, CPG_SERVICE, request, rid))
    return {}


async def _set_expected(call: Call) -> dict[str, Any]:
    expected = int_arg(call.args, "expected_votes")
    await call.server.request(lambda t, rid: SetExpectedVotes(t, expected, rid))
    return {"expected_votes": expected}


async def _set_votes(call: Call) -> dict[str, Any]:
    votes = int_arg(call.args, "votes")
    nodeid = call.args.get("nodeid", 0) or call.server.backend.snapshot().node_id
    if not isinstance(nodeid, int):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "nodeid must be an integer")
    await call.server.request(lambda t, rid: SetVotes(t, NodeId(nodeid), votes, rid))
    return {"nodeid": nodeid, "votes": votes}


def _admin(make: Callable[[dict[str, Any]], AdminCommand]) -> Handler:
    async def handler(call: Call) -> dict[str, Any]:
        result: dict[str, Any] = plain(await call.server.backend.admin(make(call.args)))
        return result

    return handler


OPS: dict[str, tuple[Handler, bool]] = {
    "hello": (_hello, False),
    "status": (_status, False),
    "membership": (_membership, False),
    "quorum": (_quorum, False),
    "nodes": (_nodes, False),
    "links": (_links, False),
    "stats": (_stats, False),
    "groups": (_groups, False),
    "track_start": (_track_start, False),
    "track_stop": (_track_stop, False),
    "cpg_join": (_cpg_join, False),
    "cpg_leave": (_cpg_leave, False),
    "cpg_send": (_cpg_send, False),
    "dlm": (_admin(lambda a: DlmStatus()), False),
    "set_expected": (_set_expected, True),
    "set_votes": (_set_votes, True),
    "leave": (_admin(lambda a: LeaveCluster()), True),
    "kill": (_admin(lambda a: KillNode(NodeId(int_arg(a, "nodeid")), _reason_arg(a))), True),
    "fence_ack": (_admin(lambda a: FenceAck(NodeId(int_arg(a, "nodeid")))), True),
}
"""op → (handler, privileged): privileged ops are for root only."""


# --- what the track events show (ipc.py sends them) ------------------------------------------------


def track_view(s: Snapshot, ring_id: RingId, members: tuple[NodeId, ...], joined: tuple[NodeId, ...],
               left: tuple[NodeId, ...], changes_only: bool, current: bool) -> dict[str, Any]:  # fmt: skip
    """A `track` event's data (docs/ipc.md, "Events"): SA-Forum CLM track semantics."""
    came = set(joined)
    shown = [n for n in members if not changes_only or n in came]
    entries = [_member(s, n, "joined" if n in came else "no_change") for n in shown]
    entries += [_member(s, n, "left") for n in left]
    return {
        "view_number": ring_id.seq,
        **ring_fields(ring_id),
        "members": [m for m in entries if m["change"] != "left"],
        "changes": [m for m in entries if m["change"] != "no_change"],
        "current": current,
    }


def ring_fields(ring_id: RingId) -> dict[str, Any]:
    """ring_id ("rep.seq"), ring_seq and ring_rep, as every answer and event carries them."""
    return {"ring_id": str(ring_id), "ring_seq": ring_id.seq, "ring_rep": ring_id.rep}


def _member(s: Snapshot, nodeid: NodeId, change: str) -> dict[str, Any]:
    return {"nodeid": nodeid, "name": s.name_of(nodeid), "change": change}


def int_arg(args: Mapping[str, Any], key: str) -> int:
    """args[key] as an int. Raises ProtocolError(bad_request) when it is not one."""
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} must be an integer")
    return value


def _reason_arg(args: Mapping[str, Any]) -> str | None:
    """The optional `reason` of a kill (its length is checked by the cfg service: 255 bytes)."""
    value = args.get("reason")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(ErrorCode.BAD_REQUEST, "reason must be a non-empty string")
    return value
