#!/usr/bin/env bash
# Ensures a PostgreSQL and a Redis for the tests and prints `export` lines for
# the caller to eval (logs go to stderr):
#
#   eval "$(scripts/services.sh)"      # -> TEST_PG_ADMIN_URL, TEST_REDIS_URL
#   scripts/services.sh stop           # stops only the private instances this
#                                      # script started (never the machine's)
#
# PostgreSQL, first that works:
#   1. $DATABASE_ADMIN_URL (a superuser URL to a maintenance DB), if set;
#   2. 127.0.0.1:$SERVICES_PG_PORT (default 5432) as user postgres, no password;
#   3. the private cluster under .local/pg (port 55432) if it is already running;
#   4. an OS cluster (pg_lsclusters) on that port, started with pg_ctlcluster;
#   5. a new private cluster under .local/pg on 127.0.0.1:55432 (trust auth).
# Redis: 127.0.0.1:$SERVICES_REDIS_PORT (default 6379) if it answers PONG,
#   else a private redis-server on 127.0.0.1:56379 (data dir .local/redis).
#
# SERVICES_PG_PORT / SERVICES_REDIS_PORT exist to test the private paths on a
# machine whose own services are up (point them at an unused port).
#
# This file is also sourced by scripts/tls-services.sh for its helpers; the
# main program only runs when it is executed.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
# Short, deterministic fallback for when the postgres OS user cannot reach the
# repository (e.g. a clone under /root) or a socket path would be too long.
ALT="/tmp/svc-$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)"

PRIVATE_PG_PORT=${PRIVATE_PG_PORT:-55432}
PRIVATE_REDIS_PORT=${PRIVATE_REDIS_PORT:-56379}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Single-quote a value for the caller's shell.
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
emit() { printf 'export %s=%s\n' "$1" "$(shq "$2")"; }

# ---------------------------------------------------------------- helpers ---

# Runs a command as the OS user that owns the private clusters: `postgres`
# when we are root (initdb/pgbouncer refuse root), else ourselves.
# fds 8/9 hold our flock(1) locks: daemons must not inherit them (closed here
# and at every other daemon start), or the lock would outlive this script.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@" 8>&- 9>&-)
  else
    "$@" 8>&- 9>&-
  fi
}

ensure_pg_os_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  if ! id -u postgres >/dev/null 2>&1; then
    log "creating OS user postgres"
    useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
      --shell /bin/bash postgres
  fi
}

# chown to the cluster user when root; no-op otherwise.
pg_own() { if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$@"; fi; }

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] || die "no initdb under /usr/lib/postgresql/*/bin (run scripts/tools.sh apt)"
  printf '%s\n' "$d"
}

# Directory for a private cluster's state: $LOCAL/<name> if the cluster user
# can reach it, else $ALT/<name>.
pg_state_dir() {
  local name=$1
  mkdir -p "$LOCAL"
  if [ "$(id -u)" -ne 0 ] || as_pg test -x "$LOCAL" 2>/dev/null; then
    printf '%s\n' "$LOCAL/$name"
  else
    printf '%s\n' "$ALT/$name"
  fi
}

