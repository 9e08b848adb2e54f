#!/usr/bin/env bash
# Create .venv-tl4: mechviz (editable, core dependencies) with TransformerLens 4 and pytest, for
# tests/test_models_tl4.py (the TransformerBridge adapter). A venv of its own because the main .venv
# holds TransformerLens 3 (sae-lens pins transformer-lens<4; TL 4 removed HookedTransformer).
#   VENV: where (default .venv-tl4, ignored by git); a venv made by this script with the same inputs
#         is reused as it is (warm CI runs skip pip entirely).
#   torch: the locally provided CPU wheel (pip's find-links), installed before anything else and
#          pinned while TransformerLens' dependencies resolve (they bring torch's own), so pip can
#          never swap in a CUDA build.
#   TL4: the TransformerLens requirement (default transformer-lens>=4.3,<5; a wheel path works too).
#   TRANSFORMERS: the transformers requirement (default transformers<5.24): 5.24 hands the blocks their
#          key/value cache as cache= and TransformerLens 4.3's attention bridges read past_key_values=,
#          so they ignore it; mechviz then recomputes every position of a patched pass (exact, slower).
#          Below 5.24 the tests cover the cache-resuming path; TRANSFORMERS=transformers==5.24.0 the other.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-tl4}
PYTHON=${PYTHON:-python3}
TL4=${TL4:-"transformer-lens>=4.3,<5"}
TRANSFORMERS=${TRANSFORMERS:-"transformers<5.24"}
STAMP="$VENV/.mechviz-tl4-setup"
key=$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)-$(printf '%s %s' "$TL4" "$TRANSFORMERS" | sha256sum | cut -c1-8)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
  echo "== $VENV is up to date ($key)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
version() { "$VENV/bin/python" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null; }
if ! version torch >/dev/null; then
  echo "== torch: the local CPU wheel (no index, no dependencies)"
  "${PIP[@]}" install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null \
    || "${PIP[@]}" install -q --no-index --no-deps torch \
    || { echo "!! no local torch wheel (set PIP_FIND_LINKS to a folder holding a CPU torch wheel)" >&2; exit 1; }
fi
torch_before=$(version torch)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_before" > "$constraints"
echo "== $TL4, $TRANSFORMERS, mechviz (editable), pytest; torch pinned at $torch_before"
"${PIP[@]}" install -q -c "$constraints" "$TL4" "$TRANSFORMERS" -e . "pytest>=8" "pytest-timeout>=2.3"
torch_after=$("$VENV/bin/python" -c "import torch; print(torch.__version__, 'CUDA' if torch.version.cuda else 'CPU')")
[ "$torch_after" = "$torch_before CPU" ] \
  || { echo "!! torch changed while installing TransformerLens: $torch_before -> $torch_after" >&2; exit 1; }
"$VENV/bin/python" -c "import transformer_lens as t, torch; from importlib.metadata import version as v; \
print('transformer-lens', v('transformer-lens'), '| torch', torch.__version__, '| transformers', v('transformers'))"
echo "$key" > "$STAMP"
