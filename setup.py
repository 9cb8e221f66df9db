"""Build the single compiled extension, fastnn._core (fastnn/_core.pyx + csrc/*.c).

OpenMP is probed with a tiny test compile and left out when the compiler cannot use it, or when
FASTNN_NO_OPENMP=1 is set. No -march=native: wheels must run on any x86-64/aarch64 machine.
"""
import glob
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup


def _compiler_kind():
    if sys.platform == "win32":
        return "msvc"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return "clang" if "clang" in cc or sys.platform == "darwin" else "gcc"


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) when it is off or unusable."""
    if os.environ.get("FASTNN_NO_OPENMP", "0") not in ("", "0"):
        return [], []
    kind = _compiler_kind()
    if kind == "msvc":
        return ["/openmp"], []
    if kind == "clang" and sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    # The build itself adds $CPPFLAGS/$CFLAGS/$LDFLAGS, so the probe does too: that is how a
    # keg-only libomp (macOS: brew install libomp) is found, e.g. CFLAGS=-I$(brew --prefix
    # libomp)/include LDFLAGS=-L$(brew --prefix libomp)/lib (see [tool.cibuildwheel.macos]).
    env_c = [f for var in ("CPPFLAGS", "CFLAGS") for f in shlex.split(os.environ.get(var, ""))]
    env_l = shlex.split(os.environ.get("LDFLAGS", ""))
    for cflags, lflags in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
            try:
                r = subprocess.run(cc + env_c + cflags + [src, "-o", os.path.join(tmp, "probe")]
                                   + env_l + lflags, capture_output=True)
            except OSError:
                continue
            if r.returncode == 0:
                return cflags, lflags
    print("fastnn: OpenMP not available, building single-threaded kernels", file=sys.stderr)
    return [], []


def _build_info(kind, compile_args, link_args, openmp):
    """The build facts as a C string literal, `key=value|key=value`, for fastnn._core.BUILD_INFO
    (and fastnn.show_config()). Quotes, backslashes and `|` are replaced so that the literal
    survives any compiler's command line."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or ("cl" if kind == "msvc"
                                                                      else "cc")
    facts = [("compiler", kind), ("cc", cc), ("cflags", " ".join(compile_args)),
             ("ldflags", " ".join(link_args)), ("openmp", "on" if openmp else "off")]
    for var in ("CPPFLAGS", "CFLAGS", "LDFLAGS"):     # added to every compile/link by setuptools
        if os.environ.get(var, "").strip():
            facts.append((f"env_{var}", os.environ[var].strip()))
    text = "|".join(f"{k}={' '.join(v.replace('|', '/').split())}" for k, v in facts)
    return '"' + text.replace("\\", "/").replace('"', "'") + '"'


def _extensions():
    import numpy
    omp_c, omp_l = _openmp_flags()
    kind = _compiler_kind()
    if kind == "msvc":
        # /std:c11: MSVC's default C dialect (C89 + extensions) has no `restrict` or `_Pragma`.
        opt = ["/O2", "/fp:precise", "/std:c11"]
    else:
        # -fno-trapping-math: we never read FP exception flags, and it lets the compiler turn
        # the selects of relu/elu/selu/maxpool into branch-free vector code.
        # -g0: no debug info in the shipped extension (it would quadruple the wheel).
        opt = ["-O3", "-g0", "-std=c99", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
              ("FASTNN_OPENMP", "1" if omp_c else "0"),
              ("FASTNN_BUILD_INFO", _build_info(kind, opt + omp_c, omp_l, bool(omp_c)))]
    return [Extension(
        "fastnn._core",
        sources=["fastnn/_core.pyx"] + sorted(glob.glob("csrc/*.c")),
        include_dirs=["csrc", numpy.get_include()],
        define_macros=macros,
        extra_compile_args=opt + omp_c,
        extra_link_args=omp_l,
    )]


def _cythonize(exts):
    try:
        from Cython.Build import cythonize
    except ImportError:     # no Cython (an offline machine): the C it generated before, if any
        if not os.path.exists("fastnn/_core.c"):
            raise
        for ext in exts:
            ext.sources = ["fastnn/_core.c" if s.endswith(".pyx") else s for s in ext.sources]
        return exts
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False, "embedsignature": True,
    })


setup(ext_modules=_cythonize(_extensions()))
