"""The BLAS handed to the compiled core: NumPy's bundled OpenBLAS when there is one, SciPy's as
the fallback; both give the GEMMs NumPy gives, and neither leaves the user's BLAS threads
changed."""
import ctypes

import numpy as np
import pytest

from fastnn import _core
from fastnn.backend import blas, get_ops


def _gemm_matches_numpy():
    rng = np.random.default_rng(0)
    for m, k, n, ta, tb in [(33, 70, 20, False, False), (64, 300, 257, True, False),
                            (512, 64, 96, False, True), (40, 1, 3, True, True)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        c = rng.standard_normal((m, n)).astype(np.float32)
        ref = 0.5 * (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + 2.0 * c
        _core.gemm(a, b, c, ta, tb, alpha=0.5, beta=2.0)
        np.testing.assert_allclose(c, ref, rtol=1e-4, atol=1e-4)


def test_installed_blas_works_and_is_described():
    get_ops()
    info = blas.install()
    assert blas.blas_info().startswith(info["name"]) and info["symbol"] in blas.blas_info()
    _gemm_matches_numpy()


@pytest.mark.skipif(not blas._bundled_libraries("numpy"), reason="NumPy bundles no OpenBLAS")
def test_numpy_openblas_is_preferred_and_keeps_its_threads():
    info = blas.install()
    assert info["ilp64"] and "openblas" in info["path"].lower()
    lib = ctypes.CDLL(info["path"])
    set_threads = lib.scipy_openblas_set_num_threads64_
    get_threads = lib.scipy_openblas_get_num_threads64_
    before = get_threads()
    try:
        set_threads(2)
        a = np.ones((256, 256), np.float32)
        _core.gemm(a, a, np.empty_like(a))
        assert get_threads() == 2     # set to 1 only for the duration of fastnn's GEMM
    finally:
        set_threads(before)


def test_scipy_fallback_gives_the_same_gemms():
    pytest.importorskip("scipy")
    info = blas._from_scipy_capi()
    assert info["sgemm"] and not info["ilp64"]
    try:
        _core.set_blas(info["sgemm"], False)
        _gemm_matches_numpy()
    finally:
        blas._installed = None
        blas.install()
    with pytest.raises(ValueError, match="NULL"):
        _core.set_blas(0, False)
