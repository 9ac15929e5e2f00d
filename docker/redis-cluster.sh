#!/usr/bin/env bash
# A Redis Cluster on loopback, for `make cluster` and the tests of the redis-cluster store
# backend (tests/common/cluster.rs runs this script):
#
#   redis-cluster.sh start DIR BASE_PORT [MASTERS=3] [REPLICAS_PER_MASTER=1]
#   redis-cluster.sh stop DIR
#   redis-cluster.sh urls DIR
#
# `start` runs MASTERS*(1+REPLICAS) redis-server daemons on ports BASE_PORT.., one folder
# DIR/<port> each (config, nodes.conf, append-only files, pid, log), forms the cluster if
# it is not formed yet (a restart on an existing DIR only starts what is not running),
# waits until every node says cluster_state:ok and every replica is linked to its master,
# and prints the nodes' URLs, comma-separated, on the last line of stdout (everything else
# goes to stderr). It installs redis-server with apt when missing.
#
# Durability: appendfsync always, so a write a master acknowledged is on its disk.
# Failover: cluster-node-timeout is 2000 ms (REDIS_CLUSTER_NODE_TIMEOUT overrides it), so a
# killed master is replaced by its replica within a few seconds. REDIS_CLUSTER_WAIT_SECS
# (default 60) bounds the wait for a ready cluster.
set -euo pipefail

NODE_TIMEOUT=${REDIS_CLUSTER_NODE_TIMEOUT:-2000}
WAIT_SECS=${REDIS_CLUSTER_WAIT_SECS:-60}
declare -A LOG_SIZE=() # per port: its log's size before this start, to read only what is new
STARTED=()             # the ports this start started, stopped again if it fails

log() { echo "redis-cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# One command to one node; a node that hangs must not hang us.
cli() {
    local port=$1
    shift
    timeout "${CLI_TIMEOUT:-5}" redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r' || true
}

# The value of `field:` in the output of `cli PORT CMD...` (INFO or CLUSTER INFO).
field() {
    local name=$1 port=$2
    shift 2
    cli "$port" "$@" | sed -n "s/^$name://p"
}

ensure_redis() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "redis-server is not installed and this is not root (and there is no sudo): install the redis-server package"
        sudo=(sudo)
    fi
    # The lock timeout lets parallel test processes queue behind one installer.
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300)
    log "redis-server is missing: installing it with apt-get"
    "${apt[@]}" install redis-server >&2 ||
        { "${apt[@]}" update >&2 && "${apt[@]}" install redis-server >&2; } ||
        die "could not install redis-server with apt-get"
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        die "redis-server was installed, but redis-server or redis-cli is not on PATH ($PATH)"
    # Debian may start its own redis on 6379 now: nothing here uses it.
}

# The pid in PIDFILE when that process is alive and is the redis-server of PORT
# (pids are reused after a kill -9 leaves a stale pidfile); nothing otherwise.
live_pid() {
    local pidfile=$1 port=$2 pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    running "$pid" || return 0
    if [ -r "/proc/$pid/cmdline" ]; then
        # redis-server retitles itself "redis-server 127.0.0.1:PORT [cluster]".
        local title
        title=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
        [[ $title == redis-server*:"$port "* ]] || return 0
    fi
    echo "$pid"
}

# Alive and not a zombie (a container whose init does not reap would keep those).
running() {
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/stat" ]; then
        local stat
        stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
        stat=${stat##*) }
        [ "${stat%% *}" != Z ] || return 1
    fi
}

fail_node() {
    local port=$1
    shift
    log "error: $* (node $port); the end of $DIR/$port/redis.log:"
    tail -n 20 "$DIR/$port/redis.log" >&2 2>/dev/null || true
    exit 1
}

# The ports of the nodes set up in DIR, in order.
ports_in() {
    local d
    for d in "$1"/*/redis.conf; do
        [ -e "$d" ] || continue
        d=${d%/redis.conf}
        d=${d##*/}
        [[ $d =~ ^[0-9]+$ ]] && echo "$d"
    done | sort -n
}

urls_of() {
    local port out=()
    for port in "$@"; do out+=("redis://127.0.0.1:$port"); done
    (
        IFS=,
        echo "${out[*]}"
    )
}

