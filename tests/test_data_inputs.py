"""Data inputs beside arrays (issue 19, item 6): generators, iterators and iterables of batches,
fastnn.utils.PyDataset (workers as threads or processes), steps_per_epoch, validation data as
batches, lists and dicts of arrays for one input, split_dataset and
image_dataset_from_directory. Each fit on batches is compared with the same batches given as
arrays (shuffle=False): the weights, losses and metrics must agree."""
import os
import threading
import warnings

import numpy as np
import pytest

import fastnn as keras
from fastnn import callbacks, layers
from fastnn.models import Sequential
from fastnn.utils import PyDataset, Sequence, image_dataset_from_directory, split_dataset

N, D, CLASSES, BATCH = 100, 6, 3, 32        # 4 batches: 32, 32, 32 and a short 4


def data(rng, n=N):
    centers = rng.standard_normal((CLASSES, D)) * 2
    y = rng.integers(0, CLASSES, n)
    return (centers[y] + rng.standard_normal((n, D))).astype(np.float32), y


def model(fused=True, metrics=("accuracy",)):
    """The fused C Dense stack's model, or (fused=False) one the general step runs (clipnorm
    takes it off the fused path)."""
    keras.utils.set_random_seed(7)
    m = Sequential([keras.Input((D,)), layers.Dense(8, activation="relu"),
                    layers.Dense(CLASSES, activation="softmax")])
    opt = keras.optimizers.Adam(0.01) if fused else keras.optimizers.Adam(0.01, clipnorm=10.0)
    m.compile(opt, "sparse_categorical_crossentropy", metrics=list(metrics))
    return m


def batches(x, y, w=None, size=BATCH, epochs=1):
    for _ in range(epochs):
        for i in range(0, len(x), size):
            part = (x[i:i + size], y[i:i + size])
            yield part if w is None else part + (w[i:i + size],)


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def assert_same_history(ha, hb):
    assert ha.history.keys() == hb.history.keys()
    for k in ha.history:
        np.testing.assert_allclose(ha.history[k], hb.history[k], rtol=1e-6, atol=1e-7)


