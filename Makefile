# Each target does its own set-up: a fresh machine needs only Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The Airflow versions of the matrix: one per supported minor. `make test` covers the newest.
MATRIX := 3.0.6 3.1.8 3.2.2 3.3.2
AIRFLOW ?= 3.3.2

.PHONY: demo test lint bench clean test-airflow test-matrix docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,distributed]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest

# The docs site (Sphinx, as Airflow's providers build theirs) into docs/_build/html; any warning fails it.
# -E reads every page each time, so a warning in a page that did not change is not hidden.
docs: $(VENV)/.docs-installed
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The unit and integration tests on one Airflow version, in its own venv: make test-airflow AIRFLOW=3.0.6
test-airflow:
	PYTHON=$(PYTHON) scripts/test-airflow.sh $(AIRFLOW)

# Every supported minor, side by side, each into .matrix-logs/airflow-VERSION.log.
test-matrix:
	PYTHON=$(PYTHON) scripts/test-matrix.sh $(MATRIX)

clean:
	rm -rf $(VENV) .venv-airflow-* .demo demo-output .pytest_cache .ruff_cache docs/_build

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/catalog.py
	$(BIN)/python benchmarks/spend.py
	$(BIN)/python benchmarks/chain.py
	$(BIN)/python benchmarks/table.py
	$(BIN)/python benchmarks/results_table.py
