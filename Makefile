PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint bench dev clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict runtime/jetlane tests

check: lint test

dev: $(STAMP)
	$(BIN)/jetlane dev --jobs jobs

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .jetlane .pytest_cache .mypy_cache .ruff_cache
