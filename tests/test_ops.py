"""Every compiled CpuOps op against the NumPy reference Ops, the reference against finite
differences, and thread-count determinism."""
import inspect

import numpy as np
import pytest
from gradcheck import numeric_grad

from fastnn import _core
from fastnn import activations as A
from fastnn.backend.base import Ops
from fastnn.backend.cpu import CpuOps

REF, CPU = Ops(), CpuOps()
ACTS = [(A.LINEAR, 0.0), (A.RELU, 0.0), (A.SIGMOID, 0.0), (A.TANH, 0.0), (A.SOFTMAX, 0.0),
        (A.SOFTPLUS, 0.0), (A.SOFTSIGN, 0.0), (A.SELU, 0.0), (A.ELU, 1.0),
        (A.EXPONENTIAL, 0.0), (A.LEAKY_RELU, 0.2), (A.GELU, 0.0), (A.SILU, 0.0)]
ACT_IDS = [f"act{a}" for a, _ in ACTS]


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_cpu_ops_keep_reference_signatures():
    for name, fn in inspect.getmembers(CpuOps, inspect.isfunction):
        if name.startswith("_") or not hasattr(Ops, name):
            continue
        assert inspect.signature(fn) == inspect.signature(getattr(Ops, name)), name


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 300), (3, 0)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_matches_numpy(rng, shape, ta, tb):
    m, k = shape
    n = 5
    a = f32(rng, *((k, m) if ta else (m, k)))
    b = f32(rng, *((n, k) if tb else (k, n)))
    c0 = f32(rng, m, n)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) * 0.5 + 2.0 * c0
    got = c0.copy()
    CPU.gemm(a, b, out=got, trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    ref = c0.copy()
    REF.gemm(a, b, out=ref, trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-4)


# Shapes that fastnn splits over its threads by rows, by columns and along K (the partial
# products summed in order): the tutorial CNN's wide Dense forward and its convolution's weight
# gradient, both along K in runs for the BLAS's unpacked kernels; (32, 200, 10816) with B
# transposed is the wide Dense layer's input gradient, computed transposed block by block from
# A^T (and (16, 2048, 1024), whose A^T is too big to transpose on the stack, from A).
SPLIT_SHAPES = [(784, 32, 128), (32, 784, 128), (32, 10816, 200), (9, 21632, 64),
                (32, 200, 10816), (16, 2048, 1024),
                # packed-size blocks: fewer row blocks, and a 2 x 4 grid for a square output
                (1024, 784, 128), (512, 512, 512)]


@pytest.mark.parametrize("m,k,n", SPLIT_SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_split_gemms_match_numpy_for_any_thread_count(rng, m, k, n, ta, tb):
    a = f32(rng, *((k, m) if ta else (m, k)))
    b = f32(rng, *((n, k) if tb else (k, n)))
    c0 = f32(rng, m, n)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) * 0.5 + 2.0 * c0
    before = _core.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            out = c0.copy()
            CPU.gemm(a, b, out=out, trans_a=ta, trans_b=tb, alpha=0.5, beta=2.0)
            got.append(out)
    finally:
        _core.set_num_threads(before)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=2e-5 * np.sqrt(k))
    np.testing.assert_array_equal(got[0], got[1])
    out = np.full((m, n), np.nan, np.float32)      # beta=0: the old values are never read
    CPU.gemm(a, b, out=out, trans_a=ta, trans_b=tb)
    np.testing.assert_allclose(out, (want - 2.0 * c0) * 2, rtol=1e-4, atol=4e-5 * np.sqrt(k))


@pytest.mark.parametrize("rows,cols", [(21632, 64), (5000, 3), (32, 200), (7, 1)])
def test_column_sum_matches_numpy_for_any_thread_count(rng, rows, cols):
    a = f32(rng, rows, cols)
    before = _core.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            got.append(CPU.column_sum(a))
    finally:
        _core.set_num_threads(before)
    np.testing.assert_allclose(got[0], a.astype(np.float64).sum(0), rtol=1e-5,
                               atol=1e-5 * np.sqrt(rows))
    np.testing.assert_array_equal(got[0], got[1])


