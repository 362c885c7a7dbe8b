#!/usr/bin/env bash
# End-to-end benchmark: an application's TCP traffic between two "machines" (network namespaces
# on one veth pair), three ways in the same run, against the same server processes and ports:
#
#   direct  no capture rules: the client reaches the server directly;
#   relay   the capture rules `meshd redirect install` writes, pointed at a plain two-hop TCP
#           relay without encryption (HAProxy in TCP mode on each side; the client-side one
#           passes the original destination on with the PROXY protocol);
#   meshd   the same rules pointed at meshd: client meshd → HBONE (mTLS) → server meshd.
#
# Usage (Linux, as root, from the repository root):  benches/e2e/run.sh
# Environment: RUNS (default 3), BULK_SECONDS (10), CONNECTS (2000), ROUND_TRIPS (20000),
# HELD (1000; `max` for as many as the open-file hard limit lets each process hold: the limit
# less 1 000, and half that through HAProxy, which holds two descriptors a connection),
# HOLD_PROCESSES (client processes sharing the held connections; default one per 5 000),
# SETTLE (30), RESULTS (file for the raw figures; default a temporary file),
# NO_BUILD=1 to use the release binaries already built, MESHD=path to measure another meshd
# binary (an allocator variant), PHASES (default "idle cold connect hold rr bulk": which
# measurements to take), PROFILE=heaptrack|perf|strace to run both meshd processes under that
# profiler (heap profiles, perf call graphs or timestamped system calls land in PROFILE_DIR,
# default /tmp/meshd-profile; the figures of a profiled run are not comparable with an
# unprofiled one), PROFILE=counts for system calls, sleeps, packets, HTTP/2 frames and TLS
# records per 1 KiB round trip of both proxies in the rr phase (profile.sh; FRAME_TRIPS),
# PROFILE=smaps for where each meshd's anonymous memory is after the hold phase (profile.sh),
# WORKER_THREADS=N to set both meshd's `workerThreads` (default: meshd's own
# default; HAProxy runs one thread a side).
# It installs iperf3 and haproxy with apt-get when they are missing. Addresses: 10.214.0.0/24
# inside its own namespaces only; everything it creates is removed on exit, also on failure.
set -euo pipefail

RUNS=${RUNS:-3}
BULK_SECONDS=${BULK_SECONDS:-10}
CONNECTS=${CONNECTS:-2000}
ROUND_TRIPS=${ROUND_TRIPS:-20000}
HELD=${HELD:-1000}
SETTLE=${SETTLE:-30}
PHASES=" ${PHASES:-idle cold connect hold rr bulk} "
PROFILE=${PROFILE:-}
PROFILE_DIR=${PROFILE_DIR:-/tmp/meshd-profile}
WORKER_THREADS=${WORKER_THREADS:-}
phase() { [[ $PHASES == *" $1 "* ]]; }
# shellcheck source=benches/e2e/profile.sh
. "$(dirname "$0")/profile.sh"

CLIENT_IP=10.214.0.1
SERVER_IP=10.214.0.2
# The server-side relay's own address: it listens on the tunnel port 15008, which the capture
# rules never redirect (as meshd's HBONE), next to the server meshd on SERVER_IP:15008.
RELAY_IP=10.214.0.3
ECHO_PORT=7000
IPERF_PORT=5201
RELAY_PORT=15101

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[[ $(id -u) == 0 ]] || { echo "run as root: it creates network namespaces" >&2; exit 1; }

need() { # program package
    command -v "$1" >/dev/null && return
    echo "installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null
}
need iperf3 iperf3
need haproxy haproxy
need nft nftables
need ip iproute2
need ss iproute2

# Room for the held connections in every process (HAProxy refuses to start without room for
# its maxconn); children inherit it.
ulimit -Sn "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -Hn)
[[ $FD_LIMIT == unlimited ]] && FD_LIMIT=$(cat /proc/sys/fs/nr_open)
if [[ $HELD == max ]]; then
    # meshd holds one descriptor per tunnelled connection on each side (plus one per 100 for
    # the HBONE connections); the echo server one; 1 000 left for everything else.
    HELD=$((FD_LIMIT - 1000))
    RELAY_HELD=$(((FD_LIMIT - 1000) / 2))
else
    RELAY_HELD=$HELD
