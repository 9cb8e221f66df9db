"""SimpleRNN, LSTM, GRU (fastnn/layers/recurrent.py): outputs and gradients equal to Keras 3's
with the same weights for every option, finite-difference gradients through 50 masked steps, the C
kernels against the NumPy reference (and across thread counts), the tape and functional
paths (return_state, initial_state), configs, errors, and an end-to-end training run."""
import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

import fastnn
from fastnn import activations as A
from fastnn.backend import get_ops
from fastnn.backend.base import Ops
from fastnn.layers import GRU, LSTM, SimpleRNN

CLASSES = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}
B, T, D, U = 3, 7, 5, 4


def _mask():
    m = np.ones((B, T), bool)
    m[0, 5:] = False        # right padding
    m[1, :2] = False        # left padding
    m[2, 3] = False         # a hole
    return m


def _close(a, b, tol=1e-5):
    """Equal up to float32 rounding, relative to the array's scale (sums over long
    sequences of values in the hundreds)."""
    b = np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=10 * tol, atol=tol * max(1.0, np.abs(b).max()))


def _run(layer, x, mask=None, grads=None, initial_state=None):
    """The layer's forward and backward on the active backend: outputs, weight gradients
    (Keras order), dx and the initial states' gradients, as NumPy arrays."""
    layer._maybe_build((None,) + x.shape[1:])
    out = layer.forward(put(x), mask=None if mask is None else put(mask, bool),
                        initial_state=None if initial_state is None else
                        [put(s) for s in initial_state])
    outs = out if isinstance(out, list) else [out]
    for g in layer.grads.values():
        g[...] = 0
    dys = [put(g) for g in grads]
    dx = layer.backward(dys if isinstance(out, list) else dys[0])
    return ([get(o) for o in outs], [get(layer.grads[n]) for n in layer._trainable_names],
            get(dx), [get(s) for s in layer._state().d_states])


# ---- equal to Keras 3 --------------------------------------------------------------------------
OPTIONS = [{}, {"return_sequences": True}, {"return_state": True, "go_backwards": True},
           {"return_sequences": True, "return_state": True},
           {"return_sequences": True, "zero_output_for_mask": True},
           {"activation": "relu", "return_sequences": True},
           {"use_bias": False, "go_backwards": True, "return_sequences": True}]
CASES = [(name, opts, masked) for name in CLASSES for opts in OPTIONS for masked in (False, True)]
CASES += [("GRU", {"reset_after": False, "return_sequences": True}, True),
          ("GRU", {"reset_after": False, "return_state": True, "go_backwards": True}, False),
          ("LSTM", {"recurrent_activation": "tanh", "activation": "sigmoid"}, True),
          ("GRU", {"recurrent_activation": "linear", "return_sequences": True}, True),
          ("LSTM", {"activation": "softsign", "return_sequences": True}, True),  # reference
          ("GRU", {"activation": "elu", "reset_after": False}, True)]


@pytest.mark.parametrize("name,opts,masked", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_outputs_and_gradients_equal_keras(name, opts, masked, with_state):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = _mask() if masked else None
    theirs = getattr(keras.layers, name)(U, **opts)
    n_states = 2 if name == "LSTM" else 1
    states = [rng.normal(size=(B, U)).astype(np.float32) for _ in range(n_states)] \
        if with_state else None
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in states] if states else None
    out = theirs(xt, mask=None if mask is None else torch.tensor(mask), initial_state=st)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    dys = [rng.normal(size=tuple(o.shape)).astype(np.float32) for o in outs]
    sum((o * torch.tensor(g)).sum() for o, g in zip(outs, dys)).backward()

    ours = CLASSES[name](U, **opts)
    ours._maybe_build((None, T, D))
    ours.set_weights([w.detach().numpy() if hasattr(w, "detach") else np.asarray(w)
                      for w in theirs.get_weights()])
    mine, grads, dx, d_states = _run(ours, x, mask, dys, states)
    for a, b in zip(mine, outs):
        _close(a, b.detach().numpy())
    for a, v in zip(grads, theirs.trainable_weights):
        _close(a, v.value.grad.numpy())
    _close(dx, xt.grad.numpy())
    if states:
        for a, s in zip(d_states, st):
            _close(a, s.grad.numpy())


