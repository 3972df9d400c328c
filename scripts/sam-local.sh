#!/usr/bin/env bash
# The `sam build` output run by SAM CLI's own emulator, in Docker, configured
# as deployed (part of `make test`):
#
#   1. `.aws-sam/build` reused when it is newer than the sources (else
#      `scripts/sam.sh build`); every bootstrap an ELF executable for the
#      template's architecture (arm64);
#   2. Docker (scripts/docker.sh): a daemon, QEMU through binfmt_misc when the
#      host is not arm64, and public.ecr.aws/lambda/provided:al2023-arm64 (the
#      official image, or a Debian stand-in when it cannot be pulled);
#   3. TCP forwarders on the Docker bridge's gateway to PostgreSQL, Redis and
#      moto (they listen on 127.0.0.1, which inside a container is the
#      container: see scripts/sam-local/forward.py);
#   4. a fresh database samlocal_<random>; SecureStrings DATABASE_URL and
#      REDIS_URL (the bridge addresses) under /sam-local-<random> in moto;
#      migrations applied through that prefix;
#   5. the functions' configuration: the template's own, plus --env-vars with
#      SSM_PARAMETER_PREFIX and the SDK's AWS_ENDPOINT_URL_SSM only (sam runs
#      with an empty environment but moto's dummy credentials, so nothing of
#      the caller's leaks in); see scripts/sam-local/template.py for why the
#      local template declares AWS_ENDPOINT_URL_SSM;
#   6. every events/*.json through `sam local invoke` (the checks of
#      scripts/e2e/checks.py), then a conversation through `sam local
#      start-api` (scripts/sam-local/checks.py), the containers' environment
#      and Redis use checked;
#   7. cleanup, also on failure or Ctrl-C: start-api and its containers, the
#      forwarders, the parameters, the Redis keys, the database. The Docker
#      daemon stays up for the next run; `make services-stop` stops it.
#
# Needs root on a machine without Docker (apt-get, dockerd, binfmt_misc);
# when Docker cannot run, it fails with the reason. No stdin; every wait is
# bounded. Ends with "sam-local: N passed, M failed"; exit 1 on any failure.
# Knobs: SAM_LOCAL_BUILD=auto|always|never (auto), SAM_LOCAL_BUILD_TIMEOUT (s),
# SAM_LOCAL_KEEP=1 (after the checks, keep everything up and print the
# commands to use it, until Ctrl-C), SAM_LOCAL_KEEP_LOGS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
PY="$ROOT/.venv/bin/python3"

BUILD=${SAM_LOCAL_BUILD:-auto}
BUILD_TIMEOUT=${SAM_LOCAL_BUILD_TIMEOUT:-1500}
BUILT="$ROOT/.aws-sam/build"

