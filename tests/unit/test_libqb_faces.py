"""The five library faces, request by request, over real Stacks on the simulator (tests/unit/libqbfaces.py).

Layouts are the ones gcc gives corosync 3.1.7's ipc_*.h on x86-64; answers are exec/*.c's.
"""

from __future__ import annotations

import struct

from cmanlk.errors import ErrorCode
from cmanlk.services.lib import Event, Hold, Response
from cmanlk.services.votequorum.policy import NodeState
from cmanlk.types import NodeId

from .libqbfaces import (
    FaceCluster,
    cmap_get,
    cmap_set,
    cmap_track_add,
    cpg_join,
    cpg_leave,
    cpg_mcast,
    cpg_partial,
    error_of,
    header,
    id_of,
)


def three() -> FaceCluster:
    cluster = FaceCluster(3)
    cluster.boot()
    cluster.settle()
    return cluster


# --- quorum (service 3) ----------------------------------------------------------------------------


def test_quorum_gettype_getquorate_and_v1_tracking_with_initial_events() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("quorum")
    gettype = v.answer("quorum", peer, header(3, 16))
    assert (id_of(gettype), len(gettype), error_of(gettype)) == (4, 32, ErrorCode.OK)
    assert struct.unpack_from("<I", gettype, 24)[0] == 1  # QUORUM_SET
    quorate = v.answer("quorum", peer, header(0, 16))
    assert len(quorate) == 32 and struct.unpack_from("<I", quorate, 24)[0] == 1
    model = v.answer("quorum", peer, header(4, 24) + struct.pack("<I4x", 1))
    assert (id_of(model), error_of(model)) == (5, ErrorCode.OK)
    out = v.call("quorum", peer, header(1, 24) + struct.pack("<I4x", 1 | 2))  # CURRENT | CHANGES
    assert [type(o) for o in out] == [Event, Event, Response]
    nodelist, quorum = out[0].data, out[1].data  # type: ignore[union-attr]
    assert id_of(nodelist) == 7 and len(nodelist) == 64 + 4 * 3
    assert struct.unpack_from("<III", nodelist, 60) == (1, 2, 3)
    assert struct.unpack_from("<I4xI4xI", nodelist, 40) == (3, 0, 0)
    assert id_of(quorum) == 6 and len(quorum) == 56 + 12 and struct.unpack_from("<i", quorum, 24)[0] == 1
    again = v.answer("quorum", peer, header(1, 24) + struct.pack("<I4x", 2))
    assert error_of(again) == ErrorCode.EXIST


def test_quorum_trackers_get_the_nodelist_then_the_quorum_notification_after_a_crash() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("quorum")
    v.answer("quorum", peer, header(4, 24) + struct.pack("<I4x", 1))
    v.call("quorum", peer, header(1, 24) + struct.pack("<I4x", 2))
    v.events(peer)
    c.sim.crash(NodeId(3))
    c.settle(nodes=[1, 2], members=[1, 2])
    events = v.events(peer)
    assert [id_of(e) for e in events] == [7, 6]
    nodelist, quorum = events
    assert struct.unpack_from("<I4xI4xI", nodelist, 40) == (2, 0, 1)  # members, joined, left
    assert struct.unpack_from("<III", nodelist, 60) == (1, 2, 3)
    assert struct.unpack_from("<i", quorum, 24)[0] == 1 and struct.unpack_from("<I", quorum, 48)[0] == 2


def test_quorum_v0_notification_and_trackstop() -> None:
    c = three()
    v = c.view(2)
    peer = v.connect("quorum")
    out = v.call("quorum", peer, header(1, 24) + struct.pack("<I4x", 1))  # CURRENT only: no tracking
    (event,) = [o.data for o in out if isinstance(o, Event)]
    assert id_of(event) == 3 and len(event) == 48 + 12
    quorate, seq, n = struct.unpack_from("<i4xQI", event, 24)
    assert quorate == 1 and n == 3 and seq == v.membership()[0].seq
    stop = v.answer("quorum", peer, header(2, 16))
    assert (id_of(stop), error_of(stop)) == (2, ErrorCode.OK)


