#!/usr/bin/env bash
# The chat widget in a real browser against the real backend:
#
#   1. installs what is missing: widget/'s npm packages (npm ci), Debian's
#      chromium (scripts/tools.sh widget, browser), cargo-lambda (venv);
#   2. builds widget/dist/chat-widget.js (type check, esbuild, the 12 KB
#      gzipped budget); unit tests of its stream reader (node --test);
#   3. a fresh database widget_<random> on TEST_PG_ADMIN_URL, migrated;
#   4. testkit's fake Claude (a gap between tokens, so a reply streams);
#   5. `cargo lambda watch --disable-cors` on a free port (the browser sees the
#      functions' own CORS headers, as API Gateway passes them) with
#      DATABASE_URL, REDIS_URL (keys under widget-<random>), CLAUDE_API_KEY=test,
#      ANTHROPIC_BASE_URL at the fake, ALLOWED_ORIGINS = the demo page's origin
#      and a low per-session rate limit (for the 429 test);
#   6. the demo storefront (widget/demo/serve.mjs) on another port, so every
#      API call is cross-origin as in production;
#   7. widget/test/browser.mjs: headless Chromium through playwright-core;
#      screenshots under target/widget-test/;
#   8. cleanup, also on failure or Ctrl-C: the processes, the database, the
#      Redis keys.
#
# No stdin; every wait is bounded. Ends with "widget: N passed, M failed";
# exit status 1 on any failure. Knobs: WIDGET_COMPILE_TIMEOUT (s, debug build
# of the functions and the fake), WIDGET_GAP_MS (fake Claude's gap between
# tokens), WIDGET_ONLY (run only tests whose name contains it),
# WIDGET_KEEP_LOGS=1 (keep the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"

COMPILE_TIMEOUT=${WIDGET_COMPILE_TIMEOUT:-900}
# Between tokens: long enough that a reply shows over several frames even on
# a loaded machine, short enough that a reply takes about a second.
GAP_MS=${WIDGET_GAP_MS:-100}
OUT="$ROOT/target/widget-test"
SESSION_LIMIT=4

