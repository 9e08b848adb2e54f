#!/usr/bin/env bash
# The TransformerLens 4 check: build (or reuse) .venv-tl4 with scripts/setup_tl4.sh, then run
# tests/test_models_tl4.py there. Fails if any of its tests is skipped: in this venv all must run.
#   VENV (default .venv-tl4), PYTHON, TL4, TRANSFORMERS: passed on to scripts/setup_tl4.sh;
#   further arguments go to pytest (e.g. -k patching).
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv-tl4}
bash scripts/setup_tl4.sh
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
"$VENV/bin/python" -m pytest -q -rfEs -p no:cacheprovider tests/test_models_tl4.py "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || exit "$rc"
if tail -n 1 "$out" | grep -q skipped; then
  echo "!! tests were skipped in $VENV: there every TransformerLens 4 test must run" >&2
  exit 1
fi