# --- votequorum (service 5) -----------------------------------------------------------------------


def test_votequorum_getinfo_answers_like_corosync_quorumtool_expects() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("votequorum")
    info = v.answer("votequorum", peer, header(0, 24) + struct.pack("<i4x", 0))
    assert (id_of(info), len(info), error_of(info)) == (1, 320, ErrorCode.OK)
    nodeid, state, votes, expected, highest, total, quorum, flags, _qdev = struct.unpack_from("<9I", info, 24)
    assert (nodeid, state, votes, expected, highest, total, quorum) == (1, NodeState.MEMBER, 1, 3, 3, 3, 2)
    assert flags & 2  # QUORATE
    assert info[60:61] == b"\0"  # an empty, terminated qdevice name
    missing = v.answer("votequorum", peer, header(0, 24) + struct.pack("<i4x", 99))
    assert error_of(missing) == ErrorCode.NOT_EXIST


def test_votequorum_setexpected_is_checked_and_applied_cluster_wide() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("votequorum")
    low = v.answer("votequorum", peer, header(1, 24) + struct.pack("<I4x", 1))
    assert (id_of(low), error_of(low)) == (0, ErrorCode.INVALID_PARAM)
    ok = v.answer("votequorum", peer, header(1, 24) + struct.pack("<I4x", 4))
    assert error_of(ok) == ErrorCode.OK
    c.run(2000)
    other = c.view(3)
    p3 = other.connect("votequorum")
    info = other.answer("votequorum", p3, header(0, 24) + struct.pack("<i4x", 0))
    assert struct.unpack_from("<I", info, 36)[0] == 4
    unknown = v.answer("votequorum", peer, header(2, 24) + struct.pack("<Ii", 1, 77))
    assert error_of(unknown) == ErrorCode.NOT_FOUND


def test_votequorum_tracking_sends_nodelist_and_quorum_with_the_context() -> None:
    c = three()
    v = c.view(2)
    peer = v.connect("votequorum")
    out = v.call("votequorum", peer, header(3, 32) + struct.pack("<QI4x", 0xC0FFEE, 2))
    assert [type(o) for o in out] == [Event, Event, Response]
    nodelist, quorum = out[0].data, out[1].data  # type: ignore[union-attr]
    assert id_of(nodelist) == 5 and struct.unpack_from("<Q", nodelist, 24)[0] == 0xC0FFEE
    ring_node, ring_seq, n = struct.unpack_from("<I4xQI", nodelist, 32)
    assert n == 3 and (ring_node, ring_seq) == (v.membership()[0].rep, v.membership()[0].seq)
    assert id_of(quorum) == 3 and len(quorum) == 48 + 8 * 3
    assert struct.unpack_from("<6I", quorum, 48) == (1, 1, 2, 1, 3, 1)
    for request_id, size, expected in ((5, 272, ErrorCode.PERMISSION_DENIED), (6, 272, ErrorCode.NOT_EXIST)):
        answer = v.answer("votequorum", peer, header(request_id, size) + bytes(size - 16))
        assert error_of(answer) == expected
    stop = v.answer("votequorum", peer, header(4, 16))
    assert error_of(stop) == ErrorCode.OK
    stop = v.answer("votequorum", peer, header(4, 16))
    assert error_of(stop) == ErrorCode.NOT_EXIST


# --- cmap (service 0) ------------------------------------------------------------------------------


