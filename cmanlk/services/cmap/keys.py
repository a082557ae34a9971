"""The key tree corosync 3.1.7 fills, built from a configuration (exec/coroparse.c, main.c, totemconfig.c).

coroparse turns every `key: value` of corosync.conf into the key `section.subsection.key`; most
values are strings, these have types (the same list as coroparse's main_config_parser_cb):

- totem: the timers and counters below are u32, `knet_compression_level` i32, `config_version` u64;
- totem.interface {linknumber N}: keys become `totem.interface.N.<key>`; mcastport u16, ttl and
  knet_link_priority u8, knet_ping_interval/timeout/precision and knet_pong_count u32, `member`
  entries `member.0`, `member.1`, …; linknumber/ringnumber themselves are not stored;
- nodelist.node (the i-th section): `nodelist.node.i.<key>`, nodeid and quorum_votes u32;
- quorum: expected_votes, votes, last_man_standing_window, leaving_timeout u32; two_node,
  expected_votes_tracking, allow_downscale, wait_for_all, auto_tie_breaker, last_man_standing u8;
  quorum.device: timeout, sync_timeout, votes u32, master_wins u8;
- logging.logger_subsys {subsys: S}: `logging.logger_subsys.S.<key>`;
- uidgid {uid: U gid: G}: `uidgid.config.uid.U` and `uidgid.config.gid.G`, u8 1 (uidgid.d too);
- resources: watchdog_timeout u32, poll_period u64.

What the daemon adds at start (as corosync's main.c and totemconfig.c):
`nodelist.local_node_pos` (u32), `totem.interface.0.bindnetaddr` for udpu/udp when the file has
none (our ring0 address), `runtime.config.totem.*` (the timers in force, u32), one
`internal_configuration.service.N.{name,ver}` and `runtime.services.<name>.service_id` (u16) per
service cmanlkd runs, and `runtime.votequorum.this_node_id` (u32). Membership keys
(`runtime.members.N.*`) and the quorum keys that change come from the cmap face as the ring moves.
"""

from __future__ import annotations

from collections.abc import Iterator

from cmanlk.config import ClusterConfig, ConfigSection, TransportKind
from cmanlk.services.cmap.store import Value, ValueType, u8, u16, u32, u64
from cmanlk.types import NodeId

_TOTEM_U32 = frozenset(
    {
        "version", "nodeid", "threads", "token", "token_coefficient", "token_retransmit",
        "token_warning", "hold", "token_retransmits_before_loss_const", "join", "send_join",
        "consensus", "merge", "downcheck", "fail_recv_const", "seqno_unchanged_const",
        "rrp_token_expired_timeout", "rrp_problem_count_timeout", "rrp_problem_count_threshold",
        "rrp_problem_count_mcast_threshold", "rrp_autorecovery_check_timeout",
        "heartbeat_failures_allowed", "max_network_delay", "window_size", "max_messages",
        "miss_count_const", "knet_pmtud_interval", "knet_mtu", "knet_compression_threshold", "netmtu",
    }
)  # fmt: skip
_INTERFACE_TYPES: dict[str, ValueType] = {
    "mcastport": ValueType.UINT16,
    "ttl": ValueType.UINT8,
    "knet_link_priority": ValueType.UINT8,
    "knet_ping_interval": ValueType.UINT32,
    "knet_ping_timeout": ValueType.UINT32,
    "knet_ping_precision": ValueType.UINT32,
    "knet_pong_count": ValueType.UINT32,
}
_QUORUM_TYPES: dict[str, ValueType] = {
    **dict.fromkeys(
        ("expected_votes", "votes", "last_man_standing_window", "leaving_timeout"), ValueType.UINT32
    ),
    **dict.fromkeys(
        ("two_node", "expected_votes_tracking", "allow_downscale", "wait_for_all", "auto_tie_breaker",
         "last_man_standing"),
        ValueType.UINT8,
    ),
}  # fmt: skip
_QDEVICE_TYPES: dict[str, ValueType] = {
    "timeout": ValueType.UINT32,
    "sync_timeout": ValueType.UINT32,
    "votes": ValueType.UINT32,
    "master_wins": ValueType.UINT8,
}

