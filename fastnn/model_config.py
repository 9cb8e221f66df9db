"""Model configs as Keras writes them (config.json, to_json, a legacy .h5's model_config):
checking one before anything is built (every malformed entry raises TypeError / ValueError
naming its path and the value; class names resolve only against fastnn's own layers and
registered custom objects), and a model's compile config, written and read back. Knows no model
class: fastnn.models builds the models."""
from . import _config as C
from . import activations, initializers, layers, losses, optimizers, registry
from . import metrics as metrics_module

MAX_NESTING = 32           # models used as layers of models used as layers of ... in a config


def compile_config(model):
    """The model's compile config as Keras writes it (None when it is not compiled)."""
    if not model.compiled:
        return None
    metrics = [metrics_module.serialize(m) for m in model._metric_specs]
    loss = None if model.loss is None else losses.serialize(model.loss)
    spec = model.__dict__.get("_loss_spec")       # one loss per output, as given
    if isinstance(spec, dict):
        loss = {name: None if x is None else losses.serialize(losses.get(x))
                for name, x in spec.items()}
    elif spec is not None:
        loss = [None if x is None else losses.serialize(losses.get(x)) for x in spec]
    return {"optimizer": optimizers.serialize(model.optimizer), "loss": loss,
            "loss_weights": model.__dict__.get("_loss_weights_spec"),
            "metrics": metrics or None, "weighted_metrics": None,
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def _check_dtype(value, path):
    """A layer's dtype: null, "float32", or Keras's policy object naming float32."""
    if value is None or value == "float32":
        return
    if isinstance(value, dict):
        name, cfg = C.object_spec(value, path, "dtype policy")
        if name in ("DTypePolicy", "FloatDTypePolicy") and cfg.get("name") == "float32":
            return
    C.fail_value(path, 'dtype "float32" (the only one fastnn computes in)', value)


def _check_activation(value, path):
    if isinstance(value, dict):
        activations.deserialize(value, path=path)
        return
    try:
        activations.get(value)
    except (TypeError, ValueError) as exc:
        raise C.prefixed(exc, path) from None


def _check_initializer(value, path):
    if isinstance(value, dict):
        initializers.deserialize(value, path=path)
        return
    if not isinstance(value, str):
        C.fail_type(path, "an initializer name or its serialized form (a JSON object)", value)
    try:
        initializers.get(value)
    except ValueError as exc:
        raise C.prefixed(exc, path) from None


def _number(value, path):
    C.expect_number(value, path)


def _bool_or_none(value, path):
    if value is not None:
        C.expect_bool(value, path)


# The JSON type of every layer argument fastnn reads; the layer's constructor then checks the
# value itself (and rejects unknown keys, naming them).
def _check_padding(value, path):
    """A convolution's padding name, or ZeroPadding2D's / Cropping2D's sizes: an int, a pair,
    or a pair of pairs."""
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        for i, pair in enumerate(value):
            C.expect_ints(pair, f"{path}[{i}]", 0)
    else:
        C.expect_ints(value, path, 0)


def _check_scale(value, path):
    """BatchNormalization's scale (a bool) or Rescaling's (a number or a list of numbers)."""
    if isinstance(value, bool):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            C.expect_number(v, f"{path}[{i}]")
        return
    C.expect_number(value, path)


_LAYER_KEYS = {
    "name": lambda v, p: C.expect_str(v, p), "trainable": C.expect_bool, "dtype": _check_dtype,
    "units": lambda v, p: C.expect_int(v, p, 1), "filters": lambda v, p: C.expect_int(v, p, 1),
    "activation": _check_activation, "use_bias": C.expect_bool, "center": C.expect_bool,
    "scale": _check_scale, "keepdims": C.expect_bool, "sparse": _bool_or_none,
    "ragged": _bool_or_none, "optional": _bool_or_none,
    "kernel_size": lambda v, p: C.expect_ints(v, p, 1),
    "strides": lambda v, p: v is None or C.expect_ints(v, p, 1),
    "pool_size": lambda v, p: C.expect_ints(v, p, 1),
    "dilation_rate": lambda v, p: C.expect_ints(v, p, 1),
    "groups": lambda v, p: C.expect_int(v, p, 1),
    "axis": C.expect_ints, "padding": _check_padding, "cropping": _check_padding,
    "data_format": lambda v, p: C.expect_str(v, p, none_ok=True),
    "rate": _number, "momentum": _number, "epsilon": _number, "negative_slope": _number,
    "seed": lambda v, p: C.expect_int(v, p, 0, none_ok=True),
    "noise_shape": lambda v, p: C.expect_shape(v, p),
    "batch_shape": C.expect_shape, "batch_input_shape": C.expect_shape,
    "input_shape": C.expect_shape, "shape": C.expect_shape,
    "batch_size": lambda v, p: C.expect_int(v, p, 1, none_ok=True),
    "input_dim": lambda v, p: C.expect_int(v, p, 1),
    **{f"{k}_initializer": _check_initializer
       for k in ("kernel", "bias", "beta", "gamma", "moving_mean", "moving_variance")},
}


def _check_layer_entry(entry, path):
    """One entry of config.layers: its class resolves against fastnn's layers only, every key
    has the right type, and its constructor accepts it (a dry run: building nothing)."""
    C.expect_dict(entry, path)
    class_name = C.expect_str(C.get_key(entry, "class_name", path), f"{path}.class_name")
    for key in ("module", "registered_name"):
        if key in entry:
            C.expect_str(entry[key], f"{path}.{key}", none_ok=True)
    if class_name in ("Sequential", "Functional", "Model") and \
            registry.lookup(class_name, entry.get("registered_name")) is None:
        if path.count(".layers[") > MAX_NESTING:
            raise ValueError(f"{path}: models nested more than {MAX_NESTING} deep")
        check_model_config(entry, path)        # a model used as a layer
        cc = entry.get("compile_config")
        if cc is not None and C.expect_dict(cc, f"{path}.compile_config"):
            compile_args(cc, f"{path}.compile_config")
        return
    try:
        cls = layers.get_class(class_name, entry.get("registered_name"))
    except ValueError as exc:
        raise C.prefixed(exc, f"{path}.class_name") from None
    cfg = C.expect_dict(C.get_key(entry, "config", path), f"{path}.config")
    if "build_config" in entry and entry["build_config"] is not None:
        C.expect_dict(entry["build_config"], f"{path}.build_config")
    for key, value in cfg.items():
        check = _LAYER_KEYS.get(key)
        if key == "dtype" and cls is layers.InputLayer:
            continue        # an input may be integer (InputLayer checks its dtype itself)
        if check is not None:
            check(value, f"{path}.config.{key}")
    trial = dict(cfg)
    if not trial.get("name"):
        trial["name"] = "fastnn_config_check"     # no automatic name is used up by the dry run
    try:
        cls.from_config(trial)
    except (TypeError, ValueError) as exc:
        raise C.prefixed(exc, f"{path}.config ({class_name})") from None


def check_sequential_config(cfg, path="config"):
    """Check a Sequential config (what Sequential.get_config returns; Sequential.from_config's
    argument) without building anything: every malformed entry raises TypeError / ValueError
    naming its path under `path` and the value; class names resolve only against fastnn's own
    layers.

    Args:
        cfg: The config dict.
        path: Where the config is, for error messages. Defaults to `"config"`.
    """
    C.expect_dict(cfg, path)
    if "name" in cfg:
        C.expect_str(cfg["name"], f"{path}.name", none_ok=True)
    if "trainable" in cfg:
        C.expect_bool(cfg["trainable"], f"{path}.trainable")
    if "dtype" in cfg:
        _check_dtype(cfg["dtype"], f"{path}.dtype")
    shape = cfg.get("build_input_shape")
    if shape is not None:
        C.expect_shape(shape, f"{path}.build_input_shape")
        if not shape:
            C.fail_value(f"{path}.build_input_shape", "a shape with a batch axis", shape)
    for i, entry in enumerate(C.expect_list(C.get_key(cfg, "layers", path), f"{path}.layers")):
        _check_layer_entry(entry, f"{path}.layers[{i}]")


def _history(value, path, layers):
    """A keras_history [layer name, node index, tensor index] naming a layer of the config."""
    C.expect_list(value, path)
    if len(value) != 3:
        C.fail_value(path, "[layer name, node index, tensor index]", value)
    C.expect_str(value[0], f"{path}[0]")
    C.expect_int(value[1], f"{path}[1]", 0)
    C.expect_int(value[2], f"{path}[2]", 0)
    if value[0] not in layers:
        C.fail_value(f"{path}[0]", "the name of a layer in config.layers", value[0])


def check_functional_config(cfg, path="config"):
    """Check a Functional config (get_config's form; from_config's argument) without building
    anything: layer entries as for Sequential, plus each call's input tensors and the model's
    input and output tensors naming layers of the config.

    Args:
        cfg: The config dict.
        path: Where the config is, for error messages. Defaults to `"config"`.
    """
    C.expect_dict(cfg, path)
    if "name" in cfg:
        C.expect_str(cfg["name"], f"{path}.name", none_ok=True)
    if "trainable" in cfg:
        C.expect_bool(cfg["trainable"], f"{path}.trainable")
    entries = C.expect_list(C.get_key(cfg, "layers", path), f"{path}.layers")
    names = set()
    for i, entry in enumerate(entries):
        _check_layer_entry(entry, f"{path}.layers[{i}]")
        name = C.expect_str(C.get_key(entry, "name", f"{path}.layers[{i}]"),
                            f"{path}.layers[{i}].name")
        if name in names:
            C.fail_value(f"{path}.layers[{i}].name", "a name no other layer has", name)
        names.add(name)
    for i, entry in enumerate(entries):
        where = f"{path}.layers[{i}].inbound_nodes"
        # Keras writes training=True into calls of the layers whose call() defaults to it
        # (the image preprocessing layers); a model's fit/predict/evaluate decide it there.
        cls = registry.lookup(entry["class_name"], entry.get("registered_name")) or \
            vars(layers).get(entry["class_name"])
        training_default = getattr(cls, "keras_training_default", False)
        for j, node in enumerate(C.expect_list(entry.get("inbound_nodes", []), where)):
            C.expect_dict(node, f"{where}[{j}]")
            args = C.expect_list(C.get_key(node, "args", f"{where}[{j}]"), f"{where}[{j}].args")
            if len(args) != 1:
                C.fail_value(f"{where}[{j}].args", "one argument (a tensor or a list)", args)
            kwargs = node.get("kwargs") or {}
            C.expect_dict(kwargs, f"{where}[{j}].kwargs")
            # a recurrent layer's initial states: further tensors of the call
            states = kwargs.get("initial_state") if getattr(cls, "tape_only", False) else None
            states = [] if states is None else states if isinstance(states, list) else [states]
            extra = {k: v for k, v in kwargs.items() if v is not None and
                     not (k == "training" and v in (False, training_default)) and
                     not (k == "initial_state" and states)}
            if extra:
                C.fail_value(f"{where}[{j}].kwargs", "no call arguments fastnn would ignore "
                             "(mask, training=True, ...)", extra)
            specs = args[0] if isinstance(args[0], list) else [args[0]]
            places = [f"{where}[{j}].args[0]" + (f"[{k}]" if isinstance(args[0], list) else "")
                      for k in range(len(specs))]
            places += [f"{where}[{j}].kwargs.initial_state[{k}]" for k in range(len(states))]
            for spec, at in zip(specs + states, places):
                C.expect_dict(spec, at)
                if spec.get("class_name") != "__keras_tensor__":
                    C.fail_value(f"{at}.class_name", '"__keras_tensor__"', spec.get("class_name"))
                tensor = C.expect_dict(C.get_key(spec, "config", at), f"{at}.config")
                _history(C.get_key(tensor, "keras_history", f"{at}.config"),
                         f"{at}.config.keras_history", names)
    for key in ("input_layers", "output_layers"):
        value = C.expect_list(C.get_key(cfg, key, path), f"{path}.{key}")
        for k, spec in enumerate(value if value and isinstance(value[0], list) else [value]):
            _history(spec, f"{path}.{key}" + (f"[{k}]" if value and isinstance(value[0], list)
                                                else ""), names)


def check_model_config(config, root):
    """config.json's top level (or a legacy .h5's model_config) and the model config in it."""
    C.expect_dict(config, root)
    class_name = C.get_key(config, "class_name", root)
    if class_name not in ("Sequential", "Functional", "Model"):
        C.expect_str(class_name, f"{root}.class_name")
        C.fail_value(f"{root}.class_name", '"Sequential" or "Functional" (fastnn loads '
                     "these models)", class_name)
    if class_name == "Sequential":
        check_sequential_config(C.get_key(config, "config", root), f"{root}.config")
    else:
        check_functional_config(C.get_key(config, "config", root), f"{root}.config")
    if config.get("build_config") is not None:
        C.expect_dict(config["build_config"], f"{root}.build_config")


def compile_args(cc, path, optimizer_key="optimizer"):
    """compile_config -> the arguments of model.compile, each checked and resolved, with errors
    naming the key (the optimizer's: optimizer_key, as the file names it)."""
    C.expect_dict(cc, path)
    optimizer = optimizers.deserialize(C.get_key(cc, optimizer_key, path),
                                       path=f"{path}.{optimizer_key}")
    spec, loss = cc.get("loss"), None

    def one_loss(value, where):
        if value is None:
            return None
        if not isinstance(value, dict):
            C.expect_str(value, where)
        return losses.deserialize(value, path=where)     # errors name the key

    if isinstance(spec, list):          # one per output
        loss = [one_loss(v, f"{path}.loss[{i}]") for i, v in enumerate(spec)]
    elif isinstance(spec, dict) and "class_name" not in spec:       # by output name
        loss = {k: one_loss(v, f"{path}.loss[{k!r}]") for k, v in spec.items()}
    else:
        loss = one_loss(spec, f"{path}.loss")
    metrics = cc.get("metrics")
    if metrics is not None:
        metrics = [metrics_module.deserialize(m, f"{path}.metrics[{i}]")
                   for i, m in enumerate(C.expect_list(metrics, f"{path}.metrics"))]
    if cc.get("weighted_metrics") not in (None, [], {}):
        C.fail_value(f"{path}.weighted_metrics", "null (weighted_metrics are not supported by "
                     "fastnn yet)", cc["weighted_metrics"])
    loss_weights = cc.get("loss_weights")
    if loss_weights is not None:
        where = f"{path}.loss_weights"
        values = loss_weights.values() if isinstance(loss_weights, dict) else \
            C.expect_list(loss_weights, where) if not C.is_number(loss_weights) else []
        for value in values:
            C.expect_number(value, where, none_ok=True)
    return {"optimizer": optimizer, "loss": loss, "metrics": metrics,
            "loss_weights": loss_weights}
