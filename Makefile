# Entry points: make demo | make test | make bench | make lint (CI runs `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench lint format install services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs only the package; tests, lint and benchmarks also need the dev and
# spark extras (pytest, hypothesis, SDKs, ruff, mypy, pyspark).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/remarket demo $(DEMO_ARGS)

services:
	bash scripts/ensure-services.sh

# The suite runs in TEST_WORKERS processes (pytest-xdist; every test has its own
# files, PostgreSQL database and JetStream stream); TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2

test: $(DEV_STAMP) services
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: $(DEV_STAMP)
	bash scripts/ensure-bench-tools.sh
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests $(wildcard benchmarks)
	$(BIN)/ruff check --fix src tests $(wildcard benchmarks)
