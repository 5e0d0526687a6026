# The two commands a newcomer needs (README): `make demo` and `make test`.
# Everything else here is a step they call. Runs as root on a fresh Debian 12 machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))
LAB_DIR := $(if $(wildcard lab/pyproject.toml),lab,)

.PHONY: all venv system-deps lint typecheck unit test demo bench fuzz clean

all: test

# System packages for the lab (coturn, miniupnpd, nftables...). Idempotent; needs root.
system-deps:
	@if [ -x lab/install-deps.sh ] || [ -f lab/install-deps.sh ]; then bash lab/install-deps.sh; fi

# A virtualenv with every distribution installed in editable mode, with test extras.
$(VENV)/.installed: core/pyproject.toml $(PLUGINS) $(wildcard lab/pyproject.toml) requirements-dev.txt benchmarks/requirements.txt fuzz/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	$(PIP) install --quiet -e 'core[test,cli]' $(foreach d,$(LAB_DIR) $(PLUGIN_DIRS),-e '$(d)[test]')
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy --strict core/src/nattrav $(foreach d,$(LAB_DIR) $(PLUGIN_DIRS),$(d)/src)
	$(VENV)/bin/mypy --strict benchmarks fuzz

TEST_PATHS := core/tests $(foreach d,$(LAB_DIR) $(PLUGIN_DIRS),$(d)/tests) tests benchmarks/test_short.py

unit: venv
	NATTRAV_SKIP_LAB=1 $(PY) -m pytest $(TEST_PATHS)

test: system-deps venv lint typecheck
	$(PY) -m pytest $(TEST_PATHS)

fuzz: venv
	$(PY) -m fuzz.run --all --seconds 60 --jobs 2

demo: system-deps venv
	$(PY) -m nattrav_lab.demo

bench: system-deps venv
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
