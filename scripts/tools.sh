#!/usr/bin/env bash
# Installs the project's Python-based tools (cargo-lambda, moto, SAM CLI, cfn-lint, zig, schemathesis)
# into a private virtualenv at .venv, and the Debian packages the tests need.
# Idempotent: a second run only checks. Usage: scripts/tools.sh [venv|apt|all|widget|browser]
# (widget: npm packages of widget/; browser: Debian's chromium for its tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
what=${1:-all}

# Pinned so a clean clone gets the versions the project was tested with.
PY_TOOLS=(
  "cargo-lambda==1.9.2"
  "ziglang==0.15.1"
  "moto[server,ssm]==5.2.5"
  "aws-sam-cli==1.170.0"
  "cfn-lint==1.58.0"
  "schemathesis==4.32.5"
)
APT_PACKAGES=(pgbouncer openssl postgresql redis-server)

venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.tools-installed"
  local want
  want=$(printf '%s\n' "${PY_TOOLS[@]}")
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
    printf '%s\n' "$want" > "$stamp"
  fi
}

apt() {
  local missing=()
  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  command -v openssl >/dev/null || missing+=(openssl)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tools: installing ${missing[*]} from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The chat widget's build and test tools: Node.js (20 or later, the
# machine's), then `npm ci` in widget/ whenever package-lock.json changed.
widget() {
  command -v node >/dev/null && command -v npm >/dev/null \
    || { echo "tools: the widget needs Node.js 20+ and npm on PATH" >&2; exit 1; }
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || { echo "tools: the widget needs Node.js 20+, found $(node --version)" >&2; exit 1; }
  local stamp="$ROOT/widget/node_modules/.lock-sha" want
  want=$(sha256sum "$ROOT/widget/package-lock.json" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "tools: npm ci in widget/" >&2
    (cd "$ROOT/widget" && npm ci --no-audit --no-fund --loglevel=error </dev/null >&2)
    printf '%s\n' "$want" > "$stamp"
  fi
}

# Debian's Chromium for the widget's browser tests (playwright-core drives
# it; no browser download), and fonts so that screenshots show text and emoji.
browser() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tools: installing ${missing[*]} from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

case "$what" in
  venv) venv ;;
  apt) apt ;;
  all) apt; venv ;;
  widget) widget ;;
  browser) browser ;;
  *) echo "usage: $0 [venv|apt|all|widget|browser]" >&2; exit 2 ;;
esac
