#!/usr/bin/env bash
# End-to-end benchmark: ferry's full sync against the physical limits, measured in ONE run on this machine.
#
#   1. dataset    BENCH_MASTERS masters x BENCH_KEYS keys: 60 % short strings, the rest small hashes, lists,
#                 sets and zsets (5-20 elements), BENCH_BIG 1000-element ones, 10 % with a TTL far in the future;
#                 written as RESP by a python generator and loaded with `redis-cli --pipe` (not timed)
#   2. ferry      `ferry sync --source <each master> --target <fresh> --once`: wall time, peak RSS, key count
#   2b. master    (stage `master`) `ferry sync ... --apply replication --once`: ferry as the target's master, the
#                 target loads one merged RDB natively; wall time, peak RSS, key count, sampled values
#   3. replication native REPLICAOF of each master into a fresh redis-server, one after the other
#                 (until master_link_status:up, master_sync_in_progress:0, loading:0): sum and max
#   4. rdbload    each master's dump.rdb loaded by a fresh redis-server at start-up (until loading:0): sum
#   5. pipe       every key dumped as `RESTORE key pttl payload` (not timed), then `redis-cli --pipe` of all
#                 masters' files in sequence into ONE fresh target: the floor for any loader that writes commands
#   6. cluster    a fresh 3-master Redis Cluster (redis-cli --cluster create, no replicas) as the target:
#                 `ferry sync --source <each master> --target cluster://<the 3 nodes> --once` (wall time, peak RSS,
#                 keys without ferry's 16384 checkpoint keys per source), then on another fresh cluster the floor:
#                 every key as RESTORE, split by slot owner into one file per node (all masters' keys in each;
#                 not timed), and the 3 files' `redis-cli --pipe` into their nodes AT ONCE (wall time until the last)
#   7. ratios     ferry / native replication, ferry / pipe floor, ferry / native RDB load, ferry's peak RSS;
#                 cluster ferry / standalone ferry, cluster ferry / cluster pipe floor
#   8. stream     (BENCH_STREAM=1) end-to-end lag under a redis-benchmark write load, ferry beside a native replica
#
# Prints a table and writes the raw numbers as JSON lines to $BENCH_OUT/e2e-<UTC date-time>.json.
# Needs bash, python3 (stdlib only), redis-server/redis-cli/redis-benchmark (installed by
# scripts/install-deps.sh when missing) and cargo (unless FERRY_BIN is given).
#
#   bash scripts/bench-e2e.sh                                  # 2 masters x 2,000,000 keys
#   BENCH_KEYS=200000 bash scripts/bench-e2e.sh                # a quick run
#   BENCH_MASTERS=1 bash scripts/bench-e2e.sh                  # the single-master (1.5x replication) case
#   BENCH_STREAM=1 bash scripts/bench-e2e.sh                   # plus the incremental-lag stage
#   BENCH_STAGES=ferry,cluster bash scripts/bench-e2e.sh       # standalone vs cluster target only
#
# Knobs (environment):
#   BENCH_MASTERS=2          masters (each gets its own key prefix; the target receives their union)
#   BENCH_KEYS=2000000       keys per master
#   BENCH_BIG=20             1000-element collections per master (part of BENCH_KEYS)
#   BENCH_VERIFY=2000        random keys per master whose values are compared after ferry's sync (not timed)
#   BENCH_STAGES=ferry,master,replication,rdbload,pipe,cluster   which measurements to run (the dataset is always made)
#   BENCH_STREAM=0           1 adds the `stream` stage
#   BENCH_STREAM_N=3000000   redis-benchmark -n (requests per test; tests: set, lpush, incr)
#   BENCH_STREAM_SAMPLE_MS=2   pause between lag probes
#   BENCH_DISKLESS=yes       the masters' repl-diskless-sync (yes|no); repl-diskless-sync-delay is always 0
#   BENCH_TIMEOUT=900        seconds any one timed step may take before it counts as failed
#   BENCH_OUT=target/bench-e2e   where the JSON lines go
#   BENCH_KEEP=0             1 keeps the temp dir (logs, RESP files) for a look afterwards
#   FERRY_BIN=path           use that ferry binary instead of `cargo build --release`
#   FERRY_ARGS="..."         extra arguments for `ferry sync` (e.g. "--connections 8")
#   CARGO_TARGET_DIR         honoured by the build and for finding the binary
#
# Every server and ferry run on free loopback ports in a temp dir and are killed by PID on exit, also on failure
# or Ctrl-C. When the ferry stage fails, the other stages still run and are reported, and the script exits 1;
# any other failure stops the run with a message naming the stage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

MASTERS=${BENCH_MASTERS:-2}
KEYS=${BENCH_KEYS:-2000000}
BIG=${BENCH_BIG:-20}
VERIFY=${BENCH_VERIFY:-2000}
STAGES=${BENCH_STAGES:-ferry,master,replication,rdbload,pipe,cluster}
[[ "${BENCH_STREAM:-0}" == 1 ]] && STAGES+=",stream"
STREAM_N=${BENCH_STREAM_N:-3000000}
STREAM_SAMPLE_MS=${BENCH_STREAM_SAMPLE_MS:-2}
DISKLESS=${BENCH_DISKLESS:-yes}
TIMEOUT=${BENCH_TIMEOUT:-900}
OUTDIR=${BENCH_OUT:-target/bench-e2e}
read -r -a FERRY_EXTRA <<<"${FERRY_ARGS:-}"

for v in MASTERS KEYS BIG VERIFY STREAM_N STREAM_SAMPLE_MS TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "error: BENCH_$v must be a number (got '${!v}')" >&2; exit 2; }
done
((MASTERS >= 1 && KEYS >= 100 && BIG * 2 <= KEYS)) || { echo "error: need BENCH_MASTERS >= 1, BENCH_KEYS >= 100" >&2; exit 2; }
[[ "$DISKLESS" == yes || "$DISKLESS" == no ]] || { echo "error: BENCH_DISKLESS must be yes or no" >&2; exit 2; }
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }
for st in ${STAGES//,/ }; do
  [[ " ferry master replication rdbload pipe cluster stream " == *" $st "* ]] || { echo "error: unknown stage '$st' in BENCH_STAGES" >&2; exit 2; }
done

if [[ -t 1 ]]; then
  say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '\n==> %s\n' "$*"; }
fi

# --- stage bookkeeping: every failure names the stage it happened in -------------------------------------------
STAGE=setup
die() { echo "error: [stage $STAGE] $*" >&2; exit 1; }
trap 'rc=$?; echo "error: [stage $STAGE] command failed (status $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

