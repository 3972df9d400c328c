#!/usr/bin/env bash
# SAM CLI with the project's tools on PATH.
#
#   scripts/sam.sh build [sam build args]    # `make build`
#   scripts/sam.sh deploy [sam deploy args]  # `make deploy` (needs AWS credentials)
#
# `build` compiles the three functions for the template's architecture (arm64,
# Graviton) with `cargo lambda build --release --arm64`, one per function
# (BuildMethod rust-cargolambda: no longer a beta feature in the pinned SAM CLI
# 1.170, so no --beta-features). cargo-lambda cross-compiles with Zig: both come from
# the project venv (scripts/tools.sh installs cargo-lambda and PyPI's ziglang,
# which cargo-lambda finds as `python3 -m ziglang`). The Rust standard library
# for aarch64-unknown-linux-gnu comes from rustup, added here when missing.
#
# The builds go to cargo's target directory ($CARGO_TARGET_DIR, else
# ./target): lambda-builders asks `cargo metadata` for it, and every function
# shares it, so the dependencies are compiled once per `sam build`, and not
# again on the next one unless they changed (sam's own `cached` is off in
# samconfig.toml; cargo's cache does that job better).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export PATH="$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"
export SAM_CLI_TELEMETRY=0
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

log() { printf '[sam.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_tools() {
  if [ ! -x "$ROOT/.venv/bin/sam" ] || [ ! -x "$ROOT/.venv/bin/cargo-lambda" ] \
    || ! "$ROOT/.venv/bin/python3" -c 'import ziglang' 2>/dev/null; then
    log "installing the project tools (scripts/tools.sh venv)"
    "$ROOT/scripts/tools.sh" venv >&2
  fi
}

# The Rust target triple for the template's Globals architecture.
template_arch() {
  local arch
  arch=$(sed -n 's/^ *Architectures: *\[ *\([a-z0-9_]*\) *\].*/\1/p' "$ROOT/template.yaml" | head -n1)
  printf '%s\n' "${arch:-x86_64}"
}

need_rust_target() {
  local triple
  case "$(template_arch)" in
    arm64) triple=aarch64-unknown-linux-gnu ;;
    x86_64) triple=x86_64-unknown-linux-gnu ;;
    *) die "unknown architecture '$(template_arch)' in template.yaml" ;;
  esac
  command -v rustup >/dev/null || return 0
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    log "rustup target add $triple"
    rustup target add "$triple" >&2 || die "cannot install the Rust target $triple (rustup target add)"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  build)
    need_tools
    need_rust_target
    log "sam build ($(template_arch); cargo target dir: ${CARGO_TARGET_DIR:-$ROOT/target})"
    exec sam build "$@"
    ;;
  deploy)
    need_tools
    exec sam deploy "$@"
    ;;
  *)
    echo "usage: $0 build|deploy [sam args]" >&2
    exit 2
    ;;
esac
