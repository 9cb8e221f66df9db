"""The fused Dense-stack path (fastnn/stack.py, csrc/stack.c) against the layer-by-layer path:
every result must be bit-identical, since both run the same kernels in the same order."""
import numpy as np
import pytest

import fastnn
from fastnn import _core, callbacks, layers, losses, optimizers
from fastnn.stack import DenseRunner

# The fused Dense-stack path is the CPU backend's (csrc/stack.c).
pytestmark = pytest.mark.cpu_backend


def _data(n=203, d=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :classes].argmax(axis=1) + (x[:, -1] > 1)) % classes
    return x, y.astype(np.int64)


def _model(out=3, out_act="softmax", hidden=("relu", "tanh"), input_shape=(20,), flatten=False):
    fastnn.utils.set_random_seed(7)
    stack = [fastnn.Input(input_shape)] + ([layers.Flatten()] if flatten else [])
    stack += [layers.Dense(16, activation=a) for a in hidden]
    return fastnn.Sequential(stack + [layers.Dense(out, activation=out_act)])


def _train(monkeypatch, fused, build, compile_kw, x, y, fit_kw=None, check_path=True):
    """compile_kw: a dict, or a function returning one (a fresh optimizer for each run)."""
    monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
    model = build()
    model.compile(**(compile_kw() if callable(compile_kw) else compile_kw))
    hist = model.fit(x, y, verbose=0, **{"batch_size": 16, "epochs": 2, **(fit_kw or {})})
    if check_path:
        assert (DenseRunner.for_model(model, training=True) is not None) == fused
    state = dict(history=hist.history, weights=model.get_weights(),
                 optimizer=[np.asarray(v) for v in model.optimizer.variables()],
                 predict=model.predict(x, batch_size=7, verbose=0), call=model(x[:5]),
                 evaluate=model.evaluate(x, y, batch_size=9, verbose=0))
    return state


