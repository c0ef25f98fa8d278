#!/usr/bin/env bash
# Seed the RDB fuzz corpora (fuzz/corpus/rdb_split, fuzz/corpus/rdb_decode) with files real servers write.
#
#   bash scripts/fuzz-seed.sh                 # every provisioned version, and the shared fixtures
#   bash scripts/fuzz-seed.sh 7.4 valkey-9    # only these versions (names as in .cache/redis/versions.env)
#
# Each server of .cache/redis/versions.env (scripts/redis-versions.sh; the Debian 7.0 one is
# /usr/bin/redis-server) is started on a free loopback port in a temporary directory with
# `--save "" --appendonly no` (and `--enable-debug-command yes` on 7.0+, which refuse DEBUG otherwise
# and which 5.0-6.2 refuse to start with), filled, SAVEd, and its dump.rdb copied into both corpora as
# `<version>-<variant>.rdb`:
#
#   small    compact-encoding limits set to 4 (ziplist/listpack/intset entries, quicklist node size,
#            stream node entries) so every big encoding (quicklist of several nodes, hashtable, skiplist,
#            several stream nodes) appears with a handful of elements; quicklist nodes LZF-compressed
#            (list-compress-depth 1); plain quicklist nodes on 7.0+ (DEBUG QUICKLIST-PACKED-THRESHOLD);
#            LRU idle times (maxmemory-policy allkeys-lru: IDLE opcodes). A few KiB: rdb_split feeds it
#            byte by byte too.
#   default  default limits, values just past them (130-field hash, 129-member zset, 513-member intset,
#            a 600-element list, 300-entry stream) and an 8 KB string, in db 0 only (under 32 KiB, the
#            -max_len the fuzz runs use); LFU counters (FREQ opcodes).
#   cluster  (7.0+) `--cluster-enabled yes`, all 16384 slots on the one node (CLUSTER ADDSLOTSRANGE),
#            the small data set in db 0 spread over a few slots: 7.4 and 8.2 write a SLOT_INFO record
#            before each slot's keys.
#
# Every variant holds: strings (8/16/32-bit integers, a 64-bit one stored as text, short raw, long
# compressible (LZF) and incompressible), lists, sets (intset, listpack on 7.2+, hashtable), sorted sets
# (±inf, fractional scores), hashes, streams (deleted entries, two groups, consumers, PEL, an emptied
# stream), keys with TTLs in seconds and ms, dbs 0, 1 and 3 (small only), functions (7.0+), hash
# field TTLs (HEXPIRE: 7.4, 8.2, Valkey 9), vector sets (8.2: a module value, type 7).
#
# The corpora are not in git (fuzz/.gitignore): this script is how they are made again. Files from the
# shared fixtures under 64 KiB are copied too (FERRY_FIXTURES or ../shared/fixtures; skipped if absent).
# Needs redis-cli (any 5.0+; the suite installs Debian's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
OUT=("$ROOT/fuzz/corpus/rdb_split" "$ROOT/fuzz/corpus/rdb_decode")
ENV_FILE="$ROOT/.cache/redis/versions.env"

log() { printf '[fuzz-seed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v redis-cli >/dev/null || die "redis-cli is not on PATH"
mkdir -p "${OUT[@]}"

# name -> binary, from versions.env (FERRY_REDIS_7_0 -> 7.0, FERRY_REDIS_VALKEY_9 -> valkey-9).
declare -A BIN
if [[ -f "$ENV_FILE" ]]; then
  while IFS='=' read -r k v; do
    [[ "$k" == FERRY_REDIS_* && -n "$v" ]] || continue
    n=${k#FERRY_REDIS_}
    if [[ "$n" == VALKEY_* ]]; then n="valkey-${n#VALKEY_}"; else n="${n/_/.}"; fi
    BIN[$n]=$v
  done <"$ENV_FILE"
fi
[[ -z "${BIN[7.0]:-}" ]] && command -v redis-server >/dev/null && BIN[7.0]=$(command -v redis-server)
ORDER=(5.0 6.0 6.2 7.0 7.2 7.4 8.2 valkey-8 valkey-9)
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=("${ORDER[@]}")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-fuzz-seed-XXXXXX")
PID=""
cleanup() {
  if [[ -n "$PID" ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Feature levels: Redis version as a number (Valkey 8 and 9 forked from 7.2), and Valkey's own.
level() { case $1 in valkey-*) echo 72 ;; *) echo "${1/./}" ;; esac; }
has_hexpire() { [[ $1 == 7.4 || $1 == 8.2 || $1 == valkey-9 ]]; }

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000)) # the cluster bus port (+10000) must stay below 65536
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port found"
}

