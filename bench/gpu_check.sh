#!/usr/bin/env bash
# One call on a GPU machine: build the extensions, run the GPU tests (cuda and triton kernels against
# the float64 reference, graph replay = eager, S³ evaluation and the solve stage on the GPU = on the
# CPU, USFScheduler.step without host reads), time the solve stage and a search's network share on the
# digits UNet and a CIFAR-size UNet, then the kernel, loop and candidate benchmarks with the report table.
#
#   bash bench/gpu_check.sh                          uses $PY (default: python3, which must hold a CUDA torch)
#   STAGES="gpu solve" bash bench/gpu_check.sh       a subset, in this order: gpu solve backends fraction bench
#
# Each stage runs under `timeout` ($STAGE_S seconds, default 240) and what it prints goes to
# $OUT_DIR/gpu_check.log too, so a call cut short still returns what the finished stages measured.
# The machine needs torch, triton, pytest, pytest-benchmark and hypothesis. It may be offline: wheels
# in .whl/ (diffusers and what it needs that the machine lacks, the k-diffusion oracle) are installed
# first, without an index. Made where pip works (keep .whl/ out of git, e.g. in .git/info/exclude),
# for a Python 3.12 machine:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2
# Writes $OUT_DIR/gpu_bench.json, $OUT_DIR/fraction.json (default out/) and prints the ratio table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT_DIR=${OUT_DIR:-out}
STAGES=${STAGES:-gpu solve backends fraction bench}
STAGE_S=${STAGE_S:-240}
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date +%T) $*"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
status=0
run() { timeout "$STAGE_S" "$@" || { echo "!! exit $? from: $*"; status=1; }; }

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

if want gpu; then
  stamp "GPU tests: every @pytest.mark.gpu test"
  run $PY -m pytest tests/test_search.py tests/test_search_evaluate.py tests/test_solve.py tests/test_graph.py \
    tests/test_adapter_diffusers.py tests/test_adapter_contract.py -q -rs -m gpu
fi
if want solve; then
  stamp "the solve stage's wall time next to the network's (QUICK, NFE 5)"
  run $PY bench/search_fraction.py --model digits --device cuda --chunk 32 --quick --out "$OUT_DIR/fraction.json"
  run $PY bench/search_fraction.py --model cifar-unet --device cuda --chunk 8 --quick --out "$OUT_DIR/fraction.json"
fi
if want backends; then
  stamp "GPU tests: backends, build, graph, conformance, learned weights (cuda, triton, CUDA graph)"
  XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
  run $PY -m pytest tests/test_backends.py tests/test_build.py tests/test_graph.py tests/test_conformance.py tests/test_weights.py -q -rs $XDIST
fi
if want fraction; then
  stamp "default search: the network's share of the wall time (target >= 80 %)"
  run $PY bench/search_fraction.py --model digits --device cuda --chunk 32 --out "$OUT_DIR/fraction.json"
fi
if want bench; then
  stamp "benchmarks"
  run $PY -m pytest bench/test_solver_step.py bench/test_sampling_loop.py bench/test_graph_loop.py bench/test_search_eval.py \
    --benchmark-only -q --benchmark-max-time "${BENCH_MAX_TIME:-0.25}" --benchmark-json "$OUT_DIR/gpu_bench.json"
  $PY bench/report.py "$OUT_DIR/gpu_bench.json"
fi
stamp "done (status $status)"
exit $status
