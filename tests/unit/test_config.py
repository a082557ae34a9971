"""corosync.conf parsing and validation: real files parse, every problem is reported with its line."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmanlk.config import (
    DEFAULT_PORT,
    ClusterConfig,
    NodeAddresses,
    TransportKind,
    load_config,
    parse_config,
)
from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.types import NodeId

# Debian's /etc/corosync/corosync.conf as shipped by the corosync 3.1 package (comments kept).
DEBIAN_CONF = """\
# Please read the corosync.conf.5 manual page
totem {
\tversion: 2

\t# Corosync itself works without a cluster name, but DLM needs one.
\tcluster_name: debian

\t# crypto works only with knet transport
\tcrypto_cipher: none
\tcrypto_hash: none
}

logging {
\tfileline: off
\tto_stderr: yes
\tto_logfile: yes
\tlogfile: /var/log/corosync/corosync.log
\tto_syslog: yes
\tdebug: off
\t#timestamp: hires
\tlogger_subsys {
\t\tsubsys: QUORUM
\t\tdebug: off
\t}
}

quorum {
\t# Enable and configure quorum subsystem (default: off)
\tprovider: corosync_votequorum
}

nodelist {
\t# Change/uncomment/add node sections to match cluster configuration

\tnode {
\t\t# Hostname of the node
\t\tname: node1
\t\t# Cluster membership node identifier
\t\tnodeid: 1
\t\t# Address of first link
\t\tring0_addr: 127.0.0.1
\t\t#ring1_addr: 192.168.1.1
\t}
\t# ...
}
"""

# A typical three-node Pacemaker cluster (pcs-generated shape), udpu, IPv6 link-local on link 0.
THREE_NODE_UDPU = """\
totem {
    version: 2
    cluster_name: hacluster
    transport: udpu
    token: 1000
    join: 60
    interface {
        linknumber: 0
        mcastport: 5407
        name: eth1
    }
}
nodelist {
    node {
        ring0_addr: fe80::1%eth1
        name: a
        nodeid: 1
    }
    node {
        ring0_addr: fe80::2%eth1
        name: b
        nodeid: 2
    }
    node {
        ring0_addr: fe80::3%eth1
        name: c
        nodeid: 3
    }
}
quorum {
    provider: corosync_votequorum
    wait_for_all: 1
    last_man_standing: 1
    last_man_standing_window: 20000
    auto_tie_breaker: 1
    auto_tie_breaker_node: 3 1
}
logging {
    to_syslog: yes
    timestamp: hires
}
cmanlk {
    state_dir: /var/lib/cmanlk-test
    run_dir: /run/cmanlk-test
    ipc_group: haclient
}
"""


def conf(body: str) -> str:
    return textwrap.dedent(body)


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.conf")
    return info.value.problems


def nodelist(*addrs: str, transport: str = "udpu") -> str:
    nodes = "".join(
        f"  node {{\n    ring0_addr: {a}\n    nodeid: {i}\n  }}\n" for i, a in enumerate(addrs, 1)
    )
    return f"totem {{\n  version: 2\n  transport: {transport}\n}}\nnodelist {{\n{nodes}}}\n"


class FakeHost:
    """A HostLookup with a fixed name table (name → {family: address}) and interface names."""

    def __init__(
        self, names: dict[str, dict[int, str]] | None = None, interfaces: set[str] | None = None
    ) -> None:
        self.names = names or {}
        self.interfaces = interfaces or set()

    def resolve(self, name: str, families: tuple[int, ...]) -> str:
        known = self.names.get(name, {})
        for family in families:
            if family in known:
                return known[family]
        raise LookupError("Name or service not known")

    def has_interface(self, scope: str) -> bool:
        return scope in self.interfaces


def errors_of(text: str, host: FakeHost | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.conf", host)
    return [str(p) for p in info.value.problems]


def bare_nodes(*addrs: str, transport: str = "udpu", totem: str = "") -> str:
    """A nodelist without nodeid keys."""
    nodes = "".join(f"  node {{\n    ring0_addr: {a}\n  }}\n" for a in addrs)
    return f"totem {{\n  version: 2\n  transport: {transport}\n{totem}}}\nnodelist {{\n{nodes}}}\n"


# --- real files ------------------------------------------------------------------------------


def test_debian_default_config_parses_without_problems() -> None:
    config = parse_config(DEBIAN_CONF, "corosync.conf")
    assert config.cluster_name == "debian"
    assert config.transport is TransportKind.NATIVE  # corosync 3's default transport is knet
    assert [n.nodeid for n in config.nodes] == [1]
    assert config.nodes[0].name == "node1"
    assert config.nodes[0].addresses == NodeAddresses.of({0: "127.0.0.1"}, "node1")
    assert config.quorum_provider == "corosync_votequorum"
    assert config.logging.to_logfile and config.logging.logfile == "/var/log/corosync/corosync.log"
    assert config.logging.subsys_debug == (("QUORUM", "off"),)
    assert not config.is_crypto_enabled
    assert config.warnings == ()
    # corosync's default timers for a one-node list: token 3000, consensus 1.2 x token
    assert config.totem.token_ms == 3000 and config.totem.consensus_ms == 3600


def test_installed_debian_config_parses_if_present() -> None:
    path = Path("/etc/corosync/corosync.conf")
    if not path.exists():
        pytest.skip("corosync is not installed")
    config = load_config(path)
    assert config.nodes


def test_three_node_udpu_link_local_config() -> None:
    config = parse_config(THREE_NODE_UDPU, "hacluster.conf")
    assert config.transport is TransportKind.UDPU
    assert config.link(0).port == 5407 and config.link(0).interface == "eth1"
    assert config.node_addresses()[NodeId(2)][0] == "fe80::2%eth1"
    # token 1000 + (3 - 2) * 650 coefficient, then corosync's derivations
    assert config.totem.token_ms == 1650
    assert config.totem.consensus_ms == 1980
    assert config.totem.join_ms == 60
    assert config.quorum.wait_for_all is True and config.quorum.last_man_standing
    assert config.quorum.last_man_standing_window_ms == 20000
    assert config.quorum.auto_tie_breaker_node == (NodeId(3), NodeId(1))
    assert config.quorum.node_votes == ((1, 1), (2, 1), (3, 1))
    assert config.cmanlk.state_dir == "/var/lib/cmanlk-test" and config.cmanlk.ipc_group == "haclient"
    assert config.logging.timestamp == "hires" and config.logging.to_syslog


def test_defaults_when_sections_are_missing() -> None:
    config = parse_config(nodelist("10.0.0.1", "10.0.0.2"))
    assert config.link(0).port == DEFAULT_PORT
    assert config.cmanlk.state_dir == "/var/lib/cmanlk" and config.cmanlk.run_dir == "/run/cmanlk"
    assert config.logging.to_stderr and not config.logging.is_debug
    assert config.block_unlisted_ips


def test_node_addresses_is_a_read_only_mapping() -> None:
    addrs = NodeAddresses.of({1: "10.0.1.1", 0: "10.0.0.1"}, "n1")
    assert list(addrs) == [0, 1] and addrs[1] == "10.0.1.1" and len(addrs) == 2
    assert dict(addrs) == {0: "10.0.0.1", 1: "10.0.1.1"}
    with pytest.raises(KeyError):
        addrs[5]
    assert hash(addrs) == hash(NodeAddresses.of({0: "10.0.0.1", 1: "10.0.1.1"}, "n1"))


def test_ipv6_values_keep_their_colons() -> None:
    config = parse_config(nodelist("fd00::1", "fd00::2"))
    assert config.nodes[1].addresses[0] == "fd00::2"


def test_explicit_timers_win_over_derived_ones() -> None:
    text = (
        conf("""\
        totem {
          version: 2
          transport: udpu
          token: 300
          token_coefficient: 0
          consensus: 500
          hold: 40
          merge: 100
          window_size: 20
          max_messages: 10
          token_warning: 50
        }
        """)
        + nodelist("10.0.0.1", "10.0.0.2", "10.0.0.3").split("}\n", 1)[1]
    )
    config = parse_config(text)
    t = config.totem
    assert (t.token_ms, t.consensus_ms, t.hold_ms, t.merge_ms) == (300, 500, 40, 100)
    assert (t.window_size, t.max_messages, t.token_warning_ms) == (20, 10, 150)


def test_native_transport_with_two_links_and_crypto() -> None:
    text = conf("""\
        totem {
          version: 2
          cluster_name: two
          transport: knet
          crypto_cipher: aes256
          crypto_hash: sha256
          link_mode: active
          interface {
            linknumber: 0
            name: eth0
            knet_link_priority: 5
            knet_ping_interval: 200
            knet_ping_timeout: 500
          }
          interface {
            linknumber: 1
            name: eth1
          }
        }
        nodelist {
          node {
            ring0_addr: 10.0.0.1
            ring1_addr: fd00:1::1
            nodeid: 1
          }
          node {
            ring0_addr: 10.0.0.2
            ring1_addr: fd00:1::2
            nodeid: 2
          }
        }
        cmanlk {
          keyfile: /etc/cmanlk/authkey
        }
        """)
    config = parse_config(text)
    assert config.transport is TransportKind.NATIVE and config.is_crypto_enabled
    assert config.link_mode == "active"
    assert [lk.linknumber for lk in config.links] == [0, 1]
    assert config.link(0).priority == 5 and config.link(0).ping_timeout_ms == 500
    assert config.cmanlk.keyfile == "/etc/cmanlk/authkey"
    assert dict(config.nodes[0].addresses) == {0: "10.0.0.1", 1: "fd00:1::1"}


def test_system_state_dir_and_totem_keyfile_are_honoured() -> None:
    text = nodelist("10.0.0.1", transport="knet") + conf("""\
        system {
          state_dir: /var/lib/corosync
        }
        """)
    text = text.replace("  version: 2\n", "  version: 2\n  keyfile: /etc/corosync/otherkey\n")
    config = parse_config(text)
    assert config.cmanlk.state_dir == "/var/lib/corosync"
    assert config.cmanlk.keyfile == "/etc/corosync/otherkey"


def test_repeated_key_keeps_the_last_value_with_a_warning() -> None:
    text = nodelist("10.0.0.1").replace("  version: 2\n", "  version: 2\n  token: 1000\n  token: 2000\n")
    config = parse_config(text)
    assert config.totem.token_ms == 2000
    assert any(w.key == "totem.token" and w.line == 4 for w in config.warnings)


# --- warnings ------------------------------------------------------------------------------


def test_unknown_keys_and_sections_warn_with_their_line() -> None:
    text = nodelist("10.0.0.1") + "frobnicate {\n  x: 1\n}\nquorum {\n  colour: blue\n}\n"
    config = parse_config(text, "t.conf")
    found = {(w.line, w.key) for w in config.warnings}
    assert (11, "frobnicate") in found
    assert (15, "quorum.colour") in found
    assert all(w.file == "t.conf" for w in config.warnings)


def test_obsolete_and_no_effect_keys_warn() -> None:
    text = nodelist("10.0.0.1", transport="knet").replace(
        "  version: 2\n", "  version: 2\n  secauth: off\n  knet_compression_model: zlib\n"
    )
    config = parse_config(text)
    messages = {w.key: w.message for w in config.warnings}
    assert "obsolete" in messages["totem.secauth"]
    assert "no effect" in messages["totem.knet_compression_model"]


def test_qdevice_section_warns_unsupported() -> None:
    text = (
        nodelist("10.0.0.1")
        + "quorum {\n  provider: corosync_votequorum\n  device {\n    model: net\n  }\n}\n"
    )
    config = parse_config(text)
    assert any(w.key == "quorum.device" and "not supported" in w.message for w in config.warnings)


# --- errors: every problem at once, each with its line ----------------------------------------


def test_every_error_is_reported_at_once_with_file_line_and_key() -> None:
    text = conf("""\
        totem {
          version: 3
          transport: udpu
          token: fast
          crypto_cipher: aes256
          interface {
            mcastport: 70000
          }
        }
        nodelist {
          node {
            ring0_addr: 10.0.0.1
            nodeid: 1
          }
          node {
            ring0_addr: 10.0.0.2
            nodeid: 1
          }
          node {
            ring0_addr: fe80::9
            nodeid: 9
          }
        }
        quorum {
          two_node: maybe
          expected_votes: 0
        }
        """)
    found = {(p.line, p.key) for p in problems_of(text)}
    assert (2, "totem.version") in found
    assert (4, "totem.token") in found
    assert (5, "totem.crypto_cipher") in found  # crypto needs knet, as in corosync 3
    assert (7, "totem.interface.mcastport") in found
    assert (17, "nodelist.node.nodeid") in found  # duplicate id
    assert (20, "nodelist.node.ring0_addr") in found  # link-local without scope
    assert (25, "quorum.two_node") in found
    assert (26, "quorum.expected_votes") in found
    assert all(p.file == "t.conf" for p in problems_of(text))


def test_problems_are_sorted_by_line() -> None:
    lines = [p.line for p in problems_of(nodelist("10.0.0.1").replace("version: 2", "version: x") + "x {\n")]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("totem {\n  version 2\n}\n", 2, "", "expected 'key: value'"),
        ("}\n", 1, "", "without an open section"),
        ("totem {\n  version: 2\n", 1, "totem", "not closed"),
        ("token: 5\n", 1, "token", "outside of any section"),
        ("my section {\n}\n", 1, "my section", "one word"),
    ],
)
def test_syntax_errors_name_their_line(text: str, line: int, key: str, words: str) -> None:
    found = [p for p in problems_of(text + nodelist("10.0.0.1")) if p.line == line and p.key == key]
    assert found and words in found[0].message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("token", "3600001", "out of range"),
        ("token", "-5", "out of range"),
        ("window_size", "many", "integer"),
        ("transport", "tcp", "expected one of"),
        ("crypto_hash", "crc32", "expected one of"),
        ("ip_version", "ipv5", "expected one of"),
        ("cluster_name", "has space", "name of letters"),
        ("block_unlisted_ips", "perhaps", "yes/no"),
    ],
)
def test_totem_value_errors(key: str, value: str, words: str) -> None:
    text = nodelist("10.0.0.1").replace("  version: 2\n", f"  version: 2\n  {key}: {value}\n")
    found = [p for p in problems_of(text) if p.key == f"totem.{key}"]
    assert found and found[0].line == 3 and words in found[0].message


def test_consensus_below_join_is_an_error_on_the_consensus_line() -> None:
    text = nodelist("10.0.0.1").replace("  version: 2\n", "  version: 2\n  join: 500\n  consensus: 100\n")
    (problem,) = problems_of(text)
    assert problem.key == "totem.consensus" and problem.line == 4


def test_max_messages_above_window_size_is_an_error() -> None:
    text = nodelist("10.0.0.1").replace(
        "  version: 2\n", "  version: 2\n  window_size: 5\n  max_messages: 9\n"
    )
    assert [p.key for p in problems_of(text)] == ["totem.max_messages"]


def test_udpu_allows_only_link_zero() -> None:
    text = conf("""\
        totem {
          version: 2
          transport: udpu
        }
        nodelist {
          node {
            ring0_addr: 10.0.0.1
            ring1_addr: 10.0.1.1
            nodeid: 1
          }
        }
        """)
    assert any("only ring0_addr" in p.message for p in problems_of(text))


def test_udp_multicast_transport_is_accepted_with_its_group() -> None:
    text = nodelist("10.0.0.1", "10.0.0.2", transport="udp").replace(
        "transport: udp\n", "transport: udp\n  interface {\n    mcastaddr: 239.192.7.7\n    ttl: 2\n  }\n"
    )
    config = parse_config(text, "t.conf")
    assert config.transport.value == "udp"
    assert config.link(0).mcastaddr == "239.192.7.7" and config.link(0).ttl == 2


def test_duplicate_addresses_and_mixed_families_are_errors() -> None:
    dup = problems_of(nodelist("10.0.0.1", "10.0.0.1"))
    assert any("also the address of node 1" in p.message for p in dup)
    mixed = problems_of(nodelist("10.0.0.1", "fd00::2"))
    assert any("mixes IPv4 and IPv6" in p.message for p in mixed)


def test_ip_version_must_match_the_addresses() -> None:
    text = nodelist("fd00::1").replace("  version: 2\n", "  version: 2\n  ip_version: ipv4\n")
    assert [p.key for p in problems_of(text)] == ["totem.ip_version"]


def test_node_without_nodeid_or_address_is_an_error() -> None:
    text = (
        "totem {\n  version: 2\n}\nnodelist {\n  node {\n    ring0_addr: 10.0.0.1\n  }\n"
        "  node {\n    nodeid: 2\n  }\n}\n"
    )
    found = {(p.line, p.key) for p in problems_of(text)}
    assert (5, "nodelist.node.nodeid") in found
    assert (8, "nodelist.node.ring0_addr") in found


def test_empty_nodelist_is_an_error() -> None:
    assert any(p.key == "nodelist" for p in problems_of("totem {\n  version: 2\n}\n"))


def test_bad_address_and_scope_on_ipv4() -> None:
    found = [p.message for p in problems_of(nodelist("10.0.0.1%eth0", "not an address!"))]
    assert any("only valid on an IPv6" in m for m in found)
    assert any("IP address or host name" in m for m in found)


def test_host_names_are_accepted_as_addresses() -> None:
    config = parse_config(nodelist("node-a.example.com", "node-b"))
    assert config.nodes[0].addresses[0] == "node-a.example.com"


def test_logging_to_logfile_needs_logfile() -> None:
    text = nodelist("10.0.0.1") + "logging {\n  to_logfile: yes\n  debug: verbose\n}\n"
    found = {p.key for p in problems_of(text)}
    assert found == {"logging.logfile", "logging.debug"}


def test_cmanlk_paths_must_be_absolute() -> None:
    text = nodelist("10.0.0.1") + "cmanlk {\n  state_dir: var/lib\n  ipc_group: bad group\n}\n"
    found = {(p.line, p.key) for p in problems_of(text)}
    assert found == {(12, "cmanlk.state_dir"), (13, "cmanlk.ipc_group")}


def test_auto_tie_breaker_node_must_be_lowest_highest_or_ids() -> None:
    text = nodelist("10.0.0.1") + "quorum {\n  auto_tie_breaker: 1\n  auto_tie_breaker_node: middle\n}\n"
    (problem,) = problems_of(text)
    assert problem.key == "quorum.auto_tie_breaker_node" and problem.line == 13


def test_duplicate_interface_link_is_an_error() -> None:
    text = nodelist("10.0.0.1").replace(
        "  version: 2\n",
        "  version: 2\n  interface {\n    linknumber: 0\n  }\n  interface {\n    linknumber: 0\n  }\n",
    )
    (problem,) = problems_of(text)
    assert problem.key == "totem.interface.linknumber" and "twice" in problem.message


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.conf")
    assert "cannot read" in str(info.value)
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe totem {")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "corosync.conf"
    path.write_text(THREE_NODE_UDPU)
    config = load_config(path, FakeHost(interfaces={"eth1"}))
    assert isinstance(config, ClusterConfig) and config.source == str(path)


# --- cmanlkd --check-config ------------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmanlk.daemon", "--check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_exits_nonzero_and_prints_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(nodelist("10.0.0.1").replace("  version: 2\n", "  version: 2\n  token: x\n  join: -1\n"))
    result = run_check(path)
    assert result.returncode == 1
    assert f"{path}:3: totem.token" in result.stderr and f"{path}:4: totem.join" in result.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_config_accepts_a_good_file_and_prints_warnings(tmp_path: Path) -> None:
    # a file cmanlkd could start with here: one node on 127.0.0.1 (udpu may use loopback)
    path = tmp_path / "good.conf"
    port_line = f"    mcastport: {free_udp_port()}\n"
    path.write_text(
        nodelist("127.0.0.1").replace("  version: 2\n", f"  version: 2\n  interface {{\n{port_line}  }}\n")
        + "quorum {\n  colour: blue\n}\n"
        + f"cmanlk {{\n  run_dir: {tmp_path}/run\n  state_dir: {tmp_path}/state\n}}\n"
    )
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "quorum.colour" in result.stderr
    assert "note: this is node 1" in result.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()  # the check creates nothing


def test_check_config_runs_the_start_checks_of_the_host(tmp_path: Path) -> None:
    # 203.0.113.0/24 (TEST-NET-3) is no address of this host: the daemon could not start
    path = tmp_path / "elsewhere.conf"
    path.write_text(nodelist("203.0.113.1", "203.0.113.2"))
    result = run_check(path)
    assert result.returncode == 1
    expected = "no ring0_addr of the nodelist (1=203.0.113.1, 2=203.0.113.2) is an address of this host"
    assert expected in result.stderr
    assert "cmanlkd would not start" in result.stderr


def test_native_transport_encrypts_unless_the_file_turns_crypto_off() -> None:
    assert parse_config(nodelist("10.0.0.1", transport="knet"), "t.conf").is_crypto_enabled
    off = nodelist("10.0.0.1", transport="knet").replace(
        "  version: 2\n", "  version: 2\n  crypto_cipher: none\n  crypto_hash: none\n"
    )
    assert not parse_config(off, "t.conf").is_crypto_enabled
    assert not parse_config(nodelist("10.0.0.1", transport="udpu"), "t.conf").is_crypto_enabled


def test_system_sched_rr_and_priority_are_honoured_and_validated() -> None:
    default = parse_config(DEBIAN_CONF, "corosync.conf")
    assert default.cmanlk.sched_rr is True and default.cmanlk.priority == "max"
    tuned = parse_config(DEBIAN_CONF + "system {\n\tsched_rr: no\n\tpriority: -5\n}\n", "corosync.conf")
    assert tuned.cmanlk.sched_rr is False and tuned.cmanlk.priority == "-5"
    assert not [w for w in tuned.warnings if "sched_rr" in str(w) or "priority" in str(w)]
    with pytest.raises(ConfigError) as bad:
        parse_config(DEBIAN_CONF + "system {\n\tpriority: 25\n}\n", "corosync.conf")
    assert any("system.priority" in str(p) and "-20..19" in str(p) for p in bad.value.problems)


# --- what corosync accepts: zero timers, cluster_uuid, derived nodeids ------------------------


def test_zero_means_the_derived_default_as_in_corosync() -> None:
    # pcs writes `consensus: 0`; corosync reads 0 as "derive it" (1.2 x token)
    text = nodelist("10.0.0.1", "10.0.0.2").replace(
        "  version: 2\n", "  version: 2\n  token: 2000\n  consensus: 0\n  join: 0\n  token_retransmit: 0\n"
    )
    config = parse_config(text, "t.conf")
    assert config.totem.consensus_ms == 2400 and config.totem.join_ms == 50
    assert config.totem.token_retransmit_ms == int(2000 / 4.2)
    assert config.warnings == ()
    # keys where corosync keeps a 0 keep it here too
    assert parse_config(text.replace("join: 0", "send_join: 0"), "t.conf").totem.send_join_ms == 0


def test_cluster_uuid_from_pcs_is_a_known_key() -> None:
    uuid = "  cluster_uuid: e592f61f916943978bdf7c\n"
    text = nodelist("10.0.0.1").replace("  version: 2\n", "  version: 2\n" + uuid)
    config = parse_config(text, "t.conf")
    assert config.cluster_uuid == "e592f61f916943978bdf7c" and config.warnings == ()


def test_udpu_nodes_without_nodeid_get_their_ipv4_address_as_id_as_in_corosync() -> None:
    config = parse_config(bare_nodes("192.168.1.1", "192.168.1.2", "192.168.1.3"), "t.conf")
    # corosync's generate_nodeid: the address in network order read as a number
    assert [n.nodeid for n in config.nodes] == [0xC0A80101, 0xC0A80102, 0xC0A80103]
    assert config.nodes[0].nodeid_derived_from == "192.168.1.1"
    assert config.quorum.node_votes == ((0xC0A80101, 1), (0xC0A80102, 1), (0xC0A80103, 1))
    high = parse_config(bare_nodes("192.168.1.1", totem="  clear_node_high_bit: yes\n"), "t.conf")
    assert high.nodes[0].nodeid == 0x40A80101 and high.warnings == ()


def test_a_host_name_is_resolved_to_ipv4_to_derive_the_nodeid() -> None:
    host = FakeHost({"rh7-1": {socket.AF_INET: "10.1.0.1", socket.AF_INET6: "fd00::1"},
                     "rh7-2": {socket.AF_INET: "10.1.0.2", socket.AF_INET6: "fd00::2"}})
    config = parse_config(bare_nodes("rh7-1", "rh7-2", totem="  ip_version: ipv6-4\n"), "t.conf", host)
    assert [n.nodeid for n in config.nodes] == [0x0A010001, 0x0A010002]
    # the address follows ip_version (IPv6 first), the id always comes from IPv4, as in corosync
    assert config.nodes[0].addresses[0] == "fd00::1" and config.nodes[0].hostnames == ((0, "rh7-1"),)
    assert "host name" in errors_of(bare_nodes("rh7-1"))[0]  # parse_config without a host cannot


def test_a_nodelist_without_nodeid_is_refused_where_corosync_refuses_it() -> None:
    (knet,) = errors_of(bare_nodes("192.168.1.1", transport="knet"))
    assert "t.conf:6: nodelist.node.nodeid: missing: with transport knet every node needs a nodeid" in knet
    (ipv6,) = errors_of(bare_nodes("fd00::1"))
    assert "IPv6 ring0_addr (fd00::1) gives no nodeid" in ipv6
    (unknown,) = errors_of(bare_nodes("rh7-1"), FakeHost())
    assert "rh7-1 has no IPv4 address to derive it from (Name or service not known)" in unknown
    (twice,) = errors_of(bare_nodes("10.0.0.1") + "nodelist {\n  node {\n    ring0_addr: 10.0.0.2\n"
                         "    nodeid: 167772161\n  }\n}\n")
    assert "node id 167772161 already used on line 6 (there derived from ring0_addr 10.0.0.1)" in twice


def test_a_bad_value_is_reported_once_not_also_as_missing() -> None:
    # issue 14 item 5: the first line printed must be the real error, not a consequence of it
    text = nodelist("10.0.0.1", "10.0.0.2").replace("nodeid: 1", "nodeid: 0")
    assert errors_of(text) == ["t.conf:8: nodelist.node.nodeid: 0 is out of range 1..4294967295"]
    text = nodelist("10.0.0.1", "999.1.1.1")
    assert errors_of(text) == [
        "t.conf:11: nodelist.node.ring0_addr: expected an IP address or host name, got '999.1.1.1'"
    ]
    # a fence block naming that node is not reported again either
    fenced = text + "cmanlk {\n  fence {\n    node: 2\n    agent: /bin/true\n  }\n}\n"
    assert len(errors_of(fenced)) == 1
    # a node with no ring0_addr at all is still reported
    assert errors_of(nodelist("10.0.0.1").replace("ring0_addr: 10.0.0.1", "name: a")) == [
        "t.conf:6: nodelist.node.ring0_addr: node 1 has no ring0_addr"
    ]


def test_host_names_resolve_at_load_and_unresolvable_ones_are_errors() -> None:
    host = FakeHost({"pcmk-1": {socket.AF_INET: "10.2.0.1"}})
    config = parse_config(nodelist("pcmk-1"), "t.conf", host)
    assert config.nodes[0].addresses[0] == "10.2.0.1"
    assert errors_of(nodelist("pcmk-1", "pcmk-2"), host) == [
        "t.conf:10: nodelist.node.ring0_addr: node 2: host name pcmk-2 does not resolve "
        "(Name or service not known)"
    ]
    # two names for one address are one address used twice
    twice = FakeHost({"a": {socket.AF_INET: "10.2.0.1"}, "b": {socket.AF_INET: "10.2.0.1"}})
    assert "10.2.0.1 is also the address of node 1" in errors_of(nodelist("a", "b"), twice)[0]


def test_an_ipv6_scope_must_name_an_interface_of_this_host() -> None:
    # issue 14 item 5: fe80::1%nosuchif was accepted without a word
    host = FakeHost(interfaces={"eth0"})
    assert errors_of(nodelist("fe80::1%nosuchif", "fe80::2%eth0"), host) == [
        "t.conf:6: nodelist.node.ring0_addr: fe80::1%nosuchif: %nosuchif is not a network interface "
        "of this host"
    ]
    native = parse_config(nodelist("fe80::1%nosuchif", "fe80::2%eth0", transport="knet"), "t.conf", host)
    assert ["%nosuchif is not a network interface of this host; the native transport ignores the scope"
            in str(w) for w in native.warnings] == [True]
