"""corosync.conf: parse and validate into frozen dataclasses, reporting every problem at once.

The syntax is corosync's (coroparse): `name {` opens a section, `}` closes it, `key: value` sets a
key (split at the first colon, so IPv6 addresses need no quoting), `#` starts a comment line.
A key set twice keeps the last value, as corosync's cmap does (we warn).

`load_config(path)` returns a `ClusterConfig` or raises `ConfigError` whose `problems` list every
error, each with file, line and key; unknown keys and sections are warnings (kept in
`ClusterConfig.warnings`), so an existing corosync.conf works unchanged where features overlap.
Every key we read is documented in docs/config.md.

Deviations from corosync, each on purpose:
- `transport: knet` (corosync 3's default) selects our native transport (cmanlk.runtime.native),
  which is not libknet on the wire; `udpu` is wire-compatible with corosync 3.
- `nodeid`: as corosync 3 (exec/totemconfig.c, generate_nodeid): with `transport: udpu` or `udp`
  a node without one gets the IPv4 address of its ring0_addr as a 32-bit number (a host name is
  resolved to IPv4 for this; `clear_node_high_bit: yes` clears bit 31); an IPv6 ring0_addr gives
  none, and `transport: knet` needs an explicit nodeid on every node — corosync refuses those
  files too.
- Host names are resolved when the file is loaded (`load_config`, as corosync does), in the
  family order of `totem.ip_version`; a name that does not resolve is an error, as in corosync.
  The transports and the rules below (one address per node and link, one family per link) see
  the addresses, never the names. `parse_config` without a `HostLookup` leaves names as written.
- A value of 0 for a timer or count that corosync reads as "use the default" (`consensus: 0`,
  which pcs writes, `token: 0`, `join: 0`, …; `_ZERO_MEANS_DEFAULT`) means the default here too.
- Our own keys: `totem.interface.name` (bind the link to a device, SO_BINDTODEVICE) and the
  section `cmanlk { state_dir, run_dir, ipc_group, keyfile }`.

`ClusterConfig.tree` keeps the file as written (sections, keys, values, lines): the cmap service
builds corosync's key tree from it (cmanlk/services/cmap/keys.py). `uidgid {}` sections and the
files of `<directory of corosync.conf>/uidgid.d/` (read by `load_config`, as corosync's
coroparse does) name the users and groups that may use the libqb IPC besides root.

Problems that follow from another one are not reported: a node whose `nodeid` or `ring0_addr` has
a bad value is reported for that value only, not also as "missing".
"""

from __future__ import annotations

import enum
import grp
import ipaddress
import pwd
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.totem.config import SettingsConflict, TotemConfig
from cmanlk.types import NodeId

DEFAULT_CONFIG_PATH = "/etc/corosync/corosync.conf"
DEFAULT_KEY_FILE = "/etc/corosync/authkey"
"""The key file of the native transport when the file names none: corosync's (corosync-keygen,
pcs), so the one default of `cmanlk-keygen` and the daemon is the path administrators know."""
DEFAULT_PORT = 5405
"""corosync's default `mcastport`: the udpu receive port and every native link's port."""
MAX_LINKS = 8
"""ring0_addr .. ring7_addr, linknumber 0..7 (corosync/knet's limit)."""
MAX_NODES = 384
"""corosync's PROCESSOR_COUNT_MAX: the CPG downlist carries at most this many node ids."""
MAX_CONFIG_BYTES = 1 << 20
"""A corosync.conf larger than this is refused (a mistake, not a config)."""
MAX_DEPTH = 8
"""Deepest section nesting accepted (corosync's deepest real one is 3: quorum.device.net)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

ADDRESS_FAMILIES: dict[str, tuple[int, ...]] = {
    "ipv4": (socket.AF_INET,),
    "ipv6": (socket.AF_INET6,),
    "ipv4-6": (socket.AF_INET, socket.AF_INET6),
    "ipv6-4": (socket.AF_INET6, socket.AF_INET),
}
"""`totem.ip_version` → the address families a host name is looked up in, in order (corosync.conf(5))."""


class HostLookup(Protocol):
    """What loading a file needs to know about the host it is loaded on."""

    def resolve(self, name: str, families: tuple[int, ...]) -> str:
        """Return the first address of host `name` in the first of `families` that has one.

        Raises LookupError whose message is the resolver's reason.
        """
        ...

    def has_interface(self, scope: str) -> bool:
        """Is `scope` (an interface name or index) a network interface of this host?"""
        ...


class SystemHost:
    """HostLookup of the running host: getaddrinfo(3) and the kernel's interface names."""

    def resolve(self, name: str, families: tuple[int, ...]) -> str:
        """See HostLookup.resolve."""
        reason = "no address"
        for family in families:
            try:
                infos = socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
            except OSError as exc:  # socket.gaierror
                reason = exc.strerror or str(exc)
                continue
            if infos:
                return str(infos[0][4][0])
        raise LookupError(reason)

    def has_interface(self, scope: str) -> bool:
        """See HostLookup.has_interface."""
        try:
            if scope.isdigit():
                socket.if_indextoname(int(scope))
            else:
                socket.if_nametoindex(scope)
        except (OSError, OverflowError):
            return False
        return True


class TransportKind(enum.Enum):
    """`totem.transport`."""

    UDPU = "udpu"
    NATIVE = "native"  # `knet` in corosync.conf
    UDP = "udp"


MAX_UIDGID_FILES = 1024
"""Files read from uidgid.d; more is a mistake, not a configuration."""

