# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8001
DATA   ?= var/studio

.PHONY: run studio test lint bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-gui: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[gui]"
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/comfyvn serve --host $(HOST) --port $(PORT) --data-dir $(DATA) --dev --demo

# The Studio against the `make run` server of $(DATA) (found through its server.json), or a
# server it starts on that data dir when none runs.
studio: $(VENV)/.installed-gui
	$(BIN)/comfyvn studio --data-dir $(DATA)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every bench/bench_*.py, 3 runs each: bench/results.json and docs/performance.md (medians).
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run_all.py --runs $(or $(RUNS),3)

# A longer schemathesis run than the bounded one inside `make test`.
fuzz: $(VENV)/.installed-dev
	COMFYVN_FUZZ_EXAMPLES=$(or $(EXAMPLES),200) $(BIN)/python -m pytest -q -m fuzz

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
