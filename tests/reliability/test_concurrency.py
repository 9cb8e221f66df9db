"""One model called from several Python threads at once: every caller gets its own right
answer (predict, __call__, evaluate), on the fused Dense-stack, general and conv paths, a
graph with a shared layer and a subclassed model (both on the autodiff tape); a
second concurrent fit on one model raises instead of training on weights another call is
changing."""
import threading

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D


def _models():
    fastnn.utils.set_random_seed(0)
    fused = fastnn.Sequential([Input(shape=(20,)), Dense(32, activation="relu"),
                               Dense(5, activation="softmax")])
    general = fastnn.Sequential([Input(shape=(20,)), Dense(32, activation="tanh"), Dropout(0.3),
                                 BatchNormalization(), Dense(5, activation="softmax")])
    conv = fastnn.Sequential([Input(shape=(8, 8, 2)), Conv2D(4, 3, activation="relu"),
                              MaxPooling2D(), Flatten(), Dense(5, activation="softmax")])
    inputs = Input(shape=(20,))
    h = Dense(16, activation="relu")(inputs)
    shared = Dense(16, activation="tanh")
    graph = fastnn.Model(inputs, Dense(5, activation="softmax")(
        fastnn.layers.add([shared(h), shared(shared(h))])))

    class Subclassed(fastnn.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = Dense(12, activation="relu"), Dense(5, activation="softmax")

        def call(self, x):
            return self.b(self.a(x) * 2.0)

    subclassed = Subclassed()
    subclassed.build((None, 20))
    models = {"fused": fused, "general": general, "conv": conv, "graph": graph,
              "subclassed": subclassed}
    for m in models.values():
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return models


def _inputs(name, rng, n):
    shape = (n, 8, 8, 2) if name == "conv" else (n, 20)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("threads", [4, 8])
def test_concurrent_inference_matches_sequential(threads):
    models = _models()
    rng = np.random.default_rng(1)
    # Cases of different sizes, so concurrent calls want differently shaped workspaces.
    cases = []
    names = ("fused", "general", "conv", "graph", "subclassed")
    for i in range(60):
        name = names[i % len(names)]
        n = int(rng.integers(1, 70))
        x = _inputs(name, rng, n)
        y = rng.integers(0, 5, n)
        kind = ("predict", "call", "evaluate")[(i // len(names)) % 3]
        cases.append((name, kind, x, y, int(rng.integers(1, 40))))

    def run(case):
        name, kind, x, y, batch = case
        model = models[name]
        if kind == "predict":
            return model.predict(x, batch_size=batch, verbose=0)
        if kind == "call":
            return model(x)
        return np.array(model.evaluate(x, y, batch_size=batch, verbose=0))

    expected = [run(case) for case in cases]
    failures, errors = [], []
    start = threading.Barrier(threads)

    def worker(t):
        try:
            start.wait()
            for rep in range(4):
                for i in range(t, len(cases), threads // 2):
                    got = run(cases[i])
                    if not np.array_equal(got, expected[i]):
                        failures.append((cases[i][:2], rep))
        except Exception as exc:     # reported below, with the thread that raised
            errors.append(repr(exc))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert not failures, f"{len(failures)} concurrent calls differ from sequential ones: " \
        f"{failures[:5]}"


def test_concurrent_inference_one_openmp_thread():
    previous = fastnn.get_num_threads()
    fastnn.set_num_threads(1)
    try:
        test_concurrent_inference_matches_sequential(4)
    finally:
        fastnn.set_num_threads(previous)


def test_second_fit_on_a_model_raises_while_one_runs():
    model = _models()["general"]
    x = np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)
    y = np.zeros(64, np.int64)
    inside, release = threading.Event(), threading.Event()

    class Hold(fastnn.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            inside.set()
            release.wait(10)

    result = {}
    first = threading.Thread(target=lambda: result.setdefault(
        "history", model.fit(x, y, epochs=1, verbose=0, callbacks=[Hold()])))
    first.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RuntimeError, match="already being trained"):
            model.fit(x, y, epochs=1, verbose=0)
        with pytest.raises(RuntimeError, match="already being trained"):
            model.train_on_batch(x, y)
    finally:
        release.set()
        first.join()
    assert list(result["history"].history["loss"])
    model.fit(x, y, epochs=1, verbose=0)        # free again once the first one returned


def test_predict_from_a_callback_inside_fit():
    """The thread that trains may itself call predict (a callback's on_epoch_end): the lock is
    per training call, not a lock on inference."""
    model = _models()["fused"]
    x = np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)
    y = np.zeros(64, np.int64)
    seen = []

    class Peek(fastnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.predict(x[:3], verbose=0))
            seen.append(self.model.evaluate(x, y, verbose=0))

    model.fit(x, y, epochs=2, verbose=0, callbacks=[Peek()])
    assert len(seen) == 4 and seen[0].shape == (3, 5)
