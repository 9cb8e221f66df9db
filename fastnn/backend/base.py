"""The NumPy reference backend: the specification of every op.

Every method is written against `self.xp` so the same code runs on NumPy and CuPy. Fast backends
subclass `Ops`, override hot methods with the same signature, and must agree with these results
within float32 tolerance (tests/test_ops.py checks each one).

Conventions: float32 arrays; `out=` arguments are written in place and returned; activations are
given by integer id (fastnn.activations.ID) plus a float parameter `alpha` (the negative slope of
leaky_relu, the alpha of elu).
"""
import math
import numbers

import numpy

from .. import activations as A

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
EPSILON = 1e-7


# ---- the recurrent ops' boundary: checked once per sequence (cheap next to the steps) -------
_RNN_GATES = {"simple": 1, "lstm": 4, "gru": 3}
RNN_CACHE_KEYS = frozenset({"x", "hs", "cs", "pre", "gates", "extra", "mask", "two",
                            "rec_mask"})


def _rnn_array(a, name, shape, required=True, dtype_kind="f"):
    if a is None:
        if required:
            raise TypeError(f"{name}: expected an array of shape {shape}, got None")
        return
    got = getattr(a, "shape", None)
    if got is None or getattr(a, "dtype", None) is None:
        raise TypeError(f"{name}: expected an array of shape {shape}, got {type(a).__name__}")
    if a.dtype.kind != dtype_kind:
        raise TypeError(f"{name}: expected a {'float32' if dtype_kind == 'f' else 'bool'} "
                        f"array, got dtype {a.dtype}")
    if tuple(got) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(got)}")


def rnn_sizes(cell, x, kernel, recurrent, act, rec_act):
    """Checks what rnn_forward and rnn_backward share; returns (steps, batch, d_in, units,
    gates * units)."""
    if not isinstance(cell, str) or cell not in _RNN_GATES:
        raise ValueError(f"cell: expected one of {sorted(_RNN_GATES)}, got {cell!r}")
    for name, a in (("act", act), ("rec_act", rec_act)):
        if not isinstance(a, (tuple, list)) or len(a) != 2 or \
                not isinstance(a[0], numbers.Integral):
            raise TypeError(f"{name}: expected an (activation id, alpha) pair, got {a!r}")
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"x: expected a (steps, batch, features) array, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    units = getattr(recurrent, "shape", (0,))[0]
    gu = _RNN_GATES[cell] * units
    _rnn_array(recurrent, "recurrent", (units, gu))
    steps, batch, d_in = x.shape
    _rnn_array(x, "x", x.shape)
    _rnn_array(kernel, "kernel", (d_in, gu))
    return steps, batch, d_in, units, gu


def rnn_bias_shape(cell, gu, reset_after):
    return (2, gu) if cell == "gru" and reset_after else (gu,)


def rnn_check_forward(cell, x, kernel, recurrent, bias, h0, c0, mask, act, rec_act,
                      reset_after, rec_mask):
    steps, batch, d_in, units, gu = rnn_sizes(cell, x, kernel, recurrent, act, rec_act)
    _rnn_array(bias, "bias", rnn_bias_shape(cell, gu, reset_after), False)
    _rnn_array(h0, "h0", (batch, units))
    if cell == "lstm":
        _rnn_array(c0, "c0", (batch, units))
    _rnn_array(mask, "mask", (steps, batch), False, "b")
    _rnn_array(rec_mask, "rec_mask", (batch, units), False)


def rnn_check_backward(cell, cache, keys, dy, dh_t, dc_t, kernel, recurrent, d_kernel,
                       d_recurrent, d_bias, act, rec_act, reset_after):
    if not isinstance(cache, dict) or not keys <= cache.keys():
        raise TypeError(f"cache: expected the dict rnn_forward returned (keys "
                        f"{sorted(keys)}), got {type(cache).__name__}"
                        + (f" with keys {sorted(cache)}" if isinstance(cache, dict) else ""))
    steps, batch, d_in, units, gu = rnn_sizes(cell, cache["x"], kernel, recurrent, act,
                                              rec_act)
    _rnn_array(dy, "dy", (steps, batch, units), False)
    _rnn_array(dh_t, "dh_t", (batch, units), False)
    if cell == "lstm":
        _rnn_array(dc_t, "dc_t", (batch, units), False)
    _rnn_array(d_kernel, "d_kernel", (d_in, gu))
    _rnn_array(d_recurrent, "d_recurrent", (units, gu))
    _rnn_array(d_bias, "d_bias", rnn_bias_shape(cell, gu, reset_after), False)


def pointwise(window):
    """Whether a convolution window is 1x1 with stride 1 and no padding: its im2col matrix
    is the input itself (a 1x1 kernel's dilation does not matter).

    Args:
        window: A convolution window tuple.

    Returns:
        A bool.
    """
    return tuple(window[:6]) == (1, 1, 1, 1, 0, 0)


def dilation(window):
    """A convolution window's dilation (dh, dw): a window of 10 entries ends with it, one of 8
    (every pooling window, and an undilated convolution's) has none, i.e. (1, 1).

    Args:
        window: A convolution window tuple (8 or 10 entries).

    Returns:
        A pair `(dh, dw)`.
    """
    return (window[8], window[9]) if len(window) == 10 else (1, 1)


