"""Files Keras 3.15 wrote (the fixtures: a Sequential MLP, a CNN, a functional graph, in
.keras, legacy .h5 and .weights.h5) load into fastnn with Keras's predictions and optimizer
state; files fastnn writes load into Keras (where it is installed) with equal predictions and
optimizer state, and a step of training after loading is the same step in both."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastnn

pytest.importorskip("h5py")
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "keras")
MODELS = {"mlp": ("Sequential", "Adam", 8), "cnn": ("Sequential", "RMSprop", 4),
          "functional": ("Functional", "SGD", 2)}


def _fixture(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"fixture {name} not found beside the checkout ({FIXTURES})")
    return path


def _batch(name):
    return np.load(_fixture(f"{name}_x.npy")), np.load(_fixture(f"{name}_pred.npy"))


@pytest.mark.parametrize("fmt", [".keras", ".h5", ".weights.h5"])
@pytest.mark.parametrize("name", MODELS)
def test_keras_files_load_with_their_predictions_and_state(name, fmt):
    x, expected = _batch(name)
    if fmt == ".weights.h5":
        model = fastnn.models.load_model(_fixture(f"{name}.keras"), compile=False)
        model.load_weights(_fixture(name + fmt))
    else:
        model = fastnn.models.load_model(_fixture(name + fmt))
        kind, optimizer, steps = MODELS[name]
        assert type(model).__name__ == kind
        assert type(model.optimizer).__name__ == optimizer
        assert model.optimizer.iterations == steps
        assert model.loss is not None
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)


def test_functional_config_round_trip():
    model = fastnn.models.load_model(_fixture("functional.keras"))
    config = model.get_config()
    assert [layer["name"] for layer in config["layers"]][:3] == ["image", "pad", "stem_conv"]
    add = next(layer for layer in config["layers"] if layer["name"] == "add")
    assert [a["config"]["keras_history"] for a in add["inbound_nodes"][0]["args"][0]] == \
        [["branch_a", 0, 0], ["branch_b", 0, 0]]
    assert config["input_layers"] == ["image", 0, 0]
    clone = fastnn.Model.from_config(config)
    clone.set_weights(model.get_weights())
    x, expected = _batch("functional")
    np.testing.assert_allclose(clone.predict(x, verbose=0), expected, atol=1e-5)
    again = fastnn.models.model_from_json(model.to_json())
    assert again.get_config() == config


def test_shared_layers_and_several_outputs_round_trip(tmp_path):
    """A layer called twice (node indices) and two outputs survive get_config/from_config
    and a .keras file."""
    fastnn.utils.set_random_seed(2)
    a, b = fastnn.Input(shape=(4,), name="a"), fastnn.Input(shape=(4,), name="b")
    shared = fastnn.layers.Dense(3, name="shared")
    left, right = shared(a), shared(b)
    out = fastnn.layers.Subtract(name="diff")([right, left])
    model = fastnn.Model([a, b], [fastnn.layers.Dense(1, name="score")(out), out],
                         name="siamese")
    model.compile("adam", ["mse", "mse"])
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(2)]
    model.fit(xs, [np.zeros((5, 1)), np.zeros((5, 3))], verbose=0)
    path = tmp_path / "siamese.keras"
    model.save(path)
    loaded = fastnn.models.load_model(path)
    diff = next(layer for layer in loaded.get_config()["layers"] if layer["name"] == "diff")
    assert [a["config"]["keras_history"] for a in diff["inbound_nodes"][0]["args"][0]] == \
        [["shared", 1, 0], ["shared", 0, 0]]
    for p, q in zip(model.predict(xs, verbose=0), loaded.predict(xs, verbose=0)):
        np.testing.assert_array_equal(p, q)
    assert loaded.optimizer.iterations == model.optimizer.iterations


def test_unsupported_keys_and_classes_are_named():
    config = fastnn.models.load_model(_fixture("functional.keras")).get_config()
    bn = next(layer for layer in config["layers"] if layer["name"] == "stem_bn")
    bn["config"]["renorm"] = True
    with pytest.raises(ValueError, match=r"layers\[3\].*stem_bn.*renorm=True"):
        fastnn.Model.from_config(config)
    bn["config"]["renorm"] = False
    bn["class_name"] = "os.system"
    with pytest.raises(ValueError, match="os.system"):
        fastnn.Model.from_config(config)


def test_keras_member_layout_of_a_saved_functional_model(tmp_path):
    model = fastnn.models.load_model(_fixture("functional.keras"))
    path = tmp_path / "f.keras"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
@pytest.mark.parametrize("name", MODELS)
def test_keras_opens_what_fastnn_writes_and_trains_on_alike(tmp_path, name, fmt):
    """fastnn loads Keras's file and writes it again; Keras 3 loads that with equal
    predictions and optimizer state (each slot in its weight's shape); one more training
    step from the same batch moves both models' weights alike."""
    keras = pytest.importorskip("keras")
    x, expected = _batch(name)
    model = fastnn.models.load_model(_fixture(f"{name}.keras"))
    path = str(tmp_path / f"{name}{fmt}")
    model.save(path)
    theirs = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               expected, atol=1e-5)
    assert int(keras.ops.convert_to_numpy(theirs.optimizer.iterations)) == \
        model.optimizer.iterations
    if fmt == ".h5":
        return      # Keras builds a legacy file's optimizer slots only when it trains
    ours = [np.asarray(v) for v in fastnn.saving._optimizer_variables(model.optimizer,
                                                                       model._shapes)]
    for mine, var in zip(ours, theirs.optimizer.variables):
        np.testing.assert_allclose(mine, keras.ops.convert_to_numpy(var), rtol=1e-6,
                                   err_msg=var.path)
    if name == "mlp":
        return      # its Dropout draws other random numbers in each framework
    y = np.arange(len(x)) % 5
    model.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    # atol: the CNN's conv bias feeds a BatchNormalization, so its gradient is float noise
    # that RMSprop scales up to steps of ~1e-5
    for a, b in zip(model.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=5e-5)


