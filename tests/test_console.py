"""Console output (docs/keras-semantics.md §10): the progress bar and summary() in Keras's formats,
checked against Keras's own output where Keras is installed."""
import io
import re

import numpy as np
import pytest

from fastnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from fastnn.models import Sequential
from fastnn.progbar import Progbar
from fastnn.summary import column_widths, readable_size

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BAR = "━" * 20


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progbar_piped_prints_only_final_line_for_short_runs():
    out = io.StringIO()
    bar = Progbar(469, stream=out)
    for step in range(1, 470):
        bar.update(step, [("accuracy", 0.87371), ("loss", 0.44012)])
    text = out.getvalue()
    assert text.count("\n") == 1 and "\b" not in text and "\r" not in text
    plain = ANSI.sub("", text)
    assert re.fullmatch(r"469/469 " + BAR + r" \d+s \d+(us|ms)/step - accuracy: 0\.8737 - "
                        r"loss: 0\.4401\n", plain), plain
    # The colours Keras uses: bold count, green done part.
    assert text.startswith("\x1b[1m469/469\x1b[0m \x1b[32m" + BAR + "\x1b[0m")


def test_progbar_on_a_terminal_redraws_in_place(monkeypatch):
    out = Tty()
    clock = iter(np.arange(0.0, 100.0, 0.1))
    monkeypatch.setattr("fastnn.progbar.time.perf_counter", lambda: next(clock))
    bar = Progbar(5, stream=out)
    for step in range(1, 6):
        bar.update(step, [("loss", 1e-4 * step)])
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 5 and text.endswith("\n") and text.count("\n") == 1
    first = ANSI.sub("", frames[0]).rstrip("\b")
    # Right-aligned count, 4 of 20 bar cells done, ETA, per-step time, small values as %.4e.
    assert re.fullmatch(r"1/5 ━{20} 0s 100ms/step - loss: 1\.0000e-04", first)
    last = ANSI.sub("", frames[-1])
    assert re.match(r"5/5 ━{20} 0s 100ms/step - loss: 5\.0000e-04", last)
    # Each redraw first backspaces over the previous frame's printed width.
    widths = [len(ANSI.sub("", f).rstrip("\b\n")) for f in frames]
    assert text.count("\b") == sum(widths[:-1])


def test_progbar_count_is_right_aligned_and_eta_formats(monkeypatch):
    out = Tty()
    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr("fastnn.progbar.time.perf_counter", lambda: next(clock))
    bar = Progbar(1000, stream=out)
    bar.update(1)
    bar.update(2)
    frames = [ANSI.sub("", f).rstrip("\b ") for f in out.getvalue().split("\r")[1:]]
    # 10 s/step for 998 more steps = 9980 s -> h:mm:ss.
    assert frames[1].startswith("   2/1000 ") and " 2:46:20 10s/step" in frames[1]


def test_progbar_verbose_2_prints_one_line():
    out = io.StringIO()
    bar = Progbar(10, verbose=2, stream=out)
    for step in range(1, 11):
        bar.update(step, [("loss", 0.5)])
    assert re.fullmatch(r"10/10 - \d+s - \d+(us|ms)/step - loss: 0\.5000\n", out.getvalue())


def _fit_output(capsys, verbose, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)),
                    Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    capsys.readouterr()
    m.fit(x, y, batch_size=16, epochs=epochs, validation_split=0.25, verbose=verbose)
    return ANSI.sub("", capsys.readouterr().out), m, x, y


def test_fit_verbose_1_prints_keras_epoch_lines(capsys):
    text, m, x, y = _fit_output(capsys, "auto")
    lines = text.strip("\n").split("\n")
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert re.fullmatch(r"3/3 ━{20} \d+s \d+(us|ms)/step - accuracy: \d\.\d{4} - loss: "
                        r"\d\.\d{4} - val_accuracy: \d\.\d{4} - val_loss: \d\.\d{4}", lines[1])
    m.evaluate(x, y, verbose=1)
    assert re.fullmatch(r"2/2 ━{20} \d+s \d+(us|ms)/step - accuracy: \d\.\d{4} - loss: "
                        r"\d\.\d{4}\n", ANSI.sub("", capsys.readouterr().out))
    m.predict(x, verbose=1)
    assert re.fullmatch(r"2/2 ━{20} \d+s \d+(us|ms)/step\n",
                        ANSI.sub("", capsys.readouterr().out))


