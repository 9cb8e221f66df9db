#!/usr/bin/env bash
# Build fastnn's C core (csrc/*.c + fastnn/_core.pyx) under AddressSanitizer in a scratch copy
# of this checkout and run the kernel-level tests on it: any out-of-bounds read or write, use
# after free or double free in a kernel aborts the run with ASan's report. Optional (not run
# by .ci/run): it needs gcc or clang with libasan, and takes a few minutes.
#   tools/sanitize.sh [extra pytest args]      SANITIZE_DIR=/tmp/x keeps the build there
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
CC_=${CC:-gcc}
WORK=${SANITIZE_DIR:-$(mktemp -d -t fastnn-asan.XXXXXX)}
mkdir -p "$WORK/src"
# the sources only: no build outputs, so nothing uninstrumented is picked up
tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=build --exclude='*.so' \
    --exclude='fastnn/_core.c' --exclude='__pycache__' -cf - . | tar -C "$WORK/src" -xf -
cd "$WORK/src"
echo "fastnn sanitize: building with -fsanitize=address in $WORK/src" >&2
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address" \
    "$PY" setup.py build_ext --inplace -q >/dev/null
LIBASAN=$("$CC_" -print-file-name=libasan.so)
[ -e "$LIBASAN" ] || { echo "fastnn sanitize: libasan not found ($LIBASAN)" >&2; exit 2; }
# PyTorch, Keras and matplotlib (imported by the comparison tests) abort under a preloaded
# libasan on their own: hide them, so those comparisons skip and fastnn's kernels still run.
for mod in torch keras matplotlib tensorflow jax; do
    mkdir -p "$WORK/hidden/$mod"
    echo "raise ImportError('hidden by tools/sanitize.sh')" > "$WORK/hidden/$mod/__init__.py"
done
# Python's own allocator would hide small buffers from ASan; NumPy's data goes through malloc.
export LD_PRELOAD="$LIBASAN" PYTHONMALLOC=malloc PYTHONPATH="$WORK/hidden:$WORK/src"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
cd "$WORK/src/tests"
"$PY" -c "import fastnn._core as c; print('fastnn sanitize: testing', c.__file__)"
"$PY" -m pytest -q -p no:cacheprovider --import-mode=importlib \
    test_ops.py test_conv.py test_conv2d_maxpool.py test_fused.py test_layers.py test_optimizers.py \
    reliability -k "not torch and not keras and not Keras" "$@"
echo "fastnn sanitize: no AddressSanitizer errors" >&2