def test_gemm_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="inner dimensions"):
        CPU.gemm(f32(rng, 3, 4), f32(rng, 5, 2))
    with pytest.raises(ValueError, match="out"):
        CPU.gemm(f32(rng, 3, 4), f32(rng, 4, 2), out=np.empty((3, 3), np.float32))


@pytest.mark.parametrize("act,alpha", ACTS, ids=ACT_IDS)
def test_activation_forward_backward_match_reference(rng, act, alpha):
    z = f32(rng, 9, 17, scale=3.0)
    z[0, :4] = [0.0, -50.0, 50.0, 1e-3]
    y_ref = REF.act_forward(act, alpha, z)
    y = CPU.act_forward(act, alpha, z)
    np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=1e-6)
    dy = f32(rng, 9, 17)
    dz_ref = REF.act_backward(act, alpha, z, y_ref, dy)
    dz = CPU.act_backward(act, alpha, z if act in A.NEEDS_INPUT else None, y, dy)
    np.testing.assert_allclose(dz, dz_ref, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("act,alpha", ACTS, ids=ACT_IDS)
def test_activation_backward_matches_finite_differences(rng, act, alpha):
    z = rng.standard_normal((4, 6))
    z[np.abs(z) < 0.05] = 0.3  # keep clear of kinks (relu, leaky_relu, elu, selu at 0)
    dy = rng.standard_normal((4, 6))
    ops64 = Ops()

    def f(zz):
        return (ops64.act_forward(act, alpha, zz, out=np.empty_like(zz)) * dy).sum()

    eps = 1e-6
    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        num[idx] = (f(zp) - f(zm)) / (2 * eps)
    y = ops64.act_forward(act, alpha, z, out=np.empty_like(z))
    ana = ops64.act_backward(act, alpha, z, y, dy, out=np.empty_like(z))
    np.testing.assert_allclose(ana, num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act,alpha", [(A.RELU, 0.0), (A.SOFTMAX, 0.0), (A.GELU, 0.0),
                                       (A.LINEAR, 0.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_backward_match_reference(rng, act, alpha, bias):
    x, k = f32(rng, 33, 20), f32(rng, 20, 11)
    b = f32(rng, 11) if bias else None
    z_ref, y_ref = REF.dense_forward(x, k, b, act, alpha)
    z_ref, y_ref = z_ref.copy(), y_ref.copy()
    z, y = CPU.dense_forward(x, k, b, act, alpha)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    dy = f32(rng, 33, 11)
    dk_ref, db_ref = np.empty_like(k), (np.empty(11, np.float32) if bias else None)
    dx_ref = REF.dense_backward(x, k, z_ref, y_ref, dy.copy(), act, alpha, dk_ref, db_ref)
    dk, db = np.empty_like(k), (np.empty(11, np.float32) if bias else None)
    dx = CPU.dense_backward(x, k, z, y, dy.copy(), act, alpha, dk, db)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4)


def test_dense_gradients_match_finite_differences(rng):
    x = rng.standard_normal((5, 4))
    k = rng.standard_normal((4, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((5, 3))
    ops = Ops()

    def loss(kk, bb, xx):
        return (np.tanh(xx @ kk + bb) * dy).sum()

    z, y = ops.dense_forward(x, k, b, A.TANH, 0.0, z=np.empty((5, 3)), y=np.empty((5, 3)))
    dk, db = np.empty_like(k), np.empty_like(b)
    dx = ops.dense_backward(x, k, z, y, dy.copy(), A.TANH, 0.0, dk, db, dx=np.empty_like(x))
    eps = 1e-6
    for arr, grad in ((k, dk), (b, db), (x, dx)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss(k, b, x)
            arr[idx] = old - eps
            lm = loss(k, b, x)
            arr[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_xent_sparse(rng, weighted):
    z = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6).astype(np.int32)
    w = rng.random(6).astype(np.float32) if weighted else None
    p = REF.act_forward(A.SOFTMAX, 0, z.astype(np.float32))
    g_ref, g = np.empty_like(p), np.empty_like(p)
    v_ref = REF.softmax_xent_sparse(p, labels, w, 1 / 6, g_ref)
    v = CPU.softmax_xent_sparse(p, labels, w, 1 / 6, g)
    assert v == pytest.approx(v_ref, rel=1e-5)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    # value = -sum w log softmax(z)[label]; gradient w.r.t. logits
    ww = np.ones(6) if w is None else w.astype(np.float64)

    def f(zz):
        lp = zz - zz.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        return -(ww * lp[np.arange(6), labels]).sum() / 6

    assert v / 6 == pytest.approx(f(z), rel=1e-5)
    np.testing.assert_allclose(g, numeric_grad(f, z, 1e-4), rtol=1e-3, atol=1e-6)


def test_softmax_xent_sparse_rejects_bad_labels():
    p = np.full((2, 3), 1 / 3, np.float32)
    for ops in (REF, CPU):
        with pytest.raises(ValueError, match="labels"):
            ops.softmax_xent_sparse(p, np.array([0, 3], np.int32), None, 1.0, None)
        with pytest.raises(ValueError, match="labels"):
            ops.softmax_xent_sparse(p, np.array([-1, 0], np.int32), None, 1.0, None)


def test_softmax_xent_dense_and_clipping(rng):
    z = rng.standard_normal((4, 3)).astype(np.float32)
    z[0] = [40, -40, 0]           # probability ~0 for a target class: value is clipped at 1e-7
    t = np.eye(3, dtype=np.float32)[[1, 0, 2, 1]]
    p = REF.act_forward(A.SOFTMAX, 0, z)
    g_ref, g = np.empty_like(p), np.empty_like(p)
    v_ref = REF.softmax_xent_dense(p, t, None, 0.25, g_ref)
    v = CPU.softmax_xent_dense(p, t, None, 0.25, g)
    assert v == pytest.approx(v_ref, rel=1e-5)
    assert -np.log(1e-7) == pytest.approx(-np.log(np.clip(p[0, 1], 1e-7, 1)), rel=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, 0.25 * (p - t), rtol=1e-5, atol=1e-7)


def test_sigmoid_bxent_mse_mae_match_reference_and_fd(rng):
    z = rng.standard_normal((5, 2))
    t = rng.integers(0, 2, (5, 2)).astype(np.float32)
    p = REF.act_forward(A.SIGMOID, 0, z.astype(np.float32))
    for name in ("sigmoid_bxent", "squared_error", "absolute_error"):
        g_ref, g = np.empty_like(p), np.empty_like(p)
        v_ref = getattr(REF, name)(p, t, None, 0.2, g_ref)
        v = getattr(CPU, name)(p, t, None, 0.2, g)
        assert v == pytest.approx(v_ref, rel=1e-5), name
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)

    def bce(zz):
        q = 1 / (1 + np.exp(-zz))
        return -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(1).sum() * 0.2

    g = np.empty_like(p)
    CPU.sigmoid_bxent(p, t, None, 0.2, g)
    np.testing.assert_allclose(g, numeric_grad(bce, z, 1e-4), rtol=1e-3, atol=1e-6)
    pp = p.astype(np.float64)

    def mse(q):
        return ((q - t) ** 2).mean(1).sum() * 0.2

    CPU.squared_error(p, t, None, 0.2, g)
    np.testing.assert_allclose(g, numeric_grad(mse, pp, 1e-4), rtol=1e-3, atol=1e-6)


OPTIMIZER_CASES = {
    "sgd": ("sgd_update", lambda n: [np.zeros(n, np.float32), 0.1, 0.9, False]),
    "sgd_nesterov": ("sgd_update", lambda n: [np.zeros(n, np.float32), 0.1, 0.9, True]),
    "sgd_plain": ("sgd_update", lambda n: [None, 0.1, 0.0, False]),
    "adam": ("adam_update", lambda n: [np.zeros(n, np.float32), np.zeros(n, np.float32), None,
                                       0.01, 0.9, 0.999, 1e-7]),
    "amsgrad": ("adam_update", lambda n: [np.zeros(n, np.float32), np.zeros(n, np.float32),
                                          np.zeros(n, np.float32), 0.01, 0.9, 0.999, 1e-7]),
    "rmsprop": ("rmsprop_update", lambda n: [np.zeros(n, np.float32), None, None, 0.01, 0.9,
                                             0.0, 1e-7]),
    "rmsprop_centered_momentum": ("rmsprop_update", lambda n: [
        np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32), 0.01, 0.9,
        0.5, 1e-7]),
    "adagrad": ("adagrad_update", lambda n: [np.full(n, 0.1, np.float32), 0.01, 1e-7]),
    "adadelta": ("adadelta_update", lambda n: [np.zeros(n, np.float32),
                                               np.zeros(n, np.float32), 1.0, 0.95, 1e-7]),
    "adamax": ("adamax_update", lambda n: [np.zeros(n, np.float32), np.zeros(n, np.float32),
                                           0.01, 0.9, 0.999, 1e-7]),
    "nadam": ("nadam_update", lambda n: [np.zeros(n, np.float32), np.zeros(n, np.float32),
                                         0.01, 0.9, 0.999, 1e-7, 0.9 * 0.52, 0.9 * 0.5392,
                                         0.9 * 0.52, 0.9 * 0.52 * 0.9 * 0.5392, 0.999]),
    "lion": ("lion_update", lambda n: [np.zeros(n, np.float32), 0.01, 0.9, 0.99]),
    "ftrl": ("ftrl_update", lambda n: [np.full(n, 0.1, np.float32), np.zeros(n, np.float32),
                                       0.1, -0.5, 0.01, 0.01, 0.0, 0.0]),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_optimizer_kernels_match_reference(rng, case):
    method, make = OPTIMIZER_CASES[case]
    n = 50_000  # above the OpenMP threshold
    w0 = f32(rng, n)
    args_ref, args_cpu = make(n), make(n)
    w_ref, w_cpu = w0.copy(), w0.copy()
    for _ in range(3):
        g = f32(rng, n)
        getattr(REF, method)(w_ref, g, *args_ref)
        getattr(CPU, method)(w_cpu, g, *args_cpu)
    np.testing.assert_allclose(w_cpu, w_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(args_ref, args_cpu):
        if isinstance(a, np.ndarray):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_optimizer_kernel_checks_sizes():
    w = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="grad"):
        CPU.sgd_update(w, np.zeros(3, np.float32), None, 0.1, 0.0, False)
    with pytest.raises(ValueError, match="m"):
        CPU.adam_update(w, np.zeros(4, np.float32), np.zeros(5, np.float32),
                        np.zeros(4, np.float32), None, 0.1, 0.9, 0.999, 1e-7)


@pytest.mark.skipif(not _core.OPENMP, reason="built without OpenMP")
def test_results_identical_for_one_and_two_threads(rng):
    x, k = f32(rng, 512, 256), f32(rng, 256, 128)
    b = f32(rng, 128)
    dy = f32(rng, 512, 128)
    t = rng.integers(0, 128, 512).astype(np.int32)
    results = []
    before = _core.get_num_threads()
    try:
        for n in (1, 2):
            _core.set_num_threads(n)
            z, y = CPU.dense_forward(x, k, b, A.SOFTMAX, 0.0)
            g = np.empty_like(y)
            v = CPU.softmax_xent_sparse(y, t, None, 1 / 512, g)
            dk, db = np.empty_like(k), np.empty_like(b)
            dx = CPU.dense_backward(x, k, z, y, dy.copy(), A.SOFTMAX, 0.0, dk, db)
            w = f32(np.random.default_rng(0), 100_000)
            m, vv = np.zeros_like(w), np.zeros_like(w)
            CPU.adam_update(w, w * 0.5, m, vv, None, 0.01, 0.9, 0.999, 1e-7)
            results.append((y.copy(), v, dk, db, dx, w))
    finally:
        _core.set_num_threads(before)
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


def test_set_num_threads_validates():
    import fastnn
    with pytest.raises(ValueError):
        fastnn.set_num_threads(0)
    with pytest.raises(TypeError):
        fastnn.set_num_threads(1.5)


def test_kernel_exp_is_within_one_ulp_over_the_float_range():
    """The kernels' own vectorized exp (csrc/activations.c), through the exponential activation,
    against float64 exp: under 1 ulp everywhere, subnormal results included, and IEEE at the
    edges (overflow to inf, underflow to 0, NaN through)."""
    from fastnn import activations as A
    x = np.concatenate([np.linspace(-110, 95, 400_001, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, -87.3,
                                  -103.2, -103.97], np.float32)])
    y = np.empty_like(x)
    _core.act_forward(A.EXPONENTIAL, 0.0, x.reshape(1, -1), y.reshape(1, -1))
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        nearest = exact.astype(np.float32)
    normal = np.isfinite(nearest) & (nearest >= np.finfo(np.float32).tiny)
    ulps = np.abs(y[normal] - exact[normal]) / np.spacing(nearest[normal]).astype(np.float64)
    assert ulps.max() < 1.0
    sub = ~normal & np.isfinite(nearest)
    assert np.abs(y[sub] - exact[sub]).max() < np.finfo(np.float32).smallest_subnormal
    np.testing.assert_array_equal(np.isinf(y), np.isinf(nearest))
    assert np.isnan(y[-10]) and y[-9] == np.inf and y[-8] == 0.0 and y[-7] == y[-6] == 1.0


def _ulps(y, exact):
    """|y - exact| in units of the last place of the float32 nearest to exact."""
    return np.abs(y - exact) / np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)


def test_kernel_expm1_and_tanh_accuracy():
    """ELU (alpha 1: e^x - 1 for x <= 0), SELU and tanh run the kernels' vectorized e^x - 1
    (csrc/activations.c): under 1 ulp for ELU's e^x - 1 down to tiny |x| where exp(x) - 1 would
    cancel, under 3 ulp for tanh (NumPy's float32 tanh: ~1.4), odd symmetry, and IEEE edges."""
    from fastnn import activations as A
    rng = np.random.default_rng(0)
    neg = np.concatenate([-np.logspace(-40, np.log10(40), 400_001).astype(np.float32),
                          rng.uniform(-0.5, 0.0, 400_000).astype(np.float32)])
    y = np.empty_like(neg)
    _core.act_forward(A.ELU, 1.0, neg.reshape(1, -1), y.reshape(1, -1))
    assert _ulps(y, np.expm1(neg.astype(np.float64))).max() < 1.0
    _core.act_forward(A.SELU, 0.0, neg.reshape(1, -1), y.reshape(1, -1))
    selu = 1.0507009873554805 * 1.6732632423543772 * np.expm1(neg.astype(np.float64))
    assert _ulps(y, selu).max() < 2.0
    x = np.concatenate([neg, -neg, np.linspace(-12, 12, 200_001, dtype=np.float32)])
    t = np.empty_like(x)
    _core.act_forward(A.TANH, 0.0, x.reshape(1, -1), t.reshape(1, -1))
    assert _ulps(t, np.tanh(x.astype(np.float64))).max() < 3.0
    np.testing.assert_array_equal(t[:neg.size], -t[neg.size:2 * neg.size])
    edges = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-38, -1e-38, 100.0], np.float32)
    for act, want in ((A.TANH, [np.nan, 1, -1, 0, -0.0, 1e-38, -1e-38, 1]),
                      (A.ELU, [np.nan, np.inf, -1, 0, -0.0, 1e-38, -1e-38, 100])):
        out = np.empty_like(edges)
        _core.act_forward(act, 1.0, edges.reshape(1, -1), out.reshape(1, -1))
        np.testing.assert_array_equal(out, np.array(want, np.float32))
        np.testing.assert_array_equal(np.signbit(out), np.signbit(np.array(want, np.float32)))