class ArrayDataset(PyDataset):
    """Batches of in-memory arrays, recording which batch indices were read."""

    def __init__(self, x, y, size=BATCH, w=None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.w, self.size = x, y, w, size
        self.read, self.epoch_ends = [], 0
        self._lock = threading.Lock()

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        with self._lock:
            self.read.append(i)
        s = slice(i * self.size, (i + 1) * self.size)
        return (self.x[s], self.y[s]) if self.w is None else (self.x[s], self.y[s], self.w[s])

    def on_epoch_end(self):
        self.epoch_ends += 1


# ---- generators and iterables -------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_generator_fit_equals_arrays(rng, fused):
    x, y = data(rng)
    a, b = model(fused), model(fused)
    ha = a.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no warning: 3 epochs of 4 steps are there
        hb = b.fit(batches(x, y, epochs=3), epochs=3, steps_per_epoch=4, shuffle=False,
                   verbose=0)
    assert_same_history(ha, hb)
    assert_same_weights(a, b)
    assert len(hb.history["loss"]) == 3


def test_sample_weights_from_generator(rng):
    x, y = data(rng)
    w = rng.uniform(0.2, 2.0, N).astype(np.float32)
    a, b = model(), model()
    ha = a.fit(x, y, sample_weight=w, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(batches(x, y, w, epochs=2), epochs=2, steps_per_epoch=4, shuffle=False,
               verbose=0)
    assert_same_history(ha, hb)
    assert_same_weights(a, b)


def test_iterator_and_reiterable(rng):
    """An iterator (iter of a list) and an iterable (re-iterated each epoch, with __len__)."""
    x, y = data(rng)
    a, b, c = model(), model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    listed = list(batches(x, y))

    class Loader:           # like a torch DataLoader: __iter__ and __len__
        def __iter__(self):
            return iter(listed)

        def __len__(self):
            return len(listed)

    hb = b.fit(Loader(), epochs=2, shuffle=False, verbose=0)
    hc = c.fit(iter(listed * 2), epochs=2, steps_per_epoch=4, shuffle=False, verbose=0)
    assert_same_history(ha, hb)
    assert_same_history(ha, hc)
    assert_same_weights(a, b)
    assert_same_weights(a, c)


def test_unknown_length_runs_until_exhausted_then_stops(rng):
    """No steps_per_epoch: the first epoch runs the generator to its end (its length is then
    known); a second epoch has no data: Keras's warning, and the fit stops."""
    x, y = data(rng)
    a, b = model(), model()
    a.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    with pytest.warns(UserWarning, match="Your input ran out of data; interrupting training"):
        h = b.fit(batches(x, y), epochs=3, shuffle=False, verbose=0)
    assert len(h.history["loss"]) == 1
    assert_same_weights(a, b)


def test_exhausted_before_steps_per_epoch(rng):
    """5 batches for steps_per_epoch=4 and 3 epochs: epoch 2 gets one batch, warns and stops."""
    x, y = data(rng, 160)
    a, b = model(), model()
    a.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)   # 5 full batches
    with pytest.warns(UserWarning, match="ran out of data"):
        h = b.fit(batches(x, y), epochs=3, steps_per_epoch=4, shuffle=False, verbose=0)
    assert len(h.history["loss"]) == 2
    assert_same_weights(a, b)


def test_infinite_generator_with_steps(rng):
    x, y = data(rng)

    def forever():
        while True:
            yield from batches(x, y)

    a, b = model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    hb = b.fit(forever(), epochs=3, steps_per_epoch=4, verbose=0, shuffle=False)
    assert_same_history(ha, hb)
    assert_same_weights(a, b)


def test_varying_batch_sizes(rng):
    """Batches of 10, 40, 25, 25 equal arrays trained batch by batch (train_on_batch)."""
    x, y = data(rng)
    cuts = [0, 10, 50, 75, 100]
    parts = [(x[i:j], y[i:j]) for i, j in zip(cuts, cuts[1:])]
    a, b = model(), model()
    for px, py in parts:
        a.train_on_batch(px, py)
    b.fit(iter(parts), epochs=1, verbose=0, shuffle=False)
    assert_same_weights(a, b)


def test_evaluate_and_predict_on_batches(rng):
    x, y = data(rng)
    m = model()
    m.fit(x, y, epochs=2, verbose=0)
    expected = m.evaluate(x, y, verbose=0, return_dict=True)
    got = m.evaluate(batches(x, y), verbose=0, return_dict=True)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-6)
    assert m.evaluate(ArrayDataset(x, y), verbose=0) == pytest.approx(
        m.evaluate(x, y, verbose=0), rel=1e-6)
    # x alone, batches of varying size; or (x, y) tuples whose y predict ignores
    p = m.predict(iter([x[:7], x[7:60], x[60:]]), verbose=0)
    np.testing.assert_allclose(p, m.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    p2 = m.predict(batches(x, y), verbose=0)
    np.testing.assert_allclose(p2, m.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    # steps: only the first two batches
    assert m.predict(batches(x, y), steps=2, verbose=0).shape == (64, CLASSES)


def test_validation_data_as_batches(rng):
    """validation_data as a generator (validation_steps, validation_freq) and a PyDataset give
    the val_ logs the arrays give."""
    x, y = data(rng)
    xv, yv = data(rng, 50)
    a, b, c = model(), model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, validation_data=(xv, yv),
               validation_freq=2, verbose=0)

    def val_forever():
        while True:
            yield from batches(xv, yv, size=20)
    hb = b.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, validation_data=val_forever(),
               validation_steps=3, validation_freq=2, verbose=0)
    hc = c.fit(ArrayDataset(x, y), epochs=4, shuffle=False,
               validation_data=ArrayDataset(xv, yv, size=7), validation_freq=2, verbose=0)
    assert_same_history(ha, hb)
    assert_same_history(ha, hc)
    assert len(ha.history["val_loss"]) == 2


def test_validation_steps_limits_the_pass(rng):
    x, y = data(rng)
    xv, yv = data(rng, 50)
    m = model()
    m.fit(x, y, epochs=1, verbose=0)
    m2 = model()
    h = m2.fit(x, y, epochs=1, verbose=0, shuffle=False,
               validation_data=ArrayDataset(xv, yv, size=10), validation_steps=2)
    # two batches of 10: the loss over the first 20 validation samples
    expected = m2.evaluate(xv[:20], yv[:20], verbose=0, return_dict=True)
    assert h.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-6)


