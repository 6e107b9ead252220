# Baton: the two commands are `make demo` and `make test` (README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# mypy's Django plugin loads baton_site.settings itself: with REDIS_URL overridden (production mode) it needs a
# secret key and an audit key, so checks get the tests' throw-away ones unless the caller gave their own, and mypy
# runs in demo mode (production would also want DATABASE_URL, which the plugin never uses).
TEST_ENV := DJANGO_SETTINGS_MODULE=tests.settings BATON_SECRET_KEY=$${BATON_SECRET_KEY:-baton-tests-only} \
	BATON_AUDIT_KEYS=$${BATON_AUDIT_KEYS:-tests:baton-tests-only-audit-key-not-for-production}

.PHONY: install constraints demo web web-live worker beat test lint typecheck migrations-check pytest bench bench-api schemathesis screenshots clean-demo

# pyproject.toml holds the supported ranges, constraints.txt the exact versions tests and benchmarks run.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Re-resolve pyproject.toml's ranges in a throw-away venv and write the result to constraints.txt.
constraints:
	rm -rf .baton/lock-venv && $(PYTHON) -m venv .baton/lock-venv
	.baton/lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .baton/lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .baton/lock-venv

## Embedded demo: SQLite, in-memory broker and channel layer, one process with a worker and a beat thread.
# `make demo PORT=8001 HOST=0.0.0.0`: another port or address (the defaults serve http://127.0.0.1:8000); from
# another machine, also BATON_ALLOWED_HOSTS=<the address it types>, else every request is a 400 (README, "Quick start").
PORT ?= 8000
HOST ?= 127.0.0.1
demo: install
	$(PY) manage.py baton_demo --host $(HOST) --port $(PORT)

## Production processes: need DATABASE_URL, REDIS_URL, BATON_SECRET_KEY and BATON_AUDIT_KEYS (README, "Production").
# HTTP (pages, API, static files): gunicorn, BATON_WEB_WORKERS sync processes (default one per core + 1), each with
# its own thread and database session, so requests run in parallel on every core (bench/README.md, "API starts":
# one daphne runs a process's sync views one at a time; gthread measured slower). Websockets (/ws/): daphne,
# `make web-live`.
# A worker silent for BATON_WEB_TIMEOUT seconds (default 60: a request stuck on a lock, a loop) is killed and
# replaced; a stop or reload gives requests in flight BATON_WEB_GRACEFUL_TIMEOUT seconds (30). An audit export
# streams for minutes: each chunk it writes tells gunicorn the worker is alive (baton_site/gunicorn_hooks.py), so
# only an export that stops making progress meets the limit.
# Request lines up to gunicorn's most, 8190 bytes, so that Baton answers a query string past its own limit
# (4 KiB, orchestrator/middleware.py) itself, as problem+json under /api/; header fields up to 8190 bytes
# (gunicorn's default, stated). README, "Production", lists what gunicorn itself still refuses.
# Each value without its spaces, blank for the default, as the settings read it (they refuse junk at the migrate, or
# at daphne's and celery's start): "BATON_WEB_WORKERS= " gave gunicorn "--workers --worker-class", and "BATON_BIND= "
# "--bind :8000", which listens on every interface. An IPv6 BATON_BIND goes to gunicorn in brackets, before the port.
# Behind a TLS proxy (BATON_BEHIND_PROXY=1) daphne takes the client's address from X-Forwarded-For; Django reads
# X-Forwarded-Proto and the audit the proxy's X-Forwarded-For entry itself (orchestrator/accounts.py).
web: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	exec $(VENV)/bin/gunicorn \
	  --bind $$(v=$${BATON_BIND//[[:space:]]/}; v=$${v:-127.0.0.1}; case "$$v" in \[*) ;; *:*) v="[$$v]";; esac; echo $$v):$$(v=$${BATON_PORT//[[:space:]]/}; echo $${v:-8000}) \
	  --workers $$(v=$${BATON_WEB_WORKERS//[[:space:]]/}; echo $${v:-$$(( $$(nproc) + 1 ))}) --worker-class sync \
	  --timeout $$(v=$${BATON_WEB_TIMEOUT//[[:space:]]/}; echo $${v:-60}) \
	  --graceful-timeout $$(v=$${BATON_WEB_GRACEFUL_TIMEOUT//[[:space:]]/}; echo $${v:-30}) \
	  --limit-request-line 8190 --limit-request-field_size 8190 --config python:baton_site.gunicorn_hooks \
	  --access-logfile - baton_site.wsgi:application

web-live: install
	exec $(VENV)/bin/daphne -b $$(v=$${BATON_BIND//[[:space:]]/}; echo $${v:-127.0.0.1}) -p $$(v=$${BATON_LIVE_PORT//[[:space:]]/}; echo $${v:-8001}) \
	  $$(v=$${BATON_BEHIND_PROXY//[[:space:]]/}; case "$${v,,}" in 1|true|yes|on) echo --proxy-headers;; esac) \
	  baton_site.asgi:application

worker: install
	$(VENV)/bin/celery -A baton_site worker -Q baton --concurrency $$(v=$${BATON_WORKER_CONCURRENCY//[[:space:]]/}; echo $${v:-2}) --loglevel INFO

beat: install
	$(VENV)/bin/celery -A baton_site beat --scheduler orchestrator.beat:DatabaseScheduler --loglevel INFO

test: install lint migrations-check pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	# The direction of imports between the engine and the apps above it (pyproject.toml, [tool.importlinter]).
	$(VENV)/bin/lint-imports

# mypy alone (`make lint` runs it too). It was only declared phony: "Nothing to be done", exit status 0, no check.
typecheck: install
	$(TEST_ENV) BATON_MODE=demo $(VENV)/bin/mypy baton_site orchestrator approvals console demo automation audit api

# Compares the models with the migration files only: an empty in-memory database keeps a developer's own
# database (and whatever history it has) out of the answer.
migrations-check: install
	$(TEST_ENV) DATABASE_URL=sqlite://:memory: $(PY) manage.py makemigrations --check --dry-run

# The suite runs in BATON_TEST_PROCESSES pytest-xdist processes (default: one per core, at most 8), each with its
# own test database (test_baton_gw0, ...) and Redis database (tests/settings.py), a test file's tests together in one
# process (module fixtures such as a served `make web` start once). BATON_TEST_PROCESSES=0 runs it in this process.
BATON_TEST_PROCESSES ?= auto
pytest: install
	$(TEST_ENV) $(PY) -m pytest -n $(BATON_TEST_PROCESSES) --maxprocesses 8 --dist loadfile $(PYTEST_ARGS)

bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

## Starts through the API: `make web` (gunicorn) + a worker + 8 concurrent clients (bench/api.py, bench/README.md "API starts").
bench-api: install
	$(PY) bench/api.py $(BENCH_ARGS)

## The API's schemathesis run, long: every operation as every role with many more generated requests than the
## short pass `make test` runs (tests/api/test_schemathesis.py). SCHEMATHESIS_EXAMPLES per operation, new random
## cases each run (the short pass is derandomized, so `make test` is repeatable).
SCHEMATHESIS_EXAMPLES ?= 150
schemathesis: install
	$(TEST_ENV) BATON_SCHEMATHESIS_EXAMPLES=$(SCHEMATHESIS_EXAMPLES) BATON_SCHEMATHESIS_RANDOM=1 \
	  $(PY) -m pytest tests/api/test_schemathesis.py -p no:randomly -o timeout=3600 $(PYTEST_ARGS)

screenshots: install
	$(TEST_ENV) BATON_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/browser -k screenshot

clean-demo:
	rm -rf .baton