def test_custom_layers_register_save_and_load(tmp_path):
    """A user's Layer subclass saves with its registered name and loads through the registry
    or custom_objects; unregistered, the error says how to register it."""
    @fastnn.saving.register_keras_serializable(package="fastnn_tests")
    class Scale(fastnn.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    class Unregistered(Scale):
        pass

    inputs = fastnn.Input(shape=(3,))
    model = fastnn.Model(inputs, fastnn.layers.Dense(2)(Scale(3.0, name="scale")(inputs)))
    model.compile("sgd", "mse")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    model.fit(x, np.ones((2, 2)), verbose=0)
    entry = model.get_config()["layers"][1]
    assert entry["registered_name"] == "fastnn_tests>Scale" and entry["config"]["factor"] == 3.0
    path = tmp_path / "custom.keras"
    model.save(path)
    loaded = fastnn.models.load_model(path)
    assert type(loaded.get_layer("scale")) is Scale
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    other = fastnn.Model(inputs, Unregistered(name="u")(inputs))
    config = other.get_config()
    with pytest.raises(ValueError, match="register_keras_serializable"):
        fastnn.Model.from_config(config)
    again = fastnn.Model.from_config(config, custom_objects={"Unregistered": Unregistered})
    assert type(again.get_layer("u")) is Unregistered

    class NoConfig(fastnn.layers.Layer):
        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = size

        def call(self, x):
            return x
    with pytest.raises(NotImplementedError, match=r"\['size'\].*get_config"):
        fastnn.Model(inputs, NoConfig(3)(inputs)).get_config()


def test_clone_model_makes_new_layers_of_the_same_architecture():
    model = fastnn.models.load_model(_fixture("functional.keras"))
    clone = fastnn.models.clone_model(model)
    assert clone is not model and clone.get_config() == model.get_config()
    assert all(a is not b for a, b in zip(clone.layers, model.layers))
    assert not np.allclose(clone.get_layer("predictions").get_weights()[0],
                           model.get_layer("predictions").get_weights()[0])
    clone.set_weights(model.get_weights())
    x, expected = _batch("functional")
    np.testing.assert_allclose(clone.predict(x, verbose=0), expected, atol=1e-5)
    seq = fastnn.models.load_model(_fixture("mlp.keras"))
    assert fastnn.models.clone_model(seq).get_config() == seq.get_config()


@pytest.mark.parametrize("fmt", [".weights.h5", ".keras"])
def test_load_weights_skip_mismatch(tmp_path, fmt):
    """skip_mismatch=True loads every layer that fits and keeps (with a warning naming
    them) the layers whose weights do not; without it nothing is set."""
    fastnn.utils.set_random_seed(4)
    source = fastnn.Sequential([fastnn.Input(shape=(4,)), fastnn.layers.Dense(3, name="a"),
                                fastnn.layers.Dense(2, name="b")])
    path = str(tmp_path / f"w{fmt}")
    source.save_weights(path) if fmt == ".weights.h5" else source.save(path)
    target = fastnn.Sequential([fastnn.Input(shape=(4,)), fastnn.layers.Dense(3, name="a"),
                                fastnn.layers.Dense(5, name="b")])
    before = target.get_weights()
    with pytest.raises(ValueError, match="shape"):
        target.load_weights(path)
    for a, b in zip(before, target.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match=r"\['b'\]"):
        target.load_weights(path, skip_mismatch=True)
    for a, b in zip(source.layers[0].get_weights(), target.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before[2:], target.get_weights()[2:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["cnn", "functional"])
def test_next_step_from_a_keras_file_is_keras_step(name):
    """One more train_on_batch from Keras's file gives the weights Keras 3 gave (stored by
    tests/data/make_keras_next_step.py, so this runs without Keras)."""
    stored = np.load(os.path.join(os.path.dirname(__file__), "data", "keras_next_step.npz"))
    model = fastnn.models.load_model(_fixture(f"{name}.keras"))
    x, _ = _batch(name)
    model.train_on_batch(x, np.arange(len(x)) % 5)
    weights = model.get_weights()
    assert len(weights) == len([k for k in stored.files if k.startswith(f"{name}/")])
    for i, w in enumerate(weights):     # atol: see the conv-bias note above
        np.testing.assert_allclose(w, stored[f"{name}/{i}"], rtol=1e-4, atol=5e-5,
                                   err_msg=f"{name} weight {i}")


# ---- nested models: a model used as a layer -------------------------------------------------
def _nested_models(K):
    """The same nested models in Keras or fastnn: a functional model using a Sequential (with
    BatchNormalization and a frozen Dense) and a functional model as layers, a Sequential
    holding a Sequential (given no Input: the outer one builds it), and a Sequential holding
    a functional graph."""
    L = K.layers
    # a frozen layer and moving statistics before trainable weights: the legacy .h5 order
    # (all trainable weights of the inner model first) differs from the weights' order
    inner = K.Sequential([K.Input(shape=(6,)),
                          L.Dense(8, activation="relu", name="frozen", trainable=False),
                          L.BatchNormalization(name="bn"), L.Dense(5, name="a")],
                         name="inner_seq")
    fi = K.Input(shape=(5,), name="fi")
    inner_f = K.Model(fi, L.Dense(4, activation="tanh", name="fd")(fi), name="inner_fun")
    x = K.Input(shape=(6,), name="x")
    h = inner(x)
    joined = L.Concatenate(name="cat")([inner_f(h), h])
    outer = K.Model(x, L.Dense(3, activation="softmax", name="out")(joined), name="outer")
    seq = K.Sequential([K.Input(shape=(6,)),
                        K.Sequential([L.Dense(4, activation="relu", name="s1"),
                                      L.BatchNormalization(name="sbn"),
                                      L.Dense(4, name="s1b")], name="sub"),
                        L.Dense(2, name="s2")], name="outer_seq")
    gi = K.Input(shape=(6,), name="gi")
    # (no bias before the BatchNormalization: its gradient is float noise that Adam scales up)
    g = L.BatchNormalization(name="gbn")(L.Dense(4, use_bias=False, name="g1")(gi))
    branch = K.Model(gi, L.Add(name="gadd")([L.Dense(4, name="g2")(g), g]), name="branch")
    mixed = K.Sequential([K.Input(shape=(6,)), branch, L.Dense(2, name="m2")], name="mixed")
    return {"functional": outer, "sequential": seq, "mixed": mixed}


def _nested_data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 2, 16)


def _keras_nested(keras, tmp_path, kind):
    """Keras's nested model, trained one epoch (moving statistics, optimizer state), saved
    in the three formats; returns the model and the paths."""
    keras.utils.set_random_seed(3)
    model = _nested_models(keras)[kind]
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = _nested_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    paths = {fmt: str(tmp_path / f"keras_{kind}{fmt}") for fmt in (".keras", ".h5",
                                                                   ".weights.h5")}
    model.save(paths[".keras"])
    model.save(paths[".h5"])
    model.save_weights(paths[".weights.h5"])
    return model, paths


@pytest.mark.parametrize("kind", ["functional", "sequential", "mixed"])
def test_nested_models_keras_writes_fastnn_reads(tmp_path, kind):
    keras = pytest.importorskip("keras")
    theirs, paths = _keras_nested(keras, tmp_path, kind)
    x, _ = _nested_data()
    expected = keras.ops.convert_to_numpy(theirs.predict(x, verbose=0))
    inner_names = [layer.name for layer in theirs.layers]
    for fmt in (".keras", ".h5"):
        model = fastnn.models.load_model(paths[fmt])
        assert [layer.name for layer in model.layers] == inner_names
        assert model.optimizer.iterations == 2
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5,
                                   err_msg=fmt)
        for mine, var in zip(model.get_weights(), theirs.weights):
            np.testing.assert_array_equal(mine, keras.ops.convert_to_numpy(var))
    for fmt in (".weights.h5", ".h5", ".keras"):
        model = _nested_models(fastnn)[kind]
        model.load_weights(paths[fmt])
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5,
                                   err_msg=f"load_weights {fmt}")
    # the optimizer state came along in Keras's order: one more step is Keras's step
    model = fastnn.models.load_model(paths[".keras"])
    _, y = _nested_data()
    model.train_on_batch(x, y)
    theirs.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["functional", "sequential", "mixed"])
