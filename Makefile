# Two commands do everything on a fresh machine:
#   make run    set up .venv on first use, then search the best NFE-4/5/6 schedules of the embedded model
#   make test   set up .venv on first use, then run the test suite
# `make bench` runs the benchmarks (pytest-benchmark).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a CUDA build that also runs on CPU-only machines (wheel cache here)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 setuptools wheel ninja pybind11
	# no build isolation: the C++/CUDA backends compile against this venv's torch; PYTHONWARNINGS
	# hides setuptools' notes on editable layouts (usf_fast.kernels lives in kernels/), not errors
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	# test oracle: k-diffusion's samplers, without its training stack (wandb, CLIP, kornia; its
	# resolver would also downgrade numpy), so with --no-deps and the three modules sampling.py imports
	$(PY) -m pip install -q --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2
	touch $(STAMP)

# a second `make run` resumes (and reprints) the search in out/search instead of deleting it
run: $(STAMP)
	$(VENV)/bin/usf-fast search --model gmm-image --nfe 4,5,6 --out out/search $$(test -f out/search/log_nfe4.jsonl && echo --resume)

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis .benchmarks