def _assert_same(a, b):
    assert a["history"] == b["history"]
    for key in ("weights", "optimizer"):
        assert len(a[key]) == len(b[key])
        for p, q in zip(a[key], b[key]):
            np.testing.assert_array_equal(p, q)
    for key in ("predict", "call"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["evaluate"] == b["evaluate"]


def _both(monkeypatch, build, compile_kw, x, y, fit_kw=None):
    fused = _train(monkeypatch, True, build, compile_kw, x, y, fit_kw)
    general = _train(monkeypatch, False, build, compile_kw, x, y, fit_kw)
    _assert_same(fused, general)
    return fused


OPTIMIZERS = [
    lambda: "adam", lambda: "sgd", lambda: "rmsprop", lambda: "nadam", lambda: "adamax",
    lambda: "adagrad", lambda: "adadelta",
    lambda: optimizers.Ftrl(0.1, l1_regularization_strength=0.01),
    lambda: optimizers.Lion(0.001, weight_decay=0.01),
    lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: optimizers.SGD(0.05, momentum=0.5),
    lambda: optimizers.RMSprop(momentum=0.5, centered=True),
    lambda: optimizers.AdamW(amsgrad=True),
    lambda: optimizers.Adam(learning_rate=lambda t: 0.01 / (1.0 + 0.1 * t)),
]


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
def test_every_optimizer_matches_the_general_path(monkeypatch, make_opt):
    x, y = _data()
    state = _both(monkeypatch, _model, lambda: dict(optimizer=make_opt(),
                                                    loss="sparse_categorical_crossentropy",
                                                    metrics=["accuracy"]), x, y,
                  dict(validation_split=0.2))
    assert set(state["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert np.isfinite(state["history"]["loss"]).all()


@pytest.mark.parametrize("case", ["onehot_smoothing", "binary", "mse", "mae_sum", "weights",
                                  "class_weight", "no_shuffle", "batch_shuffle", "float64",
                                  "uint8", "flatten", "no_metric", "steps_per_epoch"])
def test_losses_metrics_and_data_match_the_general_path(monkeypatch, case):
    x, y = _data()
    build, compile_kw = _model, dict(optimizer="adam", loss="sparse_categorical_crossentropy",
                                     metrics=["accuracy"])
    fit_kw = {}
    if case == "onehot_smoothing":
        y = np.eye(3, dtype=np.float32)[y]
        compile_kw["loss"] = losses.CategoricalCrossentropy(label_smoothing=0.1)
    elif case == "binary":
        y = (y == 1).astype(np.float32)
        build = lambda: _model(out=1, out_act="sigmoid")   # noqa: E731
        compile_kw["loss"] = "binary_crossentropy"
        compile_kw["metrics"] = [fastnn.metrics.BinaryAccuracy(threshold=0.3)]
    elif case == "mse":
        y = np.eye(3, dtype=np.float32)[y]
        build = lambda: _model(out_act=None)               # noqa: E731
        compile_kw.update(loss="mse", metrics=["categorical_accuracy"])
    elif case == "mae_sum":
        y = np.eye(3, dtype=np.float32)[y]
        build = lambda: _model(out_act="relu")             # noqa: E731
        compile_kw.update(loss=losses.MeanAbsoluteError(reduction="sum"), metrics=[])
    elif case == "weights":
        fit_kw["sample_weight"] = np.linspace(0.1, 2.0, len(x))
    elif case == "class_weight":
        fit_kw["class_weight"] = {0: 0.5, 1: 2.0, 2: 1.0}
    elif case == "no_shuffle":
        fit_kw["shuffle"] = False
    elif case == "batch_shuffle":
        fit_kw["shuffle"] = "batch"
    elif case == "float64":
        x = x.astype(np.float64) * 1.0001
    elif case == "uint8":
        x = (np.abs(x) * 40).astype(np.uint8)
    elif case == "flatten":
        x = x.reshape(-1, 4, 5)
        build = lambda: _model(input_shape=(4, 5), flatten=True)   # noqa: E731
    elif case == "no_metric":
        compile_kw["metrics"] = None
    elif case == "steps_per_epoch":
        fit_kw["steps_per_epoch"] = 5
    _both(monkeypatch, build, compile_kw, x, y, fit_kw)


def test_unsupported_models_take_the_general_path(monkeypatch):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data()
    dropout = fastnn.Sequential([fastnn.Input((20,)), layers.Dense(8, activation="relu"),
                                 layers.Dropout(0.2), layers.Dense(3, activation="softmax")])
    logits = _model(out_act=None)
    frozen = _model()
    frozen.layers[0].trainable = False
    # (l1/l2 regularizers and clipping run fused: tests/test_fused_penalties.py)
    orthogonal = fastnn.Sequential([fastnn.Input((20,)), layers.Dense(
        8, activation="relu", kernel_regularizer=fastnn.regularizers.OrthogonalRegularizer()),
        layers.Dense(3, activation="softmax", bias_regularizer="l2")])
    constrained = fastnn.Sequential([fastnn.Input((20,)), layers.Dense(
        8, activation="relu", kernel_constraint="non_neg"), layers.Dense(3, activation="softmax")])
    for model, kw in ((dropout, {}), (logits, dict(loss=losses.SparseCategoricalCrossentropy(
            from_logits=True))), (frozen, {}), (orthogonal, {}), (constrained, {})):
        model.compile(**{"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                         "metrics": ["accuracy"], **kw})
        model.fit(x, y, epochs=1, verbose=0)
        assert DenseRunner.for_model(model, training=True) is None
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy")
    monkeypatch.setenv("FASTNN_FUSED", "0")
    assert DenseRunner.for_model(model, training=True) is None


@pytest.mark.parametrize("case", ["sparse", "onehot", "binary", "no_accuracy", "keras3"])
def test_several_metrics_stay_on_the_fused_path(monkeypatch, case):
    """The stack counts one accuracy itself and keeps each batch's outputs for the other
    metrics, updated once per chunk: the same results as per batch (their state adds up),
    the same weights bit for bit."""
    x, y = _data()
    build = _model
    metrics = ["accuracy", "sparse_top_k_categorical_accuracy",
               fastnn.metrics.MeanMetricWrapper(lambda t, p: p.max(axis=-1), name="top")]
    loss = "sparse_categorical_crossentropy"
    if case == "onehot":
        y = np.eye(3, dtype=np.float32)[y]
        loss, metrics = "categorical_crossentropy", [
            "mae", "accuracy", fastnn.metrics.Precision(name="p"), fastnn.metrics.AUC(name="a")]
    elif case == "binary":
        y = (y == 1).astype(np.float32)
        build = lambda: _model(out=1, out_act="sigmoid")   # noqa: E731
        loss, metrics = "binary_crossentropy", [fastnn.metrics.AUC(name="auc"), "accuracy",
                                                fastnn.metrics.Recall(name="recall")]
    elif case == "no_accuracy":
        metrics = ["sparse_top_k_categorical_accuracy"]
    elif case == "keras3":      # issue 19's metric classes: their state adds up too
        y = np.eye(3, dtype=np.float32)[y]
        loss, metrics = "categorical_crossentropy", [
            "accuracy", "kl_divergence", "categorical_hinge", "binary_crossentropy",
            "cosine_similarity", "pearson_correlation", "true_positives",
            fastnn.metrics.SensitivityAtSpecificity(0.6, name="s_at_s"),
            fastnn.metrics.OneHotMeanIoU(3, name="iou"),
            fastnn.metrics.CategoricalCrossentropy(label_smoothing=0.1, name="cce")]
    kw = lambda: dict(optimizer="adam", loss=loss, metrics=list(metrics))  # noqa: E731
    fit_kw = dict(validation_split=0.2)
    fused = _train(monkeypatch, True, build, kw, x, y, fit_kw)
    general = _train(monkeypatch, False, build, kw, x, y, fit_kw)
    assert fused["history"].keys() == general["history"].keys()
    assert len(fused["history"]) == 2 * (len(metrics) + 1)
    for key, values in general["history"].items():
        np.testing.assert_allclose(fused["history"][key], values, rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(fused["evaluate"], general["evaluate"], rtol=1e-12)
    for p, q in zip(fused["weights"], general["weights"]):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("case", ["rescaling_uint8", "rescaling_per_channel",
                                  "normalization", "normalization_invert",
                                  "normalization_before_flatten"])
def test_a_preprocessing_layer_stays_on_the_fused_path(monkeypatch, case):
    """Rescaling or Normalization before the Dense stack: the C gather applies its arithmetic
    to each row, with the layer's float32 values, so every result is bit-identical."""
    x, y = _data()
    rng = np.random.default_rng(3)
    if case == "rescaling_uint8":
        x = (np.abs(x) * 40).astype(np.uint8)
        pre = lambda: [layers.Rescaling(1 / 255, offset=-0.25)]       # noqa: E731
        shape = (20,)
    elif case == "rescaling_per_channel":
        x = x.reshape(-1, 4, 5)
        pre = lambda: [layers.Rescaling([0.5, 2.0, -1.0, 0.1, 3.0]),  # noqa: E731
                       layers.Flatten()]
        shape = (4, 5)
    elif case == "normalization_before_flatten":
        x = (x.reshape(-1, 4, 5) * 3 + 1).astype(np.float64)
        norm = layers.Normalization()
        norm.adapt(x[:100])
        pre = lambda: [norm, layers.Flatten()]                          # noqa: E731
        shape = (4, 5)
    else:
        invert = case == "normalization_invert"
        mean, var = rng.normal(size=20), rng.uniform(0.0, 4.0, size=20)
        var[3] = 0.0                        # a constant feature: divides by epsilon
        pre = lambda: [layers.Normalization(mean=mean, variance=var,  # noqa: E731
                                            invert=invert)]
        shape = (20,)

    def build():
        fastnn.utils.set_random_seed(7)
        return fastnn.Sequential([fastnn.Input(shape)] + pre() + [
            layers.Dense(16, activation="relu"), layers.Dense(3, activation="softmax")])

    state = _both(monkeypatch, build, dict(optimizer="adam",
                                           loss="sparse_categorical_crossentropy",
                                           metrics=["accuracy"]), x, y)
    assert np.isfinite(state["history"]["loss"]).all()


class _Recorder(callbacks.Callback):
    def __init__(self, stop_at=None):
        super().__init__()
        self.seen, self.stop_at = [], stop_at

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((batch, dict(logs)))
        if batch == self.stop_at:
            self.model.stop_training = True


class _Warmup(callbacks.Callback):
    """Sets the learning rate at every batch (the fused path must not step with a stale one
    it computed ahead)."""

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = 0.001 * (1 + batch % 5)


@pytest.mark.parametrize("make_opt", [lambda: "adam", lambda: "nadam",
                                      lambda: optimizers.SGD(0.05, momentum=0.9)])
def test_a_callback_setting_the_learning_rate_each_batch(monkeypatch, make_opt):
    x, y = _data()
    _both(monkeypatch, _model, lambda: dict(optimizer=make_opt(),
                                            loss="sparse_categorical_crossentropy",
                                            metrics=["accuracy"]), x, y,
          dict(callbacks=[_Warmup()], epochs=3))


@pytest.mark.parametrize("stop_at", [None, 4])
def test_per_batch_callbacks_see_every_batch(monkeypatch, stop_at):
    x, y = _data()
    runs = []
    for fused in (True, False):
        monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
        model = _model()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        rec = _Recorder(stop_at)
        hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[rec])
        runs.append((rec.seen, hist.history, model.optimizer.iterations))
    assert runs[0] == runs[1]
    assert [b for b, _ in runs[0][0]] == (list(range(13)) * 2 if stop_at is None
                                          else list(range(5)))


def test_progress_bar_alone_lets_batches_run_in_chunks(monkeypatch, capsys):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(2000)
    model = _model()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    cbs = callbacks.CallbackList([], add_progbar=True, model=model, verbose=1, epochs=1,
                                 steps=10)
    assert cbs.wants("on_train_batch_end") and not cbs.per_batch("train")
    assert callbacks.CallbackList([_Recorder()], model=model).per_batch("train")
    model.fit(x, y, epochs=3, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out and "63/63" in out and "accuracy:" in out
    assert max(model._dense_runner._chunk.values()) > 1


def test_nan_input_raises_with_the_argument_name(monkeypatch):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data()
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy")
    bad = x.copy()
    bad[150, 3] = np.nan
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0)
    before, slots = model.get_weights(), model.optimizer.snapshot()[0]
    rng_state = fastnn.utils.get_rng().bit_generator.state
    for shuffle in (False, True):
        with pytest.raises(ValueError, match=r"^x contains NaN or inf.*model is unchanged"):
            model.fit(bad, y, batch_size=16, epochs=2, verbose=0, shuffle=shuffle)
        # Found in the first epoch's gather, after earlier batches trained: all rolled back.
        assert model.optimizer.iterations == 2
        for p, q in zip(before, model.get_weights()):
            np.testing.assert_array_equal(p, q)
        for name, slot in model.optimizer.snapshot()[0].items():
            np.testing.assert_array_equal(slot, slots[name])
        assert fastnn.utils.get_rng().bit_generator.state == rng_state
    # An epoch that does not read every row: the whole array is checked first.
    with pytest.raises(ValueError, match=r"^x contains NaN or inf values$"):
        model.fit(bad, y, batch_size=16, epochs=1, verbose=0, steps_per_epoch=3)
    assert model.optimizer.iterations == 2
    with pytest.raises(ValueError, match="x_val contains NaN or inf"):
        model.fit(x, y, epochs=1, verbose=0, validation_data=(bad, y))
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(bad, verbose=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.evaluate(np.where(bad > 1, np.inf, x), y, verbose=0)
    big = x.astype(np.float64)
    big[0, 0] = 1e300       # finite as a double, inf as the float32 the model computes in
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(big, verbose=0)


def test_non_finite_loss_matches_the_general_path(monkeypatch):
    x, y = _data()
    x[100:] *= 1e18     # outputs saturate and the clipped loss turns inf/NaN on the way
    compile_kw = lambda: dict(optimizer=optimizers.SGD(1e6),   # noqa: E731
                              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    runs = [_train(monkeypatch, fused, _model, compile_kw, x, y, dict(shuffle=False),
                   check_path=False) for fused in (True, False)]
    h = runs[0]["history"]["loss"]
    assert len(h) == 2
    a, b = runs
    assert np.array_equal(np.array(a["history"]["loss"]), np.array(b["history"]["loss"]),
                          equal_nan=True)
    for p, q in zip(a["weights"], b["weights"]):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a["optimizer"][0], b["optimizer"][0])


def test_thread_count_does_not_change_the_fused_results(monkeypatch):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(300, d=784)
    results = []
    before = fastnn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            model = _model(input_shape=(784,), hidden=("sigmoid",))      # the overlap path
            model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
            model.fit(x, y, epochs=1, verbose=0)
            results.append(model.get_weights())
    finally:
        fastnn.set_num_threads(before)
    for other in results[1:]:
        for p, q in zip(results[0], other):
            np.testing.assert_array_equal(p, q)


def test_dense_stack_checks_its_arguments():
    from fastnn import _core
    k1, k2 = np.zeros((4, 5), np.float32), np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match=r"layer 1 kernel: expected \(5, units\)"):
        _core.DenseStack([(k1, None, None, None, 0, 0.0), (k2, None, None, None, 0, 0.0)], 8)
    with pytest.raises(TypeError, match="layer 0 kernel: expected a C-contiguous 2-D float32"):
        _core.DenseStack([(k1.astype(np.float64), None, None, None, 0, 0.0)], 8)
    with pytest.raises(TypeError, match="layer 0 d_kernel: .* got None"):
        _core.DenseStack([(k1, None, None, None, 0, 0.0)], 8, train=True)
    stack = _core.DenseStack([(k1, None, None, None, 1, 0.0)], 8)
    with pytest.raises(ValueError, match=r"x: expected a C-contiguous array of shape \(n, 4\)"):
        stack.predict(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32), 0)
    with pytest.raises(TypeError, match="dtype must be float32, float64 or uint8"):
        stack.predict(np.zeros((3, 4), np.int16), np.zeros((3, 5), np.float32), 0)
    with pytest.raises(ValueError, match="within 3 rows"):
        stack.predict(np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32), 1)
    params = np.zeros(20, np.float32)
    grads = np.zeros(20, np.float32)
    kern, dk = params.reshape(4, 5), grads.reshape(4, 5)
    train = _core.DenseStack([(kern, None, dk, None, 4, 0.0)], 2, train=True, loss=0,
                             fused=True, params=params, grads=grads)
    x, y, sums = np.zeros((4, 4), np.float32), np.zeros(4, np.int32), np.zeros(4)
    scal = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"order\[1\] = 9 is not a row of x"):
        train.run(x, y, None, np.array([0, 9, 1, 2]), 0, 2, True, scal, sums)
    with pytest.raises(ValueError, match="outside 4 rows"):
        train.run(x, y, None, None, 1, 2, True, scal, sums)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 5\)"):
        train.run(x, np.array([0, 7, 1, 1], np.int32), None, None, 0, 1, True, scal, sums)
    with pytest.raises(ValueError, match=r"scalars: expected \(2, 4\)"):
        train.run(x, y, None, None, 0, 2, True, scal[:1], sums)
    assert train.run(x, y, None, None, 0, 2, True, scal, sums) == (2, 0)
    assert sums[1] == 4


def _wide_model():
    fastnn.utils.set_random_seed(3)
    return fastnn.Sequential([fastnn.Input((300,)), layers.Dense(256, activation="relu"),
                              layers.Dense(10, activation="softmax")])


@pytest.mark.parametrize("make_opt", [lambda: "adam", lambda: optimizers.AdamW(weight_decay=0.05),
                                      lambda: optimizers.SGD(0.05, momentum=0.9)])
def test_wide_layers_update_during_backward_exactly_as_the_general_path(monkeypatch, make_opt):
    """300 -> 256 at batch 32 is big enough for the row-split training GEMMs, with each block of
    the kernel taking its optimizer step in the backward pass (decoupled weight decay
    included); the layer path updates everything after the backward pass."""
    x, y = _data(n=200, d=300, classes=10)
    def compile_kw():
        return dict(optimizer=make_opt(), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])

    fused = _train(monkeypatch, True, _wide_model, compile_kw, x, y, dict(batch_size=32))
    _assert_same(fused, _train(monkeypatch, False, _wide_model, compile_kw, x, y,
                               dict(batch_size=32)))
    model = _wide_model()
    model.compile(**compile_kw())
    monkeypatch.setenv("FASTNN_FUSED", "1")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    stacks = [s for (batch, training, *_), s in model._dense_runner._stacks.items() if training]
    assert stacks and all(s.updates_in_backward for s in stacks)
    assert _core.gemm_row_blocks(32, 300, 256) >= 2      # the row split is in use


