"""The bad-input catalogue of fit / evaluate / predict / layers / compile: each call either does
what Keras does or raises a clear error naming the argument, before it changes any state."""
import numpy as np
import pytest

import fastnn
from fastnn import losses
from fastnn.layers import BatchNormalization, Conv2D, Dense, Input, LeakyReLU


def _model(fused=True):
    fastnn.utils.set_random_seed(0)
    hidden = [Dense(8, activation="relu")] if fused else \
        [Dense(8, activation="relu"), BatchNormalization()]
    model = fastnn.Sequential([Input(shape=(4,)), *hidden, Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _unchanged(model, call):
    """call() raises; the model's weights and optimizer are as before."""
    before, iterations = model.get_weights(), model.optimizer.iterations
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert model.optimizer.iterations == iterations
    for p, q in zip(before, model.get_weights()):
        np.testing.assert_array_equal(p, q)
    return str(info.value)


# ---- exact from_logits losses (History, EarlyStopping and ReduceLROnPlateau read them) -------
def test_from_logits_losses_are_exact():
    z = np.array([[20.0, 0.0, 0.0]], np.float32)
    assert losses.SparseCategoricalCrossentropy(from_logits=True)([1], z) == pytest.approx(20.0)
    assert losses.CategoricalCrossentropy(from_logits=True)([[0, 1, 0]], z) == \
        pytest.approx(20.0)
    assert losses.BinaryCrossentropy(from_logits=True)([[0.0]], [[1000.0]]) == \
        pytest.approx(1000.0)
    assert losses.BinaryCrossentropy(from_logits=True)([[1.0]], [[-80.0]]) == \
        pytest.approx(80.0)
    # Near zero loss stays exact too: log(1 + e^-30) ~ 9.4e-14, not the clip's 1e-7.
    assert losses.BinaryCrossentropy(from_logits=True)([[1.0]], [[30.0]]) == \
        pytest.approx(np.log1p(np.exp(-30.0)), rel=1e-3)


@pytest.mark.parametrize("loss", ["sparse", "categorical", "binary"])
def test_from_logits_loss_reported_by_fit_and_evaluate(loss):
    model = fastnn.Sequential([Input(shape=(1,)), Dense(3 if loss != "binary" else 1,
                                                        use_bias=False)])
    model.set_weights([np.array([[20.0, 0.0, 0.0]] if loss != "binary" else [[1000.0]],
                                np.float32)])
    x = np.ones((4, 1), np.float32)
    if loss == "sparse":
        obj, y, want = losses.SparseCategoricalCrossentropy(from_logits=True), np.ones(4), 20.0
    elif loss == "categorical":
        obj, y, want = losses.CategoricalCrossentropy(from_logits=True), \
            np.tile([0.0, 1.0, 0.0], (4, 1)), 20.0
    else:
        obj, y, want = losses.BinaryCrossentropy(from_logits=True), np.zeros((4, 1)), 1000.0
    model.compile(fastnn.optimizers.SGD(0.0), obj)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(want, rel=1e-6)
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(want, rel=1e-6)


def test_from_logits_gradient_unchanged():
    """The value is exact; the gradient stays the fused kernel's p - y (checked numerically)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(np.float32) * 3
    y = rng.integers(0, 4, 5).astype(np.int32)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    grad = np.empty_like(z)
    ops = fastnn.backend.get_ops()
    total = loss.value_and_grad(ops.asarray(z), ops.asarray(y, np.int32), None, 1.0,
                                ops.asarray(grad), "logits")
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert float(total) == pytest.approx(-np.log(p[np.arange(5), y]).sum(), rel=1e-5)


# ---- empty runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, arg", [
    (dict(steps_per_epoch=0), "steps_per_epoch"), (dict(steps_per_epoch=-1), "steps_per_epoch"),
    (dict(validation_steps=0, validation_split=0.5), "validation_steps"),
    (dict(initial_epoch=-1), "initial_epoch"), (dict(epochs=-1), "epochs"),
    (dict(epochs=1.5), "epochs"), (dict(steps_per_epoch=True), "steps_per_epoch")])
def test_fit_rejects_empty_or_bad_run_lengths(kwargs, arg):
    model = _model()
    x, y = _data()
    message = _unchanged(model, lambda: model.fit(x, y, verbose=0, **kwargs))
    assert arg in message


def test_evaluate_and_predict_reject_bad_steps():
    model = _model()
    x, y = _data()
    for steps in (0, -1, 2.0):
        with pytest.raises(ValueError, match="steps must be None or a positive int"):
            model.evaluate(x, y, steps=steps, verbose=0)
        with pytest.raises(ValueError, match="steps must be None or a positive int"):
            model.predict(x, steps=steps, verbose=0)


def test_fit_with_no_epochs_returns_this_fits_empty_history():
    model = _model()
    x, y = _data()
    first = model.fit(x, y, epochs=2, verbose=0)
    assert len(first.history["loss"]) == 2
    for kwargs in (dict(epochs=0), dict(epochs=2, initial_epoch=2),
                   dict(epochs=1, initial_epoch=3)):
        history = model.fit(x, y, verbose=0, **kwargs)
        assert history is not first and history.history == {}
        assert model.history is history


# ---- bad values found before anything changes --------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_float64_beyond_float32_range_is_rejected(fused):
    model = _model(fused)
    x, y = _data()
    big = x.astype(np.float64)
    big[7, 2] = 1e300
    message = _unchanged(model, lambda: model.fit(big, y, epochs=1, verbose=0))
    assert message.startswith("x ")
    with pytest.raises(ValueError, match="^x "):
        model.predict(big, verbose=0)


@pytest.mark.parametrize("fused", [True, False])
def test_nan_in_validation_data_is_found_before_training(fused):
    model = _model(fused)
    x, y = _data()
    bad = x.copy()
    bad[3, 1] = np.nan
    message = _unchanged(model, lambda: model.fit(x, y, epochs=1, verbose=0,
                                                  validation_data=(bad, y)))
    assert "x_val" in message


@pytest.mark.parametrize("weight", [np.nan, np.inf, "2", None])
def test_class_weight_values_must_be_finite_numbers(weight):
    model = _model()
    x, y = _data()
    message = _unchanged(model, lambda: model.fit(x, y, epochs=1, verbose=0,
                                                  class_weight={0: weight, 1: 1.0}))
    assert "class_weight" in message


def test_class_weight_must_be_a_dict_of_class_indices():
    model = _model()
    x, y = _data()
    _unchanged(model, lambda: model.fit(x, y, verbose=0, class_weight=[1.0, 2.0]))
    _unchanged(model, lambda: model.fit(x, y, verbose=0, class_weight={-1: 1.0}))
    _unchanged(model, lambda: model.fit(x, y, verbose=0, class_weight={"a": 1.0}))


@pytest.mark.parametrize("fused", [True, False])
def test_complex_input_is_rejected(fused):
    model = _model(fused)
    x, y = _data()
    xc = x.astype(np.complex64) + 1j
    message = _unchanged(model, lambda: model.fit(xc, y, verbose=0))
    assert "x must be a real numeric array" in message and "complex64" in message
    with pytest.raises(TypeError, match="x must be a real"):
        model.predict(xc, verbose=0)
    with pytest.raises(TypeError, match="x must be a real"):
        model(xc)
    model2 = fastnn.Sequential([Input(shape=(4,)), Dense(2)])
    model2.compile("sgd", "mse")
    _unchanged(model2, lambda: model2.fit(x, np.ones((40, 2)) + 1j, verbose=0))


def test_zero_width_input_is_rejected():
    model = fastnn.Sequential([Dense(3)])
    with pytest.raises(ValueError, match=r"x has shape \(5, 0\)"):
        model.predict(np.zeros((5, 0), np.float32), verbose=0)
    assert not model.built


def test_huge_batch_size_is_one_batch_of_everything():
    x, y = _data()
    results = []
    for batch in (40, 2 ** 31, 2 ** 62):
        model = _model()
        history = model.fit(x, y, batch_size=batch, epochs=2, verbose=0, shuffle=False)
        results.append((history.history["loss"], model.predict(x, batch_size=batch, verbose=0),
                        model.evaluate(x, y, batch_size=batch, verbose=0)))
    for other in results[1:]:
        assert other[0] == results[0][0] and other[2] == results[0][2]
        np.testing.assert_array_equal(other[1], results[0][1])


def test_empty_sequential_cannot_fit_or_predict():
    model = fastnn.Sequential()
    model.compile("sgd", "mse")
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="has no layers"):
        model.fit(x, np.ones((4, 3)), verbose=0)
    with pytest.raises(ValueError, match="has no layers"):
        model.predict(x, verbose=0)


# ---- layer arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, arg", [
    (lambda: LeakyReLU(negative_slope=np.nan), "negative_slope"),
    (lambda: LeakyReLU(negative_slope="x"), "negative_slope"),
    (lambda: BatchNormalization(epsilon=-1), "epsilon"),
    (lambda: BatchNormalization(epsilon=0), "epsilon"),
    (lambda: BatchNormalization(momentum=np.inf), "momentum"),
    (lambda: BatchNormalization(momentum=1.5), "momentum"),
    (lambda: Dense(3, input_shape=(4.7,)), "input_shape"),
    (lambda: Dense(3, input_dim=2.5), "input_dim"),
    (lambda: Input(shape=(4.7,)), "shape"),
    (lambda: Conv2D(4, (3.7, 3)), "kernel_size"),
    (lambda: Conv2D(4, 3, strides=(1.5, 1)), "strides"),
])
def test_layer_arguments_are_validated(make, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        make()


# ---- configs given directly (files are checked by saving; tests/reliability/test_configs.py) ----
@pytest.mark.parametrize("config, key", [
    ({"class_name": "NoSuchLoss", "config": {}}, "class_name"),
    ({"config": {}}, "class_name"),
    ({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": True,
                                                               "eval": "1"}}, "eval"),
    ({"class_name": "BinaryCrossentropy", "config": []}, "config"),
])
def test_losses_get_names_the_bad_key(config, key):
    with pytest.raises((ValueError, TypeError), match=key):
        losses.get(config)


def test_sequential_from_config_and_layer_dtype_are_checked():
    with pytest.raises((ValueError, TypeError), match="layers"):
        fastnn.Sequential.from_config({"name": "m", "layers": {"eval": 1}})
    with pytest.raises((ValueError, TypeError), match="units"):
        fastnn.Sequential.from_config({"name": "m", "layers": [
            {"class_name": "Dense", "config": {"units": "8"}}]})
    with pytest.raises(ValueError, match="float64"):
        Dense.from_config({"units": 3, "dtype": "float64"})
    layer = Dense.from_config({"units": 3, "dtype": {"module": "keras", "class_name":
                                                    "DTypePolicy", "config": {"name": "float32"}}})
    assert layer.units == 3


@pytest.mark.cpu_backend
def test_cpu_ops_name_a_missing_array():
    """Every method CpuOps defines (the compiled core's Python side) raises TypeError or
    ValueError naming the argument when a required array is None, never AttributeError."""
    import inspect

    from fastnn.backend.cpu import CpuOps
    ops = CpuOps()
    checked = 0
    for name, fn in vars(CpuOps).items():
        if name.startswith("_") or not callable(fn) or name in ("conv2d_maxpool_plan",):
            continue
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.name != "self" and p.default is p.empty]
        for i, missing in enumerate(params):
            if missing.name in ("act", "alpha", "window", "x_shape", "scale", "eps",
                                "momentum", "conv_window", "pool_window", "lr", "nesterov"):
                continue
            args = [None if j == i else np.ones((4, 4), np.float32) for j in range(len(params))]
            try:
                getattr(ops, name)(*args)
            except (TypeError, ValueError, OverflowError):
                checked += 1
    assert checked > 40
