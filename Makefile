# The two set-up commands: `make demo` and `make test`. Both create the environment when it is missing.
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
DEMO_END ?= 2013-02-01

.PHONY: env demo down test bench lint format clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(BIN)/flightplan: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

env: $(BIN)/flightplan

demo: env
	$(BIN)/flightplan replay --pipeline flights --start $(DEMO_START) --end $(DEMO_END)
	eval "$$($(BIN)/flightplan airflow-env)" && export PATH="$(CURDIR)/$(BIN):$$PATH" && \
	  airflow db migrate > "$$FLIGHTPLAN_HOME/airflow-db-migrate.log" && \
	  airflow dags test data_engineering \
	    -c '{"pipeline": "flights", "start": "$(DEMO_START)", "end": "$(DEMO_END)"}' \
	    > "$$FLIGHTPLAN_HOME/demo-data-engineering.log" 2>&1 || \
	  { tail -50 "$$FLIGHTPLAN_HOME/demo-data-engineering.log"; exit 1; } && \
	  airflow dags test model_engineering -c '{"pipeline": "flights", "reason": "make demo"}' \
	    > "$$FLIGHTPLAN_HOME/demo-model-engineering.log" 2>&1 || \
	  { tail -50 "$$FLIGHTPLAN_HOME/demo-model-engineering.log"; exit 1; } && \
	  $(BIN)/flightplan service start --pipeline flights && \
	  airflow dags test deployment -c '{"pipeline": "flights", "reason": "make demo"}' \
	    > "$$FLIGHTPLAN_HOME/demo-deployment.log" 2>&1 || \
	  { tail -50 "$$FLIGHTPLAN_HOME/demo-deployment.log"; exit 1; }
	$(BIN)/flightplan summary --pipeline flights --start $(DEMO_START) --end $(DEMO_END)

down:
	$(BIN)/flightplan service stop

test: env
	$(BIN)/pytest

bench: env
	$(BIN)/python bench/ingest_bench.py --home "$$FLIGHTPLAN_HOME/bench"
	$(BIN)/python bench/train_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/serve_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"
	$(BIN)/python bench/monitor_bench.py --home "$$FLIGHTPLAN_HOME/bench/train"

lint: env
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: env
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	if [ -x $(BIN)/flightplan ]; then $(BIN)/flightplan service stop; fi
	rm -rf .flightplan