def test_kernel_softplus_and_gelu_accuracy():
    """softplus (log1p as 2 atanh) and GELU (the normal CDF through erf below t = 0.6 and erfc
    above) run vectorized kernels: softplus under 3 ulp, GELU under 6 ulp wherever |GELU(x)| >
    1e-30, the lower tail included (where 1 + erf(x / sqrt 2) in float32 would cancel to
    nothing), and IEEE edges as x * Phi(x) gives them."""
    from scipy.special import ndtr

    from fastnn import activations as A
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-100, 100, 400_001), -np.logspace(-30, 2, 40_001),
                        np.logspace(-30, 2, 40_001), rng.uniform(-6, 6, 200_000)])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    x64 = x.astype(np.float64)
    _core.act_forward(A.SOFTPLUS, 0.0, x.reshape(1, -1), y.reshape(1, -1))
    assert _ulps(y, np.logaddexp(0.0, x64)).max() < 3.0
    _core.act_forward(A.GELU, 0.0, x.reshape(1, -1), y.reshape(1, -1))
    exact = x64 * ndtr(x64)
    big = np.abs(exact) > 1e-30
    assert _ulps(y[big], exact[big]).max() < 6.0
    assert np.abs(y[~big] - exact[~big]).max() < 1e-30
    dz, dy = np.empty_like(x), np.ones_like(x)
    _core.act_backward(A.GELU, 0.0, x.reshape(1, -1), y.reshape(1, -1), dy.reshape(1, -1),
                       dz.reshape(1, -1))
    np.testing.assert_allclose(dz, ndtr(x64) + x64 * np.exp(-0.5 * x64 ** 2) / np.sqrt(2 * np.pi),
                               rtol=1e-4, atol=3e-7)
    edges = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-38, -1e-38], np.float32)
    for act, want in ((A.SOFTPLUS, [np.nan, np.inf, 0, np.log(2), np.log(2), np.log(2),
                                    np.log(2)]),
                      (A.GELU, [np.nan, np.inf, np.nan, 0, -0.0, 5e-39, -5e-39])):
        out = np.empty_like(edges)
        _core.act_forward(act, 0.0, edges.reshape(1, -1), out.reshape(1, -1))
        want = np.array(want, np.float32)
        np.testing.assert_array_equal(out, want)
        number = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(out[number]), np.signbit(want[number]))