write_config() {
    local port=$1 d=$2
    cat >"$d/redis.conf" <<EOF
# Written by docker/redis-cluster.sh (rewritten at every start).
port $port
bind 127.0.0.1
protected-mode no
daemonize yes
dir "$d"
pidfile "$d/redis.pid"
logfile "$d/redis.log"
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $NODE_TIMEOUT
appendonly yes
appendfsync always
save ""
# A replica that (re)joins syncs at once instead of waiting 5 s for company.
repl-diskless-sync-delay 0
EOF
}

start_node() {
    local port=$1 d="$DIR/$1"
    mkdir -p "$d"
    if [ -n "$(live_pid "$d/redis.pid" "$port")" ]; then
        return
    fi
    rm -f "$d/redis.pid"
    if [ "$(CLI_TIMEOUT=1 cli "$port" ping)" = PONG ]; then
        die "port $port already answers Redis, but not from $d: pick another BASE_PORT"
    fi
    write_config "$port" "$d"
    LOG_SIZE[$port]=$(wc -c 2>/dev/null <"$d/redis.log" || echo 0)
    STARTED+=("$port")
    redis-server "$d/redis.conf" >&2 || fail_node "$port" "redis-server did not start"
}

# Daemonized redis-server returns before it listens: wait until the node answers, from
# the right folder (not some other server on that port).
await_node() {
    local port=$1 deadline=$((SECONDS + 10))
    while :; do
        # A node that cannot listen (port taken) says so in its log and exits; ask the
        # log first, as whatever holds the port may never answer.
        if tail -c +$((${LOG_SIZE[$port]:-0} + 1)) "$DIR/$port/redis.log" 2>/dev/null | grep -q 'aborting\|Fatal'; then
            fail_node "$port" "the node exited"
        fi
        [ "$(CLI_TIMEOUT=1 cli "$port" config get dir | sed -n 2p)" != "$DIR/$port" ] || return 0
        [ $SECONDS -lt $deadline ] || fail_node "$port" "the node does not answer"
        sleep 0.1
    done
}

# Why the cluster is not ready yet (empty when it is).
not_ready() {
    local port info view repl replicas=0
    for port in "${PORTS[@]}"; do
        [ -n "$(live_pid "$DIR/$port/redis.pid" "$port")" ] || { echo "dead:$port"; return; }
        info=$(cli "$port" cluster info)
        grep -q '^cluster_state:ok' <<<"$info" || { echo "node $port: cluster_state is not ok"; return; }
        grep -q "^cluster_known_nodes:${#PORTS[@]}\$" <<<"$info" || { echo "node $port does not know every node yet"; return; }
        # Every node's view agrees: all the replicas known as such, nobody failing.
        view=$(cli "$port" cluster nodes | awk '{print $3}')
        grep -q 'fail\|handshake\|noaddr' <<<"$view" && { echo "node $port still sees a node failing"; return; }
        [ "$(grep -c 'slave' <<<"$view")" -eq "$WANT_REPLICAS" ] || { echo "node $port does not see every replica yet"; return; }
        repl=$(cli "$port" info replication)
        if grep -q '^role:slave' <<<"$repl"; then
            grep -q '^master_link_status:up' <<<"$repl" || { echo "replica $port is not linked to its master"; return; }
            replicas=$((replicas + 1))
        fi
    done
    [ "$replicas" -eq "$WANT_REPLICAS" ] || echo "$replicas replicas, want $WANT_REPLICAS"
}

