#!/usr/bin/env bash
# The container's entrypoint (also runs as is outside one): `engram serve "$@"`, after
# waiting for Redis when the store is a Redis Cluster, so that a node started beside its
# cluster (docker compose) does not fail on a cluster still forming.
#
# ENGRAM_BIN               the engram binary (default: `engram` on PATH)
# ENGRAM_REDIS_WAIT_SECS   how long to wait for Redis (default 120); past it, exit 1
# The rest of the configuration is engram's own ENGRAM_<SECTION>__<KEY> variables;
# ENGRAM_STORE__BACKEND and ENGRAM_STORE__REDIS_URLS are read here too.
set -euo pipefail

log() { echo "entrypoint: $*" >&2; }

bin=${ENGRAM_BIN:-engram}
command -v "$bin" >/dev/null || { log "no engram binary: $bin"; exit 1; }

# host and port of a redis:// or rediss:// URL ([user:password@]host[:port][/db]).
host_port() {
    local rest=${1#*://}
    rest=${rest%%/*}
    rest=${rest##*@}
    case $rest in
    \[*\]:*) echo "${rest%:*} ${rest##*:}" ;; # [v6]:port
    \[*\]) echo "$rest 6379" ;;
    *:*) echo "${rest%:*} ${rest##*:}" ;;
    *) echo "$rest 6379" ;;
    esac
}

# With redis-cli: the node says its cluster is ok. Without it (the image does not ship
# it): the port accepts connections.
redis_ready() {
    local url=$1 host port
    if command -v redis-cli >/dev/null; then
        local info
        info=$(timeout 3 redis-cli -u "$url" cluster info 2>/dev/null) || return 1
        [[ $info == *cluster_state:ok* ]]
    else
        read -r host port <<<"$(host_port "$url")"
        host=${host#[}
        host=${host%]}
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
    fi
}

if [ "${ENGRAM_STORE__BACKEND:-}" = redis-cluster ]; then
    [ -n "${ENGRAM_STORE__REDIS_URLS:-}" ] || { log "ENGRAM_STORE__BACKEND=redis-cluster needs ENGRAM_STORE__REDIS_URLS"; exit 1; }
    IFS=, read -r -a urls <<<"$ENGRAM_STORE__REDIS_URLS"
    wait_secs=${ENGRAM_REDIS_WAIT_SECS:-120}
    deadline=$((SECONDS + wait_secs))
    next=0
    # Any one seed node will do: engram learns the others from it.
    any_ready() {
        local url
        for url in "${urls[@]}"; do redis_ready "$url" && return 0; done
        return 1
    }
    until any_ready; do
        if [ $SECONDS -ge $deadline ]; then
            seeds=$(for url in "${urls[@]}"; do host_port "$url" | tr ' ' :; done | paste -sd, -)
            log "Redis ($seeds) not ready after ${wait_secs}s"
            exit 1
        fi
        if [ $SECONDS -ge $next ]; then
            log "waiting for Redis..."
            next=$((SECONDS + 10))
        fi
        sleep 1
    done
    log "Redis is ready"
fi

exec "$bin" serve "$@"
