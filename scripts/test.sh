#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs every check CI runs:
# ruff, mypy --strict, then the whole pytest suite (unit, scenarios, simulator, adapters, system).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy --strict"; mypy
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
