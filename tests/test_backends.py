"""Every backend against the NumPy reference Ops, gradients against finite differences, method
signatures, and backend selection.

Backends: the reference `Ops`, `CpuOps`, and CupyOps three ways: "cuda-logic" (xp=numpy: its
argument handling and buffers, the reference computing), "cuda-host" (its kernel path with
kernels.cu compiled for the CPU by the C++ compiler and run as a grid of emulated threads, so the
CUDA source's indexing and arithmetic are checked without a GPU; cuBLAS is stood in for by the
reference GEMM), and "cuda" (CuPy on a real GPU; marked gpu, skipped without one)."""
import importlib.machinery
import inspect
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from gradcheck import numeric_grad
from host_kernels import HostKernelOps

import fastnn.backend as backend
from fastnn import activations as A
from fastnn.backend import cupy as cupy_backend
from fastnn.backend.base import Ops
from fastnn.backend.cpu import CpuOps
from fastnn.backend.cupy import CupyOps

REF = Ops()
KERNELS_CU = cupy_backend._SOURCE


BACKENDS = ["reference", "cpu", "cuda-logic", "cuda-host",
            pytest.param("cuda", marks=pytest.mark.gpu)]


def _make_ops(name, request):
    if name == "reference":
        return Ops()
    if name == "cpu":
        return CpuOps()
    if name == "cuda-logic":
        return CupyOps(xp=np)
    if name == "cuda-host":
        return HostKernelOps(request.getfixturevalue("host_kernels"))
    return CupyOps()


@pytest.fixture(params=BACKENDS)
def ops(request):
    return _make_ops(request.param, request)


@pytest.fixture(params=BACKENDS[2:])
def cuda_ops(request):
    """The CupyOps paths only (finite differences, argument checks)."""
    return _make_ops(request.param, request)


def put(ops, a):
    return ops.xp.asarray(a)