def test_keras_defaults_and_weight_layout():
    lstm, gru, rnn = LSTM(3), GRU(3), SimpleRNN(3)
    for layer in (lstm, gru, rnn):
        layer(np.zeros((2, 4, 5), np.float32))
    assert [w.shape for w in lstm.get_weights()] == [(5, 12), (3, 12), (12,)]
    assert [w.shape for w in gru.get_weights()] == [(5, 9), (3, 9), (2, 9)]
    assert [w.shape for w in rnn.get_weights()] == [(5, 3), (3, 3), (3,)]
    np.testing.assert_array_equal(lstm.get_weights()[2], [0] * 3 + [1] * 3 + [0] * 6)
    r = gru.get_weights()[1]      # orthogonal recurrent kernel: orthonormal rows
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
    assert GRU(3, reset_after=False).build((None, 4, 5)) is None
    assert lstm.get_config()["recurrent_initializer"]["class_name"] == "OrthogonalInitializer"


# ---- finite differences through 50 masked steps ------------------------------------------------
@pytest.mark.parametrize("name,opts", [("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False}),
                                       ("SimpleRNN", {}),
                                       ("LSTM", {"go_backwards": True,
                                                 "return_sequences": True})])
def test_gradients_match_finite_differences_over_50_masked_steps(name, opts):
    rng = np.random.default_rng(3)
    b, t, d, u = 2, 50, 3, 3
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    mask = np.ones((b, t), bool)
    mask[0, 40:] = False
    mask[1, 10:13] = False
    layer = CLASSES[name](u, **opts)
    layer._maybe_build((None, t, d))
    # weights big enough that the gates do not saturate nor vanish over 50 steps
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    out_shape = (b, t, u) if layer.return_sequences else (b, u)
    w_out = rng.normal(size=out_shape)
    weights = layer.get_weights()

    def loss(x_, ws):
        layer.set_weights(ws)
        out = get(layer.forward(put(x_.astype(np.float32)), mask=put(mask, bool)))
        return float((out.astype(np.float64) * w_out).sum())

    layer.set_weights(weights)
    _, grads, dx, _ = _run(layer, x, mask, [w_out.astype(np.float32)])
    num_dx = numeric_grad(lambda v: loss(v, weights), x.astype(np.float64), 1e-2)
    np.testing.assert_allclose(dx, num_dx, rtol=2e-2, atol=2e-3)
    assert np.abs(dx[0, 40:]).max() == 0       # masked steps get no gradient
    for i, g in enumerate(grads):
        def f(v, i=i):
            ws = list(weights)
            ws[i] = v.astype(np.float32)
            return loss(x, ws)
        num = numeric_grad(f, weights[i].astype(np.float64), 1e-2)
        np.testing.assert_allclose(g, num, rtol=2e-2, atol=2e-3)


# ---- the C kernels against the reference -------------------------------------------------------
@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                              ("simple", True)])
@pytest.mark.parametrize("acts", [(A.TANH, A.SIGMOID), (A.RELU, A.SIGMOID), (A.LINEAR, A.TANH)])
@pytest.mark.parametrize("zero_output,dropped", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("big", [False, True])
def test_backend_equals_reference_and_any_thread_count(cell, reset_after, acts, zero_output,
                                                       dropped, big):
    from fastnn import _core
    rng = np.random.default_rng(5)
    # 37 rows: uneven chunks; big: weight gradients of over 16384 floats, their K blocks'
    # partial products on the heap
    t, b, d, u = (9, 37, 80, 72) if big else (9, 37, 6, 5)
    g = {"lstm": 4, "gru": 3, "simple": 1}[cell]
    x = rng.normal(size=(t, b, d)).astype(np.float32)
    k = rng.normal(scale=0.5 / np.sqrt(d), size=(d, g * u)).astype(np.float32)
    r = rng.normal(scale=0.45 / np.sqrt(u), size=(u, g * u)).astype(np.float32)
    bias = rng.normal(size=(2, g * u) if cell == "gru" and reset_after else (g * u,))
    bias = bias.astype(np.float32)
    h0, c0 = (rng.normal(size=(b, u)).astype(np.float32) for _ in range(2))
    mask = rng.random((t, b)) > 0.3
    dy = rng.normal(size=(t, b, u)).astype(np.float32)
    dh, dc = (rng.normal(size=(b, u)).astype(np.float32) for _ in range(2))
    act, rec = (acts[0], 0.0), (acts[1], 0.0)
    rec_mask = (rng.random((b, u)) > 0.4) / np.float32(0.6) if dropped else None
    rec_mask = None if rec_mask is None else rec_mask.astype(np.float32)

    def both(ops, move=lambda a, dtype=None: a, back=lambda a: a):
        ys, h, c, cache = ops.rnn_forward(cell, move(x), move(k), move(r), move(bias),
                                          move(h0), move(c0), move(mask, bool), act, rec,
                                          reset_after, zero_output,
                                          None if rec_mask is None else move(rec_mask))
        grads = [move(np.zeros_like(a)) for a in (k, r, bias)]
        dx, dh0, dc0 = ops.rnn_backward(cell, cache, move(dy), move(dh),
                                        move(dc) if cell == "lstm" else None, move(k),
                                        move(r), *grads, act, rec, reset_after, zero_output)
        return [back(a) for a in (ys, h, c, dx, dh0, dc0, *grads) if a is not None]
    ref = both(Ops())
    runs = [both(get_ops(), put, get)]
    if get_ops().name == "cpu":     # the C kernels: the same bits on 1 and 2 threads
        before = _core.get_num_threads()
        try:
            for threads in (1, 2):
                _core.set_num_threads(threads)
                runs.append(both(get_ops()))
        finally:
            _core.set_num_threads(before)
        for a, b_ in zip(runs[1], runs[2]):
            np.testing.assert_array_equal(a, b_)
    for a, b_ in zip(runs[0], ref):
        _close(a, b_)


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("simple", True), ("gru", True),
                                              ("gru", False)])
