"""The stack mode's service invariants catch planted faults.

Each test runs a small deterministic scenario twice: with the product's services (no violation)
and with one deliberately broken service, defined here in the test (never in the product), and
asserts the checker names the invariant that service breaks. The scenarios: five nodes boot,
every node's client joins group g0 and lockspace ls0 and keeps sending; then a partition
(1,2,3) | (4,5) (the quorate side fences 4 and 5), or a merge after joins on both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from cmanlk.dlm.companion import DlmCompanion
from cmanlk.dlm.control import DlmCtl, DlmSettings
from cmanlk.dlm.fencing import Fencing, FencingPolicy, Victim
from cmanlk.services.base import ServiceOutput
from cmanlk.services.cpg.service import CpgAddress, CpgConfchg, CpgDeliver, CpgService, CpgTotemConfchg
from cmanlk.services.votequorum.policy import Quorum, QuorumConfig
from cmanlk.services.votequorum.service import VotequorumService
from cmanlk.sim.cluster import sim_config
from cmanlk.sim.service_checks import check_services
from cmanlk.sim.stackhost import StackCluster, StackHost, StackWorld
from cmanlk.sim.stackschedule import run_stack_schedule
from cmanlk.types import Instant, NodeId, RingId, ms

IDS = tuple(NodeId(i) for i in range(1, 6))
QUORUM = QuorumConfig.for_nodes(IDS)
G0 = b"g0"

Program = Iterable[tuple[int, Callable[[StackCluster], None]]]


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    logging.getLogger("cmanlk").setLevel(logging.ERROR)


def _partition(c: StackCluster) -> None:
    c.network.partition([IDS[:3], IDS[3:]])


def _heal(c: StackCluster) -> None:
    c.network.heal()


SPLIT: Program = [(ms(1500), _partition)]
MERGE: Program = [(ms(250), _partition), (ms(1500), _heal)]


def run(program: Program = SPLIT, *, until: int = ms(5000), agents: str = "ok", lockspace: bool = True,
        **plants: Any) -> set[str]:
    """Run the scenario; return the names of the invariants found broken."""
    world = StackWorld(1, QUORUM, FencingPolicy(nodes_with_agent=frozenset(IDS), retry_initial=ms(100),
                                                retry_max=ms(400)),
                       agent_mode={n: agents for n in IDS}, chatter_per_s=20.0, chatter_until=until - ms(800),
                       **plants)
    cluster = StackCluster(sim_config(IDS), seed=1, world=world, record_states=False)
    for n in IDS:
        cluster.at(0, _boot(cluster, n))
        cluster.at(ms(300), _client(cluster, n, lambda h: h.cpg_join(G0)))
        if lockspace:
            cluster.at(ms(320), _client(cluster, n, lambda h: h.ls_join("ls0")))
    for t, fn in program:
        cluster.at(t, _bind(fn, cluster))
    cluster.run_until(until)
    settled = cluster.is_stable() and world.dlm_settled()
    return {v.prop for v in check_services(cluster.histories(), world, settled)}


def _boot(c: StackCluster, n: NodeId) -> Callable[[], None]:
    return lambda: c.boot(n)


def _client(c: StackCluster, n: NodeId, fn: Callable[[StackHost], object]) -> Callable[[], None]:
    return lambda: c.drive(n, fn)


def _bind(fn: Callable[[StackCluster], None], c: StackCluster) -> Callable[[], None]:
    return lambda: fn(c)


# --- the product passes the scenarios --------------------------------------------------------------


def test_the_product_passes_every_scenario() -> None:
    assert run(SPLIT) == set()
    assert run(MERGE, lockspace=False) == set()
    assert run(SPLIT, agents="hang") == set()


def test_random_stack_schedules_replay_exactly() -> None:
    a, b = run_stack_schedule(7), run_stack_schedule(7)
    assert a.ok and a.digest == b.digest and a.events == b.events


# --- quorum -------------------------------------------------------------------------------------------


class _AlwaysQuorate(Quorum):
    def _are_we_quorate(self, total: int) -> None:
        super()._are_we_quorate(total)
        self.is_quorate = True


class _QuorumOneShort(Quorum):
    def _calculate_quorum(
        self, allow_decrease: bool, max_expected: int, use_downscale: bool = True
    ) -> tuple[int, int]:
        quorum, total = super()._calculate_quorum(allow_decrease, max_expected, use_downscale)
        return max(1, quorum - 1), total


def _votequorum(cls: type[Quorum]) -> Callable[[NodeId], VotequorumService]:
    def make(me: NodeId) -> VotequorumService:
        svc = VotequorumService(me, QUORUM)
        svc.quorum.__class__ = cls
        return svc

    return make


def test_quorum_split_catches_a_votequorum_that_is_always_quorate() -> None:
    assert {"quorum-split", "quorum-model"} <= run(votequorum_factory=_votequorum(_AlwaysQuorate))


def test_quorum_model_catches_a_quorum_one_short() -> None:
    assert "quorum-model" in run(votequorum_factory=_votequorum(_QuorumOneShort))


# --- sync ---------------------------------------------------------------------------------------------


class _CpgEarlyRing(CpgService):
    """Tells its clients the new ring at sync_init, before the barrier."""

    def sync_init(self, ring_id: RingId, members: tuple[NodeId, ...],
                  transitional_members: tuple[NodeId, ...]) -> list[ServiceOutput]:
        out = super().sync_init(ring_id, members, transitional_members)
        handles = self._all_handles()
        return out + ([CpgTotemConfchg(handles, ring_id, members)] if handles else [])


class _CpgAbortLeavesState(CpgService):
    """Its sync never finishes after the first two; its abort forgets the other nodes' processes."""

    def __init__(self, me: NodeId) -> None:
        super().__init__(me)
        self.syncs = 0

    def sync_init(self, ring_id: RingId, members: tuple[NodeId, ...],
                  transitional_members: tuple[NodeId, ...]) -> list[ServiceOutput]:
        self.syncs += 1
        return super().sync_init(ring_id, members, transitional_members)

    def sync_process(self) -> tuple[bool, list[ServiceOutput]]:
        done, out = super().sync_process()
        return (done and self.syncs <= 2), out

    def sync_abort(self) -> None:
        super().sync_abort()
        self._processes = [p for p in self._processes if p.nodeid == self.me]