def get(ops, a):
    return None if a is None else ops.to_numpy(a)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def window(h, w, size, strides, padding):
    """TensorFlow's geometry, as fastnn.layers computes it: (kh, kw, sh, sw, pt, pl, oh, ow)."""
    (kh, kw), (sh, sw) = size, strides
    if padding == "valid":
        return (kh, kw, sh, sw, 0, 0, (h - kh) // sh + 1, (w - kw) // sw + 1)
    oh, ow = -(-h // sh), -(-w // sw)
    ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
    return (kh, kw, sh, sw, ph // 2, pw // 2, oh, ow)


CONV = [((7, 9), (3, 3), (1, 1)), ((7, 9), (3, 2), (2, 2)), ((6, 5), (1, 1), (2, 1)),
        ((5, 8), (4, 4), (2, 3))]
POOL = [((7, 9), (2, 2), (2, 2)), ((7, 9), (3, 3), (2, 2)), ((6, 7), (2, 2), (1, 1)),
        ((5, 5), (3, 2), (1, 2))]
GEOM_IDS = [f"{hw[0]}x{hw[1]}-k{k[0]}{k[1]}-s{s[0]}{s[1]}" for hw, k, s in CONV]
POOL_IDS = [f"{hw[0]}x{hw[1]}-k{k[0]}{k[1]}-s{s[0]}{s[1]}" for hw, k, s in POOL]


# ---- signatures -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CpuOps, CupyOps, HostKernelOps])
def test_backends_keep_reference_signatures(cls):
    public = {n: f for n, f in inspect.getmembers(cls, inspect.isfunction)
              if not n.startswith("_")}
    assert set(public) <= {n for n in dir(Ops) if not n.startswith("_")}, \
        "a public method the reference does not have"
    for name, fn in public.items():
        assert inspect.signature(fn) == inspect.signature(getattr(Ops, name)), name


def test_every_launched_kernel_exists_and_strides_over_the_grid():
    with open(KERNELS_CU) as f:
        cu = re.sub(r"//[^\n]*", "", f.read())
    with open(cupy_backend.__file__) as f:
        py = f.read()
    bodies = re.split(r'extern "C" __global__ void ', cu)[1:]
    defined = {b.split("(", 1)[0] for b in bodies}
    launched = set(re.findall(r'_launch\(\s*"(\w+)"', py))
    assert launched and launched <= defined, launched - defined
    for body in bodies:
        assert "GRID_STRIDE_LOOP(" in body, body.split("(", 1)[0]
        assert "atomic" not in body and "__syncthreads" not in body


# ---- GEMM -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 0), (0, 4)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm(ops, rng, shape, ta, tb):
    m, k = shape
    n = 5
    a = f32(rng, *((k, m) if ta else (m, k)))
    b = f32(rng, *((n, k) if tb else (k, n)))
    c0 = f32(rng, m, n)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
    out = put(ops, c0.copy())
    res = ops.gemm(put(ops, a), put(ops, b), out=out, trans_a=ta, trans_b=tb, alpha=0.5,
                   beta=2.0)
    np.testing.assert_allclose(get(ops, res), 0.5 * want + 2.0 * c0, rtol=1e-4, atol=1e-4)
    fresh = ops.gemm(put(ops, a), put(ops, b), trans_a=ta, trans_b=tb)
    np.testing.assert_allclose(get(ops, fresh), want, rtol=1e-4, atol=1e-4)


def test_cuda_gemm_checks_shapes(cuda_ops, rng):
    with pytest.raises(ValueError, match="inner dimensions"):
        cuda_ops.gemm(put(cuda_ops, f32(rng, 3, 4)), put(cuda_ops, f32(rng, 5, 2)))
    with pytest.raises(ValueError, match="out"):
        cuda_ops.gemm(put(cuda_ops, f32(rng, 3, 4)), put(cuda_ops, f32(rng, 4, 2)),
                      out=cuda_ops.empty((3, 3)))


# ---- convolution ------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("hw,k,s", CONV, ids=GEOM_IDS)
def test_im2col_col2im(ops, rng, hw, k, s, padding):
    win = window(*hw, k, s, padding)
    x = f32(rng, 2, *hw, 3)
    cols_ref = REF.im2col(x, win)
    cols = ops.im2col(put(ops, x), win)
    np.testing.assert_array_equal(get(ops, cols), cols_ref)
    into = ops.empty(cols_ref.shape)
    assert ops.im2col(put(ops, x), win, out=into) is into
    dcols = f32(rng, *cols_ref.shape)
    want = REF.col2im(dcols, win, x.shape)
    np.testing.assert_allclose(get(ops, ops.col2im(put(ops, dcols), win, x.shape)), want,
                               rtol=1e-5, atol=1e-5)
    dx = ops.empty(x.shape)
    assert ops.col2im(put(ops, dcols), win, x.shape, out=dx) is dx
    np.testing.assert_allclose(get(ops, dx), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [A.RELU, A.GELU])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("hw,k,s", CONV[:2], ids=GEOM_IDS[:2])
def test_conv2d_forward_backward(ops, rng, hw, k, s, padding, act):
    win = window(*hw, k, s, padding)
    x, kern, bias = f32(rng, 2, *hw, 3), f32(rng, *k, 3, 4), f32(rng, 4)
    cols_r, z_r, y_r = (a.copy() for a in REF.conv2d_forward(x, kern, bias, act, 0.0, win))
    cols, z, y = ops.conv2d_forward(put(ops, x), put(ops, kern), put(ops, bias), act, 0.0, win,
                                    z=ops.empty(z_r.shape), y=ops.empty(z_r.shape))
    np.testing.assert_allclose(get(ops, y), y_r, rtol=1e-4, atol=1e-5)
    dy = f32(rng, *z_r.shape)
    dk_r, db_r = np.empty_like(kern), np.empty_like(bias)
    dx_r = REF.conv2d_backward(cols_r, kern, z_r, y_r, dy.copy(), act, 0.0, win, x.shape, dk_r,
                               db_r)
    dk, db = ops.empty(kern.shape), ops.empty(bias.shape)
    dx = ops.conv2d_backward(cols, put(ops, kern), z, y, put(ops, dy), act, 0.0, win, x.shape,
                             dk, db, dx=ops.empty(x.shape), dcols=ops.empty(cols_r.shape))
    for got, want in ((dx, dx_r), (dk, dk_r), (db, db_r)):
        np.testing.assert_allclose(get(ops, got), want, rtol=1e-4, atol=1e-4)


def test_conv2d_gradients_match_finite_differences(cuda_ops, rng):
    """A linear loss of a linear op: central differences are exact up to float32 rounding."""
    ops = cuda_ops
    win = window(5, 6, (3, 2), (2, 1), "same")
    x, kern = f32(rng, 2, 5, 6, 2), f32(rng, 3, 2, 2, 3)
    r = f32(rng, 2 * win[6] * win[7], 3)

    def loss(xx, kk):
        _, _, y = ops.conv2d_forward(put(ops, xx.astype(np.float32)),
                                     put(ops, kk.astype(np.float32)), None, A.LINEAR, 0.0, win)
        return float((get(ops, y).astype(np.float64) * r).sum())

    cols, z, y = ops.conv2d_forward(put(ops, x), put(ops, kern), None, A.LINEAR, 0.0, win)
    dk = ops.empty(kern.shape)
    dx = ops.conv2d_backward(cols, put(ops, kern), z, y, put(ops, r.copy()), A.LINEAR, 0.0,
                             win, x.shape, dk, None)
    np.testing.assert_allclose(get(ops, dx), numeric_grad(lambda v: loss(v, kern), x, 0.25),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(get(ops, dk), numeric_grad(lambda v: loss(x, v), kern, 0.25),
                               rtol=1e-3, atol=1e-3)


# Dilated windows (kh, kw, sh, sw, pt, pl, oh, ow, dh, dw) as fastnn.layers computes them:
# the extent (k - 1) * d + 1 in place of k, TensorFlow's pads.
def dilated_window(h, w, size, strides, padding, dil):
    (kh, kw), (dh, dw) = size, dil
    extent = window(h, w, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), strides, padding)
    return (kh, kw) + extent[2:] + (dh, dw)


DILATED = [((7, 9), (3, 3), (1, 1), (2, 2)), ((8, 7), (2, 3), (1, 1), (3, 2)),
           ((9, 9), (3, 2), (2, 3), (2, 1)), ((6, 10), (1, 3), (1, 2), (1, 4))]
DILATED_IDS = [f"{hw[0]}x{hw[1]}-k{k[0]}{k[1]}-s{s[0]}{s[1]}-d{d[0]}{d[1]}"
               for hw, k, s, d in DILATED]


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("hw,k,s,d", DILATED, ids=DILATED_IDS)
def test_dilated_im2col_col2im(ops, rng, hw, k, s, d, padding):
    win = dilated_window(*hw, k, s, padding, d)
    x = f32(rng, 2, *hw, 3)
    cols_ref = REF.im2col(x, win)
    # the reference itself, tap by tap: padded pixel (oy*sh + ky*dh, ox*sw + kx*dw)
    kh, kw, sh, sw, pt, pl, oh, ow, dh, dw = win
    want = np.zeros((2, oh, ow, kh, kw, 3), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(kh):
                for kx in range(kw):
                    iy, ix = oy * sh + ky * dh - pt, ox * sw + kx * dw - pl
                    if 0 <= iy < hw[0] and 0 <= ix < hw[1]:
                        want[:, oy, ox, ky, kx] = x[:, iy, ix]
    np.testing.assert_array_equal(cols_ref, want.reshape(cols_ref.shape))
    np.testing.assert_array_equal(get(ops, ops.im2col(put(ops, x), win)), cols_ref)
    dcols = f32(rng, *cols_ref.shape)
    # col2im is im2col's adjoint: <im2col(x), dcols> == <x, col2im(dcols)>
    back = get(ops, ops.col2im(put(ops, dcols), win, x.shape))
    np.testing.assert_allclose(back, REF.col2im(dcols, win, x.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float((cols_ref.astype(np.float64) * dcols).sum()),
                               float((x.astype(np.float64) * back).sum()), rtol=1e-5)


@pytest.mark.parametrize("groups,c,f", [(2, 4, 6), (3, 3, 6), (4, 4, 4)])
@pytest.mark.parametrize("dil", [(1, 1), (2, 1)])
def test_grouped_conv2d_forward_backward(ops, rng, groups, c, f, dil):
    win = dilated_window(7, 8, (3, 2), (1, 1), "same", dil)
    if dil == (1, 1):
        win = win[:8]
    x, bias = f32(rng, 2, 7, 8, c), f32(rng, f)
    kern = f32(rng, 3, 2, c // groups, f)
    cols_r, z_r, y_r = (a.copy() for a in REF.conv2d_forward(x, kern, bias, A.RELU, 0.0, win,
                                                             groups=groups))
    # the block-diagonal product, group by group, from plain (one-group) convolutions
    fg, cg = f // groups, c // groups
    for g in range(groups):
        _, zg, _ = REF.conv2d_forward(np.ascontiguousarray(x[..., g * cg:(g + 1) * cg]),
                                      kern[..., g * fg:(g + 1) * fg], bias[g * fg:(g + 1) * fg],
                                      A.LINEAR, 0.0, win)
        np.testing.assert_allclose(z_r[:, g * fg:(g + 1) * fg], zg, rtol=1e-5, atol=1e-5)
    cols, z, y = ops.conv2d_forward(put(ops, x), put(ops, kern), put(ops, bias), A.RELU, 0.0,
                                    win, z=ops.empty(z_r.shape), y=ops.empty(z_r.shape),
                                    groups=groups)
    np.testing.assert_allclose(get(ops, y), y_r, rtol=1e-4, atol=1e-5)
    dy = f32(rng, *z_r.shape)
    dk_r, db_r = np.empty_like(kern), np.empty_like(bias)
    dx_r = REF.conv2d_backward(cols_r, kern, z_r, y_r, dy.copy(), A.RELU, 0.0, win, x.shape,
                               dk_r, db_r, groups=groups)
    dk, db = ops.empty(kern.shape), ops.empty(bias.shape)
    dx = ops.conv2d_backward(cols, put(ops, kern), z, y, put(ops, dy), A.RELU, 0.0, win,
                             x.shape, dk, db, dx=ops.empty(x.shape),
                             dcols=ops.empty(cols_r.shape), groups=groups)
    for got, want in ((dx, dx_r), (dk, dk_r), (db, db_r)):
        np.testing.assert_allclose(get(ops, got), want, rtol=1e-4, atol=1e-4)


def test_grouped_dilated_conv2d_gradients_match_finite_differences(cuda_ops, rng):
    ops = cuda_ops
    win = dilated_window(6, 7, (2, 3), (1, 1), "same", (2, 2))
    x, kern = f32(rng, 2, 6, 7, 4), f32(rng, 2, 3, 2, 4)
    r = f32(rng, 2 * win[6] * win[7], 4)

    def loss(xx, kk):
        _, _, y = ops.conv2d_forward(put(ops, xx.astype(np.float32)),
                                     put(ops, kk.astype(np.float32)), None, A.LINEAR, 0.0, win,
                                     groups=2)
        return float((get(ops, y).astype(np.float64) * r).sum())

    cols, z, y = ops.conv2d_forward(put(ops, x), put(ops, kern), None, A.LINEAR, 0.0, win,
                                    groups=2)
    dk = ops.empty(kern.shape)
    dx = ops.conv2d_backward(cols, put(ops, kern), z, y, put(ops, r.copy()), A.LINEAR, 0.0,
                             win, x.shape, dk, None, groups=2)
    np.testing.assert_allclose(get(ops, dx), numeric_grad(lambda v: loss(v, kern), x, 0.25),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(get(ops, dk), numeric_grad(lambda v: loss(x, v), kern, 0.25),
                               rtol=1e-3, atol=1e-3)


# (input h, w), kernel, strides, dilation, pads (pt, pl), output (oh, ow): the convolution
# from the output back to the input is `window`, its output size the input's
TRANSPOSE = [((4, 5), (3, 3), (2, 2), (1, 1), (1, 1), (8, 10)),
             ((3, 4), (2, 3), (3, 1), (1, 1), (0, 0), (9, 6)),
             ((4, 4), (3, 2), (1, 1), (2, 3), (2, 1), (4, 4))]


@pytest.mark.parametrize("hw,k,s,d,pads,out", TRANSPOSE)
def test_conv2d_transpose_forward_backward(ops, rng, hw, k, s, d, pads, out):
    win = k + s + pads + hw + (d if d != (1, 1) else ())
    x, bias = f32(rng, 2, *hw, 3), f32(rng, 4)
    kern = f32(rng, *k, 4, 3).reshape(-1, 3)
    y_shape = (2,) + out + (4,)
    z_r, y_r = (a.copy() for a in REF.conv2d_transpose_forward(x, kern, bias, A.TANH, 0.0, win,
                                                               y_shape))
    # the definition: the gradient (adjoint) of the convolution `win` from y_shape to x
    cols_t = x.reshape(-1, 3) @ kern.T
    np.testing.assert_allclose(z_r - bias, REF.col2im(cols_t, win, y_shape).reshape(z_r.shape),
                               rtol=1e-5, atol=1e-5)
    z, y = ops.conv2d_transpose_forward(put(ops, x), put(ops, kern), put(ops, bias), A.TANH,
                                        0.0, win, y_shape, cols=ops.empty(cols_t.shape),
                                        z=ops.empty(z_r.shape), y=ops.empty(z_r.shape))
    np.testing.assert_allclose(get(ops, y), y_r, rtol=1e-4, atol=1e-5)
    dy = f32(rng, *z_r.shape)
    dk_r, db_r = np.empty_like(kern), np.empty_like(bias)
    dx_r = REF.conv2d_transpose_backward(x, kern, z_r, y_r, dy.copy(), A.TANH, 0.0, win,
                                         y_shape, dk_r, db_r)
    dk, db = ops.empty(kern.shape), ops.empty(bias.shape)
    dx = ops.conv2d_transpose_backward(put(ops, x), put(ops, kern), z, y, put(ops, dy), A.TANH,
                                       0.0, win, y_shape, dk, db, dx=ops.empty(x.shape),
                                       dcols=ops.empty(cols_t.shape))
    for got, want in ((dx, dx_r), (dk, dk_r), (db, db_r)):
        np.testing.assert_allclose(get(ops, got), want, rtol=1e-4, atol=1e-4)


def test_conv2d_transpose_gradients_match_finite_differences(cuda_ops, rng):
    ops = cuda_ops
    hw, k, s, d, pads, out = TRANSPOSE[0]
    win = k + s + pads + hw
    x, kern = f32(rng, 2, *hw, 3), f32(rng, k[0] * k[1] * 4, 3)
    y_shape = (2,) + out + (4,)
    r = f32(rng, 2 * out[0] * out[1], 4)

    def loss(xx, kk):
        _, y = ops.conv2d_transpose_forward(put(ops, xx.astype(np.float32)),
                                            put(ops, kk.astype(np.float32)), None, A.LINEAR,
                                            0.0, win, y_shape)
        return float((get(ops, y).astype(np.float64) * r).sum())

    z, y = ops.conv2d_transpose_forward(put(ops, x), put(ops, kern), None, A.LINEAR, 0.0, win,
                                        y_shape)
    dk = ops.empty(kern.shape)
    dx = ops.conv2d_transpose_backward(put(ops, x), put(ops, kern), z, y, put(ops, r.copy()),
                                       A.LINEAR, 0.0, win, y_shape, dk, None)
    np.testing.assert_allclose(get(ops, dx), numeric_grad(lambda v: loss(v, kern), x, 0.25),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(get(ops, dk), numeric_grad(lambda v: loss(x, v), kern, 0.25),
                               rtol=1e-3, atol=1e-3)


# ---- pooling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("hw,k,s", POOL, ids=POOL_IDS)
def test_pooling(ops, rng, hw, k, s, padding, ties):
    win = window(*hw, k, s, padding)
    x = rng.integers(0, 3, (2, *hw, 3)).astype(np.float32) if ties else f32(rng, 2, *hw, 3)
    y_r, arg_r = REF.maxpool_forward(x, win)
    y, arg = ops.maxpool_forward(put(ops, x), win, y=ops.empty(y_r.shape),
                                 argmax=ops.empty(y_r.shape, "int32"))
    np.testing.assert_array_equal(get(ops, y), y_r)
    np.testing.assert_array_equal(get(ops, arg), arg_r)   # ties: the earlier tap, everywhere
    dy = f32(rng, *y_r.shape)
    dx_r = REF.maxpool_backward(dy, arg_r, win, x.shape)
    dx = ops.maxpool_backward(put(ops, dy), arg, win, x.shape, dx=ops.empty(x.shape))
    np.testing.assert_allclose(get(ops, dx), dx_r, rtol=1e-6, atol=1e-6)
    a_r = REF.avgpool_forward(x, win)
    np.testing.assert_allclose(get(ops, ops.avgpool_forward(put(ops, x), win)), a_r, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(get(ops, ops.avgpool_backward(put(ops, dy), win, x.shape)),
                               REF.avgpool_backward(dy, win, x.shape), rtol=1e-5, atol=1e-6)


def test_global_max_pooling(ops, rng):
    x = f32(rng, 3, 5, 7, 4)
    win = window(5, 7, (5, 7), (1, 1), "valid")
    y_r, arg_r = REF.maxpool_forward(x, win)
    y, arg = ops.maxpool_forward(put(ops, x), win)
    np.testing.assert_array_equal(get(ops, y), y_r)
    dy = f32(rng, *y_r.shape)
    np.testing.assert_allclose(get(ops, ops.maxpool_backward(put(ops, dy), arg, win, x.shape)),
                               REF.maxpool_backward(dy, arg_r, win, x.shape))


def test_maxpool_gradient_matches_finite_differences(cuda_ops, rng):
    """Overlapping windows (3x3, stride 2, same): an input can be the max of several windows."""
    ops = cuda_ops
    win = window(6, 7, (3, 3), (2, 2), "same")
    x = (rng.permutation(2 * 6 * 7 * 2).reshape(2, 6, 7, 2) * 0.1).astype(np.float32)
    r = f32(rng, 2, win[6], win[7], 2)

    def loss(xx):
        return float((get(ops, ops.maxpool_forward(put(ops, xx.astype(np.float32)), win)[0])
                      .astype(np.float64) * r).sum())

    _, arg = ops.maxpool_forward(put(ops, x), win)
    dx = ops.maxpool_backward(put(ops, r), arg, win, x.shape)
    np.testing.assert_allclose(get(ops, dx), numeric_grad(loss, x, 0.02), rtol=1e-3, atol=1e-4)


# ---- the GEMM epilogue: bias, inference batch norm, residual, activation ----------------------
_EPILOGUE_ACTS = {A.LINEAR: lambda v: v, A.RELU: lambda v: np.maximum(v, 0), A.TANH: np.tanh,
                  A.SIGMOID: lambda v: 1 / (1 + np.exp(-v)),
                  A.LEAKY_RELU: lambda v: np.where(v > 0, v, 0.2 * v)}


@pytest.mark.parametrize("act", sorted(_EPILOGUE_ACTS))
@pytest.mark.parametrize("parts", ["bias", "norm", "bias+norm+residual", "norm(no gamma, beta)",
                                   "residual", "none"])
@pytest.mark.parametrize("in_place", [True, False])
def test_bias_act_forward_epilogue(ops, rng, act, parts, in_place):
    """z (rows, cols) + bias, then BatchNormalization with inference statistics, + residual,
    then the activation: against the layers' formulas in float64."""
    rows, cols, eps = 53, 7, 1e-3
    z = f32(rng, rows, cols, scale=2.0)
    bias = f32(rng, cols) if "bias" in parts else None
    mean, var = f32(rng, cols), np.abs(f32(rng, cols)) + 0.1
    gamma, beta = (None, None) if "no gamma" in parts else (f32(rng, cols), f32(rng, cols))
    norm = (mean, var, gamma, beta, eps) if "norm" in parts else None
    residual = f32(rng, rows, cols) if "residual" in parts else None
    v = z.astype(np.float64) + (0 if bias is None else bias)
    if norm is not None:
        v = (v - mean) / np.sqrt(var.astype(np.float64) + eps) * (1 if gamma is None else gamma) \
            + (0 if beta is None else beta)
    v = v + (0 if residual is None else residual)
    alpha = 0.2 if act == A.LEAKY_RELU else 0.0
    zd = put(ops, z)
    dev = None if norm is None else tuple(
        None if a is None or isinstance(a, float) else put(ops, a) for a in norm[:4]) + (eps,)
    y = ops.bias_act_forward(act, alpha, zd, y=None if in_place else ops.empty(z.shape),
                             bias=None if bias is None else put(ops, bias), norm=dev,
                             residual=None if residual is None else put(ops, residual))
    np.testing.assert_allclose(get(ops, y), _EPILOGUE_ACTS[act](v), rtol=1e-5, atol=1e-5)
    if not in_place:        # z keeps the value before the activation
        np.testing.assert_allclose(get(ops, zd), v, rtol=1e-5, atol=1e-5)


def test_bias_act_forward_checks_its_arguments(rng):
    ops, z = CpuOps(), f32(rng, 6, 4)
    with pytest.raises(ValueError, match="bias_act_forward: mean: expected shape \\(4,\\)"):
        ops.bias_act_forward(A.RELU, 0.0, z, norm=(np.zeros(3, np.float32),
                                                  np.ones(4, np.float32), None, None, 1e-3))
    with pytest.raises(ValueError, match="bias_act_forward: residual"):
        ops.bias_act_forward(A.RELU, 0.0, z, residual=np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="residual"):
        ops.bias_act_forward(A.RELU, 0.0, z, residual=z)


@pytest.mark.parametrize("shape", [(1, 9, 9, 5, 3, 1, "same"), (2, 8, 7, 3, 3, 2, "valid"),
                                   (1, 7, 7, 96, 1, 1, "valid"), (1, 12, 12, 40, 3, 1, "same"),
                                   (3, 6, 6, 4, 1, 2, "valid"), (1, 30, 30, 16, 3, 1, "same")])
@pytest.mark.parametrize("act", [A.RELU, A.TANH, A.SOFTMAX])
def test_conv2d_forward_with_epilogue(ops, rng, shape, act):
    """One call: im2col, the GEMM and the epilogue (bias, inference BatchNormalization,
    residual, activation), against the reference backend's separate passes; on the C backend,
    bit-identical to im2col + gemm + bias_act_forward run one after another."""
    n, h, w, c, k, s, padding = shape
    filters = 64 if c > 20 else 6
    win = window(h, w, (k, k), (s, s), padding)
    x, kernel = f32(rng, n, h, w, c), f32(rng, k * k * c, filters, scale=0.3)
    bias, mean, gamma, beta = (f32(rng, filters) for _ in range(4))
    norm = (mean, np.abs(f32(rng, filters)) + 0.5, gamma, beta, 1e-3)
    residual = f32(rng, n * win[6] * win[7], filters)
    _, z_ref, y_ref = REF.conv2d_forward(x, kernel, bias, act, 0.0, win, norm=norm,
                                         residual=residual)
    dev_norm = tuple(put(ops, a) for a in norm[:4]) + (1e-3,)
    cols, z, y = ops.conv2d_forward(put(ops, x), put(ops, kernel), put(ops, bias), act, 0.0, win,
                                    norm=dev_norm, residual=put(ops, residual))
    np.testing.assert_allclose(get(ops, y), y_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(get(ops, z), z_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(get(ops, cols), REF.im2col(x, win) if k > 1 or s > 1 else
                                  x.reshape(-1, c))
    if isinstance(ops, CpuOps):
        z2 = ops.gemm(ops.im2col(x, win), kernel)
        y2 = ops.bias_act_forward(act, 0.0, z2, y=np.empty_like(z2), bias=bias, norm=norm,
                                  residual=residual)
        np.testing.assert_array_equal(z, z2)
        np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("shape", [(1, 12, 12, 16, 8, "same"), (2, 11, 13, 24, 40, "same"),
                                   (1, 15, 14, 32, 16, "valid"), (3, 7, 7, 64, 64, "same"),
                                   (1, 40, 9, 17, 3, "valid")])
@pytest.mark.parametrize("act", [A.LINEAR, A.RELU, A.SOFTMAX])
def test_winograd_conv2d_forward(rng, shape, act):
    """A 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) (CpuOps, work=): the direct
    convolution to rounding, with the epilogue, on odd and even output sizes (partial tiles),
    padded or not, and the same bits on one thread as on two."""
    from fastnn import _core
    n, h, w, c, filters, padding = shape
    win = window(h, w, (3, 3), (1, 1), padding)
    x, kernel = f32(rng, n, h, w, c), f32(rng, 9 * c, filters, scale=(9 * c) ** -0.5)
    bias, mean, gamma, beta = (f32(rng, filters) for _ in range(4))
    norm = (mean, np.abs(f32(rng, filters)) + 0.5, gamma, beta, 1e-3)
    residual = f32(rng, n * win[6] * win[7], filters)
    ops = CpuOps()
    floats = ops.winograd_work(x.shape, win, filters)
    assert floats > 0
    _, z_ref, y_ref = REF.conv2d_forward(x, kernel, bias, act, 0.0, win, norm=norm,
                                         residual=residual)
    results = []
    saved = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            work = np.full(floats, np.nan, np.float32)      # scratch: never read before written
            cols, z, y = ops.conv2d_forward(x, kernel, bias, act, 0.0, win, norm=norm,
                                            residual=residual, work=work)
            assert cols is None
            results.append((z.copy(), y.copy()))
    finally:
        _core.set_num_threads(saved)
    np.testing.assert_allclose(results[0][1], y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(results[0][0], z_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_winograd_work_is_offered_only_where_it_pays(rng):
    """Winograd takes 3x3, stride-1, undilated windows over 16+ channels and 32+ tiles of 2x2
    output pixels; the reference (and CUDA) backends have none; a wrong work is refused."""
    from fastnn import _core
    ops = CpuOps()
    same = window(12, 12, (3, 3), (1, 1), "same")
    assert ops.winograd_work((1, 12, 12, 16), same, 8) > 0
    assert ops.winograd_work((1, 12, 12, 15), same, 8) == 0         # too few channels
    assert ops.winograd_work((1, 7, 7, 512), window(7, 7, (3, 3), (1, 1), "same"), 512) == 0
    assert ops.winograd_work((2, 7, 7, 512), window(7, 7, (3, 3), (1, 1), "same"), 512) > 0
    assert ops.winograd_work((1, 12, 12, 16), window(12, 12, (3, 3), (2, 2), "same"), 8) == 0
    assert ops.winograd_work((1, 12, 12, 16), window(12, 12, (5, 5), (1, 1), "same"), 8) == 0
    assert ops.winograd_work((1, 16, 16, 16), (3, 3, 1, 1, 2, 2, 12, 12, 2, 2), 8) == 0
    assert REF.winograd_work((1, 12, 12, 16), same, 8) == 0
    x, kernel = f32(rng, 1, 12, 12, 16), f32(rng, 144, 8)
    z = np.empty((144, 8), np.float32)
    need = ops.winograd_work(x.shape, same, 8)
    with pytest.raises(ValueError, match=f"work: expected shape \\({need},\\)"):
        _core.conv2d_forward(x, kernel, None, A.RELU, 0.0, same, None, z, z,
                             work=np.empty(need + 1, np.float32))
    with pytest.raises(ValueError, match="Winograd does not apply"):
        _core.conv2d_forward(x, kernel[:16 * 1], None, A.RELU, 0.0, (1, 1, 1, 1, 0, 0, 12, 12),
                             None, z, z, work=np.empty(need, np.float32))
    with pytest.raises(ValueError, match="z shares memory with work"):
        buf = np.empty(need + z.size, np.float32)
        _core.conv2d_forward(x, kernel, None, A.RELU, 0.0, same, None,
                             buf[:z.size].reshape(z.shape), z, work=buf[z.size - 1:][:need])
    with pytest.raises(ValueError, match="no Winograd convolution"):
        REF.conv2d_forward(x, kernel, None, A.RELU, 0.0, same, work=np.empty(need, np.float32))
    with pytest.raises(ValueError, match="x_shape must be 4 sizes"):
        _core.winograd_work((1, 12, -12, 16), same, 8)
    with pytest.raises(ValueError, match="filters must be >= 0"):
        _core.winograd_work((1, 12, 12, 16), same, -1)


def test_conv2d_forward_checks_its_arguments(rng):
    from fastnn import _core
    x, win = f32(rng, 1, 5, 5, 2), window(5, 5, (3, 3), (1, 1), "same")
    kernel, z = f32(rng, 18, 4), np.empty((25, 4), np.float32)
    with pytest.raises(ValueError, match="conv2d_forward: kernel: expected 18 rows"):
        _core.conv2d_forward(x, f32(rng, 9, 4), None, A.RELU, 0.0, win,
                             np.empty((25, 18), np.float32), z, z)
    with pytest.raises(ValueError, match="cols is required unless the window is pointwise"):
        _core.conv2d_forward(x, kernel, None, A.RELU, 0.0, win, None, z, z)
    with pytest.raises(ValueError, match="conv2d_forward: z: expected shape \\(25, 4\\)"):
        _core.conv2d_forward(x, kernel, None, A.RELU, 0.0, win, np.empty((25, 18), np.float32),
                             np.empty((24, 4), np.float32), z)
    shared = f32(rng, 25 * 18)
    with pytest.raises(ValueError, match="cols shares memory with x"):
        _core.conv2d_forward(shared[:50].reshape(1, 5, 5, 2), kernel, None, A.RELU, 0.0, win,
                             shared.reshape(25, 18), z, z)
    with pytest.raises(TypeError, match="x"):
        CpuOps().conv2d_forward(None, kernel, None, A.RELU, 0.0, win)


# ---- batch normalization ----------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm(ops, rng, affine):
    x = f32(rng, 37, 5, scale=2.0) + 3.0
    gamma, beta = (f32(rng, 5), f32(rng, 5)) if affine else (None, None)
    m_r, v_r = REF.batchnorm_stats(x)
    mean, var = ops.batchnorm_stats(put(ops, x), ops.empty((5,)), ops.empty((5,)))
    np.testing.assert_allclose(get(ops, mean), m_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(get(ops, var), v_r, rtol=1e-5, atol=1e-6)
    g, b = (None, None) if not affine else (put(ops, gamma), put(ops, beta))
    y = ops.batchnorm_apply(put(ops, x), mean, var, g, b, 1e-3, out=ops.empty(x.shape))
    np.testing.assert_allclose(get(ops, y), REF.batchnorm_apply(x, m_r, v_r, gamma, beta, 1e-3),
                               rtol=1e-5, atol=1e-5)
    dy = f32(rng, 37, 5)
    dg_r, db_r = np.empty(5, np.float32), np.empty(5, np.float32)
    dx_r = REF.batchnorm_backward(x, dy, m_r, v_r, gamma, 1e-3, d_gamma=dg_r, d_beta=db_r)
    dg, db = ops.empty((5,)), ops.empty((5,))
    dy_dev = put(ops, dy.copy())
    dx = ops.batchnorm_backward(put(ops, x), dy_dev, mean, var, g, 1e-3, dx=dy_dev, d_gamma=dg,
                                d_beta=db)                       # dx written over dy, as layers do
    np.testing.assert_allclose(get(ops, dx), dx_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(get(ops, dg), dg_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(get(ops, db), db_r, rtol=1e-4, atol=1e-5)
    mm, mv = put(ops, np.zeros(5, np.float32)), put(ops, np.ones(5, np.float32))
    ops.batchnorm_update_moving(mm, mv, mean, var, 0.9)
    np.testing.assert_allclose(get(ops, mm), 0.1 * m_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(get(ops, mv), 0.9 + 0.1 * v_r, rtol=1e-5, atol=1e-6)


def test_batchnorm_gradient_matches_finite_differences(cuda_ops, rng):
    ops = cuda_ops
    x, gamma, r = f32(rng, 12, 3) + 1.0, f32(rng, 3), f32(rng, 12, 3)

    def loss(xx):
        xx = put(ops, xx.astype(np.float32))
        mean, var = ops.batchnorm_stats(xx)
        y = ops.batchnorm_apply(xx, mean, var, put(ops, gamma), None, 1e-3)
        return float((get(ops, y).astype(np.float64) * r).sum())

    mean, var = ops.batchnorm_stats(put(ops, x))
    dg = ops.empty((3,))
    dx = ops.batchnorm_backward(put(ops, x), put(ops, r), mean, var, put(ops, gamma), 1e-3,
                                d_gamma=dg)
    np.testing.assert_allclose(get(ops, dx), numeric_grad(loss, x, 1e-2), rtol=2e-2, atol=2e-3)
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    np.testing.assert_allclose(get(ops, dg), (r * xhat).sum(0), rtol=1e-4, atol=1e-4)


# ---- losses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_losses(ops, rng, weighted):
    rows, cols = 9, 7
    z = f32(rng, rows, cols, scale=2.0)
    z[0, 0] = 30.0                                    # a probability that gets clipped
    p = REF.act_forward(A.SOFTMAX, 0.0, z)
    labels = rng.integers(0, cols, rows).astype(np.int32)
    onehot = np.eye(cols, dtype=np.float32)[labels]
    soft = rng.random((rows, cols)).astype(np.float32)  # targets that do not sum to one
    w = rng.random(rows).astype(np.float32) if weighted else None
    q = REF.act_forward(A.SIGMOID, 0.0, z)
    cases = [("softmax_xent_sparse", p, labels), ("softmax_xent_dense", p, onehot),
             ("softmax_xent_dense", p, soft), ("sigmoid_bxent", q, onehot),
             ("squared_error", q, soft), ("absolute_error", q, soft)]
    for name, probs, t in cases:
        g_r = np.empty_like(probs)
        v_r = getattr(REF, name)(probs, t, w, 1 / rows, g_r)
        g = ops.empty(probs.shape)
        v = getattr(ops, name)(put(ops, probs), put(ops, t), None if w is None else put(ops, w),
                               1 / rows, g)
        assert v == pytest.approx(v_r, rel=1e-5), name
        np.testing.assert_allclose(get(ops, g), g_r, rtol=1e-5, atol=1e-7, err_msg=name)
        assert getattr(ops, name)(put(ops, probs), put(ops, t), None, 0.5) == \
            pytest.approx(getattr(REF, name)(probs, t, None, 0.5), rel=1e-5)


def test_cuda_losses_validate_arguments(cuda_ops):
    p = cuda_ops.asarray(np.full((2, 3), 1 / 3, np.float32))
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match="labels"):
            cuda_ops.softmax_xent_sparse(p, put(cuda_ops, np.array(bad, np.int32)), None, 1.0)
    with pytest.raises(ValueError, match="labels"):
        cuda_ops.softmax_xent_sparse(p, put(cuda_ops, np.zeros(3, np.int32)), None, 1.0)
    with pytest.raises(ValueError, match="grad"):
        cuda_ops.sigmoid_bxent(p, p, None, 1.0, grad=cuda_ops.empty((3, 2)))
    with pytest.raises(ValueError, match="weights"):
        cuda_ops.softmax_xent_dense(p, p, cuda_ops.empty((3,)), 1.0)


@pytest.mark.parametrize("kind", ["sparse", "dense", "bxent"])
def test_loss_gradients_match_finite_differences(cuda_ops, rng, kind):
    """The fused gradients are those of the loss with respect to the logits."""
    ops = cuda_ops
    z = f32(rng, 4, 5)
    labels = np.array([0, 3, 4, 1], np.int32)
    w = np.array([1.0, 0.5, 2.0, 1.5], np.float32)
    t = np.eye(5, dtype=np.float32)[labels] if kind != "bxent" else \
        rng.integers(0, 2, (4, 5)).astype(np.float32)
    act, method = {"sparse": (A.SOFTMAX, "softmax_xent_sparse"),
                   "dense": (A.SOFTMAX, "softmax_xent_dense"),
                   "bxent": (A.SIGMOID, "sigmoid_bxent")}[kind]
    target = put(ops, labels if kind == "sparse" else t)

    def loss(zz):
        probs = ops.act_forward(act, 0.0, put(ops, zz.astype(np.float32)))
        return getattr(ops, method)(probs, target, put(ops, w), 0.25) * 0.25

    g = ops.empty(z.shape)
    getattr(ops, method)(ops.act_forward(act, 0.0, put(ops, z)), target, put(ops, w), 0.25, g)
    np.testing.assert_allclose(get(ops, g), numeric_grad(loss, z, 1e-2), rtol=1e-2, atol=1e-3)


# ---- activations ------------------------------------------------------------------------------
ALL_ACTS = [(A.LINEAR, 0.0), (A.RELU, 0.0), (A.SIGMOID, 0.0), (A.TANH, 0.0), (A.SOFTMAX, 0.0),
            (A.SOFTPLUS, 0.0), (A.SOFTSIGN, 0.0), (A.SELU, 0.0), (A.ELU, 0.7),
            (A.EXPONENTIAL, 0.0), (A.LEAKY_RELU, 0.2), (A.GELU, 0.0), (A.SILU, 0.0)]


@pytest.mark.parametrize("act,alpha", ALL_ACTS, ids=[str(a) for a, _ in ALL_ACTS])
def test_every_activation_forward_and_backward(ops, rng, act, alpha):
    z = f32(rng, 7, 6, scale=3.0)
    z[0, :3] = (0.0, -30.0, 30.0)          # the kink and the saturated tails
    y_r = REF.act_forward(act, alpha, z)
    dy = f32(rng, 7, 6)
    dz_r = REF.act_backward(act, alpha, z, y_r, dy.copy())
    y = ops.act_forward(act, alpha, put(ops, z), out=ops.empty(z.shape))
    np.testing.assert_allclose(get(ops, y), y_r, rtol=2e-5, atol=1e-6)
    dz = ops.act_backward(act, alpha, put(ops, z), put(ops, y_r), put(ops, dy),
                          out=ops.empty(z.shape))
    np.testing.assert_allclose(get(ops, dz), dz_r, rtol=2e-5, atol=1e-6)


def test_unknown_activation_id_is_refused(ops):
    with pytest.raises(ValueError, match="unknown activation id 99"):
        ops.act_forward(99, 0.0, put(ops, np.ones((2, 2), np.float32)))


# ---- dense ------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", [A.RELU, A.SOFTMAX, A.GELU])
def test_dense_forward_backward(ops, rng, act):
    x, k, b = f32(rng, 33, 20), f32(rng, 20, 11), f32(rng, 11)
    z_r, y_r = (a.copy() for a in REF.dense_forward(x, k, b, act, 0.0))
    z, y = ops.dense_forward(put(ops, x), put(ops, k), put(ops, b), act, 0.0,
                             z=ops.empty((33, 11)), y=ops.empty((33, 11)))
    np.testing.assert_allclose(get(ops, y), y_r, rtol=1e-4, atol=1e-5)
    dy = f32(rng, 33, 11)
    dk_r, db_r = np.empty_like(k), np.empty_like(b)
    dx_r = REF.dense_backward(x, k, z_r, y_r, dy.copy(), act, 0.0, dk_r, db_r)
    dk, db = ops.empty(k.shape), ops.empty(b.shape)
    dx = ops.dense_backward(put(ops, x), put(ops, k), z, y, put(ops, dy), act, 0.0, dk, db,
                            dx=ops.empty(x.shape))
    for got, want in ((dx, dx_r), (dk, dk_r), (db, db_r)):
        np.testing.assert_allclose(get(ops, got), want, rtol=1e-4, atol=1e-4)


# ---- optimizers -------------------------------------------------------------------------------
def _zeros(n):
    return np.zeros(n, np.float32)


OPTIMIZERS = {
    "sgd": ("sgd_update", lambda n: [None, 0.1, 0.0, False]),
    "sgd_momentum": ("sgd_update", lambda n: [_zeros(n), 0.1, 0.9, False]),
    "sgd_nesterov": ("sgd_update", lambda n: [_zeros(n), 0.1, 0.9, True]),
    "adam": ("adam_update", lambda n: [_zeros(n), _zeros(n), None, 0.01, 0.9, 0.999, 1e-7]),
    "amsgrad": ("adam_update", lambda n: [_zeros(n), _zeros(n), _zeros(n), 0.01, 0.9, 0.999,
                                          1e-7]),
    "rmsprop": ("rmsprop_update", lambda n: [_zeros(n), None, None, 0.01, 0.9, 0.0, 1e-7]),
    "rmsprop_momentum": ("rmsprop_update", lambda n: [_zeros(n), _zeros(n), None, 0.01, 0.9,
                                                      0.5, 1e-7]),
    "rmsprop_centered": ("rmsprop_update", lambda n: [_zeros(n), _zeros(n), _zeros(n), 0.01,
                                                      0.9, 0.5, 1e-7]),
    "adagrad": ("adagrad_update", lambda n: [np.full(n, 0.1, np.float32), 0.01, 1e-7]),
    "adadelta": ("adadelta_update", lambda n: [_zeros(n), _zeros(n), 1.0, 0.95, 1e-7]),
    "adamax": ("adamax_update", lambda n: [_zeros(n), _zeros(n), 0.01, 0.9, 0.999, 1e-7]),
    "nadam": ("nadam_update", lambda n: [_zeros(n), _zeros(n), 0.01, 0.9, 0.999, 1e-7, 0.468,
                                         0.485, 0.468, 0.227, 0.999]),
    "lion": ("lion_update", lambda n: [_zeros(n), 0.01, 0.9, 0.99]),
    "ftrl": ("ftrl_update", lambda n: [np.full(n, 0.1, np.float32), _zeros(n), 0.1, -0.5, 0.01,
                                       0.01, 0.0, 0.0]),
}


@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_optimizer_updates(ops, rng, case):
    method, make = OPTIMIZERS[case]
    n = 1001
    w0 = f32(rng, n)
    args_ref = make(n)
    args = [put(ops, a.copy()) if isinstance(a, np.ndarray) else a for a in make(n)]
    w_ref, w = w0.copy(), put(ops, w0.copy())
    for _ in range(3):
        g = f32(rng, n)
        getattr(REF, method)(w_ref, g, *args_ref)
        getattr(ops, method)(w, put(ops, g), *args)
    np.testing.assert_allclose(get(ops, w), w_ref, rtol=1e-5, atol=1e-6)
    for want, got in zip(args_ref, args):
        if isinstance(want, np.ndarray):
            np.testing.assert_allclose(get(ops, got), want, rtol=1e-5, atol=1e-6)


# (kind, slots, required slots, scalars after the weight decay factor) per optimizer kind
_KINDS = [(0, 1, 1, [0.1, 0.9, 1.0]), (1, 3, 3, [0.01, 0.9, 0.999, 1e-7]),
          (2, 3, 3, [0.01, 0.9, 0.5, 1e-7]), (3, 1, 1, [0.01, 1e-7]), (4, 2, 2, [1.0, 0.95, 1e-7]),
          (5, 2, 2, [0.01, 0.9, 0.999, 1e-7]),
          (6, 2, 2, [0.01, 0.9, 0.999, 1e-7, 0.468, 0.485, 0.468, 0.227, 0.999]),
          (7, 2, 2, [0.1, -0.5, 0.01, 0.01, 0.0, 0.0]), (8, 1, 1, [0.01, 0.9, 0.99])]


@pytest.mark.parametrize("clip", [(0, 0.0), (1, 0.3), (2, 1.5), (3, 2.5), (2, 1e6)],
                         ids=["none", "value", "norm", "global", "norm_below"])
@pytest.mark.parametrize("kind", range(9))
def test_optimizer_update_with_clipping(ops, rng, kind, clip):
    """Ops.optimizer_update (Keras's clipping, weight decay and the update in one call) equals
    the reference on every backend, over three variables of different norms."""
    _, n_slots, _, scalars = _KINDS[kind]
    sizes = [5, 40, 11]
    n = sum(sizes)
    w0 = f32(rng, n)
    slots_ref = [np.full(n, 0.1, np.float32) for _ in range(n_slots)]
    slots = [put(ops, s.copy()) for s in slots_ref]
    row = np.array([0.004] + scalars, np.float32)
    w_ref, w = w0.copy(), put(ops, w0.copy())
    for _ in range(3):
        g = f32(rng, n) * np.repeat(np.float32([0.1, 1.0, 3.0]), sizes)
        g_ref = g.copy()
        REF.optimizer_update(kind, w_ref, g_ref, tuple(slots_ref), row, *clip, sizes)
        ops.optimizer_update(kind, w, put(ops, g), tuple(slots), row, *clip, sizes)
        np.testing.assert_array_equal(g_ref, g)     # the gradient is read, not written
    np.testing.assert_allclose(get(ops, w), w_ref, rtol=2e-5, atol=2e-6)
    for want, got in zip(slots_ref, slots):
        np.testing.assert_allclose(get(ops, got), want, rtol=2e-5, atol=2e-6)


def test_optimizer_update_clipping_formulas():
    """The clip written out (Keras's base_optimizer._clip_gradients) on plain SGD."""
    g = np.array([3.0, 4.0, 0.5, -0.5, 0.1], np.float32)
    for mode, limit, want in (
            (1, 0.4, np.clip(g, -0.4, 0.4)),
            (2, 1.0, np.concatenate([g[:2] / 5.0, g[2:] * 1.0])),   # norms 5 and 0.71
            (3, 2.5, g * 2.5 / np.sqrt((g.astype(np.float64) ** 2).sum()))):
        for ops in (REF, CpuOps()):
            w = np.zeros(5, np.float32)
            ops.optimizer_update(0, w, g.copy(), (None,), np.float32([0, 1.0, 0, 0]), mode,
                                 limit, [2, 3])
            np.testing.assert_allclose(-w, want, rtol=1e-6)


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.02), (0.01, 0.02)])
@pytest.mark.parametrize("shape", [(7,), (6, 5), (2, 3, 4), (130, 77)])
def test_l1l2_penalty(ops, rng, l1, l2, shape):
    """Keras's l1/l2 penalty value and its gradient added to the weight's gradient (130 x 77:
    the C sums' vector lanes, several parts and a tail); the value is the same with the
    gradient as without."""
    w = f32(rng, *shape)
    w.flat[0] = 0.0                 # sign(0) = 0
    g = f32(rng, *shape)
    want = l1 * np.abs(w.astype(np.float64)).sum() + l2 * (w.astype(np.float64) ** 2).sum()
    g_want = g + np.float32(l1) * np.sign(w) + np.float32(2 * l2) * w
    gd = put(ops, g)
    value = ops.l1l2_penalty(put(ops, w), gd, l1, l2)
    assert value == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(get(ops, gd), g_want, rtol=1e-6, atol=1e-7)
    assert ops.l1l2_penalty(put(ops, w), None, l1, l2) == value


def test_moments_below_the_smallest_normal_float_are_flushed_to_zero():
    """An Adam moment whose update falls below FLT_MIN is stored as 0, as TensorFlow's
    flush-to-zero mode does (a subnormal one would slow each later update of it ~100x), in
    the vector loop and its tail."""
    n = 101
    w = np.ones(n, np.float32)
    g = np.full(n, 2e-38, np.float32)      # normal; (1 - beta1) g and (1 - beta2) g^2 are not
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    CpuOps().adam_update(w, g, m, v, None, 0.01, 0.9, 0.999, 1e-7)
    assert not m.any() and not v.any()
    np.testing.assert_array_equal(w, 1.0)


def test_norms_and_penalties_do_not_depend_on_the_thread_count(rng):
    """The C sums split their input into fixed parts: the same norm (so the same clipped
    step) and penalty on one thread as on two."""
    from fastnn import _core
    w, g = f32(rng, 300_001), f32(rng, 300_001)
    results = []
    saved = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            step = np.zeros_like(g)
            CpuOps().optimizer_update(0, step, g, (None,), np.float32([0, 1, 0, 0]), 3, 1.0,
                                      [g.size])
            grad = g.copy()
            results.append((CpuOps().l1l2_penalty(w, None, 0.01, 0.02), step,
                            CpuOps().l1l2_penalty(w, grad, 0.01, 0.02), grad))
    finally:
        _core.set_num_threads(saved)
    assert results[0][0] == results[1][0] == results[0][2] == results[1][2]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][3], results[1][3])


def test_optimizer_update_and_penalty_refuse_bad_arguments(ops):
    w, g = put(ops, np.zeros(4, np.float32)), put(ops, np.zeros(4, np.float32))
    row = np.float32([0, 0.1, 0, 0])
    for args, match in (((99, w, g, (None,), row, 0, 0.0, [4]), "kind"),
                        ((0, w, g, (None,), row, 7, 1.0, [4]), "clip_mode"),
                        ((0, w, g, (None,), row, 2, 0.0, [4]), "limit"),
                        ((0, w, g, (None,), row, 2, float("nan"), [4]), "limit"),
                        ((0, w, g, (None,), row, 0, 0.0, [3]), "sizes"),
                        ((0, w, g, (None,), row[:3], 0, 0.0, [4]), "scalars"),
                        ((0, w, g, None, row, 0, 0.0, [4]), "slots"),
                        ((0, w, g, (None,), np.float32([0, 0.1, 0.9, 0]), 0, 0.0, [4]),
                         "slot")):
        with pytest.raises((TypeError, ValueError), match=match):
            ops.optimizer_update(*args)
    with pytest.raises((TypeError, ValueError), match="w"):
        ops.l1l2_penalty(None, None, 0.1, 0.1)
    with pytest.raises(ValueError, match="g"):
        ops.l1l2_penalty(w, put(ops, np.zeros(5, np.float32)), 0.1, 0.1)
    with pytest.raises(ValueError, match="l1"):
        ops.l1l2_penalty(w, None, -0.1, 0.1)


def test_cuda_optimizer_checks_buffers(cuda_ops):
    w = cuda_ops.alloc((4,))
    with pytest.raises(ValueError, match="g:"):
        cuda_ops.sgd_update(w, cuda_ops.alloc((3,)), None, 0.1, 0.0, False)
    with pytest.raises(ValueError, match="m:"):
        cuda_ops.adam_update(w, cuda_ops.alloc((4,)), cuda_ops.alloc((5,)), cuda_ops.alloc((4,)),
                             None, 0.1, 0.9, 0.999, 1e-7)


def test_launch_refuses_what_a_kernel_would_misread():
    x = np.zeros(4, np.float32)
    for bad in (0.5, 3, np.zeros(4), np.zeros((4, 4), np.float32).T):
        with pytest.raises(TypeError):
            cupy_backend._check_launch("k", 4, (x, bad))
    with pytest.raises(ValueError, match="at most"):
        cupy_backend._check_launch("k", 2**31, (x,))
    cupy_backend._check_launch("k", 4, (x, None, np.int32(1), np.float32(1.0)))


def test_to_numpy_and_asarray(ops):
    x = ops.asarray([[1, 2], [3, 4]])
    assert isinstance(x, ops.xp.ndarray) and x.dtype == np.float32
    back = ops.to_numpy(x)
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, [[1, 2], [3, 4]])


# ---- selection --------------------------------------------------------------------------------
def _fake_cupy(monkeypatch, available):
    """A stand-in `cupy` module: find_spec finds it and cuda.is_available() answers `available`
    (or raises it, when it is an exception)."""
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.__version__ = "0.0-fake"

    def is_available():
        if isinstance(available, Exception):
            raise available
        return available

    fake.cuda = types.SimpleNamespace(is_available=is_available)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


@pytest.fixture
def fresh_backend(monkeypatch):
    """get_ops() starts unselected; the previous backend comes back afterwards."""
    monkeypatch.setattr(backend, "_ops", None)
    monkeypatch.delenv("FASTNN_BACKEND", raising=False)
    return monkeypatch


@pytest.mark.parametrize("value,name", [("cpu", "cpu"), ("CPU", "cpu"), ("numpy", "numpy"),
                                        ("reference", "numpy")])
def test_fastnn_backend_variable(fresh_backend, value, name):
    fresh_backend.setenv("FASTNN_BACKEND", value)
    assert backend.get_ops().name == name


def test_unknown_backend_is_refused(fresh_backend):
    fresh_backend.setenv("FASTNN_BACKEND", "tpu")
    with pytest.raises(ValueError, match="'cpu', 'cuda', 'numpy'"):
        backend.get_ops()
    with pytest.raises(ValueError, match="tpu"):
        backend.set_backend("tpu")


def test_default_is_cpu_without_cupy(fresh_backend):
    import importlib.util
    real = importlib.util.find_spec
    fresh_backend.setattr(importlib.util, "find_spec",
                          lambda name, *a: None if name == "cupy" else real(name, *a))
    assert backend.get_ops().name == "cpu"
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        backend.set_backend("cuda")
    fresh_backend.setenv("FASTNN_BACKEND", "cuda")
    fresh_backend.setattr(backend, "_ops", None)
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        backend.get_ops()


@pytest.mark.parametrize("available", [False, RuntimeError("cudaErrorInsufficientDriver")])
def test_default_is_cpu_when_cupy_has_no_gpu(fresh_backend, available):
    _fake_cupy(fresh_backend, available)
    assert backend.get_ops().name == "cpu"
    with pytest.raises(RuntimeError, match="needs CuPy and an NVIDIA GPU: .*(no usable CUDA "
                                           "GPU|unusable)"):
        backend.set_backend("cuda")


def test_auto_picks_cuda_when_cupy_sees_a_gpu(fresh_backend):
    fake = _fake_cupy(fresh_backend, True)
    ops = backend.get_ops()         # the default: the GPU when CuPy sees one
    assert isinstance(ops, CupyOps) and ops.name == "cuda" and ops.xp is fake and ops.kernels
    fresh_backend.setattr(backend, "_ops", None)
    fresh_backend.setenv("FASTNN_BACKEND", "cpu")
    assert backend.get_ops().name == "cpu"
    fresh_backend.setattr(backend, "_ops", None)
    fresh_backend.setenv("FASTNN_BACKEND", "auto")
    assert backend.get_ops().name == "cuda"
    assert isinstance(backend.set_backend("cuda"), CupyOps)
    with backend.use_backend("cpu"):
        assert backend.get_ops().name == "cpu"
    assert backend.get_ops().name == "cuda"


def test_importing_fastnn_does_not_import_cupy(tmp_path):
    """A `cupy` that fails when imported sits first on the path: importing fastnn (and its GPU
    backend module) must not touch it, and the default backend falls back to the CPU."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise ImportError('cupy was imported')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(backend.__file__))))
    code = ("import sys, fastnn, fastnn.layers, fastnn.models, fastnn.backend.cupy\n"
            "assert 'cupy' not in sys.modules, 'imported'\n"
            "from fastnn.backend import get_ops\n"
            "print(get_ops().name)\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), root])
    # cwd=tmp_path: `python -c` puts the working directory first on sys.path, and a source
    # checkout there (without its compiled extension) must not shadow the fastnn under test.
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cpu"
