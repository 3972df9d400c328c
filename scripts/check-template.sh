#!/usr/bin/env bash
# Lints template.yaml with cfn-lint and `sam validate --lint`.
# Needs the tools from scripts/tools.sh (.venv). No AWS credentials needed.
# Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0

for tool in cfn-lint sam; do
  if [ ! -x ".venv/bin/$tool" ]; then
    echo "check-template: .venv/bin/$tool is missing; run scripts/tools.sh venv" >&2
    exit 2
  fi
done

echo "==> cfn-lint template.yaml"
.venv/bin/cfn-lint template.yaml

echo "==> sam validate --lint"
.venv/bin/sam validate --lint --template template.yaml

echo "check-template: OK"
