# Two commands do all the set-up on a fresh clone:
#   make demo   -- create .venv, install medsynth, run the main job on the built-in phantom
#   make test   -- create .venv, install medsynth with its dev tools, run ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers of `make test` (the machine's threads are split between them)
TEST_WORKERS ?= 2

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check medsynth tests benchmarks
	$(BIN)/ruff format --check medsynth tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=15 --timeout=120 $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/medsynth demo --output outputs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