class Ops:
    name = "numpy"
    xp = numpy
    is_device = False       # arrays of xp live apart from the host's (a GPU): data must cross

    # ---- memory ---------------------------------------------------------------------------
    def alloc(self, shape, dtype="float32"):
        return self.xp.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype="float32"):
        return self.xp.empty(shape, dtype=dtype)

    def arena(self, n, fill=0.0):
        """A flat float32 buffer of n values (all `fill`) that the optimizer's update streams
        through together with others of its kind: the parameters, their gradients, the
        optimizer's slots."""
        return self.xp.full((n,), fill, dtype="float32")

    def address(self, a):
        """Where an array's data starts in memory (a view of a buffer's start shares it)."""
        return a.__array_interface__["data"][0]

    def asarray(self, x, dtype="float32"):
        a = self.xp.asarray(x, dtype=dtype)
        # (ascontiguousarray would make a 0-d array 1-d)
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    def to_numpy(self, x):
        return numpy.asarray(x)

    def free_memory(self):
        """Bytes the backend's memory can still give out; None: not tracked (host memory)."""
        return None

    def _out(self, out, like, shape=None):
        return self.xp.empty(like.shape if shape is None else shape, "float32") if out is None \
            else out

    # ---- GEMM -----------------------------------------------------------------------------
    def gemm(self, a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        """out = alpha * op(a) @ op(b) + beta * out (row-major; op transposes when asked)."""
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        res = alpha * (a @ b)
        if out is None:
            return res.astype("float32", copy=False)
        if beta:
            res += beta * out
        out[...] = res
        return out

    # ---- activations ----------------------------------------------------------------------
    def act_forward(self, act, alpha, z, out=None):
        xp = self.xp
        y = self._out(out, z)
        if act == A.LINEAR:
            y[...] = z
        elif act == A.RELU:
            xp.maximum(z, 0, out=y)
        elif act == A.SIGMOID:
            y[...] = 0.5 * (1.0 + xp.tanh(0.5 * z))
        elif act == A.TANH:
            xp.tanh(z, out=y)
        elif act == A.SOFTMAX:
            e = xp.exp(z - z.max(axis=-1, keepdims=True))
            y[...] = e / e.sum(axis=-1, keepdims=True)
        elif act == A.SOFTPLUS:
            y[...] = xp.logaddexp(z, 0.0)
        elif act == A.SOFTSIGN:
            y[...] = z / (1.0 + xp.abs(z))
        elif act == A.SELU:
            y[...] = _SELU_SCALE * xp.where(z > 0, z, _SELU_ALPHA * xp.expm1(xp.minimum(z, 0)))
        elif act == A.ELU:
            y[...] = xp.where(z > 0, z, alpha * xp.expm1(xp.minimum(z, 0)))
        elif act == A.EXPONENTIAL:
            xp.exp(z, out=y)
        elif act == A.LEAKY_RELU:
            y[...] = xp.where(z > 0, z, alpha * z)
        elif act == A.GELU:
            y[...] = 0.5 * z * (1.0 + self._erf(z / numpy.sqrt(2.0)))
        elif act == A.SILU:
            y[...] = z * (0.5 * (1.0 + xp.tanh(0.5 * z)))
        else:
            raise ValueError(f"unknown activation id {act}")
        return y

    def act_backward(self, act, alpha, z, y, dy, out=None):
        """dz = dy * act'(z). z is needed only where A.NEEDS_INPUT says so (else may be None)."""
        xp = self.xp
        dz = self._out(out, dy)
        if act == A.LINEAR:
            dz[...] = dy
        elif act == A.RELU:
            dz[...] = xp.where(y > 0, dy, 0)
        elif act == A.SIGMOID:
            dz[...] = dy * y * (1 - y)
        elif act == A.TANH:
            dz[...] = dy * (1 - y * y)
        elif act == A.SOFTMAX:
            dz[...] = y * (dy - (dy * y).sum(axis=-1, keepdims=True))
        elif act == A.SOFTPLUS:
            dz[...] = dy * (0.5 * (1.0 + xp.tanh(0.5 * z)))
        elif act == A.SOFTSIGN:
            dz[...] = dy * (1 - xp.abs(y)) ** 2
        elif act == A.SELU:
            dz[...] = dy * xp.where(y > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA)
        elif act == A.ELU:
            dz[...] = dy * xp.where(y > 0, 1.0, y + alpha)
        elif act == A.EXPONENTIAL:
            dz[...] = dy * y
        elif act == A.LEAKY_RELU:
            dz[...] = dy * xp.where(y > 0, 1.0, alpha)
        elif act == A.GELU:
            cdf = 0.5 * (1.0 + self._erf(z / numpy.sqrt(2.0)))
            dz[...] = dy * (cdf + z * xp.exp(-0.5 * z * z) / numpy.sqrt(2 * numpy.pi))
        elif act == A.SILU:
            s = 0.5 * (1.0 + xp.tanh(0.5 * z))
            dz[...] = dy * s * (1 + z * (1 - s))
        else:
            raise ValueError(f"unknown activation id {act}")
        return dz

    def _erf(self, x):
        import scipy.special
        return self.xp.asarray(scipy.special.erf(self.to_numpy(x)))

    # ---- dense ----------------------------------------------------------------------------
    def column_sum(self, a, out=None):
        res = a.sum(axis=0)
        if out is None:
            return res.astype("float32", copy=False)
        out[...] = res
        return out

    def bias_act_forward(self, act, alpha, z, y=None, bias=None, norm=None, residual=None):
        """The epilogue of a GEMM's output z (rows, cols), each part optional: z += bias;
        z = BatchNormalization of z with inference statistics norm = (mean, var, gamma, beta,
        eps) (gamma, beta may be None); z += residual; y = act(z) (y may be z). The arithmetic
        and order of the separate layers, in one pass over z. Returns y."""
        if bias is not None:
            z += bias
        if norm is not None:
            mean, var, gamma, beta, eps = norm
            self.batchnorm_apply(z, mean, var, gamma, beta, eps, out=z)
        if residual is not None:
            z += residual
        return self.act_forward(act, alpha, z, out=z if y is None else y)

    def dense_forward(self, x, kernel, bias, act, alpha, z=None, y=None, training=False,
                      norm=None, residual=None):
        """z = x @ kernel + bias, y = act(z). Returns (z, y); y may be the same array as z.
        training lets a backend split the GEMM the way the backward pass will (CpuOps).
        Inference may fold the layers after it into the epilogue (bias_act_forward): norm, a
        BatchNormalization's (mean, var, gamma, beta, eps), and residual, an Add's other
        input, both applied before the activation."""
        z = self.gemm(x, kernel, out=z)
        y = self.bias_act_forward(act, alpha, z, y=self.xp.empty_like(z) if y is None else y,
                                  bias=bias, norm=norm, residual=residual)
        return z, y

    def dense_backward(self, x, kernel, z, y, dy, act, alpha, d_kernel, d_bias, dx=None,
                       dz=None, kernel_step=0.0):
        """Writes d_kernel and d_bias; returns dx (None when dx is not wanted: pass dx=False).
        kernel_step > 0: the kernel takes the plain SGD step kernel -= kernel_step * x^T dz
        in place (after dx used it as it was) and d_kernel is not written."""
        dz = self.act_backward(act, alpha, z, y, dy, out=dz)
        if d_bias is not None:
            self.column_sum(dz, out=d_bias)
        dx = None if dx is False else self.gemm(dz, kernel, out=dx, trans_b=True)
        if kernel_step:
            self.gemm(x, dz, out=kernel, trans_a=True, alpha=-kernel_step, beta=1.0)
        else:
            self.gemm(x, dz, out=d_kernel, trans_a=True)
        return dx

    # ---- convolution (im2col + the dense ops), pooling, batch normalization -----------------
    # A window is (kh, kw, sh, sw, pad_top, pad_left, oh, ow), for a dilated convolution
    # followed by (dh, dw): tap (ky, kx) of output (oy, ox) reads padded pixel
    # (oy * sh + ky * dh, ox * sw + kx * dw). Images are NHWC.
    def _padded(self, x, window, fill):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        dh, dw = dilation(window)
        n, h, w, c = x.shape
        # extent the windows reach
        ph, pw = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
        xp = self.xp.full((n, max(ph, h + pt), max(pw, w + pl), c), fill, dtype=x.dtype)
        xp[:, pt:pt + h, pl:pl + w] = x
        return xp

    def _taps(self, window):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        dh, dw = dilation(window)
        for ky in range(kh):
            for kx in range(kw):
                y0, x0 = ky * dh, kx * dw
                yield ky, kx, (slice(None), slice(y0, y0 + (oh - 1) * sh + 1, sh),
                               slice(x0, x0 + (ow - 1) * sw + 1, sw))

    def im2col(self, x, window, out=None):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        n, c = x.shape[0], x.shape[3]
        xp = self._padded(x, window, 0.0)
        cols = self.xp.empty((n, oh, ow, kh, kw, c), x.dtype)
        for ky, kx, sl in self._taps(window):
            cols[:, :, :, ky, kx, :] = xp[sl]
        cols = cols.reshape(n * oh * ow, kh * kw * c)
        if out is None:
            return cols
        out[...] = cols
        return out

    def col2im(self, cols, window, x_shape, out=None):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        n, h, w, c = x_shape
        acc = self._padded(self.xp.zeros(x_shape, cols.dtype), window, 0.0)
        cols = cols.reshape(n, oh, ow, kh, kw, c)
        for ky, kx, sl in self._taps(window):
            acc[sl] += cols[:, :, :, ky, kx, :]
        res = acc[:, pt:pt + h, pl:pl + w]
        if out is None:
            return self.xp.ascontiguousarray(res)
        out[...] = res
        return out

    def winograd_work(self, x_shape, window, filters):
        """Floats of scratch with which conv2d_forward(work=...) runs this convolution (one
        group) by Winograd's F(2x2, 3x3), for inference; 0 where this backend does not or it
        would not pay."""
        return 0

    def conv2d_forward(self, x, kernel, bias, act, alpha, window, cols=None, z=None, y=None,
                       norm=None, residual=None, groups=1, work=None):
        """z = im2col(x) @ kernel(kh*kw*c, filters) + bias; y = act(z). Returns (cols, z, y)
        with z, y as (n*oh*ow, filters). A pointwise window's im2col is x itself: no copy.
        norm, residual: as dense_forward's. groups > 1: kernel is (kh*kw*c/groups, filters),
        z the block-diagonal product and cols the groups' im2col blocks (_grouped_forward).
        work: winograd_work's scratch (cols is then not written)."""
        if work is not None:
            raise ValueError("conv2d_forward: work: this backend has no Winograd convolution "
                             "(its winograd_work is 0)")
        if groups != 1:
            cols, z = self._grouped_forward(x, kernel.reshape(-1, kernel.shape[-1]), window,
                                            groups, cols=cols, z=z)
            y = self.bias_act_forward(act, alpha, z, y=self.xp.empty_like(z) if y is None else y,
                                      bias=bias, norm=norm, residual=residual)
            return cols, z, y
        if pointwise(window) and x.flags.c_contiguous:
            cols = x.reshape(-1, x.shape[-1])
        else:
            cols = self.im2col(x, window, out=cols)
        z, y = self.dense_forward(cols, kernel.reshape(-1, kernel.shape[-1]), bias, act, alpha,
                                  z=z, y=y, norm=norm, residual=residual)
        return cols, z, y

    def conv2d_backward(self, cols, kernel, z, y, dy, act, alpha, window, x_shape, d_kernel,
                        d_bias, dx=None, dcols=None, groups=1):
        """dy is (n*oh*ow, filters) and may be overwritten. Writes d_kernel, d_bias; returns dx
        (None when dx=False). A pointwise window's gradient goes straight into dx."""
        filters = kernel.shape[-1]
        if groups != 1:
            dz = self.act_backward(act, alpha, z, y, dy, out=dy)
            if d_bias is not None:
                self.column_sum(dz, out=d_bias)
            return self._grouped_backward(cols, kernel.reshape(-1, filters), dz, window,
                                          groups, x_shape, d_kernel.reshape(-1, filters),
                                          dx=dx, dcols=dcols)
        direct = pointwise(window) and dx is not False
        if direct:
            dx = self.empty(x_shape) if dx is None else dx
            dcols = dx.reshape(-1, x_shape[-1])
        dcols = self.dense_backward(cols, kernel.reshape(-1, filters), z, y, dy, act, alpha,
                                    d_kernel.reshape(-1, filters), d_bias,
                                    dx=False if dx is False else dcols, dz=dy)
        if dx is False:
            return None
        # (a backend may return its own array rather than fill the one it was given)
        return dcols.reshape(x_shape) if direct else self.col2im(dcols, window, x_shape,
                                                                 out=dx)

    # A grouped convolution: the channels split into `groups` equal blocks, each convolved
    # with its own filters, so the GEMM is block-diagonal. It runs group by group on this
    # backend's im2col/GEMM/col2im: the input's channels are regrouped once into
    # (groups, n, h, w, c/groups), and cols (rows, taps*c) holds the groups' im2col blocks
    # (rows, taps*c/groups) one after another, so every GEMM reads and writes whole matrices.
    def _group_major(self, x, groups):
        n, h, w, c = x.shape
        return self.xp.ascontiguousarray(
            x.reshape(n, h, w, groups, c // groups).transpose(3, 0, 1, 2, 4))

    def _group_kernels(self, kernel, groups):
        """(taps*c/groups, filters) -> (groups, taps*c/groups, filters/groups), a copy."""
        f_g = kernel.shape[1] // groups
        return self.xp.ascontiguousarray(kernel.reshape(-1, groups, f_g).transpose(1, 0, 2))

    def _grouped_forward(self, x, kernel, window, groups, cols=None, z=None):
        """Returns (cols, z) with z (rows, filters) = the block-diagonal product."""
        n = x.shape[0]
        rows, filters = n * window[6] * window[7], kernel.shape[1]
        taps_c_g = kernel.shape[0]
        f_g = filters // groups
        xg, kg = self._group_major(x, groups), self._group_kernels(kernel, groups)
        cols = self._out(cols, x, (rows, taps_c_g * groups))
        c3 = cols.reshape(groups, rows, taps_c_g)
        z3 = self.xp.empty((groups, rows, f_g), "float32")
        for g in range(groups):
            self.im2col(xg[g], window, out=c3[g])
            self.gemm(c3[g], kg[g], out=z3[g])
        z = self._out(z, x, (rows, filters))
        z.reshape(rows, groups, f_g)[...] = z3.transpose(1, 0, 2)
        return cols, z

    def _grouped_backward(self, cols, kernel, dz, window, groups, x_shape, d_kernel, dx=None,
                          dcols=None):
        """For _grouped_forward: writes d_kernel (taps*c/groups, filters); returns dx, or None
        when dx is False."""
        xp = self.xp
        n, h, w, c = x_shape
        rows, filters = dz.shape
        taps_c_g, f_g, c_g = kernel.shape[0], filters // groups, c // groups
        c3 = cols.reshape(groups, rows, taps_c_g)
        dz3 = xp.ascontiguousarray(dz.reshape(rows, groups, f_g).transpose(1, 0, 2))
        dk3 = xp.empty((groups, taps_c_g, f_g), "float32")
        for g in range(groups):
            self.gemm(c3[g], dz3[g], out=dk3[g], trans_a=True)
        d_kernel.reshape(-1, groups, f_g)[...] = dk3.transpose(1, 0, 2)
        if dx is False:
            return None
        kg = self._group_kernels(kernel, groups)
        dc3 = self._out(dcols, cols, cols.shape).reshape(groups, rows, taps_c_g)
        dxg = xp.empty((groups, n, h, w, c_g), "float32")
        for g in range(groups):
            self.gemm(dz3[g], kg[g], out=dc3[g], trans_b=True)
            self.col2im(dc3[g], window, (n, h, w, c_g), out=dxg[g])
        dx = self._out(dx, cols, x_shape)
        dx.reshape(n, h, w, groups, c_g)[...] = dxg.transpose(1, 2, 3, 0, 4)
        return dx

    # A transposed convolution is the gradient of the convolution `window` from its output y
    # (n, oh, ow, filters) to its input x (n, h, w, c), the window's output size being (h, w):
    # forward is that convolution's backward pass (a GEMM, then col2im), backward its forward
    # pass (im2col, then GEMMs). kernel is Keras's (kh, kw, filters, c) as (kh*kw*filters, c).
    def conv2d_transpose_forward(self, x, kernel, bias, act, alpha, window, y_shape, cols=None,
                                 z=None, y=None):
        """z = col2im(x @ kernel^T) + bias, y = act(z), both (n*oh*ow, filters) for y_shape
        (n, oh, ow, filters). Returns (z, y); cols (n*h*w, kh*kw*filters) is workspace."""
        c = x.shape[-1]
        cols = self.gemm(x.reshape(-1, c), kernel.reshape(-1, c), out=cols, trans_b=True)
        z = self._out(z, cols, (y_shape[0] * y_shape[1] * y_shape[2], y_shape[3]))
        self.col2im(cols, window, tuple(y_shape), out=z.reshape(y_shape))
        y = self.bias_act_forward(act, alpha, z, y=self.xp.empty_like(z) if y is None else y,
                                  bias=bias)
        return z, y

    def conv2d_transpose_backward(self, x, kernel, z, y, dy, act, alpha, window, y_shape,
                                  d_kernel, d_bias, dx=None, dcols=None):
        """dy (n*oh*ow, filters) may be overwritten. Writes d_kernel (kh*kw*filters, c) and
        d_bias; returns dx (None when dx=False)."""
        filters, c = dy.shape[-1], x.shape[-1]
        dz = self.act_backward(act, alpha, z, y, dy, out=dy)
        if d_bias is not None:
            self.column_sum(dz, out=d_bias)
        kh, kw = window[0], window[1]
        dcols = self.im2col(dz.reshape(y_shape), window, out=dcols)
        self.gemm(dcols, x.reshape(-1, c), out=d_kernel.reshape(kh * kw * filters, c),
                  trans_a=True)
        if dx is False:
            return None
        dx = self._out(dx, x)
        self.gemm(dcols, kernel.reshape(-1, c), out=dx.reshape(-1, c))
        return dx

    # A Conv2D and the MaxPooling2D after it as one step. A backend may run it a chunk of
    # images at a time (CpuOps: the convolution output stays in cache); conv2d_maxpool_plan says how
    # the workspaces are sized: `work` holds groups x chunk convolution outputs, `dcols_work`
    # as many im2col blocks, `partials` (groups - 1) kernel gradients. Here: one chunk.
    def conv2d_maxpool_plan(self, n, oh, ow, filters):
        """(groups, images per chunk) of conv2d_maxpool_forward/backward over n images."""
        return 1, n

    def conv2d_maxpool_forward(self, x, kernel, bias, act, alpha, conv_window, pool_window,
                               cols, work, y, argmax):
        """y, argmax = maxpool(act(im2col(x) @ kernel + bias)) with kernel (kh*kw*c, filters)
        and cols (n*oh*ow, kh*kw*c) kept for backward, computed as act(maxpool(z) + bias):
        act must be non-decreasing (activations.MONOTONE). Returns (y, argmax)."""
        n, (oh, ow), filters = x.shape[0], conv_window[6:], kernel.shape[-1]
        z = work[:n * oh * ow]
        self.conv2d_forward(x, kernel, None, A.LINEAR, alpha, conv_window, cols=cols, z=z, y=z)
        y, argmax = self.maxpool_forward(z.reshape(n, oh, ow, filters), pool_window, y=y,
                                         argmax=argmax)
        if bias is not None:
            y += bias
        return self.act_forward(act, alpha, y, out=y), argmax

    def conv2d_maxpool_backward(self, cols, kernel, y, argmax, dy, act, alpha, conv_window,
                                pool_window, x_shape, d_kernel, d_bias, dx=None, work=None,
                                dcols_work=None, partials=None):
        """From dy (pooled; overwritten): d_kernel, d_bias, dx (each skipped when None) of
        conv2d_maxpool_forward. act's derivative must be readable off its output: the
        pooled value is the activation's output at its argmax. Returns dx."""
        n, (oh, ow), filters = x_shape[0], conv_window[6:], kernel.shape[-1]
        if act != A.LINEAR:
            dy = self.act_backward(act, alpha, None, y, dy, out=dy)
        if d_bias is not None:
            self.column_sum(dy.reshape(-1, filters), out=d_bias)
        if d_kernel is None and dx is None:
            return None
        dz = self.maxpool_backward(dy, argmax, pool_window, (n, oh, ow, filters),
                                   dx=work[:n * oh * ow].reshape(n, oh, ow, filters))
        dz = dz.reshape(-1, filters)
        if d_kernel is not None:
            self.gemm(cols, dz, out=d_kernel, trans_a=True)
        if dx is None:
            return None
        dcols = self.gemm(dz, kernel, out=dcols_work[:n * oh * ow], trans_b=True)
        return self.col2im(dcols, conv_window, x_shape, out=dx)

    def maxpool_forward(self, x, window, y=None, argmax=None):
        """Returns (y, argmax); argmax holds each output's flat index inside its input image."""
        xp = self.xp
        kh, kw, sh, sw, pt, pl, oh, ow = window
        n, h, w, c = x.shape
        pad = self._padded(x, window, -xp.inf)
        flat = xp.arange(h * w * c, dtype="int64").reshape(1, h, w, c)
        idx = self._padded(flat.astype("float64"), window, -1.0).astype("int64")
        best = xp.full((n, oh, ow, c), -xp.inf, x.dtype)
        arg = xp.zeros((n, oh, ow, c), "int64")
        for _, _, sl in self._taps(window):
            v = pad[sl]
            take = v > best
            best = xp.where(take, v, best)
            arg = xp.where(take, xp.broadcast_to(idx[sl], v.shape), arg)
        y = best if y is None else self._assign(y, best)
        argmax = arg.astype("int32") if argmax is None else self._assign(argmax, arg)
        return y, argmax

    def _assign(self, out, value):
        out[...] = value
        return out

    def maxpool_backward(self, dy, argmax, window, x_shape, dx=None):
        n = x_shape[0]
        per_image = int(numpy.prod(x_shape[1:]))
        flat = self.xp.zeros((n, per_image), dy.dtype)
        rows = self.xp.repeat(self.xp.arange(n), argmax[0].size)
        self.xp.add.at(flat, (rows, argmax.reshape(-1)), dy.reshape(-1))
        res = flat.reshape(x_shape)
        return res if dx is None else self._assign(dx, res)

    def _window_counts(self, x_shape, window):
        ones = self.xp.ones((1,) + tuple(x_shape[1:3]) + (1,), "float32")
        pad = self._padded(ones, window, 0.0)
        return sum(pad[sl] for _, _, sl in self._taps(window))

    def avgpool_forward(self, x, window, y=None):
        pad = self._padded(x, window, 0.0)
        total = sum(pad[sl] for _, _, sl in self._taps(window))
        res = total / self._window_counts(x.shape, window)
        return res if y is None else self._assign(y, res)

    def avgpool_backward(self, dy, window, x_shape, dx=None):
        kh, kw, sh, sw, pt, pl, oh, ow = window
        n, h, w, c = x_shape
        share = dy / self._window_counts(x_shape, window)
        acc = self._padded(self.xp.zeros(x_shape, dy.dtype), window, 0.0)
        for _, _, sl in self._taps(window):
            acc[sl] += share
        res = acc[:, pt:pt + h, pl:pl + w]
        return self.xp.ascontiguousarray(res) if dx is None else self._assign(dx, res)

    # ---- embedding ------------------------------------------------------------------------
    def _bad_index(self, ids, rows, where):
        """ValueError naming `where`, the table's rows and the first index outside [0, rows)."""
        flat = ids.reshape(-1)
        bad = (flat < 0) | (flat >= rows)
        if flat.size and bool(bad.any()):
            value = int(flat[int(self.xp.argmax(bad))])
            raise ValueError(f"{where}: index {value} is out of range for input_dim={rows} "
                             f"(indices must be in [0, {rows}))")

    def embedding_forward(self, table, ids, out=None, where="Embedding"):
        """out (n, dim) = the rows `ids` (n integers) of table; every index is checked first."""
        self._bad_index(ids, table.shape[0], where)
        res = self.xp.take(table, ids.reshape(-1), axis=0)
        return res if out is None else self._assign(out, res)

    def embedding_backward(self, ids, dy, d_table, clear=None, where="Embedding"):
        """d_table = the gradient of embedding_forward: dy's rows added into the rows `ids`.
        Only the rows in `clear` are zeroed first (the rest must already be zero), or the
        whole table when clear is None."""
        self._bad_index(ids, d_table.shape[0], where)
        if clear is None:
            d_table[...] = 0
        else:
            d_table[clear.reshape(-1)] = 0
        self.xp.add.at(d_table, ids.reshape(-1), dy.reshape(len(ids.reshape(-1)), -1))
        return d_table

    def batchnorm_stats(self, x, mean=None, var=None):
        """Per-channel mean and biased variance over the rows of a (rows, channels) array."""
        m = x.astype("float64").mean(axis=0)
        v = ((x - m) ** 2).mean(axis=0)
        mean = m.astype(x.dtype) if mean is None else self._assign(mean, m)
        var = v.astype(x.dtype) if var is None else self._assign(var, v)
        return mean, var

    def batchnorm_apply(self, x, mean, var, gamma, beta, eps, out=None):
        scale = 1.0 / self.xp.sqrt(var + eps)
        if gamma is not None:
            scale = scale * gamma
        res = (x - mean) * scale + (0.0 if beta is None else beta)
        return res.astype(x.dtype) if out is None else self._assign(out, res)

    def batchnorm_backward(self, x, dy, mean, var, gamma, eps, dx=None, d_gamma=None,
                           d_beta=None):
        """Training-mode gradient through the batch statistics; dx may be dy itself."""
        inv = 1.0 / self.xp.sqrt(var.astype("float64") + eps)
        xhat = (x - mean) * inv
        sum_dy = dy.astype("float64").sum(axis=0)
        sum_dy_xhat = (dy * xhat).sum(axis=0)
        g = 1.0 if gamma is None else gamma
        rows = x.shape[0]
        res = g * inv * (dy - sum_dy / rows - xhat * sum_dy_xhat / rows)
        if d_gamma is not None:
            d_gamma[...] = sum_dy_xhat
        if d_beta is not None:
            d_beta[...] = sum_dy
        return res.astype(x.dtype) if dx is None else self._assign(dx, res)

    def batchnorm_update_moving(self, moving_mean, moving_var, mean, var, momentum):
        moving_mean[...] = moving_mean * momentum + mean * (1 - momentum)
        moving_var[...] = moving_var * momentum + var * (1 - momentum)

    # ---- losses (value + gradient in one pass) ----------------------------------------------
    # Each returns the sum over rows of weight[r] * loss_r and, when grad is given, writes the
    # gradient of (scale * that sum): with respect to the logits for the softmax/sigmoid
    # cross-entropies, with respect to the predictions for the errors.
    def _total(self, per_row):
        """The loss total as the backend returns it: a float here; a device backend returns a
        0-d device array (float() reads it) so that a training step never waits on the host."""
        return float(per_row.astype("float64").sum())

    def _weighted(self, per_row, weights):
        return per_row if weights is None else per_row * weights

    def softmax_xent_sparse(self, probs, labels, weights, scale, grad=None):
        xp = self.xp
        rows, cols = probs.shape
        on_host = isinstance(labels, numpy.ndarray)
        labels = xp.asarray(labels)
        if labels.shape != (rows,):
            raise ValueError(f"labels: expected ({rows},), got {labels.shape}")
        valid = (labels >= 0) & (labels < cols)
        # Host labels are checked; on a device that would cost a sync, so a bad label makes its
        # row's loss NaN instead (as kernels.cu does).
        if on_host and rows and not valid.all():
            raise ValueError(f"labels must be integers in [0, {cols})")
        safe = xp.where(valid, labels, 0)
        p = probs / probs.sum(axis=-1, keepdims=True)
        picked = p[xp.arange(rows), safe]
        per_row = xp.where(valid, -xp.log(xp.clip(picked, EPSILON, 1 - EPSILON)), xp.nan)
        per_row = self._weighted(per_row, weights)
        if grad is not None:
            k = scale * (xp.ones(rows, "float32") if weights is None else weights)
            grad[...] = probs * k[:, None]
            grad[xp.arange(rows), safe] -= xp.where(valid, k, 0)    # as kernels.cu
        return self._total(per_row)

    def softmax_xent_dense(self, probs, targets, weights, scale, grad=None):
        xp = self.xp
        p = xp.clip(probs / probs.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON)
        per_row = self._weighted(-(targets * xp.log(p)).sum(axis=-1), weights)
        if grad is not None:
            k = scale * (1.0 if weights is None else weights[:, None])
            grad[...] = k * (probs * targets.sum(axis=-1, keepdims=True) - targets)
        return self._total(per_row)

    def sigmoid_bxent(self, probs, targets, weights, scale, grad=None):
        xp = self.xp
        q = xp.clip(probs, EPSILON, 1 - EPSILON)
        per_elem = -(targets * xp.log(q) + (1 - targets) * xp.log(1 - q))
        per_row = self._weighted(per_elem.mean(axis=-1), weights)
        if grad is not None:
            k = scale / probs.shape[-1] * (1.0 if weights is None else weights[:, None])
            grad[...] = k * (probs - targets)
        return self._total(per_row)

    # The value of a from_logits loss, exactly (log-sum-exp, no clipping), as Keras computes
    # it; its gradient is the fused kernel's (p - y) above.
    def softmax_xent_logits_total(self, logits, targets, weights, sparse):
        """Sum over rows of weight * -sum(targets * log_softmax(logits)); sparse: targets are
        integer labels (an out-of-range label gives NaN, as the sparse kernel does)."""
        xp = self.xp
        top = logits.max(axis=-1, keepdims=True)
        log_p = logits - (top + xp.log(xp.exp(logits - top).sum(axis=-1, keepdims=True)))
        if sparse:
            rows, cols = logits.shape
            labels = xp.asarray(targets).reshape(-1)
            valid = (labels >= 0) & (labels < cols)
            picked = log_p[xp.arange(rows), xp.where(valid, labels, 0)]
            per_row = xp.where(valid, -picked, xp.nan)
        else:
            per_row = -(targets * log_p).sum(axis=-1)
        return self._total(self._weighted(per_row, weights))

    def sigmoid_bxent_logits_total(self, logits, targets, weights):
        """Sum over rows of weight * the mean over the last axis of the binary cross-entropy of
        sigmoid(logits): max(z, 0) - z t + log(1 + e^-|z|), stable for any z."""
        xp = self.xp
        per_elem = xp.maximum(logits, 0) - logits * targets + \
            xp.log1p(xp.exp(-xp.abs(logits)))
        return self._total(self._weighted(per_elem.mean(axis=-1), weights))

    # Outputs that are probabilities but did not come from the activation the loss fuses with
    # (Keras's from_logits=False after any other activation): the clipped losses, their
    # gradients with respect to the outputs themselves (zero where the clip holds).
    def categorical_xent_outputs(self, outputs, targets, weights, scale, grad=None,
                                 sparse=False):
        """Sum over rows of weight * -sum(targets * log(clip(outputs / their row sum)));
        sparse: targets are integer labels."""
        xp = self.xp
        if sparse:
            onehot = xp.zeros(outputs.shape, "float32")
            onehot[xp.arange(len(targets)), targets.reshape(-1)] = 1
            targets = onehot
        s = outputs.sum(axis=-1, keepdims=True)
        p = outputs / s
        inside = (p > EPSILON) & (p < 1 - EPSILON)
        pc = xp.clip(p, EPSILON, 1 - EPSILON)
        per_row = -(targets * xp.log(pc)).sum(axis=-1)
        if grad is not None:
            dp = -targets / pc * inside
            k = scale * (1.0 if weights is None else weights[:, None])
            # d p_j / d outputs_k = (delta_jk - p_j) / s
            grad[...] = (dp - (dp * p).sum(axis=-1, keepdims=True)) / s * k
        return self._total(self._weighted(per_row, weights))

    def binary_xent_outputs(self, outputs, targets, weights, scale, grad=None):
        """Sum over rows of weight * the mean over the last axis of the binary cross-entropy
        of clip(outputs)."""
        xp = self.xp
        q = xp.clip(outputs, EPSILON, 1 - EPSILON)
        inside = (outputs > EPSILON) & (outputs < 1 - EPSILON)
        per_row = -(targets * xp.log(q) + (1 - targets) * xp.log(1 - q)).mean(axis=-1)
        if grad is not None:
            k = scale / outputs.shape[-1] * (1.0 if weights is None else weights[:, None])
            grad[...] = k * inside * (q - targets) / (q * (1 - q))
        return self._total(self._weighted(per_row, weights))

    def squared_error(self, pred, targets, weights, scale, grad=None):
        d = pred - targets
        per_row = self._weighted((d * d).mean(axis=-1), weights)
        if grad is not None:
            k = 2 * scale / pred.shape[-1] * (1.0 if weights is None else weights[:, None])
            grad[...] = k * d
        return self._total(per_row)

    def absolute_error(self, pred, targets, weights, scale, grad=None):
        d = pred - targets
        per_row = self._weighted(self.xp.abs(d).mean(axis=-1), weights)
        if grad is not None:
            k = scale / pred.shape[-1] * (1.0 if weights is None else weights[:, None])
            grad[...] = k * self.xp.sign(d)
        return self._total(per_row)

    # ---- random numbers ---------------------------------------------------------------------
    def random_uniform(self, rng, out):
        """Fill the float32 array out with uniform [0, 1) draws from the NumPy Generator rng."""
        rng.random(out=out, dtype=numpy.float32)
        return out

    # ---- optimizer updates (in place on flat float32 buffers; Keras 3 rules) ----------------
    # The update of each optimizer kind (csrc/fastnn.h FNN_OPT_*): (method, slots, scalars).
    _UPDATES = (("sgd_update", 1, 3), ("adam_update", 3, 4), ("rmsprop_update", 3, 4),
                ("adagrad_update", 1, 2), ("adadelta_update", 2, 3), ("adamax_update", 2, 4),
                ("nadam_update", 2, 9), ("ftrl_update", 2, 6), ("lion_update", 1, 3))
    CLIP_NONE, CLIP_VALUE, CLIP_NORM, CLIP_GLOBAL_NORM = 0, 1, 2, 3

    def optimizer_update(self, kind, w, g, slots, scalars, clip_mode, limit, sizes):
        """One step of optimizer `kind` over the variables of `sizes` (back to back in w, g
        and each slot): Keras's clipping of g (CLIP_VALUE: clamp to [-limit, limit];
        CLIP_NORM: each variable's gradient times limit / its norm where that is above
        limit; CLIP_GLOBAL_NORM: all of them by one norm), then the decoupled weight decay
        w -= w * scalars[0], then the kind's update with slots (in its argument order, None
        for unused) and scalars[1:]."""
        check_optimizer_update(kind, clip_mode, limit, sizes, w.size, scalars, slots)
        xp = self.xp
        method, n_slots, _ = self._UPDATES[kind]
        limit = float(numpy.float32(limit))
        if clip_mode == self.CLIP_VALUE:
            g = xp.clip(g, -limit, limit)
        elif clip_mode == self.CLIP_GLOBAL_NORM:
            g = g * self._clip_scale(g, limit, True)
        elif clip_mode == self.CLIP_NORM:
            g, start = g.copy(), 0
            for size in sizes:
                part = g[start:start + size]
                part *= self._clip_scale(part, limit, False)
                start += size
        s = [float(v) for v in numpy.asarray(scalars, numpy.float32)]
        if s[0]:
            w -= w * numpy.float32(s[0])
        slots = (tuple(slots) + (None,) * 3)[:n_slots]
        if kind == 0:
            s[3] = bool(s[3])       # SGD's nesterov
        if (kind == 0 and s[2] != 0 and slots[0] is None) or \
                (kind == 2 and s[3] > 0 and slots[1] is None):
            raise TypeError("optimizer_update: slots: the momentum slot is required with "
                            "momentum, got None")
        getattr(self, method)(w, g, *slots, *s[1:])

    def _clip_scale(self, g, limit, global_norm):
        """Keras's factor for a gradient of this norm (in float64): limit / norm above the
        limit, exactly 1 at or below it, NaN for a NaN norm and (global_clipnorm) an infinite
        one. A device array: no host read."""
        xp = self.xp
        norm = xp.sqrt(xp.sum(xp.square(g.astype(xp.float64))))
        scale = limit / xp.maximum(norm, limit)
        if global_norm:
            scale = scale + (norm - norm)
        return scale.astype(xp.float32)

    def l1l2_penalty(self, w, g, l1, l2):
        """Keras's l1/l2 weight penalty l1 * sum|w| + l2 * sum w^2 as a float (summed in
        float64, row by row over w's last axis); with g (w's shape), its gradient
        l1 * sign(w) + 2 * l2 * w is added to g."""
        check_l1l2(w, g, l1, l2)
        xp = self.xp
        l1, l2 = numpy.float32(l1), numpy.float32(l2)
        rows = w.reshape(-1, w.shape[-1] if w.ndim else 1).astype(xp.float64)
        value = float(l1) * xp.abs(rows).sum(axis=1) + float(l2) * xp.square(rows).sum(axis=1)
        if g is not None:
            g += l1 * xp.sign(w) + (numpy.float32(2) * l2) * w
        return float(value.sum())

    def sgd_update(self, w, g, m, lr, momentum, nesterov):
        if m is None:
            w -= lr * g
            return
        m[...] = momentum * m - lr * g
        w += (momentum * m - lr * g) if nesterov else m

    def adam_update(self, w, g, m, v, vmax, alpha, beta1, beta2, eps):
        m += (g - m) * (1 - beta1)
        v += (g * g - v) * (1 - beta2)
        if vmax is not None:
            self.xp.maximum(vmax, v, out=vmax)
            v = vmax
        w -= alpha * m / (self.xp.sqrt(v) + eps)

    def rmsprop_update(self, w, g, v, mom, mg, lr, rho, momentum, eps):
        v[...] = rho * v + (1 - rho) * g * g
        denom = v + eps
        if mg is not None:
            mg[...] = rho * mg + (1 - rho) * g
            denom = denom - mg * mg
        step = lr * g / self.xp.sqrt(denom)
        if mom is not None:
            mom[...] = momentum * mom + step
            w -= mom
        else:
            w -= step

    def adagrad_update(self, w, g, acc, lr, eps):
        acc += g * g
        w -= lr * g / self.xp.sqrt(acc + eps)

    def adadelta_update(self, w, g, acc_g, acc_dx, lr, rho, eps):
        sqrt = self.xp.sqrt
        acc_g[...] = rho * acc_g + (1 - rho) * g * g
        dx = -sqrt(acc_dx + eps) * g / sqrt(acc_g + eps)
        acc_dx[...] = rho * acc_dx + (1 - rho) * dx * dx
        w += lr * dx

    def adamax_update(self, w, g, m, u, alpha, beta1, beta2, eps):
        m += (g - m) * (1 - beta1)
        self.xp.maximum(beta2 * u, self.xp.abs(g), out=u)
        w -= alpha * m / (u + eps)

    def lion_update(self, w, g, m, lr, beta1, beta2):
        w -= lr * self.xp.sign(m * beta1 + g * (1 - beta1))
        m[...] = m * beta2 + g * (1 - beta2)

    def nadam_update(self, w, g, m, v, lr, beta1, beta2, eps, mu_t, mu_t1, u_prod, u_prod_t1,
                     beta2_power):
        m += (g - m) * (1 - beta1)
        v += (g * g - v) * (1 - beta2)
        m_hat = mu_t1 * m / (1 - u_prod_t1) + (1 - mu_t) * g / (1 - u_prod)
        w -= lr * m_hat / (self.xp.sqrt(v / (1 - beta2_power)) + eps)

    def ftrl_update(self, w, g, acc, lin, lr, lr_power, l1, l2, l2_shrinkage, beta):
        xp = self.xp
        l2_reg = l2 + beta / (2 * lr)
        g_used = g + 2 * l2_shrinkage * w
        new_acc = acc + g * g
        p_new, p_old = new_acc ** -lr_power, acc ** -lr_power
        lin += g_used - (p_new - p_old) / lr * w
        quadratic = p_new / lr + 2 * l2_reg
        w[...] = (xp.clip(lin, -l1, l1) - lin) / quadratic
        acc[...] = new_acc

    # ---- recurrent layers ----------------------------------------------------------------
    # Time-major: x (T, B, D), mask (T, B) bool (True: the step counts) or None. kernel
    # (D, G*U), recurrent (U, G*U) in Keras's gate order (LSTM i, f, c, o; GRU z, r, h;
    # SimpleRNN one gate); bias (G*U,), or for a GRU with reset_after (2, 3*U): input and
    # recurrent biases. act and rec_act are (id, alpha). At a masked step a sample's state is
    # carried over and its output is the previous output (zeros with zero_output), as Keras's
    # backend rnn(). rec_mask (B, U) or None: recurrent dropout, the previous state times
    # rec_mask where it meets the recurrent kernel (a GRU's z h_{t-1} mix takes it whole).
    # work (rnn_forward, rnn_backward): None, or work(name, shape) -> a float32 array of that
    # shape, kept by the caller across calls (contents arbitrary), where a backend may put its
    # scratch and cache arrays instead of allocating them each call; the outputs it returns
    # may then be views of them, valid until the caller's next call with the same work.
    def copy_steps(self, src, dst):
        """dst[...] = src, for a 3-D sequence between the layers' batch-major layout and the
        recurrent kernels' time-major one (views of each other's axes); returns dst."""
        dst[...] = src
        return dst

    def rnn_forward(self, cell, x, kernel, recurrent, bias, h0, c0, mask, act, rec_act,
                    reset_after=True, zero_output=False, rec_mask=None, work=None):
        """Returns (y (T, B, U) outputs, h_T, c_T (None but for an LSTM), cache): the cache
        is what rnn_backward reads (opaque: each backend reads its own)."""
        rnn_check_forward(cell, x, kernel, recurrent, bias, h0, c0, mask, act, rec_act,
                          reset_after, rec_mask)
        xp = self.xp
        steps, batch, d_in = x.shape
        units = recurrent.shape[0]
        gu = recurrent.shape[1]
        two = bias is not None and bias.ndim == 2
        xw = self.gemm(x.reshape(steps * batch, d_in), kernel).reshape(steps, batch, gu)
        if bias is not None:
            xw += bias[0] if two else bias
        hs = xp.empty((steps + 1, batch, units), "float32")
        hs[0] = h0
        cs = None
        if cell == "lstm":
            cs = xp.empty((steps + 1, batch, units), "float32")
            cs[0] = c0
        pre = xp.empty((steps, batch, gu), "float32")       # pre-activations of the gates
        gates = xp.empty((steps, batch, gu), "float32")     # and after
        extra = xp.empty((steps, batch, units), "float32")  # LSTM: act(c); GRU: rec_h or r*h
        ys = xp.empty((steps, batch, units), "float32")
        prev_out = xp.zeros((batch, units), "float32")
        u = units
        for t in range(steps):
            hp = hs[t]
            hd = hp if rec_mask is None else hp * rec_mask     # what the kernel multiplies
            if cell == "gru" and not reset_after:
                z = xw[t].copy()
                z[:, :2 * u] += hd @ recurrent[:, :2 * u]
                pre[t, :, :2 * u] = z[:, :2 * u]
                gates[t, :, :2 * u] = self.act_forward(*rec_act, z[:, :2 * u])
                extra[t] = gates[t, :, u:2 * u] * hd
                pre[t, :, 2 * u:] = z[:, 2 * u:] + extra[t] @ recurrent[:, 2 * u:]
            else:
                rec = hd @ recurrent
                if two:
                    rec += bias[1]
                pre[t] = xw[t] + rec
                if cell == "gru":
                    extra[t] = rec[:, 2 * u:]
                    gates[t, :, :2 * u] = self.act_forward(*rec_act, pre[t, :, :2 * u])
                    pre[t, :, 2 * u:] = xw[t, :, 2 * u:] + gates[t, :, u:2 * u] * extra[t]
            if cell == "simple":
                gates[t] = self.act_forward(*act, pre[t])
                h = gates[t]
            elif cell == "gru":
                gates[t, :, 2 * u:] = self.act_forward(*act, pre[t, :, 2 * u:])
                zg, hh = gates[t, :, :u], gates[t, :, 2 * u:]
                h = zg * hp + (1 - zg) * hh
            else:
                for k, a in ((0, rec_act), (1, rec_act), (2, act), (3, rec_act)):
                    sl = slice(k * u, (k + 1) * u)
                    gates[t, :, sl] = self.act_forward(*a, pre[t, :, sl])
                i, f, g, o = (gates[t, :, k * u:(k + 1) * u] for k in range(4))
                c = f * cs[t] + i * g
                extra[t] = self.act_forward(*act, c)
                h = o * extra[t]
            if mask is None:
                hs[t + 1] = h
                if cs is not None:
                    cs[t + 1] = c
                ys[t] = h
            else:
                m = mask[t][:, None]
                hs[t + 1] = xp.where(m, h, hp)
                if cs is not None:
                    cs[t + 1] = xp.where(m, c, cs[t])
                ys[t] = xp.where(m, h, 0.0 if zero_output else prev_out)
                prev_out = ys[t]
        cache = {"x": x, "hs": hs, "cs": cs, "pre": pre, "gates": gates, "extra": extra,
                 "mask": mask, "two": two, "rec_mask": rec_mask}
        return ys, hs[steps], None if cs is None else cs[steps], cache

    def rnn_backward(self, cell, cache, dy, dh_t, dc_t, kernel, recurrent, d_kernel,
                     d_recurrent, d_bias, act, rec_act, reset_after=True, zero_output=False,
                     need_dx=True, work=None):
        """Back through time from dy (T, B, U), the gradient of the outputs (None: zero),
        and dh_t, dc_t (B, U) (or None), the final states'. Writes d_kernel, d_recurrent,
        d_bias; returns (dx (T, B, D) or None, dh0, dc0 (None but for an LSTM)). A masked
        step passes the state's gradient to the step before, and its output's (unless
        zero_output) to the previous output."""
        rnn_check_backward(cell, cache, RNN_CACHE_KEYS, dy, dh_t, dc_t, kernel, recurrent,
                           d_kernel, d_recurrent, d_bias, act, rec_act, reset_after)
        xp = self.xp
        x, hs, cs, pre, gates, extra = (cache[k] for k in
                                        ("x", "hs", "cs", "pre", "gates", "extra"))
        mask, rm = cache["mask"], cache["rec_mask"]
        steps, batch, d_in = x.shape
        u = recurrent.shape[0]
        gu = recurrent.shape[1]
        dh = xp.zeros((batch, u), "float32") if dh_t is None else dh_t.astype("float32")
        dc = None
        if cell == "lstm":
            dc = xp.zeros((batch, u), "float32") if dc_t is None else dc_t.astype("float32")
        carry = xp.zeros((batch, u), "float32")
        dgx = xp.zeros((steps, batch, gu), "float32")      # d pre-activations, input side
        dgr = xp.zeros((steps, batch, gu), "float32") if cell == "gru" else dgx
        for t in range(steps - 1, -1, -1):
            g_out = carry if dy is None else dy[t] + carry
            if mask is None:
                m = None
                dht = dh + g_out
            else:
                m = mask[t][:, None]
                dht = dh + xp.where(m, g_out, 0.0)
                carry = xp.where(m, 0.0, 0.0 if zero_output else g_out)
            hp = hs[t]
            if cell == "simple":
                dgx[t] = self.act_backward(*act, pre[t], gates[t], dht)
                direct = None
            elif cell == "lstm":
                i, f, g, o = (gates[t, :, k * u:(k + 1) * u] for k in range(4))
                tc = extra[t]
                dgx[t, :, 3 * u:] = self.act_backward(*rec_act, pre[t, :, 3 * u:], o, dht * tc)
                dct = dc + self.act_backward(*act, cs[t + 1], tc, dht * o)
                dgx[t, :, :u] = self.act_backward(*rec_act, pre[t, :, :u], i, dct * g)
                dgx[t, :, u:2 * u] = self.act_backward(*rec_act, pre[t, :, u:2 * u], f,
                                                       dct * cs[t])
                dgx[t, :, 2 * u:3 * u] = self.act_backward(*act, pre[t, :, 2 * u:3 * u], g,
                                                           dct * i)
                dc_prev = dct * f
                direct = None
            else:
                zg, r, hh = gates[t, :, :u], gates[t, :, u:2 * u], gates[t, :, 2 * u:]
                dah = self.act_backward(*act, pre[t, :, 2 * u:], hh, dht * (1 - zg))
                dgx[t, :, 2 * u:] = dah
                dgx[t, :, :u] = self.act_backward(*rec_act, pre[t, :, :u], zg, dht * (hp - hh))
                direct = dht * zg
                if reset_after:
                    dr = dah * extra[t]
                    dgr[t, :, 2 * u:] = dah * r
                else:
                    d_rh = dah @ recurrent[:, 2 * u:].T
                    dr = d_rh * (hp if rm is None else hp * rm)
                    direct = direct + d_rh * r * (1 if rm is None else rm)
                dgx[t, :, u:2 * u] = self.act_backward(*rec_act, pre[t, :, u:2 * u], r, dr)
                dgr[t, :, :2 * u] = dgx[t, :, :2 * u]
            if m is not None:
                dgx[t] *= m
                if dgr is not dgx:
                    dgr[t] *= m
                if direct is not None:
                    direct = direct * m
            if cell == "gru" and not reset_after:
                dh_prev = dgr[t, :, :2 * u] @ recurrent[:, :2 * u].T
            else:
                dh_prev = dgr[t] @ recurrent.T
            if rm is not None:
                dh_prev = dh_prev * rm
            if direct is not None:
                dh_prev += direct
            dh = dh_prev if m is None else xp.where(m, dh_prev, dh)
            if dc is not None:
                dc = dc_prev if m is None else xp.where(m, dc_prev, dc)
        rows = steps * batch
        gx2, gr2 = dgx.reshape(rows, gu), dgr.reshape(rows, gu)
        hp2 = (hs[:steps] if rm is None else hs[:steps] * rm).reshape(rows, u)
        if cell == "gru" and not reset_after:
            # the candidate's recurrent kernel multiplies r * h_{t-1}
            d_recurrent[:, :2 * u] = hp2.T @ gx2[:, :2 * u]
            d_recurrent[:, 2 * u:] = extra.reshape(rows, u).T @ gx2[:, 2 * u:]
        else:
            self.gemm(hp2, gr2, out=d_recurrent, trans_a=True)
        self.gemm(x.reshape(rows, d_in), gx2, out=d_kernel, trans_a=True)
        if d_bias is not None:
            if d_bias.ndim == 2:
                d_bias[0] = self.column_sum(gx2)
                d_bias[1] = self.column_sum(gr2)
            else:
                self.column_sum(gx2, out=d_bias)
        dx = self.gemm(gx2, kernel, trans_b=True).reshape(steps, batch, d_in) if need_dx \
            else None
        return dx, dh, dc


def check_optimizer_update(kind, clip_mode, limit, sizes, n, scalars, slots):
    """optimizer_update's arguments, as the C core checks them (every backend)."""
    if isinstance(kind, bool) or not isinstance(kind, (int, numpy.integer)) or \
            not 0 <= kind < len(Ops._UPDATES):
        raise ValueError(f"optimizer_update: kind: unknown optimizer kind {kind!r}")
    if isinstance(clip_mode, bool) or not isinstance(clip_mode, (int, numpy.integer)) or \
            not 0 <= clip_mode <= 3:
        raise ValueError(f"optimizer_update: clip_mode: expected one of 0-3 (CLIP_*), got "
                         f"{clip_mode!r}")
    if clip_mode and not (isinstance(limit, (int, float, numpy.floating)) and
                          math.isfinite(limit) and limit > 0):
        raise ValueError(f"optimizer_update: limit: expected a finite float > 0 with "
                         f"clip_mode {clip_mode}, got {limit!r}")
    if scalars is None or numpy.size(scalars) != Ops._UPDATES[kind][2] + 1:
        raise ValueError(f"optimizer_update: scalars: expected {Ops._UPDATES[kind][2] + 1} "
                         f"values for optimizer kind {kind}, got {scalars!r}")
    if not isinstance(slots, (tuple, list)) or len(slots) > 3:
        raise TypeError(f"optimizer_update: slots: expected a tuple of at most 3 arrays or "
                        f"None, got {type(slots).__name__}")
    sizes = numpy.asarray(sizes) if sizes is not None else None
    if sizes is None or sizes.ndim != 1 or sizes.dtype.kind not in "iu" or \
            (sizes < 0).any() or int(sizes.sum()) != n:
        raise ValueError(f"optimizer_update: sizes: expected non-negative ints adding up to "
                         f"len(w) = {n}, got {sizes!r}")


def check_l1l2(w, g, l1, l2):
    if w is None or not hasattr(w, "shape"):
        raise TypeError(f"l1l2_penalty: w: expected a float32 array, got {type(w).__name__}")
    if g is not None and tuple(g.shape) != tuple(w.shape):
        raise ValueError(f"l1l2_penalty: g: expected shape {tuple(w.shape)} like w, got "
                         f"{tuple(g.shape)}")
    for name, v in (("l1", l1), ("l2", l2)):
        if isinstance(v, bool) or not isinstance(v, (int, float, numpy.floating)) or \
                not math.isfinite(v) or v < 0:
            raise ValueError(f"l1l2_penalty: {name}: expected a finite float >= 0, got {v!r}")
