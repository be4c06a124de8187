#!/usr/bin/env bash
# One call on a GPU machine: build the extensions, run the backend, graph and search tests on the GPU
# (cuda and triton against the float64 reference, graph replay = eager, S³ evaluation on the GPU = on
# the CPU), time the kernels, loops and S³ candidate evaluation with the report table, and measure
# the share of a default search's wall time spent in the network (digits, a CIFAR-size UNet).
#
#   bash bench/gpu_check.sh                 uses $PY (default: python3, which must hold a CUDA torch)
#   BENCH=0 bash bench/gpu_check.sh         build and tests only
#
# The machine needs torch, triton, pytest, pytest-benchmark and hypothesis. It may be offline: wheels
# in .whl/ (diffusers and what it needs that the machine lacks) are installed first, without an index.
# Made where pip works (keep .whl/ out of git, e.g. in .git/info/exclude), for a Python 3.12 machine:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata lazy-importer
# Writes $OUT_DIR/gpu_bench.json (default out/) and prints the ratio table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT_DIR=${OUT_DIR:-out}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date +%T) $*"; }
status=0

if ls .whl/*.whl >/dev/null 2>&1; then
  stamp "installing carried wheels: $(ls .whl | tr '\n' ' ')"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

stamp "building usf_fast (C++ and CUDA extensions, sm_90)"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
$PY -m usf_fast.cli info
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true

stamp "GPU tests"
$PY -m pytest tests/test_backends.py tests/test_build.py tests/test_graph.py -q -rs || status=1
$PY -m pytest tests -q -rs -m gpu || status=1   # every @pytest.mark.gpu test
$PY -m pytest tests/test_conformance.py -q -rs || status=1

if [ "${BENCH:-1}" = 0 ]; then stamp "done, tests only (status $status)"; exit $status; fi
stamp "benchmarks"
$PY -m pytest bench/test_solver_step.py bench/test_sampling_loop.py bench/test_graph_loop.py bench/test_search_eval.py --benchmark-only -q \
  --benchmark-max-time "${BENCH_MAX_TIME:-0.25}" --benchmark-json "$OUT_DIR/gpu_bench.json" || status=1
$PY bench/report.py "$OUT_DIR/gpu_bench.json"
stamp "search: the network's share of the wall time (target >= 80 %)"
$PY bench/search_fraction.py --model digits --device cuda --chunk 32 --out "$OUT_DIR/fraction.json" || status=1
$PY bench/search_fraction.py --model cifar-unet --device cuda --chunk 8 --out "$OUT_DIR/fraction.json" || status=1
stamp "done (status $status)"
exit $status
