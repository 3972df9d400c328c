#!/usr/bin/env bash
# The layout check: no module cycles and no function over 60 lines in
# shared/src and bench/src (the team's shape.py, kept beside the repository
# in ../shared/tools; SHAPE_PY overrides where it is). Exits non-zero on a
# finding, and when the tool cannot be found at all.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${SHAPE_PY:-}
if [ -z "$tool" ]; then
  for candidate in ../shared/tools/shape.py /work/shared/tools/shape.py; do
    if [ -f "$candidate" ]; then tool=$candidate; break; fi
  done
fi
if [ -z "$tool" ] || [ ! -f "$tool" ]; then
  echo "shape: shape.py not found (looked in ../shared/tools and /work/shared/tools; set SHAPE_PY)" >&2
  exit 2
fi
for dir in shared/src bench/src; do
  echo "==> shape $dir"
  python3 "$tool" "$dir"
done
