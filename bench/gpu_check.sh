#!/usr/bin/env bash
# One call on a GPU machine: build the extensions, run the backend tests on the GPU (cuda and
# triton against the float64 reference), and time everything with the report table.
#   bash bench/gpu_check.sh            (writes out/gpu_bench.json and prints the ratio table)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu 2>/dev/null || true
PY=.venv-gpu/bin/python
$PY -m pip install -q torch==2.14.1 torchvision==0.29.1 setuptools wheel ninja pybind11
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  $PY -m pip install -q --no-build-isolation -e '.[dev]'
$PY -m usf_fast.cli info
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true
$PY -m pytest tests/test_backends.py tests/test_build.py tests/test_graph.py -q
mkdir -p out
$PY -m pytest bench --benchmark-only -q --benchmark-json out/gpu_bench.json
$PY bench/report.py out/gpu_bench.json