def test_class_weight_with_batches(rng):
    x, y = data(rng)
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    a, b, c = model(), model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, class_weight=cw, verbose=0)
    hb = b.fit(ArrayDataset(x, y), epochs=2, shuffle=False, class_weight=cw, verbose=0)
    hc = c.fit(batches(x, y, epochs=2), epochs=2, steps_per_epoch=4, class_weight=cw,
               shuffle=False, verbose=0)
    assert_same_history(ha, hb)
    assert_same_history(ha, hc)
    assert_same_weights(a, b)
    with pytest.raises(ValueError, match="class_weight` and `sample_weight"):
        model().fit(batches(x, y, np.ones(N, np.float32)), class_weight=cw, verbose=0,
                    shuffle=False)


# ---- PyDataset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,processes", [(1, False), (3, False), (2, True)])
def test_pydataset_equals_arrays(rng, workers, processes):
    x, y = data(rng)
    a = model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    b = model()
    ds = ArrayDataset(x, y, workers=workers, use_multiprocessing=processes, max_queue_size=2)
    hb = b.fit(ds, epochs=3, shuffle=False, verbose=0)
    assert_same_history(ha, hb)
    assert_same_weights(a, b)
    assert ds.epoch_ends == 3       # on_epoch_end after every epoch (in this process)
    if not processes:
        assert ds.read == [0, 1, 2, 3] * 3


def test_pydataset_workers_prefetch_in_threads(rng):
    """workers=3: __getitem__ runs in other threads, at most max_queue_size batches ahead."""
    x, y = data(rng, 320)
    names, ahead = set(), []
    consumed = [0]

    class Watched(ArrayDataset):
        def __getitem__(self, i):
            names.add(threading.current_thread().name)
            ahead.append(i - consumed[0])
            return super().__getitem__(i)

    class Count(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            consumed[0] = batch + 1

    model().fit(Watched(x, y, workers=3, max_queue_size=4), epochs=1, shuffle=False,
                verbose=0, callbacks=[Count()])
    assert names and threading.main_thread().name not in names
    assert max(ahead) <= 4 + 1


def test_pydataset_shuffle_shuffles_batch_order(rng):
    """shuffle=True (fit's default) permutes the order of the batches each epoch, as Keras;
    the weights equal arrays fed in that order."""
    x, y = data(rng, 192)           # 6 batches
    ds = ArrayDataset(x, y)
    b = model()
    b.fit(ds, epochs=2, verbose=0)
    first, second = ds.read[:6], ds.read[6:]
    assert sorted(first) == sorted(second) == list(range(6))
    assert first != list(range(6)) or second != list(range(6))
    a = model()
    for i in ds.read:
        a.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
    assert_same_weights(a, b)


def test_infinite_pydataset_and_steps(rng):
    x, y = data(rng)

    class Endless(PyDataset):
        def __init__(self):
            super().__init__()

        @property
        def num_batches(self):
            return None

        def __getitem__(self, i):
            i %= 4
            return x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]

    a, b = model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    with pytest.warns(UserWarning, match="infinite PyDataset"):
        hb = b.fit(Endless(), epochs=2, steps_per_epoch=4, verbose=0)   # shuffle=True ignored
    assert_same_history(ha, hb)
    assert_same_weights(a, b)


def test_pydataset_steps_per_epoch_reads_on(rng):
    """steps_per_epoch=3 over 4 batches, as Keras's EpochIterator: epoch 2 reads on (batch 3
    only, with the warning: the pass has ended), epoch 3 starts a new pass."""
    x, y = data(rng)
    ds = ArrayDataset(x, y)
    with pytest.warns(UserWarning, match="ran out of data"):
        h = model().fit(ds, epochs=3, steps_per_epoch=3, shuffle=False, verbose=0)
    assert ds.read == [0, 1, 2, 3, 0, 1, 2]
    assert len(h.history["loss"]) == 3


def test_pydataset_api():
    class NoSuper(PyDataset):
        def __init__(self):
            pass

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((2, D), np.float32), np.zeros(2)

    ds = NoSuper()
    with pytest.warns(UserWarning, match="should call `super"):
        assert ds.workers == 1
    assert ds.num_batches == 2 and len(list(ds)) == 2
    assert Sequence is PyDataset
    with pytest.raises(NotImplementedError, match="num_batches"):
        _ = PyDataset().num_batches
    with pytest.raises(NotImplementedError):
        PyDataset()[0]


