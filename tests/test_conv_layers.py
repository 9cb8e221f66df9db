"""Conv2D with dilation_rate and groups, DepthwiseConv2D, SeparableConv2D and Conv2DTranspose:
outputs and gradients against real Keras 3 (same weights), gradients against finite
differences, training in Sequential and functional models step for step with Keras, configs,
and Keras's argument errors. Runs on the active test backend (FASTNN_TEST_BACKEND)."""
import numpy as np
import pytest
from gradcheck import numeric_grad
from onbackend import get, put

import fastnn
from fastnn import layers as L
from fastnn.backend import get_ops

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

# (class name, keyword arguments, input shape without the batch axis)
CASES = [
    ("Conv2D", dict(filters=4, kernel_size=3, dilation_rate=2), (9, 8, 3)),
    ("Conv2D", dict(filters=4, kernel_size=(3, 2), dilation_rate=(2, 3), padding="same",
                    activation="relu"), (7, 9, 2)),
    ("Conv2D", dict(filters=6, kernel_size=3, groups=3, padding="same"), (6, 7, 6)),
    ("Conv2D", dict(filters=4, kernel_size=(2, 3), strides=(2, 1), groups=2,
                    activation="tanh"), (7, 8, 4)),
    ("Conv2D", dict(filters=6, kernel_size=3, dilation_rate=(1, 2), groups=2,
                    padding="same", activation="gelu"), (6, 9, 4)),
    ("Conv2D", dict(filters=4, kernel_size=1, groups=2, dilation_rate=3), (5, 5, 4)),
    ("DepthwiseConv2D", dict(kernel_size=3), (7, 6, 3)),
    ("DepthwiseConv2D", dict(kernel_size=(3, 2), strides=2, padding="same",
                             depth_multiplier=2, activation="relu"), (8, 7, 3)),
    ("DepthwiseConv2D", dict(kernel_size=3, dilation_rate=(2, 1), padding="same",
                             depth_multiplier=3, use_bias=False), (7, 6, 2)),
    ("DepthwiseConv2D", dict(kernel_size=2, strides=(1, 2), dilation_rate=2,
                             activation="tanh"), (6, 9, 2)),
    ("SeparableConv2D", dict(filters=5, kernel_size=3), (7, 6, 3)),
    ("SeparableConv2D", dict(filters=4, kernel_size=(2, 3), strides=2, padding="same",
                             depth_multiplier=2, activation="relu"), (8, 7, 3)),
    ("SeparableConv2D", dict(filters=3, kernel_size=3, dilation_rate=2, padding="same",
                             use_bias=False, activation="sigmoid"), (7, 7, 2)),
    ("Conv2DTranspose", dict(filters=4, kernel_size=3), (4, 5, 3)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=3, strides=2, padding="same"), (4, 5, 2)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=(2, 3), strides=(3, 2), padding="valid",
                             activation="relu"), (3, 4, 2)),
    ("Conv2DTranspose", dict(filters=2, kernel_size=4, strides=2, padding="same",
                             output_padding=1), (3, 4, 3)),
    ("Conv2DTranspose", dict(filters=2, kernel_size=3, strides=(2, 3), padding="valid",
                             output_padding=(1, 2)), (3, 3, 2)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=(3, 2), strides=(3, 2), padding="same",
                             output_padding=(0, 1), activation="tanh"), (3, 4, 2)),
    ("Conv2DTranspose", dict(filters=2, kernel_size=3, dilation_rate=2, padding="same",
                             use_bias=False), (5, 4, 3)),
    ("Conv2DTranspose", dict(filters=2, kernel_size=(2, 3), dilation_rate=(3, 2)), (4, 4, 2)),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def pair(name, kwargs, shape, seed=0):
    """The fastnn and Keras layers built for a batch of 2, with the same random weights."""
    ours = getattr(L, name)(**kwargs)
    theirs = getattr(keras.layers, name)(**kwargs)
    ours.build((None,) + shape)
    theirs.build((None,) + shape)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in theirs.get_weights()]
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    assert [v.path.split("/")[-1] for v in theirs.weights] == ours.weight_names
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def keras_forward_backward(layer, x, dy):
    """Keras's output and its gradients (input, then each weight) for the loss sum(y * dy)."""
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    (y * torch.tensor(dy)).sum().backward()
    return (y.detach().numpy(), xt.grad.numpy(),
            [v.value.grad.numpy() for v in layer.trainable_weights])


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_forward_and_gradients_equal_keras(name, kwargs, shape):
    ours, theirs = pair(name, kwargs, shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    out_shape = tuple(theirs.compute_output_shape((2,) + shape))
    assert ours.compute_output_shape((2,) + shape) == out_shape
    dy = rng.standard_normal(out_shape).astype(np.float32)
    y_k, dx_k, dw_k = keras_forward_backward(theirs, x, dy)
    y = get(ours.forward(put(x), training=True))
    assert y.shape == out_shape
    np.testing.assert_allclose(y, y_k, rtol=1e-4, atol=1e-4)
    dx = get(ours.backward(put(dy)))
    np.testing.assert_allclose(dx, dx_k, rtol=1e-4, atol=1e-4)
    for wname, want in zip(ours.weight_names, dw_k):
        np.testing.assert_allclose(get(ours.grads[wname]), want, rtol=1e-4, atol=1e-3,
                                   err_msg=wname)


GRAD_CASES = [c for c in CASES if "activation" not in c[1]]


@pytest.mark.parametrize("name,kwargs,shape", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_match_finite_differences(name, kwargs, shape):
    """Linear layers under a linear loss: central differences are exact up to rounding."""
    ours = getattr(L, name)(**kwargs)
    ours.build((None,) + shape)
    rng = np.random.default_rng(2)
    ours.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                      for w in ours.get_weights()])
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    r = rng.standard_normal(ours.compute_output_shape((2,) + shape)).astype(np.float64)
    names = ours.weight_names
    base = [w.copy() for w in ours.get_weights()]

    def loss(xx=x, which=None, value=None):
        ws = list(base)
        if which is not None:
            ws[which] = value.astype(np.float32)
        ours.set_weights(ws)
        return float((get(ours.forward(put(xx.astype(np.float32)))) * r).sum())

    loss()
    dx = get(ours.backward(put(r.astype(np.float32))))
    grads = {n: get(ours.grads[n]) for n in names}
    np.testing.assert_allclose(dx, numeric_grad(lambda v: loss(xx=v), x, 0.25),
                               rtol=1e-3, atol=1e-3)
    for i, n in enumerate(names):
        np.testing.assert_allclose(grads[n], numeric_grad(lambda v, i=i: loss(which=i, value=v),
                                                          base[i], 0.25),
                                   rtol=1e-3, atol=1e-3, err_msg=n)
    assert any(np.abs(g).max() > 0.1 for g in grads.values())


