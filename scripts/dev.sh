#!/usr/bin/env bash
# `make dev`: runs both functions locally behind cargo-lambda's emulator on the
# real routes, against PostgreSQL (and Redis when available), starting what
# is missing. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

scripts/tools.sh all >&2
scripts/tools.sh widget >&2
node widget/build.mjs >&2
export PATH="$ROOT/.venv/bin:$PATH"
eval "$(scripts/services.sh)"

if [ -z "${DATABASE_URL:-}" ]; then
  db=support_chat_dev
  psql "$TEST_PG_ADMIN_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql "$TEST_PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
  export DATABASE_URL="${TEST_PG_ADMIN_URL%/*}/$db?sslmode=disable"
fi
export REDIS_URL="${REDIS_URL-$TEST_REDIS_URL}"
# The demo storefront (its own origin, as a store's site is) must be allowed.
DEMO_PORT="${DEMO_PORT:-8090}"
DEMO_ORIGIN="http://127.0.0.1:$DEMO_PORT"
case ",${ALLOWED_ORIGINS:-}," in
  *",$DEMO_ORIGIN,"* | *",*,"*) ;;
  *) ALLOWED_ORIGINS="${ALLOWED_ORIGINS:+$ALLOWED_ORIGINS,}$DEMO_ORIGIN" ;;
esac
export ALLOWED_ORIGINS
export RUST_LOG="${RUST_LOG:-info}"

echo "dev: applying migrations" >&2
cargo run --quiet -p support-chat --bin migrate

PORT="${PORT:-9000}"
if [ -z "${CLAUDE_API_KEY:-}" ]; then
  echo "dev: CLAUDE_API_KEY is not set: every reply is the offline fallback (set it to talk to Claude)." >&2
fi
cat >&2 <<MSG

dev: serving on http://127.0.0.1:$PORT (first request compiles the functions; give it a minute)
  curl -s -X POST http://127.0.0.1:$PORT/api/chat -H 'content-type: application/json' \\
       -d '{"message":"What are your shipping options?"}'
  curl -s http://127.0.0.1:$PORT/api/chat/history/<sessionId from the reply>

dev: demo storefront with the chat widget: $DEMO_ORIGIN/  (hostile CSS: $DEMO_ORIGIN/hostile.html)
dev: ALLOWED_ORIGINS=$ALLOWED_ORIGINS

MSG
# The demo page's server stops when this process (cargo lambda, after exec) does.
node widget/demo/serve.mjs --port "$DEMO_PORT" --api "http://127.0.0.1:$PORT" --exit-with $$ </dev/null >&2 &
# --disable-cors: the browser sees the functions' own CORS headers, as API
# Gateway passes them, not the emulator's (credentials, a second Vary).
exec cargo lambda watch --disable-cors --invoke-address 127.0.0.1 --invoke-port "$PORT"
