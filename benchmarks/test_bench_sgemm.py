"""sgemm throughput of the BLAS path fastnn trains with (fastnn._core.gemm, with fastnn's
backend initialised so the BLAS/OpenMP thread setup is the one a fit() sees), at every GEMM
shape of the training workloads (two MLPs, the CNN) and at 2048^3."""
import numpy as np
import pytest
import workloads as wl


@pytest.fixture(scope="module")
def core():
    import fastnn
    from fastnn import _core
    fastnn.backend.get_ops()  # CpuOps pins the BLAS to one thread; fastnn splits GEMMs itself
    return _core


@pytest.fixture(scope="module")
def blas(core):
    try:
        from fastnn.backend.blas import blas_info
        return blas_info()
    except Exception as e:  # noqa: BLE001 -- informational only
        return f"unknown ({type(e).__name__})"


@pytest.mark.parametrize("shape", wl.sgemm_shapes(),
                         ids=lambda s: wl.gemm_label(*s).replace(" ", ""))
def test_sgemm(benchmark, core, blas, shape):
    m, k, n, ta, tb = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    benchmark.group = "sgemm 2048^3" if shape == wl.BIG else "sgemm at the training shapes"
    benchmark.extra_info.update(shape=list(shape), label=wl.gemm_label(*shape), flop=2 * m * k * n,
                                workloads=wl.shape_users(shape),
                                threads=core.get_num_threads(), blas=blas)
    benchmark(core.gemm, a, b, out, ta, tb, 1.0, 0.0)
    ta_, tb_ = (a.T if ta else a), (b.T if tb else b)
    np.testing.assert_allclose(out, ta_ @ tb_, rtol=1e-3, atol=1e-3 * k ** 0.5)