def test_fit_verbose_2_and_0(capsys):
    text, *_ = _fit_output(capsys, 2)
    lines = text.strip("\n").split("\n")
    assert len(lines) == 4 and lines[0] == "Epoch 1/2"
    assert re.fullmatch(r"3/3 - \d+s - \d+(us|ms)/step - accuracy: \d\.\d{4} - loss: \d\.\d{4}"
                        r" - val_accuracy: \d\.\d{4} - val_loss: \d\.\d{4}", lines[1])
    text, *_ = _fit_output(capsys, 0)
    assert text == ""
    text, *_ = _fit_output(capsys, 1, epochs=1)
    assert "Epoch" not in text and text.count("\n") == 1    # no "Epoch 1/1" header


# ---- summary ---------------------------------------------------------------------------------
KERAS_MLP_SUMMARY = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ Layer (type)                         ┃ Output Shape                ┃         Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ dense (Dense)                        │ (None, 64)                  │           1,344 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dropout (Dropout)                    │ (None, 64)                  │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense_1 (Dense)                      │ (None, 1)                   │              65 │
└──────────────────────────────────────┴─────────────────────────────┴─────────────────┘
 Total params: 1,409 (5.50 KB)
 Trainable params: 1,409 (5.50 KB)
 Non-trainable params: 0 (0.00 B)
"""


def _mlp(keras_module=None):
    if keras_module is None:
        return Sequential([Input(shape=(20,)), Dense(64, activation="relu"), Dropout(0.2),
                           Dense(1)])
    L = keras_module.layers
    return keras_module.Sequential([keras_module.Input((20,)), L.Dense(64, activation="relu"),
                                    L.Dropout(0.2), L.Dense(1)])


def _summary(model, **kw):
    out = []
    model.summary(print_fn=out.append, **kw)
    assert len(out) == 1          # one call with the whole table, as Keras makes
    return out[0]


def test_summary_is_keras_table_character_for_character(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert _summary(_mlp()) == KERAS_MLP_SUMMARY


def test_summary_follows_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    lines = _summary(_mlp()).split("\n")
    assert len(lines[1]) == 66 and len(lines[3]) == 66


def test_column_widths_and_sizes():
    assert column_widths(88, [0.45, 0.80, 1.0]) == [36, 27, 15]
    assert column_widths(100, [0.405, 0.72, 0.9, 1.0]) == [37, 29, 14, 7]
    assert readable_size(5768) == "5.63 KB" and readable_size(0) == "0.00 B"
    assert readable_size(3 * 1024 ** 2) == "3.00 MB"


@pytest.mark.parametrize("variant", ["plain", "trainable", "unbuilt", "optimizer", "cnn"])
def test_summary_matches_keras(monkeypatch, variant):
    keras = pytest.importorskip("keras")
    L = keras.layers
    monkeypatch.setenv("COLUMNS", "200")
    kw = {"show_trainable": True} if variant == "trainable" else {}
    if variant == "unbuilt":
        ours = Sequential([Dense(3)])
        theirs = [L.Dense(3)]
    elif variant == "cnn":
        ours = Sequential([Input(shape=(28, 28, 1)), Conv2D(64, 3, activation="relu"),
                           MaxPooling2D(), Flatten(), BatchNormalization(), Dense(10)])
        theirs = [keras.Input((28, 28, 1)), L.Conv2D(64, 3, activation="relu"),
                  L.MaxPooling2D(), L.Flatten(), L.BatchNormalization(), L.Dense(10)]
    else:
        ours = _mlp()
        theirs = [keras.Input((20,)), L.Dense(64, activation="relu"), L.Dropout(0.2),
                  L.Dense(1)]
    # Keras's layers under fastnn's names (each framework counts names on its own).
    named = iter(ours.layers)
    theirs = keras.Sequential([t if isinstance(t, keras.KerasTensor)
                               else type(t).from_config({**t.get_config(),
                                                         "name": next(named).name})
                               for t in theirs], name=ours.name)
    if variant == "trainable":
        ours.layers[0].trainable = theirs.layers[0].trainable = False
    if variant == "optimizer":
        x, y = np.zeros((4, 20), np.float32), np.zeros((4, 1), np.float32)
        for m in (ours, theirs):
            m.compile(optimizer="adam", loss="mse")
            m.fit(x, y, verbose=0)
    assert _summary(ours, **kw) == _summary(theirs, **kw)
