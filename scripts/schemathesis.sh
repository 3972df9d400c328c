#!/usr/bin/env bash
# The running service against its OpenAPI description (docs/openapi.yaml),
# with schemathesis (pinned in scripts/tools.sh):
#
#   1. installs what is missing (schemathesis and cargo-lambda in .venv);
#   2. a fresh database schema_<random> on TEST_PG_ADMIN_URL, migrated; Redis
#      keys under schema-<random>; testkit's fake Claude answering at once;
#   3. `cargo lambda watch --disable-cors` on a free port with rate limits
#      off (property tests send hundreds of requests a minute) and
#      ALLOWED_ORIGINS=* (so the CORS headers are checked too);
#   4. `st run` twice: every operation with JSON responses, then POST
#      /api/chat with `Accept: text/event-stream` (the streamed responses);
#      all phases (examples, coverage, fuzzing, stateful through the
#      document's links), positive and negative data, these checks:
#      not_a_server_error, status_code_conformance, content_type_conformance,
#      response_headers_conformance, response_schema_conformance (bodies that
#      are not UTF-8 are made UTF-8 first: scripts/schemathesis/hooks.py says
#      why);
#   5. cleanup, also on failure or Ctrl-C: the processes, the database, the
#      Redis keys.
#
# No stdin; every wait is bounded. Ends with "schemathesis: N passed, M
# failed", N and M counting test cases (generated requests) over both runs;
# exit status 1 on any failure. A failure is printed with the curl command
# that reproduces it.
#
# Knobs: SCHEMATHESIS_SEED (default 20261201; a fixed seed makes runs
# repeatable, the seed is printed), SCHEMATHESIS_MAX_EXAMPLES (default 60
# per operation and phase), SCHEMATHESIS_COMPILE_TIMEOUT (s, debug build),
# SCHEMATHESIS_KEEP_LOGS=1 (keep the logs and reports), SCHEMATHESIS_URL
# (test an already running service instead: nothing is started).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"

SEED=${SCHEMATHESIS_SEED:-20261201}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-60}
COMPILE_TIMEOUT=${SCHEMATHESIS_COMPILE_TIMEOUT:-900}
SPEC="$ROOT/docs/openapi.yaml"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance

started=$(date +%s)
passed=0
failed=0
log() { printf '[schemathesis %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
summary() {
  printf 'schemathesis: took %ss, seed %s\n' "$(( $(date +%s) - started ))" "$SEED"
  printf 'schemathesis: %d passed, %d failed\n' "$passed" "$failed"
}
die() { log "ERROR: $*"; failed=$((failed + 1)); exit 1; }

rand=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="schema_$rand"
KEY_PREFIX="schema-$rand"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.$rand.XXXX")
WATCH_LOG="$WORK/watch.log"
FAKE_LOG="$WORK/fake-claude.log"
PIDS=()
DB_CREATED=0

# ------------------------------------------------------------- cleanup ----

descendants() {
  ps -e -o pid= -o ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root && p != root) print p } }'
}

