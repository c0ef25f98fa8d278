#!/usr/bin/env bash
# ferry's headline job, end to end, on a throwaway local topology this script sets up and tears down:
#
#   2 Redis masters  <-  nutcracker (twemproxy, ketama/fnv1a_64)  <-  a few thousand mixed keys
#   ferry sync --source twemproxy:<its config> --target redis://<target> --once
#   then: source key counts (sum of the masters) vs the target's, every key compared, samples printed.
#
# Installs redis-server/redis-tools/nutcracker with apt-get when missing, builds ferry in release mode.
# Everything runs on free loopback ports in a temp dir; all processes are killed by PID on exit, even
# when ferry fails. Exits non-zero when the target does not hold exactly the sources' data.
#
#   bash scripts/demo.sh            # DEMO_KEYS=3000 by default
#   DEMO_KEYS=20000 bash scripts/demo.sh
#   DEMO_KEEP=1 bash scripts/demo.sh   # keep the temp dir (configs, logs) for a look afterwards
#   FERRY_BIN=/path/to/ferry bash scripts/demo.sh   # use that binary instead of building one
#   bash scripts/demo.sh --cluster   # the target is a 3-master Redis Cluster (cluster://…) instead
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
KEYS=${DEMO_KEYS:-3000}
CLUSTER=0
[[ "${1:-}" == "--cluster" ]] && CLUSTER=1

if [[ -t 1 ]]; then
  say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '\n==> %s\n' "$*"; }
fi

say "dependencies"
bash scripts/install-deps.sh
command -v python3 >/dev/null || { echo "error: python3 is needed to generate and check data" >&2; exit 1; }

if [[ -n "${FERRY_BIN:-}" ]]; then
  FERRY=$FERRY_BIN
  say "using ferry at $FERRY (FERRY_BIN; not building)"
else
  say "building ferry (cargo build --release)"
  cargo build --release --quiet
  FERRY="${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry"
fi
[[ -x "$FERRY" ]] || { echo "error: $FERRY was not built" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ferry-demo.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "${DEMO_KEEP:-0}" == 1 ]]; then
    echo "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ping() { # port what logfile
  for _ in $(seq 1 200); do
    [[ "$(redis-cli -p "$1" PING 2>/dev/null)" == PONG ]] && return 0
    sleep 0.05
  done
  echo "error: $2 on port $1 did not answer PING; log:" >&2
  tail -20 "$3" >&2 || true
  exit 1
}

start_redis() { # name [extra redis-server args…] -> PORT
  local name=$1 port
  shift
  port=$(free_port)
  mkdir -p "$WORK/$name"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/$name" --logfile "$WORK/$name/redis.log" \
    --save "" --appendonly no --daemonize no "$@" </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  wait_ping "$port" "redis-server $name" "$WORK/$name/redis.log"
  PORT=$port
}

