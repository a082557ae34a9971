#!/usr/bin/env bash
# A three-node cmanlk cluster on this machine, in about a minute:
#
#   ./scripts/demo.sh  (as root) [--duration SECONDS] [--no-setup] [--keep-logs]
#
# As root: three network namespaces joined by a bridge (veth pairs), one cmanlkd per namespace,
# transport udpu on 10.78.0.1-3. Without root: three daemons on 127.0.0.1, .2 and .3.
# The demo forms the ring, shows membership live, stops node 3 (SIGTERM: a clean leave), starts
# it again (it rejoins with a higher ring seq), kills node 2 with SIGKILL (a failure, detected
# after token + consensus), restarts it, then tears everything down — also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=60
SETUP=1
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        --no-setup) SETUP=0; shift ;;
        --keep-logs) KEEP=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$DURATION" in ''|*[!0-9]*) echo "demo.sh: --duration needs whole seconds" >&2; exit 2 ;; esac
[ "$DURATION" -ge 20 ] || { echo "demo.sh: --duration must be at least 20 s" >&2; exit 2; }

if [ "$SETUP" = 1 ]; then
    echo "== scripts/setup.sh (system packages and .venv)"
    ./scripts/setup.sh
fi
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || PY=$(command -v python3)

WORK=$(mktemp -d /tmp/cmanlk-demo.XXXXXX)
PREFIX="cmkdemo$$"
NODES="1 2 3"
declare -A PIDS=()
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then MODE=netns; else MODE=loopback; fi
START=$(date +%s)

say() { printf '\n\033[1m== [%3ss] %s\033[0m\n' "$(( $(date +%s) - START ))" "$*"; }

addr() {
    if [ "$MODE" = netns ]; then echo "10.78.0.$1"; else echo "127.0.0.$1"; fi
}

cleanup() {
    trap - EXIT INT TERM
    set +e
    for n in $NODES; do
        pid=${PIDS[$n]:-}
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    sleep 0.5
    for n in $NODES; do
        pid=${PIDS[$n]:-}
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [ "$MODE" = netns ]; then
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX" || true); do
            ip netns del "$ns" 2>/dev/null
        done
    fi
    if [ "$KEEP" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
    echo "demo: cleaned up"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

write_config() {
    local n=$1 f=$WORK/node$1.conf
    {
        printf 'totem {\n  version: 2\n  cluster_name: demo\n  transport: udpu\n'
        printf '  token: 1000\n  token_coefficient: 0\n}\n'
        printf 'nodelist {\n'
        for m in $NODES; do
            printf '  node {\n    ring0_addr: %s\n    nodeid: %s\n    name: node%s\n  }\n' "$(addr "$m")" "$m" "$m"
        done
        printf '}\nquorum {\n  provider: corosync_votequorum\n}\n'
        printf 'logging {\n  to_stderr: yes\n  timestamp: on\n}\n'
        printf 'cmanlk {\n  state_dir: %s/state%s\n  run_dir: %s/run%s\n}\n' "$WORK" "$n" "$WORK" "$n"
    } >"$f"
}

setup_network() {
    ip netns add "${PREFIX}sw"
    ip -n "${PREFIX}sw" link add br0 type bridge
    ip -n "${PREFIX}sw" link set br0 type bridge forward_delay 0
    ip -n "${PREFIX}sw" link set br0 up
    for n in $NODES; do
        ip netns add "${PREFIX}n$n"
        ip -n "${PREFIX}n$n" link set lo up
        ip -n "${PREFIX}n$n" link add eth0 type veth peer name "p$n" netns "${PREFIX}sw"
        ip -n "${PREFIX}sw" link set "p$n" master br0 up
        ip -n "${PREFIX}n$n" addr add "$(addr "$n")/24" dev eth0
        ip -n "${PREFIX}n$n" link set eth0 up
    done
}

start_node() {
    local n=$1
    local cmd=(env PYTHONPATH="$ROOT" "$PY" -m cmanlk.daemon -f -c "$WORK/node$n.conf")
    if [ "$MODE" = netns ]; then
        ip netns exec "${PREFIX}n$n" "${cmd[@]}" >>"$WORK/node$n.log" 2>&1 &
    else
        "${cmd[@]}" --nodeid "$n" >>"$WORK/node$n.log" 2>&1 &
    fi
    PIDS[$n]=$!
}

show_status() {
    "$PY" - "$WORK" $NODES <<'EOF'
import json, os, sys
work, nodes = sys.argv[1], sys.argv[2:]
for n in nodes:
    try:
        st = json.load(open(f"{work}/run{n}/status.json"))
    except (OSError, ValueError):
        print(f"  node {n}: (not running)")
        continue
    try:
        os.kill(st["pid"], 0)
    except ProcessLookupError:
        print(f"  node {n}: (not running)")
        continue
    print(f"  node {n}: {st['state']:<11} ring {st['ring_id']:<6} members {st['members']}"
          f"  quorate={st['quorate']}  pid {st['pid']}")
EOF
}

watch_for() {  # watch_for SECONDS: print status and new membership log lines each second
    local end=$(( $(date +%s) + $1 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        [ "$(( $(date +%s) - START ))" -lt "$DURATION" ] || return 1
        sleep 1
        for n in $NODES; do
            grep -h "new membership" "$WORK/node$n.log" 2>/dev/null | tail -n +$(( ${SEEN[$n]:-0} + 1 )) |
                sed "s/^/  node $n log: /" || true
            SEEN[$n]=$(grep -c "new membership" "$WORK/node$n.log" 2>/dev/null || true)
        done
        now=$(show_status)
        if [ "$now" != "${LAST_STATUS:-}" ]; then echo "$now"; LAST_STATUS=$now; fi
    done
}
LAST_STATUS=
declare -A SEEN=()

say "3-node cluster, mode $MODE, work dir $WORK (udpu, token 1000 ms)"
for n in $NODES; do write_config "$n"; done
[ "$MODE" = netns ] && setup_network
for n in $NODES; do start_node "$n"; done

say "forming the ring"
watch_for 5 || exit 0
say "stopping node 3 with SIGTERM: a clean leave (a leave JOIN), peers reform at once"
kill -TERM "${PIDS[3]}"; wait "${PIDS[3]}" || true; PIDS[3]=""
watch_for 4 || exit 0
say "starting node 3 again: it rejoins"
start_node 3
watch_for 5 || exit 0
say "killing node 2 with SIGKILL: a failure, detected after token + consensus (~2.2 s)"
echo "  until then nodes 1 and 3 cannot tell a dead node from a slow one: for about 2 s they still"
echo "  show the last agreed membership [1, 2, 3], quorate, as corosync does; then they re-form"
kill -KILL "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true; PIDS[2]=""
watch_for 6 || exit 0
say "starting node 2 again"
start_node 2
watch_for 5 || exit 0
say "final state"
show_status
say "cmanlk-tool status on node 1 (the local client API, $WORK/run1/cmanlk.sock)"
env PYTHONPATH="$ROOT" "$PY" -m cmanlk.client.cli -s "$WORK/run1/cmanlk.sock" status || true
say "node 1's log (last 8 lines)"
tail -n 8 "$WORK/node1.log"