def test_nested_models_fastnn_writes_keras_reads(tmp_path, kind):
    keras = pytest.importorskip("keras")
    fastnn.utils.set_random_seed(5)
    model = _nested_models(fastnn)[kind]
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    x, y = _nested_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    expected = model.predict(x, verbose=0)
    for fmt in (".keras", ".h5"):
        path = str(tmp_path / f"ours{fmt}")
        model.save(path)
        theirs = keras.models.load_model(path)
        assert [layer.name for layer in theirs.layers] == [layer.name for layer in model.layers]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                                   expected, atol=1e-5, err_msg=fmt)
        assert int(keras.ops.convert_to_numpy(theirs.optimizer.iterations)) == 2
    path = str(tmp_path / "ours.weights.h5")
    model.save_weights(path)
    keras.utils.set_random_seed(9)
    theirs = _nested_models(keras)[kind]
    theirs.load_weights(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                               expected, atol=1e-5)
    # and one training step from the loaded .keras is the same step in both
    path = str(tmp_path / "ours.keras")
    theirs, again = keras.models.load_model(path), fastnn.models.load_model(path)
    theirs.train_on_batch(x, y)
    again.train_on_batch(x, y)
    for a, b in zip(again.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)


def test_nested_model_configs_in_keras_form(tmp_path):
    """get_config / from_config / to_json of nested models: the entries Keras writes
    (class, name, the inner model's layers, the calls), and a round trip that predicts the
    same."""
    keras = pytest.importorskip("keras")
    ours, theirs = _nested_models(fastnn), _nested_models(keras)

    def outline(config):
        return [(e["class_name"], e["config"]["name"],
                 [(i["class_name"], i["config"]["name"]) for i in e["config"].get("layers", [])
                  if i["class_name"] != "InputLayer"],
                 [[a["config"]["keras_history"] for a in (n["args"][0] if isinstance(
                     n["args"][0], list) else [n["args"][0]])] for n in e.get("inbound_nodes",
                                                                             [])])
                for e in config["layers"] if e["class_name"] != "InputLayer"]
    for kind in ("functional", "sequential", "mixed"):
        mine = ours[kind].get_config()
        keras_config = json.loads(theirs[kind].to_json())["config"]     # (tuples as lists)
        assert outline(mine) == outline(keras_config), kind
        for key in ("input_layers", "output_layers"):
            assert mine.get(key) == keras_config.get(key)
        for entry, theirs_entry in zip(mine["layers"], keras_config["layers"]):
            if entry["class_name"] in ("Sequential", "Functional"):   # the entry's own keys
                assert {k: v for k, v in entry.items() if k != "config"} == \
                    {k: v for k, v in theirs_entry.items() if k != "config"}
        clone = type(ours[kind]).from_config(mine)
        assert clone.get_config() == mine
        again = fastnn.models.model_from_json(ours[kind].to_json())
        assert again.get_config() == mine
        again.set_weights(ours[kind].get_weights())
        x, _ = _nested_data()
        np.testing.assert_array_equal(again.predict(x, verbose=0),
                                      ours[kind].predict(x, verbose=0))
        # Keras reads fastnn's config, and fastnn Keras's
        keras.models.model_from_json(ours[kind].to_json())
        fastnn.models.model_from_json(theirs[kind].to_json())


