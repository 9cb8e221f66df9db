"""The files of whole models (.keras zip, legacy .h5) and of weights (.weights.h5): a model's
config and arrays written into them and read back. It knows none of fastnn.models' classes: a
model is what it holds (layers, weights, optimizer) and serializes itself (_model_entry), and
loading a whole model takes the function that builds one from its config. fastnn.models imports
this module (Model.save, load_model); fastnn.saving is the public API.

Layouts follow Keras 3 (docs/keras-semantics.md §11): a .keras file is a zip holding
metadata.json, config.json and model.weights.h5 (datasets at layers/<snake_class>[_k]/vars/<i>
and optimizer/vars/<i>), members stored uncompressed as Keras stores them. Without h5py the
weights go to model.weights.npz with the same keys (save, load_model and load_weights all read
it, with or without h5py).

The file guarantees (docs/reliability.md, "Files"):
- Atomic: a file is written to a temporary `.fastnn-<host>-<pid>-<token>.tmp` beside the target,
  fsynced (and the folder too, where the OS allows), then renamed into place: a crash or SIGKILL
  mid-save leaves the old file or none, never a truncated one. Temporary files a killed save left
  behind are removed by the next save or load in that folder (only ours: only that name pattern,
  and only where the writer's process is gone, or after STALE_TEMP_AGE_S).
- The new file gets the mode open(path, "w") would give it (0o666 & ~umask).
- Streaming: weights are written one array at a time (to a temporary weights file, then copied
  into the zip in chunks), so a save needs O(largest array) memory beyond the model, not O(state).
- A load reads JSON members only up to MAX_JSON_BYTES, reads no weights member larger than the
  model's config implies, checks each array's shape and dtype before reading it, and reports an
  unreadable file with the OS's own error, a damaged one as "truncated or corrupt", a malformed
  config as a TypeError/ValueError naming the key. It never unpickles, imports or calls anything
  named in a file."""
import datetime
import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import stat
import tempfile
import time
import warnings
import zipfile
import zlib

import numpy as np

from . import __version__
from . import _config as C
from .backend import get_ops
from .layers.core import _snake_case
from .model_config import compile_config
from .optimizers import Optimizer
from .registry import custom_object_scope, safe_mode_scope
from .trainer import Trainer as _Model  # every model's base class (a model as a layer)

KERAS_VERSION = "3.15.1"   # the Keras format version these files follow
MAX_JSON_BYTES = 64 << 20  # config.json / metadata.json / a legacy .h5's config attributes
STALE_TEMP_AGE_S = 3600    # a temp file this old is stale whoever wrote it
_COPY_CHUNK = 1 << 20


def _h5py(required_for):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{required_for} needs h5py: pip install h5py (or fastnn[io])") \
            from None
    return h5py


def _has_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


# ---- temporary files and atomic writes -------------------------------------------------------
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_RE = re.compile(r"^\.fastnn-([0-9a-f]{8})-(\d+)-[0-9a-f]+\.tmp$")
_OLD_TEMP_RE = re.compile(r"^\.fastnn-[a-z0-9_]{8}\.tmp$")   # tempfile.mkstemp's, before


def _new_temp(folder):
    """(fd, path) of a new empty file named for this host and process, created as open(path,
    "w") would create it (mode 0o666 & ~umask). Raises the OS's error when the folder is
    missing or not writable."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    while True:
        path = os.path.join(folder, f".fastnn-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True       # os.kill(pid, 0) is not a probe on Windows; the age rule applies
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _clean_stale_temps(folder):
    """Remove temporary files of ours that a killed save left in `folder`: our name pattern
    only, regular files only, and only when the writer (same host, pid in the name) is gone or
    the file is older than STALE_TEMP_AGE_S. A live save's files are never touched."""
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    now = time.time()
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None and not _OLD_TEMP_RE.match(name):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            dead = m is not None and m.group(1) == _HOST and not _pid_alive(int(m.group(2)))
            if dead or now - st.st_mtime > STALE_TEMP_AGE_S:
                os.remove(path)
        except OSError:
            pass    # gone already (another cleaner), or not ours to remove


def _fsync_dir(folder):
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass        # some filesystems cannot sync a folder
    finally:
        os.close(fd)


def _atomic_write(filepath, write, overwrite):
    """write(tmp, folder) fills a temporary file beside `filepath`; it is fsynced and renamed
    over `filepath` only once complete."""
    filepath = os.fspath(filepath)
    if os.path.isdir(filepath):
        raise IsADirectoryError(errno.EISDIR, "Cannot save a model over a directory", filepath)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")
    folder = os.path.dirname(os.path.abspath(filepath))
    _clean_stale_temps(folder)
    fd, tmp = _new_temp(folder)
    try:
        write(tmp, folder)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, filepath)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


