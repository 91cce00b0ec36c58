# One-command entry points: `make run` brings the whole stack up, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# Debian packages the tests need (installed by `make test` when missing).
APT_PACKAGES := chromium docker-registry

JS_STAMP := tests/js/node_modules/.installed

.PHONY: run test test-unit lint typecheck contracts venv lock bench clean system-deps js-deps

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lock:
	$(BIN)/uv pip compile --quiet --python-version 3.11 --extra dev pyproject.toml -o requirements.lock

run: $(STAMP)
	$(BIN)/coordinator dev

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

# The official phoenix client (and ws) for the channel tests, from the npm registry per the lockfile.
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --silent
	touch $(JS_STAMP)

js-deps: $(JS_STAMP)

system-deps:
	@bash scripts/ensure-debian-packages.sh $(APT_PACKAGES)

# All three tiers: tests/unit (no I/O), tests/integration (real PostgreSQL/NATS/HTTP), tests/e2e (processes).
test: $(STAMP) system-deps js-deps lint typecheck contracts
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The unit tier alone (seconds; no servers are started).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/coordinator bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache tests/js/node_modules
