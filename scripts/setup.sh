#!/usr/bin/env bash
# Create .venv and install mechviz (editable) with everything the demo and the tests need.
#   EXTRAS: pyproject's extras, default "test" (= tl, saelens, export, lab, bench + pytest, playwright,
#          hatchling); e.g. EXTRAS=lab for the demo only.
#   torch: a locally provided CPU wheel first (pip's find-links, e.g. PIP_FIND_LINKS), then the
#          CPU-only index on a normal machine: never the multi-GB CUDA build by accident.
#   chromium: Debian's package for the browser tests (installed when running as root).
#   widgets_js: npm ci + esbuild, rebuilding mechviz/static/*.js (and copying the export's JS).
#   WHEEL=dist/mechviz_lab-*.whl: install that wheel instead of the checkout (then no chromium, no npm):
#          VENV=/tmp/v WHEEL=$PWD/dist/mechviz_lab-0.1.0-py3-none-any.whl EXTRAS=export bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
PYTHON=${PYTHON:-python3}
WHEEL=${WHEEL:-}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "== torch: trying a local wheel (no index, no CUDA)"
  "${PIP[@]}" install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null \
    || "${PIP[@]}" install -q --no-index --no-deps torch 2>/dev/null \
    || { echo "== torch: no local wheel; installing the CPU build"; \
         "${PIP[@]}" install -q torch --index-url https://download.pytorch.org/whl/cpu; }
fi
if [ -n "$WHEEL" ]; then
  echo "== $WHEEL[$EXTRAS]"
  "${PIP[@]}" install -q "$WHEEL[$EXTRAS]"
else
  echo "== mechviz[$EXTRAS] (editable)"
  "${PIP[@]}" install -q -e ".[$EXTRAS]"
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
[ -z "$WHEEL" ] || exit 0

if [ "$EXTRAS" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== chromium (Debian package) for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "!! chromium is missing: run 'sudo apt-get install chromium' for the browser tests" >&2
  fi
fi

if command -v npm >/dev/null 2>&1; then
  echo "== widgets_js: npm ci + build"
  npm ci --prefix widgets_js --no-audit --no-fund --loglevel=error
  node widgets_js/build.mjs
else
  echo "!! npm is missing: using the committed mechviz/static bundles; offline static-export tests need it" >&2
fi