def model_cases(K):
    """A small network of each new layer, ending in a softmax."""
    return [
        [K.layers.Conv2D(6, 3, dilation_rate=2, groups=2, activation="relu"),
         K.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="tanh"),
         K.layers.GlobalAveragePooling2D(), K.layers.Dense(3, activation="softmax")],
        [K.layers.SeparableConv2D(4, 3, strides=2, depth_multiplier=2, activation="relu"),
         K.layers.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1,
                                  activation="tanh"),
         K.layers.Flatten(), K.layers.Dense(3, activation="softmax")],
        [K.layers.Conv2DTranspose(2, (2, 3), strides=(1, 2), dilation_rate=1,
                                  activation="relu"),
         K.layers.DepthwiseConv2D(2, strides=2, dilation_rate=2, use_bias=False),
         K.layers.Flatten(), K.layers.Dense(3, activation="softmax")],
    ]


@pytest.mark.parametrize("case", [0, 1, 2])
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_fit_matches_keras(case, kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 8, 8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    models = []
    for K in (fastnn, keras):
        layers = model_cases(K)[case]
        if kind == "sequential":
            model = K.Sequential([K.Input((8, 8, 4))] + layers)
        else:
            inputs = K.Input((8, 8, 4))
            t = inputs
            for layer in layers:
                t = layer(t)
            model = K.Model(inputs, t)
        models.append(model)
    ours, theirs = models
    theirs.set_weights(ours.get_weights())
    histories = []
    for model, K in ((ours, fastnn), (theirs, keras)):
        model.compile(optimizer=K.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        histories.append(model.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                                   verbose=0).history["loss"])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-4, atol=1e-5)
    assert histories[0][-1] < histories[0][0]
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               rtol=1e-4, atol=1e-5)