def test_cmap_get_probes_the_size_then_reads_a_typed_value() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("cmap")
    probe = v.answer("cmap", peer, cmap_get("totem.cluster_name", room=0))
    assert len(probe) == 40 and struct.unpack_from("<QB", probe, 24) == (6, 11)  # "faces\0", STRING
    value = v.answer("cmap", peer, cmap_get("totem.cluster_name", room=6))
    assert value[40:] == b"faces\0"
    small = v.answer("cmap", peer, cmap_get("totem.cluster_name", room=3))
    assert error_of(small) == ErrorCode.INVALID_PARAM
    nodeid = v.answer("cmap", peer, cmap_get("nodelist.node.1.nodeid"))
    assert struct.unpack_from("<QB", nodeid, 24) == (4, 6) and struct.unpack_from("<I", nodeid, 40)[0] == 2
    missing = v.answer("cmap", peer, cmap_get("no.such.key"))
    assert (len(missing), error_of(missing)) == (40, ErrorCode.NOT_EXIST)
    members = v.answer("cmap", peer, cmap_get("runtime.members.2.status", room=32))
    assert members[40:47] == b"joined\0"


def test_cmap_set_refuses_read_only_keys_and_tracking_sees_a_change() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("cmap")
    watcher = v.connect("cmap")
    added = v.answer("cmap", watcher, cmap_track_add("uidgid.", 4 | 2 | 1 | 8, cookie=99))
    assert (id_of(added), len(added), error_of(added)) == (7, 32, ErrorCode.OK)
    refused = v.answer("cmap", peer, cmap_set("totem.cluster_name", 11, b"evil\0"))
    assert error_of(refused) == ErrorCode.PERMISSION_DENIED
    out = v.call("cmap", peer, cmap_set("uidgid.gid.189", 2, b"\1"))
    assert error_of(next(o.data for o in out if isinstance(o, Response))) == ErrorCode.OK
    (note,) = [o.data for o in out if isinstance(o, Event) and o.handle == watcher.handle]
    assert id_of(note) == 9 and struct.unpack_from("<Q", note, 24)[0] == 99
    assert note[40:54] == b"uidgid.gid.189"
    event, new_type, old_type, new_len, old_len = struct.unpack_from("<i4xB7xB7xQQ", note, 296)
    assert (event, new_type, old_type, new_len, old_len) == (4, 2, 0, 1, 0)
    assert note[336:] == b"\1"
    assert v.cmap.allows(5000, 189) and not v.cmap.allows(5000, 190)


def test_cmap_iteration_walks_a_prefix_in_byte_order() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("cmap")
    init = v.answer("cmap", peer, header(4, 280) + struct.pack("<H6x256s", 9, b"nodelist."))
    (handle,) = struct.unpack_from("<Q", init, 24)
    keys = []
    while True:
        nxt = v.answer("cmap", peer, header(5, 24) + struct.pack("<Q", handle))
        if error_of(nxt) == ErrorCode.NO_SECTIONS:
            break
        (length,) = struct.unpack_from("<H", nxt, 24)
        keys.append(nxt[32 : 32 + length].decode())
    assert keys == sorted(keys) and "nodelist.node.2.ring0_addr" in keys and "nodelist.local_node_pos" in keys
    done = v.answer("cmap", peer, header(6, 24) + struct.pack("<Q", handle))
    assert error_of(done) == ErrorCode.OK
    again = v.answer("cmap", peer, header(5, 24) + struct.pack("<Q", handle))
    assert error_of(again) == ErrorCode.BAD_HANDLE


# --- cfg (service 1) -------------------------------------------------------------------------------


def test_cfg_local_get_node_addrs_and_node_status() -> None:
    c = three()
    v = c.view(2)
    peer = v.connect("cfg")
    local = v.answer("cfg", peer, header(6, 16))
    assert (id_of(local), struct.unpack_from("<I", local, 24)[0]) == (12, 2)
    addrs = v.answer("cfg", peer, header(5, 24) + struct.pack("<I4x", 3))
    assert id_of(addrs) == 11 and struct.unpack_from("<II", addrs, 24) == (2, 1)
    assert addrs[32:36] == bytes([10, 9, 0, 3]) and len(addrs) == 48
    status = v.answer("cfg", peer, header(9, 32) + struct.pack("<I4xI4x", 1, 1))
    assert (id_of(status), len(status), error_of(status)) == (16, 4200, ErrorCode.OK)
    version, nodeid, reachable = struct.unpack_from("<IIB", status, 24)
    assert (version, nodeid, reachable) == (1, 1, 1)
    enabled, connected = struct.unpack_from("<BB", status, 40)
    assert (enabled, connected) == (1, 1) and status[48:56] == b"10.9.0.1"
    unknown = v.answer("cfg", peer, header(9, 32) + struct.pack("<I4xI4x", 9, 1))
    assert error_of(unknown) == ErrorCode.FAILED_OPERATION


