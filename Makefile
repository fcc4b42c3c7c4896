# lightning-autoopt developer commands. `make demo` and `make test` create .venv on first use.
# Also: `make docs` (site, warnings are errors), `make docs-plots` (the docs' method-signal figures),
# `make wheel-check` (build + install the wheel in a fresh venv), `make test-lowest` (fast tests with the lowest
# supported versions; several GB of downloads, ~15 min).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: demo test test-fast test-lowest wheel-check docs docs-plots bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[vision,plot,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lightning_autoopt.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.autodrop_vs_schedules

# --- lowest supported versions (constraints-lowest.txt = the lower bounds of pyproject.toml) ------------------------
# A separate venv (CUDA builds of the old torch: ~3 GB of downloads, ~5 GB on disk); rebuilt when the bounds change.
LOWEST_VENV ?= /tmp/lightning-autoopt-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed

$(LOWEST_STAMP): pyproject.toml constraints-lowest.txt
	rm -rf $(LOWEST_VENV)
	$(PY) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install --quiet -c constraints-lowest.txt -e ".[vision,plot,dev]"
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/python -c "import torch, torchvision, lightning, torchmetrics, jsonargparse, numpy; \
	print('lowest:', *(f'{m.__name__}=={m.__version__}' for m in (torch, torchvision, lightning, torchmetrics, jsonargparse, numpy)))"
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -m "not slow"

# --- the wheel, as a user gets it ----------------------------------------------------------------------------------
# Builds wheel + sdist into dist/, installs the wheel (not editable) into a fresh venv with the pinned torch pair,
# then from an empty folder: `autoopt recipes`, a short recipe run, and the fast tests against the installed package.
WHEEL_VENV ?= /tmp/lightning-autoopt-wheel
WHEEL_WORK ?= /tmp/lightning-autoopt-wheel-work

wheel-check: $(STAMP)
	rm -rf dist build *.egg-info $(WHEEL_VENV) $(WHEEL_WORK)  # a stale SOURCES.txt would hide missing package data
	$(BIN)/python -m build --quiet --no-isolation --outdir dist .
	$(BIN)/python tests/_dist_contents.py dist
	$(PY) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install --quiet -c constraints.txt "$$(ls dist/*.whl)[vision,plot]" "pytest>=8" "pytest-timeout>=2.3"
	mkdir -p $(WHEEL_WORK) && cp -r tests pyproject.toml $(WHEEL_WORK)/
	cd $(WHEEL_WORK) && $(WHEEL_VENV)/bin/python -c "import lightning_autoopt as m; assert 'site-packages' in m.__file__, m.__file__; print('installed:', m.__file__)"
	cd $(WHEEL_WORK) && $(WHEEL_VENV)/bin/autoopt recipes
	cd $(WHEEL_WORK) && $(WHEEL_VENV)/bin/autoopt fit --config recipe:autodrop_mnist1d --trainer.max_epochs=1 \
		--trainer.limit_train_batches=5 --trainer.limit_val_batches=2
	cd $(WHEEL_WORK) && $(WHEEL_VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -m "not slow" tests

# --- documentation site ----------------------------------------------------------------------------------------------
docs: $(STAMP)
	$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The method-signal figures of the docs (docs/img/*.png), from real short runs (about a minute on 2 cores).
docs-plots: $(STAMP)
	$(BIN)/python docs/make_plots.py

LINT_PATHS := lightning_autoopt tests benchmarks docs/hooks.py docs/make_plots.py $(wildcard examples)

lint: $(STAMP)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache lightning_logs
