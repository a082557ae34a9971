#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs every check CI runs:
#   ruff, mypy --strict, 2000 random simulator schedules under the EVS invariant checker and 2000
#   of the whole node (Stack, DLM companion, clients) under the EVS and service checkers,
#   the real-kernel DLM scenarios in QEMU VMs (root only), then the whole pytest suite
#   (unit, scenarios, simulator, adapters, and, as root, system tests in network namespaces).
# Set CMANLK_SKIP_VM=1 to leave out the VM scenarios on a machine without the kernel lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy --strict"; mypy
echo "== simulator: 2000 random schedules, 2-7 nodes, all faults"
cmanlk-sim check --seeds 2000 --nodes 2-7 --faults all --jobs 2 | tail -n 25
echo "== simulator, whole node: 2000 random stack schedules, 2-7 nodes, all faults and clients"
cmanlk-sim check --stack --seeds 2000 --nodes 2-7 --faults all --jobs 2 | tail -n 25
if [ "$(id -u)" = 0 ] && [ "${CMANLK_SKIP_VM:-0}" != 1 ]; then
    echo "== real-kernel DLM scenarios (QEMU)"; bash scripts/vm-tests.sh
fi
echo "== pytest"; python -m pytest -q -p no:cacheprovider "$@"