# Unix socket directory for a cluster: <dir>/run unless the socket path would
# exceed the ~107-byte sun_path limit.
pg_sock_dir() {
  local dir=$1 port=$2 name=$3
  if [ ${#dir} -le $((100 - ${#port} - 14)) ]; then
    printf '%s\n' "$dir/run"
  else
    printf '%s\n' "$ALT/$name-run"
  fi
}

# 0 if a server at host:port accepts `select 1` as postgres without a password.
pg_usable() {
  local host=$1 port=$2
  pg_isready -q -h "$host" -p "$port" -t 3 >/dev/null 2>&1 || return 1
  PGCONNECT_TIMEOUT=5 psql -X -w -q -At -h "$host" -p "$port" -U postgres -d postgres \
    -c 'select 1' >/dev/null 2>&1
}

pg_url_usable() {
  PGCONNECT_TIMEOUT=5 psql -X -w -q -At -d "$1" -c 'select 1' >/dev/null 2>&1
}

# True if something (anything) listens on 127.0.0.1:port.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Creates (if needed) and starts (if needed) a private cluster.
#   pg_private_start <dir> <port> <extra-conf-file-or-empty> <hba-file-or-empty>
# The cluster lives in <dir>/data, logs to <dir>/postgres.log, listens on
# 127.0.0.1:<port> only, socket in pg_sock_dir. <extra-conf> is copied to
# data/local.conf (included by postgresql.conf); <hba> replaces pg_hba.conf.
# A running cluster is reused; it is restarted if its config changed.
pg_private_start() {
  local dir=$1 port=$2 extra=${3:-} hba=${4:-}
  local data="$dir/data" logf="$dir/postgres.log" bin sock changed=0
  bin=$(pg_bindir)
  sock=$(pg_sock_dir "$dir" "$port" "$(basename "$dir")")
  ensure_pg_os_user
  mkdir -p "$dir" "$sock"
  pg_own "$dir" "$sock"
  chmod 0700 "$dir"
  chmod 0755 "$sock"

  if [ ! -s "$data/PG_VERSION" ]; then
    log "initdb $data ($(basename "$(dirname "$bin")"))"
    rm -rf "$data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      >"$dir/initdb.log" 2>&1 || { tail -n 20 "$dir/initdb.log" >&2; die "initdb failed"; }
    echo "include_if_exists = 'local.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
  fi

  local conf
  conf=$(cat <<EOF
# Written by scripts/services.sh; regenerated on every run.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
)
  [ -n "$extra" ] && conf+=$'\n'$(cat "$extra")
  if [ "$(cat "$data/local.conf" 2>/dev/null || true)" != "$conf" ]; then
    printf '%s\n' "$conf" | as_pg tee "$data/local.conf" >/dev/null
    changed=1
  fi
  if [ -n "$hba" ] && ! cmp -s "$hba" "$data/pg_hba.conf"; then
    as_pg tee "$data/pg_hba.conf" <"$hba" >/dev/null
    changed=1
  fi

  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    if [ "$changed" -eq 1 ]; then
      log "config of $data changed: restarting"
      as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t 30 -m fast restart >/dev/null 2>&1 \
        || { tail -n 30 "$logf" >&2; die "restart of $data failed"; }
    else
      log "reusing private PostgreSQL $data on 127.0.0.1:$port"
    fi
  else
    if port_busy "$port"; then
      die "port $port is taken by something else; cannot start private PostgreSQL $data"
    fi
    log "starting private PostgreSQL $data on 127.0.0.1:$port"
    touch "$logf"; pg_own "$logf"
    as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t 30 start >/dev/null 2>&1 \
      || { tail -n 30 "$logf" >&2; die "private PostgreSQL $data did not start (log: $logf)"; }
  fi

  local i
  for i in $(seq 1 30); do
    pg_isready -q -h "$sock" -p "$port" -t 1 && return 0
    sleep 1
  done
  tail -n 30 "$logf" >&2
  die "private PostgreSQL $data not ready after 30 s (log: $logf)"
}

# Stops a private cluster if its data dir exists and it runs.
pg_private_stop() {
  local dir=$1 data="$1/data" bin
  [ -s "$data/PG_VERSION" ] || return 0
  bin=$(pg_bindir)
  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "stopping private PostgreSQL $data"
    as_pg "$bin/pg_ctl" -D "$data" -w -t 30 -m fast stop >/dev/null
  fi
}

# Kills the process in a pidfile (if alive) and waits for it to exit.
stop_pidfile() {
  local pidfile=$1 what=$2 sig=${3:-TERM} pid i
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $what (pid $pid)"
    kill -s "$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$what did not exit in 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# True if the process in a pidfile is alive.
pidfile_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for <seconds> <logfile> <what> <cmd...>
  local secs=$1 logf=$2 what=$3 i
  shift 3
  for i in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  [ -f "$logf" ] && tail -n 30 "$logf" >&2
  die "$what not ready after $secs s (log: $logf)"
}

# ------------------------------------------------------------------ main ----

services_pg() {
  local port=${SERVICES_PG_PORT:-5432}
  if [ -n "${DATABASE_ADMIN_URL:-}" ]; then
    pg_url_usable "$DATABASE_ADMIN_URL" || die "DATABASE_ADMIN_URL is set but does not answer 'select 1'"
    log "PostgreSQL: using DATABASE_ADMIN_URL"
    PG_URL=$DATABASE_ADMIN_URL
    return
  fi
  if pg_usable 127.0.0.1 "$port"; then
    log "PostgreSQL: using the machine's server on 127.0.0.1:$port"
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    return
  fi
  local dir
  dir=$(pg_state_dir pg)
  if pg_usable 127.0.0.1 "$PRIVATE_PG_PORT" && [ -s "$dir/data/postmaster.pid" ]; then
    log "PostgreSQL: reusing private cluster on 127.0.0.1:$PRIVATE_PG_PORT"
    PG_URL="postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT/postgres"
    return
  fi
  if command -v pg_lsclusters >/dev/null; then
    local ver name cport status found=0
    while read -r ver name cport status _; do
      [ "$cport" = "$port" ] || continue
      found=1
      if [ "$status" != online ]; then
        log "PostgreSQL: starting OS cluster $ver/$name (port $cport)"
        pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 8>&- 9>&- \
          || log "pg_ctlcluster $ver $name start failed"
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
    local i
    if [ "$found" -eq 1 ]; then
      for i in 1 2 3 4 5; do
        if pg_usable 127.0.0.1 "$port"; then
          log "PostgreSQL: using the OS cluster on 127.0.0.1:$port"
          PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
          return
        fi
        if pg_isready -q -h 127.0.0.1 -p "$port" -t 1 >/dev/null 2>&1; then
          log "PostgreSQL: the OS cluster on $port is up but refuses postgres without a password"
          break
        fi
        sleep 1
      done
    fi
  fi
  log "PostgreSQL: nothing usable on 127.0.0.1:$port; using a private cluster"
  pg_private_start "$dir" "$PRIVATE_PG_PORT" "" ""
  pg_usable 127.0.0.1 "$PRIVATE_PG_PORT" || die "private PostgreSQL on $PRIVATE_PG_PORT refuses 'select 1'"
  PG_URL="postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT/postgres"
}

redis_pong() { # redis_pong <port>
  [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

services_redis() {
  local port=${SERVICES_REDIS_PORT:-6379}
  if redis_pong "$port"; then
    log "Redis: using the machine's server on 127.0.0.1:$port"
    REDIS_URL="redis://127.0.0.1:$port"
    return
  fi
  local dir="$LOCAL/redis"
  mkdir -p "$dir"
  if redis_pong "$PRIVATE_REDIS_PORT" && pidfile_alive "$dir/redis.pid"; then
    log "Redis: reusing private server on 127.0.0.1:$PRIVATE_REDIS_PORT"
  else
    port_busy "$PRIVATE_REDIS_PORT" && die "port $PRIVATE_REDIS_PORT is taken by something else; cannot start private Redis"
    log "Redis: nothing on 127.0.0.1:$port; starting a private server on 127.0.0.1:$PRIVATE_REDIS_PORT"
    command -v redis-server >/dev/null || die "redis-server not installed (run scripts/tools.sh apt)"
    rm -f "$dir/redis.pid"
    redis-server --port "$PRIVATE_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2 8>&- 9>&- \
      || { tail -n 30 "$dir/redis.log" >&2 || true; die "redis-server failed to start"; }
    wait_for 30 "$dir/redis.log" "private Redis on $PRIVATE_REDIS_PORT" redis_pong "$PRIVATE_REDIS_PORT"
  fi
  REDIS_URL="redis://127.0.0.1:$PRIVATE_REDIS_PORT"
}

services_stop() {
  local d
  for d in "$LOCAL/pg" "$ALT/pg"; do pg_private_stop "$d"; done
  local dir="$LOCAL/redis"
  if pidfile_alive "$dir/redis.pid"; then
    stop_pidfile "$dir/redis.pid" "private Redis"
  fi
}

services_main() {
  case "${1:-start}" in
    start)
      "$ROOT/scripts/tools.sh" apt >&2 8>&- 9>&-
      mkdir -p "$LOCAL"
      exec 9>"$LOCAL/services.lock"
      flock -w 120 9 || die "another services.sh holds $LOCAL/services.lock"
      services_pg
      services_redis
      emit TEST_PG_ADMIN_URL "$PG_URL"
      emit TEST_REDIS_URL "$REDIS_URL"
      ;;
    stop)
      mkdir -p "$LOCAL"
      exec 9>"$LOCAL/services.lock"
      flock -w 120 9 || die "another services.sh holds $LOCAL/services.lock"
      services_stop
      ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  services_main "$@"
fi
