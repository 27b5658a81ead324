# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test unit sim soak bench services lint up check clean

# system packages first: gcc and the OpenSSL headers build hashring's C extension
$(STAMP): pyproject.toml hashring/_ketama.c scripts/system-packages
	PY=$(PY) scripts/system-packages
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

services:
	scripts/local-services

demo: $(STAMP) services
	$(BIN)/txlab demo

test: $(STAMP) services
	$(BIN)/ruff check .
	scripts/run-pytest

unit: $(STAMP)
	scripts/run-pytest tests/unit

sim: $(STAMP)
	TXLAB_SIM_SEEDS=$${TXLAB_SIM_SEEDS:-20000} scripts/run-pytest tests/sim

# the long variants: RabbitMQ down for 90 s under load (make test: 30 s)
soak: $(STAMP) services
	TXLAB_OUTAGE_SECONDS=$${TXLAB_OUTAGE_SECONDS:-90} scripts/run-pytest tests/e2e/test_outages.py

bench: $(STAMP) services
	$(BIN)/txlab bench outbox

lint: $(STAMP)
	$(BIN)/ruff check .

up: $(STAMP) services
	$(BIN)/txlab up

check: $(STAMP)
	$(BIN)/txlab check

clean:
	rm -rf .txlab .pytest_cache .ruff_cache