# ---- a model's state, one array at a time, in Keras's layout ----------------------------------
def _layer_keys(model):
    """Keras names layer groups by class (dense, dense_1, ...), not by layer.name."""
    counts, keys = {}, []
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        k = counts.get(base, 0)
        counts[base] = k + 1
        keys.append(base if k == 0 else f"{base}_{k}")
    return keys


def _leaves(model, prefix="layers/"):
    """(path, layer) for every layer that holds weights' place in the file, at any depth: a
    model used as a layer nests its layers under its own path, as Keras writes them
    (layers/<model key>/layers/<layer key>)."""
    for key, layer in zip(_layer_keys(model), model.layers):
        if isinstance(layer, _Model):
            yield from _leaves(layer, f"{prefix}{key}/layers/")
        elif hasattr(layer, "weight_leaves"):       # weights Keras keeps in sublayers
            for sub, leaf in layer.weight_leaves():
                yield f"{prefix}{key}/{sub}", leaf
        else:     # (a wrapper keeps its inner layer's weights under its path: TimeDistributed)
            yield prefix + key + getattr(layer, "weights_subpath", ""), layer


def _legacy_weights(layer):
    """[(name, array, i)] for a layer's weights (a model's: its layers', any depth) in the
    order of Keras's legacy HDF5 files: the trainable ones first (Keras's _legacy_weights),
    i its index in layer.weights (the order set_weights takes)."""
    leaves = layer._layers if isinstance(layer, _Model) else [layer]
    prefix = f"{layer.name}/" if isinstance(layer, _Model) else ""
    named = [(f"{prefix}{leaf.name}/{n}", w) for leaf in leaves
             for n, w in zip(leaf.weight_names, leaf.weights)]
    trainable = {id(w) for w in layer.trainable_weights}
    order = [i for i, (_, w) in enumerate(named) if id(w) in trainable] + \
        [i for i, (_, w) in enumerate(named) if id(w) not in trainable]
    return [(named[i][0], named[i][1], i) for i in order]


def _from_legacy_order(entries, values):
    """Values read in _legacy_weights order, in layer.weights order."""
    out = [None] * len(entries)
    for (_, _, i), value in zip(entries, values):
        out[i] = value
    return out


def _optimizer_variables(opt, shapes):
    """opt.variables() one at a time, each slot in the shape of its weight (`shapes`, in the
    order of the parameter buffer) as Keras keeps it, as views where the backend allows (no
    copy of all the slots at once)."""
    to_numpy = get_ops().to_numpy
    offsets = np.cumsum([0] + [math.prod(shape) for shape in shapes])
    shape_at = {int(start): shape for start, shape in zip(offsets, shapes)}
    if type(opt).variables is not Optimizer.variables or not hasattr(opt, "_slot_order"):
        values = opt.variables()        # iterations, learning rate, slots in _slot_order
        head = opt.head_variables()
        order = opt._slot_order() if hasattr(opt, "_slot_order") else []
        shaped = [np.asarray(v).reshape(shape_at[start]) if np.size(v) == size else v
                  for v, (_, start, size) in zip(values[head:], order)]
        yield from values[:head] + shaped + values[head + len(shaped):]
        return
    yield np.array(opt.iterations, np.int64)
    if opt.head_variables() == 2:
        yield np.array(opt.learning_rate, np.float32)
    for name, start, size in opt._slot_order():
        yield to_numpy(opt.slots[name][start:start + size]).reshape(shape_at[start])


def _iter_arrays(model, include_optimizer=True):
    """(key, array) for every weight, then every optimizer variable, one at a time."""
    to_numpy = get_ops().to_numpy
    for path, layer in _leaves(model):
        for i, w in enumerate(layer.weights):
            yield f"{path}/vars/{i}", to_numpy(w)
    opt = model.optimizer
    if include_optimizer and opt is not None and opt.built:
        model._pack_parameters()
        for i, v in enumerate(_optimizer_variables(opt, model._shapes)):
            yield f"optimizer/vars/{i}", v


def _write_h5(path, items, h5py):
    with h5py.File(path, "w") as f:
        for key, value in items:
            f.create_dataset(key, data=value)


