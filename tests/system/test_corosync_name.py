"""`systemctl enable cmanlkd` gives cmanlkd the corosync.service name (docs/libqb.md).

Offline, with `systemctl --root`: Debian's corosync.service in /lib, a unit that Requires= it as
pacemaker.service does, and our unit; after `disable corosync` and `enable cmanlkd`, the name
corosync.service is an alias in /etc (which wins over /lib) pointing at cmanlkd.service, and
`disable cmanlkd` gives it back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_COROSYNC_UNIT = Path("/lib/systemd/system/corosync.service")
PACEMAKER_LIKE = """\
[Unit]
Description=stands for pacemaker.service
Requires=corosync.service
After=corosync.service
[Service]
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
"""

pytestmark = pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")


def systemctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", f"--root={root}", *args], capture_output=True, text=True, timeout=60)


def test_enabling_cmanlkd_takes_the_corosync_service_name_and_disabling_gives_it_back(tmp_path: Path) -> None:
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    if DEBIAN_COROSYNC_UNIT.exists():
        shutil.copy(DEBIAN_COROSYNC_UNIT, units / "corosync.service")
    else:
        (units / "corosync.service").write_text(
            "[Service]\nExecStart=/usr/sbin/corosync -f\n[Install]\nWantedBy=multi-user.target\n"
        )
    shutil.copy(ROOT / "packaging/systemd/cmanlkd.service", units / "cmanlkd.service")
    (units / "pacemaker.service").write_text(PACEMAKER_LIKE)
    assert systemctl(tmp_path, "enable", "corosync.service").returncode == 0  # as Debian's package does
    assert systemctl(tmp_path, "disable", "corosync.service").returncode == 0  # the switch, step 1
    enabled = systemctl(tmp_path, "enable", "cmanlkd.service")  # step 2
    assert enabled.returncode == 0, enabled.stderr
    alias = tmp_path / "etc/systemd/system/corosync.service"
    assert alias.is_symlink() and alias.readlink() == Path("/lib/systemd/system/cmanlkd.service")
    assert systemctl(tmp_path, "is-enabled", "corosync.service").stdout.strip() == "alias"
    assert systemctl(tmp_path, "enable", "pacemaker.service").returncode == 0
    assert systemctl(tmp_path, "disable", "cmanlkd.service").returncode == 0  # switching back
    assert not alias.exists() and not alias.is_symlink()
    assert systemctl(tmp_path, "enable", "corosync.service").returncode == 0
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/corosync.service"
    assert wants.readlink() == Path("/lib/systemd/system/corosync.service")
