# The two commands of the quickstart: `make run` and `make test`.
# Both create .venv from uv.lock on first use; uv itself is bootstrapped with pip when the
# machine has none, so Python 3.11+ is all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A private, pinned uv (not whatever is on PATH): the same resolver writes and reads uv.lock.
UV_VERSION := 0.13.9
UV := .tools/bin/uv
SYNC := $(UV) sync --python $(PYTHON)
TS := clients/ts

.PHONY: install install-runtime run test lint lock lock-check client migrate

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

install: $(UV)  ## everything in uv.lock: runtime, tests, linters
	$(SYNC)

# --inexact: a venv that already has the dev tools keeps them.
install-runtime: $(UV)  ## only what the app needs to serve
	$(SYNC) --no-dev --inexact

run: install-runtime  ## serve on http://localhost:8080 (Swagger UI at /docs)
	$(PY) -m app

test: install  ## the whole suite; DATABASE_URL=postgresql://... runs it on PostgreSQL
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app bench tests
	$(VENV)/bin/lint-imports

lock: $(UV)  ## re-resolve uv.lock after editing the dependencies in pyproject.toml
	$(UV) lock

lock-check: $(UV)  ## fails when uv.lock is stale
	$(UV) lock --check

$(TS)/node_modules/.package-lock.json: $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund
	touch $@

client: install-runtime $(TS)/node_modules/.package-lock.json  ## regenerate clients/ts from the app's OpenAPI
	$(PY) $(TS)/generate.py
	cd $(TS) && node_modules/.bin/tsc --noEmit

migrate: install-runtime  ## alembic upgrade head on DATABASE_URL
	$(PY) -m alembic upgrade head