def test_backend_unmasked_outputs_in_work_arrays_equal_reference(cell, reset_after):
    """Without a mask the backend may return the outputs as its states (hs[1:]), take dy=None
    (no output has a gradient, as the layer passes when only the last output has one, joined
    to dh), and keep its arrays in the caller's work (the C kernels: SimpleRNN and LSTM then
    pack x and the states as [x_t | h_{t-1}] rows); reused by a second call, equal to the
    reference, and the same bits on 1 and 2 threads."""
    from fastnn import _core
    rng = np.random.default_rng(7)
    t, b, d, u = 11, 37, 24, 20
    g = {"lstm": 4, "gru": 3, "simple": 1}[cell]
    k = rng.normal(scale=0.5 / np.sqrt(d), size=(d, g * u)).astype(np.float32)
    r = rng.normal(scale=0.45 / np.sqrt(u), size=(u, g * u)).astype(np.float32)
    bias = rng.normal(size=(2, g * u) if cell == "gru" and reset_after else (g * u,))
    bias = bias.astype(np.float32)
    h0, c0, dh, dc = (rng.normal(size=(b, u)).astype(np.float32) for _ in range(4))
    act, rec = (A.TANH, 0.0), (A.SIGMOID, 0.0)
    arrays = {}

    def work(name, shape):
        if name not in arrays or arrays[name].shape != shape:
            arrays[name] = get_ops().empty(shape, "float32")
        return arrays[name]

    def both(ops, x, move=lambda a, dtype=None: a, back=lambda a: a, **kw):
        ys, h, c, cache = ops.rnn_forward(cell, move(x), move(k), move(r), move(bias),
                                          move(h0), move(c0), None, act, rec, reset_after,
                                          **kw)
        out = [back(a).copy() for a in (ys, h, c) if a is not None]
        grads = [move(np.zeros_like(a)) for a in (k, r, bias)]
        dx, dh0, dc0 = ops.rnn_backward(cell, cache, None, move(dh),
                                        move(dc) if cell == "lstm" else None, move(k),
                                        move(r), *grads, act, rec, reset_after, **kw)
        return out + [back(a).copy() for a in (dx, dh0, dc0, *grads) if a is not None]
    for seed in (1, 2):         # the second call reuses the first's work arrays
        x = np.random.default_rng(seed).normal(size=(t, b, d)).astype(np.float32)
        ref = both(Ops(), x)
        mine = both(get_ops(), x, put, get, work=work)
        for a, b_ in zip(mine, ref):
            _close(a, b_)
    if get_ops().name == "cpu":
        before = _core.get_num_threads()
        try:
            runs = []
            for threads in (1, 2):
                _core.set_num_threads(threads)
                runs.append(both(get_ops(), x, work=work))
        finally:
            _core.set_num_threads(before)
        for a, b_ in zip(*runs):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.cpu_backend
