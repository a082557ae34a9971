"""Fencing: the pure core's decisions, and fence agents run the fence_* way (stdin key=value)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from cmanlk.dlm.fencing import AnnounceFenced, Fencing, FencingPolicy, RunFenceAgent, VictimState
from cmanlk.errors import ConfigError
from cmanlk.runtime.fence import (
    EXIT_NOT_STARTED,
    EXIT_TIMEOUT,
    FenceDevice,
    FenceRunner,
    agent_stdin,
    run_fence_agent,
)
from cmanlk.types import Instant, NodeId, ms

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


def fencer(agents: frozenset[NodeId] = frozenset({N2, N3}), **kw: object) -> Fencing:
    f = Fencing(N1, FencingPolicy(nodes_with_agent=agents, **kw))  # type: ignore[arg-type]
    f.membership(Instant(0), (N1, N2, N3), True)
    return f


def test_failed_member_is_fenced_by_the_lowest_quorate_node() -> None:
    f = fencer()
    assert f.is_fencer
    f.membership(Instant(5), (N1, N2), True)  # the companion feeds the change after the ring's
    assert f.node_failed(Instant(10), N3) == [RunFenceAgent(N3, 1)]
    assert not f.is_fenced(N3) and f.is_fenced(N2)
    assert f.node_failed(Instant(11), N3) == []  # once
    assert f.agent_exited(Instant(20), N3, 0) == [AnnounceFenced(N3, "agent")]
    assert f.is_fenced(N3) and f.unfenced() == []


def test_retries_back_off_to_the_ceiling_and_an_ack_ends_them() -> None:
    f = fencer(retry_initial=ms(1000), retry_max=ms(4000))
    f.membership(Instant(0), (N1, N3), True)
    f.node_failed(Instant(0), N2)
    t = Instant(0)
    waits = []
    for attempt in range(1, 6):
        f.agent_exited(t, N2, 1)
        assert f.next_deadline is not None
        waits.append(f.next_deadline - t)
        t = f.next_deadline
        assert f.deadline(t) == [RunFenceAgent(N2, attempt + 1)]
    assert waits == [ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]
    assert f.ack(t, N2) == [AnnounceFenced(N2, "ack")]
    assert f.agent_exited(t, N2, 0) == []  # the late agent result changes nothing
    assert f.status()[0]["how"] == "ack" and f.next_deadline is None


def test_minority_or_non_lowest_nodes_never_run_agents() -> None:
    f = Fencing(N2, FencingPolicy(nodes_with_agent=frozenset({N1, N3})))
    f.membership(Instant(0), (N1, N2, N3), True)
    assert f.node_failed(Instant(1), N3) == []  # node 1 fences
    assert f.fenced_elsewhere(Instant(2), N3, "agent") == [] and f.is_fenced(N3)
    g = Fencing(N1, FencingPolicy(nodes_with_agent=frozenset({N2, N3})))
    g.membership(Instant(0), (N1,), False)
    assert g.node_failed(Instant(1), N2) == []  # not quorate
    assert g.membership(Instant(2), (N1, N3), True) == [RunFenceAgent(N2, 1)]


def test_node_without_a_device_waits_for_an_ack_and_disabled_fencing_waits_for_nothing() -> None:
    f = fencer(agents=frozenset())
    assert f.node_failed(Instant(1), N2) == []
    assert f.victims[N2].state is VictimState.WAITING and not f.is_fenced(N2)
    off = Fencing(N1, FencingPolicy(enabled=False))
    assert off.node_failed(Instant(1), N2) == [] and off.is_fenced(N2)


def test_a_fenced_node_that_rejoins_is_forgotten_an_unfenced_one_is_not() -> None:
    f = fencer(agents=frozenset())
    f.node_failed(Instant(1), N2)
    f.node_failed(Instant(1), N3)
    f.ack(Instant(2), N2)
    f.membership(Instant(3), (N1, N2, N3), True)
    assert N2 not in f.victims and not f.is_fenced(N3)


def test_the_agent_never_runs_against_a_member_and_a_fresh_daemon_counts_as_fenced() -> None:
    f = fencer()
    assert f.node_failed(Instant(1), N3) == []  # a daemon died on a live member: never shot
    assert not f.is_fenced(N3) and f.next_deadline is None
    f.membership(Instant(2), (N1, N2), True)  # it left the ring: now it is fenced
    assert f.deadline(Instant(2)) == [] and f.victims[N3].state is VictimState.RUNNING
    f.agent_exited(Instant(3), N3, 1)
    f.membership(Instant(4), (N1, N2, N3), True)  # back after a merge: no retry against a member
    assert f.next_deadline is None and f.deadline(Instant(10**10)) == []
    assert f.restarted(Instant(5), N3) == [AnnounceFenced(N3, "restart")] and f.is_fenced(N3)


def test_the_fencer_is_the_lowest_witness_still_here() -> None:
    # node 2 saw node 4 fail with node 1; node 1 restarted (its daemon left): node 2 fences
    f = Fencing(N2, FencingPolicy(nodes_with_agent=frozenset({NodeId(4)})))
    f.membership(Instant(0), (N1, N2, N3), True)
    assert f.node_failed(Instant(1), NodeId(4), (N1, N2, N3)) == []  # node 1 fences
    assert not f.is_fencer
    assert f.peers_left(Instant(2), (N1,)) == [RunFenceAgent(NodeId(4), 1)]
    # a node that joined later (node 1 again, knowing nothing) does not take it over
    g = Fencing(N3, FencingPolicy(nodes_with_agent=frozenset({NodeId(4)})))
    g.membership(Instant(0), (N1, N2, N3), True)
    g.node_failed(Instant(1), NodeId(4), (N2, N3))
    assert not g.is_fencer and g.peers_left(Instant(2), (N2,)) == [RunFenceAgent(NodeId(4), 1)]


def test_agent_stdin_is_the_fence_agents_line_protocol() -> None:
    d = FenceDevice("/usr/sbin/fence_ipmilan", "node2", (("ip", "10.0.0.2"), ("username", "admin")))
    assert agent_stdin(d) == b"action=off\nnodename=node2\nip=10.0.0.2\nusername=admin\n"
    with pytest.raises(ConfigError) as info:
        FenceDevice("/x", "n", (("password", "a\naction=on"), ("action", "on"))).validate()
    assert len(info.value.problems) == 2


def _agent(tmp_path: Path, body: str) -> str:
    p = tmp_path / "fence_test"
    p.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    p.chmod(0o755)
    return str(p)


def test_agent_run_passes_options_and_reports_exit_codes(tmp_path: Path) -> None:
    seen = tmp_path / "stdin"
    ok = _agent(tmp_path, f"open({str(seen)!r}, 'w').write(sys.stdin.read()); sys.exit(0)")
    d = FenceDevice(ok, "node3", (("plug", "3"),))
    outcome = asyncio.run(run_fence_agent(d))
    assert outcome.exit_code == 0 and seen.read_text() == "action=off\nnodename=node3\nplug=3\n"
    bad = _agent(tmp_path, "print('power switch unreachable'); sys.exit(1)")
    outcome = asyncio.run(run_fence_agent(FenceDevice(bad, "node3")))
    assert outcome.exit_code == 1 and "unreachable" in outcome.output_tail
    missing = FenceDevice(str(tmp_path / "missing"), "n")
    assert asyncio.run(run_fence_agent(missing)).exit_code == EXIT_NOT_STARTED


def test_hung_agent_is_killed_at_the_timeout(tmp_path: Path) -> None:
    hung = _agent(tmp_path, "time.sleep(30)")
    outcome = asyncio.run(run_fence_agent(FenceDevice(hung, "n"), timeout_s=0.5))
    assert outcome.exit_code == EXIT_TIMEOUT and outcome.seconds < 5


def test_runner_reports_each_result_and_nodes_without_device(tmp_path: Path) -> None:
    ok = _agent(tmp_path, "sys.exit(0)")
    reports: list[tuple[NodeId, int]] = []

    async def main() -> None:
        runner = FenceRunner({N2: FenceDevice(ok, "node2")}, lambda n, rc: reports.append((n, rc)))
        runner.carry_out(RunFenceAgent(N2, 1))
        runner.carry_out(RunFenceAgent(N3, 1))
        for _ in range(100):
            if len(reports) == 2:
                break
            await asyncio.sleep(0.05)
        await runner.close()

    asyncio.run(main())
    assert sorted(reports) == [(N2, 0), (N3, EXIT_NOT_STARTED)]
