#!/usr/bin/env bash
# The whole test suite, as CI runs it (`bash .ci/run` execs this):
#   1. installs redis-server, redis-tools and nutcracker with apt-get when missing (Debian, as root),
#   2. provisions the other Redis/Valkey versions into .cache/redis/ (scripts/redis-versions.sh; cached),
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test --all-targets (unit + integration),
# failing fast at the first failure.
#
# Environment:
#   FERRY_TEST_QUICK=1        skip fmt and clippy (developer loop); `--quick` does the same
#   FERRY_REQUIRE_VERSIONS    `1`/`all` or a comma list: those versions must be provisioned and tests that
#                             need them panic instead of skipping. Defaults, when CI=true, to every version
#                             proven to provision on Debian 12 (REQUIRED_IN_CI below).
#   CARGO_TARGET_DIR          honoured as usual.
#   Extra arguments after the options are passed to `cargo test` (e.g. `bash scripts/test.sh -- smoke`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every version scripts/redis-versions.sh provisioned and verified on Debian 12 from a fresh clone with an
# empty pip cache (see README).
REQUIRED_IN_CI="5.0,6.0,6.2,7.0,7.2,7.4,8.2,valkey-8,valkey-9"

QUICK="${FERRY_TEST_QUICK:-0}"
if [[ "${1:-}" == --quick ]]; then
  QUICK=1
  shift
fi

t0=$SECONDS
step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }

# --- 1. system packages -----------------------------------------------------------------------------
step "system packages (scripts/install-deps.sh)"
bash scripts/install-deps.sh
for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done

# --- 2. other server versions -----------------------------------------------------------------------
if [[ "${CI:-}" == true && -z "${FERRY_REQUIRE_VERSIONS:-}" ]]; then
  export FERRY_REQUIRE_VERSIONS="$REQUIRED_IN_CI"
fi
step "provisioning Redis/Valkey versions into .cache/redis (scripts/redis-versions.sh; cached)${FERRY_REQUIRE_VERSIONS:+, required: $FERRY_REQUIRE_VERSIONS}"
bash scripts/redis-versions.sh
set -a
# shellcheck disable=SC1091
source .cache/redis/versions.env
set +a
env | grep '^FERRY_REDIS_' | sort | sed 's/^/    /' || echo "    (no extra server version available)"

# --- 3. lints and tests -----------------------------------------------------------------------------
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [[ "$QUICK" != 1 ]]; then
  step "cargo fmt --all -- --check"
  cargo fmt --all -- --check || {
    echo "FAILED: formatting differs (diff above); run: cargo fmt --all" >&2
    exit 1
  }
  step "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings || {
    echo "FAILED: clippy warnings (above)" >&2
    exit 1
  }
else
  step "FERRY_TEST_QUICK=1: skipping fmt and clippy"
fi
step "cargo test --all-targets $*"
cargo test --all-targets "$@" || {
  echo "FAILED: cargo test (above)" >&2
  exit 1
}

step "all passed in $((SECONDS - t0))s"