def test_copy_steps_between_layouts_equals_numpy():
    """Ops.copy_steps: batch-major into time-major (a packed view's columns), back, and
    reversed in time (go_backwards), on 1 and 2 threads."""
    from fastnn import _core
    x = np.random.default_rng(3).normal(size=(37, 11, 24)).astype(np.float32)
    before = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            packed = np.zeros((12, 37, 30), np.float32)
            get_ops().copy_steps(x.transpose(1, 0, 2), packed[:11, :, :24])
            np.testing.assert_array_equal(packed[:11, :, :24], x.transpose(1, 0, 2))
            assert not packed[:, :, 24:].any() and not packed[11].any()
            back = get_ops().copy_steps(packed[:11, :, :24].transpose(1, 0, 2)[:, ::-1],
                                        np.empty_like(x))
            np.testing.assert_array_equal(back, x[:, ::-1])
    finally:
        _core.set_num_threads(before)
    with pytest.raises(ValueError, match="shares memory"):
        _core.copy_steps(x, x[::-1])


@pytest.mark.cpu_backend
def test_kernel_checks_sizes_before_touching_memory():
    from fastnn import _core
    f = np.zeros
    args = dict(kind="lstm", steps=2, batch=3, d_in=4, units=5)
    good = [f(24, "f"), f(80, "f"), f(100, "f"), f(20, "f"), None, f(30, "f"), f(45, "f"),
            f(45, "f"), f(120, "f"), f(30, "f"), f(60, "f")]
    _core.rnn_forward(*args.values(), *good, A.TANH, A.SIGMOID)
    for i, name in [(0, "x"), (1, "kernel"), (5, "ys"), (8, "gates"), (10, "rec")]:
        bad = list(good)
        bad[i] = f(good[i].size - 1, "f")
        with pytest.raises(ValueError, match=name):
            _core.rnn_forward(*args.values(), *bad, A.TANH, A.SIGMOID)
    with pytest.raises(ValueError, match="activation"):
        _core.rnn_forward(*args.values(), *good, A.SOFTPLUS, A.SIGMOID)
    with pytest.raises(TypeError, match="mask"):
        bad = list(good)
        bad[4] = np.ones(6, np.int32)
        _core.rnn_forward(*args.values(), *bad, A.TANH, A.SIGMOID)
    with pytest.raises(ValueError, match="shares memory"):
        bad = list(good)
        bad[7] = good[6]
        _core.rnn_forward(*args.values(), *bad, A.TANH, A.SIGMOID)