def _write_npz(path, items):
    """np.savez's layout (members <key>.npy), written one array at a time."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in items:
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _model_config(model):
    return model._model_entry()     # (a test breaks it to fail a save midway)


# ---- public API: saving --------------------------------------------------------------------------
def save_model(model, filepath, overwrite=True, include_optimizer=True, zipped=None,
               save_format=None, **kwargs):
    """Save a model (architecture, weights, optimizer state) to a `.keras` file, or a legacy `.h5`
    file.

    The file is written next to its destination and renamed into place, so a failed save leaves no
    partial file.

    Args:
        model: The model to save.
        filepath: Path ending in `.keras` (or `.h5`/`.hdf5`, which needs h5py).
        overwrite: Whether to replace an existing file. Defaults to `True`.
        include_optimizer: Whether to save the optimizer's state too. Defaults to `True`.
        zipped: `None` or `True` (a zip archive); `False` (a folder) is not supported. Defaults to
            `None`.
        save_format: `None`, or the format matching the extension (`"keras"` or `"h5"`). Defaults to
            `None`.
        **kwargs: No other argument is supported (an error names it).
    """
    if kwargs:
        raise ValueError("The following argument(s) are not supported: "
                         f"{sorted(kwargs)}")
    if not isinstance(include_optimizer, bool):
        raise TypeError(f"include_optimizer must be True or False, got {include_optimizer!r}")
    path = os.fspath(filepath)
    if zipped is False:
        raise ValueError("zipped=False (an unzipped folder) is not supported by fastnn; save to "
                         "a .keras file")
    if path.endswith(".keras"):
        if save_format not in (None, "keras"):
            raise ValueError(f"save_format={save_format!r} does not match the .keras file "
                             f"{path!r}")
        _atomic_write(path, lambda tmp, folder: _write_keras_zip(model, tmp, folder,
                                                                 include_optimizer), overwrite)
    elif path.endswith((".h5", ".hdf5")):
        if save_format not in (None, "h5"):
            raise ValueError(f"save_format={save_format!r} does not match the .h5 file {path!r}")
        h5py = _h5py("saving to .h5")
        _atomic_write(path, lambda tmp, folder: _write_legacy_h5(model, tmp, include_optimizer,
                                                                 h5py), overwrite)
    else:
        raise ValueError(f"Invalid filepath extension for saving: {path!r}. Use a path ending "
                         "in .keras (or the legacy .h5)")


def _write_keras_zip(model, tmp, folder, include_optimizer):
    metadata = {"keras_version": KERAS_VERSION, "fastnn_version": __version__,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    config = json.dumps(_model_config(model))
    items = _iter_arrays(model, include_optimizer)
    # The weights file (HDF5 or npz) needs a seekable file: it is written one array at a time to
    # a second temporary file, then copied into the zip in chunks.
    fd, weights_tmp = _new_temp(folder)
    os.close(fd)
    try:
        if _has_h5py():
            member = "model.weights.h5"
            _write_h5(weights_tmp, items, _h5py("saving .keras"))
        else:
            member = "model.weights.npz"
            _write_npz(weights_tmp, items)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr("metadata.json", json.dumps(metadata))
            zf.writestr("config.json", config)
            zf.write(weights_tmp, member)
    finally:
        try:
            os.remove(weights_tmp)
        except OSError:
            pass


def _write_legacy_h5(model, tmp, include_optimizer, h5py):
    with h5py.File(tmp, "w") as f:
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["backend"] = "fastnn"
        entry = model._model_entry(compiled=False)
        f.attrs["model_config"] = json.dumps({"class_name": entry["class_name"],
                                              "config": entry["config"]})
        cc = compile_config(model)
        if cc:      # the legacy layout names the optimizer optimizer_config, without module
            optimizer = cc.pop("optimizer")
            cc["optimizer_config"] = {"class_name": optimizer["class_name"],
                                      "config": optimizer["config"]}
            f.attrs["training_config"] = json.dumps(cc)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        g.attrs["backend"] = "fastnn"
        g.attrs["keras_version"] = KERAS_VERSION
        to_numpy = get_ops().to_numpy
        for layer in model.layers:
            lg = g.create_group(layer.name)
            entries = _legacy_weights(layer)
            lg.attrs["weight_names"] = [name.encode() for name, _, _ in entries]
            for name, w, _ in entries:
                lg.create_dataset(name, data=to_numpy(w))
        opt = model.optimizer
        if include_optimizer and opt is not None and opt.built:
            og = f.create_group("optimizer_weights")
            n = opt.head_variables() + len(opt._slot_order()) \
                if hasattr(opt, "_slot_order") else len(opt.variables())
            names = [f"optimizer/vars/{i}" for i in range(n)]
            og.attrs["weight_names"] = [n.encode() for n in names]
            model._pack_parameters()
            for name, v in zip(names, _optimizer_variables(opt, model._shapes)):
                og.create_dataset(name, data=v)


def save_weights(model, filepath, overwrite=True):
    """Save a model's weights to a `.weights.h5` file (Keras's layout).

    Args:
        model: The model.
        filepath: Path ending in `.weights.h5`.
        overwrite: Whether to replace an existing file. Defaults to `True`.
    """
    path = os.fspath(filepath)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"The filename must end in `.weights.h5`. Received: filepath={path}")
    h5py = _h5py("save_weights")
    # the optimizer's state too (when built), as Keras writes it: load_weights restores it
    _atomic_write(path, lambda tmp, folder: _write_h5(
        tmp, _iter_arrays(model, include_optimizer=True), h5py), overwrite)


# ---- public API: loading -------------------------------------------------------------------------
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _open_checked(path):
    """Open `path` for reading: a missing, unreadable or directory path raises the OS's own
    error (FileNotFoundError, PermissionError, IsADirectoryError), naming the path. Cleans our
    stale temporary files in its folder first."""
    _clean_stale_temps(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not a model file", path)
    return open(path, "rb")


class _FileError(ValueError):
    """A file fastnn can read but whose content is wrong for the model (shapes, sizes)."""


def _corrupt(path, what, detail):
    return _FileError(f"truncated or corrupt {what}: {path}: {detail}")


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError,
               NotImplementedError, RuntimeError, OSError, ValueError, KeyError)


def _read_json_member(zf, name, path):
    """A JSON member of the zip, read up to MAX_JSON_BYTES whatever its header claims."""
    info = zf.getinfo(name)
    if info.file_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {name} inflates to {info.file_size} bytes, more than the "
                         f"{MAX_JSON_BYTES} a model config may have")
    try:
        with zf.open(info) as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except _ZIP_ERRORS as exc:
        raise _corrupt(path, ".keras archive", f"{name}: {exc}") from None
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {name} inflates to more than the {MAX_JSON_BYTES} bytes a "
                         "model config may have")
    return _parse_json(data, f"{path}: {name}")


def _parse_json(data, where):
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None


def read_model(filepath, build, custom_objects=None, compile=True, safe_mode=True):
    """Load a .keras (zip) or legacy .h5 file. Never unpickles or imports anything the file
    names. With safe_mode=True (the default) a Lambda layer whose function is Python bytecode
    (a lambda) is refused, as in Keras; safe_mode=False loads that bytecode, and the model runs
    it when called: code from the file, so only for files you trust.

    Args:
        filepath: Path of the file.
        build: `build(config, compile, root, cc_root, optimizer_key)`, the model a config
            describes (fastnn.models._model_from_config), compiled when `compile` is true.
        custom_objects: A dict `{name: class or function}` for the custom objects the file names.
            Defaults to `None`.
        compile: Whether to compile the model as it was saved. Defaults to `True`.
        safe_mode: Whether to refuse a `Lambda` layer stored as Python bytecode. Defaults to `True`.

    Returns:
        The model.
    """
    path = os.fspath(filepath)
    with custom_object_scope(custom_objects), safe_mode_scope(safe_mode), \
            _open_checked(path) as f:
        head = f.read(8)
        if head[:4] in _ZIP_MAGIC or path.endswith(".keras"):
            return _load_keras_zip(path, compile, build)
        if path.endswith((".h5", ".hdf5")) or head == _HDF5_MAGIC:
            return _load_legacy_h5(path, compile, build, _h5py("loading .h5 files"))
    raise ValueError(f"File format not supported: {path!r} is neither a .keras (zip) archive "
                     "nor an HDF5 file. fastnn loads .keras and legacy .h5 files")


def _open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise _corrupt(path, ".keras archive", exc) from None


def _weights_member(zf, path):
    names = set(zf.namelist())
    for name in ("model.weights.h5", "model.weights.npz"):
        if name in names:
            return zf.getinfo(name)
    raise ValueError(f"{path}: the archive holds no model.weights.h5 or model.weights.npz")


def _load_keras_zip(path, compile, build):
    with _open_zip(path) as zf:
        if "config.json" not in set(zf.namelist()):
            raise ValueError(f"{path} is not a .keras model file (no config.json)")
        config = _read_json_member(zf, "config.json", path)
        info = _weights_member(zf, path)   # before building anything: fail fast
        if info.filename.endswith(".h5"):
            _h5py(f"loading {path} (its weights are model.weights.h5)")
        try:
            model = build(config, compile)
        except (TypeError, ValueError) as exc:
            raise C.prefixed(exc, path) from None
        except NotImplementedError as exc:     # a layer argument fastnn cannot compute
            raise NotImplementedError(f"{path}: {exc}") from None
        spec = _expected(model, include_optimizer=compile)
        arrays = _read_weights_member(zf, info, path, spec)
    _restore(model, arrays, path, spec)
    return model


# -- reading weights: only what the model expects, each shape checked before its data is read --
def _expected(model, include_optimizer):
    """{key: (shape, owner)} for the layer weights, (layer, its keys) for each layer, and the
    optimizer variables' sizes."""
    layers, owners = {}, []
    for path, layer in _leaves(model):
        keys = [f"{path}/vars/{i}" for i in range(len(layer.weights))]
        owners.append((layer, keys))
        for key, name, w in zip(keys, layer.weight_names, layer.weights):
            layers[key] = (tuple(w.shape), f"{layer.name}/{name}")
    opt_sizes = None
    opt = model.optimizer if include_optimizer else None
    if opt is not None:
        model._pack_parameters()
        sizes = [int(s) for s in model._sizes]
        # Keras's order (Optimizer._slot_order): per slot group, per weight, its slots.
        opt_sizes = [1] * opt.head_variables() + [
            s for group in opt.all_slot_groups() for s in sizes for _ in group]
    return {"layers": layers, "owners": owners, "optimizer": opt_sizes}


def _member_budget(spec):
    """The most bytes a weights member may inflate to for this model: its arrays as float64
    (a generous bound on any dtype Keras writes), plus the optimizer's, plus format overhead."""
    n = sum(math.prod(shape) for shape, _ in spec["layers"].values())
    n_arrays = len(spec["layers"])
    if spec["optimizer"] is not None:
        n += sum(spec["optimizer"])
        n_arrays += len(spec["optimizer"])
    else:
        n *= 4      # the file may hold optimizer slots we will not read (up to 3 per weight)
        n_arrays *= 4
    return 8 * n + (1 << 20) + 4096 * (n_arrays + 1)


def _read_weights_member(zf, info, path, spec):
    budget = _member_budget(spec)
    if info.file_size > budget:
        raise _FileError(f"{path}: {info.filename} inflates to {info.file_size} bytes, more "
                         f"than the {budget} this model's config allows (a damaged or crafted "
                         "file)")
    # Copy it (bounded) to an anonymous temporary file, which h5py and np.load can seek in.
    with tempfile.TemporaryFile() as tf:
        try:
            with zf.open(info) as src:
                copied = 0
                while chunk := src.read(_COPY_CHUNK):
                    copied += len(chunk)
                    if copied > budget:
                        raise _FileError(f"{path}: {info.filename} inflates to more than the "
                                         f"{budget} bytes this model's config allows")
                    tf.write(chunk)
        except _FileError:
            raise
        except _ZIP_ERRORS as exc:
            raise _corrupt(path, ".keras archive", f"{info.filename}: {exc}") from None
        tf.seek(0)
        where = f"{path}: {info.filename}"
        if info.filename.endswith(".h5"):
            return _read_h5_expected(tf, where, spec, _h5py("loading this .keras file"))
        return _read_npz_expected(tf, where, spec)


