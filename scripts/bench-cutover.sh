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

# shellcheck source=scripts/lib/proxy-bench.sh
source scripts/lib/proxy-bench.sh
make_pool "$(free_port)"
target=$(free_port)
start_redis "$target"
start_ferry_proxy "$target"
echo "pool synced: $SERVERS servers x $KEYS keys"

redis-benchmark -p "$ferry_port" -c "$CLIENTS" -P "$PIPELINE" -n "$N" -r 1000000 -t set,incr -q \
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