# ---- errors --------------------------------------------------------------------------------------
def test_batched_data_errors(rng):
    x, y = data(rng)
    m = model()
    with pytest.raises(ValueError, match="`y` should not be passed"):
        m.fit(batches(x, y), y, verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` should not be passed"):
        m.fit(ArrayDataset(x, y), sample_weight=np.ones(N), verbose=0)
    with pytest.raises(ValueError, match="Do not specify `batch_size`"):
        m.fit(batches(x, y), batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="Do not specify `batch_size`"):
        m.predict(iter([x]), batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="Do not specify `validation_batch_size`"):
        m.fit(x, y, validation_data=batches(x, y), validation_batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(batches(x, y), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="yielded no batches"):
        m.fit(iter([]), verbose=0, shuffle=False)
    with pytest.raises(ValueError, match=r"\(inputs, targets\)"):
        m.fit(iter([(x, y, None, None)]), verbose=0, shuffle=False)
    with pytest.raises(ValueError, match="inputs alone"):
        m.fit(iter([x]), verbose=0, shuffle=False)
    with pytest.raises(ValueError, match="expects input shape"):
        m.fit(iter([(x[:, :4], y)]), verbose=0, shuffle=False)
    with pytest.warns(UserWarning, match="expected to yield already-shuffled data"):
        m.fit(batches(x, y), verbose=0)


def test_progress_bar_unknown_then_known(rng, capsys):
    """Data of unknown length: the first epoch's bar has no total, the next ones do (Keras)."""
    x, y = data(rng)
    listed = list(batches(x, y))

    class Loader:           # re-iterable, no __len__
        def __iter__(self):
            return iter(listed)

    targets = []

    class Bar(callbacks.ProgbarLogger):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            targets.append(self.progbar.target)

    model().fit(Loader(), epochs=3, verbose=2, callbacks=[Bar()], shuffle=False)
    assert targets == [None, 4, 4]
    out = capsys.readouterr().out
    assert out.count("4/4") == 3
    from fastnn.progbar import Progbar
    text, _ = Progbar(None)._bar_line(3, 0.001, 0.0, False)
    assert "3/Unknown" in text


# ---- lists and dicts of arrays -------------------------------------------------------------------
def test_list_and_dict_for_one_input(rng):
    x, y = data(rng)
    inp = keras.Input((D,), name="features")
    out = layers.Dense(CLASSES, activation="softmax", name="probs")(
        layers.Dense(8, activation="relu")(inp))

    def functional():
        keras.utils.set_random_seed(3)
        f = keras.Model(inp, out)
        f.compile("adam", "sparse_categorical_crossentropy")
        return f

    f = functional()
    expected = f.predict(x, verbose=0)
    np.testing.assert_allclose(f.predict([x], verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(f.predict({"features": x}, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(f([x]), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="one input 'features'"):
        f.predict({"other": x}, verbose=0)
    seq = model()
    np.testing.assert_allclose(seq.predict([x], verbose=0), seq.predict(x, verbose=0))
    with pytest.raises(ValueError, match="no named inputs"):
        seq.predict({"x": x}, verbose=0)
    a, b, c = model(), model(), model()
    a.fit(x, y, epochs=2, shuffle=False, verbose=0)
    b.fit([x], [y], epochs=2, shuffle=False, verbose=0)
    c.fit((x,), y, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(a, b)
    assert_same_weights(a, c)
    # a dict for the one input and the one output of a functional model
    g, h = functional(), functional()
    g.fit(x, y, epochs=2, shuffle=False, verbose=0)
    h.fit({"features": x}, {"probs": y}, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(g, h)
    # a list of rows stays rows (one sample here), not one input
    assert seq.predict([list(x[0])], verbose=0).shape == (1, CLASSES)


def test_dict_batches_for_several_inputs(rng):
    x, y = data(rng)
    a_in, b_in = keras.Input((2,), name="a"), keras.Input((D - 2,), name="b")
    h = layers.Concatenate()([a_in, b_in])
    out = layers.Dense(CLASSES, activation="softmax")(layers.Dense(8, activation="relu")(h))

    def two():
        keras.utils.set_random_seed(5)
        m = keras.Model([a_in, b_in], out)
        m.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        return m

    p, q = two(), two()
    p.fit([x[:, :2], x[:, 2:]], y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    gen = (({"a": bx[:, :2], "b": bx[:, 2:]}, by) for bx, by in batches(x, y, epochs=2))
    q.fit(gen, epochs=2, steps_per_epoch=4, verbose=0, shuffle=False)
    assert_same_weights(p, q)
    got = q.predict(iter([{"a": x[:50, :2], "b": x[:50, 2:]}, {"a": x[50:, :2], "b": x[50:, 2:]}]),
                    verbose=0)
    np.testing.assert_allclose(got, q.predict([x[:, :2], x[:, 2:]], verbose=0), rtol=1e-6)


# ---- split_dataset -------------------------------------------------------------------------------
def test_split_dataset_sizes_and_structures():
    x = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    left, right = split_dataset(x, left_size=0.8)
    np.testing.assert_array_equal(left, x[:8])
    np.testing.assert_array_equal(right, x[8:])
    left, right = split_dataset((x, y), right_size=3)
    assert isinstance(left, tuple) and len(left) == 2
    np.testing.assert_array_equal(left[1], y[:7])
    np.testing.assert_array_equal(right[1], y[7:])
    left, right = split_dataset({"x": x, "y": y}, left_size=2, right_size=0.5)
    np.testing.assert_array_equal(left["y"], y[:2])       # the middle is left out
    np.testing.assert_array_equal(right["y"], y[5:])
    left, right = split_dataset([x, y], left_size=0.6, shuffle=True, seed=3)
    assert isinstance(left, list)
    np.testing.assert_array_equal(left[0][:, 0] // 2, left[1])   # rows stay paired
    assert sorted(np.concatenate([left[1], right[1]])) == list(range(10))
    assert list(left[1]) != list(range(6))
    import random
    order = list(range(10))
    random.Random(3).shuffle(order)     # Keras: random.seed(seed); random.shuffle(samples)
    np.testing.assert_array_equal(left[1], order[:6])


def test_split_dataset_sizes_match_keras():
    """The sizes Keras's own rule gives (its tf.data path; on the torch backend Keras
    random_splits even without shuffle, so the samples are compared with the tf path's rule
    in the test above)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")
    from keras.src.utils.dataset_utils import _rescale_dataset_split_sizes
    x = np.arange(17)
    for left, right in [(0.7, None), (None, 4), (5, 0.4), (0.25, 0.5), (3, 9), (None, 0.33),
                        (0.95, None), (16, None), (0.5, 0.5)]:
        expected = _rescale_dataset_split_sizes(left, right, 17)
        fl, fr = split_dataset(x, left_size=left, right_size=right)
        assert (len(fl), len(fr)) == expected
        np.testing.assert_array_equal(fl, x[:expected[0]])
        np.testing.assert_array_equal(fr, x[17 - expected[1]:])
    with pytest.raises(ValueError, match="right side dataset split will be empty"):
        _rescale_dataset_split_sizes(0.999, None, 17)
    with pytest.raises(ValueError, match="right side dataset split will be empty"):
        split_dataset(x, left_size=0.999)


def test_split_dataset_errors():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="At least one of the `left_size` or `right_size`"):
        split_dataset(x)
    with pytest.raises(ValueError, match="`left_size` should be either a positive integer"):
        split_dataset(x, left_size=10)
    with pytest.raises(ValueError, match="`right_size` should be either"):
        split_dataset(x, right_size=1.5)
    with pytest.raises(ValueError, match="greater than 1"):
        split_dataset(x, left_size=0.6, right_size=0.6)
    with pytest.raises(ValueError, match="should be smaller than the 10"):
        split_dataset(x, left_size=6, right_size=5)
    with pytest.raises(TypeError, match="Invalid `left_size` Type"):
        split_dataset(x, left_size="half")
    with pytest.raises(ValueError, match="will be empty"):
        split_dataset(x, left_size=0.01)
    with pytest.raises(ValueError, match="same number of samples"):
        split_dataset((x, np.zeros(9)), left_size=0.5)
    with pytest.raises(TypeError, match="NumPy array"):
        split_dataset(iter([x]), left_size=0.5)


# ---- image_dataset_from_directory ----------------------------------------------------------------
def _write_images(root, rng):
    """cats: 3 PNGs, dogs: 2 JPEGs and 1 PNG in a subfolder; sizes vary; a .txt is ignored."""
    Image = pytest.importorskip("PIL.Image")
    files = {}
    for cls, specs in (("cats", [("a.png", 10, 12), ("b.png", 8, 8), ("c.png", 16, 9)]),
                       ("dogs", [("d.jpg", 12, 10), ("e.jpeg", 9, 9), ("sub/f.png", 7, 11)])):
        for name, h, w in specs:
            path = os.path.join(root, cls, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
            files[path] = cls
    with open(os.path.join(root, "cats", "notes.txt"), "w") as f:
        f.write("not an image")
    return files


def _expected_image(path, size, interpolation="bilinear", color_mode="rgb"):
    """The file through Pillow, then resized by torch (tf.image.resize's half-pixel bilinear,
    no antialias), as Keras loads it; fastnn's own resize where torch is missing."""
    from PIL import Image
    img = Image.open(path).convert("L" if color_mode == "grayscale" else "RGB")
    arr = np.asarray(img, np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    try:
        import torch
        t = torch.from_numpy(arr.transpose(2, 0, 1)[None].copy())
        # ("nearest-exact": tf.image.resize's half-pixel nearest)
        mode = "nearest-exact" if interpolation == "nearest" else interpolation
        out = torch.nn.functional.interpolate(
            t, size=size, mode=mode,
            **({"align_corners": False} if interpolation == "bilinear" else {}))
        return out[0].numpy().transpose(1, 2, 0)
    except ImportError:
        from fastnn.images import resize
        return resize(arr, size, interpolation=interpolation)


def test_image_dataset_from_directory(tmp_path, rng, capsys):
    _write_images(str(tmp_path), rng)
    ds = image_dataset_from_directory(str(tmp_path), image_size=(6, 5), batch_size=4,
                                      shuffle=False)
    assert capsys.readouterr().out.strip() == "Found 6 files belonging to 2 classes."
    assert ds.class_names == ["cats", "dogs"] and len(ds) == 2
    assert [os.path.relpath(p, str(tmp_path)) for p in ds.file_paths] == \
        ["cats/a.png", "cats/b.png", "cats/c.png", "dogs/d.jpg", "dogs/e.jpeg", "dogs/sub/f.png"]
    images, labels = ds[0]
    assert images.shape == (4, 6, 5, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and list(labels) == [0, 0, 0, 1]
    for img, path in zip(images, ds.file_paths[:4]):
        np.testing.assert_allclose(img, _expected_image(path, (6, 5)), atol=1e-3)
    last_images, last_labels = ds[1]
    assert last_images.shape == (2, 6, 5, 3) and list(last_labels) == [1, 1]
    # fit takes it; the weights equal a fit on the loaded arrays
    x = np.concatenate([images, last_images])
    y = np.concatenate([labels, last_labels])

    def cnn():
        keras.utils.set_random_seed(2)
        m = Sequential([keras.Input((6, 5, 3)), layers.Flatten(),
                        layers.Dense(2, activation="softmax")])
        m.compile(keras.optimizers.SGD(1e-4), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        return m
    a, b = cnn(), cnn()
    a.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    b.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert_same_weights(a, b)


def test_image_dataset_options(tmp_path, rng, capsys):
    _write_images(str(tmp_path), rng)
    root = str(tmp_path)
    gray = image_dataset_from_directory(root, color_mode="grayscale", image_size=4,
                                        label_mode="categorical", batch_size=6, shuffle=False,
                                        interpolation="nearest", verbose=False)
    images, labels = gray[0]
    assert images.shape == (6, 4, 4, 1)
    np.testing.assert_array_equal(labels, np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1, 1]])
    np.testing.assert_allclose(images[1], _expected_image(gray.file_paths[1], (4, 4), "nearest",
                                                          "grayscale"), atol=1e-3)
    first = image_dataset_from_directory(root, image_size=(4, 4), label_mode="binary",
                                         batch_size=6, shuffle=False, data_format="channels_first",
                                         verbose=False)
    images, labels = first[0]
    assert images.shape == (6, 3, 4, 4) and labels.shape == (6, 1) and labels.dtype == np.float32
    no_labels = image_dataset_from_directory(root, labels=None, image_size=(4, 4), batch_size=6,
                                             shuffle=False)
    assert capsys.readouterr().out.strip() == "Found 6 files."
    assert isinstance(no_labels[0], np.ndarray) and no_labels.class_names is None
    only = image_dataset_from_directory(root, class_names=["dogs"], image_size=(4, 4),
                                        verbose=False, shuffle=False)
    assert only.class_names == ["dogs"] and len(only.file_paths) == 3
    # subset: the same seeded shuffle for both parts, no overlap
    train, val = image_dataset_from_directory(root, image_size=(4, 4), validation_split=0.34,
                                              subset="both", seed=4, batch_size=2)
    out = capsys.readouterr().out
    assert "Using 4 files for training." in out and "Using 2 files for validation." in out
    assert len(train.file_paths) == 4 and len(val.file_paths) == 2
    assert not set(train.file_paths) & set(val.file_paths)
    alone = image_dataset_from_directory(root, image_size=(4, 4), validation_split=0.34,
                                         subset="validation", seed=4, verbose=False)
    assert alone.file_paths == val.file_paths
    crop = image_dataset_from_directory(root, image_size=(4, 4), crop_to_aspect_ratio=True,
                                        shuffle=False, verbose=False)
    from fastnn.images import img_to_array, load_img, resize
    np.testing.assert_allclose(crop[0][0][0], resize(img_to_array(load_img(crop.file_paths[0])),
                                                     (4, 4), crop_to_aspect_ratio=True))


def test_image_dataset_errors(tmp_path, rng):
    _write_images(str(tmp_path), rng)
    root = str(tmp_path)
    with pytest.raises(ValueError, match="you must provide a `seed`"):
        image_dataset_from_directory(root, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="`validation_split` must be set"):
        image_dataset_from_directory(root, subset="training", seed=1)
    with pytest.raises(ValueError, match="`color_mode` must be one of"):
        image_dataset_from_directory(root, color_mode="cmyk")
    with pytest.raises(ValueError, match="`label_mode` argument must be one of"):
        image_dataset_from_directory(root, label_mode="sparse")
    with pytest.raises(ValueError, match="did not match the names of the subdirectories"):
        image_dataset_from_directory(root, class_names=["birds"])
    with pytest.raises(ValueError, match="Expected the lengths of `labels`"):
        image_dataset_from_directory(root, labels=[0, 1])
    with pytest.raises(ValueError, match="interpolation"):
        image_dataset_from_directory(root, interpolation="bicubic")
    with pytest.raises(ValueError, match="No images found"):
        image_dataset_from_directory(root, class_names=[], verbose=False)


def test_torch_dataloader(rng):
    """A torch DataLoader (an iterable with __len__, torch tensors): a new pass per epoch."""
    torch = pytest.importorskip("torch")
    x, y = data(rng)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=BATCH, shuffle=False)
    a, b = model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(loader, epochs=2, shuffle=False, verbose=0)
    assert_same_history(ha, hb)
    assert_same_weights(a, b)


def test_predict_several_outputs_on_batches(rng):
    x, _ = data(rng)
    inp = keras.Input((D,))
    h = layers.Dense(8, activation="relu")(inp)
    m = keras.Model(inp, [layers.Dense(2)(h), layers.Dense(3, activation="softmax")(h)])
    got = m.predict(iter([x[:40], x[40:]]), verbose=0)
    expected = m.predict(x, verbose=0)
    assert isinstance(got, list) and len(got) == 2
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_matches_keras_on_pydataset_and_generator(rng):
    """The same model, weights and batches in Keras 3 (its own keras.utils.PyDataset with
    class_weight and validation_steps, a generator with steps_per_epoch): the same history
    and weights. (Not a validation generator: Keras replays its first batches each pass.)"""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    k = pytest.importorskip("keras")
    x, y = data(rng)
    xv, yv = data(rng, 40)
    cw = {0: 1.0, 1: 2.0, 2: 0.5}
    results = []
    for K in (keras, k):
        class Batches(K.utils.PyDataset):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)

            def __len__(self):
                return 4

            def __getitem__(self, i):
                return x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]

        class Val(K.utils.PyDataset):
            def __len__(self):
                return 3

            def __getitem__(self, i):
                return xv[i * 16:(i + 1) * 16], yv[i * 16:(i + 1) * 16]

        m = K.Sequential([K.Input((D,)), K.layers.Dense(8, activation="relu"),
                          K.layers.Dense(CLASSES, activation="softmax")])
        if results:
            m.set_weights(results[0][0])
        start = m.get_weights()
        m.compile(K.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        h1 = m.fit(Batches(), epochs=2, shuffle=False, class_weight=cw, verbose=0,
                   validation_data=Val(), validation_steps=2)
        h2 = m.fit(batches(x, y, epochs=2), epochs=2, steps_per_epoch=4, verbose=0,
                   shuffle=False)
        results.append((start, h1.history, h2.history, m.get_weights(),
                        m.evaluate(Batches(), verbose=0)))
    (_, a1, a2, wa, ea), (_, b1, b2, wb, eb) = results
    for ours, theirs in ((a1, b1), (a2, b2)):
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-5,
                                       err_msg=key)
    np.testing.assert_allclose(ea, eb, rtol=1e-4, atol=1e-5)
    for p, q in zip(wa, wb):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


def test_per_batch_callback_and_bad_batches(rng):
    """A callback reading every batch (one step per call) gives the same weights and sees
    every batch; a bad label or a NaN in a later batch raises, naming the problem."""
    x, y = data(rng)
    seen = []

    class Seen(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, logs["loss"]))

    a, b = model(), model()
    ha = a.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(ArrayDataset(x, y), epochs=2, shuffle=False, verbose=0, callbacks=[Seen()])
    assert_same_history(ha, hb)
    assert_same_weights(a, b)
    assert [s for s, _ in seen] == [0, 1, 2, 3] * 2
    assert seen[3][1] == pytest.approx(hb.history["loss"][0], rel=1e-6)
    bad_y = y.copy()
    bad_y[70] = CLASSES
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model().fit(ArrayDataset(x, bad_y), epochs=1, shuffle=False, verbose=0)
    bad_x = x.copy()
    bad_x[90, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        model().fit(ArrayDataset(bad_x, y), epochs=1, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        model(fused=False).fit(batches(bad_x, y), epochs=1, shuffle=False, verbose=0)


def test_multiprocessing_refused_without_fork(rng, monkeypatch):
    import multiprocessing
    x, y = data(rng)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ValueError, match="needs the 'fork' start method"):
        model().fit(ArrayDataset(x, y, workers=2, use_multiprocessing=True), verbose=0)
    with pytest.raises(ValueError, match="workers must be a non-negative int"):
        model().fit(ArrayDataset(x, y, workers=-1), verbose=0)


@pytest.mark.cpu_backend
def test_consecutive_slices_join_as_a_view_and_anything_else_as_a_copy():
    from fastnn import _core, data_adapters
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4, 3)).astype(np.float32)
    y = np.arange(100, dtype=np.uint8)
    cases = {
        "slices": ([x[i:i + 8] for i in range(0, 100, 8)], True),
        "labels": ([y[i:i + 8] for i in range(8, 100, 8)], True),
        "one": ([x[3:9]], True),
        "swapped": ([x[0:8], x[16:24], x[8:16]], False),
        "gap": ([x[0:8], x[9:17]], False),
        "strided": ([x[0:8, :, :2], x[8:16, :, :2]], False),
        "other dtype": ([x[0:8], x[8:16].view(np.int32)], False),
        "other array": ([x[0:8], x.copy()[8:16]], False),
    }
    for name, (parts, view) in cases.items():
        joined = data_adapters._joined(parts)
        np.testing.assert_array_equal(joined, np.concatenate(parts), err_msg=name)
        assert np.shares_memory(joined, parts[0]) == view, name
        assert joined.flags.c_contiguous, name
    assert _core.consecutive([x[0:8], x[8:16]]) and not _core.consecutive([x[8:16], x[0:8]])
    assert not _core.consecutive([x[0:8], x.reshape(100, 3, 4)[8:16]])     # rows (3, 4)
    with pytest.raises((BufferError, ValueError)):
        _core.consecutive([x[0:8, :, :2]])
    with pytest.raises((BufferError, ValueError)):
        _core.consecutive([x[0:8], x[8:16, :, :2]])
    with pytest.raises(ValueError, match="no arrays"):
        _core.consecutive([])
    for bad in ((x[0:8],), [x[0:8], None], [x[0:8], [1.0]]):
        with pytest.raises(TypeError):
            _core.consecutive(bad)