def _check_array_header(shape, dtype, key, where, spec):
    """Raise unless the array may be read; False for a layer weight skip_mismatch skips."""
    if dtype.kind not in "fiu":
        raise _FileError(f"{where}: {key} has dtype {dtype}, not a real number type")
    if key in spec["layers"]:
        want, owner = spec["layers"][key]
        if tuple(shape) != want:
            if spec.get("skip_mismatch"):
                spec["skipped"].add(_layer_group(key))
                return False
            raise _FileError(f"{where}: {key} ({owner}) has shape {tuple(shape)}, the model "
                             f"expects {want}")
    else:
        i = int(key.rsplit("/", 1)[1])
        sizes = spec["optimizer"]
        if i >= len(sizes):
            raise _FileError(f"{where}: {key}: the optimizer has only {len(sizes)} variables")
        if math.prod(shape) != sizes[i]:
            if spec.get("optimizer_optional"):
                spec["optimizer_skipped"] = len(sizes)
                return False
            raise _FileError(f"{where}: {key} has shape {tuple(shape)} ({math.prod(shape)} "
                             f"values), the optimizer expects {sizes[i]}")


_OPT_KEY = re.compile(r"^optimizer/vars/(0|[1-9]\d{0,8})$")


def _layer_group(key):
    """layers/<name>/vars/<i> -> layers/<name>/ (a layer's weights, skipped together)."""
    return key.rsplit("/vars/", 1)[0] + "/"


