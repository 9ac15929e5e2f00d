#!/usr/bin/env bash
# `make bench-cluster`: the same load against one engram node on sled (the embedded
# default), one node on a Redis Cluster, and two nodes on that cluster; then the
# write-to-visible-elsewhere delay between the two nodes, and the memory a node uses per
# 100,000 memories (sled: the whole store's index at start; cluster: one scope's cache,
# loaded by its first search). Everything runs on loopback under a temporary directory
# and is stopped on exit.
#
# ENGRAM_BIN   the engram binary (default ${CARGO_TARGET_DIR:-target}/release/engram)
# CLIENTS      concurrent clients per run (default 4)
# RUN_SECS     seconds per run (default 20)
# MIX          operation mix (default search=3,add=1: the store's work, no generation)
# SEARCH_MODE  hybrid (default), dense or lexical (no query embedding: the store's share)
# SEED         memories seeded into each run's scope first (default 2000)
# CACHE_N      memories for the memory figure (default 100000; 0 skips it)
# SLED_MEMORY  1 (default) also measures sled's memory for CACHE_N memories (its import
#              builds the graph one batch at a time: minutes); 0 skips it
# REDIS_BASE   first of six Redis ports (default 7100)
set -euo pipefail

cd "$(dirname "$0")/.."
ENGRAM_BIN=$(realpath -m "${ENGRAM_BIN:-${CARGO_TARGET_DIR:-target}/release/engram}")
CLIENTS=${CLIENTS:-4}
RUN_SECS=${RUN_SECS:-20}
MIX=${MIX:-search=3,add=1}
SEARCH_MODE=${SEARCH_MODE:-hybrid}
SEED=${SEED:-2000}
CACHE_N=${CACHE_N:-100000}
SLED_MEMORY=${SLED_MEMORY:-1}
REDIS_BASE=${REDIS_BASE:-7100}
PYTHON=${PYTHON:-python3}

WORK=$(mktemp -d /tmp/engram-bench-cluster.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    bash docker/redis-cluster.sh stop "$WORK/redis" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "== $*" >&2; }

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# start_node PORT DATA_DIR [ENV=VALUE...]: an engram node in the background; its pid in NODE_PID.
start_node() {
    local port=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    env ENGRAM_SERVER__BIND="127.0.0.1:$port" ENGRAM_STORE__DATA_DIR="$dir" RUST_LOG=warn "$@" \
        "$ENGRAM_BIN" serve >"$WORK/node-$port.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    local i
    for i in $(seq 600); do
        if curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then return; fi
        kill -0 "$NODE_PID" 2>/dev/null || { tail -n 20 "$WORK/node-$port.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "node $port not ready" >&2
    exit 1
}

stop_node() {
    kill -TERM "$1"
    wait "$1" 2>/dev/null || true
}

load() {
    "$ENGRAM_BIN" bench load --clients "$CLIENTS" --seconds "$RUN_SECS" --mix "$MIX" --search-mode "$SEARCH_MODE" --seed-memories "$SEED" "$@"
}

say "Redis Cluster (3 masters, 3 replicas) on $REDIS_BASE-$((REDIS_BASE + 5))"
URLS=$(bash docker/redis-cluster.sh start "$WORK/redis" "$REDIS_BASE" 3 1 | tail -n 1)
CLUSTER=(ENGRAM_STORE__BACKEND=redis-cluster ENGRAM_STORE__REDIS_URLS="$URLS")

say "1 node, sled"
start_node 8181 "$WORK/sled"
SLED=$NODE_PID
load --url http://127.0.0.1:8181 --user sled-run --server-pid "$SLED"
stop_node "$SLED"

say "1 node, redis-cluster"
start_node 8182 "$WORK/a" "${CLUSTER[@]}"
A=$NODE_PID
load --url http://127.0.0.1:8182 --user one-node --server-pid "$A"

say "2 nodes, redis-cluster (clients alternate between them)"
start_node 8183 "$WORK/b" "${CLUSTER[@]}" RUST_LOG=info
B=$NODE_PID
load --url http://127.0.0.1:8182,http://127.0.0.1:8183 --user two-nodes --visibility-probes 100

if [ "$CACHE_N" -gt 0 ]; then
    say "memory per $CACHE_N memories"
    "$PYTHON" bench/memories_jsonl.py --n "$CACHE_N" --user cache-probe >"$WORK/memories.jsonl"
    started=$(date +%s.%N)
    env "${CLUSTER[@]}" RUST_LOG=warn "$ENGRAM_BIN" store import --input "$WORK/memories.jsonl" >/dev/null
    echo "imported $CACHE_N into the cluster in $(since "$started") s"
    before=$(rss_kib "$B")
    started=$(date +%s.%N)
    curl -sf -o /dev/null -H 'content-type: application/json' \
        -d '{"user_id":"cache-probe","query":"kalo mine","k":10}' http://127.0.0.1:8183/v1/memories/search
    loaded=$(since "$started")
    # The scope is searchable now (exactly); its graph is built in the background.
    for _ in $(seq 1200); do
        grep -q "a bulk insert is in the graph" "$WORK/node-8183.log" && break
        sleep 0.5
    done
    graphed=$(since "$started")
    after=$(rss_kib "$B")
    echo "cluster node: first search of the scope answered after $loaded s, its graph complete after $graphed s; RSS $((before / 1024)) MiB -> $((after / 1024)) MiB: +$(((after - before) / 1024)) MiB for $CACHE_N memories"
    stop_node "$A"
    stop_node "$B"
fi

if [ "$CACHE_N" -gt 0 ] && [ "$SLED_MEMORY" = 1 ]; then
    start_node 8184 "$WORK/empty"
    empty=$(rss_kib "$NODE_PID")
    stop_node "$NODE_PID"
    started=$(date +%s.%N)
    RUST_LOG=warn "$ENGRAM_BIN" store import --data-dir "$WORK/full" --input "$WORK/memories.jsonl" >/dev/null
    echo "imported $CACHE_N into sled in $(since "$started") s"
    start_node 8185 "$WORK/full"
    full=$(rss_kib "$NODE_PID")
    echo "sled node at ready: empty store $((empty / 1024)) MiB, $CACHE_N memories $((full / 1024)) MiB: +$(((full - empty) / 1024)) MiB"
fi
