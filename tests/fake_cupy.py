"""A strict stand-in for CuPy on machines without a GPU: `device` memory that NumPy cannot read.

FakeArray holds a NumPy array but behaves like cupy.ndarray where it matters for fastnn's GPU
path: NumPy refuses to convert it implicitly (np.asarray(a) raises TypeError, as CuPy does), a
ufunc or function given a plain NumPy array next to device arrays raises TypeError, and every
crossing of the host/device boundary is counted:

  uploads    host data copied to the device (asarray/array/ascontiguousarray of host data)
  downloads  device data copied to the host (asnumpy, .get())
  syncs      a device scalar read on the host (float(), int(), bool(), .item())

Tests run CupyOps with this module as its array module (xp) and assert on those counters, so
a host round trip per batch, or a NumPy call on a device array, fails on any machine."""
import types

import numpy as np

counts = {"uploads": 0, "downloads": 0, "syncs": 0}


def reset_counts():
    for key in counts:
        counts[key] = 0


def _unwrap(value, strict=True):
    """NumPy arrays inside value, from FakeArrays; plain NumPy arrays refused (strict)."""
    if isinstance(value, FakeArray):
        return value._a
    if isinstance(value, np.ndarray) and strict:
        raise TypeError(f"fake_cupy: a host numpy.ndarray {value.shape} {value.dtype} was "
                        "passed where a device array is required (CuPy raises here too)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, strict) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return FakeArray(value)
    if isinstance(value, np.generic):       # CuPy's reductions return 0-d device arrays
        return FakeArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


class FakeArray(np.lib.mixins.NDArrayOperatorsMixin):
    __slots__ = ("_a",)

    def __init__(self, array):
        self._a = array

    # -- what CuPy forbids or counts -------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly. (fake_cupy)")

    def _sync(self):
        counts["syncs"] += 1
        return self._a

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __index__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def item(self):
        return self._sync().item()

    def get(self):
        counts["downloads"] += 1
        return self._a.copy()

    def tolist(self):
        raise TypeError("fake_cupy: tolist() of a device array (use .get())")

    def __iter__(self):                     # as CuPy: the rows, still on the device
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (FakeArray(row) if isinstance(row, np.ndarray) else FakeArray(np.asarray(row))
                for row in self._a)

    # -- everything else runs on the wrapped array -----------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = _unwrap(inputs)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"fake_cupy.{self._a!r}"

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    flags = property(lambda self: self._a.flags)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    T = property(lambda self: FakeArray(self._a.T))
    # CuPy's MemoryPointer: where the data starts on the device
    data = property(lambda self: types.SimpleNamespace(
        ptr=self._a.__array_interface__["data"][0]))

    def __getattr__(self, name):
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
        return method


ndarray = FakeArray


def _upload(obj, dtype=None, copy=True):
    if isinstance(obj, FakeArray):
        a = obj._a.astype(dtype, copy=False) if dtype is not None else obj._a
        return FakeArray(a.copy() if copy and a is obj._a else a)
    counts["uploads"] += 1
    return FakeArray(np.array(obj, dtype=dtype, copy=True))


def asarray(obj, dtype=None, order=None):
    return _upload(obj, dtype, copy=False)


def array(obj, dtype=None, copy=True, order="K"):
    return _upload(obj, dtype, copy=copy)


def ascontiguousarray(obj, dtype=None):
    a = _upload(obj, dtype, copy=False)
    return a if a._a.flags.c_contiguous else FakeArray(np.ascontiguousarray(a._a))


def asnumpy(a):
    if isinstance(a, FakeArray):
        return a.get()
    return np.asarray(a)


class _Generator:
    """cupy.random.Generator's random(size, dtype, out), backed by a NumPy generator."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64, out=None):
        values = self._rng.random(size, dtype=dtype)
        if out is None:
            return FakeArray(np.asarray(values))
        out._a[...] = values
        return out


random = types.SimpleNamespace(default_rng=_Generator)


def __getattr__(name):
    """Every other NumPy name: types, constants and ufuncs as they are (ufuncs dispatch through
    FakeArray.__array_ufunc__), functions wrapped to take and return device arrays only."""
    attr = getattr(np, name)
    if isinstance(attr, (type, np.ufunc)) or not callable(attr):
        return attr

    def function(*args, **kwargs):
        return _wrap(attr(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    function.__name__ = name
    return function