started=$(date +%s)
passed=0
failed=0
log() { printf '[widget %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
pass() { passed=$((passed + 1)); printf '  PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf '  FAIL %s\n' "$*"; }
summary() { printf 'widget: took %ss\n' "$(( $(date +%s) - started ))"; printf 'widget: %d passed, %d failed\n' "$passed" "$failed"; }
die() { log "ERROR: $*"; fail "$*"; exit 1; }

rand=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="widget_$rand"
KEY_PREFIX="widget-$rand"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/widget.$rand.XXXX")
WATCH_LOG="$WORK/watch.log"
FAKE_LOG="$WORK/fake-claude.log"
DEMO_LOG="$WORK/demo.log"
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
  if { [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; }; then
    for f in "$WATCH_LOG" "$FAKE_LOG" "$DEMO_LOG"; do
      [ -s "$f" ] || continue
      echo "---- last 60 lines of $(basename "$f") ----" >&2
      tail -n 60 "$f" >&2
    done
    [ -s "$WATCH_LOG" ] && echo "----" >&2
  fi
  local pid
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  if [ "$DB_CREATED" -eq 1 ]; then
    timeout 30 psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >&2 \
      || log "could not drop database $DB"
  fi
  if [ -n "${TEST_REDIS_URL:-}" ] && command -v redis-cli >/dev/null; then
    timeout 30 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "$KEY_PREFIX*" 2>/dev/null \
      | xargs -r timeout 30 redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1
  fi
  if [ "${WIDGET_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
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

log "tools: npm packages, chromium, cargo-lambda"
timeout 900 scripts/tools.sh widget </dev/null || die "cannot install widget/'s npm packages"
timeout 900 scripts/tools.sh browser </dev/null || die "cannot install chromium"
timeout 900 scripts/tools.sh venv </dev/null >&2 || die "cannot install cargo-lambda"
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing"

log "building the widget"
if size=$(timeout 300 node widget/build.mjs --check </dev/null); then
  pass "build: $size"
else
  die "the widget's build failed (type errors, or over its size budget)"
fi

if unit=$(cd widget && timeout 120 node --test test/api.test.mjs </dev/null 2>&1); then
  pass "unit tests of the stream reader: $(grep -o '^# pass [0-9]*' <<<"$unit" | cut -d' ' -f3) passed"
else
  tail -n 40 <<<"$unit" >&2
  fail "unit tests of the stream reader (node --test widget/test/api.test.mjs)"
fi

# ------------------------------------------------------------ services ----

[ -n "${TEST_PG_ADMIN_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ] || eval "$(scripts/services.sh </dev/null)"
for v in TEST_PG_ADMIN_URL TEST_REDIS_URL; do
  [ -n "${!v:-}" ] || die "$v is not set"
done

log "cargo build (debug) of the migrator, the functions and the fake Claude, at most ${COMPILE_TIMEOUT}s"
[ -f testkit/Cargo.toml ] || die "testkit/ (the fake Claude) is missing"
if ! timeout --kill-after=30 "$COMPILE_TIMEOUT" cargo build --locked --quiet \
    -p support-chat --bin migrate -p send-message -p get-history -p testkit --bin fake-claude \
    </dev/null >"$WORK/cargo-build.log" 2>&1; then
  tail -n 60 "$WORK/cargo-build.log" >&2
  die "cargo build failed or timed out"
fi

admin_base=${TEST_PG_ADMIN_URL%%\?*}
DATABASE_URL_W="${admin_base%/*}/$DB?sslmode=disable"
log "creating database $DB"
timeout 30 psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $DB" >&2 \
  || die "cannot create database $DB on TEST_PG_ADMIN_URL"
DB_CREATED=1
if ! timeout 120 env -u SSM_PARAMETER_PREFIX DATABASE_URL="$DATABASE_URL_W" \
    cargo run --locked --quiet -p support-chat --bin migrate </dev/null >"$WORK/migrate.log" 2>&1; then
  cat "$WORK/migrate.log" >&2
  die "migrate failed"
fi

# ----------------------------------------------------------- fake Claude ----

FAKE_PORT=$(free_port 9300 9399) || die "no free port in 9300-9399"
log "fake Claude on 127.0.0.1:$FAKE_PORT (gap ${GAP_MS} ms between tokens)"
setsid target/debug/fake-claude --port "$FAKE_PORT" --first-token-ms 150 --gap-ms "$GAP_MS" \
  </dev/null >"$FAKE_LOG" 2>&1 &
PIDS+=($!)
wait_port "$FAKE_PORT" "${PIDS[-1]}" "fake-claude" 300

# --------------------------------------------------- cargo lambda watch ----

PORT=$(free_port 9200 9299) || die "no free port in 9200-9299"
DEMO_PORT=$(free_port 8100 8199) || die "no free port in 8100-8199"
DEMO="http://127.0.0.1:$DEMO_PORT"
API="http://127.0.0.1:$PORT"

log "cargo lambda watch --disable-cors on 127.0.0.1:$PORT"
setsid env \
  -u SSM_PARAMETER_PREFIX -u ANTHROPIC_API_KEY -u DATABASE_CA_CERT -u REDIS_CA_CERT \
  -u STORE_KNOWLEDGE -u STORE_KNOWLEDGE_PATH -u HANDOFF_WEBHOOK_URL -u HANDOFF_WEBHOOK_SECRET \
  -u CLAUDE_MODEL -u CLAUDE_MAX_TOKENS \
  DATABASE_URL="$DATABASE_URL_W" \
  REDIS_URL="$TEST_REDIS_URL" \
  REDIS_KEY_PREFIX="$KEY_PREFIX" \
  CLAUDE_API_KEY=test \
  ANTHROPIC_BASE_URL="http://127.0.0.1:$FAKE_PORT" \
  ALLOWED_ORIGINS="$DEMO" \
  RATE_LIMIT_PER_SESSION_PER_MINUTE="$SESSION_LIMIT" \
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
pass "both functions answer through cargo lambda watch on $API"

# ------------------------------------------------------------ demo page ----

log "demo storefront on $DEMO"
setsid node widget/demo/serve.mjs --port "$DEMO_PORT" --api "$API" </dev/null >"$DEMO_LOG" 2>&1 &
PIDS+=($!)
wait_port "$DEMO_PORT" "${PIDS[-1]}" "the demo server" 100

# --------------------------------------------------------- browser tests ----

rm -rf "$OUT"
mkdir -p "$OUT"
log "browser tests (headless Chromium), screenshots in ${OUT#"$ROOT"/}"
set +e
(cd widget && timeout --kill-after=10 900 node test/browser.mjs --demo "$DEMO" --api "$API" \
  --out "$OUT" --backend real --counts "$WORK/counts" ${WIDGET_ONLY:+--only "$WIDGET_ONLY"} </dev/null)
rc=$?
set -e
if [ -s "$WORK/counts" ]; then
  read -r p f <"$WORK/counts"
  passed=$((passed + p))
  failed=$((failed + f))
fi
if [ "$rc" -ne 0 ] && { [ ! -s "$WORK/counts" ] || [ "$failed" -eq 0 ]; }; then
  fail "the browser tests exited $rc"
fi

if grep -q 'panicked at' "$WATCH_LOG"; then
  fail "a function panicked (see the watch log)"
fi
# cargo lambda watch does not restart a function whose process ended: every
# later request to it hangs, and the tests after it time out. Say so.
if grep -q 'command exited code=' "$WATCH_LOG"; then
  fail "a function's process exited during the tests; later requests to it hung: $(grep -m1 '^Error: ' "$WATCH_LOG" || echo 'see the watch log')"
fi
[ "$failed" -eq 0 ]
