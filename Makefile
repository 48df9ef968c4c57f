# make demo   create .venv, install, run the demo site on http://127.0.0.1:8000
# make test   create .venv, install everything the tests need, run every check and test
# make cluster  a broker, 3 edges and nginx on loopback (python -m ops.cluster)
#
# Works unattended (CI=true, no stdin, as root) on a fresh machine with Python 3.11.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Editable install with the test extras; redone only when pyproject.toml changes.
INSTALL_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

# System packages the tests need, as command:debian-package pairs. A package
# is installed only when its command is missing (looked up on PATH and in
# /usr/sbin, where Debian puts nginx and haproxy), e.g. `nginx:nginx`.
SYSTEM_DEPS := node:nodejs npm:npm chromium:chromium nginx:nginx haproxy:haproxy nft:nftables

DEMO_PYTHON := ../../$(BIN)/python

# Browser clients the tests run against the edges, pinned, from the npm
# registry into a git-ignored folder (tests.cross_origin.NPM_MODULES reads
# them there); fetched again only when this list changes.
NPM_TEST_DIR := tests/npm
NPM_TEST_PACKAGES := nchan@1.0.10
NPM_STAMP := $(NPM_TEST_DIR)/.installed-$(shell echo '$(NPM_TEST_PACKAGES)' | sha256sum | cut -c1-16)

.PHONY: help demo cluster bench bench-quick test lint typecheck jstest pytest install system-deps npm-deps clean distclean

help:
	@echo "make demo       run the demo site (runpushserver --allrequests) on http://127.0.0.1:8000"
	@echo "make cluster    a broker, 3 edges and nginx on loopback (python -m ops.cluster); Ctrl-C stops"
	@echo "make bench      benchmarks beside Nchan (make bench-quick: small sizes, a few minutes)"
	@echo "make test       install what the tests need, then ruff, mypy and pytest"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make clean      remove caches, build leftovers and the demo database"
	@echo "make distclean  clean, and remove .venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --no-input -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(INSTALL_STAMP)

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
	    cmd="$${pair%%:*}"; \
	    command -v "$$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$$cmd" ] || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    $$sudo apt-get update; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; \
	fi

$(NPM_STAMP): | system-deps
	rm -rf $(NPM_TEST_DIR)
	npm install --no-save --no-audit --no-fund --no-package-lock --prefix $(NPM_TEST_DIR) $(NPM_TEST_PACKAGES)
	touch $@

npm-deps: $(NPM_STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Most tests wait on real processes: a worker per core (at most four) takes
# about half the time of one; each worker picks its ports from its own share.
pytest: install system-deps npm-deps
	$(BIN)/pytest -n auto --maxprocesses=4 --dist worksteal

# The browser client's own tests: node's test runner, no network.
jstest: system-deps
	node --test js/test/

test: lint typecheck jstest pytest

# The publisher sends a 'tick' to channel 'demo' every 2 s; it is stopped
# when runpushserver exits (Ctrl-C).
demo: install
	cd ops/demo && $(DEMO_PYTHON) manage.py migrate --noinput
	cd ops/demo && $(DEMO_PYTHON) manage.py ensure_demo_user
	cd ops/demo && { \
	    $(DEMO_PYTHON) manage.py demo_publisher & publisher=$$!; \
	    trap 'kill $$publisher 2>/dev/null || true; wait $$publisher 2>/dev/null || true' EXIT; \
	    $(DEMO_PYTHON) manage.py runpushserver --allrequests; \
	}

# Prints where the broker, each edge and nginx listen; Ctrl-C stops them all.
cluster: install system-deps
	$(BIN)/python -m ops.cluster --edges 3

# Side by side with Nchan (installed from Debian when missing): W1-W5, a table
# of ratios and ops/bench/results.json. `make bench-quick` is the small-sized run.
bench: install system-deps
	$(BIN)/python -m pip install --disable-pip-version-check -q uvloop
	$(BIN)/python -m ops.bench

bench-quick: install system-deps
	$(BIN)/python -m pip install --disable-pip-version-check -q uvloop
	$(BIN)/python -m ops.bench --quick

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f ops/demo/db.sqlite3

distclean: clean
	rm -rf $(VENV) $(NPM_TEST_DIR)