@pytest.mark.parametrize("reference", [False, True])
def test_ops_check_their_arguments_by_name(reference):
    """rnn_forward / rnn_backward (the active backend's and the reference) reject a bad cell,
    act pair, cache or shape with an error naming the argument, before any step runs."""
    ops = Ops() if reference else get_ops()
    mv = (lambda a: a) if reference else put      # the reference runs on NumPy
    rng = np.random.default_rng(0)
    x, k, r = (mv(rng.normal(size=s).astype(np.float32)) for s in ((2, 3, 4), (4, 6), (2, 6)))
    h0, bias = mv(np.zeros((3, 2), np.float32)), mv(np.zeros(6, np.float32))
    act, rec = (A.TANH, 0.0), (A.SIGMOID, 0.0)
    fwd = [x, k, r, bias, h0, None, None, act, rec, False]
    for i, value, exc, name in [(None, "rnn", ValueError, "cell"), (7, A.TANH, TypeError, "act"),
                                (2, mv(np.zeros((2, 3), np.float32)), ValueError, "recurrent"),
                                (3, mv(np.zeros((2, 6), np.float32)), ValueError, "bias"),
                                (4, None, TypeError, "h0"),
                                (6, mv(np.ones((3, 2), bool)), ValueError, "mask")]:
        args = ["gru"] + list(fwd)
        args[0 if i is None else i + 1] = value
        with pytest.raises(exc, match=name):
            ops.rnn_forward(*args)
    ys, _, _, cache = ops.rnn_forward("gru", *fwd)
    grads = [mv(np.zeros(s, np.float32)) for s in ((4, 6), (2, 6), (6,))]
    with pytest.raises(TypeError, match="cache"):
        ops.rnn_backward("gru", {"x": x}, ys, None, None, k, r, *grads, act, rec, False)
    with pytest.raises(ValueError, match="dy"):
        ops.rnn_backward("gru", cache, ys[:1], None, None, k, r, *grads, act, rec, False)
    with pytest.raises(ValueError, match="d_bias"):
        ops.rnn_backward("gru", cache, ys, None, None, k, r, *grads[:2],
                         mv(np.zeros((2, 6), np.float32)), act, rec, False)
    ops.rnn_backward("gru", cache, ys, None, None, k, r, *grads, act, rec, False)

# ---- calls: eager, tape, functional --------------------------------------------------------------
def test_eager_call_with_mask_initial_state_and_return_state():
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    layer = LSTM(5, return_sequences=True, return_state=True)
    seq, h, c = layer(x, mask=np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool),
                      initial_state=[np.ones((2, 5), np.float32)] * 2)
    assert seq.shape == (2, 4, 5) and h.shape == c.shape == (2, 5)
    np.testing.assert_array_equal(seq[0, 2], seq[0, 1])     # masked: the previous output
    np.testing.assert_allclose(h[0], seq[0, 1])             # and the state carried over


