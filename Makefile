# Two commands: `make demo` and `make test`. Both install what is missing first (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEMO_ROOT ?= .lab/demo
# make demo STORAGE=rbd: the VM disks are RBD clones on the lab's Ceph (default: local overlays)
STORAGE ?= local

.PHONY: deps demo test test-fast lint types unit integration lab-up lab-down clean

deps:
	@bash scripts/install-deps.sh

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

types: deps
	$(VENV)/bin/mypy autoscaler collectors policies actuators bench lab

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

# The whole suite: lint, types, unit and integration tests on the real lab (started once),
# then RELIABILITY.md from the fault, bad-input and safety tests' own records.
test: lint types
	rm -rf build/reliability
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 --junitxml=build/test-results/junit.xml tests
	$(PY) -m lab.reliability_report

# The inner loop: lint, types and the unit tests (no lab, well under a minute).
test-fast: lint types unit

# The demo: the lab, the fleet it discovers, then the closed loop on real traces and a rack
# fault, with a live view; the lab is taken down at the end.
demo: deps
	$(PY) -m lab demo --root $(DEMO_ROOT) --storage $(STORAGE)

lab-up: deps
	$(PY) -m lab up --root $(DEMO_ROOT)

lab-down:
	$(PY) -m lab down --root $(DEMO_ROOT)

clean: lab-down
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache
