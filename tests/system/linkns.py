"""Namespaces for the native-link system tests: N nodes, each with one veth per link, the other
ends on one bridge per link inside a "switch" namespace. Everything is removed by `destroy()`.

Link 0 is IPv4 (10.81.0.N/24), link 1 IPv6 (fd81:1::N/64, no DAD so it is bindable at once).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=15)


def link_address(link: int, node: int) -> tuple[str, int]:
    return (f"10.81.{link}.{node}", 24) if link % 2 == 0 else (f"fd81:{link}::{node}", 64)


@dataclass
class LinkLab:
    nodes: int
    links: int = 2
    prefix: str = field(default_factory=lambda: f"cmk{os.getpid()}x")
    created: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return self.prefix + "sw"

    def ns(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def ip(self, node: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.ns(node), *args, check=check)

    def create(self) -> None:
        for name in [self.switch] + [self.ns(n) for n in range(1, self.nodes + 1)]:
            sh("ip", "netns", "add", name)
            self.created.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        for link in range(self.links):
            sh("ip", "-n", self.switch, "link", "add", f"br{link}", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", f"br{link}", "up")
        for node in range(1, self.nodes + 1):
            for link in range(self.links):
                self.add_nic(node, link)

    def add_nic(self, node: int, link: int, name: str | None = None) -> None:
        """(Re)create node's NIC of `link` (eth<link>) with its address, plugged into br<link>."""
        name = name or f"eth{link}"
        port = f"p{node}l{link}"
        sh("ip", "-n", self.switch, "link", "del", port, check=False)
        self.ip(node, "link", "add", name, "type", "veth", "peer", "name", port, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", port, "master", f"br{link}", "up")
        addr, plen = link_address(link, node)
        extra = ["nodad"] if ":" in addr else []
        self.ip(node, "addr", "add", f"{addr}/{plen}", "dev", name, *extra)
        self.ip(node, "link", "set", name, "up")

    def destroy(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()
