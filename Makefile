# Two commands do everything on a fresh machine:
#   make run    set up .venv on first use, then search the best NFE-4/5/6 schedules of the embedded model
#   make test   set up .venv on first use, then run the test suite
# `make bench` runs the benchmarks (pytest-benchmark).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
# every distribution the set-up installs, pinned (a fresh clone installs the same versions every
# time); `make lock` refreshes it (docs/development.md)
CONSTRAINTS ?= constraints.txt
PIP    := $(PY) -m pip install -q -c $(CONSTRAINTS)

.PHONY: run test bench setup lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile $(CONSTRAINTS) $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	# torch first: a CUDA build that also runs on CPU-only machines (wheel cache here)
	$(PIP) torch torchvision ninja pybind11
	# no build isolation: the C++/CUDA backends compile against this venv's torch; PYTHONWARNINGS
	# hides setuptools' notes (kernels/ is a namespace folder: kernels/README.md), not errors
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} PYTHONWARNINGS=ignore $(PIP) --no-build-isolation -e '.[dev]'
	# test oracle: k-diffusion's samplers, without its training stack (wandb, CLIP, kornia; its
	# resolver would also downgrade numpy), so with --no-deps and the three modules sampling.py imports
	$(PIP) --no-deps k-diffusion torchsde torchdiffeq trampoline
	touch $(STAMP)

# refresh constraints.txt: the newest versions pyproject.toml's bounds admit, installed into a new
# venv (.venv-lock) without the old pins, frozen, then the test suite run on them
lock:
	rm -rf .venv-lock
	printf '' > .venv-lock.empty
	$(MAKE) VENV=.venv-lock CONSTRAINTS=.venv-lock.empty setup
	{ echo "# Pinned versions of everything 'make setup' installs (pip freeze of a new venv); refresh: make lock"; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt
	rm -f .venv-lock.empty
	$(MAKE) VENV=.venv-lock test

# a second `make run` resumes (and reprints) the search in out/search instead of deleting it
run: $(STAMP)
	$(VENV)/bin/usf-fast search --model gmm-image --nfe 4,5,6 --out out/search $$(test -f out/search/log_nfe4.jsonl && echo --resume)

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only

clean:
	rm -rf $(VENV) .venv-lock out build *.egg-info .pytest_cache .hypothesis .benchmarks
