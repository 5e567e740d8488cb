# The two set-up commands: `make demo` and `make test`. Both create the environment when it is missing.
# `make up` starts the embedded stack (Airflow, MLflow UI, inference API) in the background, `make down` stops it.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export FLIGHTPLAN_HOME ?= $(CURDIR)/.flightplan
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python
DEMO_START ?= 2013-01-01
DEMO_MIDDLE ?= 2013-07-01
DEMO_END ?= 2014-01-01

.PHONY: env demo up down dotenv check test soak chromium screenshots bench lint audit format clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (this machine sets it), every process,
# each Airflow task among them, would otherwise compile every module it imports (5-9 s per task here).
$(BIN)/flightplan: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

env: $(BIN)/flightplan

demo: env
	$(BIN)/flightplan demo --pipeline flights --start $(DEMO_START) --middle $(DEMO_MIDDLE) --end $(DEMO_END)

up: env
	$(BIN)/flightplan up

down:
	if [ -x $(BIN)/flightplan ]; then $(BIN)/flightplan down; fi

# The compose stack's .env from .env.example, every secret freshly generated (owner-only); an existing .env is
# kept: `$(BIN)/flightplan dotenv --force` replaces it, and every secret in it.
dotenv: env
	$(BIN)/flightplan dotenv

# The loop before every commit, under two minutes: formatting, lint and types over every Python file of the
# repository, then the unit and DAG tiers. `make test` runs every tier; `make audit` stands apart (it needs the
# network).
check: lint
	$(BIN)/pytest tests/unit tests/dags -q -p no:cacheprovider

test: env
	$(BIN)/pytest

# The inference API under a steady request rate for ten minutes (the tests run it for 50 s): memory, latency and
# errors per window, printed and written to $(FLIGHTPLAN_HOME)/soak.json.
soak: env
	FLIGHTPLAN_SOAK_SECONDS=600 FLIGHTPLAN_SOAK_REPORT=$(FLIGHTPLAN_HOME)/soak.json $(BIN)/pytest tests/integration/test_soak.py -p no:cacheprovider

# Debian's Chromium, which the browser tests (tests/web) drive: Playwright cannot download a browser of its own here.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi; \
	fi

# The browser tests against the stack that `make demo` left running, and the live gate's test on a stack of its
# own (a challenger in shadow, a rollback); their screenshots are the README's.
screenshots: env chromium
	FLIGHTPLAN_WEB_STACK=running FLIGHTPLAN_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/pytest tests/web -p no:cacheprovider
	FLIGHTPLAN_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/pytest tests/e2e/test_live_gate.py -p no:cacheprovider

bench: env
	$(BIN)/python bench/ingest_bench.py --home "$$FLIGHTPLAN_HOME/bench"
	$(BIN)/python bench/pipeline_bench.py --home "$$FLIGHTPLAN_HOME/bench/pipelines"
	$(BIN)/python bench/train_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/package_bench.py
	$(BIN)/python bench/serve_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/batch_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/monitor_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/log_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/scale_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"

lint: env
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Advisories triaged as not affecting this project, for `make audit`: one `--ignore-vuln <id>` per line, each
# after a comment that says why. None so far.
AUDIT_IGNORE :=

# The locked environment (uv.lock, every group) against the known vulnerabilities (pip-audit, PyPI's advisories).
# --strict: a package the service could not answer for fails the audit, so that an audit that checked nothing
# (no access to pypi.org's per-version JSON API) never passes.
audit: env
	@requirements=$$(mktemp) && trap 'rm -f "$$requirements"' EXIT \
	&& $(UV) export --frozen --quiet --format requirements-txt --no-emit-project -o "$$requirements" \
	&& $(BIN)/pip-audit --strict --require-hashes --disable-pip --progress-spinner off $(AUDIT_IGNORE) \
	   -r "$$requirements" \
	|| { echo "make audit: FAILED: a known vulnerability above, or a package pip-audit could not check" \
	     "(pypi.org/pypi/<name>/<version>/json unreachable or without it): nothing unaudited passes"; exit 1; }

format: env
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	if [ -x $(BIN)/flightplan ]; then $(BIN)/flightplan down; fi
	rm -rf .flightplan
