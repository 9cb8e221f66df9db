"""CupyOps: the reference Ops on an NVIDIA GPU through CuPy.

The reference (base.Ops) is written against `self.xp`, so with xp=cupy every op already runs on
the device; the hot ones are overridden here with cuBLAS and the CUDA kernels of kernels.cu,
compiled by NVRTC on first use (once per process; CuPy keeps the binary in its disk cache).

Each override does its argument handling (dtype, contiguity, shapes, output buffers) and then
either launches its kernel (`self.kernels`, true with CuPy) or, with xp=numpy on a machine
without a GPU, computes into the same buffers through the reference. Only `_launch` and
`_launch_gemm` need CUDA; tests/test_backends.py exercises everything else on any machine and
also runs kernels.cu itself, compiled for the CPU, through a stand-in `_launch`.
"""
import functools
import os

import numpy

from .. import activations as A
from .base import Ops, dilation

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cu")
_STAGING_BYTES = 64 << 20
_BLOCK = 256
_MAX_BLOCKS = 1 << 16
# int32 indices in the kernels: keep every array and every grid-stride index below 2**31.
MAX_ELEMENTS = 2**31 - 1 - _BLOCK * _MAX_BLOCKS

i32, f32 = numpy.int32, numpy.float32


@functools.cache
def _module():
    import cupy
    with open(_SOURCE, encoding="utf-8") as f:
        return cupy.RawModule(code=f.read(), options=("-std=c++14",))


@functools.cache
def _function(name, device_id):       # a loaded kernel belongs to one device
    return _module().get_function(name)


def _geom(x_shape, window):
    """The GEOM arguments of kernels.cu: h, w, c, kh, kw, sh, sw, pt, pl, oh, ow."""
    kh, kw, sh, sw, pt, pl, oh, ow = window
    return tuple(i32(v) for v in (x_shape[1], x_shape[2], x_shape[3], kh, kw, sh, sw, pt, pl,
                                  oh, ow))


def _conv_geom(x_shape, window):
    """The arguments of im2col/col2im in kernels.cu: GEOM, then the dilation dh, dw."""
    return _geom(x_shape, window[:8]) + tuple(i32(v) for v in dilation(window))