started=$(date +%s)
passed=0
failed=0
log() { printf '[sam-local %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
pass() { passed=$((passed + 1)); printf '  PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf '  FAIL %s\n' "$*"; }
summary() { printf 'sam-local: took %ss\n' "$(( $(date +%s) - started ))"; printf 'sam-local: %d passed, %d failed\n' "$passed" "$failed"; }
die() { log "ERROR: $*"; fail "$*"; exit 1; }

rand=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
DB="samlocal_$rand"
PREFIX="/sam-local-$rand"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sam-local.$rand.XXXX")
API_LOG="$WORK/start-api.log"
INVOKE_LOG="$WORK/invoke.log"
API_PID=
FWD_PID=
DB_CREATED=0
PARAMS_PUT=0
SAM_BEFORE=
KEEP_PID=

# ------------------------------------------------------------- cleanup ----

sam_containers() { docker ps -aq --no-trunc --filter label=sam.cli.container.type=lambda 2>/dev/null || true; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if { [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; }; then
    for f in "$INVOKE_LOG" "$API_LOG"; do
      [ -s "$f" ] || continue
      echo "---- last 60 lines of $(basename "$f") (functions' logs included) ----" >&2
      tail -n 60 "$f" >&2
    done
    echo "----" >&2
  fi
  [ -n "$KEEP_PID" ] && kill "$KEEP_PID" 2>/dev/null
  if [ -n "$API_PID" ]; then
    # SIGTERM: SAM stops its warm containers, then exits. (SIGINT would not
    # do: a background job of a script starts with SIGINT ignored.)
    kill -TERM -- "-$API_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$API_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$API_PID" 2>/dev/null
    wait "$API_PID" 2>/dev/null
  fi
  # SAM's containers this run left behind (none when SAM cleaned up).
  if [ -n "$SAM_BEFORE" ] && command -v docker >/dev/null; then
    local c left=()
    for c in $(sam_containers); do
      grep -qx "$c" <<<"$SAM_BEFORE" || left+=("$c")
    done
    if [ ${#left[@]} -gt 0 ]; then
      log "removing ${#left[@]} container(s) SAM left"
      timeout 60 docker rm -f "${left[@]}" >/dev/null 2>&1
    fi
  fi
  if [ "$PARAMS_PUT" -eq 1 ]; then
    timeout 30 env "${SSM_ENV[@]}" "$PY" scripts/e2e/ssm.py delete "$PREFIX" DATABASE_URL REDIS_URL >&2 \
      || log "could not delete the parameters under $PREFIX"
  fi
  if [ "$DB_CREATED" -eq 1 ]; then
    # The run's Redis keys hold its session ids (the functions use the
    # template's default key prefix, as deployed).
    if command -v redis-cli >/dev/null; then
      local sid
      for sid in $(timeout 30 psql -X -q -At "$DB_URL_HOST" -c 'SELECT id FROM chat_sessions' 2>/dev/null); do
        timeout 10 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "*$sid*" 2>/dev/null \
          | xargs -r timeout 10 redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1
      done
    fi
    timeout 30 psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >&2 \
      || log "could not drop database $DB"
  fi
  if [ -n "$FWD_PID" ]; then
    kill -TERM "$FWD_PID" 2>/dev/null
    wait "$FWD_PID" 2>/dev/null
  fi
  if [ "${SAM_LOCAL_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
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
[ -x "$ROOT/.venv/bin/sam" ] || scripts/tools.sh venv >&2
curl -fsS --max-time 5 -o /dev/null "$TEST_MOTO_URL/moto-api/data.json" \
  || die "moto does not answer on $TEST_MOTO_URL"

# ----------------------------------------------------------- sam build ----

arch=$(sed -n 's/^ *Architectures: *\[ *\([a-z0-9_]*\) *\].*/\1/p' template.yaml | head -n1)
case "$arch" in
  arm64|x86_64) ;;
  *) die "cannot tell the architecture from template.yaml (Globals Architectures: '$arch')" ;;
esac

# The template's functions: "LogicalId binary" lines.
functions=$("$PY" - template.yaml <<'EOF'
import sys
from samcli.yamlhelper import yaml_parse
doc = yaml_parse(open(sys.argv[1], encoding="utf-8").read())
for lid, res in doc["Resources"].items():
    if res.get("Type") == "AWS::Serverless::Function":
        print(lid, ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary", lid))
EOF
) || die "cannot read the functions of template.yaml"

# Up to date: a bootstrap for every function, none older than a source file.
build_is_current() {
  [ -s "$BUILT/template.yaml" ] || return 1
  local lid bin oldest=
  while read -r lid bin; do
    [ -x "$BUILT/$lid/bootstrap" ] || return 1
    if [ -z "$oldest" ] || [ "$BUILT/$lid/bootstrap" -ot "$oldest" ]; then oldest="$BUILT/$lid/bootstrap"; fi
  done <<<"$functions"
  [ "$BUILT/template.yaml" -ot "$oldest" ] && oldest="$BUILT/template.yaml"
  local newer
  newer=$(find template.yaml Cargo.toml Cargo.lock shared functions migrations \
    -path shared/tests -prune -o -type f -newer "$oldest" -print 2>/dev/null | head -n1)
  [ -z "$newer" ] || { log "$newer is newer than .aws-sam/build"; return 1; }
}

case "$BUILD" in
  never) log "SAM_LOCAL_BUILD=never: using .aws-sam/build as it is"; do_build=0 ;;
  always) do_build=1 ;;
  auto) if build_is_current; then log ".aws-sam/build is newer than the sources: no sam build"; do_build=0; else do_build=1; fi ;;
  *) die "SAM_LOCAL_BUILD must be auto, always or never, not '$BUILD'" ;;
esac
if [ "$do_build" = 1 ]; then
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
# A copy is what runs: another checkout's `sam build` may rewrite
# .aws-sam/build while this one is running.
cp -a "$BUILT" "$WORK/build" || die "cannot copy .aws-sam/build"
while read -r lid bin; do
  f="$WORK/build/$lid/bootstrap"
  if desc=$("$PY" scripts/e2e/elf.py "$arch" "$f" 2>&1); then
    pass "${desc#ok  }"
  else
    fail "$lid/bootstrap is not an executable $arch ELF (a sam build running meanwhile?): $desc"
  fi
done <<<"$functions"
[ "$failed" -eq 0 ] || exit 1

# -------------------------------------------------------------- docker ----

t0=$(date +%s)
scripts/docker.sh start </dev/null || die "Docker cannot be started on this machine (see above); sam local needs it"
scripts/docker.sh emulation "$arch" </dev/null || die "$arch containers cannot run on this $(uname -m) machine (see above)"
scripts/docker.sh image "$arch" </dev/null || die "no provided.al2023 image for $arch (see above)"
scripts/docker.sh probe "$arch" </dev/null || die "containers of the Lambda image do not run as SAM needs (see above)"
pass "Docker ready for $arch containers ($(( $(date +%s) - t0 ))s)"
SAM_BEFORE=$(sam_containers)
[ -n "$SAM_BEFORE" ] || SAM_BEFORE=none

# ---------------------------------------------------------- forwarders ----

GW=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
[ -n "$GW" ] || GW=$(ip -4 -o addr show docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
[ -n "$GW" ] || die "cannot find the Docker bridge's gateway address (docker network inspect bridge)"

# host:port of a URL (default port per scheme).
hostport() {
  "$PY" -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
port = p.port or {"postgres": 5432, "postgresql": 5432, "redis": 6379, "http": 80}[p.scheme]
print(f"{p.hostname}:{port}")' "$1"
}
# The URL with its host:port replaced.
rehost() {
  "$PY" -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); auth = p.netloc.rpartition("@")
print(u.urlunsplit(p._replace(netloc=(auth[0] + "@" if auth[1] else "") + sys.argv[2])))' "$1" "$2"
}
PG_HP=$(hostport "$TEST_PG_ADMIN_URL")
REDIS_HP=$(hostport "$TEST_REDIS_URL")
MOTO_HP=$(hostport "$TEST_MOTO_URL")

log "forwarding $GW -> $PG_HP, $REDIS_HP, $MOTO_HP"
setsid "$PY" scripts/sam-local/forward.py --listen "$GW" --map "$WORK/forward.json" \
  "$PG_HP" "$REDIS_HP" "$MOTO_HP" </dev/null >"$WORK/forward.log" 2>&1 &
FWD_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/forward.json" ] && break; kill -0 "$FWD_PID" 2>/dev/null || break; sleep 0.1; done
[ -s "$WORK/forward.json" ] || { cat "$WORK/forward.log" >&2; die "the forwarders did not start"; }
fwd() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/forward.json" "$1"; }
PG_FWD=$(fwd "$PG_HP")
REDIS_FWD=$(fwd "$REDIS_HP")
MOTO_FWD=$(fwd "$MOTO_HP")

# ------------------------------------------------ database, parameters ----

admin_base=${TEST_PG_ADMIN_URL%%\?*}
DB_URL_HOST="${admin_base%/*}/$DB"
DATABASE_URL_CONTAINER=$(rehost "${admin_base%/*}/$DB?sslmode=disable" "$PG_FWD")
REDIS_URL_CONTAINER=$(rehost "$TEST_REDIS_URL" "$REDIS_FWD")
ENDPOINT_CONTAINER="http://$MOTO_FWD"

log "creating database $DB"
timeout 30 psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $DB" >&2 \
  || die "cannot create database $DB on TEST_PG_ADMIN_URL"
DB_CREATED=1

# For ssm.py and the migrator on this machine: moto straight, no real secrets.
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

log "putting SecureString parameters DATABASE_URL and REDIS_URL ($GW addresses) under $PREFIX"
PARAMS_PUT=1
timeout 60 env "${SSM_ENV[@]}" DATABASE_URL="$DATABASE_URL_CONTAINER" REDIS_URL="$REDIS_URL_CONTAINER" \
  "$PY" scripts/e2e/ssm.py put "$PREFIX" DATABASE_URL REDIS_URL >&2 \
  || die "cannot put the parameters into moto ($TEST_MOTO_URL)"
pass "SecureStrings DATABASE_URL, REDIS_URL under $PREFIX"

log "migrating $DB through SSM ($PREFIX)"
if timeout 900 env "${SSM_ENV[@]}" cargo run --locked --quiet -p support-chat --bin migrate </dev/null >"$WORK/migrate.log" 2>&1; then
  pass "migrate via SSM: $(grep -c '^migrate: applied' "$WORK/migrate.log") migration(s) applied"
else
  tail -n 40 "$WORK/migrate.log" >&2
  die "migrate failed"
fi

# -------------------------------------------------- the local template ----

TEMPLATE="$WORK/template.yaml"
"$PY" scripts/sam-local/template.py "$WORK/build/template.yaml" "$TEMPLATE" || die "cannot write the local template"
ENV_VARS="$WORK/env-vars.json"
"$PY" -c 'import json, sys
json.dump({"Parameters": {"SSM_PARAMETER_PREFIX": sys.argv[1], "AWS_ENDPOINT_URL_SSM": sys.argv[2]}},
          open(sys.argv[3], "w"), indent=2)' "$PREFIX" "$ENDPOINT_CONTAINER" "$ENV_VARS"
ORIGINS=$("$PY" -c 'import sys
from samcli.yamlhelper import yaml_parse
print(yaml_parse(open(sys.argv[1]).read())["Parameters"]["AllowedOrigins"]["Default"])' template.yaml)
ORIGIN=${ORIGINS%%,*}

# sam itself runs with only what it needs: no variable of the caller can
# reach a function (SAM hands a function the shell's value of any variable
# the template declares), and moto's dummy credentials are what SAM passes on.
# Before each run SAM asks STS for the account id; with no AWS to answer it
# spends 5-9 s retrying, so its STS goes to moto (SAM's own call only: the
# functions see none of this).
SAM_RUN=(env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}"
  ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"}
  SAM_CLI_TELEMETRY=0 AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
  AWS_ENDPOINT_URL_STS="$TEST_MOTO_URL")

# ------------------------------------------------------- start-api -----

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
API_PORT=
for p in $(seq 9300 9399); do
  if ! port_busy "$p"; then API_PORT=$p; break; fi
done
[ -n "$API_PORT" ] || die "no free port in 9300-9399"

# LAZY warm containers: one container per function, started on its first
# request and reused, as a warm Lambda instance is.
log "sam local start-api on 127.0.0.1:$API_PORT (log: $API_LOG)"
setsid "${SAM_RUN[@]}" sam local start-api -t "$TEMPLATE" --env-vars "$ENV_VARS" --skip-pull-image \
  --host 127.0.0.1 --port "$API_PORT" --warm-containers LAZY </dev/null >"$API_LOG" 2>&1 &
API_PID=$!
for _ in $(seq 1 450); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$API_PORT/" || true)
  [ "${code:-000}" != 000 ] && break
  kill -0 "$API_PID" 2>/dev/null || break
  sleep 0.2
done
[ "${code:-000}" != 000 ] || die "sam local start-api is not answering on $API_PORT after 90s"
routes=$(grep -o 'Mounting [A-Za-z]* at http[^ ]* \[[A-Z, ]*\]' "$API_LOG" || true)
for want in "SendMessageFunction at http://127.0.0.1:$API_PORT/api/chat [POST" \
            "GetHistoryFunction at http://127.0.0.1:$API_PORT/api/chat/history/{sessionId} [GET"; do
  if grep -qF "$want" <<<"$routes"; then pass "start-api mounts ${want%% \[*} ${want##*\[}"; else fail "start-api does not mount $want: $routes"; fi
done

# -------------------------------------------------------------- checks ----

log "running scripts/sam-local/checks.py"
set +e
timeout --kill-after=10 1800 "${SAM_RUN[@]}" "$PY" scripts/sam-local/checks.py --template "$TEMPLATE" \
  --env-vars "$ENV_VARS" --events events --api-port "$API_PORT" --api-log "$API_LOG" \
  --db-url "$DB_URL_HOST" --origin "$ORIGIN" --allowed-origins "$ORIGINS" \
  --counts "$WORK/counts" --invoke-log "$INVOKE_LOG" </dev/null
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

# The warm containers' environment: the template's, the prefix and the
# endpoint from --env-vars, and no secret.
ncont=0
for c in $(sam_containers); do
  grep -qx "$c" <<<"$SAM_BEFORE" && continue
  ncont=$((ncont + 1))
  envs=$(docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$c" 2>/dev/null || true)
  fn=$(docker inspect --format '{{index .Config.Labels "sam.cli.function.name"}}' "$c" 2>/dev/null || echo "$c")
  bad=$(grep -E '^(DATABASE_URL|REDIS_URL|CLAUDE_API_KEY|ANTHROPIC_API_KEY)=.' <<<"$envs" | cut -d= -f1 | tr '\n' ' ' || true)
  if grep -qx "SSM_PARAMETER_PREFIX=$PREFIX" <<<"$envs" && grep -qx "AWS_ENDPOINT_URL_SSM=$ENDPOINT_CONTAINER" <<<"$envs" \
      && [ -z "$bad" ]; then
    pass "$fn container: SSM_PARAMETER_PREFIX and AWS_ENDPOINT_URL_SSM from --env-vars, no secret in its environment"
  else
    fail "$fn container environment: prefix/endpoint not as set, or secrets present (${bad:-none}): $(grep -E '^(SSM_|AWS_ENDPOINT)' <<<"$envs" | tr '\n' ' ')"
  fi
done
[ "$ncont" -gt 0 ] || fail "no warm start-api container to inspect"

# REDIS_URL came from SSM too: the functions used Redis (the history cache and
# the per-session rate limits hold the session ids).
redis_keys=0
for sid in $(timeout 30 psql -X -q -At "$DB_URL_HOST" -c 'SELECT id FROM chat_sessions' 2>/dev/null); do
  n=$(timeout 10 redis-cli -u "$TEST_REDIS_URL" --scan --pattern "*$sid*" 2>/dev/null | wc -l || true)
  redis_keys=$((redis_keys + ${n:-0}))
done
if [ "$redis_keys" -gt 0 ]; then
  pass "Redis (URL from SSM, through the bridge) holds $redis_keys key(s) of this run's sessions"
else
  fail "no Redis key of this run's sessions: REDIS_URL from SSM was not used"
fi

if cat "$INVOKE_LOG" "$API_LOG" 2>/dev/null | grep -q 'panicked at'; then
  fail "a function panicked (see the logs)"
else
  pass "no panic in the functions' logs"
fi

if [ "${SAM_LOCAL_KEEP:-0}" = 1 ]; then
  cat >&2 <<EOF

sam-local: SAM_LOCAL_KEEP=1: everything stays up until Ctrl-C.
  sam local start-api:  http://127.0.0.1:$API_PORT  (log: $API_LOG)
  invoke a function:    ${SAM_RUN[*]} \\
                          sam local invoke SendMessageFunction -t $TEMPLATE \\
                          --env-vars $ENV_VARS --skip-pull-image -e events/send-message-v2.json
  database:             $DB_URL_HOST
EOF
  # In the background and waited for, so that a signal ends the wait at once.
  while :; do
    sleep 3600 &
    KEEP_PID=$!
    wait "$KEEP_PID" || true
  done
fi
[ "$failed" -eq 0 ]
