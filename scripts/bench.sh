#!/usr/bin/env bash
# `make bench`: cold starts, warm latency, round trips per request, streaming
# latency, peak RSS and package size of the two chat functions, against the
# local PostgreSQL and Redis and a fake Claude (at once, or streaming in timed
# pieces). Prints one table and writes target/bench/results.json. See
# bench/src/main.rs for what is measured how.
#
# Knobs (environment): BENCH_WARM_ITERS (1000), BENCH_COLD_RUNS (40),
# BENCH_E2E_ITERS (1000), BENCH_STREAM_ITERS (200); CARGO_TARGET_DIR is honoured.
#
# The numbers are only as quiet as the machine: the load average is printed
# with the table; compare runs made on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)

step() { printf '==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))" >&2; }

step "services"
eval "$(scripts/services.sh)"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR="$TARGET_DIR/release"
OUT_DIR="$ROOT/target/bench"
mkdir -p "$OUT_DIR"

# Two invocations on purpose: built together, Cargo would unify the bench's
# dependency features into the functions' and measure different binaries.
step "cargo build --release -p send-message -p get-history"
cargo build --release -p send-message -p get-history
step "cargo build --release -p bench"
cargo build --release -p bench

# A fresh database and Redis key prefix of the bench's own, removed on exit.
DB="bench_$(date +%s)_$$"
PREFIX="bench-$(date +%s)-$$"
ADMIN=$TEST_PG_ADMIN_URL
base=${ADMIN%%\?*}
query=""
if [[ $ADMIN == *\?* ]]; then query="?${ADMIN#*\?}"; fi
scheme=${base%%://*}
rest=${base#*://}
DB_URL="$scheme://${rest%%/*}/$DB$query"
case "$DB_URL" in
  *sslmode=*) ;;
  *\?*) DB_URL="$DB_URL&sslmode=disable" ;;
  *) DB_URL="$DB_URL?sslmode=disable" ;;
esac

cleanup() {
  psql "$ADMIN" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 \
    || printf 'bench: could not drop database %s\n' "$DB" >&2
  redis-cli -u "$TEST_REDIS_URL" --scan --pattern "$PREFIX:*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "database $DB"
psql "$ADMIN" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null

export BENCH_DATABASE_URL=$DB_URL
export BENCH_REDIS_URL=$TEST_REDIS_URL
export BENCH_REDIS_PREFIX=$PREFIX
export BENCH_BIN_DIR=$BIN_DIR
export BENCH_OUT="$OUT_DIR/results.json"
"$BIN_DIR/bench" migrate

step "bench"
"$BIN_DIR/bench" run

step "done: total $(( $(date +%s) - started )) s"
