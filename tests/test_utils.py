"""fastnn.utils: to_categorical (against Keras's), set_random_seed, plot_history."""
import random

import numpy as np
import pytest

from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential
from fastnn.utils import plot_history, set_random_seed, to_categorical


@pytest.mark.parametrize("labels,num_classes", [
    ([0, 2, 1, 2], None), (np.array([[1], [0], [3]]), None), (np.array([[0, 1], [2, 1]]), 4),
    (np.array([1.0, 0.0, 2.0]), 5), (np.array([3], np.uint8), None),
])
def test_to_categorical_matches_keras(labels, num_classes):
    ours = to_categorical(labels, num_classes)
    keras = pytest.importorskip("keras")
    theirs = keras.utils.to_categorical(labels, num_classes)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_to_categorical_values_and_errors():
    np.testing.assert_array_equal(to_categorical([1, 0], 3), [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        to_categorical([0, 3], num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        to_categorical([-1, 1], num_classes=3)
    with pytest.raises(ValueError, match="integer"):
        to_categorical([0.5, 1.0])
    with pytest.raises(TypeError, match="integer"):
        to_categorical(["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        to_categorical([0, 1], num_classes=0)


def test_set_random_seed_fixes_init_shuffle_dropout_and_globals():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 2, 50)

    def run(seed):
        set_random_seed(seed)
        draws = (random.random(), np.random.random())
        m = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dropout(0.5),
                        Dense(2, activation="softmax")])
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.fit(x, y, batch_size=8, epochs=2, verbose=0)
        return draws, m.get_weights()

    (d1, w1), (d2, w2), (_, w3) = run(7), run(7), run(8)
    assert d1 == d2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(w1[0], w3[0])
    with pytest.raises(ValueError, match="seed"):
        set_random_seed(-1)
    with pytest.raises(ValueError, match="seed"):
        set_random_seed(1.5)


def test_plot_history_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    m = Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = m.fit(x, y, epochs=3, validation_split=0.25, verbose=0)
    path = tmp_path / "h.png"
    fig = plot_history(hist, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy"]
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [3, 3]
    with pytest.raises(ValueError, match="History"):
        plot_history({}, tmp_path / "empty.png")