def test_functional_return_state_and_symbolic_initial_state_equal_keras(tmp_path):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    h0, c0 = (rng.normal(size=(4, 5)).astype(np.float32) for _ in range(2))
    models = []
    for K in (fastnn, keras):
        inp, hi, ci = K.Input((6, 3)), K.Input((5,)), K.Input((5,))
        seq, h, c = K.layers.LSTM(5, return_sequences=True, return_state=True)(
            inp, initial_state=[hi, ci])
        out = K.layers.Dense(2)(K.layers.Concatenate()([h, c]))
        models.append(K.Model([inp, hi, ci], [out, seq, h, c]))
    ours, theirs = models
    ours.set_weights(theirs.get_weights())
    got = ours.predict([x, h0, c0], verbose=0)
    want = theirs.predict([x, h0, c0], verbose=0)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    ours.compile("sgd", "mse")      # trains through the several outputs
    ours.fit([x, h0, c0], [w * 0 for w in want], epochs=1, verbose=0)


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_initial_state_and_return_state_models_load_both_ways(tmp_path, ext):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    rng = np.random.default_rng(6)
    data = [rng.normal(size=(3, 6, 3)).astype(np.float32),
            rng.normal(size=(3, 5)).astype(np.float32)]

    def build(K):
        inp, hi = K.Input((6, 3)), K.Input((5,))
        seq, h = K.layers.GRU(5, return_sequences=True, return_state=True)(
            inp, initial_state=hi)
        out = K.layers.Bidirectional(K.layers.LSTM(2), merge_mode="ave")(seq)
        return K.Model([inp, hi], [out, h])
    for writer, reader in ((fastnn, keras), (keras, fastnn)):
        model = build(writer)
        model.set_weights([rng.normal(scale=0.5, size=np.shape(w)).astype(np.float32)
                           for w in model.get_weights()])
        path = str(tmp_path / f"{writer.__name__}{ext}")
        model.save(path)
        loaded = reader.models.load_model(path)
        for a, b in zip(model.predict(data, verbose=0), loaded.predict(data, verbose=0)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_training_through_initial_state_on_the_tape():
    """A subclassed model: gradients reach the initial state's producer."""
    class M(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.init = fastnn.layers.Dense(4)
            self.rnn = GRU(4, return_state=True)
            self.out = fastnn.layers.Dense(1)

        def call(self, x):
            h0 = self.init(x[:, 0, :])
            y, h = self.rnn(x, initial_state=h0)
            return self.out(y + h)
    m = M()
    m.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(16, 5, 3)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None]
    m.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0)
    before = m.init.get_weights()[0].copy()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.abs(m.init.get_weights()[0] - before).max() > 0


def test_lstm_dense_learns_a_sequence_task():
    """Whether a +1 marker came before a -1 marker in a noisy sequence (order matters)."""
    rng = np.random.default_rng(7)
    n, t = 800, 20
    x = rng.normal(scale=0.1, size=(n, t, 2)).astype(np.float32)
    y = np.zeros(n, np.float32)
    for i in range(n):
        a, b = rng.choice(t, 2, replace=False)
        x[i, a, 0] += 1.0
        x[i, b, 1] += 1.0
        y[i] = a < b
    model = fastnn.Sequential([fastnn.Input((t, 2)), LSTM(16),
                               fastnn.layers.Dense(1, activation="sigmoid")])
    model.compile(fastnn.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[:600], y[:600], epochs=15, batch_size=32, verbose=0)
    _, acc = model.evaluate(x[600:], y[600:], verbose=0)
    assert acc > 0.9


@pytest.mark.parametrize("kwargs", [dict(dropout=0.5), dict(recurrent_dropout=0.5)])
def test_dropout_in_training_only(kwargs):
    x = np.ones((4, 3, 6), np.float32)
    for layer in (SimpleRNN(2, seed=1, return_sequences=True, **kwargs),
                  LSTM(2, seed=1, return_sequences=True, **kwargs)):
        a, b = layer(x, training=False), layer(x, training=False)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(layer(x, training=True), a)