@pytest.mark.skipif(not _core.OPENMP, reason="built without OpenMP")
def test_wide_layers_train_identically_on_one_and_two_threads(monkeypatch):
    x, y = _data(n=200, d=300, classes=10)
    before = fastnn.get_num_threads()
    states = []
    try:
        for n in (1, 2):
            fastnn.set_num_threads(n)
            states.append(_train(monkeypatch, True, _wide_model,
                                 dict(optimizer="adam", loss="sparse_categorical_crossentropy",
                                      metrics=["accuracy"]), x, y, dict(batch_size=32)))
    finally:
        fastnn.set_num_threads(before)
    _assert_same(*states)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_value_in_a_large_shuffled_batch_raises(monkeypatch, dtype):
    """Batches of 32 x 600 are gathered on all threads; each row is checked as it is copied."""
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(n=256, d=600, classes=10)
    x = x.astype(dtype)
    fastnn.utils.set_random_seed(1)
    model = fastnn.Sequential([fastnn.Input((600,)), layers.Dense(8, activation="relu"),
                               layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)        # clean data trains
    bad = x.copy()
    bad[201, 599] = np.nan if dtype == np.float32 else 1e300   # 1e300: inf as float32
    with pytest.raises(ValueError, match=r"^x contains NaN or inf"):
        model.fit(bad, y, batch_size=32, epochs=1, verbose=0, shuffle=True)


class _AllHooks(callbacks.Callback):
    """Records every batch hook with a copy of its logs and the optimizer's step count; can set
    the learning rate, stop training or raise at given (hook, batch)."""

    def __init__(self, lr_at=(), stop_at=None, raise_at=None):
        super().__init__()
        self.seen, self.lr_at, self.stop_at, self.raise_at = [], dict(lr_at), stop_at, raise_at

    def _hook(self, hook, batch, logs):
        self.seen.append((hook, batch, None if logs is None else dict(logs),
                          int(self.model.optimizer.iterations)))
        if (hook, batch) in self.lr_at:
            self.model.optimizer.learning_rate = self.lr_at[hook, batch]
        if (hook, batch) == self.stop_at:
            self.model.stop_training = True
        if (hook, batch) == self.raise_at:
            raise RuntimeError(f"raised at {hook} {batch}")

    def on_train_batch_begin(self, batch, logs=None):
        self._hook("train_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._hook("train_end", batch, logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._hook("test_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._hook("test_end", batch, logs)


def _per_step_run(monkeypatch, fused, rec, metrics=("accuracy",), rows=16 * 150 - 5, **fit_kw):
    """fit on 150 batches (over two runs of STEPS_AHEAD steps inside one C call each) with
    validation; the callback's record, the history and the final state."""
    monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
    x, y = _data(rows)
    model = _model()
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=list(metrics))
    assert (DenseRunner.for_model(model, training=True) is not None) == fused
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[rec],
                     validation_data=(x[:100], y[:100]), validation_batch_size=8, **fit_kw)
    return rec.seen, hist.history, model.get_weights(), model.optimizer.iterations


