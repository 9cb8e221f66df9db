"""Memory stays flat over many calls: repeated fit / evaluate / predict / __call__ on one model
(fused, general and conv paths) keep no growing state. Measured with tracemalloc (NumPy reports
its data buffers to it), which is exact where RSS is noisy."""
import gc
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D

pytestmark = pytest.mark.cpu_backend


def _model(kind):
    fastnn.utils.set_random_seed(0)
    if kind == "fused":
        layers = [Input(shape=(20,)), Dense(32, activation="relu"), Dense(5, activation="softmax")]
    elif kind == "general":
        layers = [Input(shape=(20,)), Dense(32, activation="relu"), Dropout(0.2),
                  BatchNormalization(), Dense(5, activation="softmax")]
    else:
        layers = [Input(shape=(6, 6, 2)), Conv2D(4, 3, activation="relu"), MaxPooling2D(),
                  Flatten(), Dense(5, activation="softmax")]
    model = fastnn.Sequential(layers)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("kind", ["fused", "general", "conv"])
def test_repeated_runs_do_not_grow_memory(kind):
    model = _model(kind)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6, 6, 2) if kind == "conv" else (200, 20)).astype(np.float32)
    y = rng.integers(0, 5, 200)

    def cycle():
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, validation_split=0.2)
        model.evaluate(x, y, verbose=0)
        model.predict(x, verbose=0)
        model(x[:7])

    for _ in range(3):          # warm up: buffers of every shape exist
        cycle()
    gc.collect()
    tracemalloc.start()
    try:
        cycle()
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(15):
            cycle()
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    # 15 cycles of ~60 steps each: a leak of even one batch buffer per cycle would be >= 15 x
    # 2.5 KB; History objects of finished fits are freed.
    assert growth < 32 * 1024, f"{growth} bytes kept over 15 fit/evaluate/predict cycles"