# ---- configs and errors --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CLASSES))
def test_config_round_trips_and_reads_keras(name):
    keras = pytest.importorskip("keras")
    kw = dict(units=3, return_sequences=True, go_backwards=True, dropout=0.25,
              kernel_regularizer="l2", recurrent_constraint="non_neg")
    ours = CLASSES[name](**kw)
    again = CLASSES[name].from_config(ours.get_config())
    assert again.get_config() == ours.get_config()
    theirs = getattr(keras.layers, name)(**kw).get_config()
    from_keras = CLASSES[name].from_config(theirs)
    assert from_keras.units == 3 and from_keras.go_backwards and from_keras.dropout == 0.25
    assert set(ours.get_config()) >= set(theirs) - {"use_cudnn", "implementation"}


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_stateful_carries_states_across_calls_as_keras(name):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    models = [K.Sequential([K.Input((5, 3), batch_size=4),
                            getattr(K.layers, name)(2, stateful=True, return_sequences=True)])
              for K in (fastnn, keras)]
    ours, theirs = models
    ours.set_weights(theirs.get_weights())
    outs = []
    for _ in range(3):      # each call starts from the last one's states
        outs.append(ours.predict(x, verbose=0))
        np.testing.assert_allclose(outs[-1], theirs.predict(x, verbose=0), rtol=1e-5,
                                   atol=1e-6)
    assert np.abs(outs[1] - outs[0]).max() > 1e-3
    first = outs[0]
    ours.layers[-1].reset_states()
    np.testing.assert_allclose(ours.predict(x, verbose=0), first, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="Expected batch size: 4"):
        ours.layers[-1](x[:2])
    open_batch = LSTM(2, stateful=True)     # no static batch size: the first call's
    open_batch(x)
    with pytest.raises(ValueError, match="Expected batch size: 4"):
        open_batch(x[:3])
    ours.compile("adam", "mse")     # trains, batch by batch in order
    ours.fit(np.concatenate([x, x]), np.zeros((8, 5, 2), np.float32), batch_size=4,
             shuffle=False, verbose=0)


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                              ("simple", True)])
def test_recurrent_dropout_gradients_match_finite_differences(cell, reset_after):
    """The ops with a fixed recurrent-dropout mask, through 30 masked steps."""
    rng = np.random.default_rng(9)
    t, b, d, u = 30, 2, 2, 3
    g = {"lstm": 4, "gru": 3, "simple": 1}[cell]
    x = rng.normal(size=(t, b, d))
    k, r = rng.normal(scale=0.5, size=(d, g * u)), rng.normal(scale=0.5, size=(u, g * u))
    bias = rng.normal(size=(2, g * u) if cell == "gru" and reset_after else (g * u,))
    h0, c0 = rng.normal(size=(b, u)), rng.normal(size=(b, u))
    mask = np.ones((t, b), bool)
    mask[20:, 0] = False
    rec_mask = np.array([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]], np.float32)
    w_out = rng.normal(size=(t, b, u))
    act, rec = (A.TANH, 0.0), (A.SIGMOID, 0.0)
    ops = get_ops()
    f32 = [put(np.asarray(a, np.float32)) for a in (x, k, r, bias, h0, c0)]

    def loss(r_):
        args = list(f32)
        args[2] = put(r_.astype(np.float32))
        ys = ops.rnn_forward(cell, *args, put(mask, bool), act, rec, reset_after, False,
                             put(rec_mask))[0]
        return float((get(ys).astype(np.float64) * w_out).sum())
    ys, _, _, cache = ops.rnn_forward(cell, *f32, put(mask, bool), act, rec, reset_after,
                                      False, put(rec_mask))
    grads = [put(np.zeros(a.shape, np.float32)) for a in (k, r, bias)]
    ops.rnn_backward(cell, cache, put(w_out.astype(np.float32)), None, None, f32[1], f32[2],
                     *grads, act, rec, reset_after, False)
    _close(get(grads[1]), numeric_grad(loss, r, 1e-2), tol=2e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(use_cudnn=True), "cuDNN"),
    (dict(units=0), "units"),
    (dict(dropout=1.0), "dropout"),
    (dict(activity_regularizer="l2"), "activity_regularizer"),
])
def test_unsupported_arguments_raise(kwargs, match):
    kwargs = {"units": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        LSTM(**kwargs)


def test_bad_inputs_raise():
    layer = GRU(3)
    with pytest.raises(ValueError, match="timesteps"):
        layer(np.zeros((2, 3), np.float32))
    layer = GRU(3)
    with pytest.raises(ValueError, match="mask"):
        layer(np.zeros((2, 4, 3), np.float32), mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="initial_state"):
        layer(np.zeros((2, 4, 3), np.float32), initial_state=[np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match="initial_state"):
        LSTM(3)(np.zeros((2, 4, 3), np.float32), initial_state=[np.zeros((2, 3), np.float32)])


# ---- Bidirectional -----------------------------------------------------------------------------
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("name,opts", [("LSTM", {}), ("GRU", {"return_sequences": True}),
                                       ("SimpleRNN", {"return_state": True}),
                                       ("LSTM", {"return_sequences": True,
                                                 "return_state": True})])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_equals_keras(merge, name, opts, masked):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    from fastnn.layers import Bidirectional
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = _mask() if masked else None
    theirs = keras.layers.Bidirectional(getattr(keras.layers, name)(U, **opts),
                                        merge_mode=merge)
    xt = torch.tensor(x, requires_grad=True)
    out = theirs(xt, mask=None if mask is None else torch.tensor(mask))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    dys = [rng.normal(size=tuple(o.shape)).astype(np.float32) for o in outs]
    sum((o * torch.tensor(g)).sum() for o, g in zip(outs, dys)).backward()
    ours = Bidirectional(CLASSES[name](U, **opts), merge_mode=merge)
    ours._maybe_build((None, T, D))
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    assert ours.weight_names[0] == "forward_kernel"
    mine, grads, dx, _ = _run(ours, x, mask, dys)
    assert len(mine) == len(outs)
    for a, b in zip(mine, outs):
        _close(a, b.detach().numpy())
    for a, v in zip(grads, theirs.trainable_weights):
        _close(a, v.value.grad.numpy())
    _close(dx, xt.grad.numpy())


def test_bidirectional_config_weights_argument_and_errors():
    from fastnn.layers import Bidirectional
    layer = Bidirectional(GRU(3, return_sequences=True), merge_mode="sum")
    layer(np.zeros((2, 4, 5), np.float32))
    again = Bidirectional.from_config(layer.get_config())
    config = again.get_config()
    assert config["layer"]["class_name"] == "GRU"
    assert config["backward_layer"]["config"]["go_backwards"] is True
    assert config["merge_mode"] == "sum"
    weights = [np.full(w.shape, 0.1 * i, np.float32) for i, w in enumerate(layer.get_weights())]
    given = Bidirectional(GRU(3, return_sequences=True), weights=weights)
    given(np.zeros((2, 4, 5), np.float32))
    for a, b in zip(given.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="merge mode"):
        Bidirectional(LSTM(2), merge_mode="max")
    with pytest.raises(ValueError, match="go_backwards"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2))
    with pytest.raises(ValueError, match="return_sequences"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2, go_backwards=True,
                                                   return_sequences=True))
    with pytest.raises(ValueError, match="recurrent layer"):
        Bidirectional(fastnn.layers.Dense(2))