fi
HOLD_PROCESSES=${HOLD_PROCESSES:-$(((HELD + 4999) / 5000))}
RELAY_MAXCONN=$((RELAY_HELD + 200))

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${NO_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --locked -p meshd -p meshd-bench-e2e >&2)
fi
MESHD=${MESHD:-$TARGET/release/meshd}
TOOL=$TARGET/release/meshd-bench

WORK=$(mktemp -d /tmp/meshd-bench.XXXXXX)
RESULTS=${RESULTS:-$WORK/log/results.txt}
mkdir -p "$WORK/log"
: >"$RESULTS"
NS_C=meshd-bench-c-$$
NS_S=meshd-bench-s-$$
PIDS=()

cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    ip netns del "$NS_C" 2>/dev/null
    ip netns del "$NS_S" 2>/dev/null
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_c() { ip netns exec "$NS_C" "$@"; }
in_s() { ip netns exec "$NS_S" "$@"; }

# --- two machines on one link -------------------------------------------------------------
ip netns add "$NS_C"
ip netns add "$NS_S"
ip -n "$NS_C" link set lo up
ip -n "$NS_S" link set lo up
ip -n "$NS_C" link add veth0 type veth peer name veth0 netns "$NS_S"
ip -n "$NS_C" addr add $CLIENT_IP/24 dev veth0
ip -n "$NS_S" addr add $SERVER_IP/24 dev veth0
ip -n "$NS_S" addr add $RELAY_IP/24 dev veth0
ip -n "$NS_C" link set veth0 up
ip -n "$NS_S" link set veth0 up
# Tens of thousands of short connections per run to one destination: widen the port range and
# let TIME_WAIT ports be reused (both per namespace).
for ns in "$NS_C" "$NS_S"; do
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
done

