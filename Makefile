# mechviz: `make lab` (demo), `make html` (demo as a self-contained HTML page), `make test` (all tests),
# `make wheel` (dist/*.whl), `make bench` (the benchmarks, on demand).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechviz-setup

.PHONY: setup lab html test js bench wheel clean

$(STAMP): pyproject.toml scripts/setup.sh widgets_js/package.json widgets_js/package-lock.json
	bash scripts/setup.sh
	touch $@

setup: $(STAMP)

## the main job: JupyterLab on the tour notebook, with the bundled default model
lab: setup
	$(PY) -m jupyter lab notebooks/tour.ipynb $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## no browser wanted: execute the tour and write build/tour.html (renders with no kernel, no network)
html: setup
	$(VENV)/bin/mechviz-export notebooks/tour.ipynb build/tour.html

## every test: unit, numerical equality, notebooks, real-browser (JupyterLab + static export)
test: setup
	$(PY) -m pytest -q -rfEs --durations=15

## rebuild the widget bundles after editing widgets_js/src (also copies the export's JS into mechviz/static/export)
js:
	npm ci --prefix widgets_js --no-audit --no-fund --loglevel=error && node widgets_js/build.mjs

## the benchmarks (minutes; TransformerLens timed on 120 sampled cells per grid, as in the README)
bench: setup
	$(PY) bench/attention_payload.py
	$(PY) bench/patching_vs_tl.py --tl-sample 120
	$(PY) bench/edit_during_patching.py

## dist/mechviz_lab-<version>-py3-none-any.whl, with the widget bundles and the export's JS inside
wheel: setup
	rm -f dist/mechviz_lab-*.whl
	$(PY) -m pip --disable-pip-version-check wheel -q --no-deps -w dist .
	@ls -l dist/mechviz_lab-*.whl

clean:
	rm -rf $(VENV) build dist test-artifacts widgets_js/node_modules mechviz/static/export/*.js