cmd_start() {
    [ $# -ge 2 ] && [ $# -le 4 ] || die "usage: $0 start DIR BASE_PORT [MASTERS=3] [REPLICAS_PER_MASTER=1]"
    local base=$2 masters=${3:-3} replicas=${4:-1} port
    [[ $base =~ ^[0-9]+$ && $masters =~ ^[0-9]+$ && $replicas =~ ^[0-9]+$ ]] || die "BASE_PORT, MASTERS and REPLICAS must be numbers"
    [ "$masters" -ge 3 ] || die "Redis Cluster needs at least 3 masters"
    local n=$((masters * (1 + replicas)))
    # Each node also listens on its port + 10000 (the cluster bus).
    [ "$base" -ge 1024 ] && [ $((base + n - 1 + 10000)) -le 65535 ] || die "ports $base..$((base + n - 1)) (and +10000 for the cluster bus) must lie in 1024..65535"
    ensure_redis
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd -P)
    trap 'rc=$?; [ $rc -eq 0 ] || stop_started; exit $rc' EXIT
    [[ $DIR != *'"'* ]] || die "DIR must not contain a double quote"
    PORTS=()
    for ((port = base; port < base + n; port++)); do PORTS+=("$port"); done
    WANT_REPLICAS=$((masters * replicas))
    local existing
    existing=$(ports_in "$DIR" | tr '\n' ' ')
    if [ -n "$existing" ] && [ "$existing" != "${PORTS[*]} " ]; then
        die "$DIR holds a cluster on ports ${existing% }, not ${PORTS[*]}: start it with the same arguments, or stop it and remove $DIR"
    fi

    for port in "${PORTS[@]}"; do start_node "$port"; done
    sleep 0.1
    for port in "${PORTS[@]}"; do await_node "$port"; done

    # Blank nodes know only themselves and hold no slots; a formed cluster's nodes (also
    # after a restart: nodes.conf) know each other.
    local blank=0
    for port in "${PORTS[@]}"; do
        if [ "$(field cluster_known_nodes "$port" cluster info)" = 1 ] &&
            [ "$(field cluster_slots_assigned "$port" cluster info)" = 0 ]; then
            blank=$((blank + 1))
        fi
    done
    if [ "$blank" -eq "$n" ]; then
        log "forming the cluster: $masters masters, $replicas replica(s) each"
        local addrs=()
        for port in "${PORTS[@]}"; do addrs+=("127.0.0.1:$port"); done
        if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes \
            </dev/null >"$DIR/cluster-create.log" 2>&1; then
            tail -n 20 "$DIR/cluster-create.log" >&2
            die "redis-cli --cluster create failed (all of its output: $DIR/cluster-create.log)"
        fi
    elif [ "$blank" -ne 0 ]; then
        die "$DIR is half a cluster ($blank of $n nodes are blank): stop it and remove $DIR"
    fi

    local deadline=$((SECONDS + WAIT_SECS)) why
    while why=$(not_ready) && [ -n "$why" ]; do
        [[ $why != dead:* ]] || fail_node "${why#dead:}" "the node exited"
        if [ $SECONDS -ge $deadline ]; then
            port=$(grep -o '[0-9]\+' <<<"$why" | head -n 1)
            fail_node "${port:-${PORTS[0]}}" "the cluster was not ready after ${WAIT_SECS}s: $why"
        fi
        sleep 0.2
    done
    log "cluster ready in $DIR"
    urls_of "${PORTS[@]}"
}

# SIGTERM to each pid, SIGKILL to those still running 10 s later.
terminate() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$((SECONDS + 10)) pid left
    while :; do
        left=()
        for pid in "$@"; do running "$pid" && left+=("$pid"); done
        [ ${#left[@]} -gt 0 ] || return 0
        if [ $SECONDS -ge $deadline ]; then
            log "killing ${left[*]}: still running 10 s after SIGTERM"
            kill -KILL "${left[@]}" 2>/dev/null || true
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
}

# A failed start stops the nodes it started, so that nothing outlives a caller that
# gives up (a test removing its temporary DIR).
stop_started() {
    local port pid pids=()
    for port in ${STARTED[@]+"${STARTED[@]}"}; do
        pid=$(live_pid "$DIR/$port/redis.pid" "$port")
        [ -z "$pid" ] || pids+=("$pid")
    done
    [ ${#pids[@]} -eq 0 ] || log "stopping the nodes this start started"
    terminate ${pids[@]+"${pids[@]}"}
}

cmd_stop() {
    [ $# -eq 1 ] || die "usage: $0 stop DIR"
    [ -d "$1" ] || return 0
    local pidfile port pid pids=()
    while IFS= read -r pidfile; do
        port=$(basename "$(dirname "$pidfile")")
        pid=$(live_pid "$pidfile" "$port")
        [ -z "$pid" ] || pids+=("$pid")
    done < <(find "$1" -name redis.pid 2>/dev/null)
    terminate ${pids[@]+"${pids[@]}"}
    find "$1" -name redis.pid -delete 2>/dev/null || true
}

cmd_urls() {
    [ $# -eq 1 ] || die "usage: $0 urls DIR"
    local ports
    ports=$(ports_in "$1")
    [ -n "$ports" ] || die "no cluster in $1"
    # shellcheck disable=SC2086
    urls_of $ports
}

case "${1:-}" in
start | stop | urls)
    cmd=$1
    shift
    "cmd_$cmd" "$@"
    ;;
*) die "usage: $0 start DIR BASE_PORT [MASTERS=3] [REPLICAS_PER_MASTER=1] | stop DIR | urls DIR" ;;
esac