# Ends a process started with setsid: its group, then any descendant that
# made a group of its own (cargo lambda watch runs each function that way).
stop() {
  local pid=$1 pids p
  pids=$(descendants "$pid")
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  for p in $pids; do kill -KILL "$p" 2>/dev/null; done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    for f in "$WATCH_LOG" "$FAKE_LOG"; do
      [ -s "$f" ] || continue
      echo "---- last 40 lines of $(basename "$f") ----" >&2
      tail -n 40 "$f" >&2
    done
  fi
  local pid
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  if [ "$DB_CREATED" -eq 1 ]; then
    timeout 30 psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >&2 \
      || log "could not drop database $DB"
  fi
  if [ -n "${TEST_REDIS_URL:-}" ] && command -v redis-cli >/dev/null; then
    timeout 30 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "$KEY_PREFIX:*" 2>/dev/null \
      | xargs -r -n 500 timeout 30 redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1
  fi
  if [ "${SCHEMATHESIS_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  [ "$rc" -eq 0 ] && [ "$failed" -ne 0 ] && rc=1
  [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
  summary
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

# Waits (bounded) for a TCP port to accept, while the process lives.
wait_port() {
  local port=$1 pid=$2 what=$3 tenths=$4
  for _ in $(seq 1 "$tenths"); do
    port_busy "$port" && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited early"
    sleep 0.1
  done
  die "$what is not listening on $port after $((tenths / 10))s"
}

# --------------------------------------------------------------- tools ----

log "tools: schemathesis, cargo-lambda (.venv)"
timeout 900 scripts/tools.sh venv </dev/null >&2 || die "cannot install the Python tools"
command -v st >/dev/null || die "st (schemathesis) is not in .venv/bin"
log "$(st --version 2>&1 | head -n 1); seed $SEED; at most $MAX_EXAMPLES examples per operation and phase"

# ----------------------------------------------------------- the service ----

if [ -n "${SCHEMATHESIS_URL:-}" ]; then
  API=${SCHEMATHESIS_URL%/}
  log "testing the service already running at $API"
else
  [ -n "${TEST_PG_ADMIN_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ] || eval "$(scripts/services.sh </dev/null)"
  for v in TEST_PG_ADMIN_URL TEST_REDIS_URL; do
    [ -n "${!v:-}" ] || die "$v is not set"
  done

  log "cargo build (debug) of the migrator, the functions and the fake Claude, at most ${COMPILE_TIMEOUT}s"
  if ! timeout --kill-after=30 "$COMPILE_TIMEOUT" cargo build --locked --quiet \
      -p support-chat --bin migrate -p send-message -p get-history -p testkit --bin fake-claude \
      </dev/null >"$WORK/cargo-build.log" 2>&1; then
    tail -n 60 "$WORK/cargo-build.log" >&2
    die "cargo build failed or timed out"
  fi

  admin_base=${TEST_PG_ADMIN_URL%%\?*}
  DATABASE_URL_S="${admin_base%/*}/$DB?sslmode=disable"
  log "creating database $DB"
  timeout 30 psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $DB" >&2 \
    || die "cannot create database $DB on TEST_PG_ADMIN_URL"
  DB_CREATED=1
  if ! timeout 120 env -u SSM_PARAMETER_PREFIX DATABASE_URL="$DATABASE_URL_S" \
      target/debug/migrate </dev/null >"$WORK/migrate.log" 2>&1; then
    cat "$WORK/migrate.log" >&2
    die "migrate failed"
  fi

  FAKE_PORT=$(free_port 9400 9499) || die "no free port in 9400-9499"
  log "fake Claude on 127.0.0.1:$FAKE_PORT (answers at once)"
  setsid target/debug/fake-claude --port "$FAKE_PORT" --first-token-ms 0 --gap-ms 0 --chunks 3 \
    </dev/null >"$FAKE_LOG" 2>&1 &
  PIDS+=($!)
  wait_port "$FAKE_PORT" "${PIDS[-1]}" "fake-claude" 300

  PORT=$(free_port 9500 9599) || die "no free port in 9500-9599"
  API="http://127.0.0.1:$PORT"
  log "cargo lambda watch --disable-cors on $API"
  setsid env \
    -u SSM_PARAMETER_PREFIX -u ANTHROPIC_API_KEY -u DATABASE_CA_CERT -u REDIS_CA_CERT \
    -u STORE_KNOWLEDGE -u STORE_KNOWLEDGE_PATH -u HANDOFF_WEBHOOK_URL -u HANDOFF_WEBHOOK_SECRET \
    -u CLAUDE_MODEL -u CLAUDE_MAX_TOKENS \
    DATABASE_URL="$DATABASE_URL_S" \
    REDIS_URL="$TEST_REDIS_URL" \
    REDIS_KEY_PREFIX="$KEY_PREFIX" \
    CLAUDE_API_KEY=test \
    ANTHROPIC_BASE_URL="http://127.0.0.1:$FAKE_PORT" \
    ALLOWED_ORIGINS='*' \
    RATE_LIMIT_PER_SESSION_PER_MINUTE=0 \
    RATE_LIMIT_PER_IP_PER_MINUTE=0 \
    RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE=0 \
    RUST_LOG="${RUST_LOG:-info}" \
    cargo lambda watch --disable-cors --invoke-address 127.0.0.1 --invoke-port "$PORT" --ignore-changes \
    </dev/null >"$WATCH_LOG" 2>&1 &
  PIDS+=($!)
  wait_port "$PORT" "${PIDS[-1]}" "cargo lambda watch" 600

  # The first call of each function starts it (cargo run of the debug build).
  log "starting both functions"
  warm=0
  for _ in $(seq 1 120); do
    a=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST "$API/api/chat" \
          -H 'content-type: application/json' -d '{}' || true)
    b=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
          "$API/api/chat/history/00000000-0000-4000-8000-000000000000" || true)
    if [ "$a" = 400 ] && [ "$b" = 404 ]; then warm=1; break; fi
    kill -0 "${PIDS[-1]}" 2>/dev/null || die "cargo lambda watch exited"
    sleep 1
  done
  [ "$warm" = 1 ] || die "the functions do not answer (POST {} -> ${a:-none}, GET unknown history -> ${b:-none})"
fi

# ---------------------------------------------------------- schemathesis ----

# One `st run`; adds its test-case counts to passed/failed from its NDJSON
# report. Arguments: a name, then extra options for st.
run_st() {
  local name=$1 rc counts p f
  shift
  log "st run ($name)"
  set +e
  # From the work directory: st keeps a cache (.schemathesis/) where it runs.
  (cd "$WORK" && SCHEMATHESIS_HOOKS="$ROOT/scripts/schemathesis/hooks.py" \
  timeout --kill-after=10 600 st run "$SPEC" --url "$API" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" --seed "$SEED" \
    --generation-database none \
    --workers 2 --request-timeout 20 \
    --no-color --output-truncate false \
    --report junit,ndjson --report-dir "$WORK/report-$name" \
    "$@" </dev/null 2>&1) | tee "$WORK/st-$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  counts=$(python3 "$ROOT/scripts/schemathesis/count.py" "$WORK/report-$name" 2>>"$WORK/st-$name.log") \
    || counts=""
  if [ -z "$counts" ]; then
    failed=$((failed + 1))
    log "$name: no report (st exited $rc)"
    return 0
  fi
  read -r p f <<<"$counts"
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    failed=$((failed + 1))
    log "$name: st exited $rc with no failing test case (an error; see above)"
  fi
  log "$name: $p passed, $f failed"
}

run_st json
run_st stream --include-operation-id sendMessage --header 'Accept: text/event-stream'

if [ -s "$WATCH_LOG" ] && grep -q 'panicked at' "$WATCH_LOG"; then
  failed=$((failed + 1))
  log "a function panicked (see the watch log)"
fi
[ "$failed" -eq 0 ]
