"""Deterministic simulator: N nodes running the real core over a seeded lossy network.

- `cluster.Cluster`: drives cores (anything with `handle(event)` and `next_deadline`)
  with virtual time; crash/restart/leave; client traffic; records histories.
- `network`: loss, duplication, reordering, bounded delay, partitions.
- `invariants.check`: the extended-virtual-synchrony checker over histories.
- `schedule`: random fault schedules per seed, with the liveness bound.
- `scenario`: the data-driven scenario files of tests/scenarios.
- `cli`: the `cmanlk-sim` console script.
- the stack mode: `stackhost` (the whole node per simulated machine), `stackrecords`,
  `service_checks` and `vqmodel` (the service invariants), `stackschedule`, `stackscenario`.
"""

from cmanlk.sim.cluster import Cluster, Core, CoreFactory, Traffic, sim_config, totem_factory
from cmanlk.sim.invariants import LivenessSpec, Violation, check
from cmanlk.sim.network import LinkModel, Network
from cmanlk.sim.schedule import liveness_bound, make_schedule, run_schedule

__all__ = [
    "Cluster",
    "Core",
    "CoreFactory",
    "LinkModel",
    "LivenessSpec",
    "Network",
    "Traffic",
    "Violation",
    "check",
    "liveness_bound",
    "make_schedule",
    "run_schedule",
    "sim_config",
    "totem_factory",
]
