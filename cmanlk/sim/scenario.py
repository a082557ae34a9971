"""Data-driven protocol scenarios (tests/scenarios/*.txt, format in STYLE.md "Tests").

A file is a list of blocks. A block is one or more command lines, a line
`----`, and the exact expected output up to a blank line. Lines starting with
`#` are comments, kept in place when the expectations are rewritten. The
output of a command is what happened while it ran:

    1 2: transitional members=(1,2) · regular ring=1.8 members=(1,2)
    1 2: delivered m1.1 m1.2
    3: crashed

(nodes with identical lines are merged), then the command's own result. After
every command the EVS checker runs over the whole history so far; new
violations are printed as `VIOLATION ...` lines, so an expectation file can
never silently bless a broken run.

Commands (durations take ms or s suffixes; node lists are ids separated by spaces):

    seed N                      network/core randomness (before the first start; default 1)
    nodes 1-5 | nodes 1 2 3     the configured nodelist (default: the nodes of the first start)
    config key=value ...        TotemConfig.derive overrides, e.g. token_ms=300 (before the first start)
    start N...                  boot the nodes, then wait until stable (at most 60 s)
    boot N... | restart N...    boot without waiting
    crash N... | leave N...     stop abruptly / cleanly
    partition (1,2) (3)         only nodes in the same group talk; `heal` rejoins everything
    loss P | dup P | reorder P  datagram loss / duplication / reordering probability
    delay D                     maximum datagram delay (e.g. 5ms)
    send N COUNT [safe] [size=B]   a client on node N sends COUNT messages
    traffic RATE                each up node's client sends RATE messages/s (0 stops)
    run D                       let D of virtual time pass
    run-until N STATE [D]       run until node N enters STATE (OPERATIONAL, GATHER, COMMIT, RECOVERY)
    wait-stable [D]             run until every up node is OPERATIONAL in the ring of its group
                                (stack mode: and has completed that ring's sync)
    show members                each node's state, ring and members
    expect members [N...] (a,b)  nodes N (default: all up nodes) have exactly these members
    verbose on|off              also print state changes (with reasons)
    check [settled]             run the checker now; `settled` adds end-of-run properties

The stack mode (`stack [key=value ...]` before the first start) runs the whole node on each
simulated machine (cmanlk/sim/stackhost.py) and adds the service checker to every check. Its
options: votes=N:V,... two_node=1 wfa=0|1 lms=WINDOW_MS atb=lowest|highest|N,N,... downscale=1
agents=N,N,... (nodes with a fence device; default all). Its commands:

    cpg join N G | cpg leave N G | cpg send N G COUNT | cpg gone N    a client on node N
    lockspace join N NAME | lockspace leave N NAME                   the kernel's uevents on N
    agent N ok|fail|hang          how the fence agent against node N behaves from now on
    fence-ack N VICTIM            an administrator switches VICTIM off and acknowledges it on N
    votes N NODE V | expected N E | cancel-wfa N                     corosync-quorumtool on N
    show quorum | show cpg G | show dlm                              each node's view
    check-seed S [LO-HI]          run the random stack schedule of seed S, nodes 2-7 or LO-HI (a replay)

In the stack mode a command's output shows, per node, the ring changes, quorum gained or lost,
the clients' group views, how many group messages they were delivered, lockspace starts and
stops, and fence agent runs (the Stack's own Totem messages are not listed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmanlk.sim.cluster import Cluster, CoreFactory, Traffic, sim_config, totem_factory
from cmanlk.sim.history import Booted, Crashed, Delivered, Installed, Left, Record, StateEntered, label
from cmanlk.sim.invariants import Violation, check
from cmanlk.totem.actions import ConfigKind, MembState
from cmanlk.totem.events import Guarantee
from cmanlk.types import Duration, Instant, NodeId, ms

SEPARATOR = "----"
START_LIMIT = ms(60_000)
DEFAULT_WAIT_LIMIT = ms(60_000)
MAX_LABELS = 12  # delivered messages listed per line before "(+N more)"
FOREVER = Instant(1 << 62)


class ScenarioError(Exception):
    """A scenario line could not be parsed or carried out (file, line and reason)."""


@dataclass(slots=True)
class Block:
    comments: list[str]
    commands: list[str]
    expected: list[str]
    line: int
    actual: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ScenarioResult:
    blocks: list[Block]
    trailer: list[str]
    violations: list[Violation]
    errors: list[str]

    @property
    def matches(self) -> bool:
        return all(b.actual == b.expected for b in self.blocks)

    def render(self, *, actual: bool = True) -> str:
        """Return the file text with actual (or expected) outputs."""
        out: list[str] = []
        for b in self.blocks:
            out += b.comments + b.commands + [SEPARATOR] + (b.actual if actual else b.expected) + [""]
        out += self.trailer
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out) + "\n"

    def diff(self) -> str:
        lines = []
        for b in self.blocks:
            if b.actual != b.expected:
                lines.append(f"line {b.line}: {' / '.join(b.commands)}")
                lines += ["  - " + x for x in b.expected if x not in b.actual]
                lines += ["  + " + x for x in b.actual if x not in b.expected]
        return "\n".join(lines)


def parse(text: str) -> tuple[list[Block], list[str]]:
    """Split a scenario file into blocks; return them and any trailing comment lines."""
    blocks: list[Block] = []
    comments: list[str] = []
    commands: list[str] = []
    lines = text.splitlines()
    i = 0
    start = 0
    while i < len(lines):
        raw = lines[i].rstrip()
        i += 1
        if raw == SEPARATOR:
            if not commands:
                raise ScenarioError(f"line {i}: '----' without a command before it")
            expected = []
            while i < len(lines) and lines[i].strip() != "":
                expected.append(lines[i].rstrip())
                i += 1
            blocks.append(Block(comments, commands, expected, start))
            comments, commands = [], []
        elif raw.startswith("#") or (raw == "" and not commands):
            if raw or comments:
                comments.append(raw)
        elif raw == "":
            continue
        else:
            if not commands:
                start = i
            commands.append(raw)
    if commands:
        raise ScenarioError(f"line {start}: commands without '----' and expected output")
    while comments and comments[-1] == "":
        comments.pop()
    return blocks, comments


class Runner:
    """Carries out scenario commands on a simulated cluster and collects their output."""

    def __init__(self, factory: CoreFactory = totem_factory) -> None:
        self.factory = factory
        self.seed = 1
        self.nodelist: tuple[NodeId, ...] | None = None
        self.overrides: dict[str, int] = {}
        self.cluster: Cluster | None = None
        self.verbose = False
        self.traffic: Traffic | None = None
        self.seen: list[tuple[NodeId, Record]] = []
        self.reported: set[str] = set()
        self.violations: list[Violation] = []
        self._stop_on: tuple[NodeId, str] | None = None
        self._stopped = False
        self.stack_options: dict[str, str] | None = None
        self.world: Any = None
        self._quorate: dict[NodeId, bool] = {}

    # --- driving -------------------------------------------------------------------------------------

    def execute_block(self, commands: list[str]) -> list[str]:
        """Carry out a block's commands; return what changed while they ran, their results, new violations."""
        self.seen = []
        results: list[str] = []
        checked = False
        for command in commands:
            words = command.split()
            name, args = words[0], words[1:]
            handler: Callable[[list[str]], list[str]] | None
            handler = getattr(self, "_cmd_" + name.replace("-", "_"), None)
            if handler is None:
                raise ScenarioError(f"unknown command {name!r}")
            results += handler(args)
            checked = checked or name == "check"
        out = self._changes() + [r for r in results if r != "ok"]
        if self.cluster is not None and not checked:
            out += self._new_violations(settled=False)
        return out or ["ok"]

    def _need_cluster(self) -> Cluster:
        if self.cluster is None:
            raise ScenarioError("no cluster yet: 'start' or 'boot' first")
        return self.cluster

    def _ensure_cluster(self, nodes: list[NodeId]) -> Cluster:
        if self.cluster is None:
            nodelist = self.nodelist or tuple(sorted(nodes))
            config = sim_config(nodelist, **self.overrides)
            if self.stack_options is not None:
                from cmanlk.sim.stackscenario import make_stack_cluster

                self.cluster, self.world = make_stack_cluster(config, self.seed, self.stack_options)
            else:
                self.cluster = Cluster(config, seed=self.seed, factory=self.factory)
            self.cluster.listeners.append(self._listen)
        return self.cluster

    def _listen(self, node: NodeId, rec: Record) -> None:
        self.seen.append((node, rec))
        if self._stop_on is not None and isinstance(rec, StateEntered):
            if (node, rec.state) == self._stop_on:
                self._stopped = True

    # --- output --------------------------------------------------------------------------------------

    def _changes(self) -> list[str]:
        per_node: dict[NodeId, list[str]] = {}
        delivered: dict[NodeId, list[str]] = {}
        stack = self.stack_options is not None
        for node, rec in self.seen:
            text = self._describe_stack(node, rec) if stack else None
            text = text or self._describe(rec)
            if text is not None:
                per_node.setdefault(node, []).append(text)
            if stack:
                key = _stack_delivery(rec)
                if key is not None:
                    delivered.setdefault(node, []).append(key)
            elif isinstance(rec, Delivered):
                delivered.setdefault(node, []).append(label(rec.payload))
        lines = _grouped({n: " · ".join(v) for n, v in per_node.items()})
        shown: dict[NodeId, str] = {}
        for n, labels in delivered.items():
            if stack:
                counts: dict[str, int] = {}
                for g in labels:
                    counts[g] = counts.get(g, 0) + 1
                shown[n] = "cpg delivered " + " ".join(f"{g}:{k}" for g, k in sorted(counts.items()))
                continue
            extra = f" (+{len(labels) - MAX_LABELS} more)" if len(labels) > MAX_LABELS else ""
            shown[n] = f"delivered {len(labels)}: " + " ".join(labels[:MAX_LABELS]) + extra
        return lines + _grouped(shown)

    def _describe(self, rec: Record) -> str | None:
        match rec:
            case Installed(kind=ConfigKind.TRANSITIONAL):
                return f"transitional members={_members(rec.members)}"
            case Installed():
                return f"regular ring={rec.ring_id} members={_members(rec.members)}"
            case Crashed():
                return "crashed"
            case Left():
                return "left"
            case Booted():
                return "booted" if self.verbose else None
            case StateEntered():
                return f"{rec.state} ({rec.reason})" if self.verbose else None
        return None

    def _describe_stack(self, node: NodeId, rec: Record) -> str | None:
        from cmanlk.sim.stackscenario import describe_for_scenario

        return describe_for_scenario(node, rec, self._quorate)

    def _new_violations(self, settled: bool) -> list[str]:
        cluster = self._need_cluster()
        found = check(cluster.histories(), settled=settled)
        if self.world is not None:
            from cmanlk.sim.service_checks import check_services

            done = settled and cluster.is_stable() and self.world.dlm_settled()
            found += check_services(cluster.histories(), self.world, done, final=settled)
        lines = []
        for v in found:
            key = f"{v.prop}|{v.node}|{v.detail}"
            if key not in self.reported:
                self.reported.add(key)
                self.violations.append(v)
                lines.append(f"VIOLATION {v.prop}: node {v.node}: {v.detail}")
        return lines

    # --- commands ------------------------------------------------------------------------------------

    def _cmd_seed(self, args: list[str]) -> list[str]:
        self._before_start("seed")
        self.seed = int(args[0])
        return ["ok"]

    def _cmd_nodes(self, args: list[str]) -> list[str]:
        self._before_start("nodes")
        self.nodelist = tuple(_node_list(args))
        return ["ok"]

    def _cmd_config(self, args: list[str]) -> list[str]:
        self._before_start("config")
        for arg in args:
            key, _, value = arg.partition("=")
            self.overrides[key] = int(value)
        return ["ok"]

    def _before_start(self, what: str) -> None:
        if self.cluster is not None:
            raise ScenarioError(f"'{what}' must come before the first start")

    def _cmd_start(self, args: list[str]) -> list[str]:
        nodes = _node_list(args)
        cluster = self._ensure_cluster(nodes)
        for n in nodes:
            cluster.boot(n)
        return self._wait_stable(START_LIMIT)

    def _cmd_boot(self, args: list[str]) -> list[str]:
        nodes = _node_list(args)
        cluster = self._ensure_cluster(nodes)
        for n in nodes:
            cluster.boot(n)
        return ["ok"]

    _cmd_restart = _cmd_boot

    def _cmd_crash(self, args: list[str]) -> list[str]:
        cluster = self._need_cluster()
        for n in _node_list(args):
            cluster.crash(n)
        return []

    def _cmd_leave(self, args: list[str]) -> list[str]:
        cluster = self._need_cluster()
        for n in _node_list(args):
            cluster.leave(n)
        return []

    def _cmd_partition(self, args: list[str]) -> list[str]:
        found = re.findall(r"\(([\d,\s]*)\)", " ".join(args))
        groups = [tuple(NodeId(int(x)) for x in g.split(",") if x.strip()) for g in found]
        self._need_cluster().network.partition(groups)
        return ["ok"]

    def _cmd_heal(self, args: list[str]) -> list[str]:
        self._need_cluster().network.heal()
        return ["ok"]

    def _cmd_loss(self, args: list[str]) -> list[str]:
        self._need_cluster().network.model.loss = float(args[0])
        return ["ok"]

    def _cmd_dup(self, args: list[str]) -> list[str]:
        self._need_cluster().network.model.dup = float(args[0])
        return ["ok"]

    def _cmd_reorder(self, args: list[str]) -> list[str]:
        self._need_cluster().network.model.reorder = float(args[0])
        return ["ok"]

    def _cmd_delay(self, args: list[str]) -> list[str]:
        model = self._need_cluster().network.model
        model.delay_max = max(model.delay_min, _duration(args[0]))
        return ["ok"]

    def _cmd_send(self, args: list[str]) -> list[str]:
        cluster = self._need_cluster()
        node, count = NodeId(int(args[0])), int(args[1])
        guarantee = Guarantee.SAFE if "safe" in args[2:] else Guarantee.AGREED
        size = next((int(a[5:]) for a in args[2:] if a.startswith("size=")), 0)
        accepted = sum(cluster.send(node, cluster.next_payload(node, size), guarantee) for _ in range(count))
        return [f"sent {accepted}" + (f", rejected {count - accepted}" if accepted < count else "")]

    def _cmd_traffic(self, args: list[str]) -> list[str]:
        cluster = self._need_cluster()
        if self.traffic is not None:
            self.traffic.until = cluster.now
            self.traffic = None
        rate = float(args[0].removesuffix("/s"))
        if rate > 0:
            self.traffic = Traffic(rate, FOREVER)
            cluster.start_traffic(self.traffic)
        return ["ok"]

    def _cmd_run(self, args: list[str]) -> list[str]:
        self._need_cluster().run_for(_duration(args[0]))
        return []

    def _cmd_run_until(self, args: list[str]) -> list[str]:
        cluster = self._need_cluster()
        node, state = NodeId(int(args[0])), MembState[args[1].upper()].value
        limit = _duration(args[2]) if len(args) > 2 else DEFAULT_WAIT_LIMIT
        self._stop_on, self._stopped = (node, state), False
        try:
            start = cluster.now
            reached = cluster.run_for(limit, lambda: self._stopped)
        finally:
            self._stop_on = None
        if reached:
            return [f"{node} entered {state} after {(cluster.now - start) / 1e6:.1f} ms"]
        return [f"TIMEOUT: {node} did not enter {state} within {limit / 1e6:.0f} ms"]

    def _cmd_wait_stable(self, args: list[str]) -> list[str]:
        return self._wait_stable(_duration(args[0]) if args else DEFAULT_WAIT_LIMIT)

    def _wait_stable(self, limit: Duration) -> list[str]:
        cluster = self._need_cluster()
        world = self.world

        def stable() -> bool:  # the stack mode also waits for every node's sync to complete
            return cluster.is_stable() and (world is None or world.synced())

        if cluster.run_for(limit, stable):
            return ["stable: " + " ".join(_members(g) for g in cluster.groups())]
        return [f"NOT STABLE within {limit / 1e6:.0f} ms", *self._members_lines()]

    def _cmd_show(self, args: list[str]) -> list[str]:
        if self.stack_options is not None:
            from cmanlk.sim.stackscenario import show

            lines = show(self, args)
            if lines is not None:
                return lines
        if args != ["members"]:
            raise ScenarioError("usage: show members")
        return self._members_lines()

    def _members_lines(self) -> list[str]:
        cluster = self._need_cluster()
        shown: dict[NodeId, str] = {}
        for n, node in cluster.nodes.items():
            if not node.up:
                shown[n] = "down"
            else:
                state = node.state.value if node.state else "?"
                shown[n] = f"{state} ring={node.ring_id} members={_members(node.members)}"
        return _grouped(shown)

    def _cmd_expect(self, args: list[str]) -> list[str]:
        if not args or args[0] != "members":
            raise ScenarioError("usage: expect members [N...] (a,b,...)")
        text = " ".join(args[1:])
        match = re.search(r"\(([\d,\s]*)\)\s*$", text)
        if match is None:
            raise ScenarioError("expect members: missing (a,b,...)")
        want = tuple(NodeId(int(x)) for x in match.group(1).split(",") if x.strip())
        cluster = self._need_cluster()
        nodes = _node_list(text[: match.start()].split()) or cluster.up_nodes()
        wrong = [
            f"{n}: {_members(cluster.nodes[n].members)}" for n in nodes if cluster.nodes[n].members != want
        ]
        return ["ok"] if not wrong else [f"MISMATCH want {_members(want)}: " + ", ".join(wrong)]

    def _cmd_verbose(self, args: list[str]) -> list[str]:
        self.verbose = args == ["on"]
        return ["ok"]

    def _cmd_stack(self, args: list[str]) -> list[str]:
        self._before_start("stack")
        self.stack_options = dict(a.partition("=")[::2] for a in args)
        return ["ok"]

    def __getattr__(self, name: str) -> Any:
        # the stack mode's commands live in cmanlk/sim/stackscenario.py
        if name.startswith("_cmd_"):
            from cmanlk.sim import stackscenario

            fn = getattr(stackscenario, "cmd_" + name[5:], None)
            if fn is not None:
                return lambda args: fn(self, args)
        raise AttributeError(name)

    def _cmd_check(self, args: list[str]) -> list[str]:
        lines = self._new_violations(settled=args == ["settled"])
        return lines or ["invariants ok"]