def _assert_same_runs(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3]
    for p, q in zip(a[2], b[2]):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("metrics", [("accuracy",),
                                     ("accuracy", "sparse_top_k_categorical_accuracy")])
def test_per_step_hooks_come_in_order_with_the_general_paths_logs(monkeypatch, metrics):
    """The hooks run from inside the C loop: each batch's begin and end in Keras's order, the
    end with the running loss and metrics after that batch and the optimizer's step count
    after its update, as the layer-by-layer path gives them (validation's test hooks too)."""
    runs = [_per_step_run(monkeypatch, fused, _AllHooks(), metrics, shuffle=True)
            for fused in (True, False)]
    _assert_same_runs(*runs)
    seen = runs[0][0]
    train = [(h, b) for h, b, _, _ in seen if h.startswith("train")]
    assert train == [(h, b) for b in range(150) for h in ("train_begin", "train_end")] * 2
    assert [it for h, _, _, it in seen if h == "train_end"][:150] == list(range(1, 151))
    assert len([h for h, *_ in seen if h == "test_end"]) == 2 * 13
    ends = [logs for h, _, logs, _ in seen if h == "train_end"]
    assert sorted(ends[0]) == sorted(["loss", *metrics])
    assert ends[0] != ends[1]       # a running mean, updated each batch


