# ebmtool — set-up, tests, demo. `make demo` and `make test` create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EBM    := $(VENV)/bin/ebmtool
STAMP  := $(VENV)/.ebmtool-installed
DEMO   ?= demo

.PHONY: all install test demo bench bench-speed bench-anomaly bench-anomaly-v3 bench-anomaly-v3-paper bench-anomaly-standard bench-threads clean help
all: help
help:
	@echo "make demo   - set up .venv if missing and run the main job on scikit-learn's digits (< 3 min)"
	@echo "make test   - set up .venv if missing, ruff check, and run the test suite"
	@echo "make bench  - ground-truth and speed benchmarks (QUICK=1 for a short run; not part of the tests)"
	@echo "make bench-anomaly-v3 - the papers' MNIST protocol (70,000 images, 28x28; resumes; MNIST_ROOT = the IDX folder)"
	@echo "make bench-anomaly-v3-paper - the same at the papers' budget (~70k updates per row; a CUDA GPU)"
	@echo "make bench-anomaly-standard - v3's model, budget and score on MNIST's own split (the whole test file)"
	@echo "make bench-anomaly - hold-one-digit MNIST anomaly benchmark v2 (10,000 images, 32x32)"
	@echo "make bench-threads - --threads auto against a fixed count, idle and with a core busy"
	@echo "make wheelhouse - wheels of every dependency but torch for an offline GPU node (WHEEL_PYTHON=3.12 WHEEL_PLATFORM=...)"

# torch and torchvision are installed together (the CUDA wheels run on the CPU; see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# pytest-xdist: one worker per idle physical core, as --threads auto counts them (tests/conftest.py), whole files
# per worker (module fixtures are built once); the tests that need an idle core (and torchrun's) run first, alone.
# TEST_WORKERS=N fixes the count; TEST_WORKERS=0 runs the suite in one process, without workers.
# compileall: the suite starts ~150 CLI processes (recipes, torchrun ranks, kill -9 tests); with
# PYTHONDONTWRITEBYTECODE=1 in the environment (as on this project's machines) each of them would compile ebmtool's
# sources again (~0.25 CPU-s). compileall writes the bytecode anyway, and recompiles only what changed (0.1 s).
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m ruff check ebmtool tests benchmarks recipes
	$(PY) -m compileall -q ebmtool recipes benchmarks
	$(PY) -m pytest -q -m serial tests
	$(PY) -m pytest -q -m "not serial" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

demo: $(STAMP)
	$(PY) -m ebmtool.demo --out $(DEMO)

bench: $(STAMP)
	$(PY) benchmarks/ground_truth.py $(if $(QUICK),--quick)
	$(PY) benchmarks/speed.py $(if $(QUICK),--quick)

bench-speed: $(STAMP)
	$(PY) benchmarks/speed.py $(if $(QUICK),--quick)

# one script for every protocol (benchmarks/anomaly.py), run as a package: python -m benchmarks.anomaly --protocol P
ANOMALY := $(PY) -m benchmarks.anomaly
bench-anomaly: $(STAMP)
	$(ANOMALY) --protocol v2

# the committed v3 table is fp32 (precision is part of a row's key): V3_PRECISION=auto starts a bf16 series where the
# CPU runs bf16 natively (AMX / AVX512-BF16), beside it rather than resuming it
V3_PRECISION ?= fp32
bench-anomaly-v3: $(STAMP)
	$(ANOMALY) --protocol v3 --precision $(V3_PRECISION) --seeds 0 1 2 --digits 1 4 5 7 9
	$(ANOMALY) --protocol v3 --precision $(V3_PRECISION) --seeds 0 --digits 0 2 3 6 8
	$(ANOMALY) --protocol v3 --precision $(V3_PRECISION) --seeds 0 --digits 1 4 5 7 9 --methods joint-mle joint-vi vae

bench-anomaly-v3-paper: $(STAMP)
	$(ANOMALY) --protocol v3 --budget paper --device cuda --seeds 0 1 2 --digits 1 4 5 7 9
	$(ANOMALY) --protocol v3 --budget paper --device cuda --seeds 0 --digits 1 4 5 7 9 --methods joint-mle joint-vi vae

# issue 35 §2: the standard split's core rows on the published digits, seed 0, fp32 (v3's budget and score)
bench-anomaly-standard: $(STAMP)
	$(ANOMALY) --protocol standard --precision fp32 --seeds 0 --digits 1 4 5 7 9

bench-threads: $(STAMP)
	$(PY) benchmarks/threads.py $(if $(QUICK),--quick)

# A GPU node with no internet whose Python already holds torch (issue 22): every other dependency as a wheel, plus
# ebmtool's own, in wheelhouse/cpXY-PLATFORM/ (ignored; copy it with the repository). Empty = this machine's; e.g.
#   make wheelhouse WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64   (docs/gpu_node.md)
WHEEL_PYTHON      ?=
WHEEL_PLATFORM    ?=
WHEEL_EXTRAS      ?= dev
WHEEL_TORCH       ?= 2.11.0
WHEEL_TORCHVISION ?= 0.26.0
WHEELHOUSE        ?=
WHEEL_PY          ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
.PHONY: wheelhouse
wheelhouse:
	$(WHEEL_PY) scripts/wheelhouse.py $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON)) \
	  $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM)) --extras '$(WHEEL_EXTRAS)' \
	  --torch $(WHEEL_TORCH) --torchvision $(WHEEL_TORCHVISION) $(if $(WHEELHOUSE),-d $(WHEELHOUSE))

clean:
	rm -rf $(DEMO) .pytest_cache

-include recipes/*.mk
