"""No large allocation per training step: after warm-up, a step reuses its buffers.

The peak of tracemalloc's traced memory (NumPy reports its data buffers to it) is measured over
20 steps inside one `fit` call, from the start of step 2 to the start of step 22, by a callback
that only hooks `on_train_batch_begin`, so fit runs its verbose=0 path (no per-step logs).

The bound, 16 KiB, is below every batch-sized array of a step: the gathered input batch (98 KiB
for 32 MNIST images), the MLP's first hidden activation (32 x 128 floats = 16 KiB), the CNN's
conv output (5.5 MB) and its 200-unit activations (25 KiB). It leaves room for the small Python
objects a step creates (3-6 KiB at the peak). It caught the gathered batch being copied through
a temporary (np.take with out= and mode="raise" buffers `out`: ~100 KiB per step). The net
growth, 1-4 KiB, is small blocks NumPy keeps from inside np.take; it stays the same over 400
steps, so it is no leak."""
import tracemalloc

import numpy as np
import pytest

import fastnn as keras

# Host allocations of the CPU backend's step (a GPU allocates from its own pool).
pytestmark = pytest.mark.cpu_backend

BATCH, START, STOP = 32, 2, 22
BOUND_KIB = 16


class PeakMemory(keras.callbacks.Callback):
    """Peak and net traced memory above the level at the start of step START, up to the start
    of step STOP (STOP - START whole steps)."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == START:
            self.base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        elif batch == STOP:
            current, peak = tracemalloc.get_traced_memory()
            self.peak, self.growth = peak - self.base, current - self.base


def mlp():
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (784,)


def cnn():
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.BatchNormalization(),
        layers.Dense(200, activation="selu", kernel_initializer="lecun_normal"),
        layers.BatchNormalization(),
        layers.Dense(100, activation="selu", kernel_initializer="lecun_normal"),
        layers.BatchNormalization(),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (28, 28, 1)


@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp_adam", "cnn"])
def test_no_large_allocation_per_step(build):
    model, shape = build()
    rng = np.random.default_rng(0)
    n = BATCH * (STOP + 1)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, n)
    probe = PeakMemory()
    tracemalloc.start()
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[probe])
    finally:
        tracemalloc.stop()
    steps = STOP - START
    assert probe.peak < BOUND_KIB * 1024, (
        f"{build.__name__}: traced memory peaked {probe.peak / 1024:.1f} KiB above the start of "
        f"step {START} during {steps} steps (net {probe.growth / 1024:+.1f} KiB); "
        f"bound {BOUND_KIB} KiB")
    print(f"{build.__name__}: peak {probe.peak / 1024:.1f} KiB, net {probe.growth / 1024:+.1f} "
          f"KiB over {steps} steps")
