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

.PHONY: demo test bench bench-gpu bench-convergence lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing $(TORCH) and haste (editable, with test tools) into $(VENV)"
	$(PY) -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	@# the distribution was called `haste` before it became haste-diffusion (`haste` on PyPI is another project)
	-@$(PY) -m pip uninstall --quiet --disable-pip-version-check -y haste 2>/dev/null
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@echo "training recipes/quickstart.yaml on $(NPROC) processes (run folder: runs/quickstart)"
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m haste_core.run recipes/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Every benchmarks/bench_*.py in turn (bench_gpu.py apart: it needs a GPU); each prints its own side-by-side ratios.
bench: $(STAMP)
	@for script in $(sort $(filter-out benchmarks/bench_gpu.py,$(wildcard benchmarks/bench_*.py))); do \
		echo "== $$script"; HF_HUB_OFFLINE=1 $(PY) $$script || exit 1; done

# SiT-XL/2 on one GPU: img/s, MFU and peak memory of vanilla / Phase I / Phase II, eager and compiled (< 8 min).
bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_gpu.py

# The convergence miniature (vanilla vs REPA vs HASTE on 16x16 digit scenes, 3 seeds; docs/benchmarks.md);
# about 12 minutes on 2 CPU cores (696 s of training measured), not part of `make bench`. SEEDS=0,1,2 STEPS=1200 STOP=300 (HASTE's
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
