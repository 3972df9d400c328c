#!/usr/bin/env bash
# `make test`: everything CI checks. Starts what is missing (PostgreSQL,
# Redis, the TLS servers, PgBouncer, moto), then runs formatting, lints, the
# layout and template checks, every Rust test, the end-to-end run through
# cargo-lambda, the same build through SAM's own emulator in Docker, the
# OpenAPI check (schemathesis) and the chat widget in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)

step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))" >&2; }

step "tools"
scripts/tools.sh all >&2
export PATH="$ROOT/.venv/bin:$PATH"

step "services"
eval "$(scripts/services.sh)"
eval "$(scripts/tls-services.sh)"
eval "$(scripts/moto.sh)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "layout: module cycles and long functions (shape.py)"
scripts/shape.sh

step "template: cfn-lint and sam validate --lint"
scripts/check-template.sh

step "cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads 4

step "end to end: sam build, cargo lambda watch and invoke"
scripts/e2e.sh

step "sam local: every fixture through sam local invoke, and sam local start-api, in Docker (arm64 under QEMU)"
scripts/sam-local.sh

step "schemathesis: the running service against docs/openapi.yaml"
scripts/schemathesis.sh

step "chat widget: headless Chromium against the real backend"
scripts/widget-test.sh

step "all checks passed"
