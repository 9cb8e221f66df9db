"""Saving and loading whole models (.keras zip, legacy .h5) and weights (.weights.h5).

Layouts follow Keras 3 (shared/design/KERAS_SEMANTICS.md §11): a .keras file is a zip holding
metadata.json, config.json and model.weights.h5 (datasets at layers/<snake_class>[_k]/vars/<i>
and optimizer/vars/<i>). Without h5py the weights go to model.weights.npz with the same keys.
Every file is written to a temporary name beside the target and renamed into place, so a crash
mid-save never leaves a truncated file where a good one was."""
import datetime
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from . import __version__

KERAS_VERSION = "3.15.1"   # the Keras format version these files follow


def _h5py(required_for):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{required_for} needs h5py: pip install h5py (or fastnn[io])") \
            from None
    return h5py


def _atomic_write(filepath, write, overwrite):
    filepath = os.fspath(filepath)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")
    folder = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---- flat {path: array} views of a model's state -----------------------------------------------
def _layer_keys(model):
    """Keras names layer groups by class (dense, dense_1, ...), not by layer.name."""
    from .layers import _snake_case
    counts, keys = {}, []
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        k = counts.get(base, 0)
        counts[base] = k + 1
        keys.append(base if k == 0 else f"{base}_{k}")
    return keys


def _model_arrays(model, include_optimizer=True):
    arrays = {}
    for key, layer in zip(_layer_keys(model), model.layers):
        for i, w in enumerate(layer.get_weights()):      # NumPy copies, from any backend
            arrays[f"layers/{key}/vars/{i}"] = w
    opt = model.optimizer
    if include_optimizer and opt is not None and opt.built:
        for i, v in enumerate(opt.variables()):
            arrays[f"optimizer/vars/{i}"] = v
    return arrays


def _restore_arrays(model, arrays, source):
    weights = []
    for key, layer in zip(_layer_keys(model), model.layers):
        for i in range(len(layer.weights)):
            path = f"layers/{key}/vars/{i}"
            if path not in arrays:
                raise ValueError(f"{source}: missing weight {path} for layer {layer.name!r}")
            weights.append(np.asarray(arrays[path]))
    model.set_weights(weights)
    opt_keys = sorted((k for k in arrays if k.startswith("optimizer/vars/")),
                      key=lambda k: int(k.rsplit("/", 1)[1]))
    if opt_keys and model.optimizer is not None:
        model._pack_parameters()
        model.optimizer.build(model._sizes)
        model.optimizer.set_variables([np.asarray(arrays[k]) for k in opt_keys])


def _write_h5(path, arrays, h5py):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def _read_h5(path_or_file, h5py):
    arrays = {}
    with h5py.File(path_or_file, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]
        f.visititems(visit)
    return arrays


