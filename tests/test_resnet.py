"""keras.applications ResNet: the architecture against Keras 3's (summary text, per-layer
json), Keras's weights file layout loaded and checked against Keras's predictions on the
fixture images, Keras's argument checks, and training (from scratch and a frozen base)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn.applications import resnet
from fastnn.applications.resnet import ResNet50, ResNet101, ResNet152

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "keras")
MEANS_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _fixture(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"fixture {name} not found beside the checkout ({FIXTURES})")
    return path


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory):
    """Keras's ResNet-50 weights layout (legacy HDF5) from the fixtures' fixed-seed script,
    in both name styles Keras wrote over the years."""
    pytest.importorskip("h5py")
    script = _fixture("resnet50_seeded_weights.py")
    folder = tmp_path_factory.mktemp("resnet50")
    paths = {}
    for style, extra in (("keras3", []), ("keras2", ["--keras2-names"])):
        paths[style] = str(folder / f"resnet50_seeded_{style}.h5")
        subprocess.run([sys.executable, script, paths[style]] + extra, check=True,
                       stdout=subprocess.DEVNULL)
    return paths


def _images():
    x = np.load(_fixture("resnet50_images.npy")).astype(np.float32)
    return x[..., ::-1] - MEANS_BGR         # Keras's "caffe" preprocessing


def test_summary_is_keras_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    model = ResNet50(weights=None)
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    with open(_fixture("resnet50_summary.txt"), encoding="utf-8") as f:
        assert "\n".join(lines) == f.read()
    assert model.count_params() == 25_636_712
    assert sum(w.size for w in model.trainable_weights) == 25_583_592
    assert sum(w.size for w in model.non_trainable_weights) == 53_120


def test_layers_match_keras():
    with open(_fixture("resnet50_layers.json"), encoding="utf-8") as f:
        reference = json.load(f)["layers"]
    model = ResNet50(weights=None)
    assert [layer.name for layer in model.layers] == [r["name"] for r in reference]
    for layer, ref in zip(model.layers, reference):
        assert type(layer).__name__ == ref["class_name"], ref["name"]
        assert list(layer.output.shape) == ref["output_shape"], ref["name"]
        assert layer.count_params() == ref["param_count"], ref["name"]
        node = layer._inbound_nodes[0]
        assert [t.node.layer.name for t in node.inputs] == ref["inbound"], ref["name"]
        assert [list(w.shape) for w in layer.weights] == [s for _, s in ref["weights"]]
        config = layer.get_config()
        for key in ("strides", "padding", "kernel_size", "filters", "epsilon", "axis",
                    "units", "activation", "use_bias", "pool_size"):
            if key in ref["config"]:
                want = ref["config"][key]
                got = config[key]
                assert (list(got) if isinstance(got, tuple) else got) == want, \
                    (ref["name"], key)


def test_deeper_variants_and_options():
    for build, blocks, params in ((ResNet101, 23, 44_707_176), (ResNet152, 36, 60_419_944)):
        model = build(weights=None)
        assert model.name == build.__name__.lower()
        assert model.count_params() == params
        assert model.get_layer(f"conv4_block{blocks}_out").output.shape == (None, 14, 14, 1024)
    headless = ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3), pooling="max")
    assert headless.output.shape == (None, 2048)
    assert headless.layers[-1].name == "max_pool"
    assert ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3)).output.shape == \
        (None, 2, 2, 2048)
    logits = ResNet50(weights=None, classes=7, classifier_activation=None,
                      input_shape=(32, 32, 3))
    assert logits.output.shape == (None, 7)
    assert logits.get_layer("predictions").get_config()["activation"] == "linear"


def test_keras_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="`classes` should be 1000"):
        ResNet50(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="The `weights` argument should be either"):
        ResNet50(weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match=r"`input_shape` should be \(224, 224, 3\)"):
        ResNet50(weights="imagenet", input_shape=(200, 200, 3))
    with pytest.raises(ValueError, match="at least 32x32"):
        ResNet50(weights=None, include_top=False, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="three integers"):
        ResNet50(weights=None, input_shape=(224, 224))
    with pytest.raises(ValueError, match="Only `None` and `softmax`"):
        ResNet50(weights="imagenet", classifier_activation="sigmoid")
    with pytest.raises(ValueError, match="pooling"):
        ResNet50(weights=None, include_top=False, pooling="mean", input_shape=(32, 32, 3))


def test_seeded_weights_predict_as_keras(seeded_weights):
    x = _images()
    np.testing.assert_allclose(x[0].sum(dtype=np.float64), 6948880.86, rtol=1e-6)
    expected = np.load(_fixture("resnet50_pred.npy"))
    logits_expected = np.load(_fixture("resnet50_logits.npy"))
    for path in seeded_weights.values():
        model = ResNet50(weights=path)
        pred = model.predict(x, verbose=0)
        np.testing.assert_allclose(pred, expected, atol=1e-4)
        assert (np.argsort(-pred, axis=1)[:, :5] ==
                np.argsort(-expected, axis=1)[:, :5]).all()
    assert np.argsort(-pred[0])[:5].tolist() == [355, 613, 804, 67, 443]
    logits = ResNet50(weights=seeded_weights["keras3"], classifier_activation=None)
    one_by_one = np.concatenate([logits.predict(x[i:i + 1], verbose=0) for i in range(4)])
    np.testing.assert_allclose(one_by_one, logits_expected, atol=1e-3)


def test_weight_file_mismatches_name_the_layer(seeded_weights, tmp_path):
    path = seeded_weights["keras3"]
    with pytest.raises(ValueError, match=r"Layer count mismatch.*expected 209 .* found 107"):
        ResNet101(weights=path)
    model = ResNet50(weights=None, classes=10)
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"named predictions.*\(2048, 10\).*\(2048, 1000\)"):
        model.load_weights(path)
    for a, b in zip(before, model.get_weights()):       # nothing was set
        np.testing.assert_array_equal(a, b)
    # by_name with skip_mismatch: every layer but the classifier
    model.load_weights(path, by_name=True, skip_mismatch=True)
    full = ResNet50(weights=path)
    np.testing.assert_array_equal(model.get_layer("conv5_block3_3_conv").get_weights()[0],
                                  full.get_layer("conv5_block3_3_conv").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0], before[-2])


def test_trains_from_scratch_on_small_images():
    """BatchNormalization in training mode and the residual gradients: a few steps fit a
    small batch."""
    fastnn.utils.set_random_seed(0)
    model = ResNet50(weights=None, input_shape=(32, 32, 3), classes=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    y = np.arange(8) % 4
    model.compile(fastnn.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    mean_before = model.get_layer("conv1_bn").get_weights()[2].copy()
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    # Batch statistics of 8 images make these steps ill-conditioned (the GPU kernels' sums
    # take another path from the 2nd step on): the fit is judged on its best epoch.
    losses = history.history["loss"]
    assert min(losses) < 0.1 * losses[0]
    assert max(history.history["accuracy"]) == 1.0
    assert not np.allclose(model.get_layer("conv1_bn").get_weights()[2], mean_before)


def test_one_training_step_equals_keras():
    """The same ResNet-50 (weights copied from Keras 3), one SGD step on one batch. With batch
    statistics a randomly initialised ResNet is ill-conditioned (a 1e-6 change of the input
    moves single updates by percents, in either framework), so the loss is compared there,
    and the updates with the batch-norm layers frozen (inference mode, as Keras runs a frozen
    BatchNormalization)."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 32, 32, 3)).astype(np.float32)
    y = np.arange(6) % 5
    for freeze_bn in (False, True):
        reference = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
                                                classes=5)
        model = ResNet50(weights=None, input_shape=(32, 32, 3), classes=5)
        model.set_weights(reference.get_weights())
        before = {layer.name: layer.get_weights() for layer in model.layers}
        for m, K in ((reference, keras), (model, fastnn)):
            for layer in m.layers:
                if freeze_bn and type(layer).__name__ == "BatchNormalization":
                    layer.trainable = False
            m.compile(K.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        loss_keras = float(reference.train_on_batch(x, y))
        assert float(model.train_on_batch(x, y)) == pytest.approx(loss_keras, rel=1e-4)
        if not freeze_bn:
            continue
        for layer in [layer for layer in model.layers if layer.weights]:
            ref = reference.get_layer(layer.name).get_weights()
            for name, a, b, w in zip(layer.weight_names, layer.get_weights(), ref,
                                     before[layer.name]):
                scale = np.abs(b - w).max()
                assert np.abs((a - w) - (b - w)).max() <= 2e-2 * scale + 1e-9, \
                    f"{layer.name}/{name}"


def test_schedule_and_tape_train_resnet_alike():
    """ResNet runs on the graph schedule; the tape gives the same step."""
    fastnn.utils.set_random_seed(5)
    models = [ResNet50(weights=None, input_shape=(32, 32, 3), classes=3) for _ in range(2)]
    assert models[0]._schedule is not None
    models[1].set_weights(models[0].get_weights())
    models[1]._schedule = None
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    for m in models:
        m.compile(fastnn.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        m.train_on_batch(x, np.arange(4) % 3)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fine_tuning_with_a_frozen_base():
    fastnn.utils.set_random_seed(1)
    base = ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    base.trainable = False
    inputs = fastnn.Input(shape=(32, 32, 3))
    outputs = fastnn.layers.Dense(3, activation="softmax")(base(inputs, training=False))
    model = fastnn.Model(inputs, outputs)
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 32, 32, 3)).astype(np.float32)
    y = np.arange(12) % 3
    frozen = base.get_weights()
    head = model.layers[-1].get_weights()[0].copy()
    model.fit(x, y, batch_size=6, epochs=2, verbose=0)
    for a, b in zip(frozen, base.get_weights()):        # BN statistics included
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(model.layers[-1].get_weights()[0], head)
    assert sum(w.size for w in model.trainable_weights) == 2048 * 3 + 3


