"""The stack mode of the scenario files (cmanlk/sim/scenario.py's `stack` command and the rest).

The Runner builds a StackCluster with `make_stack_cluster` and looks the stack commands up here
(`cmd_<name>(runner, args)`); `describe_for_scenario` turns the stack records into the lines a
command's output shows. See scenario.py's module docstring for the commands.
"""

from __future__ import annotations

from typing import Any

from cmanlk.dlm.fencing import FencingPolicy
from cmanlk.services.cpg.service import CpgService
from cmanlk.services.votequorum.policy import QuorumConfig
from cmanlk.sim.history import Record
from cmanlk.sim.stackhost import SIM_FENCING, StackCluster, StackHost, StackWorld
from cmanlk.sim.stackrecords import (
    CpgMsg,
    CpgView,
    FenceExit,
    FenceRun,
    KernelControl,
    LockspaceOp,
    QuorumSeen,
)
from cmanlk.totem.config import TotemConfig
from cmanlk.types import NodeId

SKIPPED_GROUPS = (b"dlm:", b"cmanlk:")  # the DLM companion's own groups: shown as lockspace lines


class StackScenarioError(ValueError):
    """A stack command that cannot be carried out (the Runner reports it with its line)."""


def make_stack_cluster(
    config: TotemConfig, seed: int, options: dict[str, str]
) -> tuple[StackCluster, StackWorld]:
    """Build the cluster and world of a `stack key=value ...` scenario."""
    ids = config.nodes
    votes = {n: 1 for n in ids}
    for item in filter(None, options.get("votes", "").split(",")):
        n, _, v = item.partition(":")
        votes[NodeId(int(n))] = int(v)
    atb = options.get("atb")
    atb_node: str | tuple[NodeId, ...] = "lowest"
    if atb and atb not in ("lowest", "highest"):
        atb_node = tuple(NodeId(int(x)) for x in atb.split(","))
    elif atb:
        atb_node = atb
    wfa = options.get("wfa")
    quorum = QuorumConfig(
        node_votes=tuple(votes.items()),
        two_node=options.get("two_node") == "1",
        wait_for_all=None if wfa is None else wfa == "1",
        last_man_standing="lms" in options,
        last_man_standing_window_ms=int(options.get("lms", "10000")),
        auto_tie_breaker=atb is not None,
        auto_tie_breaker_node=atb_node,
        allow_downscale=options.get("downscale") == "1",
    )
    agents = frozenset(NodeId(int(x)) for x in options["agents"].split(",") if x) if "agents" in options \
        else frozenset(ids)
    fencing = FencingPolicy(nodes_with_agent=agents, retry_initial=SIM_FENCING.retry_initial,
                            retry_max=SIM_FENCING.retry_max)
    world = StackWorld(seed, quorum, fencing)
    return StackCluster(config, seed=seed, world=world), world


def describe_for_scenario(node: NodeId, rec: Record, quorate: dict[NodeId, bool]) -> str | None:
    """The scenario line of a stack record, None for those not shown."""
    match rec:
        case QuorumSeen():
            if quorate.get(node) == rec.quorate:
                return None
            quorate[node] = rec.quorate
            return "quorate" if rec.quorate else "inquorate"
        case CpgView() if not rec.group.startswith(SKIPPED_GROUPS) and rec.handles:
            members = ",".join(f"{n}/{p}" for n, p in rec.members)
            return f"{rec.group.decode(errors='replace')} view {{{members}}}"
        case KernelControl(value=1):
            return f"{rec.lockspace} start ({','.join(map(str, rec.nodes))})"
        case KernelControl():
            return f"{rec.lockspace} stop"
        case FenceRun():
            return f"fence agent against {rec.victim}"
        case FenceExit():
            return f"fence {rec.victim} exit {rec.code}"
        case LockspaceOp(op="joined" | "refused" | "left"):
            return f"{rec.name} {rec.op}"
    return None


def client_delivery(rec: Record) -> str | None:
    """The group of a message delivered to a client (for the per-node counts), else None."""
    if isinstance(rec, CpgMsg) and not rec.group.startswith(SKIPPED_GROUPS):
        return rec.group.decode(errors="replace")
    return None


# --- commands -------------------------------------------------------------------------------------


def _cluster(runner: Any) -> StackCluster:
    cluster = runner._need_cluster()
    if not isinstance(cluster, StackCluster):
        raise StackScenarioError("a stack command needs `stack` before the first start")
    return cluster


def _on(runner: Any, node: str, fn: Any) -> list[str]:
    _cluster(runner).drive(NodeId(int(node)), fn)
    return ["ok"]