PORT=""
# start VERSION DIR EXTRA...: a server on a free port, in the foreground of a background job.
start() {
  local v=$1 dir=$2 bin=${BIN[$1]}
  shift 2
  local args=(--bind 127.0.0.1 --dir "$dir" --save "" --appendonly no --daemonize no --logfile "$dir/log")
  (($(level "$v") >= 70)) && args+=(--enable-debug-command yes)
  for _ in 1 2 3; do
    PORT=$(free_port)
    "$bin" --port "$PORT" "${args[@]}" "$@" </dev/null >/dev/null 2>&1 &
    PID=$!
    for _ in $(seq 100); do
      [[ "$(redis-cli -p "$PORT" PING 2>/dev/null)" == PONG ]] && return 0
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$PID" 2>/dev/null || true # it may have exited already (port taken)
    wait "$PID" 2>/dev/null || true
    PID=""
  done
  die "$v did not start: $(tail -5 "$dir/log" 2>/dev/null)"
}

stop() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

# Run the commands of stdin (one a line, redis-cli quoting); fail on any error reply.
run() {
  local out
  out=$(redis-cli -p "$PORT" 2>&1) || die "redis-cli failed: $out"
  if grep -E '^(ERR|WRONGTYPE|NOSCRIPT|CROSSSLOT|MOVED|CLUSTERDOWN|\(error\))' <<<"$out" >&2; then
    die "a command failed on port $PORT"
  fi
}

