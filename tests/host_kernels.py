"""kernels.cu on the CPU: the CUDA source compiled by the C++ compiler and launched as a grid of
emulated threads, so its indexing and arithmetic are checked without a GPU.

The shim turns the CUDA qualifiers into nothing and the thread coordinates into globals that
the launcher sets before each call: one call per emulated thread, in a shuffled order."""
import ctypes
import os
import shutil
import subprocess
import threading

import numpy as np

from fastnn.backend import cupy as cupy_backend
from fastnn.backend.base import Ops
from fastnn.backend.cupy import CupyOps

REF = Ops()
KERNELS_CU = cupy_backend._SOURCE

_SHIM = r"""
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct fnn_dim3 { unsigned x, y, z; };
extern "C" { fnn_dim3 blockIdx, threadIdx, blockDim, gridDim; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
"""


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


def build(tmp):
    """kernels.cu as a shared library for the CPU, in directory tmp; None without a C++
    compiler. Fails (AssertionError with the compiler's output) when the source does not build."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if not cxx:
        return None
    (tmp / "shim.h").write_text(_SHIM)
    lib = tmp / "kernels_host.so"
    proc = subprocess.run([cxx, "-std=c++14", "-O1", "-Wall", "-Wextra", "-shared",
                           "-fPIC", "-include", str(tmp / "shim.h"), "-x", "c++", KERNELS_CU,
                           "-o", str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(lib))


class HostKernelOps(CupyOps):
    """CupyOps's kernel path, kernels.cu running on the CPU; xp is NumPy or tests/fake_cupy.py
    (whose arrays the launcher reads through their host storage)."""
    name = "cuda-host"
    GRID, BLOCK = 5, 3      # 15 emulated threads: every grid-stride loop runs its stride

    def __init__(self, lib, seed=0, xp=np):
        super().__init__(xp, kernels=True)
        self.lib, self.order = lib, np.random.default_rng(seed)
        self.dims = {k: _Dim3.in_dll(lib, k) for k in ("blockIdx", "threadIdx", "blockDim",
                                                         "gridDim")}
        # The emulated thread coordinates are globals: one launch at a time (a GPU runs
        # launches from several host threads by itself).
        self._launching = threading.Lock()

    def _launch(self, kernel, n, *args):
        cupy_backend._check_launch(kernel, n, args)
        if n == 0:                          # as CupyOps._launch: nothing to launch
            return
        fn = getattr(self.lib, kernel)
        cargs = [ctypes.c_int(n)] + [_c_arg(a) for a in args]
        with self._launching:
            self.dims["blockDim"].x, self.dims["gridDim"].x = self.BLOCK, self.GRID
            for t in self.order.permutation(self.GRID * self.BLOCK):
                self.dims["blockIdx"].x, self.dims["threadIdx"].x = divmod(int(t), self.BLOCK)
                fn(*cargs)

    def _launch_gemm(self, a, b, out, trans_a, trans_b, alpha, beta):
        # stands in for cuBLAS
        REF.gemm(_host(a), _host(b), _host(out), trans_a, trans_b, alpha, beta)


def _host(a):
    return getattr(a, "_a", a)      # a fake_cupy array's storage, or the NumPy array itself


def _c_arg(a):
    if a is None:
        return ctypes.c_void_p(None)
    if isinstance(a, np.int32):
        return ctypes.c_int(int(a))
    if isinstance(a, np.float32):
        return ctypes.c_float(float(a))
    a = _host(a)
    assert isinstance(a, np.ndarray)
    return ctypes.c_void_p(a.ctypes.data)
