"""Crafted configs (issue 14, item 9): every malformed entry of a .keras file's config.json (or a
legacy .h5's model_config / training_config) raises TypeError or ValueError naming where it sits
and the value, never KeyError / AttributeError / "unhashable type", and nothing named in a file
is ever executed."""
import json
import zipfile

import numpy as np
import pytest

from fastnn import activations, initializers, optimizers
from fastnn.layers import Dense
from fastnn.models import Sequential, load_model

NAN = float("nan")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(3)])
    m.compile("adam", "mse", metrics=["mae"])
    m.fit(np.ones((8, 4), np.float32), np.ones((8, 3), np.float32), verbose=0)
    path = folder / "good.keras"
    m.save(path)
    m.save(folder / "good.h5")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    return path, members


def write(path, members, config_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, config_bytes if name == "config.json" else body)


def layer(i):
    return lambda c: c["config"]["layers"][i]


def dense(c):
    return c["config"]["layers"][1]["config"]


def opt(c):
    return c["compile_config"]["optimizer"]


def setter(get, key, value):
    def mutate(c):
        get(c)[key] = value
    return mutate


def deleter(get, key):
    def mutate(c):
        del get(c)[key]
    return mutate


def replace(value):
    return lambda c: value


L1 = "config.layers[1]"
CASES = [
    # (id, mutation of the config dict (returning a replacement, or None), text in the error)
    ("top-level-list", replace([]), "config.json"),
    ("top-level-string", replace("Sequential"), "config.json"),
    ("no-class_name", deleter(lambda c: c, "class_name"), "class_name"),
    ("class_name-functional", setter(lambda c: c, "class_name", "Functional"),
     "missing key 'name'"),
    ("class_name-dict", setter(lambda c: c, "class_name", {"a": 1}), "class_name"),
    ("no-config", deleter(lambda c: c, "config"), "'config'"),
    ("config-list", setter(lambda c: c, "config", [1, 2]), "config.json.config"),
    ("no-layers", deleter(lambda c: c["config"], "layers"), "layers"),
    ("layers-dict", setter(lambda c: c["config"], "layers", {"a": 1}), "config.layers"),
    ("layers-string", setter(lambda c: c["config"], "layers", "dense"), "config.layers"),
    ("layer-string", lambda c: c["config"]["layers"].__setitem__(1, "Dense"), L1),
    ("layer-no-class_name", deleter(layer(1), "class_name"), f"{L1}: missing key 'class_name'"),
    ("layer-class-eval", setter(layer(1), "class_name", "eval"), "'eval'"),
    ("layer-class-dict", setter(layer(1), "class_name", {"x": 1}), f"{L1}.class_name"),
    ("layer-module-dict", setter(layer(1), "module", {"x": 1}), f"{L1}.module"),
    ("layer-no-config", deleter(layer(1), "config"), f"{L1}: missing key 'config'"),
    ("layer-config-list", setter(layer(1), "config", [8]), f"{L1}.config"),
    ("units-string", setter(dense, "units", "8"), f"{L1}.config.units"),
    ("units-float", setter(dense, "units", 8.5), f"{L1}.config.units"),
    ("units-negative", setter(dense, "units", -1), f"{L1}.config.units"),
    ("units-bool", setter(dense, "units", True), f"{L1}.config.units"),
    ("activation-dict", setter(dense, "activation", {"x": 1}), f"{L1}.config.activation"),
    ("activation-list", setter(dense, "activation", ["relu"]), f"{L1}.config.activation"),
    ("activation-eval", setter(dense, "activation", "eval"), "'eval'"),
    ("activation-function-os", setter(dense, "activation", {
        "module": "os", "class_name": "function", "config": "system"}), "'system'"),
    ("activation-number", setter(dense, "activation", 3), f"{L1}.config.activation"),
    ("init-class-eval", setter(dense, "kernel_initializer", {"class_name": "eval"}),
     f"{L1}.config.kernel_initializer.class_name"),
    ("init-no-class_name", setter(dense, "kernel_initializer", {"config": {}}),
     f"{L1}.config.kernel_initializer: missing key 'class_name'"),
    ("init-stddev-string", setter(dense, "kernel_initializer", {
        "class_name": "RandomNormal", "config": {"stddev": "big"}}),
     "kernel_initializer.config.stddev"),
    ("init-unknown-key", setter(dense, "kernel_initializer", {
        "class_name": "RandomNormal", "config": {"evil": 1}}), "'evil'"),
    ("init-config-list", setter(dense, "kernel_initializer", {
        "class_name": "RandomNormal", "config": [1]}), "kernel_initializer.config"),
    ("init-scale-nan", setter(dense, "kernel_initializer", {
        "class_name": "VarianceScaling", "config": {"scale": NAN}}),
     "kernel_initializer.config.scale"),
    ("init-seed-string", setter(dense, "kernel_initializer", {
        "class_name": "GlorotUniform", "config": {"seed": "1"}}), "kernel_initializer.config.seed"),
    ("init-number", setter(dense, "kernel_initializer", 42), f"{L1}.config.kernel_initializer"),
    ("init-name-unknown", setter(dense, "bias_initializer", "evil"), "'evil'"),
    ("use_bias-string", setter(dense, "use_bias", "no"), f"{L1}.config.use_bias"),
    ("trainable-string", setter(dense, "trainable", "false"), f"{L1}.config.trainable"),
    ("name-dict", setter(dense, "name", {"a": 1}), f"{L1}.config.name"),
    ("dtype-float64", setter(dense, "dtype", "float64"), f"{L1}.config.dtype"),
    ("dtype-policy-float16", setter(dense, "dtype", {
        "class_name": "DTypePolicy", "config": {"name": "float16"}}), f"{L1}.config.dtype"),
    ("unknown-layer-key", setter(dense, "exec", "print(1)"), "'exec'"),
    ("regularizer", setter(dense, "kernel_regularizer",
                           {"class_name": "L2", "config": {"l2": "big"}}),
     "kernel_regularizer.config.l2"),
    ("regularizer-class", setter(dense, "kernel_regularizer",
                                 {"class_name": "os.system", "config": {}}),
     "kernel_regularizer.class_name"),
    ("build-shape-string", setter(lambda c: c["config"], "build_input_shape", "abc"),
     "build_input_shape"),
    ("build-shape-float", setter(lambda c: c["config"], "build_input_shape", [None, 4.7]),
     "build_input_shape[1]"),
    ("build-shape-negative", setter(lambda c: c["config"], "build_input_shape", [None, -4]),
     "build_input_shape[1]"),
    ("input-batch-shape-string", setter(lambda c: layer(0)(c)["config"], "batch_shape",
                                        [None, "4"]), "config.layers[0].config.batch_shape[1]"),
    ("model-name-list", setter(lambda c: c["config"], "name", ["m"]), "config.json.config.name"),
    ("compile-config-list", setter(lambda c: c, "compile_config", [1]), "compile_config"),
    ("compile-no-optimizer", deleter(lambda c: c["compile_config"], "optimizer"),
     "compile_config: missing key 'optimizer'"),
    ("optimizer-eval", setter(lambda c: c["compile_config"], "optimizer", "eval"), "'eval'"),
    ("optimizer-number", setter(lambda c: c["compile_config"], "optimizer", 3),
     "compile_config.optimizer"),
    ("optimizer-class-dict", setter(opt, "class_name", {"a": 1}), "optimizer.class_name"),
    ("optimizer-class-unknown", setter(opt, "class_name", "Muon"), "'Muon'"),
    ("optimizer-lr-string", setter(lambda c: opt(c)["config"], "learning_rate", "fast"),
     "optimizer.config.learning_rate"),
    ("optimizer-lr-schedule", setter(lambda c: opt(c)["config"], "learning_rate", {
        "class_name": "ExponentialDecay", "config": {}}), "optimizer.config.learning_rate"),
    ("optimizer-lr-null", setter(lambda c: opt(c)["config"], "learning_rate", None),
     "optimizer.config.learning_rate"),
    ("optimizer-beta-list", setter(lambda c: opt(c)["config"], "beta_1", [0.9]),
     "optimizer.config.beta_1"),
    ("optimizer-unknown-key", setter(lambda c: opt(c)["config"], "evil", 1), "'evil'"),
    ("optimizer-use-ema-string", setter(lambda c: opt(c)["config"], "use_ema", "yes"),
     "use_ema"),
    ("optimizer-amsgrad-string", setter(lambda c: opt(c)["config"], "amsgrad", "yes"),
     "optimizer.config.amsgrad"),
    ("optimizer-config-list", setter(opt, "config", [1]), "optimizer.config"),
    ("loss-class-eval", setter(lambda c: c["compile_config"], "loss", {"class_name": "eval"}),
     "'eval'"),
    ("loss-reduction-list", setter(lambda c: c["compile_config"], "loss", {
        "class_name": "MeanSquaredError", "config": {"reduction": ["x"]}}),
     "loss.config.reduction"),
    ("loss-unknown-key", setter(lambda c: c["compile_config"], "loss", {
        "class_name": "MeanSquaredError", "config": {"evil": 1}}), "'evil'"),
    ("loss-number", setter(lambda c: c["compile_config"], "loss", 42), "compile_config.loss"),
    ("loss-dict-no-class", setter(lambda c: c["compile_config"], "loss", {"x": 1}),
     "compile_config.loss['x']"),
    ("loss-name-unknown", setter(lambda c: c["compile_config"], "loss", "evil"), "'evil'"),
    ("metrics-string", setter(lambda c: c["compile_config"], "metrics", "accuracy"),
     "compile_config.metrics"),
    ("metrics-dict", setter(lambda c: c["compile_config"], "metrics", [{"a": 1}]),
     "compile_config.metrics[0]"),
    ("metrics-unknown", setter(lambda c: c["compile_config"], "metrics", ["evil"]), "evil"),
    ("loss-weights", setter(lambda c: c["compile_config"], "loss_weights", "heavy"),
     "compile_config.loss_weights"),
    ("loss-weights-item", setter(lambda c: c["compile_config"], "loss_weights", [[2.0]]),
     "compile_config.loss_weights"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crafted_config_json(saved, tmp_path, mutate, expected):
    path, members = saved
    config = json.loads(members["config.json"])
    replaced = mutate(config)
    if replaced is not None:
        config = replaced
    crafted = tmp_path / "crafted.keras"
    write(crafted, members, json.dumps(config).encode())
    with pytest.raises((TypeError, ValueError)) as err:
        load_model(crafted)
    message = str(err.value)
    assert type(err.value) in (TypeError, ValueError), repr(err.value)
    assert expected in message, message
    assert str(crafted) in message
    assert "unhashable" not in message and "KeyError" not in message


def test_catalogue_is_large():
    assert len(CASES) >= 30


@pytest.mark.parametrize("body, expected", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"", "not valid JSON"),
])
def test_config_json_that_is_not_json(saved, tmp_path, body, expected):
    path, members = saved
    crafted = tmp_path / "crafted.keras"
    write(crafted, members, body)
    with pytest.raises(ValueError, match=expected) as err:
        load_model(crafted)
    assert str(crafted) in str(err.value)


