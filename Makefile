# One command to set up and start the service (embedded: SQLite, no broker server), one to test.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup serve test lint bench-train bench-serve bench-quality-quick

setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

serve: setup
	$(BIN)/fishdip serve

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench-train: setup
	$(BIN)/python bench/train.py

bench-serve: setup
	$(BIN)/python bench/serve.py

bench-quality-quick: setup
	$(BIN)/python bench/quality.py --quick