say "topology in $WORK"
start_redis m1
M1=$PORT
start_redis m2
M2=$PORT
if ((CLUSTER)); then
  NODES=()
  for i in 1 2 3; do
    start_redis "node$i" --cluster-enabled yes --cluster-config-file "$WORK/node$i/nodes.conf" \
      --cluster-port "$(free_port)" --cluster-node-timeout 2000
    NODES+=("127.0.0.1:$PORT")
  done
  redis-cli --cluster create "${NODES[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log" 2>&1 ||
    { cat "$WORK/cluster-create.log" >&2; exit 1; }
  for _ in $(seq 1 200); do
    ok=1
    for n in "${NODES[@]}"; do
      redis-cli -p "${n#*:}" CLUSTER INFO | grep -q cluster_state:ok || ok=0
    done
    ((ok)) && break
    sleep 0.1
  done
  T=${NODES[0]#*:}
  TARGET_URL="cluster://$(IFS=,; echo "${NODES[*]}")"
else
  start_redis target
  T=$PORT
  TARGET_URL="redis://127.0.0.1:$T"
fi
NC=$(free_port)
NC_STATS=$(free_port)
CONF="$WORK/nutcracker.yml"
cat >"$CONF" <<EOF
demo:
  listen: 127.0.0.1:$NC
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  timeout: 5000
  servers:
   - 127.0.0.1:$M1:1 m1
   - 127.0.0.1:$M2:1 m2
EOF
nutcracker -t -c "$CONF" >/dev/null 2>&1 || { nutcracker -t -c "$CONF"; exit 1; }
nutcracker -c "$CONF" -o "$WORK/nutcracker.log" -s "$NC_STATS" -a 127.0.0.1 </dev/null >/dev/null 2>&1 &
PIDS+=($!)
wait_ping "$NC" nutcracker "$WORK/nutcracker.log"
echo "  master m1      127.0.0.1:$M1"
echo "  master m2      127.0.0.1:$M2"
echo "  nutcracker     127.0.0.1:$NC  (config $CONF)"
echo "  target         $TARGET_URL   (empty)"

say "writing $KEYS mixed keys through nutcracker (strings, hashes, lists, sets, zsets; ~10% with a TTL)"
python3 - "$KEYS" >"$WORK/fill.txt" <<'EOF'
import sys
n = int(sys.argv[1])
kinds = ["string"] * 5 + ["hash"] * 2 + ["list", "set", "zset"]
for i in range(n):
    kind = kinds[i % len(kinds)]
    k = f"{kind}:{i}"
    if kind == "string":
        print(f"SET {k} value-{i}-{'x' * (i % 50)}")
    elif kind == "hash":
        print(f"HSET {k} name user{i} visits {i * 7} city c{i % 13}")
    elif kind == "list":
        print(f"RPUSH {k} " + " ".join(f"e{j}" for j in range(i % 20 + 1)))
    elif kind == "set":
        print(f"SADD {k} " + " ".join(f"m{j}" for j in range(i % 15 + 1)))
    else:
        print(f"ZADD {k} " + " ".join(f"{j * 1.5} z{j}" for j in range(i % 10 + 1)))
    if i % 10 == 3:
        print(f"EXPIRE {k} {3600 + i}")
EOF
redis-cli -p "$NC" <"$WORK/fill.txt" >"$WORK/fill.out"
if grep -q -E '^(ERR|\(error\))' "$WORK/fill.out"; then
  echo "error: some writes through nutcracker failed:" >&2
  grep -E '^(ERR|\(error\))' "$WORK/fill.out" | head >&2
  exit 1
fi
N1=$(redis-cli -p "$M1" DBSIZE)
N2=$(redis-cli -p "$M2" DBSIZE)
SRC=$((N1 + N2))
echo "  m1 holds $N1 keys, m2 holds $N2 keys: $SRC in all (nutcracker has no DBSIZE: counted on the masters)"

say "running ferry"
if "$FERRY" sync --help 2>/dev/null | grep -qi twemproxy; then
  FORM="twemproxy config"
  SOURCES=(--source "twemproxy:$CONF")
else
  FORM="one --source per master ('ferry sync --help' does not mention twemproxy)"
  SOURCES=(--source "redis://127.0.0.1:$M1" --source "redis://127.0.0.1:$M2")
fi
echo "  source form: $FORM"
echo "  \$ ferry sync ${SOURCES[*]} --target $TARGET_URL --once"
set +e
timeout 600 "$FERRY" sync "${SOURCES[@]}" --target "$TARGET_URL" --once
FRC=$?
set -e
if ((FRC != 0)); then
  echo "error: ferry exited with status $FRC" >&2
  exit 1
fi

say "checking the target"
if ((CLUSTER)); then
  # Every master's keys, without ferry's per-slot checkpoint keys (16384 per source master).
  TN=0
  for n in "${NODES[@]}"; do
    TN=$((TN + $(redis-cli -p "${n#*:}" DBSIZE)))
  done
  TN=$((TN - 2 * 16384))
else
  TN=$(redis-cli -p "$T" DBSIZE)
fi
echo "  source keys: $SRC (m1 $N1 + m2 $N2)   target keys: $TN"
CMP=0
python3 - "$T" "$M1" "$M2" <<'EOF' || CMP=1
# Compare every key of both masters with the target: type, value, and TTL presence/size.
import socket, sys

class C:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", int(port)))
        self.f = self.s.makefile("rb")
    def __call__(self, *args):
        try:
            return self.once(*args)
        except RuntimeError as e:
            # A cluster node answers MOVED <slot> <host:port> for a key it does not own: ask that node.
            if not str(e).startswith("MOVED "):
                raise
            port = str(e).split()[2].rsplit(":", 1)[1]
            return C(port).once(*args)
    def once(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self.read()
    def read(self):
        line = self.f.readline()[:-2]
        t, body = line[:1], line[1:]
        if t == b"+": return body.decode()
        if t == b"-": raise RuntimeError(body.decode())
        if t == b":": return int(body)
        if t == b"$":
            n = int(body)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(body)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

def value(c, k):
    t = c("TYPE", k)
    if t == "string": v = c("GET", k)
    elif t == "hash": v = sorted(c("HGETALL", k))
    elif t == "list": v = c("LRANGE", k, 0, -1)
    elif t == "set": v = sorted(c("SMEMBERS", k))
    elif t == "zset": v = c("ZRANGE", k, 0, -1, "WITHSCORES")
    else: v = None
    return t, v

target = C(sys.argv[1])
checked = bad = ttls = 0
for port in sys.argv[2:]:
    src = C(port)
    cursor = b"0"
    while True:
        cursor, keys = src("SCAN", cursor, "COUNT", 1000)
        for k in keys:
            checked += 1
            want, got = value(src, k), value(target, k)
            st, tt = src("TTL", k), target("TTL", k)
            if st > 0: ttls += 1
            ttl_ok = (st < 0 and tt == -1) or (st > 0 and tt > 0 and abs(st - tt) <= 60)
            if want != got or not ttl_ok:
                bad += 1
                if bad <= 5:
                    print(f"  MISMATCH {k.decode()}: source {want[0]} ttl {st}, target {got[0]} ttl {tt}")
        if cursor == b"0":
            break
print(f"  compared {checked} keys ({ttls} with a TTL): {checked - bad} equal, {bad} different")
sys.exit(1 if bad else 0)
EOF
echo "  samples on the target:"
echo "    GET string:0      -> $(redis-cli -c -p "$T" GET string:0)"
echo "    HGETALL hash:5    -> $(redis-cli -c -p "$T" HGETALL hash:5 | paste -sd' ')"
echo "    LRANGE list:7     -> $(redis-cli -c -p "$T" LRANGE list:7 0 -1 | paste -sd' ')"
echo "    ZRANGE zset:9     -> $(redis-cli -c -p "$T" ZRANGE zset:9 0 -1 WITHSCORES | paste -sd' ')"
echo "    TTL string:3      -> $(redis-cli -c -p "$T" TTL string:3)s"
if [[ "$TN" != "$SRC" ]]; then
  echo "FAILED: the target holds $TN keys, the sources $SRC" >&2
  exit 1
fi
if ((CMP)); then
  echo "FAILED: some keys differ between the sources and the target (see above)" >&2
  exit 1
fi
say "done: $TN of $SRC keys moved, every one equal (source form: $FORM)"
