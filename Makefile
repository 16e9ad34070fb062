# The two commands of the quickstart: `make run` and `make test`.
# Both create .venv and install what is needed on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint migrate bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install  ## serve on http://localhost:8080 (Swagger UI at /docs)
	$(PY) -m app

test: install  ## the whole suite; DATABASE_URL=postgresql://... runs it on PostgreSQL
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app bench tests

migrate: install  ## alembic upgrade head on DATABASE_URL
	$(PY) -m alembic upgrade head
