# The README's commands. `make test` and `make demo` each set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PYTEST_ARGS ?=
DEMO_ARGS ?=

CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: help install build test demo lint format bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(VENV)/.deps: requirements/constraints.txt requirements/base.txt requirements/dev.txt requirements/embedded.txt requirements/bench.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/base.txt -r requirements/dev.txt -r requirements/bench.txt
	$(PIP) install -q --no-deps -r requirements/embedded.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built  ## create .venv, install the pinned dependencies, build the package

build: install  ## alias of install

test: $(VENV)/.built  ## set up and run the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(VENV)/.built  ## set up and run the whole job (fine-tune, SPD-prune, export, evaluate, profile) on the embedded default
	$(VENV)/bin/spd demo $(DEMO_ARGS)

bench: $(VENV)/.built  ## kernel benchmarks (pytest-benchmark), not part of the test run
	$(PY) -m pytest benchmarks/ --benchmark-only

GPU_CHECK_ARGS ?=
gpu-check:  ## on a GPU machine, with its CUDA torch: build (sm_90), GPU tests, memcheck, both GPU benchmarks -> OUT (~10 min)
	PYTHON=$(PYTHON) scripts/gpu_check.sh $(GPU_CHECK_ARGS) $(or $(OUT),benchmarks/results/gpu_check)

lint: $(VENV)/.deps  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(VENV)/.deps
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:  ## remove build outputs (keeps .venv)
	rm -rf build *.egg-info spd_kernels/_C*.so $(VENV)/.built