SERVICES = ((0, "cmap", "corosync_cmap"), (1, "cfg", "corosync_cfg"), (2, "cpg", "corosync_cpg"),
            (3, "quorum", "corosync_quorum"), (5, "votequorum", "corosync_votequorum"))  # fmt: skip
"""(service id, short name, engine name) of the services cmanlkd runs, in corosync's load order."""


def config_keys(config: ClusterConfig) -> dict[str, Value]:
    """Every key coroparse makes from `config.tree`, with its type (module docstring)."""
    out: dict[str, Value] = {}
    for section in config.tree.sections:
        _section(section, section.name, out)
    for uid in config.uidgid.uids:
        out[f"uidgid.config.uid.{uid}"] = u8(1)
    for gid in config.uidgid.gids:
        out[f"uidgid.config.gid.{gid}"] = u8(1)
    return out


def start_keys(config: ClusterConfig, me: NodeId) -> dict[str, Value]:
    """The keys the daemon adds at start (module docstring), besides `config_keys`."""
    out: dict[str, Value] = {}
    position = next((i for i, n in enumerate(_file_nodes(config)) if n == me), None)
    if position is not None:
        out["nodelist.local_node_pos"] = u32(position)
    node = config.node(me)
    if (
        config.transport in (TransportKind.UDPU, TransportKind.UDP)
        and node is not None
        and 0 in node.addresses
    ):
        bind = "totem.interface.0.bindnetaddr"
        if bind not in config_keys(config):
            out[bind] = Value.of(ValueType.STRING, node.addresses[0])
    out.update(runtime_config_keys(config))
    for index, (service_id, short, engine) in enumerate(SERVICES):
        out[f"internal_configuration.service.{index}.name"] = Value.of(ValueType.STRING, engine)
        out[f"internal_configuration.service.{index}.ver"] = u32(0)
        out[f"runtime.services.{short}.service_id"] = u16(service_id)
    out["runtime.votequorum.this_node_id"] = u32(me)
    return out


def runtime_config_keys(config: ClusterConfig) -> dict[str, Value]:
    """`runtime.config.totem.*`: the timers and counters in force (totemconfig's runtime copy)."""
    t = config.totem
    raw = {e.key: e.value for s in config.tree.sections if s.name == "totem" for e in s.entries}
    warning = int(raw["token_warning"]) if raw.get("token_warning", "").isdigit() else 75
    values = {
        "token": t.token_ms,
        "token_retransmit": t.token_retransmit_ms,
        "hold": t.hold_ms,
        "token_warning": warning,
        "token_retransmits_before_loss_const": t.token_retransmits_before_loss_const,
        "join": t.join_ms,
        "send_join": t.send_join_ms,
        "consensus": t.consensus_ms,
        "merge": t.merge_ms,
        "downcheck": t.downcheck_ms,
        "fail_recv_const": t.fail_recv_const,
        "seqno_unchanged_const": t.seqno_unchanged_const,
        "miss_count_const": t.miss_count_const,
        "window_size": t.window_size,
        "max_messages": t.max_messages,
        "max_network_delay": t.max_network_delay_ms,
        "block_unlisted_ips": int(config.block_unlisted_ips),
    }
    return {f"runtime.config.totem.{k}": u32(v) for k, v in values.items()}


def member_ip_text(config: ClusterConfig, nodeid: NodeId) -> str:
    """`runtime.members.N.ip` as corosync prints it (totem_ifaces_print): "r(0) ip(10.0.0.1) "."""
    node = config.node(nodeid)
    if node is None:
        return ""
    return "".join(f"r({link}) ip({address}) " for link, address in sorted(node.addresses.items()))


# --- coroparse's walk ---------------------------------------------------------------------------


