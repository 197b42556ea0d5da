# refinery: two commands do all the set-up.
#   make test   create .venv if missing, install (only when the dependency files changed), lint, run every test
#   make demo   the same set-up, then the main job on embedded defaults (local tracker, SQLite, CPU)
# Fast subset while developing:  make test-fast   (skips the slow end-to-end and chaos tests)

PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
# a CUDA box (nvidia-smi present) also pins torch's CUDA dependencies (constraints-cuda.txt; README "Set-up on a
# CUDA box"); elsewhere that file is not read, so a CPU machine's stamp does not change with it
CUDA_CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),constraints-cuda.txt)
DEPHASH := $(shell cat pyproject.toml constraints.txt $(CUDA_CONSTRAINTS) | sha256sum | cut -c1-16)
STAMP   := $(VENV)/.installed-$(DEPHASH)
TOKENS  := runs/cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
# the coder's Claude Code CLI, pinned in package.json/package-lock.json, installed into node_modules/
NPMHASH := $(shell cat package-lock.json | sha256sum | cut -c1-16)
NPMSTAMP := node_modules/.installed-$(NPMHASH)
PYTEST_ARGS ?=
# pytest-xdist workers: most slow tests wait on daemons, servers and child processes, so three share two cores
TEST_WORKERS ?= 3

.PHONY: setup test test-fast lint demo lock clean bench gpu-check

setup: $(STAMP) $(TOKENS) $(NPMSTAMP)

$(STAMP): pyproject.toml constraints.txt $(CUDA_CONSTRAINTS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setup: installing dependencies into $(VENV) (once per change of pyproject.toml/constraints.txt$(if $(CUDA_CONSTRAINTS),/constraints-cuda.txt))"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(if $(CUDA_CONSTRAINTS),-c $(CUDA_CONSTRAINTS)) -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(NPMSTAMP): package.json package-lock.json
	@echo "setup: installing the pinned Claude Code CLI into node_modules (once per change of package-lock.json)"
	npm ci --no-audit --no-fund
	@rm -f node_modules/.installed-*
	@touch $@

$(TOKENS): $(STAMP)
	$(BIN)/python -m refiner_model.tokenizer

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/refinery demo

bench: setup
	$(BIN)/python -m refiner_model.bench --quick
	$(BIN)/python -m jobqueue.bench --quick

# one command that proves a CUDA box ready (< 5 min): float16 smoke on rtx2060, memory estimate vs
# max_memory_allocated under a 6 GiB cap, tokens/s and MFU of small, the SDPA kernel; JSON in runs/bench/
gpu-check: setup
	$(BIN)/python -m experiments.gpucheck

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	echo "torch==2.13.0" >> constraints.txt.new && sort -f constraints.txt.new -o constraints.txt && rm constraints.txt.new

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
