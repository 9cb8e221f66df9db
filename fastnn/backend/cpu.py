"""CpuOps: the reference Ops with the hot methods replaced by the compiled core (fastnn._core).

Arrays reaching the kernels are float32 and C-contiguous; activations of any rank are viewed as
2-D (rows, last axis), which is free for contiguous arrays."""
import numpy as np

try:
    from .. import _core
except ImportError as exc:    # a source checkout without its extension, most likely
    import os
    _where = os.path.dirname(os.path.dirname(__file__))
    raise ImportError(
        f"fastnn's compiled core (fastnn._core) is missing in {_where}: probably a source "
        "checkout shadowing the installed fastnn (Python puts the current folder first on "
        "sys.path). Run from another folder, or build the checkout in place with "
        f"`pip install -e .` ({exc})") from exc
from . import blas
from .base import Ops, pointwise, rnn_check_backward, rnn_check_forward


def _as2d(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


def _f32(a, name):
    """a as a C-contiguous float32 array; a missing (None) required argument is a TypeError
    naming it (the kernels check everything else)."""
    _required(a, name)
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def _required(a, name):
    if a is None:
        raise TypeError(f"{name}: expected a float32 array, got None")
    return a


def _index_array(a, name):
    """Indices as a flat C-contiguous int32 or int64 array (other integers widened)."""
    if a is None:
        raise TypeError(f"{name}: expected an integer index array, got None")
    a = a.reshape(-1)
    if a.dtype not in (np.int32, np.int64):
        a = a.astype(np.int64)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# what CpuOps.rnn_forward's cache holds (the reference's differs: it has no "kernel")
_RNN_CACHE_KEYS = frozenset({"kernel", "x", "bias", "mask", "hs", "cs", "gates", "extra",
                             "rec_mask", "hd"})


def _f32_or_none(a, name):
    return None if a is None else _f32(a, name)


def _rnn_arrays(work):
    """The recurrent kernels' arrays: from the caller's `work` (kept across calls: no 13 MB
    of fresh pages to fault in and zero every batch of an LSTM(128) at 200 steps), else new."""
    if work is None:
        return lambda name, shape: np.empty(shape, np.float32)
    return work


class CpuOps(Ops):
    name = "cpu"

    def __init__(self):
        blas.install()
        self._arenas = 0

    def arena(self, n, fill=0.0):
        """Ops.arena, 64-byte aligned (no vector load of the update splits a cache line) and
        each buffer at another offset in its 4 KB page than the last 15 (the update's loads
        and stores do not alias: 4K aliasing). Adam's update of 101,770 floats on one core
        (AVX-512): 39-44 us so placed, 58-92 us at the 16-byte alignments and page offsets
        malloc happened to give, which made one model of the seed MLP 27 % slower than an
        identical one."""
        self._arenas = (self._arenas + 1) % 16
        raw = np.empty(4 * n + 8192, np.uint8)
        at = -raw.ctypes.data % 4096 + 256 * self._arenas
        out = raw[at:at + 4 * n].view(np.float32)
        out[...] = fill
        return out

    def gemm(self, a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        a, b = _f32(a, "a"), _f32(b, "b")
        if out is None:
            m = a.shape[1] if trans_a else a.shape[0]
            n = b.shape[0] if trans_b else b.shape[1]
            out = np.empty((m, n), np.float32)
        _core.gemm(a, b, out, trans_a, trans_b, alpha, beta)
        return out

    def act_forward(self, act, alpha, z, out=None):
        z = _f32(z, "z")
        y = np.empty_like(z) if out is None else out
        _core.act_forward(act, alpha, _as2d(z), _as2d(y))
        return y

    def bias_act_forward(self, act, alpha, z, y=None, bias=None, norm=None, residual=None):
        z = _required(z, "z")
        y = z if y is None else y
        mean, var, gamma, beta, eps = (None,) * 4 + (0.0,) if norm is None else norm
        _core.bias_act_forward(act, alpha, _as2d(z), _as2d(y), bias, mean, var, gamma, beta, eps,
                               None if residual is None else _as2d(_f32(residual, "residual")))
        return y

    def act_backward(self, act, alpha, z, y, dy, out=None):
        y, dy = _f32(y, "y"), _f32(dy, "dy")
        dz = np.empty_like(dy) if out is None else out
        z2 = None if z is None else _as2d(_f32(z, "z"))
        _core.act_backward(act, alpha, z2, _as2d(y), _as2d(dy), _as2d(dz))
        return dz

    def column_sum(self, a, out=None):
        a = _as2d(_f32(a, "a"))
        out = np.empty(a.shape[1], np.float32) if out is None else out
        _core.column_sum(a, out)
        return out

    def dense_forward(self, x, kernel, bias, act, alpha, z=None, y=None, training=False,
                      norm=None, residual=None):
        x, kernel = _f32(x, "x"), _f32(kernel, "kernel")
        shape = (x.shape[0], kernel.shape[1])
        z = np.empty(shape, np.float32) if z is None else z
        y = np.empty(shape, np.float32) if y is None else y
        if norm is not None or residual is not None:
            return super().dense_forward(x, kernel, bias, act, alpha, z=z, y=y, norm=norm,
                                         residual=residual)
        _core.dense_forward(x, kernel, bias, z, y, act, alpha, training)
        return z, y

    def dense_backward(self, x, kernel, z, y, dy, act, alpha, d_kernel, d_bias, dx=None,
                       dz=None, kernel_step=0.0):
        # the kernel itself, never a copy: plain SGD updates it in place (kernel_step)
        x, dy, kernel = _f32(x, "x"), _f32(dy, "dy"), _required(kernel, "kernel")
        dz = np.empty_like(dy) if dz is None else dz
        if dx is False:
            dx = None
        elif dx is None:
            dx = np.empty((x.shape[0], kernel.shape[0]), np.float32)
        _core.dense_backward(x, kernel, z, y, dy, dz,
                             kernel if kernel_step else d_kernel, d_bias, dx, act, alpha,
                             kernel_step)
        return dx

    def im2col(self, x, window, out=None):
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        x = _f32(x, "x")
        if out is None:
            out = np.empty((x.shape[0] * oh * ow, kh * kw * x.shape[3]), np.float32)
        _core.im2col(x, tuple(window), out)
        return out

    def winograd_work(self, x_shape, window, filters):
        return _core.winograd_work(tuple(x_shape), tuple(window), filters)

    def conv2d_forward(self, x, kernel, bias, act, alpha, window, cols=None, z=None, y=None,
                       norm=None, residual=None, groups=1, work=None):
        if groups != 1:
            return super().conv2d_forward(x, kernel, bias, act, alpha, window, cols=cols, z=z,
                                          y=y, norm=norm, residual=residual, groups=groups,
                                          work=work)
        x, kernel = _f32(x, "x"), _f32(kernel, "kernel")
        kernel = kernel.reshape(-1, kernel.shape[-1])
        window = tuple(window)
        if len(window) not in (8, 10) or x.ndim != 4:
            raise ValueError("conv2d_forward: expected x (n, h, w, c) and window (kh, kw, sh, "
                             f"sw, pad_top, pad_left, oh, ow[, dh, dw]), got x shape "
                             f"{x.shape} and window {window!r}")
        rows = x.shape[0] * window[6] * window[7]
        direct = pointwise(window)
        if direct or work is not None:
            cols = None
        elif cols is None:
            cols = np.empty((rows, window[0] * window[1] * x.shape[3]), np.float32)
        z = np.empty((rows, kernel.shape[1]), np.float32) if z is None else z
        y = np.empty_like(z) if y is None else y
        mean, var, gamma, beta, eps = (None,) * 4 + (0.0,) if norm is None else norm
        _core.conv2d_forward(x, kernel, bias, act, alpha, window, cols, z, y, mean, var,
                             gamma, beta, eps,
                             None if residual is None else _as2d(_f32(residual, "residual")),
                             work)
        return (x.reshape(-1, x.shape[3]) if direct else cols), z, y

    def col2im(self, cols, window, x_shape, out=None):
        out = np.empty(x_shape, np.float32) if out is None else out
        _core.col2im(_f32(cols, "cols"), tuple(window), out)
        return out

    def conv2d_maxpool_plan(self, n, oh, ow, filters):
        return _core.conv2d_maxpool_plan(n, oh, ow, filters)

    def conv2d_maxpool_forward(self, x, kernel, bias, act, alpha, conv_window, pool_window,
                               cols, work, y, argmax):
        _core.conv2d_maxpool_forward(_f32(x, "x"), _f32(kernel, "kernel"),
                                     _f32_or_none(bias, "bias"), act, alpha, tuple(conv_window),
                                     tuple(pool_window), cols, work, y, argmax)
        return y, argmax

    def conv2d_maxpool_backward(self, cols, kernel, y, argmax, dy, act, alpha, conv_window,
                                pool_window, x_shape, d_kernel, d_bias, dx=None, work=None,
                                dcols_work=None, partials=None):
        _core.conv2d_maxpool_backward(cols, _f32(kernel, "kernel"), y, argmax, dy, act, alpha,
                                      tuple(conv_window), tuple(pool_window), tuple(x_shape),
                                      d_kernel, d_bias, dx, work, dcols_work, partials)
        return dx

    def maxpool_forward(self, x, window, y=None, argmax=None):
        x = _f32(x, "x")
        shape = (x.shape[0], window[6], window[7], x.shape[3])
        y = np.empty(shape, np.float32) if y is None else y
        argmax = np.empty(shape, np.int32) if argmax is None else argmax
        _core.maxpool_forward(x, tuple(window), y, argmax)
        return y, argmax

    def maxpool_backward(self, dy, argmax, window, x_shape, dx=None):
        dx = np.empty(x_shape, np.float32) if dx is None else dx
        _core.maxpool_backward(_f32(dy, "dy"), argmax, tuple(window), dx)
        return dx

    def avgpool_forward(self, x, window, y=None):
        x = _f32(x, "x")
        y = np.empty((x.shape[0], window[6], window[7], x.shape[3]), np.float32) \
            if y is None else y
        _core.avgpool_forward(x, tuple(window), y)
        return y

    def avgpool_backward(self, dy, window, x_shape, dx=None):
        dx = np.empty(x_shape, np.float32) if dx is None else dx
        _core.avgpool_backward(_f32(dy, "dy"), tuple(window), dx)
        return dx

    def embedding_forward(self, table, ids, out=None, where="Embedding"):
        ids, table = _index_array(ids, "ids"), _f32(table, "table")
        out = np.empty((ids.size, table.shape[1]), np.float32) if out is None else out
        bad = _core.embedding_forward(table, ids, out.reshape(ids.size, -1))
        if bad >= 0:
            self._bad_index(ids, table.shape[0], where)
        return out

    def embedding_backward(self, ids, dy, d_table, clear=None, where="Embedding"):
        ids = _index_array(ids, "ids")
        _required(d_table, "d_table")
        bad = _core.embedding_backward(ids, _f32(dy, "dy").reshape(ids.size, -1), d_table,
                                       None if clear is None else _index_array(clear, "clear"))
        if bad >= 0:
            self._bad_index(ids, d_table.shape[0], where)
        return d_table

    def batchnorm_stats(self, x, mean=None, var=None):
        x = _f32(x, "x")
        mean = np.empty(x.shape[1], np.float32) if mean is None else mean
        var = np.empty(x.shape[1], np.float32) if var is None else var
        _core.batchnorm_stats(x, mean, var)
        return mean, var

    def batchnorm_apply(self, x, mean, var, gamma, beta, eps, out=None):
        x = _f32(x, "x")
        out = np.empty_like(x) if out is None else out
        _core.batchnorm_apply(x, mean, var, gamma, beta, eps, out)
        return out

    def batchnorm_backward(self, x, dy, mean, var, gamma, eps, dx=None, d_gamma=None,
                           d_beta=None):
        x, dy = _f32(x, "x"), _f32(dy, "dy")
        dx = np.empty_like(x) if dx is None else dx
        _core.batchnorm_backward(x, dy, mean, var, gamma, eps, dx, d_gamma, d_beta)
        return dx

    def batchnorm_update_moving(self, moving_mean, moving_var, mean, var, momentum):
        _core.batchnorm_update_moving(moving_mean, moving_var, mean, var, momentum)

    def softmax_xent_sparse(self, probs, labels, weights, scale, grad=None):
        probs = _f32(probs, "probs")
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        row_loss = np.empty(probs.shape[0], np.float32)
        return _core.softmax_xent_sparse(probs, labels, _f32_or_none(weights, "weights"), scale,
                                         row_loss, grad)

    def _dense_loss(self, fn, pred, targets, weights, scale, grad):
        pred = _f32(pred, "pred")
        row_loss = np.empty(pred.shape[0], np.float32)
        return fn(pred, _f32(targets, "targets"), _f32_or_none(weights, "weights"), scale,
                  row_loss, grad)

    def softmax_xent_dense(self, probs, targets, weights, scale, grad=None):
        return self._dense_loss(_core.softmax_xent_dense, probs, targets, weights, scale, grad)

    def sigmoid_bxent(self, probs, targets, weights, scale, grad=None):
        return self._dense_loss(_core.sigmoid_bxent, probs, targets, weights, scale, grad)

    def squared_error(self, pred, targets, weights, scale, grad=None):
        return self._dense_loss(_core.squared_error, pred, targets, weights, scale, grad)

    def absolute_error(self, pred, targets, weights, scale, grad=None):
        return self._dense_loss(_core.absolute_error, pred, targets, weights, scale, grad)

    def optimizer_update(self, kind, w, g, slots, scalars, clip_mode, limit, sizes):
        _required(w, "optimizer_update: w")
        _required(g, "optimizer_update: g")
        _core.optimizer_update(kind, w, g, tuple(slots) if isinstance(slots, list) else slots,
                               np.asarray(scalars, np.float32), clip_mode, limit, sizes)

    def l1l2_penalty(self, w, g, l1, l2):
        _required(w, "l1l2_penalty: w")
        return _core.l1l2_penalty(w, g, l1, l2)

    def sgd_update(self, w, g, m, lr, momentum, nesterov):
        _core.sgd_update(w, g, m, lr, momentum, nesterov)

    def adam_update(self, w, g, m, v, vmax, alpha, beta1, beta2, eps):
        _core.adam_update(w, g, m, v, vmax, alpha, beta1, beta2, eps)

    def rmsprop_update(self, w, g, v, mom, mg, lr, rho, momentum, eps):
        _core.rmsprop_update(w, g, v, mom, mg, lr, rho, momentum, eps)

    def adagrad_update(self, w, g, acc, lr, eps):
        _core.adagrad_update(w, g, acc, lr, eps)

    def adadelta_update(self, w, g, acc_g, acc_dx, lr, rho, eps):
        _core.adadelta_update(w, g, acc_g, acc_dx, lr, rho, eps)

    def adamax_update(self, w, g, m, u, alpha, beta1, beta2, eps):
        _core.adamax_update(w, g, m, u, alpha, beta1, beta2, eps)

    def lion_update(self, w, g, m, lr, beta1, beta2):
        _core.lion_update(w, g, m, lr, beta1, beta2)

    def nadam_update(self, w, g, m, v, lr, beta1, beta2, eps, mu_t, mu_t1, u_prod, u_prod_t1,
                     beta2_power):
        _core.nadam_update(w, g, m, v, lr, beta1, beta2, eps, mu_t, mu_t1, u_prod, u_prod_t1,
                           beta2_power)

    def ftrl_update(self, w, g, acc, lin, lr, lr_power, l1, l2, l2_shrinkage, beta):
        _core.ftrl_update(w, g, acc, lin, lr, lr_power, l1, l2, l2_shrinkage, beta)

    # ---- recurrent layers: csrc/recurrent.c (the activations it has; else the reference) --
    def copy_steps(self, src, dst):
        _required(src, "src"), _required(dst, "dst")
        if src.dtype == np.float32 and dst.dtype == np.float32 and src.ndim == 3 and \
                src.strides[2] == 4 and dst.strides[2] == 4 and dst.flags.writeable:
            _core.copy_steps(src, dst)          # on the threads
        else:
            dst[...] = src
        return dst

    def rnn_forward(self, cell, x, kernel, recurrent, bias, h0, c0, mask, act, rec_act,
                    reset_after=True, zero_output=False, rec_mask=None, work=None):
        rnn_check_forward(cell, x, kernel, recurrent, bias, h0, c0, mask, act, rec_act,
                          reset_after, rec_mask)
        if not (_core.rnn_act_supported(act[0]) and _core.rnn_act_supported(rec_act[0])):
            return super().rnn_forward(cell, x, kernel, recurrent, bias, h0, c0, mask, act,
                                       rec_act, reset_after, zero_output, rec_mask)
        steps, batch, d_in = x.shape
        units, gu = recurrent.shape
        new = _rnn_arrays(work)
        # SimpleRNN and LSTM without recurrent dropout: x and the states packed as rows
        # [x_t | h_{t-1}], so the two weight gradients are one GEMM (csrc/recurrent.c)
        packed = cell != "gru" and rec_mask is None
        if packed:
            xh = new("rnn_xh", (steps + 1, batch, d_in + units))
            self.copy_steps(x, xh[:steps, :, :d_in])     # (any layout: copied anyway)
            x, hs = xh[:steps, :, :d_in], xh[:, :, d_in:]
        else:
            x = _f32(x, "x")
            hs = new("rnn_hs", (steps + 1, batch, units))
        hs[0] = h0
        cs = None
        if cell == "lstm":
            cs = new("rnn_cs", (steps + 1, batch, units))
            cs[0] = c0
        gates = new("rnn_gates", (steps, batch, gu))
        extra = None if cell == "simple" else new("rnn_extra", (steps, batch, units))
        # without a mask every output is its step's state: the outputs are hs[1:], not a copy
        ys = None if mask is None else new("rnn_ys", (steps, batch, units))
        mask = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
        rec_mask = _f32_or_none(rec_mask, "rec_mask")
        hd = None if rec_mask is None else new("rnn_hd", (steps, batch, units))
        flat = [None if a is None else a.reshape(-1) for a in
                (xh if packed else x, _f32(kernel, "kernel"), _f32(recurrent, "recurrent"),
                 _f32_or_none(bias, "bias"), mask, ys, None if packed else hs, cs, gates,
                 extra)]
        _core.rnn_forward(cell, steps, batch, d_in, units, *flat,
                          new("rnn_rec", (batch * gu,)), act[0], rec_act[0], reset_after,
                          zero_output, None if rec_mask is None else rec_mask.reshape(-1),
                          None if hd is None else hd.reshape(-1), packed)
        cache = {"kernel": True, "x": x, "bias": flat[3], "mask": mask, "hs": hs, "cs": cs,
                 "gates": gates, "extra": extra, "rec_mask": rec_mask, "hd": hd,
                 "xh": xh if packed else None}
        return hs[1:] if ys is None else ys, hs[steps], None if cs is None else cs[steps], \
            cache

    def rnn_backward(self, cell, cache, dy, dh_t, dc_t, kernel, recurrent, d_kernel,
                     d_recurrent, d_bias, act, rec_act, reset_after=True, zero_output=False,
                     need_dx=True, work=None):
        if not isinstance(cache, dict) or "kernel" not in cache:   # the reference's forward
            return super().rnn_backward(cell, cache, dy, dh_t, dc_t, kernel, recurrent,
                                        d_kernel, d_recurrent, d_bias, act, rec_act,
                                        reset_after, zero_output, need_dx)
        rnn_check_backward(cell, cache, _RNN_CACHE_KEYS, dy, dh_t, dc_t, kernel, recurrent,
                           d_kernel, d_recurrent, d_bias, act, rec_act, reset_after)
        for name, a in (("d_kernel", d_kernel), ("d_recurrent", d_recurrent),
                        ("d_bias", d_bias)):    # the kernel writes them in place, flat
            if a is not None and not (a.dtype == np.float32 and a.flags.c_contiguous):
                raise TypeError(f"{name}: expected a C-contiguous float32 array, got "
                                f"{a.dtype}{'' if a.flags.c_contiguous else ' non-contiguous'}")
        x = cache["x"]
        steps, batch, d_in = x.shape
        units, gu = recurrent.shape

        def state(given):
            return np.zeros((batch, units), np.float32) if given is None else \
                np.array(given, np.float32, order="C")      # a copy: the kernel writes it
        dh = state(dh_t)
        dc = state(dc_t) if cell == "lstm" else None
        new = _rnn_arrays(work)
        scratch = new("rnn_scratch", (3, batch * units))
        dgx = new("rnn_dgx", (steps, batch, gu))
        dgr = new("rnn_dgr", (steps, batch, gu)) if cell == "gru" and reset_after else dgx
        # the kernel writes dx batch-major (the layer's layout): returned as its time-major view
        dx = new("rnn_dx", (batch, steps, d_in)) if need_dx else None
        packed = cache.get("xh") is not None
        flat = [None if a is None else a.reshape(-1) for a in
                (cache["xh"] if packed else x, _f32(kernel, "kernel"),
                 _f32(recurrent, "recurrent"))]
        _core.rnn_backward(
            cell, steps, batch, d_in, units, *flat, cache["bias"], cache["mask"] if
            cache["mask"] is None else cache["mask"].reshape(-1),
            *[None if a is None else a.reshape(-1) for a in
              (None if packed else cache["hs"], cache["cs"], cache["gates"], cache["extra"],
               _f32_or_none(dy, "dy"), dh, dc)],
            scratch[0], scratch[1], scratch[2], dgx.reshape(-1), dgr.reshape(-1),
            d_kernel.reshape(-1), d_recurrent.reshape(-1),
            None if d_bias is None else d_bias.reshape(-1),
            None if dx is None else dx.reshape(-1), act[0], rec_act[0], reset_after,
            zero_output, *[None if a is None else a.reshape(-1)
                           for a in (cache["rec_mask"], cache["hd"])], packed)
        return None if dx is None else dx.transpose(1, 0, 2), dh, dc
