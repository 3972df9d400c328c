#!/usr/bin/env bash
# `make cost`: what 1,000 conversations of five messages cost, from measured
# figures, and whether 128 MB is enough for the two chat functions.
#
#   1. release builds of send-message and get-history (what Lambda runs),
#      debug builds of the migrator and the fake Claude;
#   2. a fresh database cost_<random> on TEST_PG_ADMIN_URL, migrated; a
#      private redis-server on a free port whose every command is recorded
#      (MONITOR); two fake Claudes: one at a short Haiku reply's pace
#      (claude_reply_ms in scripts/cost/prices.toml), one answering at once;
#   3. scripts/cost/cost.py: conversations through the bootstraps under
#      Lambda's CPU share of the template's memory size (and of 128 MB),
#      then the memory study; prints both tables, writes target/cost/cost.json;
#   4. cleanup, also on failure or Ctrl-C: the processes, the database, the
#      cgroups, the work directory.
#
# The prices and every assumption are in scripts/cost/prices.toml. Knobs:
# COST_CONVERSATIONS (12 per memory size), COST_WORKERS (4 instances of each
# function), COST_KEEP_LOGS=1. No stdin. About 5 minutes after the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

started=$(date +%s)
log() { printf '[cost %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

rand=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="cost_$rand"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cost.$rand.XXXX")
PIDS=()
DB_CREATED=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  # cost.py removes its cgroups; these are what a killed run left.
  for cg in /sys/fs/cgroup/cpu/cost-"$rand"-* /sys/fs/cgroup/cost-"$rand"-*; do
    [ -d "$cg" ] || continue
    while read -r p; do kill -KILL "$p" 2>/dev/null; done <"$cg/cgroup.procs"
    rmdir "$cg" 2>/dev/null
  done
  if [ "$DB_CREATED" -eq 1 ]; then
    timeout 30 psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >&2 \
      || log "could not drop database $DB"
  fi
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -s "$f" ] || continue
      echo "---- last 20 lines of $(basename "$f") ----" >&2
      tail -n 20 "$f" >&2
    done
  fi
  if [ "${COST_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  log "done (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for p in $(seq "$1" "$2"); do port_busy "$p" || { echo "$p"; return 0; }; done
  return 1
}
wait_port() {
  local port=$1 pid=$2 what=$3
  for _ in $(seq 1 300); do
    port_busy "$port" && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited early"
    sleep 0.1
  done
  die "$what is not listening on $port"
}

command -v python3 >/dev/null || die "python3 is needed"
python3 -c 'import tomllib' 2>/dev/null || die "python3 3.11 or later is needed (tomllib)"
command -v redis-server >/dev/null || scripts/tools.sh apt </dev/null >&2
[ -n "${TEST_PG_ADMIN_URL:-}" ] || eval "$(scripts/services.sh </dev/null)"
[ -n "${TEST_PG_ADMIN_URL:-}" ] || die "TEST_PG_ADMIN_URL is not set"

# Two invocations on purpose (as scripts/bench.sh): built together, Cargo
# would unify other packages' dependency features into the functions'.
log "cargo build --release -p send-message -p get-history"
cargo build --locked --release -p send-message -p get-history </dev/null >"$WORK/build-release.log" 2>&1 \
  || { tail -n 40 "$WORK/build-release.log" >&2; die "release build failed"; }
log "cargo build (debug) of the migrator and the fake Claude"
cargo build --locked --quiet -p support-chat --bin migrate -p testkit --bin fake-claude \
  </dev/null >"$WORK/build-debug.log" 2>&1 \
  || { tail -n 40 "$WORK/build-debug.log" >&2; die "debug build failed"; }
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

admin_base=${TEST_PG_ADMIN_URL%%\?*}
DATABASE_URL_C="${admin_base%/*}/$DB?sslmode=disable"
log "database $DB"
timeout 30 psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $DB" >&2 \
  || die "cannot create database $DB"
DB_CREATED=1
timeout 120 env -u SSM_PARAMETER_PREFIX DATABASE_URL="$DATABASE_URL_C" "$TARGET_DIR/debug/migrate" \
  </dev/null >"$WORK/migrate.log" 2>&1 || die "migrate failed"

REDIS_PORT=$(free_port 56400 56499) || die "no free port for Redis"
log "private redis-server on 127.0.0.1:$REDIS_PORT (every command recorded)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK" \
  </dev/null >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT" "${PIDS[-1]}" "redis-server"
redis-cli -p "$REDIS_PORT" monitor </dev/null >"$WORK/monitor.txt" 2>/dev/null &
PIDS+=($!)

# The fake's pace: the first delta after 500 ms, the other seven spread over
# the rest of claude_reply_ms.
REPLY_MS=$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["assumptions"]["claude_reply_ms"])' \
  scripts/cost/prices.toml)
FIRST_MS=$(( REPLY_MS < 500 ? REPLY_MS : 500 ))
GAP_MS=$(( (REPLY_MS - FIRST_MS) / 7 ))
CLAUDE_PORT=$(free_port 9600 9649) || die "no free port"
FAST_PORT=$(free_port 9650 9699) || die "no free port"
log "fake Claude on :$CLAUDE_PORT (${REPLY_MS} ms a reply) and :$FAST_PORT (at once)"
"$TARGET_DIR/debug/fake-claude" --port "$CLAUDE_PORT" --first-token-ms "$FIRST_MS" --gap-ms "$GAP_MS" --chunks 8 \
  </dev/null >"$WORK/fake-claude.log" 2>&1 &
PIDS+=($!)
wait_port "$CLAUDE_PORT" "${PIDS[-1]}" "fake-claude"
"$TARGET_DIR/debug/fake-claude" --port "$FAST_PORT" --first-token-ms 0 --gap-ms 0 --chunks 8 \
  </dev/null >"$WORK/fake-claude-fast.log" 2>&1 &
PIDS+=($!)
wait_port "$FAST_PORT" "${PIDS[-1]}" "fake-claude (fast)"

log "measuring (load average $(cut -d' ' -f1-3 /proc/loadavg))"
python3 scripts/cost/cost.py \
  --bin-dir "$TARGET_DIR/release" \
  --database-url "$DATABASE_URL_C" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --redis-prefix "cost-$rand" \
  --redis-monitor "$WORK/monitor.txt" \
  --claude-url "http://127.0.0.1:$CLAUDE_PORT" \
  --claude-fast-url "http://127.0.0.1:$FAST_PORT" \
  --work "$WORK" \
  --out "$ROOT/target/cost/cost.json" \
  --run-id "$rand" \
  --conversations "${COST_CONVERSATIONS:-12}" \
  --workers "${COST_WORKERS:-4}" \
  </dev/null
log "load average after $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
