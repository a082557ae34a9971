"""Fence devices in corosync.conf (`cmanlk { dlm_fence_agent, fence {} }`, docs/config.md):
per-node agents and options, shared defaults, and every mistake reported with its line."""

from __future__ import annotations

import pytest

from cmanlk.config import FenceDeviceConfig, parse_config
from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.runtime.dlmd import build_dlm_daemon
from cmanlk.runtime.fence import agent_stdin
from cmanlk.types import NodeId

IPMI = "/usr/sbin/fence_ipmilan"


def conf(cmanlk: str) -> str:
    nodes = "".join(f"  node {{\n    ring0_addr: 10.0.0.{i}\n    nodeid: {i}\n    name: n{i}\n  }}\n"
                    for i in (1, 2, 3))
    return (f"totem {{\n  version: 2\n  cluster_name: c\n  transport: udpu\n}}\nnodelist {{\n{nodes}}}\n"
            f"cmanlk {{\n  dlm: yes\n{cmanlk}}}\n")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def problems(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.conf")
    return info.value.problems


def test_defaults_block_and_per_node_blocks_merge_into_one_device_per_node() -> None:
    text = conf(f"""  fence {{
    agent: {IPMI}
    username: admin
    password_script: /etc/cluster/ipmi-pass
    lanplus: 1
  }}
  fence {{
    node: 1
    ip: 10.1.0.1
  }}
  fence {{
    node: n2
    ip: 10.1.0.2
    username: root
  }}
  fence {{
    node: 3
    agent: /usr/sbin/fence_virsh
    nodename: vm-three
    plug: three
  }}
""")
    devices = parse_config(text, "c.conf").cmanlk.fence_devices
    shared = (("username", "admin"), ("password_script", "/etc/cluster/ipmi-pass"), ("lanplus", "1"))
    assert devices == (
        FenceDeviceConfig(NodeId(1), IPMI, "n1", (*shared, ("ip", "10.1.0.1")), line_of(text, "node: 1") - 1),
        FenceDeviceConfig(NodeId(2), IPMI, "n2", (("username", "root"), *shared[1:], ("ip", "10.1.0.2")),
                          line_of(text, "node: n2") - 1),
        FenceDeviceConfig(NodeId(3), "/usr/sbin/fence_virsh", "vm-three", (*shared, ("plug", "three")),
                          line_of(text, "node: 3") - 1),
    )


def test_dlm_fence_agent_alone_gives_every_node_the_agent_with_its_name() -> None:
    settings = parse_config(conf(f"  dlm_fence_agent: {IPMI}\n"), "c.conf").cmanlk
    assert [(d.nodeid, d.agent, d.nodename, d.options) for d in settings.fence_devices] == [
        (NodeId(n), IPMI, f"n{n}", ()) for n in (1, 2, 3)]
    assert settings.fence_device(NodeId(2)) is not None


def test_nodes_without_an_agent_have_no_device_and_wait_for_fence_ack() -> None:
    settings = parse_config(conf(f"  fence {{\n    node: 2\n    agent: {IPMI}\n  }}\n"), "c.conf").cmanlk
    assert [d.nodeid for d in settings.fence_devices] == [NodeId(2)]
    assert settings.fence_device(NodeId(1)) is None


def test_every_fence_mistake_is_reported_with_its_line() -> None:
    text = conf(f"""  dlm_fence_agent: {IPMI}
  fence {{
    agent: /usr/sbin/fence_virsh
  }}
  fence {{
    ip: 1.2.3.4
  }}
  fence {{
    node: 9
  }}
  fence {{
    node: 2
    action: reboot
    agent: fence_ipmilan
  }}
  fence {{
    node: n2
  }}
  fence {{
    node: 1
    nodename:
  }}
""")
    found = {(p.line, p.key, p.message.split(" ")[0]) for p in problems(text)}
    lines = text.splitlines()

    def at(needle: str, start: int = 0) -> int:
        return next(i for i in range(start, len(lines)) if needle in lines[i]) + 1

    second_defaults = at("fence {", at("agent: /usr/sbin/fence_virsh"))
    assert found == {
        (at("agent: /usr/sbin/fence_virsh"), "cmanlk.fence.agent", "dlm_fence_agent"),
        (second_defaults, "cmanlk.fence", "a"),
        (at("node: 9"), "cmanlk.fence.node", "'9'"),
        (at("action: reboot"), "cmanlk.fence.action", "set"),
        (at("agent: fence_ipmilan"), "cmanlk.fence.agent", "expected"),
        (at("node: n2"), "cmanlk.fence.node", "node"),
        (at("nodename:"), "cmanlk.fence.nodename", "empty"),
    }
    assert all(p.file == "c.conf" and p.line > 0 for p in problems(text))


def test_fence_blocks_with_fencing_off_are_a_warning() -> None:
    text = conf(f"  dlm_fencing: no\n  fence {{\n    node: 1\n    agent: {IPMI}\n  }}\n")
    config = parse_config(text, "c.conf")
    assert any(w.key == "cmanlk.fence" and "dlm_fencing is off" in w.message for w in config.warnings)


class _Node:
    me = NodeId(1)

    def add_listener(self, listener: object) -> None: ...

    def remove_listener(self, listener: object) -> None: ...

    def request(self, build: object, timeout_s: float = 5.0) -> object: ...


def test_the_daemon_runs_each_nodes_agent_with_its_options() -> None:
    text = conf(f"  fence {{\n    agent: {IPMI}\n    username: admin\n  }}\n  fence {{\n    node: 3\n"
                "    ip: 10.1.0.3\n  }\n")
    dlmd = build_dlm_daemon(_Node(), parse_config(text, "c.conf"))  # type: ignore[arg-type]
    assert dlmd is not None
    assert set(dlmd.fence.devices) == {NodeId(1), NodeId(2), NodeId(3)}
    stdin = agent_stdin(dlmd.fence.devices[NodeId(3)])
    assert stdin == b"action=off\nnodename=n3\nusername=admin\nip=10.1.0.3\n"
    assert dlmd.ctl.settings.fencing.nodes_with_agent == frozenset({NodeId(1), NodeId(2), NodeId(3)})
