#!/usr/bin/env bash
# The GPU checks of issue 5, as one script for a lent GPU machine (no internet there):
#   bash tools/gpu_check.sh [OUT_DIR]
# builds the extension in place with what the machine has, then runs the gpu-marked tests, the
# whole suite on the CUDA backend, and the GPU benchmarks (fastnn CUDA vs PyTorch CUDA, plus the
# CPU side for reference). Logs and the benchmark report go to OUT_DIR (default: $OUT or .).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
export FASTNN_DATA_DIR="${FASTNN_DATA_DIR:-../shared/data/mnist}"
{
  python -c "import sys; print(sys.version)"
  python -c "import numpy, cupy, torch; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} 2>&1 | tee "$out/versions.txt"
# Without Cython there, setup.py compiles fastnn/_core.c: carry it (run build_ext here first).
python setup.py build_ext --inplace -q > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
python -c "import fastnn; fastnn.show_config()" 2>&1 | tee "$out/config.txt"
# Tests import the source tree (PYTHONPATH) instead of an installed fastnn.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 300 python -m pytest -q -p no:cacheprovider -m gpu -rs > "$out/gpu_tests.log" 2>&1
echo "gpu-marked tests: rc=$?  $(tail -1 "$out/gpu_tests.log")"
FASTNN_BACKEND=cuda timeout 600 python -m pytest -q -p no:cacheprovider -x > "$out/suite_cuda.log" 2>&1
echo "whole suite, FASTNN_BACKEND=cuda: rc=$?  $(tail -1 "$out/suite_cuda.log")"
timeout 600 python benchmarks/report.py --rounds 3 --systems sgemm,fastnn,torch,gpu \
  --json "$out/bench.json" > "$out/bench.md" 2> "$out/bench.log"
echo "benchmarks: rc=$?"; grep -A6 "### GPU" "$out/bench.md"