def test_cfg_try_shutdown_waits_for_the_trackers_vote() -> None:
    c = three()
    v = c.view(1)
    pacemakerd = v.connect("cfg")
    assert error_of(v.answer("cfg", pacemakerd, header(10, 24) + bytes(8))) == ErrorCode.OK
    tool = v.connect("cfg")
    asked = v.call("cfg", tool, header(3, 24) + struct.pack("<I4x", 0))  # REQUEST
    assert [(type(o), o.handle) for o in asked] == [(Event, pacemakerd.handle)]
    assert id_of(asked[0].data) == 10  # type: ignore[union-attr]
    busy = v.call("cfg", tool, header(3, 24) + struct.pack("<I4x", 0))
    assert error_of(busy[0].data) == ErrorCode.EXIST  # type: ignore[union-attr]
    vote = v.call("cfg", pacemakerd, header(4, 24) + struct.pack("<I4x", 0))  # NO, as pacemakerd
    answers = {o.handle: o.data for o in vote if isinstance(o, Response)}
    assert error_of(answers[tool.handle]) == ErrorCode.BUSY and id_of(answers[tool.handle]) == 9
    assert id_of(answers[pacemakerd.handle]) == 13
    outside = v.answer("cfg", pacemakerd, header(4, 24) + struct.pack("<I4x", 1))
    assert error_of(outside) == ErrorCode.PERMISSION_DENIED


def test_cfg_announces_a_forced_shutdown_to_its_trackers_before_a_leave() -> None:
    c = three()
    v = c.view(2)
    pacemakerd = v.connect("cfg", pid=777)
    assert error_of(v.answer("cfg", pacemakerd, header(10, 24) + bytes(8))) == ErrorCode.OK
    v.connect("cfg")  # not a tracker
    cfg = v.face("cfg")
    assert cfg.trackers() == (pacemakerd.handle,)
    told = cfg.announce_shutdown()
    assert [(type(o), o.handle) for o in told] == [(Event, pacemakerd.handle)]
    assert id_of(told[0].data) == 10 and struct.unpack_from("<I", told[0].data, 16)[0] == 1  # REGARDLESS
    # no vote
    assert error_of(v.answer("cfg", pacemakerd, header(4, 24) + bytes(8))) == ErrorCode.PERMISSION_DENIED
    v.call("cfg", pacemakerd, header(11, 16))  # trackstop
    assert cfg.trackers() == ()


def test_cfg_try_shutdown_with_no_tracker_shuts_the_node_down_over_the_ring() -> None:
    c = three()
    v = c.view(3)
    tool = v.connect("cfg")
    ok = v.answer("cfg", tool, header(3, 24) + struct.pack("<I4x", 0))
    assert error_of(ok) == ErrorCode.OK
    c.run(2000)
    from cmanlk.services.cfg.service import NodeShutDown

    for n in (1, 2, 3):
        assert NodeShutDown(NodeId(3)) in c.view(n).notes


