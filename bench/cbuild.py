"""Build bench/cpgbench.c (the C libcpg client) once per source version, into a cache directory.

    python -m bench.cbuild          # prints the binary's path (builds it if needed)

Needs gcc and Debian's libcpg-dev (scripts/setup.sh installs both). The binary is kept under
$XDG_CACHE_HOME/cmanlk-bench (~/.cache/cmanlk-bench), named by the source's hash, so a changed
source is rebuilt and an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("cpgbench.c")
HEADER = Path("/usr/include/corosync/cpg.h")


class BuildError(RuntimeError):
    """The C client cannot be built here (no gcc, no libcpg-dev, or a compiler error)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmanlk-bench"


def build(source: Path = SOURCE) -> Path:
    """Return the path of the built client; raise BuildError when it cannot be built."""
    if shutil.which("gcc") is None or not HEADER.exists():
        raise BuildError("gcc and libcpg-dev are needed for the C client (scripts/setup.sh installs them)")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = cache_dir() / f"cpgbench-{digest}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(binary.name + f".{os.getpid()}.tmp")
    done = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(source), "-lcpg"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"gcc failed:\n{done.stderr}")
    tmp.replace(binary)
    return binary


def main() -> int:
    try:
        print(build())
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
