#!/usr/bin/env bash
# Real-kernel tests: builds the kernel lab if needed (shared/kernel-lab/setup.sh: qemu, Debian's
# kernel, a debootstrap'ed guest root under $KLAB_DIR, default /var/tmp/kernel-lab; ~2 min the
# first time), adds what our guest scripts need to the guest root (python3-pytest), then boots
# QEMU VMs for each scenario of tests/vm/scenarios.py and prints one line per scenario:
#   PASS|FAIL <name> <seconds>s <vm=exit...> <result folder>
# and a last line with the wall time. Scenarios run 2 at a time (-j N, env CMANLK_VM_JOBS).
# Usage: scripts/vm-tests.sh [--setup-only] [-v] [-j N] [SCENARIO...]      (needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
KLAB_DIR="${KLAB_DIR:-/var/tmp/kernel-lab}"; export KLAB_DIR
LAB_TOOLS="${KLAB_TOOLS:-$(cd .. && pwd)/shared/kernel-lab}"
setup_only=0
[ "${1:-}" = --setup-only ] && { setup_only=1; shift; }
t0=$(date +%s.%N)
if [ ! -x "$KLAB_DIR/rootfs/usr/sbin/dlm_controld" ] || [ ! -f "$KLAB_DIR/initramfs.cpio.gz" ] ||
   ! ls "$KLAB_DIR"/kernel/boot/vmlinuz-* >/dev/null 2>&1 || ! command -v qemu-system-x86_64 >/dev/null; then
  [ -x "$LAB_TOOLS/setup.sh" ] || { echo "vm-tests: no kernel lab tools at $LAB_TOOLS" >&2; exit 1; }
  echo "vm-tests: building the kernel lab in $KLAB_DIR" >&2
  bash "$LAB_TOOLS/setup.sh"
fi
if ! chroot "$KLAB_DIR/rootfs" python3 -c 'import pytest' >/dev/null 2>&1; then
  echo "vm-tests: installing python3-pytest into the guest root" >&2
  chroot "$KLAB_DIR/rootfs" apt-get install -y --no-install-recommends python3-pytest >"$KLAB_DIR/logs/pytest-apt.log" 2>&1
fi
echo "vm-tests: lab ready after $(python3 -c "import time; print(round(time.time()-$t0, 1))")s" >&2
[ "$setup_only" = 1 ] && exit 0
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m tests.vm.run "$@"