def test_module_paths():
    from fastnn.applications import resnet50
    assert resnet50.ResNet50 is ResNet50
    assert resnet.ResNet101 is ResNet101


def test_command_line_classifies_images(seeded_weights, tmp_path):
    """python -m fastnn.applications.resnet50 IMAGE...: the tutorial's top-3 per image (class
    index from the Keras cache, weights from a file: nothing downloaded)."""
    image_module = pytest.importorskip("PIL.Image")
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    with open(_fixture("imagenet_class_index.json"), "rb") as src:
        (home / "models" / "imagenet_class_index.json").write_bytes(src.read())
    pixels = np.load(_fixture("resnet50_images.npy"))
    paths = [tmp_path / "square.png", tmp_path / "wide.png"]
    image_module.fromarray(pixels[0]).save(paths[0])
    image_module.fromarray(pixels[1][:160]).save(paths[1])    # 160x224: padded to a square
    env = dict(os.environ, KERAS_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "fastnn.applications.resnet50", str(paths[0]),
                          str(paths[1]), "--weights", seeded_weights["keras3"]],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == f"{paths[0]}:" and lines[4] == f"{paths[1]}:" and len(lines) == 8
    expected = np.load(_fixture("resnet50_pred.npy"))[0]
    assert lines[1] == f"  1. llama (n02437616) {expected[355]:.4f}"
    assert [line.split()[1] for line in lines[1:4]] == ["llama", "joystick", "soap_dispenser"]


def test_open_image_size_as_keras_builds_it():
    """include_top=False without input_shape takes any image size, as in Keras: the same
    numbers as a model built for each size."""
    fastnn.utils.set_random_seed(6)
    open_model = ResNet50(weights=None, include_top=False, pooling="avg")
    assert open_model.input_shape == (None, None, None, 3)
    assert open_model.output_shape == (None, 2048)
    rng = np.random.default_rng(6)
    for h, w in ((64, 64), (72, 40)):
        fixed = ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(h, w, 3))
        fixed.set_weights(open_model.get_weights())
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        np.testing.assert_allclose(open_model.predict(x, verbose=0),
                                   fixed.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    maps = ResNet50(weights=None, include_top=False)
    assert maps.predict(rng.standard_normal((1, 100, 120, 3)).astype(np.float32),
                        verbose=0).shape == (1, 4, 4, 2048)
    with pytest.raises(ValueError, match="static `input_shape`"):
        ResNet50(weights=None, input_shape=(None, None, 3))
