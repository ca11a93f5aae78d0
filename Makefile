# Two commands matter: `make up` (the main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pip flags, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" for a CPU
# build of torch on a machine where PyPI would otherwise give the CUDA one.
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: up test lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/mossctl up

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The reliability and security suite (tests/reliability, docs/reliability.md) at its full size
# (its tables written into docs/reliability.md; the load test needs MOSS_TEST_DATABASE_URL, a
# PostgreSQL), then coverage-guided fuzzing of the decode path (atheris, one process) for FUZZ_SECONDS; its
# findings land in .fuzz/ (crash-*, timeout-*, oom-*) and fail the target.
FUZZ_SECONDS ?= 120
.PHONY: test-reliability
test-reliability: $(STAMP)
	MOSS_RELIABILITY_FULL=1 MOSS_RELIABILITY_REPORT=docs/reliability.md \
		$(PY) -m pytest tests/reliability -m reliability $(PYTEST_ARGS)
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) -m tests.reliability.fuzz_decode -max_total_time=$(FUZZ_SECONDS)

bench: $(STAMP)
	$(PY) benchmarks/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# The chart's parameter tables (helm/moss-audio/README.md) from the `## @param` comments in its
# values.yaml. Needs Node.js (npx); tests/deploy/test_chart_docs.py fails when they are stale.
.PHONY: chart-docs
chart-docs:
	npx --yes @bitnami/readme-generator-for-helm@2 --values helm/moss-audio/values.yaml --readme helm/moss-audio/README.md
