# haste: `make demo` trains the quickstart (HASTE on the embedded digits), `make test` runs the tests,
# `make bench` prints the Phase I / Phase II / vanilla step times. Each creates .venv and installs haste first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Known good here; override for another platform or CUDA, e.g. `make test TORCH="torch==2.9.1"`.
TORCH ?= torch==2.14.1
# Where pip finds torch; e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only build.
TORCH_INDEX ?=
NPROC ?= 2
# CPU threads per training process: the cores shared out over the processes.
THREADS ?= $(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 1) // $(NPROC)))")
STAMP := $(VENV)/.haste-installed

.PHONY: demo test bench bench-convergence lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing $(TORCH) and haste (editable, with test tools) into $(VENV)"
	$(PY) -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@echo "training recipes/quickstart.yaml on $(NPROC) processes (run folder: runs/quickstart)"
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m haste_core.run recipes/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Every benchmarks/bench_*.py in turn; each prints its own side-by-side ratios.
bench: $(STAMP)
	@for script in $(sort $(wildcard benchmarks/bench_*.py)); do \
		echo "== $$script"; HF_HUB_OFFLINE=1 $(PY) $$script || exit 1; done

# The convergence miniature (vanilla vs REPA vs HASTE on 16x16 digit scenes, 3 seeds; docs/benchmarks.md);
# about an hour on 2 CPU cores, not part of `make bench`. SEEDS=0,1,2 STEPS=1200 STOP=300 (HASTE's
# last aligned step; default the recipe's) change the budget.
SEEDS ?= 0,1,2
STEPS ?= 1200
bench-convergence: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS) $(PY) benchmarks/convergence_scenes.py --seeds $(SEEDS) --steps $(STEPS) $(if $(STOP),--stop $(STOP))

lint: $(STAMP)
	$(VENV)/bin/ruff check haste_core plugins tests benchmarks examples
	$(VENV)/bin/ruff format --check haste_core plugins tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache haste.egg-info