def test_a_per_batch_callback_leaves_the_weights_bit_identical(monkeypatch):
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data(16 * 150 - 5)
    states = []
    for cbs in (None, [_Recorder()]):
        model = _model()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=cbs)
        states.append((hist.history, model.get_weights(),
                       [np.asarray(v) for v in model.optimizer.variables()]))
    assert states[0][0] == states[1][0]
    for p, q in zip(states[0][1] + states[0][2], states[1][1] + states[1][2]):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("stop_at", [("train_end", 70), ("train_begin", 100),
                                     ("train_end", 149)])
def test_stop_training_mid_run_takes_effect_after_that_batch(monkeypatch, stop_at):
    runs = [_per_step_run(monkeypatch, fused, _AllHooks(stop_at=stop_at))
            for fused in (True, False)]
    _assert_same_runs(*runs)
    assert runs[0][3] == stop_at[1] + 1     # (Keras runs a batch whose begin hook stopped)
    assert [s[:2] for s in runs[0][0] if s[0].startswith("train")][-1] == \
        ("train_end", stop_at[1])


def test_a_learning_rate_set_mid_run_takes_effect_at_the_next_step(monkeypatch):
    lr_at = {("train_end", 10): 0.05, ("train_begin", 100): 0.002, ("train_end", 63): 0.03}
    runs = [_per_step_run(monkeypatch, fused, _AllHooks(lr_at)) for fused in (True, False)]
    _assert_same_runs(*runs)
    plain = _per_step_run(monkeypatch, True, _AllHooks())
    assert not np.array_equal(plain[2][0], runs[0][2][0])
    # one batch later gives other weights: the change is not taken a step late
    late = _per_step_run(monkeypatch, True, _AllHooks({("train_end", 11): 0.05,
                                                       ("train_begin", 100): 0.002,
                                                       ("train_end", 63): 0.03}))
    assert not np.array_equal(late[2][0], runs[0][2][0])


