"""The Debian package builds with the standard tools, puts its files where Debian expects them,
installs, and systemd accepts its unit."""

from __future__ import annotations

import os
import re
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
    "./usr/lib/cmanlk/site/dbus_fast/annotations.py",
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
    assert "./usr/share/doc/cmanlk/examples/70-cmanlk-link-names.rules" in paths
    # Debian's own python3-cryptography and python3-pyudev are used, not private copies
    # (no private OpenSSL in the package)
    assert not [p for p in paths if p.startswith(("./usr/lib/cmanlk/site/cryptography",
                                                  "./usr/lib/cmanlk/site/pyudev"))]


def field(deb: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True)
    return out.stdout


def test_deb_relations_name_packages_debian_has_and_conflict_with_none(deb: Path) -> None:
    depends = field(deb, "Depends")
    assert "python3-cryptography" in depends and "python3-pyudev" in depends
    assert field(deb, "Conflicts").strip() == ""  # dlm_tool (dlm-controld) stays installable
    wanted = [re.split(r"[ (]", rel.strip())[0] for f in ("Depends", "Recommends", "Suggests")
              for rel in field(deb, f).replace("|", ",").split(",") if rel.strip()]
    assert "dlm-controld" in wanted
    if candidate("dpkg") is None:
        pytest.skip("apt has no package lists here (apt-get update was never run)")
    missing = [p for p in wanted if not p.startswith("${") and candidate(p) in (None, "(none)")]
    assert not missing, f"not Debian packages here: {missing}"


def candidate(package: str) -> str | None:
    """apt's candidate version of `package` (from the local package lists), or None."""
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60,
                         check=False).stdout  # fmt: skip
    found = re.search(r"Candidate: (\S+)", out)
    return found.group(1) if found else None


def test_deb_installs_and_systemd_accepts_the_unit(deb: Path, tmp_path: Path) -> None:
    # apt pulls the Debian dependencies (python3-pyudev, ...); nothing it installs is started
    install = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                              "--no-install-recommends", str(deb)],
                             capture_output=True, text=True, check=False, timeout=600,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        where = subprocess.run(
            ["/usr/bin/python3", "-I", "-c",
             "import sys; sys.path.insert(0, '/usr/lib/cmanlk/site'); import cryptography, pyudev, pyroute2, "
             "dbus_fast as d; print(cryptography.__file__, pyudev.__file__, pyroute2.__file__, d.__file__)"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert [w.split("/")[3] for w in where] == ["python3", "python3", "cmanlk", "cmanlk"], where
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
        # the installed daemon, on Debian's cryptography: a knet file's key is loaded by the check
        key = tmp_path / "authkey"
        assert subprocess.run(["/usr/sbin/cmanlk-keygen", "-k", str(key)], capture_output=True,
                              timeout=60, check=False).returncode == 0  # fmt: skip
        conf = tmp_path / "corosync.conf"
        conf.write_text("totem {\n  version: 2\n  cluster_name: pkg\n}\nnodelist {\n  node {\n"
                        "    ring0_addr: 127.0.0.1\n    nodeid: 1\n  }\n}\n"
                        f"cmanlk {{\n  keyfile: {key}\n  run_dir: {tmp_path}/run\n"
                        f"  state_dir: {tmp_path}/st\n}}\n")
        check = subprocess.run(["/usr/sbin/cmanlkd", "--check-config", "-c", str(conf)], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
        # the key passed; the native transport then refuses loopback, as for Debian's stock file
        assert check.returncode == 1 and check.stderr.count("error: ") == 1, check.stderr
        assert "refusing loopback address 127.0.0.1" in check.stderr, check.stderr
    finally:
        subprocess.run(["dpkg", "--purge", "cmanlk"], capture_output=True, timeout=120, check=False)
