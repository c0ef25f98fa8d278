# Shared by scripts/bench-proxy.sh and scripts/bench-cutover.sh (sourced, not run): the ferry binary, a
# temp dir, processes killed by PID on exit, free loopback ports, redis-server started and awaited, and a
# pool of $SERVERS masters pre-filled with $KEYS keys each, described in "$dir/pool.yml" (listen $1).

if [[ -z "${FERRY_BIN:-}" ]]; then
  cargo build --release -q
  FERRY_BIN=$(pwd)/target/release/ferry
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() {
  local port=$1 deadline=$((SECONDS + 30))
  until redis-cli -p "$port" PING >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "port $port never answered PING" >&2; exit 1; }
    sleep 0.05
  done
}
start_redis() {
  local port=$1
  redis-server --port "$port" --save '' --appendonly no --dir "$dir" --repl-backlog-size 256mb \
    --enable-debug-command yes --daemonize no >"$dir/redis-$port.log" 2>&1 &
  pids+=($!)
  wait_ping "$port"
}
# make_pool LISTEN_PORT: start the pool's servers, fill them, write "$dir/pool.yml".
make_pool() {
  local listen=$1 i p
  yaml="$dir/pool.yml"
  printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n' "$listen" >"$yaml"
  printf '  server_connections: 1\n  servers:\n' >>"$yaml"
  for i in $(seq 1 "$SERVERS"); do
    p=$(free_port)
    start_redis "$p"
    redis-cli -p "$p" DEBUG POPULATE "$KEYS" "s$i" 64 >/dev/null
    printf '   - 127.0.0.1:%s:1 s%s\n' "$p" "$i" >>"$yaml"
  done
}
# start_ferry_proxy TARGET_PORT: `ferry proxy` on the pool into that target; sets ferry_port and status,
# returns once the sync caught up.
start_ferry_proxy() {
  local target=$1 deadline
  ferry_port=$(free_port)
  status=$(free_port)
  "$FERRY_BIN" proxy --source "twemproxy:$yaml" --target "redis://127.0.0.1:$target" \
    --listen "127.0.0.1:$ferry_port" --status "127.0.0.1:$status" --state-dir "$dir/state" \
    >"$dir/ferry.log" 2>&1 &
  pids+=($!)
  wait_ping "$ferry_port"
  deadline=$((SECONDS + 120))
  until curl -sf "http://127.0.0.1:$status/status" | grep -q '"caught_up"'; do
    ((SECONDS < deadline)) || { echo "ferry proxy never caught up; log:" >&2; tail -20 "$dir/ferry.log" >&2; exit 1; }
    sleep 0.2
  done
}