def test_nothing_named_in_a_file_is_executed(saved, tmp_path):
    path, members = saved
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    config = json.loads(members["config.json"])
    config["config"]["layers"][1] = {"module": "os", "class_name": "system",
                                     "config": {"command": command}, "registered_name": "system"}
    for get in (lambda c: c["config"]["layers"][2]["config"],):
        get(config)["activation"] = {"module": "os", "class_name": "function",
                                     "config": "system", "registered_name": "os.system"}
    crafted = tmp_path / "crafted.keras"
    write(crafted, members, json.dumps(config).encode())
    with pytest.raises(ValueError):
        load_model(crafted)
    assert not marker.exists()
    # A pickle in the weights: refused, not unpickled.
    config = json.loads(members["config.json"])
    payload = np.empty(1, object)
    payload[0] = {"x": 1}
    weights = tmp_path / "w.npz"
    np.savez(weights, **{"layers/dense/vars/0": payload})
    crafted2 = tmp_path / "crafted2.keras"
    with zipfile.ZipFile(crafted2, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.write(weights, "model.weights.npz")
    with pytest.raises(ValueError, match="dtype object") as err:
        load_model(crafted2)
    assert str(crafted2) in str(err.value)


LEGACY_CASES = [
    ("units", lambda mc, tc: mc["config"]["layers"][1]["config"].__setitem__("units", "8"),
     "model_config.config.layers[1].config.units"),
    ("class", lambda mc, tc: mc["config"]["layers"][1].__setitem__("class_name", "eval"),
     "'eval'"),
    ("optimizer", lambda mc, tc: tc["optimizer_config"]["config"].__setitem__("beta_1", "x"),
     "training_config.optimizer_config.config.beta_1"),     # the key as Keras writes it
    ("no optimizer", lambda mc, tc: tc.pop("optimizer_config"),
     "training_config: missing key 'optimizer_config'"),
    ("loss", lambda mc, tc: tc.__setitem__("loss", {"class_name": "eval"}), "'eval'"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in LEGACY_CASES],
                         ids=[c[0] for c in LEGACY_CASES])
def test_crafted_legacy_h5(saved, tmp_path, mutate, expected):
    h5py = pytest.importorskip("h5py")
    path, _ = saved
    crafted = tmp_path / "crafted.h5"
    crafted.write_bytes((path.parent / "good.h5").read_bytes())
    with h5py.File(crafted, "r+") as f:
        mc = json.loads(f.attrs["model_config"])
        tc = json.loads(f.attrs["training_config"])
        mutate(mc, tc)
        f.attrs["model_config"] = json.dumps(mc)
        f.attrs["training_config"] = json.dumps(tc)
    with pytest.raises((TypeError, ValueError)) as err:
        load_model(crafted)
    assert expected in str(err.value) and str(crafted) in str(err.value)


# ---- the get / deserialize functions on their own ----------------------------------------------
@pytest.mark.parametrize("module, value, expected", [
    (activations, {"x": 1}, "activation"),
    (activations, [1], "Unsupported activation"),
    (initializers, {"class_name": "RandomNormal", "config": {"mean": [0]}}, "config.mean"),
    (initializers, {"class_name": ["RandomNormal"]}, "class_name"),
    (optimizers, {"class_name": "SGD", "config": {"momentum": "0.9"}}, "config.momentum"),
    (optimizers, {"config": {}}, "missing key 'class_name'"),
    (optimizers, {"class_name": "SGD", "config": {"nesterov": 1}}, "config.nesterov"),
])
def test_get_names_the_key(module, value, expected):
    with pytest.raises((TypeError, ValueError)) as err:
        module.get(value)
    assert expected in str(err.value)


def test_keras_serialized_forms_still_load():
    assert activations.get({"module": "keras.activations", "class_name": "function",
                            "config": "relu", "registered_name": "relu"}) is activations.relu
    init = initializers.get({"module": "keras.initializers", "class_name": "RandomNormal",
                             "config": {"mean": 0.0, "stddev": 0.5, "seed": 3},
                             "registered_name": None})
    assert init.stddev == 0.5 and init.seed == 3
    opt = optimizers.get({"module": "keras.optimizers", "class_name": "Adam",
                          "config": {**optimizers.Adam().get_config(), "learning_rate": 0.01},
                          "registered_name": None})
    assert isinstance(opt, optimizers.Adam) and opt.learning_rate == 0.01


def test_optimizer_ema_keys_at_defaults_are_accepted_others_refused():
    cfg = optimizers.Adam().get_config()
    assert optimizers.deserialize({"class_name": "Adam", "config": cfg}).name == "adam"
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        optimizers.deserialize({"class_name": "Adam",
                                "config": {**cfg, "gradient_accumulation_steps": 4}})


# ---- every layer fastnn has passes the checks (they must never refuse a config fastnn wrote) ---
def every_layer_model():
    from fastnn import layers as L
    conv = Sequential([
        L.Input(shape=(8, 8, 2)),
        L.Conv2D(4, 3, strides=1, padding="same", activation="relu",
                 kernel_initializer={"class_name": "HeNormal", "config": {"seed": 1}}),
        L.BatchNormalization(), L.MaxPooling2D(2), L.Conv2D(4, (2, 2)), L.ReLU(),
        L.AveragePooling2D(pool_size=(1, 1), strides=(1, 1)), L.LeakyReLU(negative_slope=0.1),
        L.GlobalAveragePooling2D(), L.Dropout(0.25, seed=3), L.Dense(5, activation="tanh"),
        L.BatchNormalization(), L.Activation("gelu"), L.Dense(3), L.Softmax()])
    flat = Sequential([L.Dense(4, input_shape=(6, 2), use_bias=False,
                               kernel_initializer="lecun_uniform"),
                       L.Flatten(), L.Dense(2, bias_initializer="ones")])
    pool = Sequential([L.Input(shape=(4, 4, 1)), L.GlobalMaxPooling2D(keepdims=True),
                       L.Flatten(), L.Dense(1, activation="sigmoid")])
    return [conv, flat, pool]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_every_layer_round_trips_through_the_checks(tmp_path, suffix):
    from fastnn.saving import check_sequential_config
    rng = np.random.default_rng(0)
    for i, m in enumerate(every_layer_model()):
        check_sequential_config(m.get_config())
        m.compile(optimizers.SGD(0.01, momentum=0.9), "mse", metrics=["mae"])
        x = rng.random((4,) + m.input_shape[1:], np.float32)
        m.fit(x, rng.random((4,) + m.output_shape[1:], np.float32), verbose=0)
        path = tmp_path / f"m{i}{suffix}"
        m.save(path)
        m2 = load_model(path)
        np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
        for a, b in zip(m.optimizer.variables(), m2.optimizer.variables()):
            np.testing.assert_array_equal(a, b)


def test_check_sequential_config_names_the_path():
    from fastnn.saving import check_sequential_config
    cfg = Sequential([Dense(3, input_shape=(2,))]).get_config()
    cfg["layers"][1]["config"]["units"] = "3"
    with pytest.raises(TypeError, match=r"^config\.layers\[1\]\.config\.units: "):
        check_sequential_config(cfg)


# ---- nested models and Lambda layers (issue 17) ----------------------------------------------
def nested_model():
    import fastnn
    inner = fastnn.Sequential([fastnn.Input(shape=(4,)), Dense(5, name="a"), Dense(3, name="b")],
                              name="inner")
    x = fastnn.Input(shape=(4,), name="x")
    return fastnn.Model(x, Dense(2, name="out")(inner(x)), name="outer")


@pytest.fixture(scope="module")
def nested_saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nested")
    m = nested_model()
    m.compile("adam", "mse")
    m.fit(np.ones((8, 4), np.float32), np.ones((8, 2), np.float32), verbose=0)
    m.save(folder / "nested.keras")
    m.save(folder / "nested.h5")
    with zipfile.ZipFile(folder / "nested.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    return folder, members


def inner_layer(i):
    return lambda c: c["config"]["layers"][1]["config"]["layers"][i]


NESTED_CASES = [
    ("unknown class", setter(inner_layer(1), "class_name", "NoSuchLayer"),
     "config.json.config.layers[1].config.layers[1].class_name: Unknown layer class "
     "'NoSuchLayer'"),
    ("units", lambda c: inner_layer(1)(c)["config"].__setitem__("units", "5"),
     "config.json.config.layers[1].config.layers[1].config.units: expected an integer"),
    ("inner config", setter(layer(1), "config", [1, 2]),
     "config.json.config.layers[1].config: expected a JSON object"),
    ("inner layers", lambda c: c["config"]["layers"][1]["config"].__setitem__("layers", 7),
     "config.json.config.layers[1].config.layers: expected a JSON array"),
    ("inner compile", setter(layer(1), "compile_config", {"optimizer": "nope"}),
     "config.json.config.layers[1].compile_config.optimizer"),
    ("deep nesting", lambda c: deep(c, 40), "nested more than 32 deep"),
]


def deep(config, levels):
    """A Sequential inside a Sequential ... `levels` deep, as the outer model's inner one."""
    entry = config["config"]["layers"][1]
    for _ in range(levels):
        entry = {"module": "keras", "class_name": "Sequential", "registered_name": None,
                 "config": {"name": None, "layers": [entry]}}
    config["config"]["layers"][1] = {**entry, "name": "inner",
                                     "inbound_nodes": config["config"]["layers"][1][
                                         "inbound_nodes"]}


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in NESTED_CASES],
                         ids=[c[0] for c in NESTED_CASES])