def run_text(text: str, factory: CoreFactory = totem_factory) -> ScenarioResult:
    """Run a scenario file's text; return blocks with actual output, violations and core errors."""
    blocks, trailer = parse(text)
    runner = Runner(factory)
    for block in blocks:
        try:
            block.actual = runner.execute_block(block.commands)
        except (ScenarioError, ValueError, IndexError, KeyError) as exc:
            raise ScenarioError(f"line {block.line}: {' / '.join(block.commands)}: {exc}") from exc
    errors = list(runner.cluster.errors) if runner.cluster is not None else []
    return ScenarioResult(blocks, trailer, runner.violations, errors)


def _stack_delivery(rec: Record) -> str | None:
    from cmanlk.sim.stackscenario import client_delivery

    return client_delivery(rec)


def _grouped(per_node: dict[NodeId, str]) -> list[str]:
    """Merge nodes with identical text: {1: "x", 2: "x", 3: "y"} -> ["1 2: x", "3: y"]."""
    by_text: dict[str, list[NodeId]] = {}
    for n in sorted(per_node):
        by_text.setdefault(per_node[n], []).append(n)
    return [" ".join(map(str, ns)) + ": " + text for text, ns in by_text.items()]


def _members(members: Any) -> str:
    return "(" + ",".join(str(m) for m in members) + ")"


def _node_list(args: list[str]) -> list[NodeId]:
    out: list[NodeId] = []
    for a in args:
        lo, _, hi = a.partition("-")
        out += [NodeId(i) for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _duration(text: str) -> Duration:
    """Parse '500ms', '2s', '1.5s' or a bare number of ms into ns."""
    if text.endswith("ms"):
        return ms(float(text[:-2]))
    if text.endswith("s"):
        return ms(float(text[:-1]) * 1000)
    return ms(float(text))
