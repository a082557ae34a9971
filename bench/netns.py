"""The benchmarks', scale runs' and chaos soak's private network: tests/netlab.py's `NetLab` with
the bench address plan.

Link L of node N is 10.(80+L).(N // 250).(N % 250 + 1)/16, so 32 nodes and more fit; switch ports
are `l<link>n<node>`; faults live in nftables table `inet cmkbench`; names are `cmk<pid>b…`.
Signals are trapped while a lab is open (a killed runner still removes its namespaces).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.netlab import NetLab, sh

__all__ = ["Lab", "addr", "sh"]


def addr(node: int, link: int = 0) -> str:
    """The IPv4 address of `node` on `link`."""
    return f"10.{80 + link}.{node // 250}.{node % 250 + 1}"


@dataclass
class Lab(NetLab):
    """The bench network (see the module docstring). Use as a context manager."""

    tag: str = "b"
    nft_table: str = "cmkbench"
    trap_signals: bool = True

    def plan(self, node: int, link: int) -> list[tuple[str, int]]:
        return [(addr(node, link), 16)]
