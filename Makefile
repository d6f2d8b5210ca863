# ebmtool — set-up, tests, demo. `make demo` and `make test` create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EBM    := $(VENV)/bin/ebmtool
STAMP  := $(VENV)/.ebmtool-installed
DEMO   ?= demo

.PHONY: all install test demo bench bench-speed bench-anomaly clean help
all: help
help:
	@echo "make demo   - set up .venv if missing and run the main job on scikit-learn's digits (< 3 min)"
	@echo "make test   - set up .venv if missing and run the test suite"
	@echo "make bench  - ground-truth and speed benchmarks (QUICK=1 for a short run; not part of the tests)"
	@echo "make bench-anomaly - hold-one-digit MNIST anomaly benchmark (resumes; rows in benchmarks/results/)"

# torch and torchvision are installed together (the CUDA wheels run on the CPU; see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m ebmtool.demo --out $(DEMO)

bench: $(STAMP)
	$(PY) benchmarks/ground_truth.py $(if $(QUICK),--quick)
	$(PY) benchmarks/speed.py $(if $(QUICK),--quick)

bench-speed: $(STAMP)
	$(PY) benchmarks/speed.py $(if $(QUICK),--quick)

bench-anomaly: $(STAMP)
	$(PY) benchmarks/anomaly_mnist.py

clean:
	rm -rf $(DEMO) .pytest_cache

-include recipes/*.mk