def test_grouped_conv_in_fused_inference_chain_equals_keras(monkeypatch):
    """A linear grouped, dilated Conv2D with BatchNormalization, Add and ReLU after it:
    inference folds them into the convolution's epilogue (schedule), as for a plain one."""
    fused = []
    forward_fused = L.Conv2D.forward_fused
    monkeypatch.setattr(L.Conv2D, "forward_fused",
                        lambda self, x, **k: fused.append(sorted(
                            n for n, v in k.items() if v is not None)) or
                        forward_fused(self, x, **k))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 7, 7, 4)).astype(np.float32)
    models = []
    for K in (fastnn, keras):
        inputs = K.Input((7, 7, 4))
        t = K.layers.ZeroPadding2D(1)(inputs)
        t = K.layers.Conv2D(4, 3, groups=2, dilation_rate=(1, 2), padding="valid")(t)
        t = K.layers.BatchNormalization()(t)
        t = K.layers.Add()([t, K.layers.Cropping2D(((0, 0), (1, 1)))(inputs)])
        models.append(K.Model(inputs, K.layers.Activation("relu")(t)))
    ours, theirs = models
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               rtol=1e-4, atol=1e-4)
    assert fused and fused[0] == ["act", "norm", "residual", "window"]


def test_winograd_inference_chain_equals_keras(monkeypatch):
    """A ResNet-style 3x3 stride-1 convolution (padding by a ZeroPadding2D, then
    BatchNormalization, Add and ReLU): on the CPU backend predict runs it by Winograd's
    F(2x2, 3x3) with the chain in its epilogue, equal to Keras to rounding; training runs
    the direct convolution, and both agree."""
    calls = []
    ops = get_ops()
    conv2d_forward = type(ops).conv2d_forward
    monkeypatch.setattr(type(ops), "conv2d_forward", lambda self, *a, **k: calls.append(
        k.get("work") is not None) or conv2d_forward(self, *a, **k))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 11, 13, 16)).astype(np.float32)
    models = []
    for K in (fastnn, keras):
        inputs = K.Input((11, 13, 16))
        t = K.layers.ZeroPadding2D(1)(inputs)
        t = K.layers.Conv2D(16, 3)(t)
        t = K.layers.BatchNormalization()(t)
        t = K.layers.Add()([t, inputs])
        models.append(K.Model(inputs, K.layers.Activation("relu")(t)))
    ours, theirs = models
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) * (0.1 if w.ndim == 4 else 1)
               for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    want = keras.ops.convert_to_numpy(theirs.predict(x, verbose=0))
    np.testing.assert_allclose(ours.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
    assert calls == [ops.winograd_work((2, 11, 13, 16), (3, 3, 1, 1, 1, 1, 11, 13), 16) > 0]
    calls.clear()
    np.testing.assert_allclose(get(ours(put(x), training=True)), keras.ops.convert_to_numpy(
        theirs(x, training=True)), rtol=1e-4, atol=1e-4)
    assert calls == [False]


def test_subclassed_model_trains_the_new_layers():
    """A subclassed Model's call runs each layer as one node on the autodiff tape."""
    class Net(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.a = L.SeparableConv2D(4, 3, padding="same", activation="relu")
            self.b = L.Conv2D(4, 3, groups=2, dilation_rate=2)
            self.c = L.Conv2DTranspose(2, 2, strides=2)
            self.d = L.DepthwiseConv2D(3, depth_multiplier=2)
            self.out = L.Dense(2)

        def call(self, x):
            t = self.d(self.c(self.b(self.a(x))))
            return self.out(fastnn.ops.mean(t, axis=(1, 2)))

    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 8, 8, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = Net()
    model.compile(optimizer="sgd", loss="mse")
    model.predict(x[:2], verbose=0)     # builds it
    before = [w.copy() for w in model.get_weights()]
    assert len(before) == 3 + 2 + 2 + 2 + 2
    losses = model.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_any_image_size():
    """Built for (None, None, c): the windows are set per batch."""
    rng = np.random.default_rng(5)
    for name, kwargs in (("Conv2D", dict(filters=4, kernel_size=3, dilation_rate=2,
                                         groups=2, padding="same")),
                         ("DepthwiseConv2D", dict(kernel_size=3, dilation_rate=2)),
                         ("SeparableConv2D", dict(filters=3, kernel_size=2, strides=2)),
                         ("Conv2DTranspose", dict(filters=3, kernel_size=3, strides=2,
                                                  padding="same"))):
        models = []
        for K in (fastnn, keras):
            inputs = K.Input((None, None, 2))
            models.append(K.Model(inputs, getattr(K.layers, name)(**kwargs)(inputs)))
        ours, theirs = models
        theirs.set_weights(ours.get_weights())
        for hw in ((7, 8), (9, 6)):
            x = rng.standard_normal((2,) + hw + (2,)).astype(np.float32)
            np.testing.assert_allclose(ours.predict(x, verbose=0),
                                       keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name} {hw}")


@pytest.mark.parametrize("name,kwargs,shape", CASES[::3], ids=IDS[::3])
def test_config_round_trips_and_keras_reads_it(name, kwargs, shape):
    layer = getattr(L, name)(**kwargs)
    config = layer.get_config()
    theirs = getattr(keras.layers, name)(**kwargs).get_config()
    assert set(config) <= set(theirs)
    for key in config:     # (Keras 3.15 writes more initializer arguments: not compared)
        if key not in ("name", "dtype") and not key.endswith("_initializer"):
            assert config[key] == (tuple(theirs[key]) if isinstance(theirs[key], list)
                                   else theirs[key]), key
    again = getattr(L, name).from_config(config)
    assert again.get_config() == config
    keras_copy = getattr(keras.layers, name).from_config(config)
    assert keras_copy.get_config()["kernel_size"] == tuple(layer.kernel_size)


BAD = [
    ("Conv2D", dict(filters=5, kernel_size=3, groups=2), "evenly divisible by the number of "
     "groups"),
    ("Conv2D", dict(filters=4, kernel_size=3, groups=0), "groups must be a positive"),
    ("Conv2D", dict(filters=4, kernel_size=3, strides=2, dilation_rate=2),
     "not supported in conjunction with"),
    ("Conv2D", dict(filters=4, kernel_size=3, dilation_rate=0), "dilation_rate"),
    ("DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=0), "depth_multiplier"),
    ("SeparableConv2D", dict(filters=0, kernel_size=3), "filters"),
    ("SeparableConv2D", dict(filters=2, kernel_size=3, depth_multiplier=-1),
     "depth_multiplier"),
    ("Conv2DTranspose", dict(filters=2, kernel_size=3, strides=2, output_padding=2),
     "output_padding"),
    ("Conv2DTranspose", dict(filters=2, kernel_size=3, strides=2, dilation_rate=2),
     "not supported in conjunction with"),
    ("Conv2DTranspose", dict(filters=0, kernel_size=3), "filters"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_keras_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        getattr(keras.layers, name)(**kwargs)
    with pytest.raises(ValueError, match=message):
        getattr(L, name)(**kwargs)


def test_input_channels_not_divisible_by_groups():
    for layer in (L.Conv2D(4, 3, groups=2), keras.layers.Conv2D(4, 3, groups=2)):
        with pytest.raises(ValueError, match="input channels must be evenly divisible"):
            layer.build((None, 6, 6, 3))


def test_dilated_window_larger_than_the_input_is_refused():
    with pytest.raises(ValueError, match=r"dilated to \(7, 7\)"):
        L.Conv2D(2, 3, dilation_rate=3).build((None, 6, 6, 1))


def test_plain_conv2d_takes_the_undilated_ungrouped_path(monkeypatch):
    """dilation 1 and groups 1: conv2d_forward/backward are called exactly as before (no
    groups argument), the window has 8 entries, and Conv2D + MaxPooling2D still fuse; a
    grouped or dilated Conv2D does not fuse with the pooling."""
    calls = []
    ops = get_ops()
    forward, backward = ops.conv2d_forward, ops.conv2d_backward
    monkeypatch.setattr(ops, "conv2d_forward",
                        lambda *a, **k: calls.append(("f", len(a[5]), sorted(k))) or
                        forward(*a, **k), raising=False)
    monkeypatch.setattr(ops, "conv2d_backward",
                        lambda *a, **k: calls.append(("b", len(a[7]), sorted(k))) or
                        backward(*a, **k), raising=False)
    layer = L.Conv2D(3, 3)
    layer.build((None, 6, 6, 2))
    y = layer.forward(put(np.ones((1, 6, 6, 2), np.float32)))
    layer.backward(put(np.ones(get(y).shape, np.float32)))
    assert calls == [("f", 8, ["cols", "y", "z"]), ("b", 8, ["dcols", "dx"])]
    assert L.ConvPool.fuses(L.Conv2D(3, 3, activation="relu"), L.MaxPooling2D())
    assert not L.ConvPool.fuses(L.Conv2D(4, 3, groups=2, activation="relu"), L.MaxPooling2D())
    assert not L.ConvPool.fuses(L.Conv2D(3, 3, dilation_rate=2, activation="relu"),
                                L.MaxPooling2D())


def test_keras_file_of_a_dilated_grouped_conv2d(tmp_path):
    model = fastnn.Sequential([fastnn.Input((8, 7, 4)),
                               L.Conv2D(6, (2, 3), dilation_rate=2, groups=2, padding="same",
                                        activation="relu")])
    rng = np.random.default_rng(6)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                       for w in model.get_weights()])
    x = rng.standard_normal((2, 8, 7, 4)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    theirs = keras.models.load_model(path)
    layer = theirs.layers[-1]
    assert (layer.groups, tuple(layer.dilation_rate)) == (2, (2, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    theirs.save(str(tmp_path / "k.keras"))
    again = fastnn.models.load_model(str(tmp_path / "k.keras"))
    assert again.layers[-1].groups == 2 and again.layers[-1].dilation_rate == (2, 2)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_pooling_kernels_refuse_a_dilated_window():
    from fastnn import _core
    x = np.zeros((1, 6, 6, 1), np.float32)
    y, argmax = np.zeros((1, 3, 3, 1), np.float32), np.zeros((1, 3, 3, 1), np.int32)
    with pytest.raises(ValueError, match="window must be a tuple"):
        _core.maxpool_forward(x, (2, 2, 2, 2, 0, 0, 3, 3, 1, 1), y, argmax)
    with pytest.raises(ValueError, match="dilations must be >= 1"):
        _core.im2col(x, (2, 2, 1, 1, 0, 0, 5, 5, 0, 1), np.zeros((25, 4), np.float32))


def test_shared_layers_train_as_in_keras():
    """Each new layer used twice in one functional model: gradients of both uses add up."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((16, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    models = []
    for K in (fastnn, keras):
        inputs = K.Input((6, 6, 2))
        sep = K.layers.SeparableConv2D(2, 3, padding="same", activation="tanh")
        dw = K.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2)
        grouped = K.layers.Conv2D(2, 3, padding="same", groups=2)
        up = K.layers.Conv2DTranspose(2, 3, padding="same")
        t = up(up(grouped(grouped(dw(dw(sep(sep(inputs))))))))
        t = K.layers.GlobalAveragePooling2D()(t)
        models.append(K.Model(inputs, K.layers.Dense(2)(t)))
    ours, theirs = models
    theirs.set_weights(ours.get_weights())
    histories = []
    for model, K in ((ours, fastnn), (theirs, keras)):
        model.compile(optimizer=K.optimizers.SGD(learning_rate=0.1), loss="mse")
        histories.append(model.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                                   verbose=0).history["loss"])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-3, atol=1e-5)
