"""The BLAS behind fastnn's GEMMs is scipy's bundled OpenBLAS (reached through
scipy.linalg.cython_blas). fastnn splits large GEMMs across its own OpenMP threads and runs the
BLAS single-threaded: two thread pools spinning on two cores slowed a training epoch ~15x."""
import ctypes
import glob
import os

_lib = None
_searched = False


def _openblas():
    global _lib, _searched
    if not _searched:
        _searched = True
        import scipy
        root = os.path.dirname(os.path.dirname(scipy.__file__))
        pattern = ["scipy.libs/*openblas*", "scipy/.dylibs/*openblas*"]
        for pat in pattern:
            for path in sorted(glob.glob(os.path.join(root, pat))):
                try:
                    _lib = ctypes.CDLL(path)
                    break
                except OSError:
                    continue
            if _lib is not None:
                break
    return _lib


def _symbol(*names):
    lib = _openblas()
    for name in names:
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            return fn
    return None


def set_blas_threads(n):
    """Set the BLAS's own thread count; returns False when it cannot be controlled."""
    fn = _symbol("scipy_openblas_set_num_threads", "openblas_set_num_threads")
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return True


def blas_info():
    """A short description of the BLAS library and its thread count."""
    cfg = _symbol("scipy_openblas_get_config", "openblas_get_config")
    threads = _symbol("scipy_openblas_get_num_threads", "openblas_get_num_threads")
    if cfg is None:
        return "scipy BLAS (thread count not controlled)"
    cfg.restype = ctypes.c_char_p
    n = threads() if threads is not None else "?"
    return f"{cfg().decode().strip()} (BLAS threads: {n})"