def test_crafted_nested_config(nested_saved, tmp_path, mutate, expected):
    folder, members = nested_saved
    config = json.loads(members["config.json"])
    mutate(config)
    crafted = tmp_path / "crafted.keras"
    write(crafted, members, json.dumps(config).encode())
    with pytest.raises((TypeError, ValueError)) as err:
        load_model(crafted)
    assert expected in str(err.value) and str(crafted) in str(err.value), str(err.value)
    if "class" in expected:
        assert "register_keras_serializable" in str(err.value)


def test_nothing_named_in_a_nested_model_or_a_lambda_is_executed(nested_saved, tmp_path):
    """A class path, a function named by module, or a lambda's bytecode inside a nested
    model: refused, and nothing runs (the marker file is never made)."""
    import base64
    import marshal
    folder, members = nested_saved
    marker = tmp_path / "pwned"
    touch = f"lambda x: open({str(marker)!r}, 'w') and x"
    code = base64.encodebytes(marshal.dumps(compile(touch, "<crafted>", "eval").co_consts[0]))
    entries = [
        {"module": "os", "class_name": "system", "config": {"command": f"touch {marker}"},
         "registered_name": "os.system"},
        {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
         "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {
             "code": code.decode(), "defaults": None, "closure": None}}, "arguments": {}}},
        {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
         "config": {"name": "evil", "function": {"module": "os", "class_name": "function",
                                                 "config": "system",
                                                 "registered_name": "os.system"},
                    "arguments": {}}},
    ]
    for i, entry in enumerate(entries):
        config = json.loads(members["config.json"])
        inner_layers = config["config"]["layers"][1]["config"]["layers"]
        inner_layers[2] = {**entry, "build_config": inner_layers[2].get("build_config")}
        crafted = tmp_path / f"crafted{i}.keras"
        write(crafted, members, json.dumps(config).encode())
        with pytest.raises(ValueError) as err:
            load_model(crafted)
        assert "config.layers[1].config.layers[2]" in str(err.value)
        if i == 1:
            assert "safe_mode=False" in str(err.value)
        if i == 2:      # a function is never imported, not even with safe_mode=False
            with pytest.raises(ValueError, match="unknown function 'system'"):
                load_model(crafted, safe_mode=False)
        assert not marker.exists()


