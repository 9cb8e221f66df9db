"""Conv2D + MaxPooling2D run as one step (layers.ConvPool, ops.conv2d_maxpool_*): the compiled
chunked kernel against the unfused reference ops, the fused reference against finite
differences, thread-count determinism, and whole models trained fused and unfused."""
import numpy as np
import pytest
from gradcheck import numeric_grad

import fastnn
from fastnn import activations as A
from fastnn.backend.base import Ops
from fastnn.backend.cpu import CpuOps
from fastnn.layers import (
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    ConvPool,
    Dense,
    Flatten,
    MaxPooling2D,
)
from fastnn.models import Sequential
from fastnn.utils import set_random_seed

REF, CPU = Ops(), CpuOps()

# (input hw, channels, conv kernel/strides/padding, pool size/strides/padding)
CASES = [((8, 9), 1, (3, 1, "valid"), (2, 2, "valid")),         # the tutorial CNN's shape
         ((9, 8), 3, (3, 1, "same"), (3, 2, "same")),           # padded windows at the edges
         ((9, 9), 2, (3, 2, "valid"), (2, 1, "valid")),         # overlapping pool windows
         ((11, 10), 2, (2, 1, "valid"), (2, 3, "valid"))]       # gaps between pool windows
CASE_IDS = ["tiled", "same", "overlap", "gaps"]
ACTS = ["linear", "relu", "sigmoid", "tanh", "elu", "selu", "softsign", "leaky_relu"]


def _layers(hw, c, conv_args, pool_args, act, filters=5):
    k, s, pad = conv_args
    conv = Conv2D(filters, k, strides=s, padding=pad, activation=act)
    pool = MaxPooling2D(pool_args[0], pool_args[1], pool_args[2])
    conv.build((None, *hw, c))
    pool.build(conv.compute_output_shape((None, *hw, c)))
    return conv, pool


def _fused(ops, conv, pool, x, kernel, bias, dy, need_dx=True):
    """Forward and backward through ops.conv2d_maxpool_*: (y, argmax, dk, db, dx)."""
    _, _, _, _, _, _, oh, ow = conv.window
    n, kdim, f = x.shape[0], kernel.shape[0], kernel.shape[1]
    groups, chunk = ops.conv2d_maxpool_plan(n, oh, ow, f)
    rows = groups * chunk * oh * ow
    shape = (n, pool.window[6], pool.window[7], f)
    cols = np.empty((n * oh * ow, kdim), x.dtype)
    work = np.empty((rows, f), x.dtype)
    y, argmax = ops.conv2d_maxpool_forward(x, kernel, bias, conv.act_id, conv.act_alpha,
                                           conv.window, pool.window, cols, work,
                                           np.empty(shape, x.dtype), np.empty(shape, np.int32))
    dk, db, dx = np.empty_like(kernel), np.empty_like(bias), np.empty(x.shape, x.dtype)
    partials = np.empty(((groups - 1) * kdim, f), x.dtype) if groups > 1 else None
    dx = ops.conv2d_maxpool_backward(cols, kernel, y, argmax, dy.copy(), conv.act_id,
                                     conv.act_alpha, conv.window, pool.window, x.shape, dk,
                                     db, dx=dx if need_dx else None, work=work,
                                     dcols_work=np.empty((rows, kdim), x.dtype),
                                     partials=partials)
    return y.copy(), argmax.copy(), dk, db, dx


def _unfused(conv, pool, x, kernel, bias, dy):
    """The same through the reference's separate conv, activation and pooling ops."""
    cols, z, y = REF.conv2d_forward(x, kernel, bias, conv.act_id, conv.act_alpha, conv.window)
    n, (oh, ow) = x.shape[0], conv.window[6:]
    pooled, argmax = REF.maxpool_forward(y.reshape(n, oh, ow, -1), pool.window)
    dz = REF.maxpool_backward(dy, argmax, pool.window, (n, oh, ow, kernel.shape[1]))
    dk, db = np.empty_like(kernel), np.empty_like(bias)
    dx = REF.conv2d_backward(cols, kernel, z, y, dz.reshape(-1, kernel.shape[1]), conv.act_id,
                             conv.act_alpha, conv.window, x.shape, dk, db)
    return pooled, argmax, dk, db, dx, y


