"""Conv2D, pooling and BatchNormalization: compiled ops against the NumPy reference, the
reference against finite differences, and both against PyTorch (NCHW <-> NHWC)."""
import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

from fastnn import activations as A
from fastnn.backend.base import Ops
from fastnn.backend.cpu import CpuOps
from fastnn.layers import (
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from fastnn.models import Sequential

REF, CPU = Ops(), CpuOps()

# (input hw, kernel, stride, padding): odd sizes, strides 1 and 2, both paddings.
GEOMETRIES = [((7, 6), (3, 3), (1, 1), "valid"), ((7, 6), (3, 3), (2, 2), "same"),
              ((5, 5), (2, 2), (2, 2), "valid"), ((6, 7), (3, 2), (2, 1), "same"),
              ((4, 4), (1, 1), (1, 1), "valid"), ((5, 3), (3, 3), (1, 1), "same"),
              # windows that tile the input exactly, and windows with gaps between them
              ((6, 8), (2, 2), (2, 2), "valid"), ((8, 7), (2, 2), (3, 3), "valid"),
              # padding above and below only: im2col's row-at-a-time path with zero rows
              ((6, 8), (3, 1), (1, 1), "same")]
GEO_IDS = [f"{g[0]}-{g[1]}-{g[2]}-{g[3]}" for g in GEOMETRIES]


def window_for(hw, k, s, padding, c=3):
    layer = MaxPooling2D(k, s, padding)
    layer.build((None, hw[0], hw[1], c))
    return layer.window


@pytest.mark.parametrize("hw,k,s,padding", GEOMETRIES, ids=GEO_IDS)
@pytest.mark.parametrize("batch", [1, 3])
def test_window_ops_match_reference(rng, hw, k, s, padding, batch):
    x = rng.standard_normal((batch, *hw, 3)).astype(np.float32)
    win = window_for(hw, k, s, padding)
    np.testing.assert_array_equal(CPU.im2col(x, win), REF.im2col(x, win))
    cols = rng.standard_normal(REF.im2col(x, win).shape).astype(np.float32)
    np.testing.assert_allclose(CPU.col2im(cols, win, x.shape), REF.col2im(cols, win, x.shape),
                               rtol=1e-5, atol=1e-6)
    y_ref, a_ref = REF.maxpool_forward(x, win)
    y, a = CPU.maxpool_forward(x, win)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(a, a_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(CPU.maxpool_backward(dy, a, win, x.shape),
                               REF.maxpool_backward(dy, a_ref, win, x.shape), rtol=1e-6)
    np.testing.assert_allclose(CPU.avgpool_forward(x, win), REF.avgpool_forward(x, win),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(CPU.avgpool_backward(dy, win, x.shape),
                               REF.avgpool_backward(dy, win, x.shape), rtol=1e-5, atol=1e-6)


def test_maxpool_backward_rejects_bad_indices(rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    win = window_for((4, 4), (2, 2), (2, 2), "valid", 2)
    y, a = CPU.maxpool_forward(x, win)
    a[0, 0, 0, 0] = 10_000
    with pytest.raises(ValueError, match="argmax"):
        CPU.maxpool_backward(y, a, win, x.shape)


def _fd(f, x, eps=1e-5):
    return numeric_grad(f, x, eps)


@pytest.mark.parametrize("hw,k,s,padding", GEOMETRIES[:4], ids=GEO_IDS[:4])
def test_conv_gradients_match_finite_differences(rng, hw, k, s, padding):
    conv = Conv2D(2, k, strides=s, padding=padding, activation="tanh")
    conv.build((None, *hw, 3))
    win = conv.window
    x = rng.standard_normal((2, *hw, 3))
    kern = rng.standard_normal(conv.kernel.shape)
    bias = rng.standard_normal(2)
    rows = 2 * win[6] * win[7]
    dy = rng.standard_normal((rows, 2))

    def loss(xx, kk, bb):
        cols = REF.im2col(xx, win).astype(np.float64)
        return (np.tanh(cols @ kk.reshape(-1, 2) + bb) * dy).sum()

    cols = REF.im2col(x, win).astype(np.float64)
    z, y = REF.dense_forward(cols, kern.reshape(-1, 2), bias, A.TANH, 0.0,
                             z=np.empty((rows, 2)), y=np.empty((rows, 2)))
    dk, db = np.empty_like(kern), np.empty_like(bias)
    dx = REF.conv2d_backward(cols, kern, z, y, dy.copy(), A.TANH, 0.0, win, x.shape, dk, db)
    np.testing.assert_allclose(dx, _fd(lambda v: loss(v, kern, bias), x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dk, _fd(lambda v: loss(x, v, bias), kern), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, _fd(lambda v: loss(x, kern, v), bias), rtol=1e-4, atol=1e-6)


def test_pool_gradients_match_finite_differences(rng):
    x = rng.standard_normal((2, 5, 5, 2))
    dy = rng.standard_normal((2, 3, 3, 2))
    win = window_for((5, 5), (2, 2), (2, 2), "same", 2)
    f_avg = lambda v: (REF.avgpool_forward(v, win).astype(np.float64) * dy).sum()  # noqa: E731
    np.testing.assert_allclose(REF.avgpool_backward(dy, win, x.shape), _fd(f_avg, x, 1e-3),
                               rtol=1e-3, atol=1e-4)
    f_max = lambda v: (REF.maxpool_forward(v, win)[0] * dy).sum()  # noqa: E731
    _, a = REF.maxpool_forward(x, win)
    np.testing.assert_allclose(REF.maxpool_backward(dy, a, win, x.shape), _fd(f_max, x, 1e-4),
                               rtol=1e-3, atol=1e-3)


def test_batchnorm_gradient_matches_finite_differences(rng):
    x = rng.standard_normal((6, 3))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    dy = rng.standard_normal((6, 3))

    def loss(xx, gg, bb):
        m, v = xx.mean(0), xx.var(0)
        return (((xx - m) / np.sqrt(v + 1e-3) * gg + bb) * dy).sum()

    m, v = REF.batchnorm_stats(x)
    dg, db = np.empty(3), np.empty(3)
    dx = REF.batchnorm_backward(x, dy, m, v, gamma, 1e-3, d_gamma=dg, d_beta=db)
    np.testing.assert_allclose(dx, _fd(lambda t: loss(t, gamma, beta), x), rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(dg, _fd(lambda t: loss(x, t, beta), gamma), rtol=1e-4)
    np.testing.assert_allclose(db, _fd(lambda t: loss(x, gamma, t), beta), rtol=1e-4)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    g32 = gamma.astype(np.float32)
    m32, v32 = CPU.batchnorm_stats(x32)
    np.testing.assert_allclose(m32, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v32, v, rtol=1e-5)
    np.testing.assert_allclose(CPU.batchnorm_backward(x32, dy32, m32, v32, g32, 1e-3), dx,
                               rtol=1e-4, atol=1e-5)


# ---- against PyTorch -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _nchw(torch, a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), dtype=torch.float64,
                        requires_grad=True)


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("k,s,padding,hw", [(3, 1, "valid", (7, 6)), (3, 2, "valid", (7, 7)),
                                            (3, 1, "same", (6, 5)), (5, 1, "same", (7, 7)),
                                            # pointwise: im2col is the input itself
                                            (1, 1, "valid", (5, 4)), (1, 1, "same", (3, 6)),
                                            (1, 2, "valid", (5, 5))])
def test_conv2d_matches_torch(rng, torch, k, s, padding, hw):
    model = Sequential([Conv2D(4, k, strides=s, padding=padding, input_shape=(*hw, 3))])
    model.compile(optimizer="sgd", loss="mse")
    conv = model.layers[0]
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    y = get(conv.forward(put(x), training=True))
    xt = _nchw(torch, x)
    kernel, bias = conv.get_weights()
    wt = torch.tensor(kernel.transpose(3, 2, 0, 1).astype(np.float64), requires_grad=True)
    bt = torch.tensor(bias.astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=s,
                                    padding="same" if padding == "same" else 0)
    np.testing.assert_allclose(y, _nhwc(yt), rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = get(conv.backward(put(dy)))
    (yt * torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(get(conv.grads["kernel"]),
                               wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(get(conv.grads["bias"]), bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls,fn", [(MaxPooling2D, "max_pool2d"), (AveragePooling2D, "avg_pool2d")])
@pytest.mark.parametrize("size,stride,hw", [(2, 2, (6, 6)), (3, 2, (7, 7)), (2, 1, (5, 4))])
def test_pooling_matches_torch(rng, torch, cls, fn, size, stride, hw):
    layer = cls(size, stride)
    layer.build((None, *hw, 3))
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    y = get(layer.forward(put(x), training=True))
    xt = _nchw(torch, x)
    yt = getattr(torch.nn.functional, fn)(xt, size, stride)
    np.testing.assert_allclose(y, _nhwc(yt), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = get(layer.backward(put(dy)))
    (yt * torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-5, atol=1e-6)


def test_batchnorm_matches_torch(rng, torch):
    bn = BatchNormalization()
    bn.build((None, 5, 4, 3))
    bn.set_weights([rng.random(3) + 0.5, rng.standard_normal(3), np.zeros(3), np.ones(3)])
    x = rng.standard_normal((4, 5, 4, 3)).astype(np.float32) * 2 + 1
    y = get(bn.forward(put(x), training=True))
    xt = _nchw(torch, x)
    tbn = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.01).double()
    gamma, beta = bn.get_weights()[:2]
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(gamma))
        tbn.bias.copy_(torch.tensor(beta))
    yt = tbn(xt)
    np.testing.assert_allclose(y, _nhwc(yt), rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = get(bn.backward(put(dy)))
    (yt * torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(get(bn.grads["gamma"]), tbn.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(get(bn.grads["beta"]), tbn.bias.grad.numpy(), rtol=1e-4)
    # Keras's moving update uses the biased batch variance (PyTorch's uses the unbiased one).
    xv = x.reshape(-1, 3).astype(np.float64)
    moving_mean, moving_variance = bn.get_weights()[2:]
    np.testing.assert_allclose(moving_mean, 0.01 * xv.mean(0), rtol=1e-4)
    np.testing.assert_allclose(moving_variance, 0.99 + 0.01 * xv.var(0), rtol=1e-5)
    # Inference uses the moving statistics.
    y_inf = get(bn.forward(put(x), training=False))
    want = (x - moving_mean) / np.sqrt(moving_variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(y_inf, want, rtol=1e-4, atol=1e-5)


# ---- layers ------------------------------------------------------------------------------------
def test_tutorial_cnn_shapes_params_and_summary():
    model = Sequential([
        Conv2D(64, 3, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(), Flatten(),
        BatchNormalization(), Dense(200, activation="selu", kernel_initializer="lecun_normal"),
        BatchNormalization(), Dense(100, activation="selu", kernel_initializer="lecun_normal"),
        BatchNormalization(), Dense(10, activation="softmax")])
    assert model.count_params() == 2_229_614
    assert [layer.name for layer in model.layers[:4]] == ["conv2d", "max_pooling2d", "flatten",
                                                  "batch_normalization"]
    assert model.layers[0].kernel.shape == (3, 3, 1, 64)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(None, 26, 26, 64)" in text and "(None, 13, 13, 64)" in text
    assert "(None, 10816)" in text
    non_trainable = 2 * (10816 + 200 + 100)
    assert f"Non-trainable params: {non_trainable:,}" in text
    bn = model.layers[3]
    assert [w.shape for w in bn.get_weights()] == [(10816,)] * 4
    assert len(bn.trainable_weights) == 2 and len(bn.non_trainable_weights) == 2


def test_bn_mlp_param_count():
    model = Sequential([Flatten(input_shape=(28, 28)), BatchNormalization(),
                        Dense(200, activation="selu", kernel_initializer="lecun_normal"),
                        BatchNormalization(),
                        Dense(100, activation="selu", kernel_initializer="lecun_normal"),
                        BatchNormalization(), Dense(10, activation="softmax")])
    assert model.count_params() == 182_446


def test_same_padding_output_shapes():
    conv = Conv2D(8, (3, 3), strides=2, padding="same")
    assert conv.compute_output_shape((None, 7, 6, 3)) == (None, 4, 3, 8)
    assert MaxPooling2D(padding="same").compute_output_shape((None, 5, 5, 2)) == (None, 3, 3, 2)
    assert GlobalAveragePooling2D().compute_output_shape((None, 5, 5, 2)) == (None, 2)


def test_global_pooling(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    gap, gmp = GlobalAveragePooling2D(), GlobalMaxPooling2D()
    np.testing.assert_allclose(gap(x), x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gmp(x), x.max(axis=(1, 2)), rtol=1e-6)
    gap.forward(put(x), training=True)
    dx = get(gap.backward(put(np.ones((2, 5), np.float32))))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 12), rtol=1e-6)


def test_conv_config_round_trip():
    conv = Conv2D(16, (3, 5), strides=2, padding="same", activation="relu", name="c")
    cfg = conv.get_config()
    assert cfg["kernel_size"] == (3, 5) and cfg["strides"] == (2, 2) and cfg["padding"] == "same"
    again = Conv2D.from_config(cfg)
    assert (again.filters, again.kernel_size, again.padding) == (16, (3, 5), "same")


def test_bad_conv_and_pool_arguments():
    with pytest.raises(ValueError, match="padding"):
        Conv2D(4, 3, padding="full")
    with pytest.raises(ValueError, match="strides"):
        Conv2D(4, 3, strides=0)
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2D(pool_size=(0, 2))
    with pytest.raises(ValueError, match="larger than its input"):
        Sequential([Conv2D(4, 7, input_shape=(5, 5, 1))])
    with pytest.raises(ValueError, match=r"4-D input.*reshape\(-1, 28, 28, 1\)"):
        Sequential([Conv2D(4, 3, input_shape=(28, 28))])


def test_3d_array_given_to_conv_model_suggests_reshape():
    model = Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match=r"add the channel axis.*reshape"):
        model.predict(np.zeros((4, 8, 8)), verbose=0)


def test_conv_model_trains_on_cpu_and_reference_identically(rng):
    from fastnn.backend import use_backend
    from fastnn.utils import set_random_seed
    x = rng.standard_normal((16, 9, 9, 2)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    results = []
    for backend in ("cpu", "numpy"):
        with use_backend(backend):
            set_random_seed(0)
            m = Sequential([Conv2D(4, 3, padding="same", activation="relu",
                                   input_shape=(9, 9, 2)),
                            MaxPooling2D(), BatchNormalization(), Conv2D(3, 2, strides=2),
                            GlobalAveragePooling2D(), Dense(3, activation="softmax")])
            m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            m.fit(x, y, epochs=2, batch_size=8, verbose=0)
            results.append(m.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