class CupyOps(Ops):
    name = "cuda"
    is_device = True

    def address(self, a):
        return a.data.ptr

    def __init__(self, xp=None, kernels=None):
        if xp is None:
            import cupy as xp
        self.xp = xp
        # CUDA kernels need CuPy arrays; kernels=False computes through the reference instead
        # (how tests run this class's logic on any array module).
        self.kernels = (xp is not numpy) if kernels is None else bool(kernels)
        self._device_rngs = {}
        self._ones = {}         # rows -> a (1, rows) vector of ones, for column sums

    # ---- the only CUDA-specific calls ------------------------------------------------------
    def _launch(self, kernel, n, *args):
        """Run kernels.cu's `kernel` over n work items. Arguments are arrays (C-contiguous,
        float32 or int32), None (a null pointer) or numpy.int32 / numpy.float32 scalars: a
        kernel has no type information, so a Python int or float would be passed wrongly."""
        _check_launch(kernel, n, args)
        if n == 0:
            return
        fn = _function(kernel, self.xp.cuda.runtime.getDevice())
        blocks = min((n + _BLOCK - 1) // _BLOCK, _MAX_BLOCKS)
        fn((blocks,), (_BLOCK,), (i32(n),) + args)

    def _launch_gemm(self, a, b, out, trans_a, trans_b, alpha, beta):
        import cupy.cublas
        cupy.cublas.gemm("T" if trans_a else "N", "T" if trans_b else "N", a, b, out=out,
                         alpha=alpha, beta=beta)

    # ---- memory ---------------------------------------------------------------------------
    def to_numpy(self, x):
        return numpy.asarray(x) if self.xp is numpy else self.xp.asnumpy(x)   # a .get()

    def asarray(self, x, dtype="float32"):
        """x on the device. Host arrays over 64 MiB cross in 64 MiB slices: CuPy stages a copy
        in pinned host memory the size of what crosses, and keeps that memory afterwards."""
        if not isinstance(x, numpy.ndarray) or x.nbytes <= _STAGING_BYTES or x.ndim == 0:
            return super().asarray(x, dtype)
        out = self.xp.empty(x.shape, dtype)
        rows = max(1, _STAGING_BYTES // max(1, x[:1].nbytes))
        for start in range(0, len(x), rows):
            out[start:start + rows] = super().asarray(x[start:start + rows], dtype)
        return out

    def free_memory(self):
        """Bytes the device can still give out (CuPy's pool included); None when unknown."""
        if not hasattr(self.xp, "cuda"):       # NumPy or a test stand-in
            return None
        free = self.xp.cuda.runtime.memGetInfo()[0]
        return free + self.xp.get_default_memory_pool().free_bytes()

    def _dev(self, a, dtype=numpy.float32):
        """a as a C-contiguous array of xp (the kernels index flat memory): no copy when it is
        one already; host data crosses to the device here."""
        if a is None:
            return None
        a = self.xp.asarray(a, dtype=dtype)
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    def _f32(self, a):
        return self._dev(a, numpy.float32)

    def _buf(self, out, shape, name, dtype=numpy.float32):
        """A new output buffer, or the caller's after checking it can be written flat."""
        shape = tuple(int(d) for d in shape)
        if out is None:
            return self.xp.empty(shape, dtype)
        if tuple(out.shape) != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous {numpy.dtype(dtype).name} array "
                             f"of shape {shape}, got {out.dtype} {tuple(out.shape)}"
                             f"{'' if out.flags.c_contiguous else ' (not contiguous)'}")
        return out

    def _erf(self, x):
        if not hasattr(self.xp, "cuda"):      # NumPy or a test stand-in: the reference's erf
            return super()._erf(x)
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)

    # ---- GEMM -----------------------------------------------------------------------------
    def gemm(self, a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        a, b = self._f32(a), self._f32(b)
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"gemm: a and b must be 2-D, got shapes {a.shape} and {b.shape}")
        m, k = a.shape[::-1] if trans_a else a.shape
        k2, n = b.shape[::-1] if trans_b else b.shape
        if k != k2:
            raise ValueError(f"gemm: inner dimensions differ: op(a) is ({m}, {k}), op(b) is "
                             f"({k2}, {n})")
        if out is None:
            out, beta = self.xp.empty((m, n), numpy.float32), 0.0
        elif tuple(out.shape) != (m, n) or out.dtype != numpy.float32:
            raise ValueError(f"gemm: out must be float32 of shape ({m}, {n}), got {out.dtype} "
                             f"{tuple(out.shape)}")
        if not self.kernels:
            return super().gemm(a, b, out, trans_a, trans_b, alpha, beta)
        if m and n and k:
            self._launch_gemm(a, b, out, trans_a, trans_b, alpha, beta)
        elif beta:              # an empty inner dimension: cuBLAS rejects its leading dims
            out *= f32(beta)
        else:
            out.fill(0)
        return out

    def column_sum(self, a, out=None):
        """Sums over the rows as one cuBLAS call: ones(1, rows) @ a."""
        a = self._f32(a)
        out = self._buf(out, a.shape[1:], "out")
        if not self.kernels:
            return super().column_sum(a, out=out)
        rows = a.shape[0]
        ones = self._ones.get(rows)
        if ones is None:
            ones = self._ones[rows] = self.xp.ones((1, rows), numpy.float32)
        self.gemm(ones, a, out=out.reshape(1, -1))
        return out

    # ---- activations and dense layers: bias and activation in one kernel -------------------
    def _act_launch(self, act, alpha, z, bias, y):
        if not 0 <= act <= A.SILU:
            raise ValueError(f"unknown activation id {act}")
        cols = z.shape[-1] if z.ndim else 1
        if act == A.SOFTMAX:
            self._launch("bias_act_forward_softmax", z.size // max(cols, 1), z, bias, i32(cols), y)
        else:
            self._launch("bias_act_forward", z.size, z, bias, i32(cols), i32(act), f32(alpha), y,
                         None, None, None, None, f32(0.0), None)

    def bias_act_forward(self, act, alpha, z, y=None, bias=None, norm=None, residual=None):
        if not self.kernels or act == A.SOFTMAX:
            return super().bias_act_forward(act, alpha, z, y=y, bias=bias, norm=norm,
                                            residual=residual)
        y = z if y is None else y
        mean = var = gamma = beta = None
        eps = 0.0
        if norm is not None:
            mean, var, gamma, beta, eps = norm
            mean, var, gamma, beta = (None if v is None else self._f32(v)
                                      for v in (mean, var, gamma, beta))
        if not 0 <= act <= A.SILU:
            raise ValueError(f"unknown activation id {act}")
        self._launch("bias_act_forward", z.size, z, self._f32(bias), i32(z.shape[-1]), i32(act),
                     f32(alpha), y, mean, var, gamma, beta, f32(eps),
                     None if residual is None else self._f32(residual))
        return y

    def act_forward(self, act, alpha, z, out=None):
        z = self._f32(z)
        y = self._buf(out, z.shape, "out")
        if not self.kernels:
            return super().act_forward(act, alpha, z, out=y)
        self._act_launch(act, alpha, z, None, y)
        return y

    def act_backward(self, act, alpha, z, y, dy, out=None):
        y, dy = self._f32(y), self._f32(dy)
        z = self._f32(z) if act in A.NEEDS_INPUT else None
        dz = self._buf(out, dy.shape, "out")
        if not self.kernels:
            return super().act_backward(act, alpha, z, y, dy, out=dz)
        if not 0 <= act <= A.SILU:
            raise ValueError(f"unknown activation id {act}")
        if act == A.SOFTMAX:
            cols = dy.shape[-1]
            self._launch("act_backward_softmax", dy.size // max(cols, 1), y, dy, i32(cols), dz)
        else:
            self._launch("act_backward", dy.size, z, y, dy, i32(act), f32(alpha), dz)
        return dz

    def dense_forward(self, x, kernel, bias, act, alpha, z=None, y=None, training=False,
                      norm=None, residual=None):
        if not self.kernels or norm is not None or residual is not None:
            return super().dense_forward(x, kernel, bias, act, alpha, z=z, y=y, norm=norm,
                                         residual=residual)
        z = self.gemm(x, kernel, out=z)
        y = self._buf(y, z.shape, "y")
        self._act_launch(act, alpha, z, self._f32(bias), y)
        return z, y

    # ---- convolution and pooling ----------------------------------------------------------
    def im2col(self, x, window, out=None):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        x = self._f32(x)
        out = self._buf(out, (x.shape[0] * oh * ow, kh * kw * x.shape[3]), "out")
        if not self.kernels:
            return super().im2col(x, window, out=out)
        self._launch("im2col", out.size, x, out, *_conv_geom(x.shape, window))
        return out

    def col2im(self, cols, window, x_shape, out=None):
        cols = self._f32(cols)
        out = self._buf(out, x_shape, "out")
        if not self.kernels:
            return super().col2im(cols, window, x_shape, out=out)
        self._launch("col2im", out.size, cols, out, *_conv_geom(x_shape, window))
        return out

    def maxpool_forward(self, x, window, y=None, argmax=None):
        x = self._f32(x)
        shape = (x.shape[0], window[6], window[7], x.shape[3])
        y = self._buf(y, shape, "y")
        argmax = self._buf(argmax, shape, "argmax", numpy.int32)
        if not self.kernels:
            return super().maxpool_forward(x, window, y=y, argmax=argmax)
        self._launch("maxpool_forward", y.size, x, y, argmax, *_geom(x.shape, window))
        return y, argmax

    def maxpool_backward(self, dy, argmax, window, x_shape, dx=None):
        dy = self._f32(dy)
        argmax = self._dev(argmax, numpy.int32)
        dx = self._buf(dx, x_shape, "dx")
        if not self.kernels:
            return super().maxpool_backward(dy, argmax, window, x_shape, dx=dx)
        self._launch("maxpool_backward", dx.size, dy, argmax, dx, *_geom(x_shape, window))
        return dx

    # ---- embedding ------------------------------------------------------------------------
    def embedding_forward(self, table, ids, out=None, where="Embedding"):
        table = self._f32(table)
        flat = ids.reshape(-1)
        out = self._buf(out, (flat.size, table.shape[1]), "out")
        if not self.kernels:
            return super().embedding_forward(table, flat, out, where)
        self._bad_index(flat, table.shape[0], where)
        self._launch("embedding_forward", out.size, table, self._dev(flat, numpy.int32),
                     i32(table.shape[1]), out)
        return out

    def embedding_backward(self, ids, dy, d_table, clear=None, where="Embedding"):
        """Deterministic, without atomics: the indices sorted stably into one segment per row,
        each (row, column) summed by one thread in the rows' order (kernels.cu)."""
        if not self.kernels:
            return super().embedding_backward(ids, dy, d_table, clear, where)
        xp, flat = self.xp, self._dev(ids.reshape(-1), numpy.int32)
        rows, dim = d_table.shape
        self._bad_index(flat, rows, where)
        if clear is None:
            d_table.fill(0)
        elif clear.size:
            d_table[clear.reshape(-1)] = 0
        if not flat.size:
            return d_table
        order = xp.argsort(flat, kind="stable").astype(numpy.int32)
        ordered = flat[order]
        starts = xp.flatnonzero(ordered[1:] != ordered[:-1]).astype(numpy.int32) + 1
        bounds = xp.concatenate([xp.zeros(1, numpy.int32), starts,
                                 xp.full(1, flat.size, numpy.int32)]).astype(numpy.int32)
        seg_rows = xp.ascontiguousarray(ordered[bounds[:-1]])
        self._launch("embedding_backward", (len(bounds) - 1) * dim, order, bounds, seg_rows,
                     self._f32(dy).reshape(flat.size, dim), i32(dim), d_table)
        return d_table

    # ---- batch normalization --------------------------------------------------------------
    def _column_sums(self, x, dy, center, scale=1.0):
        """Per-channel (sum a, sum b) * scale of kernels.cu's batchnorm_partials, reduced over its
        chunks."""
        rows, c = x.shape
        chunks = max(1, min(rows, 1024, 65536 // max(c, 1)))    # fixed by shape: deterministic
        part = self.xp.empty((2, chunks, c), numpy.float32)
        self._launch("batchnorm_partials", chunks * c, x, dy, center, i32(rows), i32(c), f32(scale),
                     part[0], part[1])
        return part.sum(axis=1)

    def batchnorm_stats(self, x, mean=None, var=None):
        x = self._f32(x)
        mean = self._buf(mean, x.shape[1:], "mean")
        var = self._buf(var, x.shape[1:], "var")
        if not self.kernels:
            return super().batchnorm_stats(x, mean, var)
        rows = x.shape[0]
        # two passes (no cancellation), each partial already divided by rows (no overflow
        # for a variance near float32's limit)
        mean[...] = self._column_sums(x, None, None, 1.0 / rows)[0]
        var[...] = self._column_sums(x, None, mean, 1.0 / rows)[1]
        return mean, var

    def batchnorm_apply(self, x, mean, var, gamma, beta, eps, out=None):
        x = self._f32(x)
        out = self._buf(out, x.shape, "out")
        if not self.kernels:
            return super().batchnorm_apply(x, mean, var, gamma, beta, eps, out=out)
        f = self._f32
        self._launch("batchnorm_apply", x.size, x, f(mean), f(var), f(gamma), f(beta), f32(eps),
                     i32(x.shape[1]), out)
        return out

    def batchnorm_backward(self, x, dy, mean, var, gamma, eps, dx=None, d_gamma=None,
                           d_beta=None):
        x, dy = self._f32(x), self._f32(dy)
        dx = self._buf(dx, x.shape, "dx")
        if not self.kernels:
            return super().batchnorm_backward(x, dy, mean, var, gamma, eps, dx=dx,
                                              d_gamma=d_gamma, d_beta=d_beta)
        mean, var = self._f32(mean), self._f32(var)
        sum_dy, sum_dy_xc = self._column_sums(x, dy, mean)      # before dx overwrites dy
        if d_gamma is not None:
            d_gamma[...] = sum_dy_xc / self.xp.sqrt(var + f32(eps))
        if d_beta is not None:
            d_beta[...] = sum_dy
        self._launch("batchnorm_backward", x.size, x, dy, mean, var, self._f32(gamma), sum_dy,
                     sum_dy_xc, f32(eps), i32(x.shape[0]), i32(x.shape[1]), dx)
        return dx

    # ---- losses ---------------------------------------------------------------------------
    def _loss_args(self, probs, targets, weights, grad):
        probs, weights = self._f32(probs), self._f32(weights)
        rows = probs.shape[0]
        if weights is not None and tuple(weights.shape) != (rows,):
            raise ValueError(f"weights: expected ({rows},), got {tuple(weights.shape)}")
        if grad is not None:
            self._buf(grad, probs.shape, "grad")
        targets = None if targets is None else self._f32(targets)
        if targets is not None and targets.shape != probs.shape:
            raise ValueError(f"targets: expected {tuple(probs.shape)}, got "
                             f"{tuple(targets.shape)}")
        return probs, targets, weights

    def _total(self, row_loss):
        return row_loss.astype(numpy.float64).sum()     # stays on the device: no sync

    def softmax_xent_sparse(self, probs, labels, weights, scale, grad=None):
        xp = self.xp
        probs, _, weights = self._loss_args(probs, None, weights, grad)
        rows, cols = probs.shape
        if isinstance(labels, numpy.ndarray) and rows and labels.size and \
                (labels.min() < 0 or labels.max() >= cols):
            # Checked here only while on the host: on the device it would cost a sync per
            # batch; there an out-of-range label makes its row's loss NaN (kernels.cu).
            raise ValueError(f"labels must be integers in [0, {cols})")
        labels = self._dev(labels, numpy.int32)
        if labels.shape != (rows,):
            raise ValueError(f"labels: expected ({rows},), got {labels.shape}")
        if not self.kernels:
            return super().softmax_xent_sparse(probs, labels, weights, scale, grad)
        row_loss = xp.empty(rows, numpy.float32)
        self._launch("softmax_xent_sparse_rows", rows, probs, labels, weights, i32(cols), row_loss)
        if grad is not None:
            self._launch("softmax_xent_sparse_grad", probs.size, probs, labels, weights, f32(scale),
                         i32(cols), grad)
        return self._total(row_loss)

    def softmax_xent_dense(self, probs, targets, weights, scale, grad=None):
        probs, targets, weights = self._loss_args(probs, targets, weights, grad)
        if not self.kernels:
            return super().softmax_xent_dense(probs, targets, weights, scale, grad)
        rows, cols = probs.shape
        per_row = self.xp.empty((2, rows), numpy.float32)
        row_loss, row_tsum = per_row[0], per_row[1]
        self._launch("softmax_xent_dense_rows", rows, probs, targets, weights, i32(cols), row_loss,
                     row_tsum)
        if grad is not None:
            self._launch("softmax_xent_dense_grad", probs.size, probs, targets, row_tsum, weights,
                         f32(scale), i32(cols), grad)
        return self._total(row_loss)

    def sigmoid_bxent(self, probs, targets, weights, scale, grad=None):
        probs, targets, weights = self._loss_args(probs, targets, weights, grad)
        if not self.kernels:
            return super().sigmoid_bxent(probs, targets, weights, scale, grad)
        rows, cols = probs.shape
        row_loss = self.xp.empty(rows, numpy.float32)
        self._launch("sigmoid_bxent_rows", rows, probs, targets, weights, i32(cols), row_loss)
        if grad is not None:
            self._launch("sigmoid_bxent_grad", probs.size, probs, targets, weights,
                         f32(scale / cols), i32(cols), grad)
        return self._total(row_loss)

    # ---- random numbers -------------------------------------------------------------------
    def random_uniform(self, rng, out):
        """Fill out with uniform [0, 1) floats from a device generator that the host generator
        rng seeds on first use: reproducible under set_random_seed, with no host copy."""
        entry = self._device_rngs.get(id(rng))
        if entry is None or entry[0] is not rng:        # keep rng: its id stays unique
            seed = int(rng.integers(2**63))
            entry = self._device_rngs[id(rng)] = (rng, self.xp.random.default_rng(seed))
        out = self._buf(out, out.shape, "out")
        entry[1].random(out.shape, numpy.float32, out=out)
        return out

    # ---- optimizer updates ----------------------------------------------------------------
    def _state(self, w, **arrays):
        """Check that w and its state buffers are flat-writable float32 of one shape."""
        self._buf(w, w.shape, "w")
        for name, a in arrays.items():
            if a is not None:
                self._buf(a, w.shape, name)

    def sgd_update(self, w, g, m, lr, momentum, nesterov):
        g = self._f32(g)
        self._state(w, g=g, m=m)
        if not self.kernels:
            return super().sgd_update(w, g, m, lr, momentum, nesterov)
        self._launch("sgd_update", w.size, w, g, m, f32(lr), f32(momentum), i32(bool(nesterov)))

    def adam_update(self, w, g, m, v, vmax, alpha, beta1, beta2, eps):
        g = self._f32(g)
        self._state(w, g=g, m=m, v=v, vmax=vmax)
        if not self.kernels:
            return super().adam_update(w, g, m, v, vmax, alpha, beta1, beta2, eps)
        self._launch("adam_update", w.size, w, g, m, v, vmax, f32(alpha), f32(1 - beta1),
                     f32(1 - beta2), f32(eps))

    def rmsprop_update(self, w, g, v, mom, mg, lr, rho, momentum, eps):
        g = self._f32(g)
        self._state(w, g=g, v=v, mom=mom, mg=mg)
        if not self.kernels:
            return super().rmsprop_update(w, g, v, mom, mg, lr, rho, momentum, eps)
        self._launch("rmsprop_update", w.size, w, g, v, mom, mg, f32(lr), f32(rho),
                     f32(1 - rho), f32(momentum), f32(eps))

    def lion_update(self, w, g, m, lr, beta1, beta2):
        g = self._f32(g)
        self._state(w, g=g, m=m)
        if not self.kernels:
            return super().lion_update(w, g, m, lr, beta1, beta2)
        self._launch("lion_update", w.size, w, g, m, f32(lr), f32(beta1), f32(beta2))


def _check_launch(kernel, n, args):
    """Refuse what a kernel would misread: sizes past int32, Python scalars, strided arrays."""
    if n > MAX_ELEMENTS:
        raise ValueError(f"{kernel}: {n} work items; the CUDA backend handles at most "
                         f"{MAX_ELEMENTS} per op (int32 indices)")
    for k, a in enumerate(args):
        if a is None or type(a) in (numpy.int32, numpy.float32):
            continue
        if not hasattr(a, "flags") or not a.flags.c_contiguous or \
                a.dtype not in (numpy.float32, numpy.int32) or a.size > MAX_ELEMENTS:
            raise TypeError(f"{kernel}: argument {k} must be a C-contiguous float32/int32 "
                            f"array of under 2**31 elements, None, numpy.int32 or "
                            f"numpy.float32; got {type(a).__name__}")
