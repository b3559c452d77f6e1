# Two commands: `make demo` and `make test`. Both install what is missing first (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEMO_ROOT ?= .lab/demo

.PHONY: deps demo test test-fast lint types unit integration lab-up lab-down clean

deps:
	@bash scripts/install-deps.sh

lint: deps
	$(VENV)/bin/ruff check .

types: deps
	$(VENV)/bin/mypy autoscaler collectors policies actuators bench

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

# The whole suite: lint, types, unit and integration tests on the real lab (started once),
# then RELIABILITY.md from the fault and bad-input tests' own records.
test: lint types
	rm -rf build/reliability
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m autoscaler.reliability_report

# The inner loop: lint, types and the unit tests (no lab, well under a minute).
test-fast: lint types unit

# The demo: bring up the lab, discover the fleet through libvirt and print it, take it down.
demo: deps
	@trap '$(VENV)/bin/autoscaler lab down --root $(DEMO_ROOT) >/dev/null' EXIT; \
	$(VENV)/bin/autoscaler lab up --root $(DEMO_ROOT) && \
	$(VENV)/bin/autoscaler lab demand --root $(DEMO_ROOT) --set web=0.2 api=0.1 cache=0.05 && \
	sleep 10 && \
	$(VENV)/bin/autoscaler fleet --config $(DEMO_ROOT)/controller.yaml

lab-up: deps
	$(VENV)/bin/autoscaler lab up --root $(DEMO_ROOT)

lab-down:
	$(VENV)/bin/autoscaler lab down --root $(DEMO_ROOT)

clean: lab-down
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache
