#!/usr/bin/env bash
# `make cluster` / `make cluster-stop`: engram as a cluster on one machine, to try the
# redis-cluster store backend by hand.
#
#   engram-cluster.sh start   a Redis Cluster (3 masters, 3 replicas, ports 7000-7005, in
#                             data/cluster, by docker/redis-cluster.sh), then two engram
#                             nodes on 127.0.0.1:8081 and :8082 sharing it; waits until
#                             both answer /readyz with 200
#   engram-cluster.sh stop    the engram nodes (SIGTERM: they finish what is in flight),
#                             then the Redis Cluster
#
# Each node's pid and log: data/cluster/engram-<port>.pid and .log; its node-local files
# in data/node-<port>. Paths are taken from the repository root, where engram also finds
# models/.
#
# ENGRAM_BIN       the engram binary (default ${CARGO_TARGET_DIR:-target}/release/engram)
# ENGRAM_VENV      the venv holding libtorch (default .venv): its torch/lib goes on
#                  LD_LIBRARY_PATH, for a binary whose venv (named in its rpath) moved
# ENGRAM_READY_SECS  how long to wait for /readyz (default 300: the models load first)
set -euo pipefail

log() { echo "engram-cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A given ENGRAM_BIN is taken from where we were started (a bare name from PATH).
case ${ENGRAM_BIN:-} in
"") ;;
*/*) ENGRAM_BIN=$(realpath -m "$ENGRAM_BIN") ;;
*) ENGRAM_BIN=$(command -v "$ENGRAM_BIN" || echo "$ENGRAM_BIN") ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
STATE=$ROOT/data/cluster
NODES=(8081 8082)
REDIS_BASE=7000
READY_SECS=${ENGRAM_READY_SECS:-300}
ENGRAM_BIN=${ENGRAM_BIN:-$(realpath -m "${CARGO_TARGET_DIR:-target}/release/engram")}

# Alive and not a zombie (a node that died while this script is its parent is one).
running() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# The pid in PIDFILE when that process is alive and is an `engram serve`.
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] && running "$pid" || return 0
    if [ -r "/proc/$pid/cmdline" ]; then
        [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *" serve"* ]] || return 0
    fi
    echo "$pid"
}

log_tail() {
    log "the end of $STATE/engram-$1.log:"
    tail -n 30 "$STATE/engram-$1.log" >&2 2>/dev/null || true
}

use_venv_libtorch() {
    local lib
    for lib in "${ENGRAM_VENV:-.venv}"/lib/python3*/site-packages/torch/lib; do
        [ -d "$lib" ] || continue
        LD_LIBRARY_PATH=$(realpath "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        export LD_LIBRARY_PATH
        return
    done
}

start_node() {
    local port=$1 pidfile="$STATE/engram-$1.pid"
    if [ -n "$(live_pid "$pidfile")" ]; then
        log "node $port is running already (pid $(cat "$pidfile"))"
        return
    fi
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
        die "something already answers on 127.0.0.1:$port"
    fi
    mkdir -p "$ROOT/data/node-$port"
    # Its own session (setsid): a Ctrl-C on `make cluster` while it waits leaves the nodes
    # running, to be stopped by `make cluster-stop`. The child writes its own pid, which
    # is right whether or not setsid had to fork.
    local detach=()
    command -v setsid >/dev/null && detach=(setsid)
    ENGRAM_SERVER__BIND="127.0.0.1:$port" \
        ENGRAM_STORE__BACKEND=redis-cluster \
        ENGRAM_STORE__REDIS_URLS="$URLS" \
        ENGRAM_STORE__DATA_DIR="$ROOT/data/node-$port" \
        "${detach[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$ENGRAM_BIN" serve \
        </dev/null >>"$STATE/engram-$port.log" 2>&1 &
    log "node $port starting (log: data/cluster/engram-$port.log)"
}

wait_ready() {
    local start=$SECONDS next=$((SECONDS + 10)) port out code pending
    sleep 0.5 # the pidfiles
    while :; do
        pending=()
        for port in "${NODES[@]}"; do
            if [ -z "$(live_pid "$STATE/engram-$port.pid")" ]; then
                log_tail "$port"
                die "engram node $port exited (make cluster-stop stops the rest)"
            fi
            out=$(curl -s --max-time 5 -w '\n%{http_code}' "http://127.0.0.1:$port/readyz" || true)
            code=${out##*$'\n'}
            out=${out%$'\n'*}
            [ "$code" = 200 ] || pending+=("$port: ${out:-no answer yet}")
        done
        [ ${#pending[@]} -gt 0 ] || return 0
        if [ $SECONDS -ge $((start + READY_SECS)) ]; then
            for port in "${NODES[@]}"; do log_tail "$port"; done
            die "not ready after ${READY_SECS}s: ${pending[*]} (still running: make cluster-stop stops them)"
        fi
        if [ $SECONDS -ge $next ]; then
            out="$((SECONDS - start))s, waiting for /readyz of ${pending[*]}"
            log "${out:0:300}"
            next=$((SECONDS + 10))
        fi
        sleep 1
    done
}

cmd_start() {
    [ -x "$ENGRAM_BIN" ] || die "no engram binary at $ENGRAM_BIN: build it (make cluster does)"
    command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
    use_venv_libtorch
    local missing
    missing=$(ldd "$ENGRAM_BIN" 2>/dev/null | grep 'not found' || true)
    [ -z "$missing" ] || die "$ENGRAM_BIN cannot find libtorch (set ENGRAM_VENV to the venv it was built with): $missing"
    mkdir -p "$STATE"
    URLS=$(bash docker/redis-cluster.sh start "$STATE" "$REDIS_BASE" 3 1 | tail -n 1)
    log "Redis Cluster up: $URLS"
    local port
    for port in "${NODES[@]}"; do start_node "$port"; done
    wait_ready
    log "ready; stop with: make cluster-stop"
    for port in "${NODES[@]}"; do echo "http://127.0.0.1:$port"; done
}

cmd_stop() {
    local port pid pids=()
    for port in "${NODES[@]}"; do
        pid=$(live_pid "$STATE/engram-$port.pid")
        [ -z "$pid" ] || pids+=("$pid")
    done
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping engram (pids ${pids[*]})"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # engram gives requests in flight server.shutdown_grace_secs (30) to finish.
        local deadline=$((SECONDS + 40)) left
        while :; do
            left=()
            for pid in "${pids[@]}"; do running "$pid" && left+=("$pid"); done
            [ ${#left[@]} -gt 0 ] || break
            if [ $SECONDS -ge $deadline ]; then
                log "killing ${left[*]}: still running 40 s after SIGTERM"
                # Each node leads its own process group (setsid): its children go too.
                for pid in "${left[@]}"; do kill -KILL -- "-$pid" "$pid" 2>/dev/null || true; done
                break
            fi
            sleep 0.2
        done
    fi
    for port in "${NODES[@]}"; do rm -f "$STATE/engram-$port.pid"; done
    bash docker/redis-cluster.sh stop "$STATE"
    log "stopped"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
*) die "usage: $0 start|stop" ;;
esac