def _wanted_keys(keys, where, spec):
    """The keys to read: every layer key must be one the model has; optimizer keys are read
    only when the optimizer is restored."""
    for key in keys:
        if key.startswith("layers/") and key not in spec["layers"]:
            if spec.get("skip_mismatch"):       # a weight the layer does not have
                spec["skipped"].add(_layer_group(key))
                continue
            raise _FileError(f"{where}: holds {key}, which the model built from the config "
                             "does not have (a different model's weights?)")
    wanted = [k for k in keys if k in spec["layers"]]
    if spec["optimizer"] is not None:
        opt = [k for k in keys if _OPT_KEY.match(k)]
        if spec.get("optimizer_optional") and len(opt) != len(spec["optimizer"]):
            spec["optimizer_skipped"] = len(opt)        # load_weights: warn, as Keras
            return wanted
        wanted += sorted(opt, key=lambda k: int(k.rsplit("/", 1)[1]))
    return wanted


def _read_h5_expected(file, where, spec, h5py):
    arrays = {}
    try:
        with h5py.File(file, "r") as f:
            keys = []
            f.visititems(lambda name, obj: keys.append(name)
                         if isinstance(obj, h5py.Dataset) else None)
            for key in _wanted_keys(keys, where, spec):
                ds = f[key]
                if _check_array_header(ds.shape, ds.dtype, key, where, spec) is not False:
                    arrays[key] = ds[()]
    except _FileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise _corrupt(where, "HDF5 weights", exc) from None
    return arrays


