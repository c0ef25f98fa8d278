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

# shellcheck source=scripts/lib/proxy-bench.sh
source scripts/lib/proxy-bench.sh
nut_port=$(free_port)
make_pool "$nut_port"
nutcracker -c "$yaml" -s "$(free_port)" -a 127.0.0.1 -o "$dir/nutcracker.log" -p "$dir/nutcracker.pid" &
pids+=($!)
wait_ping "$nut_port"
target=$(free_port)
start_redis "$target"
start_ferry_proxy "$target"
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