def test_runs_with_a_per_batch_callback_grow_and_follow_learning_rate_changes(monkeypatch):
    """Runs inside one C call grow 64 -> 256 -> 1024 steps while each runs all its steps
    (64 with metrics that keep the outputs), and after a callback changed the learning rate
    take as many steps as that run did (a rate changed after every step: one step a run)."""
    import fastnn.stack as stack
    runner = DenseRunner(None, [])
    sizes = []
    for _ in range(4):
        n = runner._next_chunk(True, 5000, True)
        sizes.append(n)
        runner._ran_ahead(True, n, n, False, True)
    assert sizes == [stack.STEPS_AHEAD, 4 * stack.STEPS_AHEAD, stack.MAX_STEPS_AHEAD,
                     stack.MAX_STEPS_AHEAD]
    assert runner._next_chunk(True, 100, True) == 100       # (the epoch's last steps)
    runner._ran_ahead(True, 100, 100, False, True)          # a short last run: kept
    assert runner._next_chunk(True, 5000, True) == stack.MAX_STEPS_AHEAD
    runner._ran_ahead(True, stack.MAX_STEPS_AHEAD, 3, True, True)     # rate changed at 3
    assert runner._next_chunk(True, 5000, True) == 3
    runner._ran_ahead(True, 3, 1, True, True)
    assert runner._next_chunk(True, 5000, True) == 1
    runner._ran_ahead(True, 1, 1, False, True)
    assert runner._next_chunk(True, 5000, True) == 4
    assert runner._next_chunk(False, 5000, True) == stack.STEPS_AHEAD    # evaluation apart
    other = DenseRunner(None, [])
    for _ in range(3):
        other._ran_ahead(True, other._next_chunk(True, 5000, True), stack.STEPS_AHEAD, False,
                         False)
    assert other._next_chunk(True, 5000, True) == stack.STEPS_AHEAD


