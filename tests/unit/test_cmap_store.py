"""cmap's key tree: icmap's rules (cmanlk/services/cmap/store.py) and coroparse's types (keys.py).

The expected key list of `test_the_tree_has_corosyncs_keys_and_types` is what Debian's corosync
3.1.7 printed with corosync-cmapctl for the same file (single node, udpu), less the keys of
services cmanlkd does not run (pload, mon, wd), `resources.*` (the watchdog service),
`runtime.blackbox.*`, `runtime.force_gather` and the per-function rx/tx counters.
"""

from __future__ import annotations

from cmanlk.config import parse_config
from cmanlk.errors import ErrorCode
from cmanlk.services.cmap.keys import config_keys, member_ip_text, start_keys
from cmanlk.services.cmap.store import (
    MAX_KEYS,
    TRACK_ADD,
    TRACK_DELETE,
    TRACK_MODIFY,
    TRACK_PREFIX,
    TYPE_NAMES,
    CmapStore,
    Value,
    ValueType,
    check_value,
    is_read_only,
    text,
    u8,
    u32,
)
from cmanlk.types import NodeId

PROBE = """\
totem {
  version: 2
  cluster_name: probe
  transport: udpu
  token: 1000
  crypto_cipher: none
  crypto_hash: none
}
nodelist {
  node {
    ring0_addr: 127.0.0.1
    nodeid: 1
    name: n1
  }
  node {
    ring0_addr: 127.0.0.2
    nodeid: 2
    name: n2
  }
}
quorum {
  provider: corosync_votequorum
}
logging {
  to_stderr: yes
  to_syslog: no
}
system {
  state_dir: /tmp/i12/cs/state
}
uidgid {
  uid: 1234
  gid: 4321
}
"""

COROSYNC_KEYS = """\
internal_configuration.service.0.name (str) = corosync_cmap
internal_configuration.service.0.ver (u32) = 0
internal_configuration.service.1.name (str) = corosync_cfg
internal_configuration.service.1.ver (u32) = 0
internal_configuration.service.2.name (str) = corosync_cpg
internal_configuration.service.2.ver (u32) = 0
internal_configuration.service.3.name (str) = corosync_quorum
internal_configuration.service.3.ver (u32) = 0
internal_configuration.service.4.name (str) = corosync_votequorum
internal_configuration.service.4.ver (u32) = 0
logging.to_stderr (str) = yes
logging.to_syslog (str) = no
nodelist.local_node_pos (u32) = 0
nodelist.node.0.name (str) = n1
nodelist.node.0.nodeid (u32) = 1
nodelist.node.0.ring0_addr (str) = 127.0.0.1
nodelist.node.1.name (str) = n2
nodelist.node.1.nodeid (u32) = 2
nodelist.node.1.ring0_addr (str) = 127.0.0.2
quorum.provider (str) = corosync_votequorum
runtime.config.totem.block_unlisted_ips (u32) = 1
runtime.config.totem.consensus (u32) = 1200
runtime.config.totem.downcheck (u32) = 1000
runtime.config.totem.fail_recv_const (u32) = 2500
runtime.config.totem.hold (u32) = 180
runtime.config.totem.join (u32) = 50
runtime.config.totem.max_messages (u32) = 17
runtime.config.totem.max_network_delay (u32) = 50
runtime.config.totem.merge (u32) = 200
runtime.config.totem.miss_count_const (u32) = 5
runtime.config.totem.send_join (u32) = 0
runtime.config.totem.seqno_unchanged_const (u32) = 30
runtime.config.totem.token (u32) = 1000
runtime.config.totem.token_retransmit (u32) = 238
runtime.config.totem.token_retransmits_before_loss_const (u32) = 4
runtime.config.totem.token_warning (u32) = 75
runtime.config.totem.window_size (u32) = 50
runtime.services.cfg.service_id (u16) = 1
runtime.services.cmap.service_id (u16) = 0
runtime.services.cpg.service_id (u16) = 2
runtime.services.quorum.service_id (u16) = 3
runtime.services.votequorum.service_id (u16) = 5
runtime.votequorum.this_node_id (u32) = 1
system.state_dir (str) = /tmp/i12/cs/state
totem.cluster_name (str) = probe
totem.crypto_cipher (str) = none
totem.crypto_hash (str) = none
totem.interface.0.bindnetaddr (str) = 127.0.0.1
totem.token (u32) = 1000
totem.transport (str) = udpu
totem.version (u32) = 2
uidgid.config.gid.4321 (u8) = 1
uidgid.config.uid.1234 (u8) = 1
"""
"""corosync 3.1.7's output, services renumbered for the five cmanlkd runs (corosync loads pload
as service index 4 and votequorum as 5); timers are corosync's defaults, which cmanlk derives
the same way."""


def _render(key: str, value: Value) -> str:
    shown = value.python()
    if isinstance(shown, bytes):
        shown = shown.hex()
    return f"{key} ({TYPE_NAMES[value.type]}) = {shown}"


def test_the_tree_has_corosyncs_keys_and_types() -> None:
    config = parse_config(PROBE)
    keys = {**config_keys(config), **start_keys(config, NodeId(1))}
    ours = "\n".join(_render(k, v) for k, v in sorted(keys.items())) + "\n"
    assert ours == COROSYNC_KEYS