def cmd_cpg(runner: Any, args: list[str]) -> list[str]:
    what, node = args[0], args[1]
    if what == "join":
        group = args[2].encode()
        return _on(runner, node, lambda h: h.cpg_join(group))
    if what == "leave":
        group = args[2].encode()
        return _on(runner, node, lambda h: _leave(h, group))
    if what == "send":
        group, count = args[2].encode(), int(args[3])
        return _on(runner, node, lambda h: _send(h, group, count))
    if what == "gone":
        return _on(runner, node, lambda h: h.cpg_gone(0))
    raise StackScenarioError(f"cpg {what}?")


def _leave(h: StackHost, group: bytes) -> None:
    for c in h.clients:
        if group in c.groups:
            h._client_leave(c, group)
            return


def _send(h: StackHost, group: bytes, count: int) -> None:
    joined = [(c, g) for c in h.clients for g in sorted(c.groups) if g not in c.pending]
    for k, (_c, g) in enumerate(joined):
        if g == group:
            h.cpg_send(k, count)
            return


def cmd_lockspace(runner: Any, args: list[str]) -> list[str]:
    what, node, name = args
    if what == "join":
        return _on(runner, node, lambda h: h.ls_join(name))
    return _on(runner, node, lambda h: h.ls_leave(name))


def cmd_agent(runner: Any, args: list[str]) -> list[str]:
    _cluster(runner).world.agent_mode[NodeId(int(args[0]))] = args[1]
    return ["ok"]


def cmd_fence_ack(runner: Any, args: list[str]) -> list[str]:
    cluster = _cluster(runner)
    node, victim = NodeId(int(args[0])), NodeId(int(args[1]))
    cluster.world.power_off(victim, "ack")
    cluster.drive(node, lambda h: h.fence_ack(victim))
    return ["ok"]


def cmd_votes(runner: Any, args: list[str]) -> list[str]:
    node, target, votes = args
    return _on(runner, node, lambda h: h.set_votes(NodeId(int(target)), int(votes)))


def cmd_expected(runner: Any, args: list[str]) -> list[str]:
    return _on(runner, args[0], lambda h: h.set_expected(int(args[1])))


def cmd_cancel_wfa(runner: Any, args: list[str]) -> list[str]:
    return _on(runner, args[0], lambda h: h.cancel_wfa())


def cmd_check_seed(runner: Any, args: list[str]) -> list[str]:
    from cmanlk.sim.schedule import parse_range
    from cmanlk.sim.stackschedule import run_stack_schedule

    res = run_stack_schedule(int(args[0]), parse_range(args[1]) if len(args) > 1 else (2, 7))
    if res.ok:
        return [f"seed {res.seed}: ok ({res.nodes} nodes)"]
    return [f"seed {res.seed}: VIOLATION " + str(v).split("\n")[0] for v in res.violations] + \
        [f"seed {res.seed}: core error" for _ in res.errors]


def show(runner: Any, args: list[str]) -> list[str] | None:
    """`show quorum|cpg G|dlm` in the stack mode; None for the Totem `show members`."""
    if not args or args[0] not in ("quorum", "cpg", "dlm"):
        return None
    cluster = _cluster(runner)
    per: dict[NodeId, str] = {}
    for n, node in cluster.nodes.items():
        h = node.core
        if not isinstance(h, StackHost):
            per[n] = "down"
            continue
        if args[0] == "quorum":
            q = h.stack.quorum
            assert q is not None
            per[n] = (f"{'quorate' if q.quorate else 'inquorate'} quorum={q.quorum} votes={q.total_votes} "
                      f"expected={q.expected_votes} members=({','.join(map(str, q.members))})")
        elif args[0] == "cpg":
            group = args[1].encode()
            cpg = h.stack.services[2]
            members = cpg.members_of(group) if isinstance(cpg, CpgService) else ()
            per[n] = "{" + ",".join(f"{m}/{p}" for m, p in members) + "}"
        else:
            ctl = h.companion.ctl
            parts = []
            for name, k in sorted(h.kernel.items()):
                waiting = ctl.waiting_for(name)
                nodes = ",".join(map(str, sorted(k.nodes)))
                parts.append(f"{name} {k.state} control={k.control} nodes=({nodes})"
                             + (f" waiting for {'; '.join(waiting)}" if waiting else ""))
            victims = ctl.fencing.unfenced()
            if victims:
                parts.append(f"victims ({','.join(map(str, victims))})")
            per[n] = " · ".join(parts) or "-"
    from cmanlk.sim.scenario import _grouped

    return _grouped(per)
