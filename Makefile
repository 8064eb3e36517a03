PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint bench bench-quick dev clean chaos

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
	$(BIN)/mypy --strict runtime/jetlane tests bench

check: lint test

# The full chaos runs (tests/chaos): 200 runs with a runner SIGKILLed every few hundred ms,
# then JETLANE_CHAOS_MINUTES (default 10) of the nemesis with every run checked against
# the invariants; JETLANE_TEST_SEED=<seed> replays a seed.
chaos: $(STAMP)
	JETLANE_CHAOS_RUNS=$${JETLANE_CHAOS_RUNS:-200} \
	JETLANE_CHAOS_MINUTES=$${JETLANE_CHAOS_MINUTES:-10} $(BIN)/pytest tests/chaos -v

dev: $(STAMP)
	$(BIN)/jetlane dev --jobs jobs

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# well under a minute: every workload at small sizes (what tests/test_bench.py runs)
bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .jetlane .pytest_cache .mypy_cache .ruff_cache