def test_crafted_lambda_bytecode_is_refused_cleanly_even_unsafe(tmp_path):
    """With safe_mode=False, bytecode that is not Python code of this version, or not code,
    raises a ValueError naming the layer, not a crash or a SystemError."""
    import base64

    import fastnn
    inputs = fastnn.Input(shape=(2,))
    model = fastnn.Model(inputs, fastnn.layers.Lambda(lambda t: t + 1.0, name="lam")(inputs))
    config = model.get_config()
    function = config["layers"][1]["config"]["function"]["config"]
    for code, expected in ((base64.encodebytes(b"\x00garbage").decode(), "cannot be read"),
                           ("not base64 at all!", "cannot be read"),
                           (base64.encodebytes(__import__("marshal").dumps(5)).decode(),
                            "not code")):
        function["code"] = code
        with pytest.raises(ValueError, match=f"Lambda 'lam'.*{expected}"):
            fastnn.Model.from_config(config, safe_mode=False)
    config["layers"][1]["config"]["function"]["config"] = {"value": 5}  # Keras's older form
    with pytest.raises(ValueError, match="Lambda 'lam'.*cannot be read"):
        fastnn.Model.from_config(config, safe_mode=False)
    config["layers"][1]["config"]["function"]["config"] = function
    function["code"] = base64.encodebytes(__import__("marshal").dumps(
        (lambda t, k: t * k).__code__)).decode()
    function["closure"] = [1.0, 2.0]        # the code closes over nothing
    with pytest.raises(ValueError, match="Lambda 'lam'"):
        fastnn.Model.from_config(config, safe_mode=False)


def test_crafted_nested_legacy_h5_weights(nested_saved, tmp_path):
    """A nested model's legacy .h5 group with a weight missing or of another shape: an error
    naming the layer, before anything is set."""
    h5py = pytest.importorskip("h5py")
    folder, _ = nested_saved
    for change, expected in (("drop", "layer 'inner' has 3 weights in the file"),
                             ("shape", "inner/.* the model expects float32 \\(5,\\)")):
        crafted = tmp_path / f"{change}.h5"
        crafted.write_bytes((folder / "nested.h5").read_bytes())
        with h5py.File(crafted, "r+") as f:
            g = f["model_weights"]["inner"]
            names = list(g.attrs["weight_names"])
            if change == "drop":
                g.attrs["weight_names"] = names[1:]
            else:
                name = names[1].decode() if isinstance(names[1], bytes) else names[1]
                del g[name]
                g.create_dataset(name, data=np.zeros(7, np.float32))
        with pytest.raises(ValueError, match=expected):
            load_model(crafted)
