#!/usr/bin/env bash
# End to end, locally, with the secrets coming from SSM (moto):
#
#   1. `scripts/sam.sh build`; the three bootstraps must be ELF executables
#      for the template's architecture;
#   2. a fresh database e2e_<random> on TEST_PG_ADMIN_URL; SecureStrings
#      DATABASE_URL, REDIS_URL and CLAUDE_API_KEY under /e2e-<random> in moto
#      (TEST_MOTO_URL); migrations applied through that SSM prefix (as a
#      deployment does);
#   3. testkit's fake Claude (streaming a token every 25 ms), and `cargo
#      lambda watch` on a free port with SSM_PARAMETER_PREFIX and
#      ANTHROPIC_BASE_URL (the fake) but no DATABASE_URL / REDIS_URL /
#      CLAUDE_API_KEY in its environment;
#   4. every events/*.json through `cargo lambda invoke` (scripts/e2e/checks.py);
#   5. a conversation over HTTP on the routed paths, a streamed one
#      (`Accept: text/event-stream`: event order, deltas over time, done.reply
#      equal to the stored text), and their histories;
#   6. cleanup (also on failure or Ctrl-C): the emulator, the database, the
#      parameters, the Redis keys.
#
# Needs TEST_PG_ADMIN_URL, TEST_REDIS_URL (scripts/services.sh) and
# TEST_MOTO_URL (scripts/moto.sh); starts them when unset. No stdin; every
# wait is bounded. Ends with "e2e: N passed, M failed"; exit status 1 on any
# failure. Knobs: E2E_BUILD_TIMEOUT (s, sam build), E2E_COMPILE_TIMEOUT (s,
# debug build of the functions), E2E_SKIP_SAM_BUILD=1 (reuse .aws-sam/build),
# E2E_KEEP_LOGS=1 (keep the build, migrate and emulator logs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
PY="$ROOT/.venv/bin/python3"
ORIGIN=http://localhost:3000

BUILD_TIMEOUT=${E2E_BUILD_TIMEOUT:-1500}
COMPILE_TIMEOUT=${E2E_COMPILE_TIMEOUT:-900}

