"""Namespaces for the native-link system tests: tests/netlab.py's `NetLab` with N nodes, each with
one veth per link (`eth<link>`, switch port `p<node>l<link>`), one bridge per link.

Link 0 is IPv4 (10.81.0.N/24), link 1 IPv6 (fd81:1::N/64, no DAD so it is bindable at once).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.netlab import NetLab


def link_address(link: int, node: int) -> tuple[str, int]:
    return (f"10.81.{link}.{node}", 24) if link % 2 == 0 else (f"fd81:{link}::{node}", 64)


@dataclass
class LinkLab(NetLab):
    count: int = 2
    """How many nodes `create()` builds (1..count)."""
    links: int = 2
    tag: str = "x"
    nft_table: str = "cmklink"

    def port(self, node: int, link: int) -> str:
        return f"p{node}l{link}"

    def plan(self, node: int, link: int) -> list[tuple[str, int]]:
        return [link_address(link, node)]

    def create(self) -> None:
        """Build the switch, its bridges and every node (call `destroy()` afterwards)."""
        self.__enter__()
        for node in range(1, self.count + 1):
            self.add_node(node)