def test_bidirectional_model_trains():
    from fastnn.layers import Bidirectional
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 6, 3)).astype(np.float32)
    y = (x[:, 0, 0] + x[:, -1, 1] > 0).astype(np.float32)
    model = fastnn.Sequential([fastnn.Input((6, 3)),
                               Bidirectional(LSTM(8, kernel_regularizer="l2")),
                               fastnn.layers.Dense(1, activation="sigmoid")])
    model.compile(fastnn.optimizers.Adam(0.02), "binary_crossentropy", metrics=["accuracy"])
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    assert all(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before))


def test_simple_rnn_recurrent_dropout_equals_keras_with_the_same_mask(monkeypatch):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    rec_mask = ((rng.random((B, U)) > 0.5) * 2.0).astype(np.float32)
    theirs = keras.layers.SimpleRNN(U, recurrent_dropout=0.5, return_sequences=True)
    theirs.build((B, T, D))
    theirs.cell._recurrent_dropout_mask = torch.tensor(rec_mask)   # what it would draw
    xt = torch.tensor(x, requires_grad=True)
    out = theirs(xt, training=True)
    ours = SimpleRNN(U, recurrent_dropout=0.5, return_sequences=True)
    ours._maybe_build((None, T, D))
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    # the same draw: uniforms that keep exactly rec_mask's units
    monkeypatch.setattr(get_ops(), "random_uniform",
                        lambda rng_, out: put(np.where(rec_mask > 0, 0.9, 0.1)
                                              .astype(np.float32).reshape(out.shape)))
    mine = get(ours.forward(put(x), training=True))
    _close(mine, out.detach().numpy())
