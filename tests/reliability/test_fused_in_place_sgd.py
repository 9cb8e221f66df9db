"""Fused (csrc/stack.c) and layer-by-layer training give bit-identical weights, including plain
SGD with a Dense kernel of at least IN_PLACE_MIN_WEIGHTS weights, whose step both paths take
inside the weight-gradient GEMM (they differed by up to 3.7e-8)."""
import numpy as np
import pytest

import fastnn
from fastnn import _core, layers, optimizers


def _train(monkeypatch, fused, make_opt, steps=6):
    monkeypatch.setenv("FASTNN_FUSED", "1" if fused else "0")
    fastnn.utils.set_random_seed(7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32 * steps, 300)).astype(np.float32)
    y = rng.integers(0, 10, 32 * steps).astype(np.int32)
    model = fastnn.Sequential([fastnn.Input((300,)), layers.Dense(256, activation="relu"),
                               layers.Dense(10, activation="softmax")])
    model.compile(optimizer=make_opt(), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=True)
    return model.get_weights()


def test_threshold_exposed_once():
    assert _core.IN_PLACE_MIN_WEIGHTS == 1 << 16
    assert 300 * 256 >= _core.IN_PLACE_MIN_WEIGHTS > 256 * 10


@pytest.mark.parametrize("make_opt", [lambda: optimizers.SGD(0.05),
                                      lambda: optimizers.SGD(0.05, momentum=0.9),
                                      lambda: optimizers.Adam(1e-3)],
                         ids=["sgd", "sgd_momentum", "adam"])
def test_fused_and_layer_paths_bit_identical(monkeypatch, make_opt):
    fused = _train(monkeypatch, True, make_opt)
    plain = _train(monkeypatch, False, make_opt)
    for a, b in zip(fused, plain):
        assert np.array_equal(a, b), float(np.max(np.abs(a - b)))
