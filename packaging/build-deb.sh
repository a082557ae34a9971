#!/usr/bin/env bash
# Builds the cmanlk .deb with the standard tools (dpkg-buildpackage + debhelper) from a
# clean copy of the tracked tree. Prints the path of the .deb. Usage: packaging/build-deb.sh [OUTDIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/dist}
mkdir -p "$out"
if ! command -v dh >/dev/null 2>&1 || ! dpkg -s python3-pip >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        debhelper dpkg-dev python3-pip python3-setuptools python3-wheel fakeroot >/dev/null
fi
work=$(mktemp -d /tmp/cmanlk-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/cmanlk-0.1.0"
mkdir -p "$src"
# Only what git tracks (or would track): no venv, no caches.
(cd "$top" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$src/" 2>/dev/null || true)
cp -r "$top/packaging/debian" "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { tail -40 "$work/build.log" >&2; exit 1; }
deb=$(ls "$work"/cmanlk_*.deb)
cp "$deb" "$out/"
echo "$out/$(basename "$deb")"
