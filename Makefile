# dicomvault — the two commands: `make serve` and `make test` (from a fresh clone).
# The interpreter of .venv: the distribution's CPython when it is new enough and can make
# a venv (Debian builds it with profile-guided and link-time optimisation; a default
# pyenv build has neither and ran the C-STORE ingest 10-30 % slower here, see
# docs/benchmarks.md), else the python3 on PATH. `make PYTHON=...` picks another.
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do \
  $$p -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  && { echo $$p; exit; }; done; echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
ARGS ?=

.PHONY: serve test lint bench bench-quick bench-instructions tools clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[fast]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev,fast]'
	touch $@ $(RUN_STAMP)

## serve: set up .venv and run the server on the embedded default (SQLite + ./dicomvault-data)
serve: $(RUN_STAMP)
	$(VENV)/bin/dicomvault serve $(ARGS)

## tools: the external peers the tests and benchmarks talk to (DCMTK, openssl s_client,
##        Orthanc for storage commitment interoperability, dicom3tools' dciodvfy for
##        checking de-identified output, Valgrind for counting instructions), installed
##        when absent
tools:
	@if [ ! -x /usr/bin/storescu ] || [ ! -x /usr/bin/openssl ] || [ ! -x /usr/sbin/Orthanc ] \
	    || [ ! -x /usr/bin/dciodvfy ] || [ ! -x /usr/bin/callgrind_control ]; then \
	  echo "installing DCMTK, OpenSSL, Orthanc, dicom3tools and Valgrind (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends dcmtk openssl orthanc dicom3tools valgrind >/dev/null; \
	fi

## test: install everything the tests need and run the whole suite
test: $(DEV_STAMP) tools
	$(VENV)/bin/pytest $(ARGS)

## lint: ruff + mypy --strict on src/
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict src

## bench: throughput, latency and memory, with ratios against peers (docs/benchmarks.md);
##        `make bench ARGS=--quick` for smaller sets
bench: $(DEV_STAMP) tools
	$(PY) -m bench.bench_import $(ARGS)
	$(PY) -m bench.bench_dimse $(ARGS)
	$(PY) -m bench.bench_qr_orthanc $(ARGS)
	$(PY) -m bench.bench_find --dimse $(ARGS)
	$(PY) -m bench.bench_dicomweb $(ARGS)
	$(PY) -m bench.bench_workflow $(ARGS)

## bench-instructions: user-space instructions per received instance (callgrind), against
##        Orthanc and storescp: a count that host noise does not move (bench/README.md)
bench-instructions: $(DEV_STAMP) tools
	$(PY) -m bench.bench_instructions $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/.cache
