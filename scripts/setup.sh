#!/usr/bin/env bash
# Installs everything cmanlk needs on a fresh Debian machine: system packages and a venv in .venv.
# Idempotent; safe to run again. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for pair in ip:iproute2 nft:nftables dbus-daemon:dbus busctl:systemd gdbus:libglib2.0-bin \
            udevadm:udev corosync:corosync corosync-quorumtool:corosync; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
[ -e /usr/lib/x86_64-linux-gnu/libcpg.so.4 ] || need_apt+=(libcpg4)
# corosync's client libraries and libqb for building the C libcpg client of the libqb tests
# (tests/system/cpg_c_client.c) and checking the rings against libqb100 (docs/libqb.md).
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
for pkg in libqb-dev libcpg-dev libquorum-dev libvotequorum-dev libcmap-dev libcfg-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts corosync on install; our tests run their own copies inside namespaces.
    systemctl disable --now corosync >/dev/null 2>&1 || true
    pkill -x corosync >/dev/null 2>&1 || true
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test,fast]'
