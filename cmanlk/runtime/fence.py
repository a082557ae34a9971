"""Running fence agents: what `RunFenceAgent` actions turn into.

Agents follow the fence-agents convention (fence_ipmilan, fence_virsh, ...): options are
"key=value" lines on stdin, at least `action=off` and `nodename=<name>`, followed by the
device's configured options (ip=, username=, password=, plug=, ...); exit status 0 means the
node is off. A hung agent is killed after `timeout_s` and counts as a failure. The outcome is
reported to the pure core (`cmanlk.dlm.fencing`, via dlmctl's `FenceAgentExited`), which decides
about retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cmanlk.dlm.fencing import RunFenceAgent
from cmanlk.errors import ConfigError, ConfigProblem
from cmanlk.types import NodeId

log = logging.getLogger(__name__)

AGENT_TIMEOUT_S = 60.0
"""fence_ipmilan's own defaults (power_timeout 20 s, retries) finish well within a minute."""
OUTPUT_TAIL_BYTES = 2048
"""Agent output kept for the log and status: the end of it, where the error is."""
EXIT_TIMEOUT = -1
EXIT_NOT_STARTED = 127


@dataclass(frozen=True, slots=True)
class FenceDevice:
    """The fence agent of one node: executable, its node name, extra key=value options."""

    agent: str
    nodename: str
    options: tuple[tuple[str, str], ...] = ()

    def validate(self, source: str = "fencing") -> None:
        """Raise ConfigError listing every option that would break the line protocol."""
        problems = []
        for key, value in (("nodename", self.nodename), *self.options):
            if not key or any(c in key for c in "=\n\r\0") or any(c in value for c in "\n\r\0"):
                problems.append(ConfigProblem(source, 0, key, "fence option keys/values must be one line"))
        if key_clash := {k for k, _ in self.options} & {"action", "nodename"}:
            keys = ",".join(sorted(key_clash))
            problems.append(ConfigProblem(source, 0, keys, "set by cmanlk, not configurable"))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True, slots=True)
class FenceOutcome:
    """How an agent run ended."""

    exit_code: int
    seconds: float
    output_tail: str


def agent_stdin(device: FenceDevice, action: str = "off") -> bytes:
    """Return the stdin lines for the agent: action, nodename, then the configured options."""
    lines = [f"action={action}", f"nodename={device.nodename}"]
    lines += [f"{k}={v}" for k, v in device.options]
    return ("\n".join(lines) + "\n").encode()


async def run_fence_agent(device: FenceDevice, action: str = "off",
                          timeout_s: float = AGENT_TIMEOUT_S) -> FenceOutcome:
    """Run the agent once; return its outcome (never raises for agent failures).

    EXIT_NOT_STARTED when the executable cannot be run, EXIT_TIMEOUT when it was killed.
    """
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            device.agent, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return FenceOutcome(EXIT_NOT_STARTED, time.monotonic() - t0, f"cannot run {device.agent}: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(agent_stdin(device, action)), timeout_s)
    except TimeoutError:
        return FenceOutcome(EXIT_TIMEOUT, time.monotonic() - t0, f"killed after {timeout_s:.0f}s")
    finally:
        if proc.returncode is None:  # timed out or cancelled: no agent outlives its run
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    code = proc.returncode if proc.returncode is not None else EXIT_TIMEOUT
    tail = out[-OUTPUT_TAIL_BYTES:].decode("utf-8", "replace")
    return FenceOutcome(code, time.monotonic() - t0, tail)


class FenceRunner:
    """Carries out RunFenceAgent actions; reports `(nodeid, exit_code)` through `report`.

    One agent per node at a time (the core never asks for a second while one runs).
    A node without a configured device is reported as EXIT_NOT_STARTED at once.
    """

    def __init__(self, devices: Mapping[NodeId, FenceDevice], report: Callable[[NodeId, int], None],
                 timeout_s: float = AGENT_TIMEOUT_S) -> None:
        for d in devices.values():
            d.validate()
        self._devices = dict(devices)
        self._report = report
        self._timeout_s = timeout_s
        self._tasks: dict[NodeId, asyncio.Task[None]] = {}
        self.last: dict[NodeId, FenceOutcome] = {}

    @property
    def devices(self) -> Mapping[NodeId, FenceDevice]:
        """The configured device of each node that has one."""
        return dict(self._devices)

    def carry_out(self, action: RunFenceAgent) -> None:
        """Start the agent for `action.nodeid` in the background (needs a running loop)."""
        device = self._devices.get(action.nodeid)
        if device is None:
            log.error("fencing node %d: no fence device configured; waiting for fence-ack", action.nodeid)
            self._report(action.nodeid, EXIT_NOT_STARTED)
            return
        if action.nodeid in self._tasks:
            return
        self._tasks[action.nodeid] = asyncio.get_running_loop().create_task(self._run(action, device))

    async def _run(self, action: RunFenceAgent, device: FenceDevice) -> None:
        log.warning("fencing node %d (%s) with %s, attempt %d", action.nodeid, device.nodename,
                    device.agent, action.attempt)
        try:
            outcome = await run_fence_agent(device, "off", self._timeout_s)
        finally:
            self._tasks.pop(action.nodeid, None)
        self.last[action.nodeid] = outcome
        level = logging.WARNING if outcome.exit_code == 0 else logging.ERROR
        log.log(level, "fence agent for node %d exited %d after %.1fs: %s", action.nodeid, outcome.exit_code,
                outcome.seconds, outcome.output_tail.strip()[-200:])
        self._report(action.nodeid, outcome.exit_code)

    async def close(self) -> None:
        """Cancel agents still running (their processes are killed by the cancellation)."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