def _section(section: ConfigSection, path: str, out: dict[str, Value]) -> None:
    if path == "nodelist":
        for index, node in enumerate(s for s in section.sections if s.name == "node"):
            for e in node.entries:
                kind = ValueType.UINT32 if e.key in ("nodeid", "quorum_votes") else ValueType.STRING
                out[f"nodelist.node.{index}.{e.key}"] = _typed(kind, e.value)
        for e in section.entries:
            out[f"nodelist.{e.key}"] = _typed(ValueType.STRING, e.value)
        return
    if path == "uidgid":
        return  # resolved ids come from config.uidgid (names mapped, uidgid.d merged)
    for e in section.entries:
        out[f"{path}.{e.key}"] = _typed(_entry_type(path, e.key), e.value)
    for sub in section.sections:
        if path == "totem" and sub.name == "interface":
            _interface(sub, out)
        elif path == "logging" and sub.name == "logger_subsys":
            _logger_subsys(sub, out)
        else:
            _section(sub, f"{path}.{sub.name}", out)


def _entry_type(path: str, key: str) -> ValueType:
    if path == "totem":
        if key in _TOTEM_U32:
            return ValueType.UINT32
        if key == "knet_compression_level":
            return ValueType.INT32
        if key == "config_version":
            return ValueType.UINT64
    elif path == "quorum":
        return _QUORUM_TYPES.get(key, ValueType.STRING)
    elif path == "quorum.device":
        return _QDEVICE_TYPES.get(key, ValueType.STRING)
    elif path == "resources" and key == "watchdog_timeout":
        return ValueType.UINT32
    elif path.startswith("resources.") and key == "poll_period":
        return ValueType.UINT64
    return ValueType.STRING


def _interface(section: ConfigSection, out: dict[str, Value]) -> None:
    keys = {e.key: e.value for e in section.entries}
    number = keys.get("linknumber", keys.get("ringnumber", "0"))
    link = number if number.isdigit() else "0"
    members = 0
    for e in section.entries:
        if e.key in ("linknumber", "ringnumber"):
            continue
        if e.key in ("bindnetaddr", "mcastaddr", "broadcast", "knet_transport"):
            out[f"totem.interface.{link}.{e.key}"] = _typed(ValueType.STRING, e.value)
        elif e.key in _INTERFACE_TYPES:
            out[f"totem.interface.{link}.{e.key}"] = _typed(_INTERFACE_TYPES[e.key], e.value)
        else:
            out[f"totem.interface.{e.key}"] = _typed(ValueType.STRING, e.value)  # coroparse's fall-through
    for sub in section.sections:
        if sub.name == "member":
            for e in sub.entries:
                out[f"totem.interface.{link}.member.{members}"] = _typed(ValueType.STRING, e.value)
                members += 1


def _logger_subsys(section: ConfigSection, out: dict[str, Value]) -> None:
    keys = {e.key: e.value for e in section.entries}
    subsys = keys.get("subsys")
    if not subsys:
        return
    for key, value in keys.items():
        out[f"logging.logger_subsys.{subsys}.{key}"] = _typed(ValueType.STRING, value)


def _typed(kind: ValueType, value: str) -> Value:
    """The value coroparse stores; a number that does not parse stays a string (cmanlk's own
    parser has already reported it for the keys it reads)."""
    if kind is ValueType.STRING:
        return Value.of(kind, value)
    try:
        return Value.of(kind, int(value, 10))
    except ValueError:
        return Value.of(ValueType.STRING, value)


def _file_nodes(config: ClusterConfig) -> Iterator[NodeId]:
    """Node ids in file order (nodelist.node.0, .1, …)."""
    for section in config.tree.sections:
        if section.name != "nodelist":
            continue
        for node in section.sections:
            if node.name != "node":
                continue
            nodeid = next((e.value for e in node.entries if e.key == "nodeid"), "")
            if nodeid.isdigit():
                yield NodeId(int(nodeid))


__all__ = ["SERVICES", "config_keys", "member_ip_text", "runtime_config_keys", "start_keys", "u64"]