def test_a_learning_rate_changed_every_step_matches_the_general_path(monkeypatch):
    lr_at = {("train_end", b): 0.01 + 0.0005 * b for b in range(150)}
    runs = [_per_step_run(monkeypatch, fused, _AllHooks(lr_at)) for fused in (True, False)]
    _assert_same_runs(*runs)


def test_an_exception_in_a_batch_hook_mid_run_leaves_the_general_paths_state(monkeypatch):
    runs = []
    for fused in (True, False):
        rec = _AllHooks(raise_at=("train_end", 30))
        with pytest.raises(RuntimeError, match="raised at train_end 30"):
            _per_step_run(monkeypatch, fused, rec)
        model = rec.model
        runs.append((rec.seen, model.optimizer.iterations, model.get_weights()))
    assert runs[0][:2] == runs[1][:2] and runs[0][1] == 31
    for p, q in zip(runs[0][2], runs[1][2]):
        np.testing.assert_array_equal(p, q)


def test_non_finite_loss_with_a_per_batch_callback_matches_the_general_path(monkeypatch):
    x, y = _data(16 * 100)
    x[1000:1100] *= 1e30    # the squared error overflows: these batches skip their update
    runs = []
    for fused in (True, False):
        monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
        model = _model(out=1, out_act="linear", hidden=("linear",))
        model.compile(optimizers.SGD(1e-3), "mse")
        assert (DenseRunner.for_model(model, training=True) is not None) == fused
        rec = _AllHooks()
        model.fit(x, y.astype(np.float32)[:, None], batch_size=16, epochs=1, verbose=0,
                  shuffle=False, callbacks=[rec])
        runs.append((rec.seen, model.optimizer.iterations))
    # NaN logs compare unequal to themselves: compare their text
    assert repr(runs[0]) == repr(runs[1])
    assert runs[0][1] == 93     # 7 steps skipped their update (their loss was not finite)