# --- identities and configuration ---------------------------------------------------------
"$MESHD" ca init --trust-domain cluster.local --out "$WORK/ca" >/dev/null
"$MESHD" ca issue --ca "$WORK/ca" --namespace shop --service-account web --out "$WORK/tls-web" >/dev/null
"$MESHD" ca issue --ca "$WORK/ca" --namespace shop --service-account db --out "$WORK/tls-db" >/dev/null
# The mesh directory sits alone in its parent: meshd also watches the parent (to see the
# directory replaced), and today it reloads on any change there, a log file's included.
mkdir -p "$WORK/etc/mesh" "$WORK/log"
cat >"$WORK/etc/mesh/mesh.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: $CLIENT_IP, serviceAccount: web, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: shop}
spec: {address: $SERVER_IP, serviceAccount: db, labels: {app: db}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
EOF
node_config() { # file sa workload ip outbound-port
    cat >"$1" <<EOF
configDir: $WORK/etc/mesh
identity: {spiffeHelper: {dir: $WORK/tls-$2}}
local: {workloads: [$3]}
listen:
  hbone: $4:15008
  outbound: 0.0.0.0:15001
  admin: 127.0.0.1:15000  # loopback of its namespace: admin refuses other addresses
  metrics: $4:15020
  readiness: $4:15021
redirect: {outboundPort: $5}
EOF
    if [[ -n $WORKER_THREADS ]]; then echo "workerThreads: $WORKER_THREADS" >>"$1"; fi
}
node_config "$WORK/client.yaml" web shop/web $CLIENT_IP 15001
node_config "$WORK/server.yaml" db shop/db $SERVER_IP 15001
# Only its `redirect:` section is used: the same rules, redirecting to the client-side relay.
node_config "$WORK/relay-rules.yaml" web shop/web $CLIENT_IP $RELAY_PORT

# One thread per HAProxy and no idle-timer heuristics: with its defaults (a thread per CPU) its
# 1 KiB request/response rate fell to ~800/s in a trial on a busy 2-core machine.
cat >"$WORK/haproxy-client.cfg" <<EOF
global
    maxconn $RELAY_MAXCONN
    nbthread 1
    tune.idletimer 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend capture
    bind 0.0.0.0:$RELAY_PORT
    default_backend tunnel
backend tunnel
    server peer $RELAY_IP:15008 send-proxy
EOF
cat >"$WORK/haproxy-server.cfg" <<EOF
global
    maxconn $RELAY_MAXCONN
    nbthread 1
    tune.idletimer 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend tunnel
    bind $RELAY_IP:15008 accept-proxy
    default_backend app
backend app
    # 0.0.0.0 without a port: the destination the PROXY header carries (the original one).
    server app 0.0.0.0
EOF

# --- processes ----------------------------------------------------------------------------
start() { # variable-name log netns command...
    local var=$1 log=$2 ns=$3
    shift 3
    ip netns exec "$ns" "$@" >"$WORK/log/$log.out" 2>"$WORK/log/$log.err" &
    PIDS+=($!)
    printf -v "$var" %s $!
}
stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local kept=() pid
    for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
}
wait_for() { # file text what
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return
        sleep 0.1
    done
    echo "$3 did not start; its log:" >&2
    cat "${1%.out}.err" >&2
    exit 1
}
wait_port() { # netns ip:port
    for _ in $(seq 300); do
        [[ -n $(ip netns exec "$1" ss -Htln "sport = :${2##*:}") ]] && return
        sleep 0.1
    done
    echo "nothing listens on $2 in $1" >&2
    exit 1
}
# The profiler wrapping meshd, if any: its output goes to PROFILE_DIR/<side>.<run>.
profiler() { # side run
    case $PROFILE in
        "") ;;
        heaptrack) echo heaptrack -o "$PROFILE_DIR/heaptrack.$1.$2" ;;
        perf) echo perf record -F 999 -g --call-graph dwarf,16384 -o "$PROFILE_DIR/perf.$1.$2.data" -- ;;
        strace) echo strace -f -ttt -T -o "$PROFILE_DIR/strace.$1.$2" -- ;;
        counts | smaps) ;; # they attach to the running processes (profile.sh)
        *) echo "PROFILE=$PROFILE: expected heaptrack, perf, strace, counts or smaps" >&2; exit 1 ;;
    esac
}
# Under a profiler the started process is the profiler; the measured one is its meshd child.
meshd_pid() { # wrapper-pid config
    [[ -z $PROFILE || $PROFILE == counts || $PROFILE == smaps ]] && { echo "$1"; return; }
    for _ in $(seq 100); do
        local pid
        pid=$(pgrep -n -f "^$MESHD run --config $2\$" || true)
        [[ -n $pid ]] && { echo "$pid"; return; }
        sleep 0.1
    done
    echo "no meshd under the profiler for $2" >&2
    exit 1
}
start_meshd() { # run
    mkdir -p "$PROFILE_DIR"
    # shellcheck disable=SC2046 # the profiler's words
    start WRAP_S meshd-server "$NS_S" $(profiler server "$1") "$MESHD" run --config "$WORK/server.yaml"
    # shellcheck disable=SC2046
    start WRAP_C meshd-client "$NS_C" $(profiler client "$1") "$MESHD" run --config "$WORK/client.yaml"
    wait_for "$WORK/log/meshd-server.out" "meshd ready" "server meshd"
    wait_for "$WORK/log/meshd-client.out" "meshd ready" "client meshd"
    MESHD_S=$(meshd_pid "$WRAP_S" "$WORK/server.yaml")
    MESHD_C=$(meshd_pid "$WRAP_C" "$WORK/client.yaml")
}
stop_meshd() { # the profiler writes its output once meshd exits
    # Under heaptrack, SIGKILL: meshd frees nothing on the way out, so the profile's "leaked"
    # allocations are the ones live at the end of the last phase (after `hold`'s SETTLE).
    local signal=TERM
    [[ $PROFILE == heaptrack ]] && signal=KILL
    kill -s $signal "$MESHD_C" "$MESHD_S" 2>/dev/null || true
    stop "$WRAP_C"
    stop "$WRAP_S"
    # heaptrack's script names its pipe after its own pid and, stopped, leaves it behind.
    [[ $PROFILE == heaptrack ]] && rm -f "/tmp/heaptrack_fifo$WRAP_C" "/tmp/heaptrack_fifo$WRAP_S"
    return 0
}
start_relay() {
    start HAPROXY_S haproxy-server "$NS_S" haproxy -db -f "$WORK/haproxy-server.cfg"
    start HAPROXY_C haproxy-client "$NS_C" haproxy -db -f "$WORK/haproxy-client.cfg"
    wait_port "$NS_S" $RELAY_IP:15008
    wait_port "$NS_C" 0.0.0.0:$RELAY_PORT
}