# A deterministic incompressible-looking text of N hex characters.
hex() { local s="" i=0; while ((${#s} < $1)); do s+=$(printf '%s' "$2$i" | md5sum | cut -c1-32); i=$((i + 1)); done; echo "${s:0:$1}"; }

# Commands that fill one db. $1 version, $2 variant, $3 key prefix (a hash tag in cluster mode), $4 1 for
# the first call on a server (server-wide things: the function library).
fill() {
  local v=$1 var=$2 k=$3 first=$4 lv i n big=0
  lv=$(level "$v")
  if [[ $var == default ]]; then big=1; fi
  # Strings.
  echo "SET ${k}s:i8 -7"
  echo "SET ${k}s:i16 1000"
  echo "SET ${k}s:i32 -100000"
  echo "SET ${k}s:i64 12345678901234"
  echo "SET ${k}s:raw hello"
  echo "SET ${k}s:empty \"\""
  echo "SET ${k}s:lzf $(printf 'abcabcabcd%.0s' $(seq 30))"
  echo "SET ${k}s:rand $(hex 90 "$k")"
  echo "SET ${k}s:ttl with-ttl EX 100000"
  echo "SET ${k}s:pttl with-pttl"
  echo "PEXPIREAT ${k}s:pttl 4102444800123"
  if ((big)); then echo "SET ${k}s:big $(printf 'big-string-%05d;' $(seq 500))"; fi
  # Lists.
  echo "RPUSH ${k}l:small a b 3 -4"
  n=$((big ? 600 : 11))
  echo "RPUSH ${k}l:many $(seq -s ' ' 1 "$n")"
  echo "RPUSH ${k}l:long $(for i in 1 2 3 4 5 6; do printf 'elem-%02d-%s ' "$i" "$(printf 'x%.0s' $(seq 60))"; done)"
  echo "RPUSH ${k}l:mixed $(hex 40 l) 7 $(printf 'yyyy%.0s' $(seq 30)) -9000000000 z"
  echo "EXPIRE ${k}l:small 100000"
  if ((lv >= 70)); then
    echo "RPUSH ${k}l:plain short $(printf 'p%.0s' $(seq 150)) tail $(hex 130 p)"
  fi
  # Sets.
  echo "SADD ${k}z:int 1 2 3 -5"
  n=$((big ? 513 : 9))
  echo "SADD ${k}z:intbig $(seq -s ' ' 100 $((100 + n - 1)))"
  echo "SADD ${k}z:int64 1 4294967296 -9223372036854775808"
  echo "SADD ${k}z:str a b c"
  n=$((big ? 200 : 9))
  echo "SADD ${k}z:strbig $(for i in $(seq "$n"); do printf 'm%d ' "$i"; done)"
  # Sorted sets.
  echo "ZADD ${k}o:small 1 a 2.5 b -3 c"
  echo "ZADD ${k}o:inf +inf top -inf bottom 0 zero 1e-7 tiny"
  n=$((big ? 129 : 7))
  echo "ZADD ${k}o:big $(for i in $(seq "$n"); do printf '%d.25 m%d ' "$i" "$i"; done)"
  echo "ZADD ${k}o:long 1 $(hex 80 o)"
  # Hashes.
  echo "HSET ${k}h:small f1 v1 f2 2 f3 $(printf 'hv%.0s' $(seq 20))"
  n=$((big ? 130 : 8))
  echo "HSET ${k}h:big $(for i in $(seq "$n"); do printf 'field%d value%d ' "$i" "$i"; done)"
  echo "HSET ${k}h:long f $(hex 100 h)"
  echo "PEXPIRE ${k}h:small 99999999"
  if has_hexpire "$v"; then
    echo "HSET ${k}h:ttl a 1 b 2 c 3"
    echo "HEXPIRE ${k}h:ttl 100000 FIELDS 2 a b"
    echo "HSET ${k}h:ttlbig $(for i in $(seq $((big ? 150 : 9))); do printf 'f%d v%d ' "$i" "$i"; done)"
    echo "HPEXPIRE ${k}h:ttlbig 50000000 FIELDS 3 f1 f2 f5"
    echo "HEXPIRE ${k}h:ttlbig 200000 FIELDS 1 f7"
  fi
  # Streams.
  n=$((big ? 300 : 9))
  for i in $(seq "$n"); do echo "XADD ${k}x:s $i-1 f1 v$i f2 $i"; done
  echo "XADD ${k}x:s $((n + 1))-0 other 1"
  echo "XADD ${k}x:s $((n + 2))-0 f1 a f2 b f3 c"
  echo "XDEL ${k}x:s 2-1 3-1"
  echo "XGROUP CREATE ${k}x:s g1 0"
  echo "XGROUP CREATE ${k}x:s g2 \$"
  echo "XREADGROUP GROUP g1 alice COUNT 3 STREAMS ${k}x:s >"
  echo "XREADGROUP GROUP g1 bob COUNT 2 STREAMS ${k}x:s >"
  echo "XACK ${k}x:s g1 1-1"
  if ((lv >= 62)); then echo "XGROUP CREATECONSUMER ${k}x:s g2 carol"; fi
  echo "XADD ${k}x:empty 1-1 a b"
  echo "XDEL ${k}x:empty 1-1"
  # Functions: one library a server.
  if ((lv >= 70 && first)); then
    echo "FUNCTION LOAD \"#!lua name=seedlib\\nredis.register_function('seedf', function(keys, args) return 1 end)\""
  fi
  if [[ $v == 8.2 ]]; then
    echo "VADD ${k}v:vs VALUES 3 0.1 0.2 0.3 e1"
    echo "VADD ${k}v:vs VALUES 3 1 -2 3.5 e2 SETATTR \"{\\\"a\\\":1}\""
  fi
  return 0
}

settings() { # CONFIG SET lines for a variant
  local v=$1 var=$2 lv
  lv=$(level "$v")
  if [[ $var == default ]]; then
    echo "CONFIG SET maxmemory-policy allkeys-lfu"
    return
  fi
  echo "CONFIG SET maxmemory-policy allkeys-lru"
  echo "CONFIG SET hash-max-ziplist-entries 4"
  echo "CONFIG SET zset-max-ziplist-entries 4"
  echo "CONFIG SET set-max-intset-entries 4"
  echo "CONFIG SET list-max-ziplist-size 4"
  echo "CONFIG SET list-compress-depth 1"
  echo "CONFIG SET stream-node-max-entries 4"
  ((lv >= 72)) && echo "CONFIG SET set-max-listpack-entries 4"
  ((lv >= 70)) && echo "DEBUG QUICKLIST-PACKED-THRESHOLD 100"
  return 0
}

save_to() { # VERSION VARIANT DIR
  local f="$3/dump.rdb" name="$1-$2.rdb"
  [[ "$(redis-cli -p "$PORT" SAVE)" == OK ]] || die "SAVE failed on $1 ($2)"
  [[ -s "$f" ]] || die "no dump.rdb from $1 ($2)"
  for o in "${OUT[@]}"; do cp "$f" "$o/$name"; done
  log "$name: $(stat -c %s "$f") bytes ($(head -c 9 "$f"))"
}

for v in "${WANT[@]}"; do
  if [[ -z "${BIN[$v]:-}" ]]; then
    log "skipping $v: not provisioned (scripts/redis-versions.sh)"
    continue
  fi
  for var in small default; do
    dir="$WORK/$v-$var"
    mkdir -p "$dir"
    start "$v" "$dir"
    dbs="0 1 3"
    if [[ $var == default ]]; then dbs=0; fi # one db: the file stays under 32 KiB
    { settings "$v" "$var"; for db in $dbs; do echo "SELECT $db"; fill "$v" "$var" "" $((db == 0)); done; } | run
    save_to "$v" "$var" "$dir"
    stop
  done
  if (($(level "$v") >= 70)); then
    dir="$WORK/$v-cluster"
    mkdir -p "$dir"
    start "$v" "$dir" --cluster-enabled yes --cluster-config-file "$dir/nodes.conf"
    echo "CLUSTER ADDSLOTSRANGE 0 16383" | run
    state=""
    for _ in $(seq 100); do
      state=$(redis-cli -p "$PORT" CLUSTER INFO 2>&1 || true)
      [[ $state == *cluster_state:ok* ]] && break
      sleep 0.1
    done
    [[ $state == *cluster_state:ok* ]] || die "$v: cluster state not ok: $state"
    { settings "$v" small; first=1
      for tag in "{a}" "{b}" "{slot2}" "{x}"; do fill "$v" small "$tag" $first; first=0; done; } | run
    save_to "$v" cluster "$dir"
    stop
  fi
done

fixtures=${FERRY_FIXTURES:-$ROOT/../shared/fixtures}
if [[ -d "$fixtures/rdb" ]]; then
  n=0
  while IFS= read -r f; do
    name="fixture-$(basename "$(dirname "$f")")-$(basename "$f")"
    for o in "${OUT[@]}"; do cp "$f" "$o/$name"; done
    n=$((n + 1))
  done < <(find "$fixtures/rdb" -name '*.rdb' -size -64k | sort)
  log "$n shared fixtures under 64 KiB copied"
else
  log "no shared fixtures at $fixtures: only server files"
fi
log "corpora: $(ls "${OUT[0]}" | wc -l) files in fuzz/corpus/rdb_split, $(ls "${OUT[1]}" | wc -l) in fuzz/corpus/rdb_decode"
