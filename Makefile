# mechviz: `make lab` (demo), `make html` (demo as a self-contained HTML page), `make test` (all tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechviz-setup

.PHONY: setup lab html test js bench clean

$(STAMP): pyproject.toml scripts/setup.sh widgets_js/package.json widgets_js/package-lock.json
	bash scripts/setup.sh
	touch $@

setup: $(STAMP)

## the main job: JupyterLab on the tour notebook, with the bundled default model
lab: setup
	$(PY) -m jupyter lab notebooks/tour.ipynb $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## no browser wanted: execute the tour and write build/tour.html (renders with no kernel, no network)
html: setup
	$(PY) -m mechviz.export notebooks/tour.ipynb build/tour.html

## every test: unit, numerical equality, notebooks, real-browser (JupyterLab + static export)
test: setup
	$(PY) -m pytest -q -rfEs --durations=15

## rebuild the widget bundles after editing widgets_js/src
js:
	npm ci --prefix widgets_js --no-audit --no-fund --loglevel=error && node widgets_js/build.mjs

bench: setup
	$(PY) bench/attention_payload.py

clean:
	rm -rf $(VENV) build test-artifacts widgets_js/node_modules
