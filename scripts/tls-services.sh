#!/usr/bin/env bash
# Private TLS / pooler instances for the TLS and PgBouncer tests, all on
# loopback, state under .local/tls (git-ignored). Prints `export` lines:
#
#   eval "$(scripts/services.sh)"        # first: TEST_PG_ADMIN_URL (pgbouncer's backend)
#   eval "$(scripts/tls-services.sh)"    # -> TEST_TLS_PG_URL, TEST_TLS_CA, TEST_TLS_WRONG_CA,
#                                        #    TEST_TLS_REDIS_URL, TEST_PGBOUNCER_URL_BASE
#   scripts/tls-services.sh stop         # stops all three
#
#   .local/tls/certs     test CA (ca.pem), server cert for localhost/127.0.0.1
#                        signed by it (server.pem/.key), an unrelated CA (wrong-ca.pem)
#   127.0.0.1:55433      PostgreSQL, TLS only (plaintext TCP is rejected by pg_hba)
#   127.0.0.1:56380      Redis, TLS only, password in .local/tls/redis/password
#   127.0.0.1:56432      PgBouncer, pool_mode=transaction, default_pool_size=3, in
#                        front of the PostgreSQL in $TEST_PG_ADMIN_URL
#                        (default 127.0.0.1:5432); any database name passes through
#   (ports: TLS_PG_PORT, TLS_REDIS_PORT, PGBOUNCER_PORT move them, e.g. for two checkouts)
#
# Idempotent: what already runs with the same config is reused.
set -euo pipefail
umask 022
# shellcheck source=services.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh"

TLS="$LOCAL/tls"
CERTS="$TLS/certs"
TLS_PG_PORT=${TLS_PG_PORT:-55433}
TLS_REDIS_PORT=${TLS_REDIS_PORT:-56380}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-56432}

# ------------------------------------------------------------- certificates --

ossl_conf() {
  cat <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF
}

gen_ca() { # gen_ca <basename> <CN>
  local base=$1 cn=$2
  log "generating CA $CERTS/$base.pem ($cn)"
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -config "$CERTS/openssl.cnf" -extensions v3_ca -subj "/CN=$cn" \
    -keyout "$CERTS/$base.key" -out "$CERTS/$base.pem" 2>/dev/null
  chmod 0600 "$CERTS/$base.key"
}

