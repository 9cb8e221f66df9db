"""Run by test_core_fuzz.py in a subprocess (a crash there fails the test, not the test run):
drives every fastnn._core kernel with valid arguments and then with one bad argument at a time
(None, wrong dtype, wrong rank, non-contiguous, wrong shape, read-only output, an output
aliasing an input, huge or negative sizes, huge window strides, non-arrays), and reports as JSON
every bad call that did not raise TypeError/ValueError/OverflowError. Usage:
python core_fuzz_worker.py SEED N_CASES."""
import json
import sys

import numpy as np

from fastnn import _core

F32, I32 = np.float32, np.int32
OK_ERRORS = (TypeError, ValueError, OverflowError)
HUGE = [2**31 - 1, 2**31, 2**63 - 1, -1, -2**31, 0]


def f(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def pos(rng, *shape):
    return (rng.random(shape) + 0.5).astype(F32)


# Each spec: (argument names, values, metadata). metadata: name -> (role, required) with role
# "in" or "out"; "same": pairs (out, in) that may be exactly the same array; "free": arguments
# whose dimension 0 may change (shape mutations then change another one); "ints": int
# arguments and whether any huge/negative value must be rejected.
def spec_gemm(rng):
    m, k, n = rng.integers(1, 6, 3)
    return dict(a=f(rng, m, k), b=f(rng, k, n), out=f(rng, m, n), trans_a=False, trans_b=False,
                alpha=1.0, beta=0.0), dict(a="in", b="in", out="out")


def spec_act_forward(rng):
    r, c = rng.integers(1, 6, 2)
    z = f(rng, r, c)
    return dict(act=int(rng.integers(0, 13)), alpha=0.1, z=z, y=f(rng, r, c)), \
        dict(z="in", y="out", same={("y", "z")}, ints={"act": True})


def spec_act_backward(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(act=int(rng.integers(0, 13)), alpha=0.1, z=f(rng, r, c), y=f(rng, r, c),
                dy=f(rng, r, c), dz=f(rng, r, c)), \
        dict(z="in?", y="in", dy="in", dz="out", same={("dz", "dy"), ("dz", "y"), ("dz", "z")},
             ints={"act": True})


def spec_column_sum(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(a=f(rng, r, c), out=f(rng, c)), dict(a="in", out="out", free={"a"})


def spec_dense_forward(rng):
    r, i, o = rng.integers(1, 6, 3)
    z = f(rng, r, o)
    return dict(x=f(rng, r, i), kernel=f(rng, i, o), bias=f(rng, o), z=z, y=f(rng, r, o),
                act=1, alpha=0.0, training=bool(rng.integers(0, 2))), \
        dict(x="in", kernel="in", bias="in?", z="out", y="out", same={("y", "z")},
             ints={"act": True})


def spec_dense_backward(rng):
    r, i, o = rng.integers(1, 6, 3)
    return dict(x=f(rng, r, i), kernel=f(rng, i, o), z=f(rng, r, o), y=f(rng, r, o),
                dy=f(rng, r, o), dz=f(rng, r, o), d_kernel=f(rng, i, o), d_bias=f(rng, o),
                dx=f(rng, r, i), act=2, alpha=0.0, kernel_step=0.0), \
        dict(x="in", kernel="in", z="in?", y="in", dy="in", dz="out", d_kernel="out?",
             d_bias="out?", dx="out?", same={("dz", "dy"), ("dz", "y"), ("dz", "z")},
             ints={"act": True})


def _loss(rng, labels=False):
    r, c = rng.integers(1, 6, 2)
    p = pos(rng, r, c)
    t = rng.integers(0, c, r).astype(I32) if labels else pos(rng, r, c)
    return r, c, p, t


def spec_softmax_xent_sparse(rng):
    r, c, p, t = _loss(rng, True)
    return dict(probs=p, labels=t, weights=pos(rng, r), scale=1.0, row_loss=f(rng, r),
                grad=f(rng, r, c)), \
        dict(probs="in", labels="in", weights="in?", row_loss="out", grad="out?")


def _dense_loss_spec(name):
    def spec(rng):
        r, c, p, t = _loss(rng)
        return dict(pred=p, targets=t, weights=pos(rng, r), scale=1.0, row_loss=f(rng, r),
                    grad=f(rng, r, c)), \
            dict(pred="in", targets="in", weights="in?", row_loss="out", grad="out?")
    return spec


def _update_spec(slots, required, scalars):
    def spec(rng):
        n = int(rng.integers(1, 40))
        d = dict(w=f(rng, n), g=f(rng, n))
        meta = dict(w="out", g="in")
        for s in slots:
            d[s] = pos(rng, n)
            meta[s] = "out" if s in required else "out?"
        d.update(scalars)
        return d, meta
    return spec


# (slots, required slots) and scalars (after the weight decay factor) of each optimizer kind
_OPT_KINDS = [(1, 0, [1e-2, 0.0, 0.0]), (3, 2, [1e-3, .9, .999, 1e-7]),
              (3, 1, [1e-3, .9, 0., 1e-7]),
              (1, 1, [1e-3, 1e-7]), (2, 2, [1.0, .95, 1e-7]), (2, 2, [1e-3, .9, .999, 1e-7]),
              (2, 2, [1e-3, .9, .999, 1e-7, .9, .9, .9, .81, .999]),
              (2, 2, [1e-3, -0.5, 0., 0., 0., 0.]), (1, 1, [1e-3, .9, .99])]


def spec_optimizer_update(rng):
    kind = int(rng.integers(0, len(_OPT_KINDS)))
    n_slots, n_req, scalars = _OPT_KINDS[kind]
    n = int(rng.integers(1, 40))
    cut = sorted(int(v) for v in rng.integers(0, n + 1, 2))
    slots = tuple(pos(rng, n) if i < n_req or rng.random() < 0.5 else None
                  for i in range(n_slots))
    return dict(kind=kind, w=f(rng, n), g=f(rng, n), slots=slots,
                scalars=np.array([0.01] + scalars, F32), clip_mode=int(rng.integers(0, 4)),
                limit=0.5, sizes=[cut[0], cut[1] - cut[0], n - cut[1]]), \
        dict(w="out", g="in", scalars="in", ints={"kind": True, "clip_mode": True})


def spec_l1l2_penalty(rng):
    r, c = (int(v) for v in rng.integers(1, 6, 2))
    return dict(w=f(rng, r, c), g=f(rng, r, c), l1=0.01, l2=0.02), dict(w="in", g="out?")


def _pool_geom(rng, k=2, s=2):
    n, c = (int(v) for v in rng.integers(1, 4, 2))
    oh, ow = (int(v) for v in rng.integers(2, 4, 2))
    h, w = (oh - 1) * s + k, (ow - 1) * s + k
    return n, h, w, c, (k, k, s, s, 0, 0, oh, ow)


def _conv_geom(rng):
    """A 3x3 stride-1 convolution window, half the time dilated (dh, dw in 2..3): a window of
    10 entries, its extent (3 - 1) * d + 1."""
    n, h, w, c, win = _pool_geom(rng, 3, 1)
    if rng.random() < 0.5:
        dh, dw = (int(v) for v in rng.integers(2, 4, 2))
        h, w = win[6] - 1 + 2 * dh + 1, win[7] - 1 + 2 * dw + 1
        win = win + (dh, dw)
    return n, h, w, c, win


def spec_im2col(rng):
    n, h, w, c, win = _conv_geom(rng)
    return dict(x=f(rng, n, h, w, c), window=win, cols=f(rng, n * win[6] * win[7], 9 * c)), \
        dict(x="in", cols="out", window=True)


def _winograd_geom(rng):
    """A 3x3 stride-1 window Winograd takes (16+ channels, 32+ output tiles of 2x2), "same" or
    "valid" padding and odd or even output sizes."""
    c, oh, ow = int(rng.integers(16, 19)), int(rng.integers(11, 14)), int(rng.integers(11, 14))
    pad = int(rng.integers(0, 2))
    return 1, oh + 2 - 2 * pad, ow + 2 - 2 * pad, c, (3, 3, 1, 1, pad, pad, oh, ow)


def spec_winograd_work(rng):
    n, h, w, c, win = _winograd_geom(rng)
    return dict(x_shape=(n, h, w, c), window=win, filters=int(rng.integers(1, 5))), \
        dict(window=True, ints={"filters": False})


def spec_conv2d_forward(rng):
    if rng.random() < 0.3:      # by Winograd: work instead of cols
        n, h, w, c, win = _winograd_geom(rng)
        rows, filters = n * win[6] * win[7], int(rng.integers(1, 5))
        work = f(rng, _core.winograd_work((n, h, w, c), win, filters))
        return dict(x=f(rng, n, h, w, c), kernel=f(rng, 9 * c, filters), bias=f(rng, filters),
                    act=int(rng.integers(0, 13)), alpha=0.1, window=win, cols=None,
                    z=f(rng, rows, filters), y=f(rng, rows, filters), mean=f(rng, filters),
                    var=pos(rng, filters), gamma=f(rng, filters), beta=f(rng, filters),
                    eps=1e-3, residual=f(rng, rows, filters), work=work), \
            dict(x="in", kernel="in", bias="in?", z="out", y="out", mean="in", var="in",
                 gamma="in?", beta="in?", residual="in?", work="out?", same={("y", "z")},
                 window=True, ints={"act": True})
    n, h, w, c, win = _conv_geom(rng)
    rows, filters = n * win[6] * win[7], int(rng.integers(1, 5))
    return dict(x=f(rng, n, h, w, c), kernel=f(rng, 9 * c, filters), bias=f(rng, filters),
                act=int(rng.integers(0, 13)), alpha=0.1, window=win,
                cols=f(rng, rows, 9 * c), z=f(rng, rows, filters), y=f(rng, rows, filters),
                mean=f(rng, filters), var=pos(rng, filters), gamma=f(rng, filters),
                beta=f(rng, filters), eps=1e-3, residual=f(rng, rows, filters)), \
        dict(x="in", kernel="in", bias="in?", cols="out", z="out", y="out", mean="in",
             var="in", gamma="in?", beta="in?", residual="in?", same={("y", "z")},
             window=True, ints={"act": True})


def spec_col2im(rng):
    n, h, w, c, win = _conv_geom(rng)
    return dict(cols=f(rng, n * win[6] * win[7], 9 * c), window=win, x=f(rng, n, h, w, c)), \
        dict(cols="in", x="out", window=True)


def spec_maxpool_forward(rng):
    n, h, w, c, win = _pool_geom(rng)
    out = (n, win[6], win[7], c)
    return dict(x=f(rng, n, h, w, c), window=win, y=f(rng, *out),
                argmax=np.zeros(out, I32)), dict(x="in", y="out", argmax="out", window=True)


def spec_maxpool_backward(rng):
    n, h, w, c, win = _pool_geom(rng)
    out = (n, win[6], win[7], c)
    return dict(dy=f(rng, *out), argmax=np.zeros(out, I32), window=win, dx=f(rng, n, h, w, c)), \
        dict(dy="in", argmax="in", dx="out", window=True)


def spec_avgpool_forward(rng):
    n, h, w, c, win = _pool_geom(rng)
    return dict(x=f(rng, n, h, w, c), window=win, y=f(rng, n, win[6], win[7], c)), \
        dict(x="in", y="out", window=True)


def spec_avgpool_backward(rng):
    n, h, w, c, win = _pool_geom(rng)
    return dict(dy=f(rng, n, win[6], win[7], c), window=win, dx=f(rng, n, h, w, c)), \
        dict(dy="in", dx="out", window=True)


def _conv2d_maxpool(rng):
    n, filters, c = (int(v) for v in rng.integers(1, 4, 3))
    oh = ow = 4
    conv = (3, 3, 1, 1, 0, 0, oh, ow)
    pool = (2, 2, 2, 2, 0, 0, 2, 2)
    groups, chunk = _core.conv2d_maxpool_plan(n, oh, ow, filters)
    rows = groups * chunk * oh * ow
    return n, c, filters, conv, pool, groups, rows


def spec_conv2d_maxpool_forward(rng):
    n, c, filters, conv, pool, groups, rows = _conv2d_maxpool(rng)
    return dict(x=f(rng, n, 6, 6, c), kernel=f(rng, 9 * c, filters), bias=f(rng, filters),
                act=1, alpha=0.0, conv_window=conv, pool_window=pool,
                cols=f(rng, n * 16, 9 * c), work=f(rng, rows, filters),
                y=f(rng, n, 2, 2, filters), argmax=np.zeros((n, 2, 2, filters), I32)), \
        dict(x="in", kernel="in", bias="in?", cols="out", work="out", y="out", argmax="out",
             free={"work"}, window=True, ints={"act": True})


def spec_conv2d_maxpool_backward(rng):
    n, c, filters, conv, pool, groups, rows = _conv2d_maxpool(rng)
    partials = f(rng, (groups - 1) * 9 * c, filters) if groups > 1 else None
    return dict(cols=f(rng, n * 16, 9 * c), kernel=f(rng, 9 * c, filters),
                y=f(rng, n, 2, 2, filters), argmax=np.zeros((n, 2, 2, filters), I32),
                dy=f(rng, n, 2, 2, filters), act=1, alpha=0.0, conv_window=conv,
                pool_window=pool, x_shape=(n, 6, 6, c), d_kernel=f(rng, 9 * c, filters),
                d_bias=f(rng, filters), dx=f(rng, n, 6, 6, c), work=f(rng, rows, filters),
                dcols_work=f(rng, rows, 9 * c), partials=partials), \
        dict(cols="in", kernel="in", y="in", argmax="in", dy="out", d_kernel="out?",
             d_bias="out?", dx="out?", work="out?", dcols_work="out?", partials="out?",
             free={"work", "dcols_work", "partials"}, window=True, ints={"act": True})


def spec_batchnorm_stats(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(x=f(rng, r, c), mean=f(rng, c), var=f(rng, c)), \
        dict(x="in", mean="out", var="out", free={"x"})


def spec_batchnorm_apply(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(x=f(rng, r, c), mean=f(rng, c), var=pos(rng, c), gamma=f(rng, c),
                beta=f(rng, c), eps=1e-3, y=f(rng, r, c)), \
        dict(x="in", mean="in", var="in", gamma="in?", beta="in?", y="out", same={("y", "x")})


def spec_bias_act_forward(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(act=int(rng.integers(0, 13)), alpha=0.1, z=f(rng, r, c), y=f(rng, r, c),
                bias=f(rng, c), mean=f(rng, c), var=pos(rng, c), gamma=f(rng, c),
                beta=f(rng, c), eps=1e-3, residual=f(rng, r, c)), \
        dict(z="out", y="out", bias="in?", mean="in", var="in", gamma="in?", beta="in?",
             residual="in?", same={("y", "z")}, ints={"act": True})


def spec_batchnorm_backward(rng):
    r, c = rng.integers(1, 6, 2)
    return dict(x=f(rng, r, c), dy=f(rng, r, c), mean=f(rng, c), var=pos(rng, c),
                gamma=f(rng, c), eps=1e-3, dx=f(rng, r, c), d_gamma=f(rng, c),
                d_beta=f(rng, c)), \
        dict(x="in", dy="in", mean="in", var="in", gamma="in?", dx="out", d_gamma="out?",
             d_beta="out?", same={("dx", "dy")})


def spec_batchnorm_update_moving(rng):
    c = int(rng.integers(1, 6))
    return dict(moving_mean=f(rng, c), moving_var=pos(rng, c), mean=f(rng, c), var=pos(rng, c),
                momentum=0.9), dict(moving_mean="out", moving_var="out", mean="in", var="in")


def spec_gemm_row_blocks(rng):
    return dict(rows=32, d_in=784, d_out=128), dict(ints={"rows": False, "d_in": False,
                                                         "d_out": False})


def spec_conv2d_maxpool_plan(rng):
    return dict(n=8, oh=26, ow=26, filters=32), dict(ints={"n": False, "oh": False,
                                                           "ow": False, "filters": False})


def spec_activation_needs_input(rng):
    return dict(act=int(rng.integers(0, 13))), dict(ints={"act": True})


def spec_embedding_forward(rng):
    rows, n, dim = rng.integers(1, 6, 3)
    return dict(table=f(rng, rows, dim), ids=rng.integers(0, rows, n).astype(I32),
                out=f(rng, n, dim)), \
        dict(table="in", ids="in", out="out", free={"table"}, index={"ids"})


def spec_embedding_backward(rng):
    rows, n, dim = rng.integers(1, 6, 3)
    return dict(ids=rng.integers(0, rows, n).astype(I32), dy=f(rng, n, dim),
                d_table=f(rng, rows, dim)), \
        dict(ids="in", dy="in", d_table="out", free={"d_table"}, index={"ids"})


def _rnn(rng):
    """A small recurrent sequence: its sizes, flat weights and optional pieces (bias, mask,
    recurrent dropout), and the metadata the forward and backward specs share."""
    kind = str(rng.choice(["simple", "lstm", "gru"]))
    steps, batch, d_in, units = (int(v) for v in rng.integers(1, 4, 4))
    gu = {"simple": 1, "lstm": 4, "gru": 3}[kind] * units
    reset_after = bool(rng.integers(0, 2))
    two = kind == "gru" and reset_after        # a GRU with reset_after has two bias rows
    n, su = steps * batch, batch * units
    bias = f(rng, gu * (2 if two else 1)) if rng.random() < 0.8 else None
    mask = rng.random(n) < 0.7 if rng.random() < 0.5 else None
    rec_mask = pos(rng, su) if rng.random() < 0.5 else None
    sizes = dict(kind=kind, steps=steps, batch=batch, d_in=d_in, units=units,
                 x=f(rng, n * d_in), kernel=f(rng, d_in * gu), recurrent=f(rng, units * gu),
                 bias=bias, mask=mask)
    # act ids: linear, relu, sigmoid, tanh have recurrent kernels
    acts = dict(act=int(rng.choice([0, 1, 2, 3])), rec_act=int(rng.choice([0, 1, 2, 3])),
                reset_after=reset_after, zero_output=bool(rng.integers(0, 2)))
    meta = dict(x="in", kernel="in", recurrent="in", bias="in?", mask="in?",
                ints={"steps": True, "batch": True, "d_in": True, "units": True, "act": True,
                      "rec_act": True})
    return kind, n, su, gu, two, sizes, acts, rec_mask, meta


def _rnn_packed(rng, kind, d, rec_mask, meta, written):
    """Half the SimpleRNN/LSTM sequences without recurrent dropout packed: x holds the rows
    [x_t | h_{t-1}] ((steps + 1) * batch of d_in + units floats) and hs is None."""
    if kind == "gru" or rec_mask is not None or rng.random() < 0.5:
        return False
    rows = (d["steps"] + 1) * d["batch"]
    d.update(x=f(rng, rows * (d["d_in"] + d["units"])), hs=None)
    meta.update(x="out" if written else "in")
    return True


def spec_rnn_forward(rng):
    kind, n, su, gu, two, d, acts, rec_mask, meta = _rnn(rng)
    units = d["units"]
    d.update(ys=f(rng, n * units), hs=f(rng, su + n * units),
             cs=f(rng, su + n * units) if kind == "lstm" else None, gates=f(rng, n * gu),
             extra=None if kind == "simple" else f(rng, n * units), rec=f(rng, d["batch"] * gu))
    d.update(acts, rec_mask=rec_mask, hd=None if rec_mask is None else f(rng, n * units))
    # ys may be None without a mask (the outputs are then hs[1:])
    meta.update(ys="out?", hs="out", cs="out", gates="out", extra="out", rec="out",
                rec_mask="in?", hd="out")
    d.update(packed=_rnn_packed(rng, kind, d, rec_mask, meta, True))
    return d, meta


def spec_rnn_backward(rng):
    kind, n, su, gu, two, d, acts, rec_mask, meta = _rnn(rng)
    units, lstm = d["units"], kind == "lstm"
    d.update(hs=f(rng, su + n * units), cs=f(rng, su + n * units) if lstm else None,
             gates=f(rng, n * gu), extra=None if kind == "simple" else f(rng, n * units),
             dys=f(rng, n * units), dh=f(rng, su), dc=f(rng, su) if lstm else None,
             carry=f(rng, su), dht=f(rng, su), drh=f(rng, su), dgx=f(rng, n * gu))
    # dgr may be dgx itself (one buffer for both gate gradients) but for a GRU with reset_after
    d.update(dgr=f(rng, n * gu), d_kernel=f(rng, d["kernel"].size),
             d_recurrent=f(rng, units * gu),
             d_bias=None if d["bias"] is None else f(rng, d["bias"].size),
             dx=f(rng, d["x"].size) if rng.random() < 0.8 else None)
    d.update(acts, rec_mask=rec_mask, hd=None if rec_mask is None else f(rng, n * units))
    meta.update(hs="in", cs="in", gates="in", extra="in", dys="in?", dh="out", dc="out",
                carry="out", dht="out", drh="out", dgx="out", dgr="out", d_kernel="out",
                d_recurrent="out", d_bias="out", dx="out?", rec_mask="in?", hd="in",
                same=set() if two else {("dgr", "dgx")})
    d.update(packed=_rnn_packed(rng, kind, d, rec_mask, meta, False))
    return d, meta


def spec_copy_steps(rng):
    """A sequence between layouts: src sometimes a view with its first two axes swapped."""
    a, b, n = (int(v) for v in rng.integers(1, 5, 3))
    src = f(rng, b, a, n).transpose(1, 0, 2) if rng.random() < 0.5 else f(rng, a, b, n)
    return dict(src=src, dst=f(rng, a, b, n)), dict(src="in", dst="out")


def spec_rnn_act_supported(rng):
    return dict(act=int(rng.integers(0, 13))), dict(ints={"act": True})


SPECS = {
    "embedding_forward": spec_embedding_forward, "embedding_backward": spec_embedding_backward,
    "gemm": spec_gemm, "act_forward": spec_act_forward, "act_backward": spec_act_backward,
    "column_sum": spec_column_sum, "dense_forward": spec_dense_forward,
    "dense_backward": spec_dense_backward, "softmax_xent_sparse": spec_softmax_xent_sparse,
    "softmax_xent_dense": _dense_loss_spec("softmax_xent_dense"),
    "sigmoid_bxent": _dense_loss_spec("sigmoid_bxent"),
    "squared_error": _dense_loss_spec("squared_error"),
    "absolute_error": _dense_loss_spec("absolute_error"),
    "sgd_update": _update_spec(["m"], ["m"], dict(lr=0.1, momentum=0.9, nesterov=False)),
    "adam_update": _update_spec(["m", "v", "vmax"], ["m", "v"],
                                dict(alpha=1e-3, beta1=0.9, beta2=0.999, eps=1e-7)),
    "rmsprop_update": _update_spec(["v", "mom", "mg"], ["v", "mom"],
                                   dict(lr=1e-3, rho=0.9, momentum=0.5, eps=1e-7)),
    "adagrad_update": _update_spec(["acc"], ["acc"], dict(lr=1e-3, eps=1e-7)),
    "adadelta_update": _update_spec(["acc_g", "acc_dx"], ["acc_g", "acc_dx"],
                                    dict(lr=1.0, rho=0.95, eps=1e-7)),
    "lion_update": _update_spec(["m"], ["m"], dict(lr=1e-3, beta1=0.9, beta2=0.99)),
    "optimizer_update": spec_optimizer_update, "l1l2_penalty": spec_l1l2_penalty,
    "adamax_update": _update_spec(["m", "u"], ["m", "u"],
                                  dict(alpha=1e-3, beta1=0.9, beta2=0.999, eps=1e-7)),
    "nadam_update": _update_spec(["m", "v"], ["m", "v"],
                                 dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, mu_t=0.9,
                                      mu_t1=0.9, u_prod=0.9, u_prod_t1=0.81,
                                      beta2_power=0.999)),
    "ftrl_update": _update_spec(["acc", "lin"], ["acc", "lin"],
                                dict(lr=1e-3, lr_power=-0.5, l1=0.0, l2=0.0, l2_shrinkage=0.0,
                                     beta=0.0)),
    "im2col": spec_im2col, "conv2d_forward": spec_conv2d_forward, "col2im": spec_col2im,
    "winograd_work": spec_winograd_work,
    "maxpool_forward": spec_maxpool_forward,
    "maxpool_backward": spec_maxpool_backward, "avgpool_forward": spec_avgpool_forward,
    "avgpool_backward": spec_avgpool_backward,
    "conv2d_maxpool_forward": spec_conv2d_maxpool_forward,
    "conv2d_maxpool_backward": spec_conv2d_maxpool_backward,
    "conv2d_maxpool_plan": spec_conv2d_maxpool_plan,
    "batchnorm_stats": spec_batchnorm_stats, "batchnorm_apply": spec_batchnorm_apply,
    "batchnorm_backward": spec_batchnorm_backward,
    "batchnorm_update_moving": spec_batchnorm_update_moving,
    "bias_act_forward": spec_bias_act_forward, "gemm_row_blocks": spec_gemm_row_blocks,
    "activation_needs_input": spec_activation_needs_input,
    "rnn_forward": spec_rnn_forward, "rnn_backward": spec_rnn_backward,
    "rnn_act_supported": spec_rnn_act_supported, "copy_steps": spec_copy_steps,
}
# _core's callables that are not kernels over buffers (configuration; consecutive, a check
# over a list of arrays, whose bad inputs test_data_inputs.py tries; all_finite, which takes
# an array of any shape, tried in test_fused.py; shard_supported, a build fact), DenseStack,
# which has cases of its own below, and SharedStep, a step over a shared window whose bad
# arguments test_distribution.py tries one by one (a bad control block would make a fuzzed
# step wait for peers that do not exist).
NOT_KERNELS = {"set_blas", "get_num_threads", "set_num_threads", "consecutive", "all_finite",
               "shard_supported", "DenseStack", "SharedStep", "StepHooks"}


def kernels():
    """Every public callable of _core: a kernel without a spec here fails the test."""
    return sorted(n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))
                  and n not in NOT_KERNELS)


def _arrays(d, meta):
    return [k for k, v in d.items() if isinstance(v, np.ndarray) and k in meta]


def _noncontig(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    v = big[..., ::2]
    v[...] = a
    return v


def _reshape_bad(rng, a, free):
    dims = list(range(a.ndim))
    if free and a.ndim > 1:
        dims.remove(0)
    if a.ndim == 4:     # an image's height/width are free as long as the windows fit
        dims = [d for d in dims if d in (0, 3)]
    d = int(rng.choice(dims))
    shape = list(a.shape)
    shape[d] = shape[d] + 1 if shape[d] == 1 or rng.random() < 0.5 else shape[d] - 1
    return np.zeros(shape, a.dtype)


def mutations(rng, name, d, meta):
    """(description, new args, whether the call must fail)."""
    arrs = _arrays(d, meta)
    role = {k: meta[k] for k in arrs}
    k = str(rng.choice(arrs)) if arrs else None
    kinds = ["none", "dtype", "ndim", "noncontig", "shape", "readonly", "alias", "partial",
             "object", "zero_huge", "ints", "window"]
    kind = str(rng.choice(kinds))
    new = dict(d)
    if kind in ("ints", "window") or k is None:
        ints = meta.get("ints", {})
        if kind == "window" and meta.get("window"):
            windows = [key for key in d if key.endswith("window")]
            wk = windows[int(rng.integers(0, 1 if "window" in d else 2))]
            win = list(d[wk])
            i = int(rng.integers(0, len(win)))
            v = int(rng.choice([2**31 - 1, 2**31, 2**63 - 1, -1, -(2**31), 0, 2**40]))
            if i in (4, 5) and v == 0:
                v = 2**31 - 1
            win[i] = v
            new[wk] = tuple(win)
            return f"{wk}[{i}] = {v}", new, True
        if not ints:
            return None
        key = str(rng.choice(sorted(ints)))
        v = int(rng.choice(HUGE))
        new[key] = v
        must = ints[key] and v != 0 or v < 0
        if key in ("act", "rec_act") and v == 0:     # activation id 0 (linear) exists
            must = False
        return f"{key} = {v}", new, must
    a = d[k]
    r = role[k]
    if kind == "none":
        new[k] = None
        return f"{k} = None", new, not r.endswith("?")
    if kind == "dtype":     # (index arrays take int32 and int64: float32 is the wrong one)
        new[k] = a.astype(F32 if k in meta.get("index", ()) else
                          np.float64 if a.dtype == F32 else np.int64)
        return f"{k} as {new[k].dtype}", new, True
    if kind == "ndim":
        new[k] = a.reshape(a.shape + (1,)) if rng.random() < 0.5 or a.ndim == 1 else a.reshape(-1)
        return f"{k} reshaped to {new[k].shape}", new, True
    if kind == "noncontig":
        if a.size < 2 or a.shape[-1] < 1:
            return None
        new[k] = _noncontig(a)
        return f"{k} non-contiguous", new, True
    if kind == "shape":
        new[k] = _reshape_bad(rng, a, k in meta.get("free", ()))
        return f"{k} of shape {new[k].shape}", new, True
    if kind == "readonly":
        if not r.startswith("out"):
            return None
        b = a.copy()
        b.flags.writeable = False
        new[k] = b
        return f"{k} read-only", new, True
    if kind == "object":
        new[k] = [[1.0, 2.0]] if rng.random() < 0.5 else "x"
        return f"{k} = {new[k]!r}", new, True
    if kind == "zero_huge":
        shape = (2**31 + 1,) + (0,) * (a.ndim - 1) if a.ndim > 1 else (0,)
        if a.ndim == 1:
            new[k] = np.zeros(0, a.dtype)
            if a.shape[0] == 0:
                return None
            return f"{k} empty", new, True
        new[k] = np.zeros(shape, a.dtype)
        return f"{k} of shape {shape}", new, True
    outs = [o for o in arrs if role[o].startswith("out")]
    if not outs:
        return None
    o = str(rng.choice(outs))
    others = [i for i in arrs if i != o and d[i].dtype == d[o].dtype and d[i].size == d[o].size]
    if kind == "alias":
        if not others:
            return None
        i = str(rng.choice(others))
        new[o] = d[i].reshape(d[o].shape) if d[i].shape != d[o].shape else d[i]
        pairs = meta.get("same", set())
        same = ((o, i) in pairs or (i, o) in pairs) and d[i].shape == d[o].shape
        return f"{o} is {i}", new, not same
    if kind == "partial":       # an output shifted by one element over another array
        cands = [i for i in arrs if i != o and d[i].dtype == d[o].dtype and d[i].size >= 2]
        if not cands or d[o].size < 2:
            return None
        i = str(rng.choice(cands))
        buf = np.zeros(max(d[i].size, d[o].size) + 1, d[o].dtype)
        new[i] = buf[:d[i].size].reshape(d[i].shape)
        new[i][...] = d[i]
        new[o] = buf[1:1 + d[o].size].reshape(d[o].shape)
        return f"{o} overlaps {i} shifted by one", new, True
    return None


def call(name, d):
    return getattr(_core, name)(*d.values())


def dense_stack_cases(rng):
    """DenseStack: construction and run with missing or bad optimizer slots, buffers."""
    def layer(i, o):
        return (f(rng, i, o), f(rng, o), f(rng, i, o), f(rng, o), 1, 0.0)
    params = np.zeros(8 * 4 + 4 + 4 * 3 + 3, F32)
    grads = np.zeros_like(params)
    layers = [layer(8, 4), layer(4, 3)]
    x = f(rng, 10, 8)
    y = rng.integers(0, 3, 10).astype(I32)
    base = dict(layers=layers, batch=4, train=True, loss=0, fused=True, mean_reduction=True,
                metric=0, threshold=0.5, opt=1, params=params, grads=grads,
                slots=(np.zeros_like(params), np.zeros_like(params)))
    bad = []
    for opt, n_req in enumerate([0, 2, 1, 1, 2, 2, 2, 2]):
        for n in range(n_req):
            bad.append((f"opt {opt} with {n} slots", dict(base, opt=opt,
                                                               slots=(np.zeros_like(params),) * 0
                                                               + tuple(np.zeros_like(params)
                                                                       for _ in range(n)))))
    bad += [("slots=None entries", dict(base, slots=(None, None))),
            ("slot float64", dict(base, slots=(np.zeros(params.size), np.zeros_like(params)))),
            ("slot short", dict(base, slots=(np.zeros(3, F32), np.zeros_like(params)))),
            ("slot is params", dict(base, slots=(params, np.zeros_like(params)))),
            ("grads is params", dict(base, grads=params)),
            ("params None", dict(base, params=None)),
            ("params 2-D", dict(base, params=params.reshape(1, -1))),
            ("batch 0", dict(base, batch=0)), ("batch -1", dict(base, batch=-1)),
            ("batch 2**31", dict(base, batch=2**31)),
            ("kernel float64", dict(base, layers=[(layers[0][0].astype(float),) + layers[0][1:],
                                                  layers[1]])),
            ("kernel list", dict(base, layers=[([[1.0]],) + layers[0][1:], layers[1]])),
            ("layer not a tuple", dict(base, layers=[None, layers[1]])),
            ("mismatched layers", dict(base, layers=[layers[1], layers[0]])),
            ("d_kernel None", dict(base, layers=[layers[0][:2] + (None,) + layers[0][3:],
                                                 layers[1]])),
            ("d_kernel is kernel", dict(base, layers=[layers[0][:2] + (layers[0][0],)
                                                      + layers[0][3:], layers[1]])),
            ("act 99", dict(base, layers=[layers[0][:4] + (99, 0.0), layers[1]])),
            ("loss 99", dict(base, loss=99)), ("opt 99", dict(base, opt=99)),
            ("opt -1", dict(base, opt=-1)), ("metric 99", dict(base, metric=99)),
            ("slots 4", dict(base, slots=(np.zeros_like(params),) * 4)),
            ("reg 1-D", dict(base, reg=np.zeros(8, F32))),
            ("reg (2, 3)", dict(base, reg=np.zeros((2, 3), F32))),
            ("reg float64", dict(base, reg=np.zeros((2, 4)))),
            ("reg negative", dict(base, reg=np.full((2, 4), -0.1, F32))),
            ("reg NaN", dict(base, reg=np.full((2, 4), np.nan, F32))),
            ("clip_mode 9", dict(base, clip_mode=9)), ("clip_mode -1", dict(base, clip_mode=-1)),
            ("clip_limit 0", dict(base, clip_mode=2, clip_limit=0.0)),
            ("clip_limit inf", dict(base, clip_mode=1, clip_limit=np.inf)),
            ("var_sizes short", dict(base, var_sizes=[3, 4])),
            ("var_sizes negative", dict(base, var_sizes=[-1, params.size + 1])),
            ("var_sizes strings", dict(base, var_sizes="ab"))]
    results = []
    for desc, kw in bad:
        results.append(("DenseStack(" + desc + ")", lambda kw=kw: _core.DenseStack(**kw), True))
    stack = _core.DenseStack(**base)
    sc = np.tile(np.array([0, 1e-3, .9, .999, 1e-7], F32), (3, 1))
    sums = np.zeros(4)
    runs = [("run ok", (x, y, None, None, 0, 2, True, sc, sums), False),
            ("run x None", (None, y, None, None, 0, 2, True, sc, sums), True),
            ("run x float16", (x.astype(np.float16), y, None, None, 0, 2, True, sc, sums), True),
            ("run x wrong width", (f(rng, 10, 7), y, None, None, 0, 2, True, sc, sums), True),
            ("run y float", (x, y.astype(F32), None, None, 0, 2, True, sc, sums), True),
            ("run y short", (x, y[:5], None, None, 0, 2, True, sc, sums), True),
            ("run y None", (x, None, None, None, 0, 2, True, sc, sums), True),
            ("run weights int", (x, y, np.ones(10, I32), None, 0, 2, True, sc, sums), True),
            ("run order int32", (x, y, None, np.arange(10, dtype=I32), 0, 2, True, sc, sums), True),
            ("run order out of range", (x, y, None, np.arange(10) + 5, 0, 2, True, sc, sums), True),
            ("run steps huge", (x, y, None, None, 0, 2**62, True, sc, sums), True),
            ("run start huge", (x, y, None, None, 2**62, 1, True, sc, sums), True),
            ("run start -1", (x, y, None, None, -1, 1, True, sc, sums), True),
            ("run scalars None", (x, y, None, None, 0, 2, True, None, sums), True),
            ("run scalars short", (x, y, None, None, 0, 2, True, sc[:1], sums), True),
            ("run scalars narrow", (x, y, None, None, 0, 2, True, sc[:, :3].copy(), sums), True),
            ("run sums float32", (x, y, None, None, 0, 2, True, sc, np.zeros(4, F32)), True),
            ("run sums short", (x, y, None, None, 0, 2, True, sc, np.zeros(3)), True),
            ("run sums None", (x, y, None, None, 0, 2, True, sc, None), True)]
    for desc, args, must in runs:
        results.append((desc, lambda args=args: stack.run(*args), must))
    sgd = _core.DenseStack(**dict(base, opt=0, slots=()))
    sc_m = np.tile(np.array([0, 1e-2, .9, 0], F32), (3, 1))
    results.append(("SGD run with momentum, no slot",
                    lambda: sgd.run(x, y, None, None, 0, 2, True, sc_m, sums), True))
    pred = _core.DenseStack([layer(8, 4)[:2] + (None, None, 1, 0.0)], 4)
    xbuf = np.zeros(120, F32)
    xin = xbuf[:80].reshape(10, 8)
    results += [("predict ok", lambda: pred.predict(x, np.zeros((10, 4), F32), 0), False),
                ("predict out short rows", lambda: pred.predict(x, np.zeros((10, 3), F32), 0),
                 True),
                ("predict beyond x", lambda: pred.predict(x, np.zeros((10, 4), F32), 5), True),
                ("predict start huge", lambda: pred.predict(x, np.zeros((10, 4), F32), 2**62),
                 True),
                ("predict out float64", lambda: pred.predict(x, np.zeros((10, 4)), 0), True),
                ("predict out None", lambda: pred.predict(x, None, 0), True),
                ("predict out aliases x", lambda: pred.predict(xin, xbuf[40:80].reshape(10, 4), 0),
                 True)]
    return results


def main(seed, n_cases):
    rng = np.random.default_rng(seed)
    report = {"kernels": kernels(), "cases": 0, "per_kernel": {}, "silent": [], "wrong_error": [],
              "valid_failed": [], "missing_spec": []}
    names = report["kernels"]
    report["missing_spec"] = [n for n in names if n not in SPECS]
    names = [n for n in names if n in SPECS]
    # every kernel's valid call must succeed (the specs are right), then the bad ones
    for name in names:
        d, meta = SPECS[name](rng)
        try:
            call(name, d)
        except Exception as e:
            report["valid_failed"].append(f"{name}: {type(e).__name__}: {e}")
    cases = []
    for i in range(n_cases):
        name = names[i % len(names)]
        d, meta = SPECS[name](rng)
        m = mutations(rng, name, d, meta)
        if m is not None:
            cases.append((name, m))
    for desc, fn, must in dense_stack_cases(rng):
        cases.append(("DenseStack", (desc, fn, must)))
    for name, (desc, new, must) in cases:
        print(f"{name}: {desc}", file=sys.stderr, flush=True)   # the last line names a crash
        report["cases"] += 1
        report["per_kernel"][name] = report["per_kernel"].get(name, 0) + 1
        try:
            new() if callable(new) else call(name, new)
        except OK_ERRORS:
            continue
        except Exception as e:
            report["wrong_error"].append(f"{name}: {desc}: {type(e).__name__}: {e}")
            continue
        if must:
            report["silent"].append(f"{name}: {desc}")
    print(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
