"""Print, one per line, the project's dependencies (pyproject.toml) that the package installs
privately: every one except those named on the command line, which the distribution provides.

    python3 packaging/private_requirements.py cryptography pyudev
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def main(provided: list[str]) -> int:
    """Write the private requirements to stdout; exit 1 if a provided name is no dependency."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0].lower(): dep for dep in deps}
    unknown = [p for p in provided if p.lower() not in names]
    if unknown:
        print(f"private_requirements: not dependencies of the project: {unknown}", file=sys.stderr)
        return 1
    for name, dep in names.items():
        if name not in {p.lower() for p in provided}:
            print(dep)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
