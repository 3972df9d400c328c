#!/usr/bin/env bash
# A local AWS emulator (moto) for the SSM tests. Prints an `export` line for
# the caller to eval (logs go to stderr):
#
#   eval "$(scripts/moto.sh)"    # -> TEST_MOTO_URL=http://127.0.0.1:PORT
#   scripts/moto.sh stop         # stops the server this script started
#
# Runs `.venv/bin/moto_server` (installed by `scripts/tools.sh venv` when
# missing) on 127.0.0.1, in the background, logging to .local/moto.log, pid in
# .local/moto.pid, port in .local/moto.port. A server it started earlier that
# still answers is reused. Port: $MOTO_PORT if set (it must be free or ours),
# else the first free one of 55000-55019.
#
# moto keeps its state in memory for as long as it runs: tests must use
# unique parameter names (the SSM tests use a fresh prefix per scenario).
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
MOTO="$ROOT/.venv/bin/moto_server"
PIDFILE="$LOCAL/moto.pid"
PORTFILE="$LOCAL/moto.port"
LOGFILE="$LOCAL/moto.log"
READY_SECS=30

log() { printf '[moto.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The recorded pid is alive and still moto_server (not a recycled pid).
pid_alive() {
  [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$(cat "$PIDFILE")/cmdline" 2>/dev/null | grep -q moto_server
}

# True if something (anything) listens on 127.0.0.1:port.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True if a moto server answers on the port (its management API returns JSON).
moto_answers() {
  local body
  body=$(curl -fsS --max-time 3 "http://127.0.0.1:$1/moto-api/data.json" 2>/dev/null) || return 1
  [ "${body#\{}" != "$body" ]
}

stop() {
  if pid_alive; then
    local pid i
    pid=$(cat "$PIDFILE")
    log "stopping moto_server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "moto_server did not exit in 5 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE" "$PORTFILE"
}

pick_port() {
  if [ -n "${MOTO_PORT:-}" ]; then
    [[ $MOTO_PORT =~ ^[0-9]+$ ]] || die "MOTO_PORT must be a port number, not '$MOTO_PORT'"
    port_busy "$MOTO_PORT" && die "MOTO_PORT $MOTO_PORT is taken by something else"
    printf '%s\n' "$MOTO_PORT"
    return
  fi
  local p
  for p in $(seq 55000 55019); do
    port_busy "$p" || { printf '%s\n' "$p"; return; }
  done
  die "no free port in 55000-55019 (set MOTO_PORT)"
}

start() {
  mkdir -p "$LOCAL"
  exec 9>"$LOCAL/moto.lock"
  flock -w 60 9 || die "another moto.sh holds $LOCAL/moto.lock"

  if pid_alive && [ -s "$PORTFILE" ]; then
    local running
    running=$(cat "$PORTFILE")
    if { [ -z "${MOTO_PORT:-}" ] || [ "$MOTO_PORT" = "$running" ]; } && moto_answers "$running"; then
      log "reusing moto_server (pid $(cat "$PIDFILE")) on 127.0.0.1:$running"
      printf 'export TEST_MOTO_URL=http://127.0.0.1:%s\n' "$running"
      return
    fi
    log "the running moto_server is on another port or not answering: restarting it"
  fi
  stop

  if [ ! -x "$MOTO" ]; then
    log "$MOTO missing: installing the project tools (scripts/tools.sh venv)"
    "$ROOT/scripts/tools.sh" venv >&2 9>&-
    [ -x "$MOTO" ] || die "scripts/tools.sh venv did not install $MOTO"
  fi

  local port pid i
  port=$(pick_port)
  log "starting moto_server on 127.0.0.1:$port (log: $LOGFILE)"
  # setsid: its own session, so the caller's terminal signals do not reach it;
  # fd 9 (our lock) must not be inherited, or the lock would outlive us.
  setsid "$MOTO" -H 127.0.0.1 -p "$port" >>"$LOGFILE" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PIDFILE"
  printf '%s\n' "$port" >"$PORTFILE"

  for i in $(seq 1 $((READY_SECS * 5))); do
    if moto_answers "$port"; then
      log "moto_server ready (pid $pid)"
      printf 'export TEST_MOTO_URL=http://127.0.0.1:%s\n' "$port"
      return
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 30 "$LOGFILE" >&2 || true
  stop
  die "moto_server did not answer on 127.0.0.1:$port within $READY_SECS s (log: $LOGFILE)"
}

case "${1:-start}" in
  start) start ;;
  stop)
    mkdir -p "$LOCAL"
    exec 9>"$LOCAL/moto.lock"
    flock -w 60 9 || die "another moto.sh holds $LOCAL/moto.lock"
    stop
    ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