# --- the dataclasses the runtime and the transports are built from ------------------------------


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One `key: value` line as written."""

    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class ConfigSection:
    """One section as written, with its keys and subsections in file order (the root has name "")."""

    name: str
    line: int
    entries: tuple[ConfigEntry, ...] = ()
    sections: tuple[ConfigSection, ...] = ()


@dataclass(frozen=True, slots=True)
class UidGid:
    """Users and groups allowed on the libqb IPC besides root (`uidgid {}` and uidgid.d)."""

    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()

    def merged(self, other: UidGid) -> UidGid:
        """Both sets, each id once, in first-seen order."""
        return UidGid(
            tuple(dict.fromkeys((*self.uids, *other.uids))), tuple(dict.fromkeys((*self.gids, *other.gids)))
        )


@dataclass(frozen=True, slots=True)
class NodeAddresses(Mapping[int, str]):
    """One node's addresses: link index → address text (IPv6 link-local with `%scope`).

    A read-only Mapping[int, str], so any transport taking `Mapping[NodeId, Mapping[int, str]]`
    accepts a nodelist of these. `name` is the nodelist `name` (for logs), or None.
    """

    by_link: tuple[tuple[int, str], ...]
    name: str | None = None

    @classmethod
    def of(cls, addrs: Mapping[int, str], name: str | None = None) -> NodeAddresses:
        """Return NodeAddresses for a link → address mapping."""
        return cls(tuple(sorted(addrs.items())), name)

    def __getitem__(self, link: int) -> str:
        for index, address in self.by_link:
            if index == link:
                return address
        raise KeyError(link)

    def __iter__(self) -> Iterator[int]:
        return iter(index for index, _ in self.by_link)

    def __len__(self) -> int:
        return len(self.by_link)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One local link: a `totem.interface {}` section (or the defaults of link 0).

    `interface` is our `name:` key: bind the link's sockets to this device (SO_BINDTODEVICE).
    `ping_*`/`pong_count` are knet's per-link heartbeat settings, used by the native transport;
    None means derived from the token as corosync does.
    """

    linknumber: int
    port: int = DEFAULT_PORT
    mcastaddr: str | None = None
    bindnetaddr: str | None = None
    interface: str | None = None
    priority: int = 1
    ping_interval_ms: int | None = None
    ping_timeout_ms: int | None = None
    pong_count: int | None = None
    ttl: int = 1


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One `nodelist.node {}` entry."""

    nodeid: NodeId
    addresses: NodeAddresses
    name: str | None = None
    quorum_votes: int = 1
    line: int = 0
    nodeid_derived_from: str | None = None
    """The ring0_addr the nodeid was derived from (no `nodeid` key, udpu/udp), else None."""
    hostnames: tuple[tuple[int, str], ...] = ()
    """Link → the host name written in the file, for each address that was resolved from one."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """The `logging {}` section. `debug` is off, on or trace; `timestamp` off, on or hires."""

    to_stderr: bool = True
    to_syslog: bool = False
    to_logfile: bool = False
    logfile: str | None = None
    debug: str = "off"
    timestamp: str = "off"
    fileline: bool = False
    function_name: bool = False
    syslog_facility: str = "daemon"
    syslog_priority: str = "info"
    logfile_priority: str = "info"
    subsys_debug: tuple[tuple[str, str], ...] = ()

    @property
    def is_debug(self) -> bool:
        """Is debug logging on (`debug: on` or `trace`)?"""
        return self.debug != "off"


@dataclass(frozen=True, slots=True)
class FenceDeviceConfig:
    """The fence device of one node, from `cmanlk { fence {...} }` (defaults merged; docs/config.md).

    `options` are the agent's key=value stdin lines after `action` and `nodename`, in file order
    (the defaults block's first, a node's own keys replacing them in place).
    """

    nodeid: NodeId
    agent: str
    nodename: str
    options: tuple[tuple[str, str], ...] = ()
    line: int = 0


@dataclass(frozen=True, slots=True)
class CmanlkSettings:
    """Our own section `cmanlk {}` (falls back to corosync's `system.state_dir`, `totem.keyfile`).

    `dbus`: serve org.cmanlk.Cluster on the system bus: yes, no, or auto (when a system bus exists).
    """

    state_dir: str = "/var/lib/cmanlk"
    run_dir: str = "/run/cmanlk"
    ipc_group: str | None = None
    keyfile: str = DEFAULT_KEY_FILE
    dbus: str = "auto"
    dlm: str = "no"
    """Drive the kernel DLM as dlm_controld does (cmanlk.runtime.dlmd): yes, no, or auto (when the
    dlm module or /sys/kernel/config/dlm exists). Off by default: one kernel has one DLM cluster,
    and a second daemon (dlm_controld, or another cmanlkd in a network namespace) must not share it."""
    dlm_fencing: bool = True
    """Keep a lockspace stopped after a member failure until the node is fenced or acknowledged."""
    dlm_fence_agent: str | None = None
    """Fence agent run for every failed node (stdin: action=off, nodename=<nodelist name>)."""
    sched_rr: bool = True
    """corosync's `system.sched_rr`: run with SCHED_RR at the highest priority (cmanlk.runtime.sched)."""
    priority: str = "max"
    """corosync's `system.priority` when sched_rr is off (or cannot be set): max, min or a nice value."""
    fence_devices: tuple[FenceDeviceConfig, ...] = ()
    """Every node that has a fence device (`fence {}` blocks and `dlm_fence_agent`), by node id."""

    def fence_device(self, nodeid: NodeId) -> FenceDeviceConfig | None:
        """Return the fence device of `nodeid`, or None (only `cmanlk-tool fence-ack` fences it)."""
        return next((d for d in self.fence_devices if d.nodeid == nodeid), None)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole validated corosync.conf. Build with `load_config()` or `parse_config()`."""

    source: str
    cluster_name: str
    transport: TransportKind
    totem: TotemConfig
    links: tuple[LinkConfig, ...]
    nodes: tuple[NodeConfig, ...]
    quorum: QuorumConfig
    logging: LoggingConfig
    cmanlk: CmanlkSettings
    quorum_provider: str | None = None
    crypto_cipher: str = "none"
    crypto_hash: str = "none"
    link_mode: str = "passive"
    ip_version: str = "ipv6-4"
    block_unlisted_ips: bool = True
    config_version: int | None = None
    qb_ipc_type: str = "native"
    """`system.qb_ipc_type`: native (= shm), shm or socket — the libqb channel type offered."""
    uidgid: UidGid = UidGid()
    cluster_uuid: str | None = None
    """`totem.cluster_uuid` (pcs writes one); kept as read, not used by cmanlk."""
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)
    tree: ConfigSection = field(default=ConfigSection("", 0), compare=False)
    """The file as written (cmap's key tree is built from it)."""

    def node_addresses(self) -> dict[NodeId, NodeAddresses]:
        """Return node id → addresses of every nodelist entry (what `Transport.set_nodes` takes)."""
        return {n.nodeid: n.addresses for n in self.nodes}

    def node(self, nodeid: NodeId) -> NodeConfig | None:
        """Return the nodelist entry of `nodeid`, or None."""
        return next((n for n in self.nodes if n.nodeid == nodeid), None)

    def link(self, linknumber: int) -> LinkConfig:
        """Return the settings of a link (defaults when it has no interface section)."""
        return next((lk for lk in self.links if lk.linknumber == linknumber), LinkConfig(linknumber))

    @property
    def is_crypto_enabled(self) -> bool:
        """Is frame encryption configured (`crypto_cipher` or `crypto_hash` other than none)?"""
        return self.crypto_cipher != "none" or self.crypto_hash != "none"


def load_config(path: str | Path, host: HostLookup | None = None) -> ClusterConfig:
    """Read and validate a corosync.conf file; host names are resolved on `host` (default: this
    host, `SystemHost`).

    Returns the ClusterConfig (warnings in `.warnings`). Raises ConfigError listing every error
    (an unreadable file is one problem on line 0).
    """
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, 0, "", f"cannot read: {exc.strerror or exc}")]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(name, 0, "", f"larger than {MAX_CONFIG_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(name, 0, "", f"not UTF-8 text: {exc}")]) from exc
    config = parse_config(text, name, host if host is not None else SystemHost())
    extra = read_uidgid_dir(Path(name).parent / "uidgid.d")
    return replace(config, uidgid=config.uidgid.merged(extra)) if extra.uids or extra.gids else config


def read_uidgid_dir(directory: Path) -> UidGid:
    """The `uidgid {}` sections of every regular file in `directory` (corosync's uidgid.d), by name.

    A missing directory is empty. Raises ConfigError listing every problem (a file with another
    section or key, an unknown user or group, an unreadable or oversized file).
    """
    try:
        names = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError:
        return UidGid()
    problems: list[ConfigProblem] = []
    out = UidGid()
    for path in names[:MAX_UIDGID_FILES]:
        try:
            raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(ConfigProblem(str(path), 0, "", f"cannot read: {exc}"))
            continue
        reader = _Reader(str(path))
        root = reader.parse(text)
        for sec in root.sections:
            if sec.name != "uidgid":
                reader.error(sec.line, sec.name, "uidgid.d files hold only uidgid sections")
        out = out.merged(reader.uidgid([s for s in root.sections if s.name == "uidgid"]))
        problems += reader.errors
    if problems:
        raise ConfigError(problems)
    return out


def parse_config(text: str, source: str = "<string>", host: HostLookup | None = None) -> ClusterConfig:
    """Parse and validate corosync.conf text; `source` names it in problems.

    With `host`, host names are resolved and IPv6 scopes checked on it (see the module
    docstring); without, names stay as written and a nodeid is derived from IPv4 literals only.
    Returns the ClusterConfig; raises ConfigError listing every error at once.
    """
    reader = _Reader(source, host)
    root = reader.parse(text)
    config = reader.interpret(root)
    if reader.errors or config is None:
        raise ConfigError(sorted(reader.errors, key=lambda p: p.line))
    return config


# --- syntax -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    key: str
    value: str
    line: int


@dataclass(slots=True)
class _Section:
    name: str
    line: int
    path: str
    entries: list[_Entry] = field(default_factory=list)
    sections: list[_Section] = field(default_factory=list)


class _Bad(Exception):
    """A value that does not convert; the message says what is expected."""


Conv = Callable[[str], Any]


def _int(lo: int, hi: int) -> Conv:
    def conv(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise _Bad(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise _Bad(f"{value} is out of range {lo}..{hi}")
        return value

    return conv


_TRUE = {"yes", "on", "true", "1"}
_FALSE = {"no", "off", "false", "0"}


def _bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _Bad(f"expected yes/no (or on/off, 1/0), got {text!r}")


def _choice(*choices: str) -> Conv:
    def conv(text: str) -> str:
        if text not in choices:
            raise _Bad(f"expected one of {', '.join(choices)}; got {text!r}")
        return text

    return conv


def _text(text: str) -> str:
    if not text:
        raise _Bad("empty value")
    return text


def _priority(text: str) -> str:
    """corosync's `system.priority`: max, min, or a nice value -20..19."""
    if text in ("max", "min"):
        return text
    try:
        nice = int(text)
    except ValueError:
        raise _Bad(f"expected max, min or a nice value from -20 to 19; got {text!r}") from None
    if not -20 <= nice <= 19:
        raise _Bad(f"nice value out of range -20..19: {nice}")
    return str(nice)


def _name(text: str) -> str:
    if not _NAME_RE.match(text) or len(text) > 64:
        raise _Bad(f"expected a name of letters, digits, '_', '.', '-' (≤ 64), got {text!r}")
    return text


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise _Bad(f"expected an absolute path, got {text!r}")
    return text


def _address(text: str) -> str:
    """An IP address, IPv6 optionally with %scope, or a host name (resolved at start)."""
    host, _, scope = text.partition("%")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", text) and not text.replace(".", "").isdigit():
            return text
        raise _Bad(f"expected an IP address or host name, got {text!r}") from None
    if scope and (ip.version != 6 or not scope.strip()):
        raise _Bad(f"a %scope is only valid on an IPv6 address, got {text!r}")
    if ip.version == 6 and ip.is_link_local and not scope:
        raise _Bad(f"IPv6 link-local address {text!r} needs a %scope (interface name or index)")
    return text


_MS = _int(1, 3_600_000)
_MS0 = _int(0, 3_600_000)
_COUNT0 = _int(0, 1_000_000)

_TOTEM: dict[str, Conv] = {
    "version": _int(2, 2),
    "cluster_name": _name,
    "cluster_uuid": _text,
    "transport": _choice("udpu", "knet", "udp"),
    "token": _MS0,
    "token_coefficient": _MS0,
    "token_retransmit": _MS0,
    "token_retransmits_before_loss_const": _int(0, 1000),
    "token_warning": _int(0, 100),
    "hold": _MS0,
    "join": _MS0,
    "send_join": _MS0,
    "consensus": _MS0,
    "merge": _MS0,
    "downcheck": _MS0,
    "fail_recv_const": _COUNT0,
    "seqno_unchanged_const": _COUNT0,
    "miss_count_const": _COUNT0,
    "window_size": _int(0, 10_000),
    "max_messages": _int(0, 10_000),
    "max_network_delay": _MS0,
    "netmtu": _int(576, 65_535),
    "crypto_cipher": _choice("none", "aes256", "aes192", "aes128"),
    "crypto_hash": _choice("none", "md5", "sha1", "sha256", "sha384", "sha512"),
    "crypto_model": _choice("nss", "openssl"),
    "keyfile": _path,
    "link_mode": _choice("passive", "active", "rr"),
    "ip_version": _choice("ipv4", "ipv6", "ipv4-6", "ipv6-4"),
    "block_unlisted_ips": _bool,
    "config_version": _int(0, (1 << 64) - 1),
    "cancel_token_hold_on_retransmit": _bool,
    "clear_node_high_bit": _bool,
    "heartbeat_failures_allowed": _int(0, 1000),
    "knet_pmtud_interval": _int(0, 1_000_000),
    "knet_mtu": _int(0, 65_535),
    "knet_compression_model": _text,
    "knet_compression_threshold": _int(0, 1 << 30),
    "knet_compression_level": _int(-1, 9),
}
"""Keys of `totem {}`. Keys from `_TOTEM_IGNORED` are accepted for compatibility and have no effect."""
_ZERO_MEANS_DEFAULT = frozenset({
    "token", "token_retransmits_before_loss_const", "max_network_delay", "window_size", "max_messages",
    "miss_count_const", "knet_pmtud_interval", "knet_mtu", "token_retransmit", "hold", "join",
    "consensus", "merge", "downcheck", "fail_recv_const", "seqno_unchanged_const",
})
"""Keys whose value 0 corosync replaces by the default (totem_volatile_config_set_uint32_value with
allow_zero_value 0, exec/totemconfig.c); `consensus: 0` is in files pcs writes. Here 0 is unset."""
_TOTEM_IGNORED = {
    "crypto_model",
    "cancel_token_hold_on_retransmit",
    "heartbeat_failures_allowed",
    "knet_pmtud_interval",
    "knet_mtu",
    "knet_compression_model",
    "knet_compression_threshold",
    "knet_compression_level",
}
_TOTEM_OBSOLETE = {
    "secauth": "obsolete since corosync 3; use crypto_cipher and crypto_hash",
    "rrp_mode": "obsolete since corosync 3 (redundant rings); use link_mode",
    "nodeid": "obsolete: set nodeid in the nodelist",
    "threads": "obsolete since corosync 3; ignored",
    "key": "an inline key is not supported; use keyfile",
}

_INTERFACE: dict[str, Conv] = {
    "linknumber": _int(0, MAX_LINKS - 1),
    "ringnumber": _int(0, MAX_LINKS - 1),
    "bindnetaddr": _address,
    "mcastaddr": _address,
    "mcastport": _int(1, 65_535),
    "broadcast": _bool,
    "ttl": _int(1, 255),
    "name": _text,
    "knet_link_priority": _int(0, 255),
    "knet_ping_interval": _MS,
    "knet_ping_timeout": _MS,
    "knet_ping_precision": _int(1, 100_000),
    "knet_pong_count": _int(1, 255),
    "knet_transport": _choice("udp", "sctp"),
}
_INTERFACE_IGNORED = {"broadcast", "knet_ping_precision", "knet_transport"}

_NODE: dict[str, Conv] = {
    **{f"ring{i}_addr": _address for i in range(MAX_LINKS)},
    "name": _text,
    "nodeid": _int(1, (1 << 32) - 1),
    "quorum_votes": _int(0, 1_000_000),
}

_QUORUM: dict[str, Conv] = {
    "provider": _choice("corosync_votequorum"),
    "expected_votes": _int(1, 1_000_000),
    "votes": _int(0, 1_000_000),
    "two_node": _bool,
    "wait_for_all": _bool,
    "last_man_standing": _bool,
    "last_man_standing_window": _int(1, 86_400_000),
    "auto_tie_breaker": _bool,
    "auto_tie_breaker_node": _text,
    "allow_downscale": _bool,
    "expected_votes_tracking": _bool,
}
_QUORUM_IGNORED = {"expected_votes_tracking"}

_LOGGING: dict[str, Conv] = {
    "to_stderr": _bool,
    "to_syslog": _bool,
    "to_logfile": _bool,
    "logfile": _path,
    "debug": _choice("on", "off", "trace"),
    "timestamp": _choice("on", "off", "hires"),
    "fileline": _bool,
    "function_name": _bool,
    "syslog_facility": _choice("daemon", *(f"local{i}" for i in range(8))),
    "syslog_priority": _choice("alert", "crit", "debug", "emerg", "err", "info", "notice", "warning"),
    "logfile_priority": _choice("alert", "crit", "debug", "emerg", "err", "info", "notice", "warning"),
    "tags": _text,
}
_LOGGER_SUBSYS: dict[str, Conv] = {**_LOGGING, "subsys": _text}

_CMANLK: dict[str, Conv] = {
    "state_dir": _path,
    "run_dir": _path,
    "ipc_group": _name,
    "keyfile": _path,
    "dbus": _choice("yes", "no", "auto"),
    "dlm": _choice("yes", "no", "auto"),
    "dlm_fencing": _bool,
    "dlm_fence_agent": _path,
}
_SYSTEM: dict[str, Conv] = {
    "state_dir": _path,
    "qb_ipc_type": _choice("native", "shm", "socket"),
    "sched_rr": _bool,
    "priority": _priority,
    "move_to_root_cgroup": _text,
    "allow_knet_handle_fallback": _bool,
}
_SYSTEM_IGNORED = {"move_to_root_cgroup", "allow_knet_handle_fallback"}

_KNOWN_IGNORED_SECTIONS = {"resources", "nozzle", "qb", "amf", "service", "aisexec"}


class _Reader:
    """Collects errors and warnings while turning text into a ClusterConfig."""

    def __init__(self, source: str, host: HostLookup | None = None) -> None:
        self.source = source
        self.host = host
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self.broken_nodes: set[str] = set()
        """Node ids and names of nodes left out for an error of their own: a reference to one
        (a fence block) is not reported again."""

    def error(self, line: int, key: str, message: str) -> None:
        self.errors.append(ConfigProblem(self.source, line, key, message))

    def warn(self, line: int, key: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.source, line, key, message))

    # -- syntax ---------------------------------------------------------------------------------
    def parse(self, text: str) -> _Section:
        """Return the section tree; syntax errors are recorded, parsing continues after them."""
        root = _Section("", 0, "")
        stack = [root]
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line == "}":
                if len(stack) == 1:
                    self.error(number, "", "'}' without an open section")
                else:
                    stack.pop()
                continue
            if line.endswith("{"):
                name = line[:-1].strip()
                if not _NAME_RE.match(name):
                    self.error(number, name, "a section name must be one word followed by '{'")
                if len(stack) > MAX_DEPTH:
                    self.error(number, name, f"sections nested deeper than {MAX_DEPTH}")
                parent = stack[-1]
                path = f"{parent.path}.{name}" if parent.path else name
                sec = _Section(name, number, path)
                parent.sections.append(sec)
                stack.append(sec)
                continue
            key, colon, value = line.partition(":")
            key = key.strip()
            if not colon or not _NAME_RE.match(key):
                self.error(number, "", f"expected 'key: value', 'name {{' or '}}', got {line!r}")
                continue
            if len(stack) == 1:
                self.error(number, key, "a key outside of any section")
                continue
            stack[-1].entries.append(_Entry(key, value.strip(), number))
        for sec in stack[1:]:
            self.error(sec.line, sec.path, "section is not closed with '}'")
        return root

    def values(
        self,
        sec: _Section,
        schema: Mapping[str, Conv],
        ignored: set[str] | frozenset[str] = frozenset(),
        quiet: bool = False,
    ) -> dict[str, tuple[Any, int]]:
        """Convert the keys of one section: key → (value, line); problems are recorded.

        `quiet`: a second reading of a section already checked (no problem is recorded again).
        """
        out: dict[str, tuple[Any, int]] = {}
        for entry in sec.entries:
            qualified = f"{sec.path}.{entry.key}"
            conv = schema.get(entry.key)
            if conv is None:
                if not quiet:
                    self.warn(entry.line, qualified, "unknown key, ignored")
                continue
            try:
                value = conv(entry.value)
            except _Bad as bad:
                if not quiet:
                    self.error(entry.line, qualified, str(bad))
                continue
            if quiet:
                out[entry.key] = (value, entry.line)
                continue
            if entry.key in out:
                self.warn(entry.line, qualified, f"set again (first on line {out[entry.key][1]}); last wins")
            if entry.key in ignored:
                self.warn(entry.line, qualified, "accepted for compatibility, has no effect in cmanlk")
            out[entry.key] = (value, entry.line)
        return out

    # -- semantics ------------------------------------------------------------------------------
    def interpret(self, root: _Section) -> ClusterConfig | None:
        """Return the ClusterConfig, or None when errors made one impossible."""
        top: dict[str, list[_Section]] = {}
        for sec in root.sections:
            top.setdefault(sec.name, []).append(sec)
        for name, secs in top.items():
            if name not in {"totem", "nodelist", "quorum", "logging", "cmanlk", "system", "uidgid"}:
                why = "not used by cmanlk" if name in _KNOWN_IGNORED_SECTIONS else "unknown section"
                self.warn(secs[0].line, name, f"{why}, ignored")
            elif len(secs) > 1 and name != "uidgid":
                self.warn(secs[1].line, name, f"section repeated (first on line {secs[0].line}); merged")
        totem_sec = _merged(top.get("totem"), "totem")
        totem_vals = self._totem_values(totem_sec)
        nodes = self._nodelist(_merged(top.get("nodelist"), "nodelist"), totem_vals)
        nodes = self._resolve_hosts(nodes, totem_vals)
        links = self._links(totem_sec, totem_vals)
        transport = self._transport(totem_vals, links, nodes)
        totem = self._totem(totem_vals, nodes)
        quorum, provider = self._quorum(_merged(top.get("quorum"), "quorum"), nodes)
        logging_cfg = self._logging(_merged(top.get("logging"), "logging"))
        cmanlk = self._cmanlk(
            _merged(top.get("cmanlk"), "cmanlk"), _merged(top.get("system"), "system"), totem_vals, nodes
        )
        self._check_addresses(nodes, links, transport, totem_vals)
        uidgid = self.uidgid(top.get("uidgid", []))
        system_vals = self.values(_merged(top.get("system"), "system"), _SYSTEM, _SYSTEM_IGNORED, quiet=True)
        if self.errors or totem is None:
            return None
        # The native transport encrypts unless the file says otherwise: a cluster whose file names
        # no crypto at all gets AES-256-GCM with the key file (`crypto_cipher: none` turns it off).
        explicit = "crypto_cipher" in totem_vals or "crypto_hash" in totem_vals
        default_crypto = ("none", "none")
        if transport is TransportKind.NATIVE and not explicit:
            default_crypto = ("aes256", "sha256")
        return ClusterConfig(
            source=self.source,
            cluster_name=_get(totem_vals, "cluster_name", ""),
            transport=transport,
            totem=totem,
            links=links,
            nodes=nodes,
            quorum=quorum,
            logging=logging_cfg,
            cmanlk=cmanlk,
            quorum_provider=provider,
            crypto_cipher=_get(totem_vals, "crypto_cipher", default_crypto[0]),
            crypto_hash=_get(totem_vals, "crypto_hash", default_crypto[1]),
            link_mode=_get(totem_vals, "link_mode", "passive"),
            ip_version=_get(totem_vals, "ip_version", "ipv6-4"),
            block_unlisted_ips=_get(totem_vals, "block_unlisted_ips", True),
            config_version=_get(totem_vals, "config_version", None),
            qb_ipc_type=_get(system_vals, "qb_ipc_type", "native"),
            uidgid=uidgid,
            cluster_uuid=_get(totem_vals, "cluster_uuid", None),
            warnings=tuple(self.warnings),
            tree=_freeze(root),
        )

    def uidgid(self, secs: list[_Section]) -> UidGid:
        """The `uid:` and `gid:` keys of `uidgid {}` sections (names or numbers, as coroparse)."""
        uids: list[int] = []
        gids: list[int] = []
        for sec in secs:
            for sub in sec.sections:
                self.error(sub.line, sub.path, "uidgid: can't add subsection different than uidgid")
            for e in sec.entries:
                if e.key not in ("uid", "gid"):
                    self.error(e.line, f"uidgid.{e.key}", "uidgid: only uid and gid are allowed items")
                    continue
                found = _user_or_group(e.key, e.value)
                if found is None:
                    what = "user" if e.key == "uid" else "group"
                    self.error(e.line, f"uidgid.{e.key}", f"no {what} {e.value!r} on this system")
                    continue
                (uids if e.key == "uid" else gids).append(found)
        return UidGid(tuple(dict.fromkeys(uids)), tuple(dict.fromkeys(gids)))

    def _totem_values(self, sec: _Section) -> dict[str, tuple[Any, int]]:
        for entry in sec.entries:
            if entry.key in _TOTEM_OBSOLETE:
                self.warn(entry.line, f"totem.{entry.key}", _TOTEM_OBSOLETE[entry.key])
        plain = _Section(
            sec.name, sec.line, sec.path, [e for e in sec.entries if e.key not in _TOTEM_OBSOLETE]
        )
        for sub in sec.sections:
            if sub.name != "interface":
                self.warn(sub.line, sub.path, "unknown section, ignored")
        vals = self.values(plain, _TOTEM, _TOTEM_IGNORED)
        vals = {k: v for k, v in vals.items() if not (k in _ZERO_MEANS_DEFAULT and v[0] == 0)}
        if "version" not in vals and sec.line:
            self.warn(sec.line, "totem.version", "not set; corosync requires 'version: 2'")
        return vals

    def _links(self, totem: _Section, tv: dict[str, tuple[Any, int]]) -> tuple[LinkConfig, ...]:
        links: dict[int, LinkConfig] = {}
        for sub in totem.sections:
            if sub.name != "interface":
                continue
            v = self.values(sub, _INTERFACE, _INTERFACE_IGNORED)
            if "ringnumber" in v and "linknumber" not in v:
                self.warn(v["ringnumber"][1], "totem.interface.ringnumber", "obsolete name of linknumber")
            number = _get(v, "linknumber", _get(v, "ringnumber", 0))
            if number in links:
                self.error(sub.line, "totem.interface.linknumber", f"link {number} is configured twice")
                continue
            links[number] = LinkConfig(
                linknumber=number,
                port=_get(v, "mcastport", DEFAULT_PORT),
                mcastaddr=_get(v, "mcastaddr", None),
                bindnetaddr=_get(v, "bindnetaddr", None),
                interface=_get(v, "name", None),
                priority=_get(v, "knet_link_priority", 1),
                ping_interval_ms=_get(v, "knet_ping_interval", None),
                ping_timeout_ms=_get(v, "knet_ping_timeout", None),
                pong_count=_get(v, "knet_pong_count", None),
                ttl=_get(v, "ttl", 1),
            )
            interval, timeout = links[number].ping_interval_ms, links[number].ping_timeout_ms
            if interval is not None and timeout is not None and timeout <= interval:
                self.error(
                    v["knet_ping_timeout"][1],
                    "totem.interface.knet_ping_timeout",
                    f"must exceed knet_ping_interval ({interval} ms)",
                )
        return tuple(links[k] for k in sorted(links))

    def _transport(
        self, tv: dict[str, tuple[Any, int]], links: tuple[LinkConfig, ...], nodes: tuple[NodeConfig, ...]
    ) -> TransportKind:
        name = _get(tv, "transport", "knet")
        line = tv.get("transport", (None, 0))[1]
        kind = {"udpu": TransportKind.UDPU, "udp": TransportKind.UDP}.get(name, TransportKind.NATIVE)
        crypto = _get(tv, "crypto_cipher", "none") != "none" or _get(tv, "crypto_hash", "none") != "none"
        if kind is not TransportKind.NATIVE:
            if crypto:
                where = tv.get("crypto_cipher", tv.get("crypto_hash", (None, line)))[1]
                self.error(
                    where,
                    "totem.crypto_cipher",
                    f"crypto is only available with transport knet, not {name} (as in corosync 3)",
                )
            if len(links) > 1 or any(lk.linknumber != 0 for lk in links):
                self.error(line, "totem.transport", f"transport {name} supports exactly one link (link 0)")
            for node in nodes:
                extra = [k for k in node.addresses if k != 0]
                if extra:
                    self.error(
                        node.line,
                        "nodelist.node.ring1_addr",
                        f"node {node.nodeid}: transport {name} supports only ring0_addr",
                    )
        if _get(tv, "crypto_cipher", "none") != "none" and _get(tv, "crypto_hash", "none") == "none":
            self.error(tv["crypto_cipher"][1], "totem.crypto_hash", "crypto_cipher requires crypto_hash")
        return kind

    def _totem(self, tv: dict[str, tuple[Any, int]], nodes: tuple[NodeConfig, ...]) -> TotemConfig | None:
        mapping = {
            "token": "token_ms",
            "token_coefficient": "token_coefficient_ms",
            "token_retransmit": "token_retransmit_ms",
            "hold": "hold_ms",
            "token_retransmits_before_loss_const": "token_retransmits_before_loss_const",
            "token_warning": "token_warning_percent",
            "join": "join_ms",
            "send_join": "send_join_ms",
            "consensus": "consensus_ms",
            "merge": "merge_ms",
            "downcheck": "downcheck_ms",
            "fail_recv_const": "fail_recv_const",
            "seqno_unchanged_const": "seqno_unchanged_const",
            "miss_count_const": "miss_count_const",
            "window_size": "window_size",
            "max_messages": "max_messages",
            "max_network_delay": "max_network_delay_ms",
            "netmtu": "netmtu",
        }
        kwargs: dict[str, Any] = {arg: tv[key][0] for key, arg in mapping.items() if key in tv}
        try:
            return TotemConfig.derive(
                [n.nodeid for n in nodes], cluster_name=_get(tv, "cluster_name", ""), **kwargs
            )
        except SettingsConflict as exc:
            self.error(tv.get(exc.key, (None, 0))[1], f"totem.{exc.key}", str(exc))
            return None

    def _nodelist(self, sec: _Section, tv: dict[str, tuple[Any, int]]) -> tuple[NodeConfig, ...]:
        for entry in sec.entries:
            self.warn(entry.line, f"nodelist.{entry.key}", "unknown key, ignored")
        nodes: list[NodeConfig] = []
        seen: dict[int, tuple[int, str | None]] = {}
        for sub in sec.sections:
            if sub.name != "node":
                self.warn(sub.line, sub.path, "unknown section, ignored")
                continue
            node = self._node(sub, tv)
            if node is None:
                continue
            line = next((e.line for e in sub.entries if e.key == "nodeid"), sub.line)
            if node.nodeid in seen:
                first, first_from = seen[node.nodeid]
                mine = node.nodeid_derived_from
                how = f" (derived from ring0_addr {mine})" if mine else ""
                there = f" (there derived from ring0_addr {first_from})" if first_from else ""
                why = f"node id {node.nodeid}{how} already used on line {first}{there}"
                self.error(line, "nodelist.node.nodeid", why)
                continue
            seen[node.nodeid] = (line, node.nodeid_derived_from)
            nodes.append(node)
        if len(nodes) > MAX_NODES:
            self.error(sec.line, "nodelist", f"{len(nodes)} nodes; at most {MAX_NODES}")
        if not nodes and not self.errors:
            self.error(sec.line, "nodelist", "no nodes configured (cmanlk needs a nodelist)")
        return tuple(sorted(nodes, key=lambda n: n.nodeid))

    def _node(self, sub: _Section, tv: dict[str, tuple[Any, int]]) -> NodeConfig | None:
        """One `node {}`; None when it has an error (reported once: a bad value is not also "missing")."""
        v = self.values(sub, _NODE)
        present = {e.key: e.value for e in sub.entries}
        name = _get(v, "name", None)
        addrs = {i: v[f"ring{i}_addr"][0] for i in range(MAX_LINKS) if f"ring{i}_addr" in v}
        nodeid: int | None = _get(v, "nodeid", None)
        if 0 not in addrs and "ring0_addr" not in present:
            who = f"node {nodeid}" if nodeid is not None else f"the node on line {sub.line}"
            self.error(sub.line, "nodelist.node.ring0_addr", f"{who} has no ring0_addr")
        elif 0 in addrs and nodeid is None and "nodeid" not in present:
            nodeid = self._derive_nodeid(sub, addrs[0], tv)
        if 0 not in addrs or nodeid is None:  # reported here, or as the bad value it has
            self.broken_nodes.update(present[k] for k in ("name", "nodeid") if k in present)
            return None
        derived_from = None if "nodeid" in v else addrs[0]
        votes = _get(v, "quorum_votes", 1)
        return NodeConfig(NodeId(nodeid), NodeAddresses.of(addrs, name), name, votes, sub.line, derived_from)

    def _derive_nodeid(self, sub: _Section, ring0: str, tv: dict[str, tuple[Any, int]]) -> int | None:
        """corosync's generate_nodeid: the IPv4 address of ring0_addr as a number (udpu/udp only)."""
        key = "nodelist.node.nodeid"
        transport = _get(tv, "transport", "knet")
        if transport == "knet":
            self.error(sub.line, key, "missing: with transport knet every node needs a nodeid (corosync 3 "
                       "refuses this file too); udpu and udp derive one from an IPv4 ring0_addr")
            return None
        literal = _ip_version(ring0)
        if literal == 6:
            self.error(sub.line, key, f"missing, and an IPv6 ring0_addr ({ring0}) gives no nodeid to derive "
                       "(corosync: an IPv6 network requires that a node ID be specified)")
            return None
        address = ring0
        if literal is None:
            if self.host is None:
                self.error(sub.line, key, f"missing, and ring0_addr {ring0} is a host name: only a file "
                           "loaded on a host (cmanlkd, --check-config) resolves it to derive the nodeid")
                return None
            try:
                address = self.host.resolve(ring0, (socket.AF_INET,))
            except LookupError as exc:
                self.error(sub.line, key, f"missing, and ring0_addr {ring0} has no IPv4 address to derive it "
                           f"from ({exc}); give a nodeid or make the name resolve")
                return None
        nodeid = int(ipaddress.IPv4Address(address))
        if _get(tv, "clear_node_high_bit", False):
            nodeid &= 0x7FFF_FFFF
        if nodeid == 0:
            self.error(sub.line, key, f"missing, and the id derived from ring0_addr {ring0} is 0 (reserved)")
            return None
        return nodeid

    def _resolve_hosts(
        self, nodes: tuple[NodeConfig, ...], tv: dict[str, tuple[Any, int]]
    ) -> tuple[NodeConfig, ...]:
        """Resolve host names and check IPv6 scopes on `self.host` (nothing without one)."""
        if self.host is None:
            return nodes
        families = ADDRESS_FAMILIES[_get(tv, "ip_version", "ipv6-4")]
        native = _get(tv, "transport", "knet") == "knet"
        return tuple(self._resolve_node(self.host, node, families, native) for node in nodes)

    def _resolve_node(
        self, host: HostLookup, node: NodeConfig, families: tuple[int, ...], native: bool
    ) -> NodeConfig:
        addrs: dict[int, str] = {}
        names: list[tuple[int, str]] = []
        for link, text in node.addresses.items():
            key = f"nodelist.node.ring{link}_addr"
            addrs[link] = text
            scope = text.partition("%")[2]
            if _ip_version(text) is None:
                try:
                    addrs[link] = host.resolve(text, families)
                    names.append((link, text))
                except LookupError as exc:
                    why = f"node {node.nodeid}: host name {text} does not resolve ({exc})"
                    self.error(node.line, key, why)
            elif scope and not host.has_interface(scope):
                what = f"{text}: %{scope} is not a network interface of this host"
                if native:  # NativeTransport binds the link's device and sends with its index as scope
                    self.warn(node.line, key, f"{what}; the native transport ignores the scope")
                else:
                    self.error(node.line, key, what)
        return replace(node, addresses=NodeAddresses.of(addrs, node.name), hostnames=tuple(names))

    def _check_addresses(
        self,
        nodes: tuple[NodeConfig, ...],
        links: tuple[LinkConfig, ...],
        transport: TransportKind,
        tv: dict[str, tuple[Any, int]],
    ) -> None:
        if not nodes:
            return
        link_sets = {tuple(n.addresses) for n in nodes}
        if len(link_sets) > 1:
            self.error(
                nodes[0].line,
                "nodelist.node",
                "nodes configure different sets of links (every node needs the same ringX_addr keys)",
            )
        used: dict[tuple[int, str], NodeId] = {}
        families: dict[int, set[int]] = {}
        for node in nodes:
            for link, text in node.addresses.items():
                if (link, text.lower()) in used:
                    self.error(
                        node.line,
                        f"nodelist.node.ring{link}_addr",
                        f"{text} is also the address of node {used[(link, text.lower())]}",
                    )
                used[(link, text.lower())] = node.nodeid
                version = _ip_version(text)
                if version:
                    families.setdefault(link, set()).add(version)
        for link, versions in families.items():
            if len(versions) > 1:
                self.error(
                    nodes[0].line,
                    f"nodelist.node.ring{link}_addr",
                    f"link {link} mixes IPv4 and IPv6 addresses",
                )
        wanted = _get(tv, "ip_version", None)
        if wanted in ("ipv4", "ipv6"):
            need = 4 if wanted == "ipv4" else 6
            for link, versions in families.items():
                if versions and need not in versions:
                    self.error(
                        tv["ip_version"][1],
                        "totem.ip_version",
                        f"ip_version {wanted} but link {link} uses IPv{versions.pop()} addresses",
                    )
        configured = {n for n in next(iter(link_sets), ())}
        for lk in links:
            if lk.linknumber not in configured and transport is TransportKind.NATIVE:
                self.warn(
                    0,
                    "totem.interface.linknumber",
                    f"interface for link {lk.linknumber} but no node has ring{lk.linknumber}_addr",
                )

    def _quorum(self, sec: _Section, nodes: tuple[NodeConfig, ...]) -> tuple[QuorumConfig, str | None]:
        for sub in sec.sections:
            why = "quorum devices (qdevice) are not supported" if sub.name == "device" else "unknown section"
            self.warn(sub.line, sub.path, f"{why}, ignored")
        v = self.values(sec, _QUORUM, _QUORUM_IGNORED)
        provider = _get(v, "provider", None)
        if provider is None and sec.line and len(v) > 0:
            self.warn(sec.line, "quorum.provider", "not set: quorum is not enforced (as in corosync)")
        atb_text = _get(v, "auto_tie_breaker_node", "lowest")
        atb: str | tuple[NodeId, ...] = atb_text
        if atb_text not in ("lowest", "highest"):
            try:
                atb = tuple(NodeId(int(x)) for x in atb_text.split())
            except ValueError:
                self.error(
                    v["auto_tie_breaker_node"][1],
                    "quorum.auto_tie_breaker_node",
                    f"expected lowest, highest or node ids, got {atb_text!r}",
                )
                atb = "lowest"
        two_node = _get(v, "two_node", False)
        if two_node and len(nodes) != 2 and "expected_votes" not in v:
            self.warn(v["two_node"][1], "quorum.two_node", f"set but the nodelist has {len(nodes)} nodes")
        return (
            QuorumConfig(
                node_votes=tuple((n.nodeid, n.quorum_votes) for n in nodes),
                expected_votes=_get(v, "expected_votes", 0),
                votes=_get(v, "votes", 1),
                two_node=two_node,
                wait_for_all=_get(v, "wait_for_all", None),
                last_man_standing=_get(v, "last_man_standing", False),
                last_man_standing_window_ms=_get(v, "last_man_standing_window", 10_000),
                auto_tie_breaker=_get(v, "auto_tie_breaker", False),
                auto_tie_breaker_node=atb,
                allow_downscale=_get(v, "allow_downscale", False),
            ),
            provider,
        )

    def _logging(self, sec: _Section) -> LoggingConfig:
        subsys: list[tuple[str, str]] = []
        for sub in sec.sections:
            if sub.name != "logger_subsys":
                self.warn(sub.line, sub.path, "unknown section, ignored")
                continue
            sv = self.values(sub, _LOGGER_SUBSYS)
            if "subsys" not in sv:
                self.error(sub.line, "logging.logger_subsys.subsys", "missing")
            elif "debug" in sv:
                subsys.append((sv["subsys"][0], sv["debug"][0]))
        v = self.values(sec, _LOGGING, frozenset({"tags"}))
        to_logfile = _get(v, "to_logfile", False)
        if to_logfile and "logfile" not in v:
            self.error(v["to_logfile"][1], "logging.logfile", "to_logfile is set but logfile is not")
        return LoggingConfig(
            to_stderr=_get(v, "to_stderr", True),
            to_syslog=_get(v, "to_syslog", False),
            to_logfile=to_logfile,
            logfile=_get(v, "logfile", None),
            debug=_get(v, "debug", "off"),
            timestamp=_get(v, "timestamp", "off"),
            fileline=_get(v, "fileline", False),
            function_name=_get(v, "function_name", False),
            syslog_facility=_get(v, "syslog_facility", "daemon"),
            syslog_priority=_get(v, "syslog_priority", "info"),
            logfile_priority=_get(v, "logfile_priority", "info"),
            subsys_debug=tuple(subsys),
        )

    def _cmanlk(
        self, sec: _Section, system: _Section, tv: dict[str, tuple[Any, int]], nodes: tuple[NodeConfig, ...]
    ) -> CmanlkSettings:
        for sub in [*(s for s in sec.sections if s.name != "fence"), *system.sections]:
            self.warn(sub.line, sub.path, "unknown section, ignored")
        v = self.values(sec, _CMANLK)
        sv = self.values(system, _SYSTEM, _SYSTEM_IGNORED)
        defaults = CmanlkSettings()
        return CmanlkSettings(
            state_dir=_get(v, "state_dir", _get(sv, "state_dir", defaults.state_dir)),
            run_dir=_get(v, "run_dir", defaults.run_dir),
            ipc_group=_get(v, "ipc_group", None),
            keyfile=_get(v, "keyfile", _get(tv, "keyfile", defaults.keyfile)),
            dbus=_get(v, "dbus", defaults.dbus),
            dlm=_get(v, "dlm", defaults.dlm),
            dlm_fencing=_get(v, "dlm_fencing", defaults.dlm_fencing),
            dlm_fence_agent=_get(v, "dlm_fence_agent", None),
            sched_rr=_get(sv, "sched_rr", defaults.sched_rr),
            priority=_get(sv, "priority", defaults.priority),
            fence_devices=self._fence_devices([s for s in sec.sections if s.name == "fence"], nodes, v),
        )

    # -- fencing (cmanlk { dlm_fence_agent, fence {} }) ----------------------------------------
    def _fence_devices(
        self, secs: list[_Section], nodes: tuple[NodeConfig, ...], cv: dict[str, tuple[Any, int]]
    ) -> tuple[FenceDeviceConfig, ...]:
        """Resolve the `fence {}` blocks: one without `node` holds defaults, one per node overrides.

        Every node gets a device when an agent is known for it (its block, the defaults block or
        `dlm_fence_agent`); the others can only be fenced by `cmanlk-tool fence-ack`.
        """
        blocks = [self._fence_block(sec) for sec in secs]
        defaults = [b for b in blocks if b.node is None]
        for extra in defaults[1:]:
            first = defaults[0].line
            self.error(extra.line, "cmanlk.fence", f"a second block without node: (first on line {first})")
        base = defaults[0] if defaults else _FenceBlock(None, 0)
        if "dlm_fence_agent" in cv and base.agent is not None:
            self.error(base.agent[1], "cmanlk.fence.agent", "dlm_fence_agent is set too; keep one of them")
        default_agent = base.agent[0] if base.agent else _get(cv, "dlm_fence_agent", None)
        by_node: dict[NodeId, _FenceBlock] = {}
        for b in blocks:
            if b.node is None:
                continue
            nodeid = self._fence_node(b, nodes)
            if nodeid is None:
                continue
            if nodeid in by_node:
                first = by_node[nodeid].line
                self.error(b.node[1], "cmanlk.fence.node", f"node {nodeid} has a fence block on line {first}")
                continue
            by_node[nodeid] = b
        if blocks and "dlm_fencing" in cv and not cv["dlm_fencing"][0]:
            self.warn(blocks[0].line, "cmanlk.fence", "dlm_fencing is off: fence devices are not used")
        out: list[FenceDeviceConfig] = []
        for node in nodes:
            own = by_node.get(node.nodeid, _FenceBlock(None, 0))
            agent = own.agent[0] if own.agent else default_agent
            if agent is None:
                if own.line:
                    self.error(own.line, "cmanlk.fence.agent",
                               f"node {node.nodeid}: no agent (here, in a defaults block or dlm_fence_agent)")
                continue
            options = dict(base.options)
            options.update(own.options)
            nodename = own.nodename or base.nodename or node.name or str(node.nodeid)
            line = own.line or base.line
            out.append(FenceDeviceConfig(node.nodeid, agent, nodename, tuple(options.items()), line))
        return tuple(out)

    def _fence_block(self, sec: _Section) -> _FenceBlock:
        for sub in sec.sections:
            self.warn(sub.line, sub.path, "unknown section, ignored")
        block = _FenceBlock(None, sec.line)
        seen: dict[str, int] = {}
        for e in sec.entries:
            key = f"cmanlk.fence.{e.key}"
            if e.key in seen:
                self.warn(e.line, key, f"set again (first on line {seen[e.key]}); last wins")
            seen[e.key] = e.line
            if e.key == "action":
                self.error(e.line, key, "set by cmanlk (always off), not configurable")
            elif "\0" in e.value:
                self.error(e.line, key, "a NUL byte cannot be passed to a fence agent")
            elif e.key == "node":
                block.node = (e.value, e.line)
            elif e.key == "agent":
                try:
                    block.agent = (_path(e.value), e.line)
                except _Bad as bad:
                    self.error(e.line, key, str(bad))
            elif e.key == "nodename":
                block.nodename = e.value or None
                if not e.value:
                    self.error(e.line, key, "empty value")
            else:
                block.options[e.key] = e.value
        return block

    def _fence_node(self, b: _FenceBlock, nodes: tuple[NodeConfig, ...]) -> NodeId | None:
        assert b.node is not None
        text, line = b.node
        found = next((n for n in nodes if str(n.nodeid) == text or n.name == text), None)
        if found is None:
            if text not in self.broken_nodes:
                why = "is no nodelist node (give its nodeid or name)"
                self.error(line, "cmanlk.fence.node", f"{text!r} {why}")
            return None
        return found.nodeid


@dataclass
class _FenceBlock:
    """One `fence {}` block while it is read: `node`, `agent` with their lines; agent options."""

    node: tuple[str, int] | None
    line: int
    agent: tuple[str, int] | None = None
    nodename: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _user_or_group(kind: str, text: str) -> int | None:
    """A uid (kind "uid") or gid from a number or a name (coroparse's uid_determine/gid_determine)."""
    if text.isdigit():
        value = int(text)
        return value if value < 1 << 32 else None
    try:
        return pwd.getpwnam(text).pw_uid if kind == "uid" else grp.getgrnam(text).gr_gid
    except KeyError:
        return None


def _freeze(sec: _Section) -> ConfigSection:
    return ConfigSection(
        sec.name,
        sec.line,
        tuple(ConfigEntry(e.key, e.value, e.line) for e in sec.entries),
        tuple(_freeze(s) for s in sec.sections),
    )


def _merged(secs: list[_Section] | None, name: str) -> _Section:
    """One section from its repetitions (corosync merges repeated top-level sections into cmap)."""
    if not secs:
        return _Section(name, 0, name)
    out = _Section(name, secs[0].line, name)
    for sec in secs:
        out.entries += sec.entries
        out.sections += sec.sections
    return out


def _get(values: Mapping[str, tuple[Any, int]], key: str, default: Any) -> Any:
    found = values.get(key)
    return default if found is None else found[0]


def _ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text.partition("%")[0]).version
    except ValueError:
        return None