# ---- Lambda -----------------------------------------------------------------------------------
@fastnn.saving.register_keras_serializable(package="fastnn_tests")
def _cubed(x):
    return x * x * x


def _lambda_model(K, fn=None, weighted=True):
    """Lambdas in a functional model: bytecode with arguments= and output_shape= (a shape, a
    function), a lambda closing over a value, a NumPy argument, and a named function."""
    L = K.layers
    scale = 0.5
    x = K.Input(shape=(5,), name="x")
    h = L.Dense(6, name="d1")(x)
    h = L.Lambda(lambda t: t * t + 0.5 * t, name="poly")(h)
    h = L.Lambda(lambda t, k: t * k - 1.0, arguments={"k": 0.5}, output_shape=(6,),
                 name="affine")(h)
    h = L.Lambda(lambda t: t * scale, output_shape=lambda shape: shape, name="closure")(h)
    if weighted:    # (Keras on torch cannot train through tensor * ndarray)
        h = L.Lambda(lambda t, w: t * w, name="weighted",
                     arguments={"w": np.linspace(0.5, 1.5, 6, dtype="float32")})(h)
    h = L.Lambda(fn or (lambda t: t), name="named")(h)
    return K.Model(x, L.Dense(3, name="out")(h), name="with_lambdas")


# torch's Tensor.__array_wrap__ warns when Keras on torch runs the lambda's tensor * ndarray
_KERAS_TORCH_NDARRAY = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning")


