#!/bin/bash
# Guest side of scenario "adapter-conformance": load/mount the kernel DLM with our own kmod
# adapter, then run the DLM adapter conformance suite; the "real" variants must run, not skip.
set -u
cd "$(dirname "$0")/../../.."
export PYTHONPATH="$PWD" PYTHONDONTWRITEBYTECODE=1 CMANLK_REQUIRE_REAL_DLM=1
python3 -c 'from kernel_glue.kmod import ensure_dlm_kernel; print("dlm configfs root:", ensure_dlm_kernel())' || exit 1
# libdlm opens /dev/misc/dlm-control: udevd (klab.udev=1) makes the link; wait for it
for _ in $(seq 50); do [ -e /dev/misc/dlm-control ] && break; udevadm settle -t 1 2>/dev/null; sleep 0.1; done
python3 -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/adapters/test_dlm_adapter_conformance.py \
  --junitxml=/out/junit.xml 2>&1 | tee /out/pytest.txt
exit "${PIPESTATUS[0]}"
