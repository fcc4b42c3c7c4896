# lightning-autoopt developer commands. `make demo` and `make test` create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: demo test test-fast bench lint venv clean

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
	$(BIN)/python benchmarks/autodrop_vs_schedules.py

LINT_PATHS := lightning_autoopt tests benchmarks $(wildcard examples)

lint: $(STAMP)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache lightning_logs