def _data(rng, conv, pool, n, hw, c, dtype=np.float32):
    x = rng.standard_normal((n, *hw, c)).astype(dtype)
    kernel = rng.standard_normal((conv.kernel.size // conv.filters, conv.filters)).astype(dtype)
    bias = rng.standard_normal(conv.filters).astype(dtype)
    dy = rng.standard_normal((n, pool.window[6], pool.window[7], conv.filters)).astype(dtype)
    return x, kernel, bias, dy


@pytest.mark.cpu_backend
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", [1, 5, 37])
def test_fused_matches_unfused_ops(rng, case, act, n):
    hw, c, conv_args, pool_args = case
    conv, pool = _layers(hw, c, conv_args, pool_args, act)
    x, kernel, bias, dy = _data(rng, conv, pool, n, hw, c)
    want = _unfused(conv, pool, x, kernel, bias, dy)
    for ops in (REF, CPU):
        y, argmax, dk, db, dx = _fused(ops, conv, pool, x, kernel, bias, dy)
        np.testing.assert_allclose(y, want[0], rtol=1e-6, atol=1e-6)
        # where act makes taps tie (relu's zeros, tanh's plateau near 1) the argmax may name
        # another tap than the unfused pooling's first one, but always one holding the max
        at_argmax = np.take_along_axis(want[5].reshape(n, -1), argmax.reshape(n, -1), axis=1)
        np.testing.assert_allclose(at_argmax.reshape(y.shape), want[0], rtol=1e-6, atol=1e-6)
        scale = np.abs(want[2]).max()
        np.testing.assert_allclose(dk, want[2], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(db, want[3], rtol=1e-5, atol=1e-5 * np.abs(want[3]).max())
        np.testing.assert_allclose(dx, want[4], rtol=1e-5, atol=1e-5 * np.abs(want[4]).max())


@pytest.mark.cpu_backend
def test_chunks_within_a_group_accumulate(rng):
    """Convolution outputs over the chunk size: one image per chunk, several per group, so
    the weight gradient adds chunk after chunk into its group's buffer."""
    hw, c = (40, 40), 1
    conv, pool = _layers(hw, c, (3, 1, "valid"), (2, 2, "valid"), "relu", filters=48)
    n = 40
    groups, chunk = CPU.conv2d_maxpool_plan(n, 38, 38, 48)
    assert chunk == 1 and n > groups      # 38*38*48 floats per image: over 256 KB
    x, kernel, bias, dy = _data(rng, conv, pool, n, hw, c)
    want = _unfused(conv, pool, x, kernel, bias, dy)
    y, _, dk, db, dx = _fused(CPU, conv, pool, x, kernel, bias, dy)
    np.testing.assert_allclose(y, want[0], rtol=1e-6, atol=1e-6)
    for got, ref in zip((dk, db, dx), want[2:5]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _fd(f, x):
    return numeric_grad(f, x, 1e-6)


@pytest.mark.parametrize("case", CASES[:3], ids=CASE_IDS[:3])
def test_fused_reference_gradients_match_finite_differences(rng, case):
    hw, c, conv_args, pool_args = case
    conv, pool = _layers(hw, c, conv_args, pool_args, "tanh", filters=2)
    x, kernel, bias, dy = _data(rng, conv, pool, 2, hw, c, np.float64)

    def loss(xx, kk, bb):
        return (_fused(REF, conv, pool, xx, kk, bb, dy)[0] * dy).sum()

    _, _, dk, db, dx = _fused(REF, conv, pool, x, kernel, bias, dy)
    np.testing.assert_allclose(dx, _fd(lambda v: loss(v, kernel, bias), x), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(dk, _fd(lambda v: loss(x, v, bias), kernel), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(db, _fd(lambda v: loss(x, kernel, v), bias), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.cpu_backend
def test_fused_results_identical_for_any_thread_count(rng):
    hw, c = (28, 28), 1
    conv, pool = _layers(hw, c, (3, 1, "valid"), (2, 2, "valid"), "relu", filters=64)
    x, kernel, bias, dy = _data(rng, conv, pool, 32, hw, c)
    before = fastnn.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            results.append(_fused(CPU, conv, pool, x, kernel, bias, dy))
    finally:
        fastnn.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_sequential_fuses_only_pairs_it_can():
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(12, 12, 1)),
                        MaxPooling2D(),                       # fused with the conv above
                        Conv2D(4, 3, activation="gelu"), MaxPooling2D(),    # gelu: not monotone
                        Conv2D(4, 1, activation="softmax"), MaxPooling2D(1),  # a whole row
                        Conv2D(4, 1), AveragePooling2D(1),    # not max pooling
                        Flatten(), Dense(2)])
    kinds = [(first, last, type(step).__name__) for first, last, step in model._steps]
    assert kinds[0] == (0, 1, "ConvPool")
    assert [k for k in kinds[1:] if k[2] == "ConvPool"] == []
    assert [first for first, _, _ in model._steps] == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert ConvPool.fuses(Conv2D(2, 3, activation="tanh"), MaxPooling2D())
    assert not ConvPool.fuses(Conv2D(2, 3, activation="silu"), MaxPooling2D())
    assert not ConvPool.fuses(MaxPooling2D(), Conv2D(2, 3))


def _cnn(trainable_first=True):
    first = Conv2D(6, 3, activation="relu", input_shape=(12, 12, 1),
                   trainable=trainable_first)
    return Sequential([first, MaxPooling2D(),
                       BatchNormalization(), Conv2D(5, 2, padding="same", activation="tanh"),
                       MaxPooling2D(3, 2, padding="same"), Flatten(),
                       Dense(3, activation="softmax")])


@pytest.mark.parametrize("trainable_first", [True, False])
def test_fused_training_matches_unfused(rng, monkeypatch, trainable_first):
    x = rng.standard_normal((48, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(ConvPool, "fuses", staticmethod(lambda conv, pool: False))
        set_random_seed(3)
        model = _cnn(trainable_first)
        assert sum(type(s).__name__ == "ConvPool" for _, _, s in model._steps) == 2 * fuse
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history
        results.append((hist, model.get_weights(), model.predict(x, verbose=0)))
    (h1, w1, p1), (h2, w2, p2) = results
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-4)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-6)
    if not trainable_first:     # frozen: the fused step left its weights alone
        set_random_seed(3)
        np.testing.assert_array_equal(w1[0], _cnn(False).get_weights()[0])


@pytest.mark.cpu_backend
def test_conv2d_maxpool_rejects_bad_input(rng):
    conv, pool = _layers((8, 8), 1, (3, 1, "valid"), (2, 2, "valid"), "relu")
    x, kernel, bias, dy = _data(rng, conv, pool, 3, (8, 8), 1)
    n, (oh, ow), f = 3, conv.window[6:], conv.filters
    groups, chunk = CPU.conv2d_maxpool_plan(n, oh, ow, f)
    cols = np.empty((n * oh * ow, kernel.shape[0]), np.float32)
    work = np.empty((groups * chunk * oh * ow, f), np.float32)
    shape = (n, 3, 3, f)
    y, argmax = np.empty(shape, np.float32), np.empty(shape, np.int32)
    with pytest.raises(ValueError, match="work: expected at least"):
        CPU.conv2d_maxpool_forward(x, kernel, bias, A.RELU, 0.0, conv.window, pool.window,
                                   cols, work[:-1], y, argmax)
    with pytest.raises(ValueError, match="not non-decreasing"):
        CPU.conv2d_maxpool_forward(x, kernel, bias, A.GELU, 0.0, conv.window, pool.window,
                                   cols, work, y, argmax)
    with pytest.raises(ValueError, match="not non-decreasing"):
        CPU.conv2d_maxpool_forward(x, kernel, bias, A.LEAKY_RELU, -0.5, conv.window,
                                   pool.window, cols, work, y, argmax)
    with pytest.raises(ValueError, match="kernel: expected shape"):
        CPU.conv2d_maxpool_forward(x, kernel[:-1], bias, A.RELU, 0.0, conv.window,
                                   pool.window, cols, work, y, argmax)
    CPU.conv2d_maxpool_forward(x, kernel, bias, A.RELU, 0.0, conv.window, pool.window, cols,
                               work, y, argmax)
    dk, db = np.empty_like(kernel), np.empty_like(bias)
    part = np.empty(((groups - 1) * kernel.shape[0], f), np.float32)
    bad = argmax.copy()
    bad[0, 0, 0, 0] = oh * ow * f
    with pytest.raises(ValueError, match="argmax holds an index outside"):
        CPU.conv2d_maxpool_backward(cols, kernel, y, bad, dy.copy(), A.RELU, 0.0, conv.window,
                                    pool.window, x.shape, dk, db, work=work,
                                    partials=part)
    with pytest.raises(ValueError, match="dcols_work"):
        CPU.conv2d_maxpool_backward(cols, kernel, y, argmax, dy.copy(), A.RELU, 0.0,
                                    conv.window, pool.window, x.shape, dk, db,
                                    dx=np.empty(x.shape, np.float32), work=work,
                                    partials=part)
    with pytest.raises(ValueError, match="needs its input"):
        CPU.conv2d_maxpool_backward(cols, kernel, y, argmax, dy.copy(), A.SOFTPLUS, 0.0,
                                    conv.window, pool.window, x.shape, dk, db, work=work,
                                    partials=part)