def _same_weights(keras, theirs, ours):
    ours.set_weights([keras.ops.convert_to_numpy(w) for w in theirs.get_weights()])


@_KERAS_TORCH_NDARRAY
def test_lambda_files_from_keras_need_safe_mode_false(tmp_path):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(1)
    theirs = _lambda_model(keras)
    x = 0.5 * np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(theirs.predict(x, verbose=0))
    for fmt in (".keras", ".h5"):
        path = str(tmp_path / f"lambdas{fmt}")
        theirs.save(path)
        with pytest.raises(ValueError, match=r"layers\[2\].*Python lambda.*safe_mode=False"):
            fastnn.models.load_model(path)
        model = fastnn.models.load_model(path, safe_mode=False)
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5,
                                   err_msg=fmt)
    config = model.get_config()
    with pytest.raises(ValueError, match="safe_mode=False"):
        fastnn.Model.from_config(config)
    with pytest.raises(ValueError, match="safe_mode=False"):
        fastnn.models.model_from_json(model.to_json())
    again = fastnn.models.model_from_json(model.to_json(), safe_mode=False)
    again.set_weights(model.get_weights())
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)
    clone = fastnn.Model.from_config(config, safe_mode=False)
    assert clone.get_config() == config


@_KERAS_TORCH_NDARRAY
def test_lambda_files_from_fastnn_load_in_keras(tmp_path):
    keras = pytest.importorskip("keras")
    fastnn.utils.set_random_seed(2)
    ours = _lambda_model(fastnn, _cubed)
    x = 0.5 * np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    expected = ours.predict(x, verbose=0)
    named = ours.get_layer("named").get_config()["function"]
    assert named == {"module": "builtins", "class_name": "function",
                     "config": "fastnn_tests>_cubed", "registered_name": "function"}
    assert ours.get_layer("poly").get_config()["function"]["class_name"] == "__lambda__"
    assert ours.get_layer("affine").get_config()["output_shape"] == [6]
    assert ours.get_layer("closure").get_config()["function"]["config"]["closure"] == [0.5]
    assert ours.get_layer("closure").get_config()["output_shape"]["class_name"] == "__lambda__"
    assert ours.get_layer("weighted").get_config()["arguments"]["w"]["class_name"] == \
        "__numpy__"
    for fmt in (".keras", ".h5"):
        path = str(tmp_path / f"ours{fmt}")
        ours.save(path)
        theirs = keras.models.load_model(path, safe_mode=False,
                                         custom_objects={"fastnn_tests>_cubed": _keras_cubed})
        np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs.predict(x, verbose=0)),
                                   expected, atol=1e-5, err_msg=fmt)
        again = fastnn.models.load_model(path, safe_mode=False)
        assert again.get_layer("named").function is _cubed
        np.testing.assert_array_equal(again.get_layer("weighted").arguments["w"],
                                      np.linspace(0.5, 1.5, 6, dtype="float32"))
        np.testing.assert_array_equal(again.predict(x, verbose=0), expected)


