"""Backend selection, threads and session state.

`get_ops()` returns the active Ops, chosen once: by default CupyOps (CUDA) when CuPy imports and
sees a GPU, else CpuOps (the compiled core); FASTNN_BACKEND=cpu|cuda|numpy|auto or
set_backend(...) choose explicitly. Layers and optimizers call only these ops, and keep their
arrays where the ops compute (on the GPU: weights, gradients, optimizer state, batches)."""
import contextlib
import importlib.util
import os
import sys

import numpy as np

from .. import __version__
from . import blas as _blas

_ops = None
_name_counters = {}


def _cuda_missing():
    """None when CuPy is installed and sees a CUDA GPU, else what is missing. CuPy is imported
    only once find_spec has found it, and nothing here raises (a broken install is 'missing')."""
    try:
        if importlib.util.find_spec("cupy") is None:
            return "CuPy is not installed (pip install 'fastnn[gpu]', or fastnn[gpu-cuda13])"
        import cupy
        if not cupy.cuda.is_available():
            return f"CuPy {cupy.__version__} finds no usable CUDA GPU (no device or driver)"
        return None
    except Exception as exc:
        return f"CuPy is installed but unusable ({type(exc).__name__}: {exc})"


def _make_ops(name):
    # Only the chosen implementation loads: cpu.py needs the compiled core (fastnn imports
    # without it), and base.py needs fastnn.activations, which needs get_ops from here.
    from .base import Ops
    if isinstance(name, Ops):           # an instance, made by the caller
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":                  # the GPU when it is usable, else the compiled CPU core
        name = "cuda" if _cuda_missing() is None else "cpu"
    if name == "cpu":
        from .cpu import CpuOps
        return CpuOps()
    if name in ("numpy", "reference"):
        return Ops()
    if name in ("cuda", "gpu"):
        missing = _cuda_missing()
        if missing is not None:
            raise RuntimeError(f"backend 'cuda' needs CuPy and an NVIDIA GPU: {missing}")
        from .cupy import CupyOps
        return CupyOps()
    raise ValueError(f"backend must be one of 'cpu', 'cuda', 'numpy' (or 'auto'); got {name!r}")


def get_ops():
    """The active backend's operations object (the NumPy reference, the C backend or the CuPy one),
    chosen by `set_backend` or `$FASTNN_BACKEND` (default `"auto"`).

    Returns:
        An `Ops` object.
    """
    global _ops
    if _ops is None:
        _ops = _make_ops(os.environ.get("FASTNN_BACKEND", "auto"))
    return _ops


def set_backend(name):
    """Select the backend for everything created or run from now on: 'cpu', 'cuda' (CuPy on an
    NVIDIA GPU; RuntimeError saying what is missing when there is none), 'numpy' (the
    reference) or 'auto' (cuda when usable, else cpu), the default; or an Ops instance.
    Select it before building
    models: a model's weights stay on the backend they were created on.

    Args:
        name: `"cpu"`, `"cuda"`, `"numpy"` or `"auto"`.
    """
    global _ops
    _ops = _make_ops(name)
    return _ops


@contextlib.contextmanager
def use_backend(name):
    """A context manager that selects a backend inside its block and restores the previous one
    after.

    Args:
        name: `"cpu"`, `"cuda"`, `"numpy"` or `"auto"`, as for `set_backend`.

    Example:

    ```python
    with fastnn.backend.use_backend("numpy"):
        y = model.predict(x)
    ```
    """
    global _ops
    previous = _ops
    set_backend(name)
    try:
        yield _ops
    finally:
        _ops = previous


def set_num_threads(n):
    """Threads used by fastnn's own OpenMP kernels (default: OMP_NUM_THREADS or all cores).

    Args:
        n: Number of threads (>= 1).
    """
    from .. import _core
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads():
    """The number of threads fastnn's OpenMP kernels use.

    Returns:
        An int.
    """
    from .. import _core
    return _core.get_num_threads()


def unique_name(base):
    """Keras-style auto names: dense, dense_1, dense_2, ...

    Args:
        base: The name's base, e.g. `"dense"`.

    Returns:
        A string.
    """
    k = _name_counters.get(base, 0)
    _name_counters[base] = k + 1
    return base if k == 0 else f"{base}_{k}"


def clear_session():
    """Reset the layer/model name counters, as keras.backend.clear_session() does."""
    _name_counters.clear()


def floatx():
    """The default float type: always `"float32"` in fastnn.

    Returns:
        A string.
    """
    return "float32"


def image_data_format():
    """The default image layout: `"channels_last"` (NHWC), the one fastnn's layers use.

    Returns:
        A string.
    """
    return "channels_last"


def _gpu_status():
    """CuPy and a CUDA GPU, as one phrase; imports CuPy only when it is installed, never fails."""
    try:
        if importlib.util.find_spec("cupy") is None:
            return "none (CuPy not installed)"
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return f"none (CuPy {cupy.__version__}, no CUDA device)"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return f"{n} x {name} (CuPy {cupy.__version__})"
    except Exception as exc:        # a broken CUDA install must not break show_config
        return f"none (CuPy installed but unusable: {type(exc).__name__}: {exc})"


_OPENMP_VERSIONS = {200203: "2.0", 200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0",
                    201511: "4.5", 201811: "5.0", 202011: "5.1", 202111: "5.2"}


def show_config(file=None):
    """Print what fastnn is and how it was built: version, compiler and flags, OpenMP and its
    threads, the BLAS behind the GEMMs, the backend, NumPy, and whether a GPU is usable.

    Args:
        file: Where to print; `None`: standard output.
    """
    from .. import _core
    info = getattr(_core, "BUILD_INFO", {})     # {}: an extension built before BUILD_INFO
    omp = info.get("openmp_version", 0)
    flags = [f for f in info.get("cflags", "").split() if not f.startswith(("-W", "/W"))]
    for var in ("env_CPPFLAGS", "env_CFLAGS"):
        flags += info.get(var, "").split()
    link = " ".join([info.get("ldflags", ""), info.get("env_LDFLAGS", "")]).strip()
    try:
        blas = _blas.blas_info()
    except Exception as exc:
        blas = f"unavailable ({exc})"
    try:
        backend = get_ops().name
    except Exception as exc:
        backend = f"unavailable ({exc})"
    rows = [
        ("fastnn", __version__),
        ("compiler", info.get("compiler_version") or info.get("compiler", "unknown")),
        ("flags", " ".join(flags) + (f" | link: {link}" if link else "")),
        ("openmp", f"on (OpenMP {_OPENMP_VERSIONS.get(omp, omp)})" if _core.OPENMP else "off"),
        ("threads", str(get_num_threads())),
        ("blas", blas),
        ("backend", backend),
        ("numpy", np.__version__),
        ("gpu", _gpu_status()),
    ]
    width = max(len(key) for key, _ in rows) + 1
    print("\n".join(f"{key + ':':>{width}} {value}" for key, value in rows),
          file=file or sys.stdout)