cert_ok() { # cert_ok <pem> [<ca>]: exists, valid for another day, verifies against ca
  [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  [ -z "${2:-}" ] || openssl verify -CAfile "$2" "$1" >/dev/null 2>&1
}

ensure_certs() {
  mkdir -p "$CERTS"
  chmod 0755 "$TLS" "$CERTS"
  ossl_conf >"$CERTS/openssl.cnf"
  if ! cert_ok "$CERTS/ca.pem" || [ ! -s "$CERTS/ca.key" ]; then
    gen_ca ca "support-chat test CA"
    rm -f "$CERTS/server.pem"
  fi
  if ! cert_ok "$CERTS/wrong-ca.pem"; then
    gen_ca wrong-ca "unrelated test CA"
  fi
  if ! cert_ok "$CERTS/server.pem" "$CERTS/ca.pem" || [ ! -s "$CERTS/server.key" ]; then
    log "generating server certificate $CERTS/server.pem (CN=localhost, SAN DNS:localhost,IP:127.0.0.1)"
    openssl req -new -newkey rsa:2048 -nodes -sha256 -config "$CERTS/openssl.cnf" \
      -subj "/CN=localhost" -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2>/dev/null
    openssl x509 -req -sha256 -days 3650 -in "$CERTS/server.csr" \
      -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -extfile "$CERTS/openssl.cnf" -extensions v3_server -out "$CERTS/server.pem" 2>/dev/null
    rm -f "$CERTS/server.csr"
    chmod 0600 "$CERTS/server.key"
    cert_ok "$CERTS/server.pem" "$CERTS/ca.pem" || die "generated server certificate does not verify"
  fi
}

# --------------------------------------------------------------- PostgreSQL --

tls_pg_dir() { pg_state_dir tls/pg; }

tls_pg_ok() {
  PGCONNECT_TIMEOUT=5 psql -X -w -q -At \
    "host=localhost port=$TLS_PG_PORT user=postgres dbname=postgres sslmode=verify-full sslrootcert=$CERTS/ca.pem" \
    -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' 2>/dev/null | grep -qx t
}

ensure_tls_pg() {
  local dir tmp key_changed=0 f
  dir=$(tls_pg_dir)
  mkdir -p "$(dirname "$dir")" "$dir"
  chmod 0755 "$(dirname "$dir")"
  ensure_pg_os_user
  pg_own "$dir"
  chmod 0700 "$dir"
  # PostgreSQL wants the key owned by its user, mode 0600.
  for f in server.pem server.key; do
    if ! cmp -s "$CERTS/$f" "$dir/$f"; then
      install -m 0600 "$CERTS/$f" "$dir/$f"
      key_changed=1
    fi
    pg_own "$dir/$f"
  done

  tmp=$(mktemp -d)
  cat >"$tmp/extra.conf" <<EOF
ssl = on
ssl_cert_file = '$dir/server.pem'
ssl_key_file = '$dir/server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
  cat >"$tmp/hba.conf" <<'EOF'
# Written by scripts/tls-services.sh: TLS or nothing over TCP.
local     all all                trust
hostssl   all all 127.0.0.1/32   trust
host      all all 127.0.0.1/32   reject
hostssl   all all ::1/128        trust
host      all all ::1/128        reject
EOF
  local was_running=0
  [ -s "$dir/data/postmaster.pid" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 && was_running=1
  pg_private_start "$dir" "$TLS_PG_PORT" "$tmp/extra.conf" "$tmp/hba.conf"
  rm -rf "$tmp"
  if [ "$was_running" -eq 1 ] && [ "$key_changed" -eq 1 ]; then
    log "TLS PostgreSQL: certificate changed, reloading"
    as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" reload >/dev/null
    sleep 1
  fi
  wait_for 30 "$dir/postgres.log" "TLS PostgreSQL on $TLS_PG_PORT (verify-full with $CERTS/ca.pem)" tls_pg_ok
}

# -------------------------------------------------------------------- Redis --

tls_redis_ping() {
  [ "$(REDISCLI_AUTH=$(cat "$TLS/redis/password") timeout 5 redis-cli --tls --cacert "$CERTS/ca.pem" \
        -h localhost -p "$TLS_REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

ensure_tls_redis() {
  local dir="$TLS/redis" conf
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [ ! -s "$dir/password" ]; then
    (umask 077; openssl rand -hex 24 >"$dir/password")
  fi
  conf=$(cat <<EOF
# Written by scripts/tls-services.sh; regenerated on every run.
port 0
tls-port $TLS_REDIS_PORT
tls-cert-file $CERTS/server.pem
tls-key-file $CERTS/server.key
tls-ca-cert-file $CERTS/ca.pem
tls-auth-clients no
requirepass $(cat "$dir/password")
bind 127.0.0.1
save ""
appendonly no
daemonize yes
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
EOF
)
  if pidfile_alive "$dir/redis.pid"; then
    if [ "$(cat "$dir/redis.conf" 2>/dev/null || true)" = "$conf" ] && tls_redis_ping; then
      log "reusing TLS Redis on 127.0.0.1:$TLS_REDIS_PORT"
      return
    fi
    log "TLS Redis config changed or not answering: restarting"
    stop_pidfile "$dir/redis.pid" "TLS Redis"
  fi
  port_busy "$TLS_REDIS_PORT" && die "port $TLS_REDIS_PORT is taken by something else; cannot start TLS Redis"
  (umask 077; printf '%s\n' "$conf" >"$dir/redis.conf")
  rm -f "$dir/redis.pid"
  log "starting TLS Redis on 127.0.0.1:$TLS_REDIS_PORT"
  redis-server "$dir/redis.conf" >&2 8>&- 9>&- || { tail -n 30 "$dir/redis.log" >&2 || true; die "TLS redis-server failed to start (built without TLS?)"; }
  wait_for 30 "$dir/redis.log" "TLS Redis on $TLS_REDIS_PORT" tls_redis_ping
}

# ---------------------------------------------------------------- PgBouncer --

urldecode() { local s=${1//+/ }; printf '%b' "${s//%/\\x}"; }

# Sets BE_HOST BE_PORT BE_USER BE_PASS from $TEST_PG_ADMIN_URL.
parse_backend() {
  BE_HOST=127.0.0.1 BE_PORT=5432 BE_USER=postgres BE_PASS=
  local url=${TEST_PG_ADMIN_URL:-}
  if [ -z "$url" ]; then
    log "TEST_PG_ADMIN_URL not set: PgBouncer points at 127.0.0.1:5432 (eval \"\$(scripts/services.sh)\" first)"
    return
  fi
  local re='^postgres(ql)?://(([^:@/]*)(:([^@/]*))?@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?([/?].*)?$'
  [[ $url =~ $re ]] || die "cannot parse TEST_PG_ADMIN_URL (expected postgres://user[:pw]@host[:port]/db)"
  [ -n "${BASH_REMATCH[3]}" ] && BE_USER=$(urldecode "${BASH_REMATCH[3]}")
  [ -n "${BASH_REMATCH[5]}" ] && BE_PASS=$(urldecode "${BASH_REMATCH[5]}")
  if [ -n "${BASH_REMATCH[6]}" ]; then BE_HOST=${BASH_REMATCH[6]#[}; BE_HOST=${BE_HOST%]}; fi
  [ -n "${BASH_REMATCH[8]}" ] && BE_PORT=${BASH_REMATCH[8]}
  return 0
}

pgbouncer_bin() {
  command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; } \
    || die "pgbouncer not installed (run scripts/tools.sh apt)"
}

pgbouncer_admin_ok() {
  PGCONNECT_TIMEOUT=5 psql -X -w -q -At -h 127.0.0.1 -p "$PGBOUNCER_PORT" -U postgres -d pgbouncer \
    -c 'SHOW VERSION' >/dev/null 2>&1
}
pgbouncer_ok() {
  PGCONNECT_TIMEOUT=5 psql -X -w -q -At -h 127.0.0.1 -p "$PGBOUNCER_PORT" -U postgres -d postgres \
    -c 'select 1' >/dev/null 2>&1
}

ensure_pgbouncer() {
  local dir bin ini users
  dir=$(pg_state_dir tls/pgbouncer) # pgbouncer runs as postgres: must reach it
  bin=$(pgbouncer_bin)
  parse_backend
  ensure_pg_os_user
  mkdir -p "$(dirname "$dir")" "$dir"
  chmod 0755 "$(dirname "$dir")"
  pg_own "$dir"
  chmod 0700 "$dir"
  # quote for the auth_file: "user" "password", a literal " doubled
  users=$(printf '"%s" "%s"\n' "postgres" "$([ "$BE_USER" = postgres ] && printf '%s' "${BE_PASS//\"/\"\"}")")
  if [ "$BE_USER" != postgres ]; then
    users+=$'\n'$(printf '"%s" "%s"' "${BE_USER//\"/\"\"}" "${BE_PASS//\"/\"\"}")
  fi
  ini=$(cat <<EOF
; Written by scripts/tls-services.sh; regenerated on every run.
[databases]
* = host=$BE_HOST port=$BE_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
)
  if pidfile_alive "$dir/pgbouncer.pid"; then
    if [ "$(cat "$dir/pgbouncer.ini" 2>/dev/null || true)" = "$ini" ] \
       && [ "$(cat "$dir/userlist.txt" 2>/dev/null || true)" = "$users" ] && pgbouncer_admin_ok; then
      log "reusing PgBouncer on 127.0.0.1:$PGBOUNCER_PORT -> $BE_HOST:$BE_PORT"
      wait_for 15 "$dir/pgbouncer.log" "PgBouncer backend $BE_HOST:$BE_PORT (select 1 via :$PGBOUNCER_PORT)" pgbouncer_ok
      return
    fi
    log "PgBouncer config changed or not answering: restarting"
    stop_pidfile "$dir/pgbouncer.pid" "PgBouncer"
  fi
  port_busy "$PGBOUNCER_PORT" && die "port $PGBOUNCER_PORT is taken by something else; cannot start PgBouncer"
  printf '%s\n' "$ini" | as_pg tee "$dir/pgbouncer.ini" >/dev/null
  (umask 077; printf '%s\n' "$users" | as_pg tee "$dir/userlist.txt" >/dev/null)
  chmod 0600 "$dir/userlist.txt" "$dir/pgbouncer.ini"
  rm -f "$dir/pgbouncer.pid"
  log "starting PgBouncer on 127.0.0.1:$PGBOUNCER_PORT -> $BE_HOST:$BE_PORT (transaction pooling)"
  as_pg "$bin" -d -q "$dir/pgbouncer.ini" >&2 \
    || { tail -n 30 "$dir/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
  wait_for 30 "$dir/pgbouncer.log" "PgBouncer on $PGBOUNCER_PORT" pgbouncer_admin_ok
  wait_for 15 "$dir/pgbouncer.log" "PgBouncer backend $BE_HOST:$BE_PORT (select 1 via :$PGBOUNCER_PORT)" pgbouncer_ok
}

# --------------------------------------------------------------------- main --

tls_stop() {
  stop_pidfile "$LOCAL/tls/pgbouncer/pgbouncer.pid" "PgBouncer"
  stop_pidfile "$ALT/tls/pgbouncer/pgbouncer.pid" "PgBouncer"
  stop_pidfile "$TLS/redis/redis.pid" "TLS Redis"
  pg_private_stop "$LOCAL/tls/pg"
  pg_private_stop "$ALT/tls/pg"
}

tls_main() {
  mkdir -p "$TLS"
  exec 8>"$LOCAL/tls-services.lock"
  flock -w 120 8 || die "another tls-services.sh holds $LOCAL/tls-services.lock"
  case "${1:-start}" in
    start)
      "$ROOT/scripts/tools.sh" apt >&2 8>&- 9>&-
      ensure_certs
      ensure_tls_pg
      ensure_tls_redis
      ensure_pgbouncer
      emit TEST_TLS_PG_URL "postgres://postgres@localhost:$TLS_PG_PORT/postgres"
      emit TEST_TLS_CA "$CERTS/ca.pem"
      emit TEST_TLS_WRONG_CA "$CERTS/wrong-ca.pem"
      emit TEST_TLS_REDIS_URL "rediss://:$(cat "$TLS/redis/password")@localhost:$TLS_REDIS_PORT"
      emit TEST_PGBOUNCER_URL_BASE "postgres://postgres@127.0.0.1:$PGBOUNCER_PORT"
      ;;
    stop) tls_stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
  esac
}

tls_main "$@"