def test_cfg_reload_is_answered_when_our_own_request_comes_back() -> None:
    c = three()
    v = c.view(1)
    tool = v.connect("cfg")
    assert v.call("cfg", tool, header(7, 16)) == []  # answered later
    c.run(2000)
    from cmanlk.services.cfg.service import ReloadRequested

    (request,) = [n for n in v.notes if isinstance(n, ReloadRequested)]
    assert request.requester == 1
    (answer,) = v.face("cfg").reloaded(request.cookie, ErrorCode.OK)
    assert answer.handle == tool.handle and id_of(answer.data) == 14 and error_of(answer.data) == ErrorCode.OK
    assert any(isinstance(n, ReloadRequested) for n in c.view(2).notes)


# --- cpg (service 2) -------------------------------------------------------------------------------


def test_cpg_join_confchg_deliver_and_leave_across_nodes() -> None:
    c = three()
    a, b = c.view(1), c.view(2)
    pa, pb = a.connect("cpg", pid=111), b.connect("cpg", pid=222)
    assert error_of(a.answer("cpg", pa, cpg_join(b"g", 111, flags=1))) == ErrorCode.OK
    assert error_of(b.answer("cpg", pb, cpg_join(b"g", 222))) == ErrorCode.OK
    c.run(2000)
    events = a.events(pa)
    kinds = [id_of(e) for e in events]
    assert kinds[:2] == [4, 13] and kinds.count(4) == 2  # own join, the initial totem confchg, b's join
    last = [e for e in events if id_of(e) == 4][-1]
    members, joined, left = struct.unpack_from("<I4xI4xI", last, 160)
    assert (members, joined, left) == (2, 1, 0)
    assert struct.unpack_from("<I4xI4xI", last, 184) == (1, 111, 0)
    assert a.call("cpg", pa, cpg_mcast(b"hello")) == []
    c.run(1000)
    (deliver,) = [e for e in b.events(pb) if id_of(e) == 5]
    assert struct.unpack_from("<I4xI4xI", deliver, 160) == (5, 1, 111) and deliver[184:] == b"hello"
    assert error_of(a.answer("cpg", pa, cpg_join(b"other", 111))) == ErrorCode.EXIST
    assert error_of(b.answer("cpg", pb, cpg_leave(b"g", 222))) == ErrorCode.OK
    c.run(1000)
    (gone,) = [e for e in a.events(pa) if id_of(e) == 4]
    assert struct.unpack_from("<I4xI4xI", gone, 160) == (1, 0, 1)
    assert struct.unpack_from("<I4xI4xI", gone, 184 + 24) == (2, 222, 2)  # left entry, reason LEAVE


def test_cpg_membership_local_get_and_iteration_as_corosync_orders_it() -> None:
    c = three()
    for n, group in ((1, b"x"), (2, b"y"), (3, b"x")):
        v = c.view(n)
        p = v.connect("cpg", pid=n * 10)
        assert error_of(v.answer("cpg", p, cpg_join(group, n * 10))) == ErrorCode.OK
    c.run(2000)
    v = c.view(1)
    peer = v.connect("cpg")
    members = v.answer("cpg", peer, header(3, 152) + struct.pack("<I4x128s", 1, b"x"))
    assert (id_of(members), len(members)) == (3, 9248)
    assert struct.unpack_from("<I4xI4xI4xI4xI", members, 24) == (2, 1, 10, 0, 3)
    assert struct.unpack_from("<I", v.answer("cpg", peer, header(4, 16)), 24)[0] == 1
    init = v.answer("cpg", peer, header(5, 160) + struct.pack("<I4x128sI4x", 0, b"", 3))
    (handle,) = struct.unpack_from("<Q", init, 24)
    seen = []
    while True:
        nxt = v.answer("cpg", peer, header(6, 24) + struct.pack("<Q", handle))
        if error_of(nxt) == ErrorCode.NO_SECTIONS:
            break
        length = struct.unpack_from("<I", nxt, 24)[0]
        seen.append((nxt[32 : 32 + length], *struct.unpack_from("<II", nxt, 160)))
    # corosync's copy: each new group goes in front, members after the first of their group
    assert seen == [(b"y", 2, 20), (b"x", 1, 10), (b"x", 3, 30)]


