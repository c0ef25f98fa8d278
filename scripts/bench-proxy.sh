#!/usr/bin/env bash
# `ferry proxy` against nutcracker on the same pool: redis-benchmark through each, side by side.
#
# One pool of BENCH_SERVERS masters (each pre-filled with BENCH_KEYS keys), described by one YAML file that
# both proxies read. nutcracker serves it on one port; `ferry proxy` serves it on another while it syncs the
# pool into a target (its normal state before a cutover: the sync is not stopped for the benchmark). The
# rounds alternate (nutcracker, ferry, nutcracker, …) so that drift in the machine hits both alike; the
# table gives each figure's median over BENCH_ROUNDS rounds. Not a test: figures only.
#
#   bash scripts/bench-proxy.sh
#   BENCH_CLIENTS=50 BENCH_PIPELINE=16 BENCH_N=2000000 BENCH_ROUNDS=3 bash scripts/bench-proxy.sh
#
# Needs redis-server, redis-benchmark, nutcracker (scripts/install-deps.sh), curl and cargo (unless
# FERRY_BIN is given).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVERS=${BENCH_SERVERS:-2}
KEYS=${BENCH_KEYS:-100000}
CLIENTS=${BENCH_CLIENTS:-50}
PIPELINE=${BENCH_PIPELINE:-16}
N=${BENCH_N:-2000000}
ROUNDS=${BENCH_ROUNDS:-3}
TESTS=${BENCH_TESTS:-set,get,incr}

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
    --daemonize no >"$dir/redis-$port.log" 2>&1 &
  pids+=($!)
  wait_ping "$port"
}

nut_port=$(free_port)
yaml="$dir/pool.yml"
printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n' "$nut_port" >"$yaml"
printf '  server_connections: 1\n  servers:\n' >>"$yaml"
for i in $(seq 1 "$SERVERS"); do
  p=$(free_port)
  start_redis "$p"
  redis-cli -p "$p" DEBUG POPULATE "$KEYS" "s$i" 64 >/dev/null 2>&1 || {
    # DEBUG is off by default on Redis 7+: fill with a pipe instead.
    python3 -c "
import sys
for k in range($KEYS):
    sys.stdout.write('SET s$i:%d %s\r\n' % (k, 'v' * 64))
" | redis-cli -p "$p" --pipe >/dev/null
  }
  printf '   - 127.0.0.1:%s:1 s%s\n' "$p" "$i" >>"$yaml"
done

nutcracker -c "$yaml" -s "$(free_port)" -a 127.0.0.1 -o "$dir/nutcracker.log" -p "$dir/nutcracker.pid" &
pids+=($!)
wait_ping "$nut_port"

target=$(free_port)
start_redis "$target"
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
echo "pool: $SERVERS servers x $KEYS keys; nutcracker on $nut_port, ferry proxy on $ferry_port (syncing into $target)"
echo "redis-benchmark -c $CLIENTS -P $PIPELINE -n $N -r 100000 -t $TESTS, $ROUNDS rounds each, alternating"

results="$dir/results.csv"
: >"$results"
for r in $(seq 1 "$ROUNDS"); do
  for who in nutcracker ferry; do
    port=$nut_port
    [[ $who == ferry ]] && port=$ferry_port
    redis-benchmark -p "$port" -c "$CLIENTS" -P "$PIPELINE" -n "$N" -r 100000 -t "$TESTS" --csv 2>/dev/null |
      tail -n +2 | sed "s/^/$who,$r,/" >>"$results"
  done
done

errors=$(curl -sf "http://127.0.0.1:$status/status" | python3 -c '
import json, sys
p = json.load(sys.stdin)["proxy"]
print(sum(p.get("backend_errors", {}).values()))' 2>/dev/null || echo "?")

python3 - "$results" "$errors" <<'EOF'
import csv, statistics, sys
rows = {}
for who, rnd, test, rps, avg, mn, p50, p95, p99, mx in csv.reader(open(sys.argv[1])):
    rows.setdefault((test, who), []).append((float(rps), float(p50), float(p99)))
tests = sorted({t for t, _ in rows}, key=lambda t: ["SET", "GET", "INCR"].index(t) if t in ["SET", "GET", "INCR"] else 9)
print()
print("| command | nutcracker ops/s | ferry proxy ops/s | ferry / nutcracker | nutcracker p50 / p99 ms | ferry p50 / p99 ms |")
print("|---|---|---|---|---|---|")
for t in tests:
    n = rows.get((t, "nutcracker"), [])
    f = rows.get((t, "ferry"), [])
    if not n or not f:
        continue
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"| {t} | {med(n,0):,.0f} | {med(f,0):,.0f} | {med(f,0)/med(n,0):.2f}x | "
          f"{med(n,1):.3f} / {med(n,2):.3f} | {med(f,1):.3f} / {med(f,2):.3f} |")
print()
print(f"(medians of {len(next(iter(rows.values())))} rounds; ferry proxy backend errors during the run: {sys.argv[2]})")
EOF