started=$(date +%s)
passed=0
failed=0
log() { printf '[e2e %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
pass() { passed=$((passed + 1)); printf '  PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf '  FAIL %s\n' "$*"; }
summary() { printf 'e2e: took %ss\n' "$(( $(date +%s) - started ))"; printf 'e2e: %d passed, %d failed\n' "$passed" "$failed"; }
die() { log "ERROR: $*"; fail "$*"; exit 1; }

rand=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="e2e_$rand"
PREFIX="/e2e-$rand"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/e2e.$rand.XXXX")
WATCH_LOG="$WORK/watch.log"
WATCH_PID=
FAKE_PID=
DB_CREATED=0
PARAMS_PUT=0

# ------------------------------------------------------------- cleanup ----

# PIDs of every descendant of a process.
descendants() {
  ps -e -o pid= -o ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root && p != root) print p } }'
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if { [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; } && [ -s "$WATCH_LOG" ]; then
    echo "---- last 100 lines of the cargo lambda watch log (functions' logs included) ----" >&2
    tail -n 100 "$WATCH_LOG" >&2
    echo "----" >&2
  fi
  if [ -n "$WATCH_PID" ]; then
    # setsid made it a process-group leader, but watch runs each function's
    # `cargo run` in a process group of its own: note them all first, end
    # the group (watch stops its functions on SIGTERM), then any straggler.
    local pids p
    pids=$(descendants "$WATCH_PID")
    kill -TERM -- "-$WATCH_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 -- "-$WATCH_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$WATCH_PID" 2>/dev/null
    wait "$WATCH_PID" 2>/dev/null
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
  fi
  if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null; fi
  if [ "$PARAMS_PUT" -eq 1 ]; then
    timeout 30 env "${SSM_ENV[@]}" "$PY" scripts/e2e/ssm.py delete "$PREFIX" DATABASE_URL REDIS_URL CLAUDE_API_KEY >&2 \
      || log "could not delete the parameters under $PREFIX"
  fi
  if [ "$DB_CREATED" -eq 1 ]; then
    timeout 30 psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >&2 \
      || log "could not drop database $DB"
  fi
  if [ -n "${TEST_REDIS_URL:-}" ] && command -v redis-cli >/dev/null; then
    timeout 30 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "e2e-$rand*" 2>/dev/null \
      | xargs -r timeout 30 redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1
  fi
  if [ "${E2E_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  [ "$rc" -eq 0 ] && [ "$failed" -ne 0 ] && rc=1
  [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
  summary
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ services ----

[ -n "${TEST_PG_ADMIN_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ] || eval "$(scripts/services.sh </dev/null)"
[ -n "${TEST_MOTO_URL:-}" ] || eval "$(scripts/moto.sh </dev/null)"
for v in TEST_PG_ADMIN_URL TEST_REDIS_URL TEST_MOTO_URL; do
  [ -n "${!v:-}" ] || die "$v is not set"
done
curl -fsS --max-time 5 -o /dev/null "$TEST_MOTO_URL/moto-api/data.json" \
  || die "moto does not answer on $TEST_MOTO_URL"

# ----------------------------------------------------------- sam build ----

arch=$(sed -n 's/^ *Architectures: *\[ *\([a-z0-9_]*\) *\].*/\1/p' template.yaml | head -n1)
case "$arch" in
  arm64) file_arch="ARM aarch64" ;;
  x86_64) file_arch="x86-64" ;;
  *) die "cannot tell the architecture from template.yaml (Globals Architectures: '$arch')" ;;
esac

if [ "${E2E_SKIP_SAM_BUILD:-0}" = 1 ]; then
  log "E2E_SKIP_SAM_BUILD=1: checking the existing .aws-sam/build"
else
  log "sam build ($arch), at most ${BUILD_TIMEOUT}s"
  t0=$(date +%s)
  if timeout --kill-after=30 "$BUILD_TIMEOUT" scripts/sam.sh build </dev/null >"$WORK/sam-build.log" 2>&1; then
    pass "sam build ($(( $(date +%s) - t0 ))s)"
  else
    rc=$?
    tail -n 60 "$WORK/sam-build.log" >&2
    [ "$rc" -eq 124 ] && die "sam build did not finish within ${BUILD_TIMEOUT}s"
    die "sam build failed (exit $rc)"
  fi
fi
# scripts/e2e/elf.py reads the ELF header itself; `file` agrees when installed.
for fn in SendMessageFunction GetHistoryFunction CleanupFunction NotifyHandoffsFunction; do
  f=".aws-sam/build/$fn/bootstrap"
  if ! desc=$("$PY" scripts/e2e/elf.py "$arch" "$f" 2>&1); then
    fail "$f is not an executable $arch ELF: $desc"
  elif command -v file >/dev/null \
      && ! [[ $(file -b "$f") == ELF\ 64-bit*executable*"$file_arch"* ]]; then
    fail "$f: file(1) says $(file -b "$f")"
  else
    pass "${desc#ok  }"
  fi
done
[ "$failed" -eq 0 ] || exit 1

# ------------------------------------------------ database, parameters ----

admin_base=${TEST_PG_ADMIN_URL%%\?*}
DATABASE_URL_E2E="${admin_base%/*}/$DB?sslmode=disable"

log "creating database $DB"
timeout 30 psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $DB" >&2 \
  || die "cannot create database $DB on TEST_PG_ADMIN_URL"
DB_CREATED=1

# The functions (and the migrator) get these; the real ones in the caller's
# environment must not leak in. The SDK's endpoint override for SSM is
# AWS_ENDPOINT_URL_SSM; credentials and region are moto's dummies.
SSM_ENV=(
  -u DATABASE_URL -u REDIS_URL -u CLAUDE_API_KEY -u ANTHROPIC_API_KEY -u ANTHROPIC_BASE_URL
  -u DATABASE_CA_CERT -u REDIS_CA_CERT -u STORE_KNOWLEDGE -u STORE_KNOWLEDGE_PATH
  -u AWS_PROFILE -u AWS_SESSION_TOKEN -u AWS_ENDPOINT_URL -u AWS_CONFIG_FILE -u AWS_SHARED_CREDENTIALS_FILE
  SSM_PARAMETER_PREFIX="$PREFIX"
  AWS_ENDPOINT_URL_SSM="$TEST_MOTO_URL"
  AWS_REGION=us-east-1
  AWS_DEFAULT_REGION=us-east-1
  AWS_ACCESS_KEY_ID=testing
  AWS_SECRET_ACCESS_KEY=testing
  AWS_EC2_METADATA_DISABLED=true
)

log "putting SecureString parameters DATABASE_URL, REDIS_URL and CLAUDE_API_KEY under $PREFIX"
PARAMS_PUT=1
timeout 60 env "${SSM_ENV[@]}" DATABASE_URL="$DATABASE_URL_E2E" REDIS_URL="$TEST_REDIS_URL" \
  CLAUDE_API_KEY="sk-ant-e2e-fake" \
  "$PY" scripts/e2e/ssm.py put "$PREFIX" DATABASE_URL REDIS_URL CLAUDE_API_KEY >&2 \
  || die "cannot put the parameters into moto ($TEST_MOTO_URL)"
pass "SecureStrings DATABASE_URL, REDIS_URL, CLAUDE_API_KEY under $PREFIX"

# Debug builds (host architecture) for the migrator and the emulator: compiled
# here, bounded, so that the emulator's first invocations only start them.
log "cargo build (debug) of the migrator and the functions, at most ${COMPILE_TIMEOUT}s"
if ! timeout --kill-after=30 "$COMPILE_TIMEOUT" cargo build --locked --quiet \
    -p support-chat --bin migrate -p send-message -p get-history -p cleanup -p notify-handoffs \
    -p testkit --bin fake-claude </dev/null >"$WORK/cargo-build.log" 2>&1; then
  tail -n 60 "$WORK/cargo-build.log" >&2
  die "cargo build of the functions failed or timed out"
fi

log "migrating $DB through SSM ($PREFIX)"
if timeout 120 env "${SSM_ENV[@]}" cargo run --locked --quiet -p support-chat --bin migrate </dev/null >"$WORK/migrate.log" 2>&1; then
  pass "migrate via SSM: $(grep -c '^migrate: applied' "$WORK/migrate.log") migration(s) applied"
else
  cat "$WORK/migrate.log" >&2
  die "migrate failed"
fi

# --------------------------------------------------- cargo lambda watch ----

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for p in $(seq 9100 9199); do
  if ! port_busy "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || die "no free port in 9100-9199"

# Claude stood in for by testkit's fake, streaming a token every 25 ms.
FAKE_PORT=
for p in $(seq 9200 9299); do
  if ! port_busy "$p"; then FAKE_PORT=$p; break; fi
done
[ -n "$FAKE_PORT" ] || die "no free port in 9200-9299 for the fake Claude"
target/debug/fake-claude --port "$FAKE_PORT" --gap-ms 25 --chunks 6 </dev/null >"$WORK/fake-claude.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$WORK/fake-claude.log" 2>/dev/null && break
  kill -0 "$FAKE_PID" 2>/dev/null || die "the fake Claude exited: $(cat "$WORK/fake-claude.log")"
  sleep 0.1
done
grep -q "listening on" "$WORK/fake-claude.log" || die "the fake Claude did not start"
pass "fake Claude listening on 127.0.0.1:$FAKE_PORT"

log "cargo lambda watch on 127.0.0.1:$PORT (log: $WATCH_LOG)"
setsid env "${SSM_ENV[@]}" \
  REDIS_KEY_PREFIX="e2e-$rand" \
  ANTHROPIC_BASE_URL="http://127.0.0.1:$FAKE_PORT" \
  ALLOWED_ORIGINS="$ORIGIN" \
  RUST_LOG="${RUST_LOG:-info}" \
  cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$PORT" --ignore-changes \
  </dev/null >"$WATCH_LOG" 2>&1 &
WATCH_PID=$!

for _ in $(seq 1 300); do
  port_busy "$PORT" && break
  kill -0 "$WATCH_PID" 2>/dev/null || die "cargo lambda watch exited early"
  sleep 0.2
done
port_busy "$PORT" || die "cargo lambda watch is not listening on $PORT after 60s"
pass "cargo lambda watch listening on 127.0.0.1:$PORT"

# ------------------------------------------------------------- checks ----

# The emulator must not have been handed any secret directly.
watch_env=$(tr '\0' '\n' <"/proc/$WATCH_PID/environ" 2>/dev/null || true)
if grep -Eq '^(DATABASE_URL|REDIS_URL|CLAUDE_API_KEY)=' <<<"$watch_env"; then
  fail "the emulator's environment holds DATABASE_URL, REDIS_URL or CLAUDE_API_KEY"
else
  pass "the emulator's environment has no DATABASE_URL, REDIS_URL or CLAUDE_API_KEY (SSM only)"
fi

log "running scripts/e2e/checks.py"
set +e
timeout --kill-after=10 1200 "$PY" scripts/e2e/checks.py --port "$PORT" --events events \
  --origin "$ORIGIN" --allowed-origins "$ORIGIN" --counts "$WORK/counts" </dev/null
checks_rc=$?
set -e
if [ -s "$WORK/counts" ]; then
  read -r p f <"$WORK/counts"
  passed=$((passed + p))
  failed=$((failed + f))
fi
if [ "$checks_rc" -ne 0 ] && { [ ! -s "$WORK/counts" ] || [ "$failed" -eq 0 ]; }; then
  fail "checks.py exited $checks_rc"
fi

# REDIS_URL came from SSM too: the functions must have used Redis (rate-limit
# counters and the history cache live under REDIS_KEY_PREFIX).
redis_keys=$(timeout 10 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "e2e-$rand*" 2>/dev/null | wc -l || true)
if [ "${redis_keys:-0}" -gt 0 ]; then
  pass "Redis (URL from SSM) holds $redis_keys key(s) under e2e-$rand"
else
  fail "no Redis key under e2e-$rand: REDIS_URL from SSM was not used"
fi

# A healthy run logs no panic.
if grep -q 'panicked at' "$WATCH_LOG"; then
  fail "a function panicked (see the watch log)"
else
  pass "no panic in the functions' logs"
fi
[ "$failed" -eq 0 ]