def test_cpg_mcast_is_held_while_a_ring_is_being_synchronised() -> None:
    c = three()
    v = c.view(1)
    peer = v.connect("cpg", pid=5)
    assert error_of(v.answer("cpg", peer, cpg_join(b"g", 5))) == ErrorCode.OK
    c.run(1000)
    c.sim.crash(NodeId(3))

    def syncing() -> bool:
        return v.stack().is_synchronising

    assert c.run(5000, syncing)
    assert v.call("cpg", peer, cpg_mcast(b"later")) == [Hold(peer.handle)]
    c.settle(nodes=[1, 2], members=[1, 2])
    assert v.call("cpg", peer, cpg_mcast(b"later")) == []


def test_cpg_partial_mcast_is_gathered_and_multicast_whole() -> None:
    c = three()
    a, b = c.view(1), c.view(2)
    pa, pb = a.connect("cpg", pid=1), b.connect("cpg", pid=2)
    a.answer("cpg", pa, cpg_join(b"big", 1))
    b.answer("cpg", pb, cpg_join(b"big", 2))
    c.run(1000)
    message = bytes(range(256)) * 40
    parts = [message[:4000], message[4000:8000], message[8000:]]
    for kind, part in zip((1, 2, 3), parts, strict=True):
        answer = a.answer("cpg", pa, cpg_partial(kind, len(message), part))
        assert (id_of(answer), error_of(answer)) == (18, ErrorCode.OK)
    c.run(1000)
    (deliver,) = [e for e in b.events(pb) if id_of(e) == 5]
    assert deliver[184:] == message
    too_big = a.answer("cpg", pa, cpg_partial(1, 8 << 20, b"x"))
    assert error_of(too_big) == ErrorCode.TOO_LARGE


def test_cpg_finalize_stops_callbacks_and_a_closed_connection_leaves_with_procdown() -> None:
    c = three()
    a, b = c.view(1), c.view(2)
    pa, pb = a.connect("cpg", pid=7), b.connect("cpg", pid=8)
    a.answer("cpg", pa, cpg_join(b"g", 7))
    b.answer("cpg", pb, cpg_join(b"g", 8))
    c.run(1000)
    a.events(pa)
    b.events(pb)
    assert error_of(b.answer("cpg", pb, header(8, 16))) == ErrorCode.OK
    b.face("cpg").disconnect(pb.handle)
    c.run(1000)
    (down,) = [e for e in a.events(pa) if id_of(e) == 4]
    assert struct.unpack_from("<I4xI4xI", down, 184 + 24) == (2, 8, 5)
    assert b.events(pb) == []
    for zc, expected in ((9, ErrorCode.NOT_SUPPORTED), (10, ErrorCode.OK), (11, ErrorCode.NOT_SUPPORTED)):
        assert error_of(a.answer("cpg", pa, header(zc, 16) + bytes(300))) == expected


def test_cpg_refuses_dlm_controlds_groups_when_cmanlkd_drives_the_dlm() -> None:
    c = FaceCluster(1, extra_config="cmanlk {\n  dlm: yes\n}\n")
    c.boot()
    c.settle()
    v = c.view(1)
    dlm_controld = v.connect("cpg", pid=900)
    denied = ErrorCode.PERMISSION_DENIED
    assert error_of(v.answer("cpg", dlm_controld, cpg_join(b"dlm:controld", 900))) == denied
    assert error_of(v.answer("cpg", dlm_controld, cpg_join(b"dlm:ls:gfs", 900))) == denied
    other = v.connect("cpg", pid=901)
    assert error_of(v.answer("cpg", other, cpg_join(b"pacemakerd", 901))) == ErrorCode.OK
    plain = three().view(1)  # dlm: no (the default): dlm_controld runs on cmanlkd
    peer = plain.connect("cpg", pid=902)
    assert error_of(plain.answer("cpg", peer, cpg_join(b"dlm:controld", 902))) == ErrorCode.OK
