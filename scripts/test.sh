#!/usr/bin/env bash
# The whole test suite, as CI runs it (`bash .ci/run` execs this):
#   1. installs redis-server, redis-tools and nutcracker with apt-get when missing (Debian, as root),
#   2. provisions the other Redis/Valkey versions into .cache/redis/ (scripts/redis-versions.sh; cached),
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test --all-targets (unit + integration),
#   4. lists every test that skipped (a missing server version, fixtures folder or fixed port): each skip
#      is a `SKIP <test>: <reason>` line the tests append to $FERRY_SKIP_LOG (support::skip in
#      tests/integration/support/mod.rs, src/testutil.rs); under CI=true any skip fails the run,
# failing fast at the first failure (the skip list is printed even when cargo test failed).
#
# Environment:
#   FERRY_TEST_QUICK=1        skip fmt and clippy (developer loop); `--quick` does the same
#   FERRY_REQUIRE_VERSIONS    `1`/`all` or a comma list: those versions must be provisioned and tests that
#                             need them panic instead of skipping. Defaults, when CI=true, to every version
#                             proven to provision on Debian 12 (REQUIRED_IN_CI below).
#   FERRY_REQUIRE_FIXTURES    `1`: the shared fixtures folder (../shared/fixtures, or FERRY_FIXTURES) must
#                             exist; tests that read it panic instead of skipping. Defaults to 1 when CI=true.
#   FERRY_SKIP_LOG            always set here, to a fresh file (see 4.); not read from the caller.
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
if [[ "${CI:-}" == true && -z "${FERRY_REQUIRE_FIXTURES:-}" ]]; then
  export FERRY_REQUIRE_FIXTURES=1
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
FERRY_SKIP_LOG="$(mktemp "${TMPDIR:-/tmp}/ferry-skips.XXXXXX")"
export FERRY_SKIP_LOG
trap 'rm -f "$FERRY_SKIP_LOG"' EXIT
step "cargo test --all-targets $*${FERRY_REQUIRE_FIXTURES:+ (fixtures required)}"
test_rc=0
cargo test --all-targets "$@" || test_rc=$?

step "skipped tests"
skips=$(grep -c '^SKIP ' "$FERRY_SKIP_LOG" || true)
if [[ "$skips" == 0 ]]; then
  echo "    none"
else
  echo "    $skips skip(s):"
  sed 's/^/    /' "$FERRY_SKIP_LOG"
fi
if [[ "$test_rc" != 0 ]]; then
  echo "FAILED: cargo test (above)" >&2
  exit 1
fi
if [[ "$skips" != 0 && "${CI:-}" == true ]]; then
  echo "FAILED: $skips skip(s) under CI=true: CI runs every test (provision the versions, provide the fixtures, free the port)" >&2
  exit 1
fi

step "all passed in $((SECONDS - t0))s"
