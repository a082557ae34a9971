"""The Debian package builds with the standard tools, puts its files where Debian expects them,
installs, and systemd accepts its unit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="building and installing a .deb needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None, reason="dpkg-dev is not installed"),
]

EXPECTED = [
    "./lib/systemd/system/cmanlkd.service",
    "./usr/sbin/cmanlkd",
    "./usr/sbin/cmanlk-tool",
    "./usr/sbin/cmanlk-keygen",
    "./usr/lib/tmpfiles.d/cmanlk.conf",
    "./usr/lib/sysusers.d/cmanlk.conf",
    "./usr/share/dbus-1/system-services/org.cmanlk.Cluster.service",
    "./usr/share/doc/cmanlk/copyright",
    "./usr/share/doc/cmanlk/examples/cmanlk.conf",
    "./usr/lib/cmanlk/site/cmanlk/daemon.py",
    "./usr/lib/cmanlk/site/pyroute2/__init__.py",
    "./usr/share/man/man8/cmanlkd.8.gz",
    "./usr/share/man/man8/cmanlk-tool.8.gz",
    "./usr/share/man/man5/cmanlk.conf.5.gz",
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        ["bash", str(ROOT / "packaging" / "build-deb.sh"), str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def test_deb_contains_files_where_debian_expects_them(deb: Path) -> None:
    listing = subprocess.run(["dpkg", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    missing = [p for p in EXPECTED if p not in paths]
    assert not missing, f"missing from the package: {missing}"
    for f in sorted((ROOT / "dbus").glob("*.conf")):
        assert "./usr/share/dbus-1/system.d/" + f.name in paths
    assert not [p for p in paths if "/udev/rules.d/" in p]  # the daemon watches udev itself (docs/links.md)


def test_deb_installs_and_systemd_accepts_the_unit(deb: Path) -> None:
    subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, check=True, timeout=120)
    try:
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/cmanlkd.service"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        for page in ("cmanlkd", "cmanlk-tool", "cmanlk.conf"):
            shown = subprocess.run(["man", "--warnings", "-P", "cat", page], capture_output=True, text=True,
                                   timeout=60, check=False, env={**os.environ, "MANWIDTH": "80"})  # fmt: skip
            assert shown.returncode == 0 and "cmanlk" in shown.stdout, shown.stderr
            assert "warning" not in shown.stderr, shown.stderr
        keygen = subprocess.run(
            ["/usr/sbin/cmanlk-keygen", "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert keygen.returncode == 0, keygen.stderr
    finally:
        subprocess.run(["dpkg", "--purge", "cmanlk"], capture_output=True, timeout=120, check=False)