# ---- config --------------------------------------------------------------------------------------
def _compile_config(model):
    if not model.compiled:
        return None
    from . import losses, optimizers
    metrics = [m if isinstance(m, str) else type(m).__name__ for m in model._metric_specs]
    return {"optimizer": optimizers.serialize(model.optimizer),
            "loss": None if model.loss is None else losses.serialize(model.loss),
            "loss_weights": None, "metrics": metrics or None, "weighted_metrics": None,
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def _model_config(model):
    return {"module": "keras", "class_name": "Sequential", "config": model.get_config(),
            "registered_name": None,
            "build_config": {"input_shape": list(model.input_shape or []) or None},
            "compile_config": _compile_config(model)}


def _model_from_config(config, compile):
    from .models import Sequential
    if config.get("class_name") != "Sequential":
        raise ValueError(f"Only Sequential models can be loaded, got {config.get('class_name')}")
    model = Sequential.from_config(config["config"])
    cc = config.get("compile_config")
    if compile and cc:
        model.compile(optimizer=cc["optimizer"], loss=cc["loss"], metrics=cc.get("metrics"))
    return model


# ---- public API ------------------------------------------------------------------------------------
def save_model(model, filepath, overwrite=True, include_optimizer=True, **kwargs):
    path = os.fspath(filepath)
    if path.endswith(".keras"):
        _atomic_write(path, lambda tmp: _write_keras_zip(model, tmp, include_optimizer),
                      overwrite)
    elif path.endswith((".h5", ".hdf5")):
        h5py = _h5py("saving to .h5")
        _atomic_write(path, lambda tmp: _write_legacy_h5(model, tmp, include_optimizer, h5py),
                      overwrite)
    else:
        raise ValueError(f"Invalid filepath extension for saving: {path!r}. Use a path ending "
                         "in .keras (or the legacy .h5)")


def _write_keras_zip(model, tmp, include_optimizer):
    arrays = _model_arrays(model, include_optimizer)
    metadata = {"keras_version": KERAS_VERSION, "fastnn_version": __version__,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(metadata))
        zf.writestr("config.json", json.dumps(_model_config(model)))
        try:
            import h5py
        except ImportError:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            zf.writestr("model.weights.npz", buf.getvalue())
        else:
            buf = io.BytesIO()
            _write_h5(buf, arrays, h5py)
            zf.writestr("model.weights.h5", buf.getvalue())


def _write_legacy_h5(model, tmp, include_optimizer, h5py):
    with h5py.File(tmp, "w") as f:
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["backend"] = "fastnn"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential",
                                              "config": model.get_config()})
        cc = _compile_config(model)
        if cc:
            f.attrs["training_config"] = json.dumps(cc)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        g.attrs["backend"] = "fastnn"
        g.attrs["keras_version"] = KERAS_VERSION
        for layer in model.layers:
            lg = g.create_group(layer.name)
            names = [f"{layer.name}/{n}" for n in layer.weight_names]
            lg.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.get_weights()):
                lg.create_dataset(name, data=w)
        opt = model.optimizer
        if include_optimizer and opt is not None and opt.built:
            og = f.create_group("optimizer_weights")
            values = opt.variables()
            names = [f"optimizer/vars/{i}" for i in range(len(values))]
            og.attrs["weight_names"] = [n.encode() for n in names]
            for name, v in zip(names, values):
                og.create_dataset(name, data=v)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file or directory found at {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ValueError(f"{path} is not a .keras model file (no config.json)")
            config = json.loads(zf.read("config.json"))
            if "model.weights.h5" in names:
                arrays = _read_h5(io.BytesIO(zf.read("model.weights.h5")),
                                  _h5py("loading this .keras file"))
            elif "model.weights.npz" in names:
                with np.load(io.BytesIO(zf.read("model.weights.npz"))) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            else:
                raise ValueError(f"{path} holds no model.weights.h5 or model.weights.npz")
        model = _model_from_config(config, compile)
        _restore_arrays(model, arrays, path)
        return model
    if path.endswith((".h5", ".hdf5")):
        return _load_legacy_h5(path, compile, _h5py("loading .h5 files"))
    raise ValueError(f"File format not supported: {path!r}. fastnn loads .keras and .h5 files")


def _load_legacy_h5(path, compile, h5py):
    with h5py.File(path, "r") as f:
        config = json.loads(_attr(f.attrs["model_config"]))
        training = f.attrs.get("training_config")
        config["compile_config"] = json.loads(_attr(training)) if training is not None else None
        model = _model_from_config(config, compile)
        g = f["model_weights"]
        weights = []
        for layer, name in zip(model.layers, [_attr(n) for n in g.attrs["layer_names"]]):
            lg = g[name]
            for wname in lg.attrs["weight_names"]:
                weights.append(lg[_attr(wname)][()])
        model.set_weights(weights)
        if compile and "optimizer_weights" in f and model.optimizer is not None:
            og = f["optimizer_weights"]
            values = [og[_attr(n)][()] for n in og.attrs["weight_names"]]
            model._pack_parameters()
            model.optimizer.build(model._sizes)
            model.optimizer.set_variables(values)
    return model


def _attr(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def save_weights(model, filepath, overwrite=True):
    path = os.fspath(filepath)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"The filename must end in `.weights.h5`. Received: filepath={path}")
    h5py = _h5py("save_weights")
    arrays = _model_arrays(model, include_optimizer=False)
    _atomic_write(path, lambda tmp: _write_h5(tmp, arrays, h5py), overwrite)


def load_weights(model, filepath):
    path = os.fspath(filepath)
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as zf:
            arrays = _read_h5(io.BytesIO(zf.read("model.weights.h5")), _h5py("load_weights"))
    elif path.endswith(".weights.h5"):
        arrays = _read_h5(path, _h5py("load_weights"))
    else:
        raise ValueError(f"load_weights expects a .weights.h5 or .keras file, got {path!r}")
    arrays = {k: v for k, v in arrays.items() if k.startswith("layers/")}
    _restore_arrays(model, arrays, path)
