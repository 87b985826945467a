# trustproxy: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help client-deps lock test-latest setup system-deps venv lint typecheck check test test-unit test-integration test-image demo demo-down bench bench-quick hardening clean

help:
	@echo "make demo        set up everything, start registry + notary + trustproxy, show what clients see"
	@echo "make demo-down   stop everything make demo started"
	@echo "make test        set up everything and run ruff, mypy (strict) and pytest"
	@echo "make test-unit   only the unit tests (no real servers)"
	@echo "make test-latest make test against the newest releases instead of the lock"
	@echo "make test-image  build the Dockerfile offline (debootstrap base, own dockerd) and pull through it"
	@echo "make lock        lock new dependencies in requirements/*.txt (UPGRADE=1: newest releases)"
	@echo "make bench       benchmarks against the registry and nginx (about 10 minutes)"
	@echo "make bench-quick the same, about a minute"
	@echo "make hardening   attack tests, faults under load, 20-minute soak -> docs/hardening.md (~30 min)"

system-deps:
	@bash scripts/install-system-deps.sh

# Installs come from the lock (requirements/*.txt: exact versions and hashes), so a fresh
# machine gets what the last `make lock` tested. `make test-latest` runs the same suite against
# the newest releases the ranges in pyproject.toml allow, to see the next break before it lands.
LOCK := requirements/dev.txt
UV_VERSION := 0.13.9
LOCK_FLAGS := --generate-hashes --python-version 3.11 --universal --quiet

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(LATEST),1)
	@$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@$(BIN)/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
else
	@$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check
endif
	@touch $(STAMP)

venv: $(STAMP)

setup: system-deps venv

lint: venv
	$(BIN)/ruff check proxy testbed tests loadtest
	$(BIN)/ruff format --check proxy testbed tests loadtest

typecheck: venv
	$(BIN)/mypy

check: lint typecheck

# The real clients the integration tests start (dockerd, containerd, podman) and debootstrap
# for the image's offline base: installed up front, so no test installs in the middle of a run.
client-deps:
	@bash scripts/install-client-deps.sh

# Branch coverage of proxy/ with a floor (the proxy processes started by integration tests
# are not measured, so handlers count through their unit tests).
test: setup client-deps check
	$(BIN)/pytest --cov=proxy --cov-branch --cov-report=term:skip-covered --cov-fail-under=88

# The container image, built and run (tests/shipping/test_image.py): a dockerd of its own
# builds the Dockerfile on a Debian bookworm base made by debootstrap and `docker import`
# (no Docker Hub; cached, so a second run skips debootstrap), runs it read-only with a
# config and pulls a signed and an unsigned tag through it with skopeo. `make test` runs
# the same tests (they make the base when it is missing).
test-image: setup
	@bash scripts/install-client-deps.sh docker debootstrap
	@bash scripts/base-image-tarball.sh >/dev/null
	$(BIN)/pytest tests/shipping/test_image.py

# The suite against the newest releases (a venv of its own, not the lock).
test-latest:
	$(MAKE) test VENV=.venv-latest LATEST=1

# Lock what pyproject.toml asks for, with hashes: `make lock` keeps every version already
# pinned and adds what is new; `make lock UPGRADE=1` moves everything to the newest releases
# within the ranges. Run `make test` afterwards and commit requirements/ with the result.
LOCK_UPGRADE := $(if $(filter 1,$(UPGRADE)),--upgrade,)

lock:
	@test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && \
		.venv-lock/bin/pip install -q uv==$(UV_VERSION); }
	.venv-lock/bin/uv pip compile $(LOCK_FLAGS) $(LOCK_UPGRADE) --extra speed pyproject.toml \
		-o requirements/runtime.txt
	.venv-lock/bin/uv pip compile $(LOCK_FLAGS) $(LOCK_UPGRADE) --extra dev --extra speed \
		pyproject.toml requirements/build.in -o requirements/dev.txt
	.venv-lock/bin/uv pip compile $(LOCK_FLAGS) $(LOCK_UPGRADE) --extra dev --extra speed \
		--extra bench pyproject.toml requirements/build.in -c requirements/dev.txt \
		-o requirements/bench.txt

test-unit: venv
	$(BIN)/pytest -m "not integration"

demo: setup
	$(BIN)/python -m testbed.demo up

demo-down: venv
	$(BIN)/python -m testbed.demo down

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	@$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/bench.txt
	@touch $(BENCH_STAMP)

# The benchmark suite: the real stack plus nginx as the "do nothing" baseline (see
# docs/performance.md). Results: loadtest/results/<date>.json and docs/performance/latest.*
bench: setup $(BENCH_STAMP)
	@bash scripts/install-bench-deps.sh
	$(BIN)/python -m loadtest
	$(BIN)/python -m loadtest.bench_revocation

bench-quick: setup $(BENCH_STAMP)
	@bash scripts/install-bench-deps.sh
	$(BIN)/python -m loadtest --quick

# Hardening (docs/hardening.md): the attack tests (hostile trust server and registry,
# request fuzzing, faults) record what they tried in the attempts file; then faults under
# load (wrk) and the soak run, and the report is written from all three. The report is
# written even when something failed; the target fails then. PostgreSQL keeps
# notary-server's data across the notary-server restart.
HARDENING_RESULTS := loadtest/results/hardening

hardening: setup $(BENCH_STAMP)
	@bash scripts/install-bench-deps.sh
	@bash scripts/install-hardening-deps.sh
	@mkdir -p $(HARDENING_RESULTS)
	@rm -f $(HARDENING_RESULTS)/attempts.jsonl
	@status=0; \
	HARDENING_RESULTS_FILE=$(HARDENING_RESULTS)/attempts.jsonl HARDENING_FUZZ_EXAMPLES=2000 \
		$(BIN)/pytest -m hardening tests/hardening || status=$$?; \
	$(BIN)/python -m loadtest.hardening --attempts $(HARDENING_RESULTS)/attempts.jsonl \
		--via-make || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .mypy_cache .ruff_cache .pytest_cache .demo
