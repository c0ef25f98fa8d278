#!/usr/bin/env bash
# The randomized soak (tests/integration/soak.rs) over many seeds: every topology with every seed in
# FROM..TO (default 1..201), in batches, continuing after a failure, then a summary with the seeds that
# failed. Replay one with: FERRY_SOAK_SEEDS=<seed> cargo test --test integration soak::
#
#   bash scripts/soak.sh [FROM [TO [BATCH]]]      e.g. bash scripts/soak.sh 1 201 10
#   FERRY_SOAK_STEPS=20 bash scripts/soak.sh      longer fault schedules (default 10 steps per seed)
#
# Needs what scripts/test.sh installs (redis-server 7.0 with DEBUG, nutcracker). Logs go to
# target/soak/<batch>.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
from=${1:-1}
to=${2:-201}
batch=${3:-10}
if [[ -f .cache/redis/versions.env ]]; then
  set -a
  # shellcheck disable=SC1091
  source .cache/redis/versions.env
  set +a
fi
mkdir -p target/soak
cargo test --test integration --no-run -q || exit 1
failed=()
t0=$SECONDS
for ((s = from; s < to; s += batch)); do
  e=$((s + batch < to ? s + batch : to))
  log="target/soak/${s}-${e}.log"
  if FERRY_SOAK_SEEDS="${s}..${e}" cargo test -q --test integration soak:: -- --test-threads 1 >"$log" 2>&1; then
    printf 'seeds %s..%s: ok (%ss)\n' "$s" "$((e - 1))" "$((SECONDS - t0))"
  else
    seeds=$(grep -o 'SOAK FAILURE seed=[0-9]*' "$log" | sort -u | sed 's/.*=//' | tr '\n' ' ')
    printf 'seeds %s..%s: FAILED (seeds: %s) — see %s\n' "$s" "$((e - 1))" "${seeds:-unknown}" "$log"
    failed+=("${seeds:-$s..$e}")
  fi
done
runs=$(((to - from) * 4))
if ((${#failed[@]})); then
  echo "soak: ${runs} runs (4 topologies x seeds ${from}..$((to - 1))), FAILED: ${failed[*]}"
  exit 1
fi
echo "soak: ${runs} runs (4 topologies x seeds ${from}..$((to - 1))), all exact, $((SECONDS - t0)) s"
