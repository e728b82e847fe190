# Two commands on a fresh machine: `make demo` and `make test`. Both make their own .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-slow test-dist dist lint typecheck protos options-table bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Bytecode for our own packages, as pip writes it when it installs a wheel: an editable
# install does not, and with PYTHONDONTWRITEBYTECODE set every `casefile` command would
# compile ~130 modules from source (~0.1 s of CPU). Up-to-date files are skipped.
COMPILE := $(BIN)/python -m compileall -q agent collector protos plugins

# Stamps so a second run does not reinstall; pyproject changes trigger a reinstall.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e plugins/casefile-pgsql
	$(COMPILE)
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(COMPILE)
	$(BIN)/python -m collector.demo

# `slow` tests (1,000 uploads through a SIGKILL, connections cut mid-upload) run in
# `make test-slow`, outside the everyday `make test`; `.ci/run` runs both.
test: $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The single file dist/casefile-<version>-linux-<arch> (PyInstaller one-file; ~1 min).
# Not part of `make test`: `make test-dist` builds it and runs its tests.
$(VENV)/.installed-dist: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dist]'
	touch $@

dist: $(VENV)/.installed-dist
	$(BIN)/python packaging/build_dist.py

# A minimal Debian root without Python, made once (~1 min; needs root, debootstrap and
# the Debian mirror): the single file is run there through chroot.
DEBIAN_ROOT ?= .dist-root/bookworm
$(DEBIAN_ROOT)/bin/sh:
	mkdir -p $(DEBIAN_ROOT)
	debootstrap --variant=minbase bookworm $(abspath $(DEBIAN_ROOT)) http://deb.debian.org/debian

test-dist: dist $(DEBIAN_ROOT)/bin/sh
	CASEFILE_DEBIAN_ROOT=$(abspath $(DEBIAN_ROOT)) $(BIN)/python -m pytest tests/dist $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check agent collector protos tests benchmarks plugins packaging

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

protos: $(VENV)/.installed-dev
	$(BIN)/python -m protos.generate

# The option tables of README.md and the plugin's README, from the collectors' declarations
# (tests/agent/test_collect_options.py fails when they differ).
options-table: $(VENV)/.installed-dev
	$(BIN)/python -m agent.collect.options_doc README.md
	$(BIN)/python -m agent.collect.options_doc plugins/casefile-pgsql/README.md \
		--collectors casefile_pgsql.collector:PostgresCollector

# Each prints a row for benchmarks/README.md; long ones take minutes (not part of `make test`).
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_collect.py
	$(BIN)/python benchmarks/bench_fragmentation.py
	$(BIN)/python benchmarks/bench_redact.py
	$(BIN)/python benchmarks/bench_analysis.py
	$(BIN)/python benchmarks/bench_onset.py --seeds 4
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_query.py --rows 100000
	$(BIN)/python benchmarks/bench_live.py --agents 1000 --snapshots 30
	$(BIN)/python benchmarks/bench_hunt.py --agents 200 --runs 3
	$(BIN)/python benchmarks/bench_agent_idle.py --seconds 600
	$(BIN)/python benchmarks/bench_channels.py --agents 10000
	$(BIN)/python benchmarks/bench_console.py --rows 100000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
