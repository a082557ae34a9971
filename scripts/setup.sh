#!/usr/bin/env bash
# Installs everything cmanlk needs on a fresh Debian machine: system packages and a venv in .venv.
# Idempotent; safe to run again. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
for pair in ip:iproute2 nft:nftables dbus-daemon:dbus busctl:systemd gdbus:libglib2.0-bin \
            udevadm:udev corosync:corosync corosync-quorumtool:corosync \
            pacemakerd:pacemaker crm_mon:pacemaker-cli-utils; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
[ -e /usr/lib/x86_64-linux-gnu/libcpg.so.4 ] || need_apt+=(libcpg4)
# pacemaker (with pacemaker-cli-utils: 32 packages, about 26 MB installed, on Debian 12) for
# tests/system/test_pacemaker.py, which skips without it.
# corosync's client libraries and libqb for building the C libcpg client of the libqb tests
# (tests/system/cpg_c_client.c) and checking the rings against libqb100 (docs/libqb.md).
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
for pkg in libqb-dev libcpg-dev libquorum-dev libvotequorum-dev libcmap-dev libcfg-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Nothing this script installs may start: Debian's maintainer scripts ask policy-rc.d(8)
    # (through invoke-rc.d and deb-systemd-invoke) and exit 101 means "not now". The tests run their
    # own corosync copies inside namespaces; a corosync (or anything else) already running on this
    # machine is never stopped. An existing policy-rc.d is left alone: it decides already.
    policy=/usr/sbin/policy-rc.d
    made_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# cmanlk scripts/setup.sh: no service starts during its apt-get install\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        made_policy=yes
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # corosync and pacemaker were installed just now (each is in need_apt only when it was
    # missing) and never ran: keep them from starting at the next boot, corosync with Debian's
    # single-node loopback file, too. `disable` without --now stops nothing.
    case " ${need_apt[*]} " in
        *" corosync "*) systemctl disable corosync.service >/dev/null 2>&1 || true ;;
    esac
    case " ${need_apt[*]} " in
        *" pacemaker "*) systemctl disable pacemaker.service >/dev/null 2>&1 || true ;;
    esac
    if [ "$made_policy" = yes ]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test,fast]'