# --- processes we start, killed by PID on exit ------------------------------------------------------------------
WORK=""
PIDS=()
cleanup() {
  local rc=$?
  trap - ERR
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "$WORK" && -d "$WORK/pids" ]]; then # servers started by the python helper (not our children)
    for f in "$WORK"/pids/*; do [[ -f "$f" ]] && stop_orphan "$(cat "$f")" "$f"; done
  fi
  if [[ -n "$WORK" ]]; then
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'STAGE="$STAGE (interrupted)"; exit 130' INT TERM

# stop one of our processes by PID and forget it (so the exit trap never signals a recycled PID)
stop_pid() {
  local pid=$1 keep=() p
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
# stop a process a python helper started (not our child: no `wait`), then drop its pid file
stop_orphan() { # pid pidfile
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$1" 2>/dev/null || true
  rm -f "$2"
}
# forget a PID we already reaped with `wait`
forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# --- dependencies and the ferry binary -------------------------------------------------------------------------
say "dependencies"
bash scripts/install-deps.sh
command -v python3 >/dev/null || die "python3 is needed (dataset generation, probes, timing)"
for tool in redis-server redis-cli; do command -v "$tool" >/dev/null || die "$tool is not on PATH"; done
if has_stage stream; then command -v redis-benchmark >/dev/null || die "redis-benchmark (redis-tools) is not on PATH"; fi

if has_stage cluster; then # --cluster-port (a free bus port: port + 10000 may pass 65535) came with Redis 7.0
  [[ "$(redis-server --version | grep -o 'v=[0-9]*' | cut -d= -f2)" -ge 7 ]] ||
    die "the cluster stage needs redis-server 7.0 or newer (--cluster-port); leave it out of BENCH_STAGES"
fi

FERRY=""
if has_stage ferry || has_stage master || has_stage stream || has_stage cluster; then
  STAGE=build
  if [[ -n "${FERRY_BIN:-}" ]]; then
    FERRY=$FERRY_BIN
    say "using ferry at $FERRY (FERRY_BIN; not building)"
  else
    say "building ferry (cargo build --release)"
    cargo build --release --quiet || die "cargo build --release failed"
    FERRY="${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry"
  fi
  [[ -x "$FERRY" ]] || die "$FERRY is not an executable"
fi

STAGE=setup
WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
mkdir -p "$WORK/pids"
mkdir -p "$OUTDIR"
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$OUTDIR/e2e-$RUN_ID.json"
: >"$OUT"
LIB="$WORK/benchlib.py"

# --- the python side: RESP client, generator, dumper, pollers, timer, lag probe (stdlib only) -----------------
cat >"$LIB" <<'PYEOF'
import binascii, json, os, random, signal, socket, subprocess, sys, time

# ---- a minimal pipelining RESP2 client -------------------------------------------------------------------------
def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Redis:
    def __init__(self, port, timeout=None):
        self.s = socket.create_connection(("127.0.0.1", int(port)), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb", buffering=1 << 20)
    def read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("connection closed")
        t, body = line[:1], line[1:-2]
        if t == b"+": return body.decode()
        if t == b"-": return RedisError(body.decode())
        if t == b":": return int(body)
        if t == b"$":
            n = int(body)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(body)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnectionError(f"bad reply {line!r}")
    def __call__(self, *args):
        self.s.sendall(enc(*args))
        r = self.read()
        if isinstance(r, RedisError):
            raise r
        return r
    def info(self, section):
        out = {}
        for line in self(("INFO"), section).decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

class RedisError(Exception):
    pass

def try_connect(port):
    try:
        return Redis(port, timeout=5)
    except OSError:
        return None

# ---- Redis Cluster: key slots, the slot map, a client that sends each command to its key's master -----------------
def key_slot(key):
    """CRC16 (XMODEM: binascii.crc_hqx with 0) of the key or of its {hash tag}, modulo 16384"""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return binascii.crc_hqx(key, 0) & 16383

def slot_owners(port):
    """slot -> client port of the master serving it (CLUSTER SLOTS as seen by the node on PORT)"""
    owner = [0] * 16384
    for rng in Redis(port)("CLUSTER", "SLOTS"):
        owner[rng[0]:rng[1] + 1] = [int(rng[2][1])] * (rng[1] - rng[0] + 1)
    if 0 in owner:
        sys.exit(f"slot {owner.index(0)} is served by no master (node {port})")
    return owner

class Cluster:
    """routes a one-key command (TYPE k, GET k, ...) to the master of k's slot (no MOVED handling: the layout is fixed)"""
    def __init__(self, ports):
        self.owner = slot_owners(ports[0])
        self.conns = {p: Redis(p) for p in set(self.owner)}
    def __call__(self, *args):
        k = args[1] if isinstance(args[1], bytes) else str(args[1]).encode()
        return self.conns[self.owner[key_slot(k)]](*args)

def connect_target(spec):  # "PORT" or "cluster:PORT,PORT,..."
    if spec.startswith("cluster:"):
        return Cluster([int(p) for p in spec[len("cluster:"):].split(",")])
    return Redis(spec)

# ---- cluster-wait: until every node says cluster_state:ok, knows all nodes, and all agree on the slot map ----------
def cluster_wait(timeout, *ports):
    t0 = time.perf_counter()
    last = ""
    while True:
        maps = []
        for p in ports:
            try:
                c = Redis(p, timeout=5)
                info = dict(l.split(":", 1) for l in c("CLUSTER", "INFO").decode().split() if ":" in l)
                if (info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384"
                        or info.get("cluster_known_nodes") != str(len(ports))):
                    last = f"node {p}: {info}"
                    break
                maps.append(sorted((r[0], r[1], int(r[2][1])) for r in c("CLUSTER", "SLOTS")))
            except (OSError, RedisError, ConnectionError) as e:
                last = f"node {p}: {e}"
                break
        if len(maps) == len(ports) and all(m == maps[0] for m in maps):
            print("%.4f" % (time.perf_counter() - t0))
            return
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"the cluster did not settle within {timeout}s: {last}")
        time.sleep(0.1)

# ---- target-keys: keys of a target (all dbs; the sum over a cluster's nodes), of them ferry's in-target checkpoint
# keys (ferry:checkpoint:*, db 0: one per source, or one per slot and source in a cluster) and any other ferry:* key;
# "data" is the rest. JSON to OUT.
def target_keys(out, *ports):
    total, per, ck, other = 0, [], set(), set()
    for p in ports:
        c = Redis(p)
        n = sum(int(v.split(",")[0].split("=")[1]) for k, v in c.info("keyspace").items() if k.startswith("db"))
        per.append(n)
        total += n
        cursor = b"0"
        while True:  # SCAN may return a key twice (a rehash in between): sets, not counters
            cursor, keys = c("SCAN", cursor, "MATCH", "ferry:*", "COUNT", 10000)
            for k in keys:
                (ck if k.startswith(b"ferry:checkpoint:") else other).add(k)
            if cursor == b"0":
                break
    with open(out, "w") as f:
        json.dump({"total": total, "per_node": ",".join(map(str, per)), "checkpoint": len(ck),
                   "other_ferry": len(other), "data": total - len(ck) - len(other),
                   "other_sample": [k.decode(errors="replace") for k in sorted(other)[:3]]}, f)

# ---- gen: the dataset as RESP on stdout --------------------------------------------------------------------------
def gen(prefix, nkeys, nbig, seed):
    rng = random.Random(seed)
    w = sys.stdout.buffer
    def bulk(b): return b"$%d\r\n%s\r\n" % (len(b), b)
    # element encodings are precomputed; one element per key carries the key number so values differ
    E = [bulk(b"e%d" % j) for j in range(1000)]                  # list elements / set members (strings)
    I = [bulk(b"%d" % (1000 + j * 7)) for j in range(1000)]      # set members (integers: intset encoding)
    F = [bulk(b"field:%d" % j) for j in range(1000)]             # hash fields
    V = [bulk(b"val-%d-%s" % (j, b"x" * (j % 17))) for j in range(1000)]  # hash values
    Z = [bulk(b"%d.5" % j) + bulk(b"member:%d" % j) for j in range(1000)]  # zset score + member
    FILL = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2
    CMD = {k: bulk(k) for k in (b"SET", b"HSET", b"RPUSH", b"SADD", b"ZADD", b"EXPIRE")}
    kinds = (b"hash", b"list", b"set", b"zset")
    buf = []
    ttls = 0
    for i in range(nkeys):
        if i < nbig:
            kind, n = kinds[i % 4], 1000
        elif rng.random() < 0.6:
            kind, n = b"str", 0
        else:
            kind, n = kinds[rng.randrange(4)], rng.randint(5, 20)
        key = b"%s:%s:%d" % (prefix, kind, i)
        tag = b"k%d" % i
        if kind == b"str":
            buf.append(b"*3\r\n" + CMD[b"SET"] + bulk(key) + bulk(tag + b":" + FILL[: rng.randint(4, 40)]))
        elif kind == b"hash":
            buf.append(b"*%d\r\n" % (2 + 2 * n) + CMD[b"HSET"] + bulk(key) + F[0] + bulk(tag)
                       + b"".join(F[j] + V[j] for j in range(1, n)))
        elif kind == b"list":
            buf.append(b"*%d\r\n" % (2 + n) + CMD[b"RPUSH"] + bulk(key) + bulk(tag) + b"".join(E[1:n]))
        elif kind == b"set":
            if i % 2:
                buf.append(b"*%d\r\n" % (2 + n) + CMD[b"SADD"] + bulk(key) + bulk(tag) + b"".join(E[1:n]))
            else:
                buf.append(b"*%d\r\n" % (2 + n) + CMD[b"SADD"] + bulk(key) + bulk(b"%d" % i) + b"".join(I[1:n]))
        else:
            buf.append(b"*%d\r\n" % (2 + 2 * n) + CMD[b"ZADD"] + bulk(key) + bulk(b"0.25") + bulk(tag)
                       + b"".join(Z[1:n]))
        if rng.random() < 0.1:  # 10 % with a TTL 30-60 days away: nothing expires during the bench
            ttls += 1
            buf.append(b"*3\r\n" + CMD[b"EXPIRE"] + bulk(key) + bulk(b"%d" % (2592000 + rng.randrange(2592000))))
        if len(buf) >= 20000:
            w.write(b"".join(buf)); buf = []
    w.write(b"".join(buf))
    w.flush()
    print(json.dumps({"keys": nkeys, "ttls": ttls, "big": nbig}), file=sys.stderr)

# ---- restore-file: every key of a server as RESTORE key pttl payload (RESP) --------------------------------------
# With CLUSTER_PORT, one file per master of that cluster, PATH.<its port>, holding the keys of its slots; prints the
# count per file as JSON ({"port": n}) instead of the total.
def restore_file(port, path, cluster_port=None):
    r = Redis(port)
    if cluster_port:
        owner = slot_owners(cluster_port)
        files = {p: open(f"{path}.{p}", "wb", buffering=1 << 20) for p in sorted(set(owner))}
        pick = lambda k: owner[key_slot(k)]
    else:
        files = {0: open(path, "wb", buffering=1 << 20)}
        pick = lambda k: 0
    counts = dict.fromkeys(files, 0)
    cursor = b"0"
    while True:
        cursor, keys = r("SCAN", cursor, "COUNT", 2000)
        if keys:
            r.s.sendall(b"".join(enc("DUMP", k) + enc("PTTL", k) for k in keys))
            for k in keys:
                payload, pttl = r.read(), r.read()
                if payload is None or isinstance(payload, RedisError) or pttl == -2:
                    continue  # gone in between (nothing expires here, but be exact)
                p = pick(k)
                files[p].write(enc("RESTORE", k, max(pttl, 0), payload))
                counts[p] += 1
        if cursor == b"0":
            break
    for f in files.values():
        f.close()
    print(json.dumps({str(p): n for p, n in counts.items()}) if cluster_port else counts[0])

# ---- replicate: REPLICAOF and wait until the replica is in sync and loaded; prints seconds -----------------------
def replicate(replica_port, master_port, timeout):
    r = Redis(replica_port)
    t0 = time.perf_counter()
    r("REPLICAOF", "127.0.0.1", master_port)
    while True:
        rep, per = r.info("replication"), r.info("persistence")
        if (rep.get("master_link_status") == "up" and rep.get("master_sync_in_progress") == "0"
                and per.get("loading") == "0"):
            print("%.4f" % (time.perf_counter() - t0))
            return
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"replica on port {replica_port} not in sync after {timeout}s: {rep}")
        time.sleep(0.005)

# ---- load-rdb: start redis-server on DIR/dump.rdb and time it until it answers with loading:0; prints seconds ------
# The server is started from here (its PID goes to PIDFILE at once) so the clock starts at the exec, not after a
# shell and a python start-up. It keeps running when we return; the shell stops it by that PID.
def load_rdb(d, port, pidfile, timeout):
    t0 = time.perf_counter()
    p = subprocess.Popen(["redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", d, "--dbfilename",
                          "dump.rdb", "--logfile", os.path.join(d, "redis.log"), "--save", "", "--appendonly", "no",
                          "--daemonize", "no"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    with open(pidfile, "w") as f:
        f.write(str(p.pid))
    r = None
    while True:
        if r is None:
            r = try_connect(port)
        if r is not None:
            try:
                if r.info("persistence").get("loading") == "0" and r("PING") == "PONG":
                    print("%.4f" % (time.perf_counter() - t0))
                    return
            except (RedisError, OSError):
                r = None
        if p.poll() is not None:
            sys.exit(f"redis-server exited with status {p.returncode} while loading")
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"server on port {port} still loading after {timeout}s")
        time.sleep(0.002)

# ---- timed: run a command, wall time and peak RSS (wait4's ru_maxrss), killed at the timeout -----------------------
def timed(jsonout, timeout, log, argv):
    t0 = time.perf_counter()
    with open(log, "ab") as lf:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
    def forward(sig, _frame):  # our own SIGTERM/SIGINT end the child too
        p.send_signal(signal.SIGTERM)
        os.wait4(p.pid, 0)
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    timed_out = False
    deadline = t0 + float(timeout)
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline and not timed_out:
            timed_out = True
            p.send_signal(signal.SIGTERM)
            deadline += 10  # then SIGKILL if it does not stop within 10 s
        elif timed_out and time.perf_counter() > deadline:
            p.kill()
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    res = {"wall_s": round(wall, 4), "maxrss_kib": ru.ru_maxrss, "rc": rc, "timed_out": timed_out,
           "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3)}
    with open(jsonout, "w") as f:
        json.dump(res, f)

# ---- timed-par: commands started at once (`-- LOG argv... -- LOG argv...`), each one's wall time from the common
# start and the wall time until the last ends (one clock: no interpreter start-up between the children)
def timed_par(jsonout, timeout, rest):
    groups, cur = [], None
    for a in rest:
        if a == "--":
            cur = []
            groups.append(cur)
        else:
            cur.append(a)
    t0 = time.perf_counter()
    procs = []
    for g in groups:
        with open(g[0], "ab") as lf:
            procs.append(subprocess.Popen(g[1:], stdin=subprocess.DEVNULL, stdout=lf, stderr=lf))
    def forward(sig, _frame):
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    res = [None] * len(procs)
    deadline = t0 + float(timeout)
    timed_out = False
    while None in res:
        for i, p in enumerate(procs):
            if res[i] is None:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    res[i] = {"wall_s": round(time.perf_counter() - t0, 4), "rc": p.returncode,
                              "maxrss_kib": ru.ru_maxrss}
        if time.perf_counter() > deadline and not timed_out:
            timed_out = True
            for i, p in enumerate(procs):
                if res[i] is None:
                    p.kill()
        time.sleep(0.002)
    with open(jsonout, "w") as f:
        json.dump({"wall_s": round(time.perf_counter() - t0, 4), "timed_out": timed_out, "children": res}, f)

# ---- keycount: keys in all dbs (INFO keyspace) -------------------------------------------------------------------
def keycount(port):
    total = 0
    for k, v in Redis(port).info("keyspace").items():
        if k.startswith("db"):
            total += int(v.split(",")[0].split("=")[1])
    print(total)

# ---- wait-key: until GET key on every port equals value --------------------------------------------------------
def wait_key(key, value, timeout, *ports):
    conns = [Redis(p) for p in ports]
    t0 = time.perf_counter()
    while conns:
        conns = [c for c in conns if c("GET", key) != value.encode()]
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"{key} did not reach ports {ports} within {timeout}s")
        time.sleep(0.01)

# ---- lag: probe the end-to-end lag of each replica until STOPFILE exists ------------------------------------------
# Each probe SETs a key on the master to the current time (ns), then polls GET on every replica until it reads that
# value; lag = time seen - time written. Probes are spaced by STREAM_SAMPLE_MS; the poll loop sleeps 100 us between rounds.
def lag(master, names_ports, stopfile, sample_ms, jsonout, timeout=60.0):
    m = Redis(master)
    reps = [(n, Redis(p)) for n, p in (x.split("=") for x in names_ports.split(","))]
    lags = {n: [] for n, _ in reps}
    seq = 0
    stop_seen = None
    while True:
        if stop_seen is None and os.path.exists(stopfile):
            stop_seen = seq
        seq += 1
        t_write = time.time_ns()
        val = b"%d:%d" % (seq, t_write)
        m("SET", "ferry-bench:probe", val)
        pending = dict(reps)
        while pending:
            for n, c in list(pending.items()):
                c.s.sendall(enc("GET", "ferry-bench:probe"))
            for n, c in list(pending.items()):
                if c.read() == val:
                    lags[n].append((time.time_ns() - t_write) / 1e6)
                    del pending[n]
            if (time.time_ns() - t_write) / 1e9 > timeout:
                sys.exit(f"probe {seq} not seen on {list(pending)} after {timeout}s")
            if pending:
                time.sleep(0.0001)
        if stop_seen is not None and seq > stop_seen:  # one probe after the load ended: the drain
            break
        time.sleep(sample_ms / 1000)
    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]
    res = {}
    for n, xs in lags.items():
        res[n] = {"samples": len(xs), "p50_ms": round(pct(xs, 0.5), 3), "p99_ms": round(pct(xs, 0.99), 3),
                  "p999_ms": round(pct(xs, 0.999), 3), "max_ms": round(max(xs), 3),
                  "drain_ms": round(xs[-1], 3)}
    with open(jsonout, "w") as f:
        json.dump(res, f)

# ---- compare: a sample of each master's keys (random ones plus every 1000-element one) against the target ----------
# (TARGET: a port, or cluster:PORT,PORT,... for a Redis Cluster: each key is read from its slot's master)
# type-aware (order-free for hashes and sets), and TTLs within a minute; prints "checked bad" and the first misses.
def compare(target, sample, nbig, *masters):
    t = connect_target(target)
    kinds = ("hash", "list", "set", "zset")
    def value(c, k):
        ty = c("TYPE", k)
        if ty == "string": v = c("GET", k)
        elif ty == "hash": v = sorted(c("HGETALL", k))
        elif ty == "list": v = c("LRANGE", k, 0, -1)
        elif ty == "set": v = sorted(c("SMEMBERS", k))
        elif ty == "zset": v = c("ZRANGE", k, 0, -1, "WITHSCORES")
        else: v = None
        return ty, v, c("PTTL", k)
    checked = bad = 0
    for idx, port in enumerate(masters, 1):
        m = Redis(port)
        m.s.sendall(enc("RANDOMKEY") * sample)
        keys = {m.read() for _ in range(sample)}
        keys |= {b"m%d:%s:%d" % (idx, kinds[i % 4].encode(), i) for i in range(nbig)}
        for k in sorted(keys):
            (st, sv, sp), (tt, tv, tp) = value(m, k), value(t, k)
            ttl_ok = (sp < 0 and tp == -1) or (sp >= 0 and tp >= 0 and abs(sp - tp) < 60000)
            checked += 1
            if (st, sv) != (tt, tv) or not ttl_ok:
                bad += 1
                if bad <= 5:
                    print(f"MISMATCH {k!r}: master {st} pttl {sp}, target {tt} pttl {tp}", file=sys.stderr)
    print(checked, bad)

# ---- cpu: CPU seconds the servers on PORTS have used so far, their reaped children (an RDB fork) included --------
def cpu(*ports):
    t = 0.0
    for p in ports:
        i = Redis(p).info("cpu")
        t += sum(float(i.get(k, 0)) for k in ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children",
                                               "used_cpu_sys_children"))
    print("%.3f" % t)

# ---- rec: append one JSON line (numbers stay numbers) -----------------------------------------------------------
def rec(path, *kvs):
    d = {}
    with open("/proc/loadavg") as f:  # how busy the machine was when the line was written (other work skews figures)
        kvs = kvs + ("load1=" + f.read().split()[0],)
    for kv in kvs:
        k, v = kv.split("=", 1)
        try:
            d[k] = int(v)
        except ValueError:
            try:
                d[k] = float(v)
            except ValueError:
                d[k] = v
    with open(path, "a") as f:
        f.write(json.dumps(d) + "\n")

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen": gen(args[0].encode(), int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "restore-file": restore_file(args[0], args[1], *args[2:3])
    elif cmd == "cluster-wait": cluster_wait(float(args[0]), *args[1:])
    elif cmd == "target-keys": target_keys(args[0], *args[1:])
    elif cmd == "timed-par": timed_par(args[0], args[1], args[2:])
    elif cmd == "replicate": replicate(args[0], args[1], float(args[2]))
    elif cmd == "load-rdb": load_rdb(args[0], args[1], args[2], float(args[3]))
    elif cmd == "timed": timed(args[0], args[1], args[2], args[4:] if args[3] == "--" else args[3:])
    elif cmd == "keycount": keycount(args[0])
    elif cmd == "wait-key": wait_key(args[0], args[1], float(args[2]), *args[3:])
    elif cmd == "lag": lag(args[0], args[1], args[2], float(args[3]), args[4])
    elif cmd == "compare": compare(args[0], int(args[1]), int(args[2]), *args[3:])
    elif cmd == "rec": rec(*args)
    elif cmd == "info": print(Redis(args[0]).info(args[1]).get(args[2], ""))
    elif cmd == "cpu": cpu(*args)
    elif cmd == "json": print(json.load(open(args[0]))[args[1]])
    else: sys.exit(f"unknown command {cmd}")
PYEOF

py() { python3 "$LIB" "$@"; }
rec() { py rec "$OUT" "run=$RUN_ID" "$@"; }
jget() { py json "$1" "$2"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# seconds as a float with 2 decimals / a ratio with 2 decimals, for the table
fmt() { python3 -c 'import sys; print("%.2f" % float(sys.argv[1]))' "$1"; }
ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print("%.2f" % (a / b) if b else "n/a")' "$1" "$2"; }
sum() { python3 -c 'import sys; print("%.4f" % sum(map(float, sys.argv[1:])))' "$@"; }
max() { python3 -c 'import sys; print("%.4f" % max(map(float, sys.argv[1:])))' "$@"; }

wait_ping() { # port what logfile
  for _ in $(seq 1 400); do
    [[ "$(redis-cli -p "$1" PING 2>/dev/null)" == PONG ]] && return 0
    sleep 0.05
  done
  echo "--- last lines of $3:" >&2
  tail -20 "$3" >&2 || true
  die "$2 on port $1 did not answer PING"
}

# start_redis NAME [extra redis-server args...] -> PORT, SPID (its PID), SDIR
start_redis() {
  local name=$1
  shift
  PORT=$(free_port)
  SDIR="$WORK/$name"
  mkdir -p "$SDIR"
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$SDIR" --logfile "$SDIR/redis.log" \
    --save "" --appendonly no --daemonize no "$@" </dev/null >/dev/null 2>&1 &
  SPID=$!
  PIDS+=("$SPID")
  wait_ping "$PORT" "redis-server $name" "$SDIR/redis.log"
}

# stop a server and remove its directory (its memory and RDB files are not needed any more)
stop_redis() { # pid dir
  stop_pid "$1"
  rm -rf "$2"
}

# start_cluster NAME -> CPORTS, CPIDS, CDIRS: 3 fresh cluster-enabled servers (each with a free bus port),
# joined by `redis-cli --cluster create` as 3 masters without replicas, once every node agrees on
# cluster_state:ok and the slot map
start_cluster() {
  local name=$1 n bus used
  CPORTS=() CPIDS=() CDIRS=()
  used=" "
  for n in 1 2 3; do
    bus=$(free_port)
    while [[ "$used" == *" $bus "* ]]; do bus=$(free_port); done
    start_redis "$name-node$n" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "$bus"
    CPORTS+=("$PORT") CPIDS+=("$SPID") CDIRS+=("$SDIR")
    used+="$bus $PORT "
  done
  redis-cli --cluster create "${CPORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    </dev/null >"$WORK/$name-create.log" 2>&1 ||
    die "redis-cli --cluster create failed: $(tail -3 "$WORK/$name-create.log")"
  py cluster-wait 60 "${CPORTS[@]}" >/dev/null || die "the $name cluster did not reach cluster_state:ok"
}
stop_cluster() {
  local i
  for i in "${!CPIDS[@]}"; do stop_redis "${CPIDS[$i]}" "${CDIRS[$i]}"; done
  CPORTS=() CPIDS=() CDIRS=()
}

# --- machine facts ----------------------------------------------------------------------------------------------
NPROC=$(nproc)
MEM_MIB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REDIS_VER=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo yes || echo no)
FERRY_VER=$([[ -n "$FERRY" ]] && timeout 10 "$FERRY" --version 2>/dev/null || echo n/a)
# `commit` is this work tree's; with FERRY_BIN the binary may come from elsewhere, so say which one was measured
FERRY_FROM=$([[ -n "${FERRY_BIN:-}" ]] && echo "FERRY_BIN=$FERRY_BIN" || echo "cargo build --release of this work tree")
rec kind=machine date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" nproc="$NPROC" mem_mib="$MEM_MIB" cpu="$CPU" \
  kernel="$(uname -r)" redis="$REDIS_VER" commit="$COMMIT" worktree_dirty="$DIRTY" ferry="$FERRY_VER" ferry_from="$FERRY_FROM" \
  masters="$MASTERS" keys_per_master="$KEYS" big_per_master="$BIG" diskless="$DISKLESS" stages="$STAGES"
say "machine: $NPROC cores, $MEM_MIB MiB, $CPU; redis $REDIS_VER; ferry commit $COMMIT (dirty worktree: $DIRTY)"
echo "  work dir $WORK, results $OUT"

# --- stage 1: dataset -------------------------------------------------------------------------------------------
STAGE=dataset
say "dataset: $MASTERS master(s) x $KEYS keys (60 % strings, 40 % small collections, $BIG x 1000 elements, 10 % TTL)"
MPORT=() MPID=() MDIR=() MKEYS=() MMEM=()
for ((m = 1; m <= MASTERS; m++)); do
  start_redis "master$m" --repl-diskless-sync "$DISKLESS" --repl-diskless-sync-delay 0
  MPORT+=("$PORT") MPID+=("$SPID") MDIR+=("$SDIR")
done
t0=$EPOCHREALTIME
gen_pids=()
for ((m = 1; m <= MASTERS; m++)); do # generators run in parallel, one per master
  py gen "m$m" "$KEYS" "$BIG" "$m" >"$WORK/fill$m.resp" 2>"$WORK/gen$m.json" &
  gen_pids+=($!)
done
for pid in "${gen_pids[@]}"; do wait "$pid" || die "the RESP generator failed: $(cat "$WORK"/gen*.json)"; done
echo "  generated $(du -ch "$WORK"/fill*.resp | tail -1 | cut -f1) of RESP in $(fmt "$(sum "$EPOCHREALTIME" "-$t0")")s"
for ((m = 1; m <= MASTERS; m++)); do
  i=$((m - 1))
  redis-cli -p "${MPORT[$i]}" --pipe <"$WORK/fill$m.resp" >"$WORK/fill$m.out" 2>&1 ||
    die "redis-cli --pipe into master$m failed: $(tail -3 "$WORK/fill$m.out")"
  grep -q '^errors: 0,' "$WORK/fill$m.out" || die "master$m rejected writes: $(tail -3 "$WORK/fill$m.out")"
  rm -f "$WORK/fill$m.resp"
  MKEYS+=("$(py keycount "${MPORT[$i]}")")
  MMEM+=("$(py info "${MPORT[$i]}" memory used_memory)")
  ((MKEYS[i] == KEYS)) || die "master$m holds ${MKEYS[$i]} keys, expected $KEYS"
  rec kind=dataset master="$m" port="${MPORT[$i]}" dbsize="${MKEYS[$i]}" used_memory="${MMEM[$i]}" \
    ttls="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ttls"])' "$WORK/gen$m.json")"
  echo "  master$m 127.0.0.1:${MPORT[$i]}: ${MKEYS[$i]} keys, used_memory $((MMEM[i] / 1048576)) MiB"
done
TOTAL_KEYS=$(python3 -c 'import sys; print(sum(map(int, sys.argv[1:])))' "${MKEYS[@]}")
TOTAL_MEM=$(python3 -c 'import sys; print(sum(map(int, sys.argv[1:])))' "${MMEM[@]}")
echo "  dataset loaded in $(fmt "$(sum "$EPOCHREALTIME" "-$t0")")s: $TOTAL_KEYS keys, $((TOTAL_MEM / 1048576)) MiB used_memory in all"

SOURCES=()
for p in "${MPORT[@]}"; do SOURCES+=(--source "redis://127.0.0.1:$p"); done

# --- stage 2: ferry full sync -----------------------------------------------------------------------------------
FERRY_S="" FERRY_RSS_MIB="" FERRY_FAILED=0 FERRY_WHY="" TCPU="" MCPU=""
if has_stage ferry; then
  STAGE=ferry
  say "ferry: full sync of $MASTERS master(s) into a fresh target (--once)"
  start_redis ferry-target
  TPORT=$PORT TPID=$SPID TDIR=$SDIR
  echo "  \$ ferry sync ${SOURCES[*]} --target redis://127.0.0.1:$TPORT --once --state-dir <tmp> ${FERRY_EXTRA[*]}"
  TCPU0=$(py cpu "$TPORT") MCPU0=$(py cpu "${MPORT[@]}")
  py timed "$WORK/ferry.json" "$TIMEOUT" "$WORK/ferry.log" -- \
    "$FERRY" sync "${SOURCES[@]}" --target "redis://127.0.0.1:$TPORT" --once --state-dir "$WORK/ferry-state" \
    "${FERRY_EXTRA[@]}"
  FRC=$(jget "$WORK/ferry.json" rc)
  FERRY_S=$(jget "$WORK/ferry.json" wall_s)
  FERRY_RSS_MIB=$(python3 -c 'import sys; print("%.1f" % (int(sys.argv[1]) / 1024))' "$(jget "$WORK/ferry.json" maxrss_kib)")
  # the target's keys: the data and ferry's in-target checkpoint keys (ferry:checkpoint:<source>, one per source)
  py target-keys "$WORK/target-keys.json" "$TPORT" || die "counting the target's keys failed"
  TKEYS=$(jget "$WORK/target-keys.json" data)
  TCHECK=$(jget "$WORK/target-keys.json" checkpoint)
  TOTHER=$(jget "$WORK/target-keys.json" other_ferry)
  # CPU the target and the masters (with their RDB forks, reaped by now) spent on the sync; with ferry's user+sys,
  # what the sync cost the machine's cores, whatever else ran beside it
  TCPU=$(sum "$(py cpu "$TPORT")" "-$TCPU0") MCPU=$(sum "$(py cpu "${MPORT[@]}")" "-$MCPU0")
  if [[ "$(jget "$WORK/ferry.json" timed_out)" == True ]]; then
    FERRY_FAILED=1 FERRY_WHY="timed out after ${TIMEOUT}s (BENCH_TIMEOUT)"
  elif ((FRC != 0)); then
    FERRY_FAILED=1 FERRY_WHY="ferry exited with status $FRC"
  elif ((TOTHER != 0)); then
    FERRY_FAILED=1 FERRY_WHY="the target holds $TOTHER ferry:* keys that are not checkpoints, e.g. $(jget "$WORK/target-keys.json" other_sample)"
  elif ((TKEYS != TOTAL_KEYS)); then
    FERRY_FAILED=1 FERRY_WHY="the target holds $TKEYS keys besides ferry's $TCHECK checkpoint keys, the masters $TOTAL_KEYS"
  else # equal counts: also compare a sample of values (not timed)
    read -r CHECKED BAD < <(py compare "$TPORT" "$VERIFY" "$BIG" "${MPORT[@]}" 2>"$WORK/compare.err") ||
      die "comparing the target with the masters failed: $(tail -3 "$WORK/compare.err")"
    if ((BAD)); then
      FERRY_FAILED=1 FERRY_WHY="$BAD of $CHECKED sampled keys differ between the masters and the target: $(head -3 "$WORK/compare.err")"
    else
      echo "  compared $CHECKED sampled keys (every 1000-element one included) with the masters: all equal"
    fi
  fi
  rec kind=ferry wall_s="$FERRY_S" peak_rss_mib="$FERRY_RSS_MIB" rc="$FRC" target_keys="$TKEYS" \
    checkpoint_keys="$TCHECK" source_keys="$TOTAL_KEYS" target_cpu_s="$TCPU" masters_cpu_s="$MCPU" target_used_memory="$(py info "$TPORT" memory used_memory)" \
    user_s="$(jget "$WORK/ferry.json" user_s)" sys_s="$(jget "$WORK/ferry.json" sys_s)" \
    ok="$((1 - FERRY_FAILED))" why="$FERRY_WHY"
  if ((FERRY_FAILED)); then
    echo "error: [stage ferry] $FERRY_WHY; last lines of its log:" >&2
    tail -15 "$WORK/ferry.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' >&2
    echo "  (the other stages still run; the script exits 1 at the end)" >&2
  else
    echo "  ferry: $(fmt "$FERRY_S")s, peak RSS $FERRY_RSS_MIB MiB, target holds $TKEYS keys (= the masters') + $TCHECK checkpoint keys"
  fi
  stop_redis "$TPID" "$TDIR"
fi

# --- stage 2b: master mode (ferry as the target's master) --------------------------------------------------------
MM_S="" MM_RSS_MIB="" MM_FAILED=0 MM_WHY=""
if has_stage master; then
  STAGE=master
  say "master mode: ferry sync --apply replication of $MASTERS master(s) into a fresh target (--once)"
  start_redis master-target
  TPORT=$PORT TPID=$SPID TDIR=$SDIR
  echo "  \$ ferry sync ${SOURCES[*]} --target redis://127.0.0.1:$TPORT --apply replication --once --state-dir <tmp> ${FERRY_EXTRA[*]}"
  py timed "$WORK/master.json" "$TIMEOUT" "$WORK/master.log" -- \
    "$FERRY" sync "${SOURCES[@]}" --target "redis://127.0.0.1:$TPORT" --apply replication --once \
    --state-dir "$WORK/master-state" "${FERRY_EXTRA[@]}"
  MRC=$(jget "$WORK/master.json" rc)
  MM_S=$(jget "$WORK/master.json" wall_s)
  MM_RSS_MIB=$(python3 -c 'import sys; print("%.1f" % (int(sys.argv[1]) / 1024))' "$(jget "$WORK/master.json" maxrss_kib)")
  py target-keys "$WORK/master-keys.json" "$TPORT" || die "counting the target's keys failed"
  MKEYS_T=$(jget "$WORK/master-keys.json" data)
  MOTHER=$(( $(jget "$WORK/master-keys.json" checkpoint) + $(jget "$WORK/master-keys.json" other_ferry) ))
  if [[ "$(jget "$WORK/master.json" timed_out)" == True ]]; then
    MM_FAILED=1 MM_WHY="timed out after ${TIMEOUT}s (BENCH_TIMEOUT)"
  elif ((MRC != 0)); then
    MM_FAILED=1 MM_WHY="ferry exited with status $MRC"
  elif ((MOTHER != 0)); then
    MM_FAILED=1 MM_WHY="the target holds $MOTHER ferry:* keys (master mode writes none)"
  elif ((MKEYS_T != TOTAL_KEYS)); then
    MM_FAILED=1 MM_WHY="the target holds $MKEYS_T keys, the masters $TOTAL_KEYS"
  else
    read -r CHECKED BAD < <(py compare "$TPORT" "$VERIFY" "$BIG" "${MPORT[@]}" 2>"$WORK/compare-master.err") ||
      die "comparing the target with the masters failed: $(tail -3 "$WORK/compare-master.err")"
    if ((BAD)); then
      MM_FAILED=1 MM_WHY="$BAD of $CHECKED sampled keys differ: $(head -3 "$WORK/compare-master.err")"
    else
      echo "  compared $CHECKED sampled keys with the masters: all equal"
    fi
  fi
  rec kind=master wall_s="$MM_S" peak_rss_mib="$MM_RSS_MIB" rc="$MRC" target_keys="$MKEYS_T" source_keys="$TOTAL_KEYS" \
    user_s="$(jget "$WORK/master.json" user_s)" sys_s="$(jget "$WORK/master.json" sys_s)" \
    ok="$((1 - MM_FAILED))" why="$MM_WHY"
  if ((MM_FAILED)); then
    echo "error: [stage master] $MM_WHY; last lines of its log:" >&2
    tail -15 "$WORK/master.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' >&2
    echo "  (the other stages still run; the script exits 1 at the end)" >&2
  else
    echo "  master mode: $(fmt "$MM_S")s, peak RSS $MM_RSS_MIB MiB, target holds $MKEYS_T keys (= the masters')"
  fi
  stop_redis "$TPID" "$TDIR"
fi

# --- stage 3: native replication --------------------------------------------------------------------------------
REPL_SUM="" REPL_MAX=""
if has_stage replication; then
  STAGE=replication
  say "native replication: REPLICAOF each master into a fresh redis-server, one after the other"
  times=()
  for ((m = 1; m <= MASTERS; m++)); do
    i=$((m - 1))
    start_redis "replica$m"
    s=$(py replicate "$PORT" "${MPORT[$i]}" "$TIMEOUT") || die "replica of master$m did not sync (log: $SDIR/redis.log)"
    n=$(py keycount "$PORT")
    ((n == MKEYS[i])) || die "replica of master$m holds $n keys, master ${MKEYS[$i]}"
    rec kind=replication master="$m" wall_s="$s" keys="$n"
    echo "  master$m: in sync after $(fmt "$s")s ($n keys)"
    times+=("$s")
    stop_redis "$SPID" "$SDIR"
  done
  REPL_SUM=$(sum "${times[@]}") REPL_MAX=$(max "${times[@]}")
  rec kind=replication_total sum_s="$REPL_SUM" max_s="$REPL_MAX"
fi

# --- stage 4: native RDB load at start-up -----------------------------------------------------------------------
LOAD_SUM=""
if has_stage rdbload; then
  STAGE=rdbload
  say "native RDB load: each master's dump.rdb loaded by a fresh redis-server at start-up"
  times=()
  for ((m = 1; m <= MASTERS; m++)); do
    i=$((m - 1))
    [[ "$(redis-cli -p "${MPORT[$i]}" SAVE)" == OK ]] || die "SAVE on master$m failed"
    d="$WORK/load$m"
    mkdir -p "$d"
    mv "${MDIR[$i]}/dump.rdb" "$d/dump.rdb"
    rdb_mib=$(($(stat -c %s "$d/dump.rdb") / 1048576))
    PORT=$(free_port)
    s=$(py load-rdb "$d" "$PORT" "$WORK/pids/load$m" "$TIMEOUT") ||
      die "the server loading master$m's RDB did not come up (log: $d/redis.log)"
    lpid=$(cat "$WORK/pids/load$m")
    n=$(py keycount "$PORT")
    ((n == MKEYS[i])) || die "the server loaded $n keys from master$m's RDB, expected ${MKEYS[$i]}"
    own=$(grep -o 'DB loaded from disk: [0-9.]* seconds' "$d/redis.log" | grep -o '[0-9.]*' | head -1 || true)
    rec kind=rdbload master="$m" wall_s="$s" server_reported_s="${own:-}" rdb_mib="$rdb_mib" keys="$n"
    echo "  master$m: ${rdb_mib} MiB RDB loaded in $(fmt "$s")s from process start (server says ${own:-?}s)"
    times+=("$s")
    stop_orphan "$lpid" "$WORK/pids/load$m"
    rm -rf "$d"
  done
  LOAD_SUM=$(sum "${times[@]}")
  rec kind=rdbload_total sum_s="$LOAD_SUM"
fi

# --- stage 5: the redis-cli --pipe floor ------------------------------------------------------------------------
PIPE_S="" PIPE_TCPU=""
if has_stage pipe; then
  STAGE=pipe
  say "redis-cli --pipe floor: RESTORE files of all masters, in sequence, into ONE fresh target"
  dump_pids=()
  for ((m = 1; m <= MASTERS; m++)); do # dumping is not timed; one python per master, in parallel
    py restore-file "${MPORT[$((m - 1))]}" "$WORK/restore$m.resp" >"$WORK/restore$m.count" &
    dump_pids+=($!)
  done
  for pid in "${dump_pids[@]}"; do wait "$pid" || die "dumping RESTORE commands failed"; done
  echo "  RESTORE files: $(du -ch "$WORK"/restore*.resp | tail -1 | cut -f1)"
  start_redis pipe-target
  PCPU0=$(py cpu "$PORT")
  times=()
  for ((m = 1; m <= MASTERS; m++)); do
    py timed "$WORK/pipe$m.json" "$TIMEOUT" "$WORK/pipe$m.out" -- \
      bash -c 'exec redis-cli -p "$1" --pipe <"$2"' _ "$PORT" "$WORK/restore$m.resp"
    [[ "$(jget "$WORK/pipe$m.json" rc)" == 0 ]] || die "redis-cli --pipe of master$m's RESTOREs failed: $(tail -3 "$WORK/pipe$m.out")"
    grep -q '^errors: 0,' "$WORK/pipe$m.out" || die "the target rejected RESTOREs: $(tail -3 "$WORK/pipe$m.out")"
    s=$(jget "$WORK/pipe$m.json" wall_s)
    rec kind=pipe master="$m" wall_s="$s" restores="$(cat "$WORK/restore$m.count")"
    echo "  master$m's $(cat "$WORK/restore$m.count") RESTOREs: $(fmt "$s")s"
    times+=("$s")
    rm -f "$WORK/restore$m.resp"
  done
  n=$(py keycount "$PORT")
  ((n == TOTAL_KEYS)) || die "the pipe target holds $n keys, the masters $TOTAL_KEYS"
  PIPE_S=$(sum "${times[@]}")
  PIPE_TCPU=$(sum "$(py cpu "$PORT")" "-$PCPU0")
  rec kind=pipe_total sum_s="$PIPE_S" keys="$n" target_cpu_s="$PIPE_TCPU"
  stop_redis "$SPID" "$SDIR"
fi

# --- stage 6: a Redis Cluster target (3 masters): ferry, then the redis-cli --pipe floor -------------------------
CL_S="" CL_RSS_MIB="" CL_FAILED=0 CL_WHY="" CLPIPE_S="" CLPIPE_SUM="" CTCPU="" CMCPU="" CPCPU=""
if has_stage cluster; then
  STAGE=cluster
  say "cluster: full sync of $MASTERS master(s) into a fresh 3-master Redis Cluster (--once)"
  start_cluster cluster-ferry
  CSPEC="cluster://$(IFS=,; echo "${CPORTS[*]/#/127.0.0.1:}")"
  echo "  \$ ferry sync ${SOURCES[*]} --target $CSPEC --once --state-dir <tmp> ${FERRY_EXTRA[*]}"
  TCPU0=$(py cpu "${CPORTS[@]}") MCPU0=$(py cpu "${MPORT[@]}")
  py timed "$WORK/cluster-ferry.json" "$TIMEOUT" "$WORK/cluster-ferry.log" -- \
    "$FERRY" sync "${SOURCES[@]}" --target "$CSPEC" --once --state-dir "$WORK/cluster-ferry-state" "${FERRY_EXTRA[@]}"
  CRC=$(jget "$WORK/cluster-ferry.json" rc)
  CL_S=$(jget "$WORK/cluster-ferry.json" wall_s)
  CL_RSS_MIB=$(python3 -c 'import sys; print("%.1f" % (int(sys.argv[1]) / 1024))' "$(jget "$WORK/cluster-ferry.json" maxrss_kib)")
  # the nodes' keys: the data, ferry's checkpoint keys (one per slot and source), and nothing else of ferry's
  py target-keys "$WORK/cluster-keys.json" "${CPORTS[@]}" || die "counting the cluster's keys failed"
  CKEYS=$(jget "$WORK/cluster-keys.json" data)
  CCHECK=$(jget "$WORK/cluster-keys.json" checkpoint)
  COTHER=$(jget "$WORK/cluster-keys.json" other_ferry)
  CTCPU=$(sum "$(py cpu "${CPORTS[@]}")" "-$TCPU0") CMCPU=$(sum "$(py cpu "${MPORT[@]}")" "-$MCPU0")
  if [[ "$(jget "$WORK/cluster-ferry.json" timed_out)" == True ]]; then
    CL_FAILED=1 CL_WHY="timed out after ${TIMEOUT}s (BENCH_TIMEOUT)"
  elif ((CRC != 0)); then
    CL_FAILED=1 CL_WHY="ferry exited with status $CRC"
  elif ((COTHER != 0)); then
    CL_FAILED=1 CL_WHY="the cluster holds $COTHER ferry:* keys that are not checkpoints, e.g. $(jget "$WORK/cluster-keys.json" other_sample)"
  elif ((CKEYS != TOTAL_KEYS)); then
    CL_FAILED=1 CL_WHY="the cluster holds $CKEYS keys besides ferry's $CCHECK checkpoint keys, the masters $TOTAL_KEYS"
  else
    read -r CHECKED BAD < <(py compare "cluster:$(IFS=,; echo "${CPORTS[*]}")" "$VERIFY" "$BIG" "${MPORT[@]}" \
      2>"$WORK/cluster-compare.err") || die "comparing the cluster with the masters failed: $(tail -3 "$WORK/cluster-compare.err")"
    if ((BAD)); then
      CL_FAILED=1 CL_WHY="$BAD of $CHECKED sampled keys differ between the masters and the cluster: $(head -3 "$WORK/cluster-compare.err")"
    else
      echo "  compared $CHECKED sampled keys (every 1000-element one included) with the masters: all equal"
    fi
  fi
  rec kind=cluster wall_s="$CL_S" peak_rss_mib="$CL_RSS_MIB" rc="$CRC" target_keys="$CKEYS" \
    checkpoint_keys="$CCHECK" other_ferry_keys="$COTHER" node_keys="$(jget "$WORK/cluster-keys.json" per_node)" \
    source_keys="$TOTAL_KEYS" keys_per_s="$(python3 -c 'import sys; print(round(int(sys.argv[1]) / float(sys.argv[2])))' "$TOTAL_KEYS" "$CL_S")" \
    user_s="$(jget "$WORK/cluster-ferry.json" user_s)" sys_s="$(jget "$WORK/cluster-ferry.json" sys_s)" \
    target_cpu_s="$CTCPU" masters_cpu_s="$CMCPU" ok="$((1 - CL_FAILED))" why="$CL_WHY"
  if ((CL_FAILED)); then
    echo "error: [stage cluster] $CL_WHY; last lines of ferry's log:" >&2
    tail -15 "$WORK/cluster-ferry.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' >&2
    echo "  (the other stages still run; the script exits 1 at the end)" >&2
  else
    echo "  ferry: $(fmt "$CL_S")s, peak RSS $CL_RSS_MIB MiB; the nodes hold $(jget "$WORK/cluster-keys.json" per_node) keys:" \
      "$CKEYS (= the masters') + $CCHECK checkpoint keys"
  fi
  stop_cluster

  say "cluster floor: every key as RESTORE into the file of its slot's node, the 3 files piped at once"
  start_cluster cluster-pipe
  dump_pids=()
  for ((m = 1; m <= MASTERS; m++)); do # not timed; one python per master, in parallel
    py restore-file "${MPORT[$((m - 1))]}" "$WORK/crestore$m" "${CPORTS[0]}" >"$WORK/crestore$m.count" &
    dump_pids+=($!)
  done
  for pid in "${dump_pids[@]}"; do wait "$pid" || die "dumping RESTORE commands by slot owner failed"; done
  for p in "${CPORTS[@]}"; do # one file per node: every master's keys of its slots, master after master
    for ((m = 1; m <= MASTERS; m++)); do cat "$WORK/crestore$m.$p"; done >"$WORK/cnode$p.resp"
    rm -f "$WORK"/crestore*."$p"
  done
  echo "  RESTORE files per node: $(for p in "${CPORTS[@]}"; do du -h "$WORK/cnode$p.resp" | cut -f1; done | paste -sd' ')"
  par=()
  for p in "${CPORTS[@]}"; do
    par+=(-- "$WORK/cpipe$p.out" bash -c 'exec redis-cli -p "$1" --pipe <"$2"' _ "$p" "$WORK/cnode$p.resp")
  done
  PCPU0=$(py cpu "${CPORTS[@]}")
  py timed-par "$WORK/cpipe.json" "$TIMEOUT" "${par[@]}"
  [[ "$(jget "$WORK/cpipe.json" timed_out)" == False ]] || die "the pipes into the cluster took more than ${TIMEOUT}s (BENCH_TIMEOUT)"
  CLPIPE_S=$(jget "$WORK/cpipe.json" wall_s)
  times=()
  child() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["children"][int(sys.argv[2])][sys.argv[3]])' "$WORK/cpipe.json" "$1" "$2"; }
  for i in "${!CPORTS[@]}"; do
    p=${CPORTS[$i]}
    [[ "$(child "$i" rc)" == 0 ]] || die "redis-cli --pipe into node $p failed: $(tail -3 "$WORK/cpipe$p.out")"
    grep -q '^errors: 0,' "$WORK/cpipe$p.out" || die "node $p rejected RESTOREs: $(tail -3 "$WORK/cpipe$p.out")"
    s=$(child "$i" wall_s)
    restores=$(python3 -c 'import json, sys; print(sum(json.load(open(f))[sys.argv[1]] for f in sys.argv[2:]))' \
      "$p" "$WORK"/crestore*.count)
    rec kind=cluster_pipe node_port="$p" wall_s="$s" restores="$restores"
    echo "  node $p: $restores RESTOREs in $(fmt "$s")s"
    times+=("$s")
    rm -f "$WORK/cnode$p.resp"
  done
  py target-keys "$WORK/cluster-pipe-keys.json" "${CPORTS[@]}" || die "counting the cluster's keys failed"
  n=$(jget "$WORK/cluster-pipe-keys.json" total)
  ((n == TOTAL_KEYS)) || die "the floor's cluster holds $n keys, the masters $TOTAL_KEYS"
  CLPIPE_SUM=$(sum "${times[@]}")
  CPCPU=$(sum "$(py cpu "${CPORTS[@]}")" "-$PCPU0")
  rec kind=cluster_pipe_total wall_s="$CLPIPE_S" sum_s="$CLPIPE_SUM" max_s="$(max "${times[@]}")" keys="$n" target_cpu_s="$CPCPU" \
    keys_per_s="$(python3 -c 'import sys; print(round(int(sys.argv[1]) / float(sys.argv[2])))' "$n" "$CLPIPE_S")"
  echo "  all $n RESTOREs in $(fmt "$CLPIPE_S")s (3 pipes at once; $(fmt "$CLPIPE_SUM")s summed)"
  stop_cluster
fi

# --- stage 8 (optional): incremental lag under load, ferry beside a native replica ------------------------------
STREAM_FILE=""
if has_stage stream; then
  STAGE=stream
  say "stream: end-to-end lag under redis-benchmark -t set,lpush,incr -n $STREAM_N -P 16 -r 100000"
  # a fresh master of its own (the full sync before the load is not what is measured here)
  start_redis stream-master --repl-diskless-sync "$DISKLESS" --repl-diskless-sync-delay 0
  SM=$PORT
  start_redis stream-target
  ST=$PORT
  start_redis stream-replica
  SR=$PORT SRPID=$SPID
  redis-cli -p "$SR" REPLICAOF 127.0.0.1 "$SM" >/dev/null
  "$FERRY" sync --source "redis://127.0.0.1:$SM" --target "redis://127.0.0.1:$ST" --state-dir "$WORK/stream-state" \
    "${FERRY_EXTRA[@]}" </dev/null >"$WORK/ferry-stream.log" 2>&1 &
  FSPID=$!
  PIDS+=("$FSPID")
  redis-cli -p "$SM" SET ferry-bench:probe ready >/dev/null
  py wait-key ferry-bench:probe ready 120 "$ST" "$SR" ||
    die "ferry or the native replica did not receive the first write within 120s (log: $WORK/ferry-stream.log)"
  kill -0 "$FSPID" 2>/dev/null || die "ferry (without --once) exited: $(tail -5 "$WORK/ferry-stream.log")"
  rm -f "$WORK/stream.stop"
  py lag "$SM" "ferry=$ST,native=$SR" "$WORK/stream.stop" "$STREAM_SAMPLE_MS" "$WORK/lag.json" &
  LAGPID=$!
  PIDS+=("$LAGPID")
  t0=$EPOCHREALTIME
  redis-benchmark -p "$SM" -t set,lpush,incr -n "$STREAM_N" -P 16 -r 100000 -q >"$WORK/benchmark.out" 2>&1 ||
    die "redis-benchmark failed: $(tail -3 "$WORK/benchmark.out")"
  LOAD_S=$(sum "$EPOCHREALTIME" "-$t0")
  touch "$WORK/stream.stop"
  wait "$LAGPID" || die "the lag probe failed (ferry log: $WORK/ferry-stream.log)"
  forget_pid "$LAGPID"
  kill -0 "$FSPID" 2>/dev/null || die "ferry exited during the load: $(tail -5 "$WORK/ferry-stream.log")"
  FS_RSS_KIB=$(awk '/^VmHWM:/ {print $2}' "/proc/$FSPID/status")
  # both copies must equal the master once the load is over
  sleep 1
  py target-keys "$WORK/stream-keys.json" "$ST" || die "counting ferry's target's keys failed"
  MK=$(py keycount "$SM") FK=$(jget "$WORK/stream-keys.json" data) NK=$(py keycount "$SR") # FK: without ferry's checkpoint key
  tr '\r' '\n' <"$WORK/benchmark.out" | grep -E 'requests per second' | sed 's/^/  load: /'
  OPS=$((STREAM_N * 3))
  STREAM_FILE="$WORK/lag.json"
  python3 - "$WORK/lag.json" "$OUT" "$RUN_ID" "$LOAD_S" "$OPS" "$FS_RSS_KIB" "$MK" "$FK" "$NK" <<'EOF'
import json, sys
lag, out, run, load_s, ops, rss, mk, fk, nk = sys.argv[1:]
res = json.load(open(lag))
with open(out, "a") as f:
    for name, r in res.items():
        drain = r["drain_ms"] / 1000
        r.update(run=run, kind="stream", who=name, load_s=round(float(load_s), 3), ops=int(ops),
                 apply_rate_ops_s=round(int(ops) / (float(load_s) + drain)),
                 keys=int(fk if name == "ferry" else nk), master_keys=int(mk))
        if name == "ferry":
            r["peak_rss_mib"] = round(int(rss) / 1024, 1)
        f.write(json.dumps(r) + "\n")
        res[name] = r
json.dump(res, open(lag, "w"))
EOF
  ((FK == MK)) || echo "warning: [stage stream] ferry's target holds $FK keys, the master $MK" >&2
  ((NK == MK)) || echo "warning: [stage stream] the native replica holds $NK keys, the master $MK" >&2
  stop_pid "$FSPID"
fi

# --- stage 7: the table and the ratios --------------------------------------------------------------------------
STAGE=report
say "results ($MASTERS master(s) x $KEYS keys = $TOTAL_KEYS keys, $((TOTAL_MEM / 1048576)) MiB used_memory; redis $REDIS_VER; $NPROC cores)"
row() { printf '  %-44s %12s %12s\n' "$@"; }
if has_stage ferry || has_stage replication || has_stage rdbload || has_stage pipe; then
  row "measurement" "seconds" "ferry / it"
  row "--------------------------------------------" "------------" "------------"
fi
if has_stage ferry; then
  if ((FERRY_FAILED)); then row "ferry sync --once (FAILED: see above)" "$(fmt "$FERRY_S")" ""; else row "ferry sync --once (all masters at once)" "$(fmt "$FERRY_S")" "1.00"; fi
fi
R_REPL="" R_REPLMAX="" R_PIPE="" R_LOAD=""
ok_ferry() { has_stage ferry && ((FERRY_FAILED == 0)); }
if [[ -n "$REPL_SUM" ]]; then
  ok_ferry && R_REPL=$(ratio "$FERRY_S" "$REPL_SUM") && R_REPLMAX=$(ratio "$FERRY_S" "$REPL_MAX")
  row "native replication, sum over masters" "$(fmt "$REPL_SUM")" "${R_REPL:-}"
  if ((MASTERS > 1)); then row "native replication, max (parallel view)" "$(fmt "$REPL_MAX")" "${R_REPLMAX:-}"; fi
fi
if [[ -n "$PIPE_S" ]]; then
  ok_ferry && R_PIPE=$(ratio "$FERRY_S" "$PIPE_S")
  row "redis-cli --pipe RESTOREs into one target" "$(fmt "$PIPE_S")" "${R_PIPE:-}"
fi
if [[ -n "$LOAD_SUM" ]]; then
  ok_ferry && R_LOAD=$(ratio "$FERRY_S" "$LOAD_SUM")
  row "native RDB load at start-up, sum" "$(fmt "$LOAD_SUM")" "${R_LOAD:-}"
fi
if has_stage ferry; then
  echo "  ferry peak RSS: ${FERRY_RSS_MIB} MiB (masters' used_memory: $((TOTAL_MEM / 1048576)) MiB)"
fi
R_MM_LOAD="" R_MM_REPL="" R_MM_FERRY=""
if has_stage master && ((MM_FAILED == 0)); then
  echo
  row "master mode (--apply replication)" "seconds" "it / other"
  row "--------------------------------------------" "------------" "------------"
  row "ferry sync --apply replication --once" "$(fmt "$MM_S")" "1.00"
  [[ -n "$LOAD_SUM" ]] && R_MM_LOAD=$(ratio "$MM_S" "$LOAD_SUM") && row "  / native RDB load at start-up, sum" "$(fmt "$LOAD_SUM")" "$R_MM_LOAD"
  [[ -n "$REPL_SUM" ]] && R_MM_REPL=$(ratio "$MM_S" "$REPL_SUM") && row "  / native replication, sum" "$(fmt "$REPL_SUM")" "$R_MM_REPL"
  ok_ferry && R_MM_FERRY=$(ratio "$MM_S" "$FERRY_S") && row "  / ferry's command path" "$(fmt "$FERRY_S")" "$R_MM_FERRY"
  echo "  master mode peak RSS: ${MM_RSS_MIB} MiB"
fi
R_CL_FERRY="" R_CL_PIPE=""
if has_stage cluster; then
  echo
  kps() { python3 -c 'import sys; print("%d" % (int(sys.argv[1]) / float(sys.argv[2])))' "$TOTAL_KEYS" "$1"; }
  row "cluster target (3 masters)" "seconds" "keys/s"
  row "--------------------------------------------" "------------" "------------"
  if ((CL_FAILED)); then row "ferry sync --once into the cluster (FAILED)" "$(fmt "$CL_S")" ""; else row "ferry sync --once into the cluster" "$(fmt "$CL_S")" "$(kps "$CL_S")"; fi
  if ok_ferry; then row "ferry sync --once into one server (ferry)" "$(fmt "$FERRY_S")" "$(kps "$FERRY_S")"; fi
  row "redis-cli --pipe into the 3 nodes at once" "$(fmt "$CLPIPE_S")" "$(kps "$CLPIPE_S")"
  if ((CL_FAILED == 0)); then
    ok_ferry && R_CL_FERRY=$(ratio "$CL_S" "$FERRY_S")
    R_CL_PIPE=$(ratio "$CL_S" "$CLPIPE_S")
    [[ -n "$R_CL_FERRY" ]] && echo "  cluster ferry / standalone ferry: ${R_CL_FERRY}x"
    echo "  cluster ferry / cluster pipe floor: ${R_CL_PIPE}x"
    [[ -n "$PIPE_S" ]] && echo "  cluster pipe floor / standalone pipe floor: $(ratio "$CLPIPE_S" "$PIPE_S")x"
    echo "  ferry peak RSS (cluster target): ${CL_RSS_MIB} MiB"
  fi
  # CPU seconds spent on each sync (a 2-core machine cannot finish faster than this sum / 2)
  cpu_row() { # label ferry.json target_cpu masters_cpu
    local f
    f=$(sum "$(jget "$2" user_s)" "$(jget "$2" sys_s)")
    printf '  %-44s ferry %s + target %s + masters %s = %s\n' "$1" "$(fmt "$f")" "$(fmt "$3")" "$(fmt "$4")" "$(fmt "$(sum "$f" "$3" "$4")")"
  }
  echo "  CPU seconds of the sync:"
  has_stage ferry && cpu_row "  into one server" "$WORK/ferry.json" "$TCPU" "$MCPU"
  cpu_row "  into the cluster (3 nodes)" "$WORK/cluster-ferry.json" "$CTCPU" "$CMCPU"
  [[ -n "${PIPE_TCPU:-}" ]] && printf '  %-44s %s\n' "  pipe floor, one server" "target $(fmt "$PIPE_TCPU")"
  printf '  %-44s %s\n' "  pipe floor, cluster (3 nodes)" "target $(fmt "$CPCPU")"
fi
rec kind=summary ok="$((FERRY_FAILED || CL_FAILED || MM_FAILED ? 0 : 1))" ferry_s="${FERRY_S:-}" ferry_peak_rss_mib="${FERRY_RSS_MIB:-}" \
  replication_sum_s="${REPL_SUM:-}" replication_max_s="${REPL_MAX:-}" pipe_s="${PIPE_S:-}" rdbload_sum_s="${LOAD_SUM:-}" \
  ferry_over_replication_sum="${R_REPL:-}" ferry_over_replication_max="${R_REPLMAX:-}" \
  ferry_over_pipe="${R_PIPE:-}" ferry_over_rdbload="${R_LOAD:-}" total_keys="$TOTAL_KEYS" total_used_memory="$TOTAL_MEM" \
  cluster_ferry_s="${CL_S:-}" cluster_ferry_peak_rss_mib="${CL_RSS_MIB:-}" cluster_pipe_s="${CLPIPE_S:-}" \
  cluster_over_standalone_ferry="${R_CL_FERRY:-}" cluster_ferry_over_cluster_pipe="${R_CL_PIPE:-}" \
  master_s="${MM_S:-}" master_peak_rss_mib="${MM_RSS_MIB:-}" master_over_rdbload="${R_MM_LOAD:-}" \
  master_over_replication="${R_MM_REPL:-}" master_over_command_path="${R_MM_FERRY:-}"
if [[ -n "$STREAM_FILE" ]]; then
  echo
  printf '  %-8s %8s %9s %9s %9s %9s %9s %12s\n' "stream" samples "p50 ms" "p99 ms" "p99.9 ms" "max ms" "drain ms" "apply ops/s"
  python3 - "$STREAM_FILE" <<'EOF'
import json, sys
for name, r in json.load(open(sys.argv[1])).items():
    print("  %-8s %8d %9.2f %9.2f %9.2f %9.2f %9.2f %12d" % (name, r["samples"], r["p50_ms"], r["p99_ms"],
          r["p999_ms"], r["max_ms"], r["drain_ms"], r["apply_rate_ops_s"]))
    if "peak_rss_mib" in r:
        print("  %-8s peak RSS %.1f MiB" % ("", r["peak_rss_mib"]))
    if r["samples"] < 1000:
        print("  %-8s (fewer than 1000 samples: p99.9 is the max; raise BENCH_STREAM_N)" % "")
EOF
fi
echo
echo "  raw numbers: $OUT"
if ((FERRY_FAILED)); then
  STAGE=ferry
  ((CL_FAILED)) && echo "error: [stage cluster] $CL_WHY" >&2
  die "$FERRY_WHY (the other figures above are valid)"
fi
if ((CL_FAILED)); then
  STAGE=cluster
  die "$CL_WHY (the other figures above are valid)"
fi
if ((MM_FAILED)); then
  STAGE=master
  die "$MM_WHY (the other figures above are valid)"
fi