def _keras_cubed(x):
    return x * x * x


def test_a_model_with_lambdas_trains_as_in_keras():
    """The lambdas run on fastnn's autodiff: two SGD steps move every weight as Keras's."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    theirs = _lambda_model(keras, _keras_cubed, weighted=False)
    ours = _lambda_model(fastnn, _cubed, weighted=False)
    _same_weights(keras, theirs, ours)
    before = ours.get_layer("d1").get_weights()[0]
    rng = np.random.default_rng(3)
    x = 0.5 * rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.standard_normal((8, 3))
    for model, K in ((theirs, keras), (ours, fastnn)):
        model.compile(K.optimizers.SGD(0.01), "mse")
        for _ in range(2):
            model.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)
    assert not np.allclose(ours.get_layer("d1").get_weights()[0], before)   # it trained


def test_lambda_named_functions_resolve_by_registered_name_only(tmp_path):
    def unregistered(t):
        return t + 1.0
    inputs = fastnn.Input(shape=(3,))
    model = fastnn.Model(inputs, fastnn.layers.Lambda(unregistered, name="u")(inputs))
    path = tmp_path / "u.keras"
    model.save(path)
    for safe_mode in (True, False):     # never imported from a module, safe or not
        with pytest.raises(ValueError, match=r"unknown function 'unregistered'.*"
                           r"register_keras_serializable"):
            fastnn.models.load_model(path, safe_mode=safe_mode)
    with pytest.raises(TypeError, match="safe_mode must be True, False or None"):
        fastnn.models.load_model(path, safe_mode="no")
    loaded = fastnn.models.load_model(path, custom_objects={"unregistered": unregistered})
    np.testing.assert_array_equal(loaded.predict(np.ones((2, 3)), verbose=0), 2.0)
    # Keras's activations by name, as its builtins ("relu" -> the relu op, differentiable)
    relu = fastnn.Model(inputs, fastnn.layers.Lambda(fastnn.ops.relu)(inputs))
    relu.save(tmp_path / "relu.keras")
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(fastnn.models.load_model(tmp_path / "relu.keras").predict(
        x, verbose=0), np.maximum(x, 0))
    with pytest.raises(NotImplementedError, match="mask"):
        fastnn.layers.Lambda(lambda t: t, mask=lambda t, m: m)
    with pytest.raises(ValueError, match=r"closes over.*JSON"):
        big = object()
        fastnn.layers.Lambda(lambda t: t if big else t).get_config()


def test_weights_files_carry_the_optimizer_state_as_keras_s(tmp_path):
    """save_weights writes the optimizer's variables (Keras's layout); load_weights restores
    them into a built optimizer that fits, and warns and keeps its own (as Keras) when the
    optimizer differs."""
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32)

    def make(opt):
        m = fastnn.Sequential([fastnn.Input(shape=(4,)), fastnn.layers.Dense(3)])
        m.compile(opt, "sparse_categorical_crossentropy")
        return m

    a = make(fastnn.optimizers.Adam(0.01))
    a.fit(x, y, batch_size=8, verbose=0)
    path = str(tmp_path / "a.weights.h5")
    a.save_weights(path)
    b = make(fastnn.optimizers.Adam(0.01))
    b.fit(x[:8], y[:8], batch_size=8, verbose=0)            # built, another state
    b.load_weights(path)
    assert b.optimizer.iterations == a.optimizer.iterations == 4
    for u, v in zip(b.optimizer.variables(), a.optimizer.variables()):
        np.testing.assert_array_equal(u, v)
    c = make(fastnn.optimizers.SGD(0.1, momentum=0.9))
    c.fit(x[:8], y[:8], batch_size=8, verbose=0)
    with pytest.warns(UserWarning, match="skipping variable loading for optimizer 'sgd'"):
        c.load_weights(path)
    for u, v in zip(c.get_weights(), a.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert c.optimizer.iterations == 1


@pytest.mark.parametrize("several", [False, True])
def test_loss_weights_train_as_keras_and_are_saved_both_ways(tmp_path, several):
    """loss_weights scale each output's loss (one output's too), in the loss Keras reports
    and trains on; compile_config keeps them as given, and each side loads the other's."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = [(x[:, 0] > 0).astype(np.int64), x[:, 1:3] * 0.5]

    def build(K):
        inputs = K.Input((5,))
        h = K.layers.Dense(4, activation="tanh", name="h")(inputs)
        cls = K.layers.Dense(2, activation="softmax", name="cls")(h)
        if not several:
            model = K.Model(inputs, cls)
            model.compile(K.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                          loss_weights=0.25)
            return model
        reg = K.layers.Dense(2, name="reg")(h)
        model = K.Model(inputs, [cls, reg])
        model.compile(K.optimizers.SGD(0.1), ["sparse_categorical_crossentropy", "mse"],
                      loss_weights={"cls": 0.3, "reg": 2.0})
        return model

    theirs, ours = build(keras), build(fastnn)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    target = y if several else y[0]
    kw = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)
    h_theirs, h_ours = theirs.fit(x, target, **kw).history, ours.fit(x, target, **kw).history
    np.testing.assert_allclose(h_ours["loss"], h_theirs["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
    for writer, reader in ((ours, keras), (theirs, fastnn)):
        path = str(tmp_path / f"{type(writer).__module__.split('.')[0]}.keras")
        writer.save(path)
        loaded = reader.models.load_model(path)
        np.testing.assert_allclose(loaded.evaluate(x, target, verbose=0),
                                   writer.evaluate(x, target, verbose=0), rtol=1e-5)
