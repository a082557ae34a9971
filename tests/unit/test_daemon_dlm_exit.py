"""cmanlkd with `cmanlk { dlm: yes }` on a host whose kernel DLM cannot be set up exits with 3
(runtime failure, docs/cmanlkd.8.md EXIT STATUS), not 4 (internal error: a bug)."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import pytest

from cmanlk import daemon
from cmanlk.errors import KernelError


def _conf(tmp_path: Path, dlm: str) -> Path:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "corosync.conf"
    path.write_text(f"""totem {{
  version: 2
  cluster_name: c
  transport: udpu
  token: 300
  interface {{
    linknumber: 0
    mcastport: {port}
  }}
}}
nodelist {{
  node {{
    ring0_addr: 127.0.0.1
    nodeid: 1
  }}
}}
cmanlk {{
  state_dir: {tmp_path}/state
  run_dir: {tmp_path}/run
  dbus: no
  dlm: {dlm}
}}
""")
    return path


def run_cmanlkd(tmp_path: Path, dlm: str) -> int:
    """cmanlkd in this process on a one-node udpu config; returns its exit code.

    -p: the test process must not turn SCHED_RR 99 (it would keep it for every later test and
    starve the machine's other work).
    """
    try:
        return daemon.main(["-f", "-p", "-c", str(_conf(tmp_path, dlm)), "--nodeid", "1"])
    finally:
        logging.getLogger().handlers.clear()  # setup_logging's stderr handler: not for later tests


def _no_dlm(mountpoint: str = "") -> str:
    raise KernelError("/sys/module/dlm", errno.ENOENT, "modprobe dlm: module not found")


def test_dlm_yes_without_a_usable_kernel_dlm_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # a DLM the start check finds (a module file, say) that then cannot be set up
    monkeypatch.setattr("cmanlk.runtime.dlmd.dlm_available", lambda: True)
    monkeypatch.setattr("kernel_glue.kmod.ensure_dlm_kernel", _no_dlm)
    assert run_cmanlkd(tmp_path, "yes") == daemon.EXIT_RUNTIME == 3
    err = capsys.readouterr().err
    assert "stopped: the kernel DLM cannot be set up (cmanlk { dlm: yes })" in err
    assert "module not found" in err


def test_dlm_yes_on_a_kernel_without_dlm_is_refused_by_the_start_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("cmanlk.runtime.dlmd.dlm_available", lambda: False)
    conf = str(_conf(tmp_path, "yes"))
    assert daemon.main(["--check-config", "-c", conf, "--nodeid", "1"]) == daemon.EXIT_CONFIG
    said = capsys.readouterr().err
    try:
        code = daemon.main(["-f", "-c", conf, "--nodeid", "1"])
    finally:
        logging.getLogger().handlers.clear()
    assert code == daemon.EXIT_RUNTIME
    words = "dlm: yes, but this kernel has no DLM (no dlm module, no /sys/kernel/config/dlm)"
    assert words in said and words in capsys.readouterr().err  # the check's words are the daemon's
