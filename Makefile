# refinery: two commands do all the set-up.
#   make test   create .venv if missing, install (only when the dependency files changed), lint, run every test
#   make demo   the same set-up, then the main job on embedded defaults (local tracker, SQLite, CPU)
# Fast subset while developing:  make test-fast   (skips the slow end-to-end and chaos tests)

PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
DEPHASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP   := $(VENV)/.installed-$(DEPHASH)
TOKENS  := runs/cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
# the coder's Claude Code CLI, pinned in package.json/package-lock.json, installed into node_modules/
NPMHASH := $(shell cat package-lock.json | sha256sum | cut -c1-16)
NPMSTAMP := node_modules/.installed-$(NPMHASH)
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint demo lock clean bench

setup: $(STAMP) $(TOKENS) $(NPMSTAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setup: installing dependencies into $(VENV) (once per change of pyproject.toml/constraints.txt)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/refinery demo

bench: setup
	$(BIN)/python -m refiner_model.bench --quick
	$(BIN)/python -m jobqueue.bench --quick

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	echo "torch==2.13.0" >> constraints.txt.new && sort -f constraints.txt.new -o constraints.txt && rm constraints.txt.new

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
