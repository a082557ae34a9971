"""The system tests' private network: tests/netlab.py's `NetLab` with the test address plan.

One bridge br0; per node a namespace with `eth0` whose switch port is `p<node>`. Each node gets
IPv4 10.77.0.N/24, IPv6 ULA fd77::N/64 and the link-local fe80::N/64 (without DAD, so they are
usable at once). Extra "outsider" namespaces (an attacker, a node that is in nobody's nodelist) are
added the same way. Faults are nftables rules in table `inet cmk`. Names are `cmk<pid>d…`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.netlab import NetLab, sh

__all__ = ["Lab", "address", "ipv4", "ipv6", "link_local", "sh"]


def ipv4(node: int) -> str:
    return f"10.77.0.{node}"


def ipv6(node: int) -> str:
    return f"fd77::{node:x}"


def link_local(node: int) -> str:
    return f"fe80::{node:x}"


def address(node: int, family: str) -> str:
    """The nodelist address of `node` for family "ipv4", "ipv6" or "link-local" (with %eth0)."""
    if family == "ipv4":
        return ipv4(node)
    if family == "ipv6":
        return ipv6(node)
    return f"{link_local(node)}%eth0"


def ula1(node: int) -> str:
    """Link 1 address of `node` (IPv6 ULA on eth1), for tests that add a second link."""
    return f"fd78::{node:x}"


@dataclass
class Lab(NetLab):
    """The system-test network (see the module docstring). Use as a context manager."""

    tag: str = "d"
    nft_table: str = "cmk"

    def port(self, node: int, link: int) -> str:
        return f"p{node}" if link == 0 else f"q{node}"

    def plan(self, node: int, link: int) -> list[tuple[str, int]]:
        if link == 0:
            return [(ipv4(node), 24), (ipv6(node), 64), (link_local(node), 64)]
        return [(ula1(node), 64)]