# Batch norm over wide batches (channel blocks) and tall ones (a convolution's N*H*W rows of
# few channels: runs of rows summed in order).
@pytest.mark.parametrize("rows,cols", [(32, 10816), (21632, 64), (5000, 3), (7, 300)])
def test_batchnorm_matches_numpy_for_any_thread_count(rng, rows, cols):
    x = f32(rng, rows, cols) * 2 + 1
    dy = f32(rng, rows, cols)
    gamma = f32(rng, cols) + 1
    eps = 1e-3
    x64 = x.astype(np.float64)
    mean, var = x64.mean(0), x64.var(0)
    xhat = (x64 - mean) / np.sqrt(var + eps)
    d_beta, d_gamma = dy.sum(0, dtype=np.float64), (dy * xhat).sum(0)
    dx_want = gamma / np.sqrt(var + eps) / rows * (rows * dy - d_beta - xhat * d_gamma)
    before = _core.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            m, v = CPU.batchnorm_stats(x)
            dg, db = np.empty(cols, np.float32), np.empty(cols, np.float32)
            dx = CPU.batchnorm_backward(x, dy, m, v, gamma, eps, d_gamma=dg, d_beta=db)
            got.append((m, v, dx, dg, db))
    finally:
        _core.set_num_threads(before)
    m, v, dx, dg, db = got[0]
    np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, var, rtol=1e-5)
    np.testing.assert_allclose(db, d_beta, rtol=1e-4, atol=1e-4 * np.sqrt(rows))
    np.testing.assert_allclose(dg, d_gamma, rtol=1e-4, atol=1e-4 * np.sqrt(rows))
    np.testing.assert_allclose(dx, dx_want, rtol=1e-3, atol=1e-4)
    for other in got[1:]:
        for a, b in zip(got[0], other):
            np.testing.assert_array_equal(a, b)