def _read_npz_expected(file, where, spec):
    arrays = {}
    try:
        with zipfile.ZipFile(file) as zf:
            members = {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
            for key in _wanted_keys(list(members), where, spec):
                with zf.open(members[key]) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise _FileError(f"{where}: {key}: .npy format {version} is not read")
                    shape, fortran, dtype = read_header(f)
                    if _check_array_header(shape, dtype, key, where, spec) is False:
                        continue
                    if members[key].file_size > 8 * math.prod(shape) + 65536:
                        raise _FileError(f"{where}: {key} is larger than its shape {shape}")
                with zf.open(members[key]) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    except _FileError:
        raise
    except _ZIP_ERRORS + (TypeError,) as exc:
        raise _corrupt(where, "npz weights", exc) from None
    return arrays


def _restore(model, arrays, source, spec):
    """Set the weights (every one checked first: a bad file leaves the model unchanged), then
    the optimizer's variables."""
    skipped = spec.get("skipped", set())
    if spec.get("skip_mismatch"):     # a layer missing a weight is skipped whole
        skipped |= {_layer_group(k) for k in spec["layers"] if k not in arrays}
        skipped &= {_layer_group(k) for k in spec["layers"]}
        if skipped:
            names = sorted({spec["layers"][k][1].rsplit("/", 1)[0] for k in spec["layers"]
                            if _layer_group(k) in skipped})
            warnings.warn(f"load_weights({source}): skipped layers whose weights do not "
                          f"match the file (skip_mismatch=True): {names}", stacklevel=3)
    plan = []
    for layer, keys in spec["owners"]:
        if not keys or _layer_group(keys[0]) in skipped:
            continue
        for key in keys:
            if key not in arrays:
                raise _FileError(f"{source}: missing weight {key} ({spec['layers'][key][1]})")
        plan.append((layer, [np.asarray(arrays[k]) for k in keys]))
    opt_keys = [k for k in arrays if k.startswith("optimizer/vars/")]
    if "optimizer_skipped" in spec:
        warnings.warn(f"load_weights({source}): skipping variable loading for optimizer "
                      f"{model.optimizer.name!r}, because it has {len(spec['optimizer'])} "
                      f"variables whereas the saved optimizer has {spec['optimizer_skipped']} "
                      "variables (as Keras does)", stacklevel=3)
        opt_keys = []
    if spec["optimizer"] is not None and 0 < len(opt_keys) < len(spec["optimizer"]) and \
            len(opt_keys) <= model.optimizer.head_variables():
        opt_keys = []       # a compiled optimizer that never stepped: nothing to restore
    if opt_keys and spec["optimizer"] is not None and len(opt_keys) != len(spec["optimizer"]):
        raise _FileError(f"{source}: {len(opt_keys)} optimizer variables, the optimizer "
                         f"expects {len(spec['optimizer'])}")
    for layer, values in plan:
        layer.set_weights(values)
    if opt_keys and spec["optimizer"] is not None:
        model._pack_parameters()
        model.optimizer.build(model._sizes)
        model.optimizer.set_variables([np.asarray(arrays[k]) for k in
                                       sorted(opt_keys, key=lambda k: int(k.rsplit("/", 1)[1]))])


# -- legacy .h5 ------------------------------------------------------------------------------------
def _json_attr(attrs, name, where):
    try:
        size = attrs.get_id(name).get_storage_size()
    except (KeyError, AttributeError):
        size = 0
    if size > MAX_JSON_BYTES:
        raise _FileError(f"{where}: attribute {name} holds {size} bytes, more than the "
                         f"{MAX_JSON_BYTES} a model config may have")
    return _parse_json(_attr(attrs[name]), f"{where}: attribute {name}")


def _load_legacy_h5(path, compile, build, h5py):
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _corrupt(path, "HDF5 file", exc) from None
    with f:
        try:
            if "model_config" not in f.attrs:
                raise _FileError(f"{path}: an HDF5 file without a model_config attribute (a "
                                 "weights file? use model.load_weights)")
            config = _json_attr(f.attrs, "model_config", path)
            if not isinstance(config, dict):
                C.fail_type("model_config", "a JSON object", config)
            training = _json_attr(f.attrs, "training_config", path) \
                if "training_config" in f.attrs else None
            config["compile_config"] = training
            # the legacy layout names the optimizer optimizer_config (compile_config: optimizer)
            model = build(config, compile, "model_config", "training_config",
                                       optimizer_key="optimizer_config")
        except (TypeError, ValueError) as exc:
            raise C.prefixed(exc, path) from None
        except NotImplementedError as exc:     # (a RuntimeError, but no sign of damage)
            raise NotImplementedError(f"{path}: {exc}") from None
        except (OSError, KeyError, RuntimeError) as exc:
            raise _corrupt(path, "HDF5 file", exc) from None
        spec = _expected(model, include_optimizer=compile)
        try:
            weights, opt_values = _read_legacy_weights(f, model, path, spec, compile)
        except _FileError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise _corrupt(path, "HDF5 file", exc) from None
    for layer, values in weights:
        layer.set_weights(values)
    if opt_values is not None:
        model._pack_parameters()
        model.optimizer.build(model._sizes)
        model.optimizer.set_variables(opt_values)
    return model


def _read_legacy_weights(f, model, path, spec, compile):
    if "model_weights" not in f:
        raise _FileError(f"{path}: no model_weights group")
    g = f["model_weights"]
    names = [_attr(n) for n in g.attrs["layer_names"]]
    if len(names) != len(model.layers):
        raise _FileError(f"{path}: model_weights lists {len(names)} layers, the config "
                         f"{len(model.layers)}")
    weights = []        # (layer, its arrays): every one read and checked before any is set
    for layer, name in zip(model.layers, names):
        lg = g[name]
        wnames = _string_list(lg.attrs, "weight_names")
        entries = _legacy_weights(layer)
        if len(wnames) != len(entries):
            raise _FileError(f"{path}: layer {name!r} has {len(wnames)} weights in the file, "
                             f"the model expects {len(entries)}")
        values = []
        for wname, (_, w, _) in zip(wnames, entries):
            ds = lg[wname]
            if ds.dtype.kind not in "fiu" or tuple(ds.shape) != tuple(w.shape):
                raise _FileError(f"{path}: {name}/{wname} is {ds.dtype} {tuple(ds.shape)}, the "
                                 f"model expects float32 {tuple(w.shape)}")
            values.append(ds[()])
        weights.append((layer, _from_legacy_order(entries, values)))
    opt_values = None
    if compile and "optimizer_weights" in f and spec["optimizer"] is not None:
        og = f["optimizer_weights"]
        onames = [_attr(n) for n in og.attrs["weight_names"]]
        sizes = spec["optimizer"]
        if 0 < len(onames) < len(sizes) and len(onames) <= model.optimizer.head_variables():
            onames = sizes = []     # a compiled optimizer that never stepped: nothing to restore
        if len(onames) != len(sizes):
            raise _FileError(f"{path}: {len(onames)} optimizer variables, the optimizer "
                             f"expects {len(sizes)}")
        opt_values = []
        for oname, size in zip(onames, sizes):
            ds = og[oname]
            if ds.dtype.kind not in "fiu" or math.prod(ds.shape) != size:
                raise _FileError(f"{path}: optimizer variable {oname} is {ds.dtype} "
                                 f"{tuple(ds.shape)}, the optimizer expects {size} values")
            opt_values.append(ds[()])
    return weights, opt_values or None


def _attr(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _string_list(attrs, name):
    """A list-of-strings attribute of Keras's legacy layout, which Keras splits into name0,
    name1, ... when it is large; fixed- or variable-length strings."""
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks, k = [], 0
        while f"{name}{k}" in attrs:
            chunks.append(attrs[f"{name}{k}"])
            k += 1
    return [_attr(v) for chunk in chunks for v in np.atleast_1d(chunk)]


def _load_legacy_weights(model, path, h5py, by_name=False, skip_mismatch=False):
    """Keras's legacy HDF5 weights (root attribute layer_names; per layer weight_names; the
    arrays where weight_names says). As Keras: the layers that have weights, matched in
    model.layers order by position (or by name with by_name=True); every count and shape
    checked before any weight is set."""
    layers = [layer for layer in model.layers if layer.weights]
    plan = []
    with h5py.File(path, "r") as f:
        root = f
        if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and \
                "model_weights" in f:
            root = f["model_weights"]
        names = _string_list(root.attrs, "layer_names")
        if not names and "layer_names" not in root.attrs:
            raise _FileError(f"{path}: not a Keras weights file (no layer_names attribute)")
        saved = []
        for name in names:
            if name not in root:
                raise _FileError(f"{path}: layer_names lists {name!r}, which has no group")
            weight_names = _string_list(root[name].attrs, "weight_names")
            if weight_names:
                saved.append((name, root[name], weight_names))
        if by_name:
            by_layer = {layer.name: layer for layer in layers}
            pairs = [(by_layer[name], entry) for entry in saved
                     for name in [entry[0]] if name in by_layer]
        else:
            if len(saved) != len(layers):
                raise ValueError(f"Layer count mismatch when loading weights from file "
                                 f"{path}. Model expected {len(layers)} layers with weights, "
                                 f"found {len(saved)} saved layers.")
            pairs = list(zip(layers, saved))
        for k, (layer, (name, group, weight_names)) in enumerate(pairs):
            entries = _legacy_weights(layer)
            expected = [w for _, w, _ in entries]
            if len(weight_names) != len(expected):
                if skip_mismatch:
                    continue
                raise ValueError(f"Weight count mismatch for layer #{k} (named {layer.name} "
                                 f"in the current model, {name} in the save file). Layer "
                                 f"expects {len(expected)} weight(s). Received "
                                 f"{len(weight_names)} saved weight(s)")
            arrays = []
            for weight_name, want in zip(weight_names, expected):
                if weight_name not in group:
                    raise _FileError(f"{path}: layer {name!r} lists weight {weight_name!r}, "
                                     "which is not in the file")
                ds = group[weight_name]
                if tuple(ds.shape) != tuple(want.shape) or ds.dtype.kind not in "fiu":
                    if skip_mismatch:
                        arrays = None
                        break
                    raise ValueError(f"Shape mismatch in layer #{k} (named {layer.name}) for "
                                     f"weight {weight_name}. Weight expects shape "
                                     f"{tuple(want.shape)}. Received saved weight with shape "
                                     f"{tuple(ds.shape)} ({ds.dtype})")
                arrays.append(np.asarray(ds[()], dtype=np.float32))
            if arrays is not None:
                plan.append((layer, _from_legacy_order(entries, arrays)))
    for layer, arrays in plan:
        layer.set_weights(arrays)


def load_weights(model, filepath, skip_mismatch=False, by_name=False):
    """Weights from a .weights.h5 file, a .keras archive (its model.weights.h5, or the
    model.weights.npz fastnn writes without h5py), or Keras's legacy HDF5 layout (any other
    .h5/.hdf5: the format of Keras's ImageNet weight files). Every array is checked before any
    is set.

    Args:
        model: The model to load into.
        filepath: The file to read.
        skip_mismatch: Whether to skip layers whose weights do not match (else it is an error).
            Defaults to `False`.
        by_name: Whether to match layers by name (legacy `.h5` files) instead of by order. Defaults
            to `False`.
    """
    path = os.fspath(filepath)
    legacy = path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
    if not legacy and not path.endswith((".keras", ".weights.h5")):
        raise ValueError(f"load_weights expects a .weights.h5, .keras, or legacy .h5/.hdf5 "
                         f"file, got {path!r}")
    with _open_checked(path):
        pass
    if legacy:
        return _load_legacy_weights(model, path, _h5py("load_weights"), by_name,
                                    skip_mismatch)
    if by_name:
        raise ValueError(f"load_weights({path!r}): by_name is for legacy .h5 files only, as "
                         "in Keras")
    # As Keras: a built optimizer takes the file's state when it fits, else a warning
    opt = model.__dict__.get("optimizer")
    spec = _expected(model, include_optimizer=opt is not None and opt.built)
    spec["optimizer_optional"] = True
    if skip_mismatch:
        spec.update(skip_mismatch=True, skipped=set())
    if path.endswith(".keras"):
        with _open_zip(path) as zf:
            info = _weights_member(zf, path)
            if info.filename.endswith(".h5"):
                _h5py(f"load_weights from {path} (its weights are model.weights.h5)")
            arrays = _read_weights_member(zf, info, path, spec)
    else:
        arrays = _read_h5_expected(path, path, spec, _h5py("load_weights"))
    _restore(model, arrays, path, spec)