def test_coroparse_types_for_interfaces_quorum_and_subsections() -> None:
    text_config = PROBE.replace(
        "  token: 1000\n",
        "  token: 1000\n  config_version: 7\n  interface {\n    linknumber: 0\n    mcastport: 5405\n"
        "    ttl: 2\n    knet_ping_interval: 200\n  }\n",
    ).replace(
        "  provider: corosync_votequorum\n",
        "  provider: corosync_votequorum\n  two_node: 1\n  expected_votes: 2\n",
    )
    keys = config_keys(parse_config(text_config))
    assert keys["totem.config_version"].type is ValueType.UINT64
    assert keys["totem.interface.0.mcastport"].type is ValueType.UINT16
    assert keys["totem.interface.0.ttl"].type is ValueType.UINT8
    assert keys["totem.interface.0.knet_ping_interval"].type is ValueType.UINT32
    assert keys["quorum.two_node"] == u8(1) and keys["quorum.expected_votes"] == u32(2)
    assert "totem.interface.linknumber" not in keys


def test_member_ip_is_printed_as_corosync_prints_it() -> None:
    config = parse_config(PROBE)
    assert member_ip_text(config, NodeId(2)) == "r(0) ip(127.0.0.2) "


def test_setting_the_same_value_changes_nothing_and_notifies_nobody() -> None:
    store = CmapStore()
    error, _track = store.track_add("a.b", TRACK_ADD | TRACK_MODIFY | TRACK_DELETE)
    assert error is ErrorCode.OK
    assert store.set("a.b", u32(1))[1][0].event == TRACK_ADD
    assert store.set("a.b", u32(1)) == (ErrorCode.OK, [])
    (change,) = store.set("a.b", u32(2))[1]
    assert (change.event, change.new, change.old) == (TRACK_MODIFY, u32(2), u32(1))
    (gone,) = store.delete("a.b")[1]
    assert (gone.event, gone.new, gone.old) == (TRACK_DELETE, None, u32(2))
    assert store.delete("a.b")[0] is ErrorCode.NOT_EXIST


def test_prefix_tracks_see_every_key_below_and_key_tracks_only_theirs() -> None:
    store = CmapStore()
    _, everything = store.track_add("", TRACK_ADD | TRACK_PREFIX)
    _, prefix = store.track_add("runtime.", TRACK_ADD | TRACK_PREFIX)
    _, exact = store.track_add("runtime", TRACK_ADD)
    changes = store.set("runtime.x", u8(1), force=True)[1]
    assert sorted(c.track for c in changes) == sorted([everything, prefix])
    assert {c.track for c in store.set("runtime", u8(1), force=True)[1]} == {everything, exact}
    assert store.track_delete(prefix) and not store.track_delete(prefix)


def test_names_values_and_read_only_keys_follow_icmap() -> None:
    store = CmapStore()
    assert store.set("ab", u8(1))[0] is ErrorCode.NAME_TOO_LONG  # shorter than 3
    assert store.set("a b c", u8(1))[0] is ErrorCode.NAME_TOO_LONG  # a space
    assert store.set("x" * 256, u8(1))[0] is ErrorCode.NAME_TOO_LONG
    assert store.set("nodelist.node.0.nodeid", u32(9))[0] is ErrorCode.PERMISSION_DENIED
    assert store.set("totem.cluster_name", text("x"))[0] is ErrorCode.PERMISSION_DENIED
    assert is_read_only("quorum.wait_for_all") and not is_read_only("quorum.expected_votes")
    assert check_value(int(ValueType.UINT32), b"\1\2\3") is None  # wrong size
    assert check_value(int(ValueType.STRING), b"abc\0") == text("abc")
    assert check_value(int(ValueType.STRING), b"abc") == text("abc")  # value_len may be strlen
    assert check_value(int(ValueType.STRING), b"ab\0cd") is None  # value_len past strlen + 1
    assert check_value(13, b"") is None


def test_adjust_int_wraps_like_c_and_refuses_strings() -> None:
    store = CmapStore()
    store.set("c.n.t", Value.of(ValueType.UINT8, 255))
    assert store.adjust_int("c.n.t", 1)[0] is ErrorCode.OK and store.get("c.n.t") == Value.of(
        ValueType.UINT8, 0
    )
    store.set("s.t.r", text("x"))
    assert store.adjust_int("s.t.r", 1)[0] is ErrorCode.INVALID_PARAM


def test_iteration_is_byte_ordered_and_the_store_is_bounded() -> None:
    store = CmapStore()
    for key in ("b.x", "a.z", "a.b", "a.a.c"):
        store.set(key, u8(1))
    assert store.keys("a.") == ["a.a.c", "a.b", "a.z"]
    assert store.keys() == ["a.a.c", "a.b", "a.z", "b.x"]
    for i in range(MAX_KEYS - len(store)):
        assert store.set(f"k.{i}", u8(1))[0] is ErrorCode.OK
    assert store.set("one.more", u8(1))[0] is ErrorCode.NO_RESOURCES
    assert store.set("k.0", u8(2))[0] is ErrorCode.OK  # changing an existing key is still allowed
