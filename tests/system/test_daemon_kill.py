"""`cmanlk-tool kill` against real cmanlkd daemons in network namespaces.

- `kill 3` from node 1: the cfg KILLNODE travels over totem, node 3's daemon logs who asked and
  exits with status 5 (killed), nodes 1 and 2 re-form without it and every survivor logs the
  request; killing a node that is not a member is refused with `not_found`;
- a non-root client allowed on the socket (ipc_group) is refused with permission_denied, and
  the target keeps running.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.system import cpghelpers as h
from tests.system.conftest import Cluster
from tests.system.test_daemon_tool import NOBODY, SYSTEM_PYTHON, public_link, run_tool

pytestmark = pytest.mark.system

EXIT_KILLED = 5
__all__ = ["public_link"]  # the fixture, imported for this module's tests


def test_kill_makes_the_target_exit_and_the_rest_reform(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory([1, 2, 3])
    c.start_all()
    c.wait_ring([1, 2, 3])
    unknown = run_tool(c, 1, "kill", "7")
    assert unknown.returncode == 1 and "not_found" in unknown.stderr, unknown.stderr
    assert "node 7 is not a member" in unknown.stderr

    too_long = run_tool(c, 1, "kill", "3", "--reason", "x" * 300)
    assert too_long.returncode == 1 and "invalid_param" in too_long.stderr, too_long.stderr
    done = run_tool(c, 1, "kill", "3", "--reason", "disk controller replacement")
    assert done.returncode == 0, done.stderr
    assert "node 3: kill request sent" in done.stdout
    c.wait_until(lambda: not c.alive(3), 10.0, "node 3's daemon exits")
    assert c.procs.pop(3).returncode == EXIT_KILLED  # gone for good: later waits must not see a failure
    log3 = c.log_path(3).read_text()
    assert "killed by node 1: disk controller replacement" in log3, log3[-2000:]
    assert "exiting with status 5: killed by node 1" in log3
    c.wait_ring([1, 2], [1, 2])
    for n in (1, 2):
        assert "node 1 asked node 3 to leave the cluster" in c.log_path(n).read_text()
    refused = run_tool(c, 2, "kill", "3")
    assert refused.returncode == 1 and "not_found" in refused.stderr


def test_kill_is_for_root_only(
    cluster_factory: Callable[..., Cluster], public_link: Callable[[str], str]
) -> None:
    c = cluster_factory([1, 2], cmanlk_extra={1: "  dbus: no\n  ipc_group: nogroup\n"})
    c.start_all()
    c.wait_ring([1, 2])
    link = public_link(h.socket_path(c.run_dir(1)))
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    allowed = h.tool(c.lab.ns(1), link, "quorum", prefix=prefix, python=SYSTEM_PYTHON)
    assert allowed.returncode == 0, allowed.stderr
    denied = h.tool(c.lab.ns(1), link, "kill", "2", prefix=prefix, python=SYSTEM_PYTHON)
    assert denied.returncode == 1 and "permission_denied" in denied.stderr, denied.stderr
    assert "kill is for root only" in denied.stderr
    assert c.alive(2) and c.members(1) == [1, 2]
