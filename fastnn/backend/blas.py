"""The BLAS behind fastnn's GEMMs, found at run time and handed to the compiled core.

First choice: the OpenBLAS bundled with NumPy (ILP64, `scipy_sgemm_64_`), already loaded by
`import numpy`, so GEMMs cost no extra import (SciPy's `scipy.linalg` takes ~130 ms to import)
and run on the newer of the two OpenBLAS builds. Fallback: SciPy's BLAS through the function
table of `scipy.linalg.cython_blas` (any platform where SciPy has one), with SciPy's bundled
OpenBLAS for thread control when present.

fastnn splits large GEMMs across its own OpenMP threads; the core sets the BLAS to one thread
for the duration of each of its GEMMs and restores the previous count, so the two thread pools
never compete and the user's own NumPy keeps its threads."""
import ctypes
import glob
import importlib.util
import os

# (symbol, ILP64?) in order of preference; thread setters/getters to match.
_SGEMM = (("scipy_sgemm_64_", True), ("sgemm_64_", True), ("scipy_sgemm_", False),
          ("sgemm_", False))
_SET_THREADS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                "scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GET_THREADS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                "scipy_openblas_get_num_threads", "openblas_get_num_threads")
_CONFIG = ("scipy_openblas_get_config64_", "openblas_get_config64_",
           "scipy_openblas_get_config", "openblas_get_config")

_installed = None     # a dict describing the BLAS in use, once installed


def _bundled_libraries(package):
    """Shared libraries named *openblas* that a wheel of `package` ships beside it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    pkg_dir = list(spec.submodule_search_locations)[0]
    root = os.path.dirname(pkg_dir)
    patterns = [os.path.join(root, f"{package}.libs", "*openblas*"),     # Linux, Windows
                os.path.join(pkg_dir, ".dylibs", "*openblas*")]           # macOS
    return sorted(p for pat in patterns for p in glob.glob(pat))


def _symbol(lib, names):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return name, fn
    return None, None


def _address(fn):
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def _from_library(path):
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for name, ilp64 in _SGEMM:
        fn = getattr(lib, name, None)
        if fn is not None:
            return dict(lib=lib, path=path, sgemm=_address(fn), symbol=name, ilp64=ilp64)
    return None


def _from_scipy_capi():
    """sgemm from scipy.linalg.cython_blas's exported function table (a PyCapsule)."""
    from scipy.linalg import cython_blas
    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                  ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    libs = [info for info in map(_from_library, _bundled_libraries("scipy")) if info]
    lib = libs[0]["lib"] if libs else None
    return dict(lib=lib, path=libs[0]["path"] if libs else "scipy.linalg.cython_blas",
                sgemm=address, symbol="scipy.linalg.cython_blas.sgemm", ilp64=False)


def _find():
    for path in _bundled_libraries("numpy"):
        info = _from_library(path)
        if info:
            return info
    try:
        return _from_scipy_capi()
    except (ImportError, KeyError, AttributeError, ValueError) as exc:
        raise ImportError("fastnn found no BLAS: NumPy's wheel bundles no OpenBLAS here and "
                          "SciPy's BLAS is not importable. Install NumPy and SciPy from "
                          f"their wheels (pip install numpy scipy). ({exc})") from None


def install():
    """Find the BLAS and hand it to the compiled core (once); returns its description."""
    global _installed
    if _installed is None:
        from .. import _core
        info = _find()
        lib = info["lib"]
        set_name, set_fn = _symbol(lib, _SET_THREADS) if lib is not None else (None, None)
        _, get_fn = _symbol(lib, _GET_THREADS) if lib is not None else (None, None)
        if set_fn is None or get_fn is None:
            set_fn = get_fn = None
        _core.set_blas(info["sgemm"], info["ilp64"], _address(set_fn) if set_fn else 0,
                       _address(get_fn) if get_fn else 0)
        _, config = _symbol(lib, _CONFIG) if lib is not None else (None, None)
        if config is not None:
            config.restype = ctypes.c_char_p
            name = config().decode().strip()
        else:
            name = info["symbol"]
        _installed = dict(name=name, path=info["path"], symbol=info["symbol"],
                          ilp64=info["ilp64"], threads_controlled=set_fn is not None)
    return _installed


def blas_info():
    """A one-line description of the BLAS in use."""
    info = install()
    control = "single-threaded inside fastnn's GEMMs" if info["threads_controlled"] else \
        "thread count not controlled"
    return f"{info['name']} [{info['symbol']}, {os.path.basename(info['path'])}] ({control})"