def test_sync_order_catches_a_service_whose_clients_see_the_ring_before_the_barrier() -> None:
    assert "sync-order" in run(cpg_factory=_CpgEarlyRing)


def test_sync_abort_catches_an_abort_that_leaves_state_behind() -> None:
    assert "sync-abort" in run(MERGE, lockspace=False, cpg_factory=_CpgAbortLeavesState)


# --- cpg ----------------------------------------------------------------------------------------------


class _CpgNoJoined(CpgService):
    def _notify(self, group: bytes, joined: tuple[CpgAddress, ...],
                left: tuple[CpgAddress, ...]) -> list[ServiceOutput]:
        out = super()._notify(group, joined, left)
        return [CpgConfchg(o.handles, o.group, o.members, o.left, ()) if isinstance(o, CpgConfchg) else o
                for o in out]


class _CpgWrongSender(CpgService):
    def _deliver(self, sender: NodeId, group: bytes, pid: int, payload: bytes) -> list[ServiceOutput]:
        out = super()._deliver(sender, group, pid, payload)
        return [CpgDeliver(o.handles, o.group, o.nodeid, o.pid + 7, o.payload) if isinstance(o, CpgDeliver)
                else o for o in out]


def _swapping(only: NodeId | None) -> type[CpgService]:
    class Swap(CpgService):
        """Delivers each pair of g0 messages the other way round (on node `only`, or everywhere)."""

        held: list[ServiceOutput] | None = None

        def _deliver(self, sender: NodeId, group: bytes, pid: int, payload: bytes) -> list[ServiceOutput]:
            out = super()._deliver(sender, group, pid, payload)
            if group != G0 or not out or (only is not None and self.me != only):
                return out
            if self.held is None:
                self.held = out
                return []
            out, self.held = out + self.held, None
            return out

    return Swap


class _CpgDropsOnNode2(CpgService):
    count = 0

    def _deliver(self, sender: NodeId, group: bytes, pid: int, payload: bytes) -> list[ServiceOutput]:
        out = super()._deliver(sender, group, pid, payload)
        if self.me == 2 and out:
            self.count += 1
            if self.count % 10 == 0:
                return []
        return out


class _CpgIgnoresJoinlists(CpgService):
    def _joinlist_inform(self) -> list[ServiceOutput]:
        return []


def test_cpg_view_catches_views_that_do_not_add_up() -> None:
    assert "cpg-view" in run(cpg_factory=_CpgNoJoined)


def test_cpg_sender_catches_messages_from_outside_the_view() -> None:
    assert "cpg-sender" in run(cpg_factory=_CpgWrongSender)


def test_cpg_fifo_catches_a_sender_delivered_out_of_order() -> None:
    found = run(cpg_factory=_swapping(None))
    assert "cpg-fifo" in found and "cpg-order" not in found


def test_cpg_order_catches_one_node_delivering_in_another_order() -> None:
    assert "cpg-order" in run(cpg_factory=_swapping(NodeId(2)))


def test_cpg_vs_catches_a_member_that_misses_messages_between_two_views() -> None:
    assert "cpg-vs" in run(cpg_factory=_CpgDropsOnNode2)


def test_cpg_converge_catches_a_merge_that_forgets_the_other_side() -> None:
    assert "cpg-converge" in run(MERGE, lockspace=False, cpg_factory=_CpgIgnoresJoinlists)


# --- DLM control --------------------------------------------------------------------------------------


class _CtlIgnoresQuorumAndFencing(DlmCtl):
    def waiting_for(self, name: str) -> list[str]:
        return [w for w in super().waiting_for(name) if w != "quorum" and not w.startswith("fencing")]


class _CtlNeverRestarts(DlmCtl):
    def _maybe_complete(self, now: Instant, ls: Any) -> list[Any]:
        if not ls.join_pending:
            return []  # recovery never starts again after the first membership
        return super()._maybe_complete(now, ls)


class _FencingAnyone(Fencing):
    def fences(self, v: Victim) -> bool:
        return self.me in self.members


def _companion(
    ctl: type[DlmCtl] = DlmCtl, fencing: type[Fencing] = Fencing
) -> Callable[[DlmSettings, int], DlmCompanion]:
    def make(settings: DlmSettings, pid: int) -> DlmCompanion:
        c = DlmCompanion(settings, {}, pid=pid)
        c.ctl.__class__ = ctl
        c.ctl.fencing.__class__ = fencing
        return c

    return make


def test_dlm_restart_catches_recovery_without_quorum_or_fencing() -> None:
    assert "dlm-restart" in run(agents="hang", companion_factory=_companion(_CtlIgnoresQuorumAndFencing))


def test_dlm_fence_catches_a_minority_shooting_the_majority() -> None:
    assert "dlm-fence" in run(companion_factory=_companion(fencing=_FencingAnyone))


def test_dlm_converge_catches_a_lockspace_that_never_recovers() -> None:
    assert "dlm-converge" in run(companion_factory=_companion(_CtlNeverRestarts))
