"""Backend selection, threads and session state.

`get_ops()` returns the active Ops: CpuOps (compiled core) by default, or the NumPy reference
with FASTNN_BACKEND=numpy / set_backend("numpy"). Layers and optimizers call only these ops."""
import contextlib
import os

_ops = None
_name_counters = {}


def _make_ops(name):
    if name in ("cpu", None, ""):
        from .cpu import CpuOps
        return CpuOps()
    if name in ("numpy", "reference"):
        from .base import Ops
        return Ops()
    raise ValueError(f"backend must be one of 'cpu', 'numpy'; got {name!r}")


def get_ops():
    global _ops
    if _ops is None:
        _ops = _make_ops(os.environ.get("FASTNN_BACKEND", "cpu").lower())
    return _ops


def set_backend(name):
    """Select the backend for everything created or run from now on: 'cpu' or 'numpy'."""
    global _ops
    _ops = _make_ops(name)
    return _ops


@contextlib.contextmanager
def use_backend(name):
    global _ops
    previous = _ops
    set_backend(name)
    try:
        yield _ops
    finally:
        _ops = previous


def set_num_threads(n):
    """Threads used by fastnn's own OpenMP kernels (default: OMP_NUM_THREADS or all cores)."""
    from .. import _core
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads():
    from .. import _core
    return _core.get_num_threads()


def unique_name(base):
    """Keras-style auto names: dense, dense_1, dense_2, ..."""
    k = _name_counters.get(base, 0)
    _name_counters[base] = k + 1
    return base if k == 0 else f"{base}_{k}"


def clear_session():
    """Reset the layer/model name counters, as keras.backend.clear_session() does."""
    _name_counters.clear()


def floatx():
    return "float32"


def image_data_format():
    return "channels_last"


def show_config(file=None):
    """Print version, build, threads, BLAS and backend facts."""
    import sys
    import numpy as np
    from .. import __version__, _core
    from .blas import blas_info
    lines = [
        f"fastnn {__version__}",
        f"backend: {get_ops().name}",
        f"openmp: {'on' if _core.OPENMP else 'off'}",
        f"threads: {_core.get_num_threads()}",
        f"blas: {blas_info()}",
        f"numpy {np.__version__}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
