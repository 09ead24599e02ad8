# One entry point per habit. `make demo` and `make test` are the README's two commands:
# each bootstraps everything it needs on a machine that has only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(UV) run --frozen --no-sync
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: dev demo test test-unit lint bench layer build clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==0.13.9

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	touch $@

dev: $(VENV)/.synced

demo: dev
	$(RUN) encord-mirror demo

test: dev
	$(RUN) pytest -q

test-unit: dev
	$(RUN) pytest -q tests/unit

lint: dev
	$(RUN) ruff check src tests functions benchmarks packages
	$(RUN) ruff format --check src tests functions benchmarks packages
	$(RUN) mypy
	$(RUN) lint-imports --no-cache

bench: dev
	$(RUN) python -m benchmarks $(BENCH_ARGS)

# aws-sam-cli pins its own dependencies: it lives in a venv of its own, not in the project's.
SAM := $(TOOLS)/sam/bin/sam
$(SAM):
	$(PYTHON) -m venv $(TOOLS)/sam
	$(TOOLS)/sam/bin/pip install --quiet aws-sam-cli==1.170.0

# The Lambda layer for Lambda's platform (no Docker). `sam build` calls this through layers/deps/Makefile.
LAYER_DIR ?= build/layer/python
layer: dev
	$(RUN) python -m encord_mirror.build_layer --out "$(LAYER_DIR)"

build: dev $(SAM)
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint
	SAM_CLI_TELEMETRY=0 $(SAM) build

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .pytest_cache .mypy_cache .ruff_cache