class _EvaluateMidRun(_AllHooks):
    """Evaluates and predicts from inside a training batch hook (the C run is paused there)."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if batch in (30, 70):
            x, y = _data(40, seed=1)
            self.seen.append(("evaluate", self.model.evaluate(x, y, batch_size=8, verbose=0),
                              self.model.predict(x, batch_size=16, verbose=0).tolist()))


def test_evaluate_and_predict_inside_a_batch_hook_match_the_general_path(monkeypatch):
    runs = [_per_step_run(monkeypatch, fused, _EvaluateMidRun()) for fused in (True, False)]
    _assert_same_runs(*runs)
    assert sum(s[0] == "evaluate" for s in runs[0][0]) == 4


def test_all_finite_finds_any_bad_value():
    x = np.random.default_rng(0).normal(size=(3001, 37)).astype(np.float32)
    assert _core.all_finite(x) and _core.all_finite(x[:0])
    for at in (0, 1, 55_000, x.size - 1):
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y.flat[at] = bad
            assert not _core.all_finite(y), (at, bad)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.all_finite(x[:, ::2])
    with pytest.raises((TypeError, ValueError)):
        _core.all_finite(x.astype(np.float64))
    with pytest.raises(ValueError):
        _core.all_finite([1.0, 2.0])


def test_nan_input_with_a_per_batch_callback_rolls_the_model_back(monkeypatch):
    """A callback that sees single batches sees those before the bad one (row 150: batch 10 of
    13, unshuffled) and the bad one begin, as in Keras; the model, its optimizer and the
    generator roll back to where the fit started, as without the callback."""
    monkeypatch.setenv("FASTNN_FUSED", "1")
    x, y = _data()
    x[150, 3] = np.nan
    model = _model()
    model.compile("adam", "sparse_categorical_crossentropy")
    rec = _AllHooks()
    before = model.get_weights()
    rng_state = fastnn.utils.get_rng().bit_generator.state
    with pytest.raises(ValueError, match=r"^x contains NaN or inf values \(in batch 10 of 13\)"
                                         r"; the model is unchanged$"):
        model.fit(x, y, batch_size=16, verbose=0, callbacks=[rec], shuffle=False)
    ends = [batch for hook, batch, _, _ in rec.seen if hook == "train_end"]
    assert ends == list(range(9)) and rec.seen[-1][:2] == ("train_begin", 9)
    assert model.optimizer.iterations == 0
    assert fastnn.utils.get_rng().bit_generator.state == rng_state
    for p, q in zip(before, model.get_weights()):
        np.testing.assert_array_equal(p, q)
