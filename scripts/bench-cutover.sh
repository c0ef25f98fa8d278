#!/usr/bin/env bash
# The cutover's write pause under load: `ferry proxy` in front of a pool of BENCH_SERVERS masters (each
# pre-filled with BENCH_KEYS keys), redis-benchmark writing through the proxy (SET and INCR, pipelined), and
# `ferry cutover` in the middle of the load. Prints the proxy's throughput before the cutover (from its
# ops counter), the write pause ferry reports, and redis-benchmark's own summary. Not a test: figures only.
#
#   bash scripts/bench-cutover.sh
#   BENCH_CLIENTS=50 BENCH_PIPELINE=16 BENCH_N=4000000 bash scripts/bench-cutover.sh
#
# Needs redis-server, redis-benchmark (scripts/install-deps.sh) and cargo (unless FERRY_BIN is given).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVERS=${BENCH_SERVERS:-2}
KEYS=${BENCH_KEYS:-200000}
CLIENTS=${BENCH_CLIENTS:-50}
PIPELINE=${BENCH_PIPELINE:-16}
N=${BENCH_N:-4000000}
CUT_AFTER=${BENCH_CUT_AFTER:-5}

if [[ -z "${FERRY_BIN:-}" ]]; then
  cargo build --release -q
  FERRY_BIN=$(pwd)/target/release/ferry
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_redis() {
  local port=$1
  redis-server --port "$port" --save '' --appendonly no --dir "$dir" --repl-backlog-size 256mb \
    --enable-debug-command yes --daemonize no >"$dir/redis-$port.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$port" PING >/dev/null 2>&1; do sleep 0.05; done
}

yaml="$dir/pool.yml"
printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  servers:\n' \
  "$(free_port)" >"$yaml"
for i in $(seq 1 "$SERVERS"); do
  p=$(free_port)
  start_redis "$p"
  redis-cli -p "$p" DEBUG POPULATE "$KEYS" "s$i" 64 >/dev/null
  printf '   - 127.0.0.1:%s:1 s%s\n' "$p" "$i" >>"$yaml"
done
target=$(free_port)
start_redis "$target"
proxy=$(free_port)
status=$(free_port)
"$FERRY_BIN" proxy --source "twemproxy:$yaml" --target "redis://127.0.0.1:$target" \
  --listen "127.0.0.1:$proxy" --status "127.0.0.1:$status" --state-dir "$dir/state" \
  >"$dir/ferry.log" 2>&1 &
pids+=($!)
until redis-cli -p "$proxy" PING >/dev/null 2>&1; do sleep 0.05; done
until curl -sf "http://127.0.0.1:$status/status" | grep -q '"caught_up"'; do sleep 0.2; done
echo "pool synced: $SERVERS servers x $KEYS keys"

redis-benchmark -p "$proxy" -c "$CLIENTS" -P "$PIPELINE" -n "$N" -r 1000000 -t set,incr -q \
  >"$dir/bench.out" 2>&1 &
bench=$!
sleep "$CUT_AFTER"
ops() { curl -sf "http://127.0.0.1:$status/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["proxy"]["ops_total"])'; }
o1=$(ops); sleep 1; o2=$(ops)
echo "through the proxy before the cutover: $((o2 - o1)) ops/s"
"$FERRY_BIN" cutover "127.0.0.1:$status"
wait "$bench" || true
tr '\r' '\n' <"$dir/bench.out" | grep -E 'requests per second' || cat "$dir/bench.out"
grep -E 'cutover|ERROR' "$dir/ferry.log" | tail -5