mode() { # direct|relay|meshd: which capture rules are installed in the client namespace
    case $1 in
        direct) in_c "$MESHD" redirect uninstall >/dev/null ;;
        relay) in_c "$MESHD" redirect install --config "$WORK/relay-rules.yaml" >/dev/null ;;
        meshd) in_c "$MESHD" redirect install --config "$WORK/client.yaml" >/dev/null ;;
    esac
}
pids_of() { # mode: the proxies' processes, as NAME=PID
    case $1 in
        relay) echo "client=$HAPROXY_C,server=$HAPROXY_S" ;;
        meshd) echo "client=$MESHD_C,server=$MESHD_S" ;;
        *) echo "" ;;
    esac
}
record() { # run mode prefix: files the tool's `key value` lines
    while read -r key value; do
        echo "$1 $2 $3$key $value" >>"$RESULTS"
    done
}

start ECHO echo "$NS_S" "$TOOL" echo --listen $SERVER_IP:$ECHO_PORT
start IPERF iperf3 "$NS_S" iperf3 -s -B $SERVER_IP -p $IPERF_PORT
wait_for "$WORK/log/echo.out" "echo listening" "echo server"
wait_port "$NS_S" $SERVER_IP:$IPERF_PORT

ECHO_ADDR=$SERVER_IP:$ECHO_PORT
for run in $(seq "$RUNS"); do
    echo "run $run of $RUNS" >&2
    # Fresh proxies each run: idle memory and the first connection are measured on them.
    start_meshd "$run"
    start_relay
    sleep 1
    if phase idle; then
        for m in relay meshd; do
            for side in client server; do
                pid=$(pids_of $m | tr ',' '\n' | grep "^$side=" | cut -d= -f2)
                "$TOOL" rss "$pid" | sed "s/^rss_kib/rss_kib.$side/" | record "$run" $m idle.
            done
        done
    fi
    if phase cold; then
        for m in meshd relay direct; do
            mode $m
            in_c "$TOOL" connect --to $ECHO_ADDR --count 1 | record "$run" $m cold.
        done
    fi
    if phase connect; then
        for m in direct relay meshd; do
            mode $m
            in_c "$TOOL" connect --to $ECHO_ADDR --count "$CONNECTS" | record "$run" $m connect.
            if [[ $m == meshd ]]; then
                n=$(in_c ss -Htn state established "dst $SERVER_IP:15008" | wc -l)
                echo "connections $n" | record "$run" $m hbone.
            fi
        done
    fi
    if phase hold; then
        for m in relay meshd; do
            mode $m
            held=$HELD
            [[ $m == relay ]] && held=$RELAY_HELD
            [[ $PROFILE == smaps && $m == meshd ]] && smaps_save "$run.before"
            in_c "$TOOL" hold --to $ECHO_ADDR --count "$held" --processes "$HOLD_PROCESSES" \
                --pids "$(pids_of $m)" --settle "$SETTLE" | record "$run" $m hold.
            [[ $PROFILE == smaps && $m == meshd ]] && smaps_save "$run.after"
        done
    fi
    if phase rr; then
        for m in direct relay meshd; do
            mode $m
            counting=
            [[ $PROFILE == counts && $m != direct ]] && counting=1
            [[ -n $counting ]] && counts_start $m
            pids=$(pids_of $m)
            in_c "$TOOL" rr --to $ECHO_ADDR --count "$ROUND_TRIPS" --size 1024 \
                ${pids:+--pids "$pids"} | record "$run" $m rr.
            [[ -n $counting ]] && counts_stop "$run" $m "$ROUND_TRIPS"
            [[ -n $counting && $m == meshd ]] && counts_frames "$run"
        done
    fi
    if phase bulk; then
        for m in direct relay meshd; do
            mode $m
            pids=$(pids_of $m)
            for p in 1 8; do
                in_c "$TOOL" bulk --to $SERVER_IP:$IPERF_PORT --seconds "$BULK_SECONDS" --parallel $p \
                    ${pids:+--pids "$pids"} | record "$run" $m "bulk$p."
            done
        done
    fi
    mode direct
    stop_meshd; stop "$HAPROXY_C"; stop "$HAPROXY_S"
done

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
"$TOOL" report "$RESULTS"
if [[ $RESULTS == $WORK/* ]]; then
    cp "$RESULTS" /tmp/meshd-bench-results.txt
    echo "raw figures: /tmp/meshd-bench-results.txt" >&2
fi
