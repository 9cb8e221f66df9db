"""Keras's models: Model (subclass it with layers and a call()), Functional (Model(inputs,
outputs): a graph of layer calls), Sequential (a chain of layers). Their structure, weights,
summary and config live here; compile / fit / evaluate / predict in fastnn.trainer."""
import json
import threading

import numpy as np

from . import _config as C
from . import losses as losses_module
from . import metrics as metrics_module
from . import model_config, model_files, registry
from .autodiff import Tensor, no_grad, value_of
from .backend import get_ops, unique_name
from .graph import KerasTensor, Node, flatten, is_symbolic, nodes_between
from .layers.core import _CLASSES as _LAYER_CLASSES
from .layers.core import (
    _MODEL_CLASSES,
    ConvPool,
    Input,
    InputLayer,
    Layer,
    _accepts_training,
    _is_builtin,
    _snake_case,
    _thread_state,
    forward_pass,
    layer_entry,
    layer_from_entry,
)
from .schedule import Schedule
from .summary import print_summary as _print_summary
from .trainer import Trainer, _scaled, _shape_str, fits, scale_back


def _width(shape):
    """The number of values of one sample of a (batch, ...) shape (None: not fixed)."""
    return None if None in shape[1:] else int(np.prod(shape[1:], dtype=np.int64))


class Model(Trainer):
    """Keras's Model. Subclass it with layers made in __init__ and a call(self, inputs,
    training=None) written with them and fastnn.ops: the call runs on the autodiff tape
    (fastnn's layers are one node each, with their fused backward). Sequential is the chain
    of layers built on the same trainer. Model(inputs, outputs) makes a functional model
    (Functional) from symbolic tensors.

    Args:
        *args: For a functional model: `inputs` and `outputs` (the `Input` tensor(s) and the output
            tensor(s)).
        **kwargs: `inputs` and `outputs` by keyword; `name` (the model's name, made from the class
            name when `None`) and `trainable` (whether its weights are trained, default `True`).

    Example:

    ```python
    inputs = fastnn.Input(shape=(784,))
    x = fastnn.layers.Dense(64, activation="relu")(inputs)
    outputs = fastnn.layers.Dense(10, activation="softmax")(x)
    model = fastnn.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    ```
    """

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            return object.__new__(Functional)
        return object.__new__(cls)

    def __init__(self, *args, name=None, trainable=True, **kwargs):
        if kwargs:
            raise TypeError(f"Model: unexpected keyword argument(s) {sorted(kwargs)}")
        if not self._subclassed:
            raise TypeError("fastnn.Model is used by subclassing it: define call(self, "
                            "inputs, training=None) (or use Sequential)")
        self._setup(name or unique_name(_snake_case(type(self).__name__)), trainable)

    @property
    def _subclassed(self):
        return type(self).call is not Model.call

    def call(self, inputs, training=None):
        """The model's forward computation; a subclassed model defines it.

        Args:
            inputs: The input tensor(s).
            training: Whether the call is for training. Defaults to `None`.

        Returns:
            The output tensor(s).
        """
        raise NotImplementedError(f"Model {self.name!r} ({type(self).__name__}) defines no "
                                  "call(self, inputs)")

    def __setattr__(self, name, value):
        # Layers a subclass assigns become its layers (in order), as Keras tracks them.
        if not name.startswith("_") and type(self).call is not Model.call:
            items = value if isinstance(value, (list, tuple)) else [value]
            tracked = self.__dict__.setdefault("_tracked", [])
            for item in items:
                if isinstance(item, Layer) and item not in tracked:
                    tracked.append(item)
        object.__setattr__(self, name, value)

    def _setup(self, name, trainable):
        self.name = name
        self.trainable = trainable
        self._layers = []
        self._input_shape = None        # the model's input shape without the batch axis
        self._input_name = None
        self._input_dtype = "float32"     # an integer Input's batches stay integers
        self._output_shape = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self._metric_specs = []
        self._metrics = None
        self.stop_training = False
        self.history = None
        self._arena_key = None
        self._params = self._grads = None
        self._thread = threading.local()         # per-thread batch buffers (_batch_buffers)
        self._train_lock = threading.Lock()      # one fit / train_on_batch at a time
        self._metrics_lock = threading.RLock()   # the compiled metrics: one run at a time
        self._build_lock = threading.RLock()

    # ---- structure -------------------------------------------------------------------------
    @property
    def layers(self):
        """The model's layers: a Sequential's in order; a subclass's as it assigned them."""
        return list(self.__dict__.get("_tracked", [])) if self._subclassed else \
            list(self._layers)

    def _all_layers(self):
        """A subclass's layers and the layers inside them (and inside models used as layers),
        each once: whose weights train."""
        found = []
        for layer in self.__dict__.get("_tracked", []):
            for item in [layer] + layer._sublayers():
                if isinstance(item, Layer) and item not in found:
                    found.append(item)
        return found

    def _sublayers(self):
        """The layers of this model used as a layer of another."""
        return self._all_layers() if self._subclassed else list(self._layers)

    @property
    def trainable(self):
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value):
        """Freezing a model freezes its layers, as in Keras (transfer learning: a base model
        frozen inside a new one)."""
        self.__dict__["_trainable"] = bool(value)
        for layer in self.__dict__.get("_layers", []) + self.__dict__.get("_tracked", []):
            if isinstance(layer, (Layer, Model)) and layer is not self:
                layer.trainable = bool(value)

    # ---- a model used as a layer of another ---------------------------------------------------
    @property
    def _inbound_nodes(self):
        return self.__dict__.setdefault("_nodes_as_layer", [])

    def _call_as_layer(self, x, training):
        """This model inside another's graph: symbolic tensors make a node; a tensor (the
        outer model running on its tape) runs this model's layers there, one node each."""
        if is_symbolic(x):
            if isinstance(x, (list, tuple)) or len(getattr(self, "outputs", [None])) > 1:
                raise NotImplementedError(f"Model {self.name!r}: a model with several inputs "
                                          "or outputs used as a layer is not supported yet")
            if not self.built:
                self.build(x.shape)
            elif not fits(x.shape, self.input_shape):
                raise ValueError(f"Model {self.name!r} expects input shape "
                                 f"{_shape_str(self.input_shape)}, got {_shape_str(x.shape)}")
            node = Node(self, [x], [self._output_shape])
            node.several = False
            self._inbound_nodes.append(node)
            return node.outputs[0]
        if not self.built:      # first called on a batch (inside a Sequential being built)
            self.build((None,) + tuple(x.shape[1:]))
        if self._subclassed:
            kwargs = {"training": training} if _accepts_training(type(self).call) else {}
            return self.call(x, **kwargs)
        for layer in self._layers:
            x = layer(x, training=training)
        return x

    def _maybe_build(self, input_shape):
        """Built for this input shape (a model used as a layer of a Sequential)."""
        if not self.built:
            self.build(tuple(input_shape))

    def compute_output_shape(self, input_shape):
        """The output shape for an input shape.

        Args:
            input_shape: Shape of the input, batch axis first.

        Returns:
            The output shape, a tuple.
        """
        return self._output_shape_for(input_shape)

    def build(self, input_shape=None):
        """Create the model's weights for inputs of `input_shape` (called on the first call or fit).

        Args:
            input_shape: Shape of the input with the batch axis first; `None`: the shape given to
                the first layer or `Input`.
        """
        with self._build_lock:      # concurrent first calls build once, in turn
            self._build(input_shape)

    def _build(self, input_shape):
        if input_shape is not None:
            self._input_shape = tuple(input_shape)[1:]
        if self._input_shape is None:
            raise ValueError(f"Model {self.name!r} cannot be built: give the first layer "
                             "input_shape=..., start with Input(shape=...), or call "
                             "build((None, ...)) or fit() first")
        if self._subclassed:    # built by calling it once, as Keras does
            self._layers = self._all_layers()
            out = self._run_call(get_ops().alloc((1,) + tuple(self._input_shape)), False)
            self._layers = self._all_layers()       # call() may have built inner layers
            self._output_shape = (None,) + tuple(out.shape[1:])
            self._steps = []
            self.built = True
            self._pack_parameters()
            return
        shape = (None,) + tuple(self._input_shape)
        for layer in self._layers:
            if layer.built and layer.input_shape[1:] != shape[1:]:
                raise ValueError(f"Layer {layer.name!r} was built for input shape "
                                 f"{layer.input_shape}, but receives {shape}")
            layer._maybe_build(shape)
            shape = layer.compute_output_shape(shape)
        self._output_shape = shape
        self.built = True
        self._steps = self._plan_steps()
        # a layer makes masks: the forward pass carries them (layers.masked_forward)
        self._masking = any(isinstance(layer, Layer) and layer.makes_masks
                            for layer in self._layers)
        self._pack_parameters()

    def _plan_steps(self):
        """(first, last, runner) per step of the forward pass: a layer, or a Conv2D and the
        MaxPooling2D after it run as one (layers.ConvPool)."""
        steps, layers, i = [], self._layers, 0
        while i < len(layers):
            if i + 1 < len(layers) and ConvPool.fuses(layers[i], layers[i + 1]):
                steps.append((i, i + 1, ConvPool(layers[i], layers[i + 1])))
                i += 2
            else:
                steps.append((i, i, layers[i]))
                i += 1
        return steps

    def _pack_parameters(self):
        """Move every trainable weight into one flat buffer (and gradients into another)."""
        entries = [(layer, name) for layer in self._layers if layer.trainable
                   for name in layer._trainable_names]
        # The arrays themselves: a layer shared with another model lives in whichever model
        # packed it last, and this model then packs it again (its values carried over).
        key = tuple((id(layer), name, id(layer._vars[name])) for layer, name in entries)
        if key == self._arena_key:
            return
        ops = get_ops()
        sizes = [layer._vars[name].size for layer, name in entries]
        # (one slot after the gradients: fastnn.distribution sums a flag with them)
        params, flagged = ops.arena(sum(sizes)), ops.arena(sum(sizes) + 1)
        grads = flagged[:sum(sizes)]
        start, self._spans = 0, {}
        for (layer, name), size in zip(entries, sizes):
            shape = layer._vars[name].shape
            layer._rebind(name, params[start:start + size].reshape(shape),
                          grads[start:start + size].reshape(shape))
            self._spans[id(layer), name] = (start, start + size)
            start += size
        self._params, self._grads, self._sizes = params, grads, sizes
        self._grads_and_flag = flagged
        self._shapes = [layer._vars[name].shape for layer, name in entries]
        # the arrays now in the buffer (the key above named the ones before the move)
        self._arena_key = tuple((id(layer), name, id(layer._vars[name]))
                                for layer, name in entries)
        self._first_trainable = next((i for i, layer in enumerate(self._layers)
                                      if layer.trainable and layer._trainable_names),
                                     len(self._layers))

    @property
    def _batch_dtype(self):
        """The dtype x's batches are gathered in: the Input's (an integer Input's batches stay
        integers); for a chain starting with an integer layer (Embedding) given float32, int64
        (the layer takes indices; Keras casts them so too)."""
        dtype = self._input_dtype
        if dtype == "float32" and not self._subclassed and self._layers and \
                getattr(self._layers[0], "integer_input", False):
            return "int64"
        return dtype

    def _output_shape_for(self, x_shape):
        """The output shape for inputs of this shape (a model open to any image size has
        a different one per size)."""
        if None not in self._output_shape[1:]:
            return self._output_shape
        shape = (None,) + tuple(x_shape[1:])
        for layer in self._layers:
            shape = layer.compute_output_shape(shape)
        return shape

    def _ensure_built(self, x_shape):
        if not self.built:
            self.build((None,) + tuple(x_shape[1:]))

    @property
    def input_shape(self):
        return None if self._input_shape is None else (None,) + tuple(self._input_shape)

    @property
    def output_shape(self):
        if not self.built:
            raise AttributeError(f"Model {self.name!r} has not been built yet")
        return self._output_shape

    def get_layer(self, name=None, index=None):
        """A layer of model.layers (the top level, as Keras: a model used as a layer is one)
        by name or index.

        Args:
            name: The layer's name. Defaults to `None`.
            index: The layer's index in `model.layers`. Defaults to `None`.

        Returns:
            The layer.
        """
        layers = self.layers
        if index is not None:
            if name is not None:
                raise ValueError("Provide only a layer name or a layer index, not both")
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"Was asked to retrieve layer at index {index} but model "
                                 f"only has {len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: "
                         f"{[layer.name for layer in layers]}")

    # ---- weights ---------------------------------------------------------------------------
    @property
    def weights(self):
        return [w for layer in self._layers for w in layer.weights]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [w for layer in self._layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        if not self.trainable:
            return self.weights
        return [w for layer in self._layers for w in layer.non_trainable_weights]

    def get_weights(self):
        """The model's weights, as a list of NumPy arrays (the layers' weights in order).

        Returns:
            A list of arrays.
        """
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Set the model's weights from a list of arrays in the order of `get_weights()`.

        Every shape is checked before any weight is written.

        Args:
            weights: A list of arrays, one per weight.
        """
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self._layers)
        if len(weights) != expected:
            raise ValueError(f"Model {self.name!r} expects {expected} weight arrays, "
                             f"but set_weights received {len(weights)}")
        # Check every shape before writing anything, so a bad list leaves the model unchanged.
        start = 0
        for layer in self._layers:
            n = len(layer.weights)
            for name, old, new in zip(layer.weight_names, layer.weights, weights[start:start + n]):
                if np.shape(new) != old.shape:
                    raise ValueError(f"Layer {layer.name!r} weight {name!r}: expected shape "
                                     f"{old.shape}, received {np.shape(new)}")
            start += n
        start = 0
        for layer in self._layers:
            n = len(layer.weights)
            layer.set_weights(weights[start:start + n])
            start += n

    def count_params(self):
        """The number of scalars in the model's weights (the model must be built).

        Returns:
            An int.
        """
        if not self.built:
            raise ValueError(f"You tried to call count_params on model {self.name!r}, but the "
                             "model has not been built yet")
        return int(sum(layer.count_params() for layer in self._layers))

    # ---- summary, config, saving -------------------------------------------------------------
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """Print a table of the model's layers, their output shapes and parameter counts.

        Args:
            line_length: Total width of the table; `None`: a default.
            positions: Column boundaries (fractions of the width or absolute positions); `None`: a
                default.
            print_fn: The function called with each line; `None`: `print`.
            expand_nested: Accepted for Keras compatibility; a nested model is shown as one row.
                Defaults to `False`.
            show_trainable: Whether to add a column saying whether each layer is trainable. Defaults
                to `False`.
            layer_range: A pair of layer names: print only the layers from the first to the second.
                Defaults to `None`.
        """
        rows, connected = self._summary_rows()
        if layer_range is not None:
            names = [layer.name for layer in self.layers]
            if len(layer_range) != 2 or any(n not in names for n in layer_range):
                raise ValueError(f"layer_range must be two layer names of {names}, got "
                                 f"{layer_range!r}")
            rows = rows[names.index(layer_range[0]):names.index(layer_range[1]) + 1]
        trainable = sum(w.size for w in self.trainable_weights)
        non_trainable = sum(w.size for w in self.non_trainable_weights)
        optimizer_params = self.optimizer.count_params() if self.optimizer is not None and \
            self.optimizer.built else None
        _print_summary(self.name, rows, trainable, non_trainable, optimizer_params,
                      line_length=line_length, positions=positions, print_fn=print_fn,
                      show_trainable=show_trainable, connected=connected)

    def _summary_rows(self):
        """summary()'s rows, and whether they have a "Connected to" column."""
        rows, shape = [], self.input_shape
        subclass = self._subclassed and not isinstance(self, Sequential)
        if subclass:    # no chain to follow: shapes unknown, as Keras prints them
            shape = None
        for layer in self.layers:
            label = f"{layer.name} ({type(layer).__name__})"
            flag = layer.trainable if layer.weights else None
            if subclass:
                rows.append((label, "?", layer.count_params() if layer.built else
                             "0 (unbuilt)", flag))
                continue
            if layer.built and shape is not None:
                shape = layer.compute_output_shape(shape)
                rows.append((label, _shape_str(shape), layer.count_params(), flag))
            else:
                rows.append((label, "?", "0 (unbuilt)", flag))
        return rows, False

    def get_config(self):
        """The model's configuration (its layers and how they connect), a JSON-compatible dict.

        A subclassed model without its own `get_config` raises `NotImplementedError`: save its
        weights instead.

        Returns:
            A dict.
        """
        raise NotImplementedError(
            f"Model {self.name!r} ({type(self).__name__}) is a subclass without "
            "get_config(): it cannot be saved as a whole model; save_weights() and "
            "load_weights() keep its weights")

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        """The model a config describes. safe_mode=False allows a Lambda layer's Python
        bytecode to be loaded (it runs code from the config: only for configs you trust)."""
        if "input_layers" in config and not issubclass(cls, Sequential):
            # keras.Model.from_config of a functional config builds one too
            return Functional.from_config(config, custom_objects, safe_mode)
        with registry.custom_object_scope(custom_objects), registry.safe_mode_scope(safe_mode):
            return cls._sequential_from_config(config)

    @classmethod
    def _sequential_from_config(cls, config):
        model_config.check_sequential_config(config)     # a malformed entry raises naming its key
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for entry in config["layers"]:
            model.add(layer_from_entry(entry))
        if not model.built and config.get("build_input_shape"):
            model.build(tuple(config["build_input_shape"]))
        return model

    def to_json(self, **kwargs):
        """The model's architecture (without its weights) as a JSON string, as Keras writes it.

        Args:
            **kwargs: Arguments passed to `json.dumps` (e.g. `indent`).

        Returns:
            A string; `fastnn.models.model_from_json` makes the model again.
        """
        return json.dumps(model_entry(self, compiled=False), **kwargs)

    def _model_entry(self, compiled=True):
        """model_entry(self): what a model's file holds (fastnn.model_files knows no model
        class and asks the model)."""
        return model_entry(self, compiled)

    def _config_entry(self):
        """The model as the config of a model it is a layer of lists it: a Sequential or
        Functional nests its model entry, as Keras writes it; a user's subclass is a user's
        layer (fastnn.layers.core.layer_entry)."""
        if type(self) in (Sequential, Functional):
            return model_entry(self)
        return layer_entry(self)

    @classmethod
    def _from_entry(cls, entry):
        """The model a config nests as a layer (layer_from_entry), compiled when its entry
        says so, as in Keras."""
        model = cls.from_config(entry["config"])
        if entry.get("compile_config"):
            model.compile(**model_config.compile_args(entry["compile_config"], "compile_config"))
        return model

    def save(self, filepath, overwrite=True, **kwargs):
        """Save the model (architecture, weights, and the optimizer's state) to a `.keras` file (or
        a legacy `.h5` file).

        Args:
            filepath: Path ending in `.keras` (or `.h5`).
            overwrite: Whether to replace an existing file (else it is an error). Defaults to
                `True`.
            **kwargs: `include_optimizer` (default `True`), `zipped` and `save_format` as in
                `fastnn.saving.save_model`.

        Example:

        ```python
        model.save("model.keras")
        model = fastnn.models.load_model("model.keras")
        ```
        """
        model_files.save_model(self, filepath, overwrite=overwrite, **kwargs)

    def save_weights(self, filepath, overwrite=True):
        """Save the model's weights to a `.weights.h5` file.

        Args:
            filepath: Path ending in `.weights.h5`.
            overwrite: Whether to replace an existing file. Defaults to `True`.
        """
        model_files.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath, skip_mismatch=False, by_name=False):
        """Load weights saved by `save_weights` (or from a `.keras` or legacy `.h5` file) into the
        model.

        Args:
            filepath: The file to read.
            skip_mismatch: Whether to skip layers whose weights do not match in count or shape (else
                it is an error). Defaults to `False`.
            by_name: Whether to match layers by name (legacy `.h5` files) instead of by order.
                Defaults to `False`.
        """
        model_files.load_weights(self, filepath, skip_mismatch=skip_mismatch, by_name=by_name)


class Functional(Model):
    """Model(inputs, outputs): the layers called between fastnn.Input tensors and the
    outputs, run in graph order on the autodiff tape (shared layers and fan-out included).

    Args:
        inputs: The model's `fastnn.Input` tensor(s) (a tensor, a list, or a dict by name).
        outputs: The output tensor(s) computed from them by calling layers.
        name: Name of the model. Defaults to `None`.
        trainable: Whether the model's weights are trained. Defaults to `True`.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True):
        self._setup(name or unique_name("functional"), trainable)
        ins, outs = flatten(inputs), flatten(outputs)
        for arg, tensors in (("inputs", ins), ("outputs", outs)):
            bad = [t for t in tensors if not isinstance(t, KerasTensor)]
            if bad or not tensors:
                raise TypeError(f"Model({arg}=...) takes symbolic tensors (fastnn.Input and "
                                f"layer calls on it), got {bad[0] if bad else tensors!r}")
        for t in ins:
            if not isinstance(t.node.layer, InputLayer):
                raise ValueError(f"Model inputs must come from fastnn.Input(); {t.name} is "
                                 f"the output of layer {t.node.layer.name!r}")
        self.inputs, self.outputs = ins, outs
        self._input_dtype = ins[0].dtype
        # Several inputs travel side by side in one array (below) of a dtype that holds each
        # exactly (float64 for floats and integers together); each is cut out in its own.
        dtypes = [np.dtype(t.dtype) for t in ins]
        self._packed_dtype = "float32" if all(d == np.float32 for d in dtypes) else \
            "float64" if any(d.kind == "f" for d in dtypes) else np.result_type(*dtypes).name
        nodes, self._tracked = nodes_between(ins, outs)
        self._nodes = [node for node in nodes if node.inputs]     # not the inputs' own
        self._chain = self._as_chain()
        # a chain trains as a Sequential does (fused paths included)
        self._layers = list(self._chain) if self._chain is not None else self._all_layers()
        # any other graph of fastnn's own layers runs without the tape
        self._schedule = None if self._chain is not None else \
            Schedule.for_graph(ins, outs, self._nodes)
        # Several inputs (outputs) reach the trainer side by side in one array of rows, each
        # flattened: the data path (shuffling, batches, checks, devices) stays the one path.
        self._input_widths = [_width(t.shape) for t in ins]
        self._output_widths = [_width(t.shape) for t in outs]
        if (len(ins) > 1 and None in self._input_widths) or \
                (len(outs) > 1 and None in self._output_widths):
            raise NotImplementedError(f"Model {self.name!r}: with several inputs or outputs, "
                                      "fastnn needs every axis but the batch axis known "
                                      "(give Input a full shape)")
        self.output_names = [t.node.layer.name for t in outs]
        self.input_names = [t.name for t in ins]
        self.build((None,) + (tuple(ins[0].shape[1:]) if len(ins) == 1 else
                              (sum(self._input_widths),)))

    def _as_chain(self):
        """The layers in order when the graph is a chain (one input, one output, each node
        reading the previous one's output, each layer called once), else None."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return None
        previous, chain = self.inputs[0], []
        for node in self._nodes:
            if node.several or node.inputs[0] is not previous or node.layer in chain or \
                    len(node.layer._inbound_nodes) != 1 or not isinstance(node.layer, Layer) \
                    or node.layer._user_call:     # (its call() may add_loss: the tape path)
                return None
            chain.append(node.layer)
            previous = node.outputs[0]
        return chain if previous is self.outputs[0] else None

    @property
    def _subclassed(self):
        return self.__dict__.get("_chain") is None

    @property
    def _batch_dtype(self):
        return super()._batch_dtype if len(self.inputs) == 1 else self._packed_dtype

    def _output_shape_for(self, x_shape):
        if self._chain is not None or None not in self._output_shape[1:]:
            return super()._output_shape_for(x_shape)
        shapes = {id(self.inputs[0]): (None,) + tuple(x_shape[1:])}
        for node in self._nodes:
            ins = [shapes[id(t)] for t in node.inputs]
            shapes[id(node.outputs[0])] = tuple(node.layer.compute_output_shape(
                ins if node.several else ins[0]))
        return shapes[id(self.outputs[0])]

    def _build(self, input_shape):
        if self._chain is not None:
            return super()._build(input_shape)
        # the graph knows its shapes: no probe call (which an open image size would refuse)
        self._input_shape = tuple(input_shape)[1:]
        self._layers = self._all_layers()
        self._output_shape = self.outputs[0].shape if len(self.outputs) == 1 else \
            (None, sum(self._output_widths))
        self._steps = []
        self.built = True
        self._pack_parameters()

    @property
    def layers(self):
        return list(self._tracked)

    def _output_layer(self):
        if self._chain is not None:
            return super()._output_layer()
        layer = self.outputs[0].node.layer if len(self.outputs) == 1 else None
        # fastnn's own layer, called once: its backward can start from the pre-activation
        if not isinstance(layer, Layer) or layer._user_call or len(layer._inbound_nodes) != 1:
            return None
        return layer

    def _summary_rows(self):
        """Keras's functional table: each layer's last output shape and, unless the graph is
        a chain, what each of its calls reads (layer[node][tensor])."""
        connected, rows = self._chain is None, []
        for layer in self.layers:
            nodes = layer._inbound_nodes
            outs = nodes[-1].outputs if nodes else []
            shape = "?" if not outs else _shape_str(outs[0].shape) if len(outs) == 1 else \
                "[" + ", ".join(_shape_str(t.shape) for t in outs) + "]"     # as Keras
            row = (f"{layer.name} ({type(layer).__name__})", shape,
                   layer.count_params() if layer.built else "0 (unbuilt)",
                   layer.trainable if layer.weights else None)
            if connected:
                links = [f"{t.node.layer.name}[{t.node.layer._inbound_nodes.index(t.node)}]"
                         f"[{t.index}]" for node in nodes for t in node.inputs]
                row += (", ".join(links) or "-",)
            rows.append(row)
        return rows, connected

    def get_config(self):
        """Keras's Functional config: every layer with its config and the calls it makes
        here (inbound_nodes: the tensors each call reads, as keras_history [layer, node,
        tensor]), and the input and output tensors."""
        mine = {id(node) for node in self._nodes} | {id(t.node) for t in self.inputs}
        index = {}      # a node -> its index among its layer's calls in this model
        for layer in self._tracked:
            kept = [node for node in layer._inbound_nodes if id(node) in mine]
            index.update((id(node), i) for i, node in enumerate(kept))

        def history(t):
            return [t.node.layer.name, index[id(t.node)], t.index]

        def tensor(t):
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": list(t.shape), "dtype": t.dtype,
                               "keras_history": history(t)}}
        layers = []
        for layer in self._tracked:
            if _is_builtin(type(layer)) and type(layer).__name__ not in _LAYER_CLASSES:
                raise NotImplementedError(
                    f"Model {self.name!r}: layer {layer.name!r} ({type(layer).__name__}) "
                    "cannot be written to a config yet (ops on symbolic tensors: use a "
                    "Lambda layer or a Layer subclass); save_weights() keeps the weights")
            entry = layer._config_entry()
            entry["name"] = layer.name
            kwargs = {"mask": None} if isinstance(layer, Model) else {}   # as Keras writes
            entry["inbound_nodes"] = [
                # a recurrent layer's initial states go in kwargs, as Keras writes them
                {"args": [tensor(node.inputs[0])],
                 "kwargs": {"initial_state": [tensor(t) for t in node.inputs[1:]]}}
                if getattr(node, "n_states", 0) else
                {"args": [[tensor(t) for t in node.inputs] if node.several
                          else tensor(node.inputs[0])], "kwargs": dict(kwargs)}
                for node in layer._inbound_nodes if id(node) in mine and node.inputs]
            layers.append(entry)

        def ends(tensors):
            specs = [history(t) for t in tensors]
            return specs[0] if len(specs) == 1 else specs
        return {"name": self.name, "trainable": self.trainable, "layers": layers,
                "input_layers": ends(self.inputs), "output_layers": ends(self.outputs)}

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        """The model get_config describes: its layers made from their configs, then called
        on each other's outputs as the inbound_nodes say (in as many passes as a call on a
        later layer's output needs). safe_mode=False: see Model.from_config."""
        with registry.custom_object_scope(custom_objects), registry.safe_mode_scope(safe_mode):
            return cls._from_config(config)

    @classmethod
    def _from_config(cls, config):
        model_config.check_functional_config(config)
        made, outputs, pending = {}, {}, []
        for entry in config["layers"]:
            layer = layer_from_entry(entry)
            made[entry["name"]] = layer
            if isinstance(layer, InputLayer):
                outputs[entry["name"], 0] = [layer.output]
            pending += [(entry["name"], node) for node in entry.get("inbound_nodes", [])]
        calls = {}      # a layer -> how many of its calls are made (they run in order)
        while pending:
            waiting = []
            for name, node in pending:
                arg = node["args"][0]
                specs = arg if isinstance(arg, list) else [arg]
                states = (node.get("kwargs") or {}).get("initial_state") or []
                states = states if isinstance(states, list) else [states]
                keys = [tuple(spec["config"]["keras_history"]) for spec in specs + states]
                index = calls.get(name, 0)
                if any((k[0], k[1]) not in outputs for k in keys) or \
                        any(n == name for n, _ in waiting):
                    waiting.append((name, node))
                    continue
                tensors = [outputs[k[0], k[1]][k[2]] for k in keys]
                main, kw = tensors[:len(specs)], {}
                if states:
                    kw["initial_state"] = tensors[len(specs):]
                out = made[name](main if isinstance(arg, list) else main[0], **kw)
                outputs[name, index] = list(out) if isinstance(out, (list, tuple)) else [out]
                calls[name] = index + 1
            if len(waiting) == len(pending):
                raise ValueError(f"config: the calls of {[n for n, _ in waiting]} read "
                                 "tensors no layer makes (a cycle, or a missing layer)")
            pending = waiting

        def ends(spec):
            specs = spec if spec and isinstance(spec[0], list) else [spec]
            tensors = [outputs[s[0], s[1]][s[2]] for s in specs]
            return tensors if len(tensors) > 1 else tensors[0]
        return cls(ends(config["input_layers"]), ends(config["output_layers"]),
                   name=config.get("name"), trainable=config.get("trainable", True))

    def to_json(self, **kwargs):
        return json.dumps(model_entry(self, compiled=False), **kwargs)

    @property
    def input(self):
        return self.inputs[0] if len(self.inputs) == 1 else self.inputs

    @property
    def output(self):
        return self.outputs[0] if len(self.outputs) == 1 else self.outputs

    def call(self, inputs, training=None):
        if len(self.inputs) > 1 and not isinstance(inputs, (list, tuple)):
            inputs = self._split_inputs(inputs)         # the trainer's side-by-side batch
        given = inputs if len(self.inputs) > 1 else [inputs]
        if len(given) != len(self.inputs):
            raise ValueError(f"Model {self.name!r} takes {len(self.inputs)} inputs, got "
                             f"{len(given)}")
        values = {id(tensor): value for tensor, value in zip(self.inputs, given)}
        for node in self._nodes:
            args = [values[id(t)] for t in node.inputs]
            out = node.layer(args if node.several else args[0], training=training)
            if len(node.outputs) > 1:       # a layer of several outputs (an RNN's states)
                values.update((id(t), v) for t, v in zip(node.outputs, out))
            else:
                values[id(node.outputs[0])] = out
        outs = [values[id(t)] for t in self.outputs]
        return outs[0] if len(outs) == 1 else outs

    # ---- several inputs and outputs ---------------------------------------------------------
    def _input_arrays(self, x):
        """A batch (the trainer's side-by-side rows for several inputs) as one array per
        input."""
        if len(self.inputs) == 1:
            return [x]
        return [value_of(t) for t in self._split_inputs(x)]

    def _split_inputs(self, packed):
        """A side-by-side batch of the inputs (a tensor or an array) as one tensor each."""
        xp, values, at = get_ops().xp, value_of(packed), 0
        parts = []
        for tensor, width in zip(self.inputs, self._input_widths):
            part = xp.ascontiguousarray(values[:, at:at + width], dtype=tensor.dtype)
            parts.append(Tensor(part.reshape((len(part),) + tuple(tensor.shape[1:]))))
            at += width
        return parts

    def _split_outputs(self, packed):
        """The model's side-by-side output rows as one array per output."""
        xp, at, parts = get_ops().xp, 0, []
        for tensor, width in zip(self.outputs, self._output_widths):
            part = xp.ascontiguousarray(packed[:, at:at + width])
            parts.append(part.reshape((len(part),) + tuple(tensor.shape[1:])))
            at += width
        return parts

    def _structure(self, data, names, what, arg):
        """data given for several inputs/outputs (a list, tuple or dict by name) as a list."""
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(names))
            if unknown:
                raise ValueError(f"{arg}: unknown {what} {unknown}; model {self.name!r} has "
                                 f"{names}")
            return [data.get(name) for name in names]
        if len(names) == 1:
            return [data]
        if not isinstance(data, (list, tuple)) or len(data) != len(names):
            raise ValueError(f"{arg}: model {self.name!r} has {len(names)} {what}s {names}: "
                             f"pass a list of {len(names)} arrays or a dict by name")
        return list(data)

    def _prepare_x(self, x, arg="x"):
        if len(self.inputs) == 1 or x is None:
            return super()._prepare_x(x, arg)
        arrays = []
        for tensor, value in zip(self.inputs, self._structure(x, self.input_names, "input", arg)):
            name = f"{arg}[{tensor.name!r}]"
            if value is None:
                raise ValueError(f"{name} is required")
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{name} must be a real numeric array, got dtype {value.dtype}")
            if value.ndim == 0 or value.shape[1:] != tuple(tensor.shape[1:]):
                raise ValueError(f"{name} has shape {value.shape}, but input {tensor.name!r} "
                                 f"expects {_shape_str(tensor.shape)}")
            if arrays and len(value) != len(arrays[0]):
                raise ValueError(f"{arg}: the inputs have different numbers of samples: "
                                 f"{[len(a) for a in arrays] + [len(value)]}")
            self._check_finite(value, name)
            if self._packed_dtype == "float64" and value.dtype.kind in "iu" and \
                    value.size and int(np.abs(value).max()) >= 2 ** 53:
                raise ValueError(f"{name} holds integers of magnitude 2**53 or more, which "
                                 "fastnn cannot carry next to float inputs")
            arrays.append(value.reshape(len(value), -1))
        return super()._prepare_x(np.concatenate(arrays, axis=1).astype(self._packed_dtype),
                                  arg)

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                **kwargs):
        if len(self.outputs) == 1:
            self._output_losses = None
            return super().compile(optimizer, loss, loss_weights, metrics, **kwargs)
        names = self.output_names
        serialized = isinstance(loss, dict) and "class_name" in loss
        losses = [loss] * len(names) if loss is None or serialized or \
            not isinstance(loss, (list, tuple, dict)) else \
            self._structure(loss, names, "output", "loss")
        weights = [1.0] * len(names) if loss_weights is None else \
            self._structure(loss_weights, names, "output", "loss_weights")
        if metrics is None:
            specs = [[] for _ in names]
        elif isinstance(metrics, dict):
            specs = self._structure(metrics, names, "output", "metrics")
        elif isinstance(metrics, (list, tuple)) and len(metrics) == len(names) and \
                all(m is None or isinstance(m, (list, tuple)) for m in metrics):
            specs = list(metrics)
        else:
            raise ValueError(f"Invalid metrics for model {self.name!r}: with several outputs, "
                             f"pass a dict by output name or a list (one list per output) "
                             f"matching {names}")
        specs = [[] if m is None else list(m) if isinstance(m, (list, tuple)) else [m]
                 for m in specs]
        super().compile(optimizer, next((x for x in losses if x is not None), None), None,
                        [spec for group in specs for spec in group], **kwargs)
        self._loss_weights_spec = loss_weights      # (saved as given, as Keras saves it)
        self._output_losses = [None if x is None else losses_module.get(x) for x in losses]
        # the loss per output as given (a list or a dict by name), for the compile config
        self._loss_spec = loss if isinstance(loss, (list, tuple)) or \
            (isinstance(loss, dict) and not serialized) else None
        self._loss_weights = [float(w if w is not None else 1.0) for w in weights]
        self._output_metric_specs = specs

    def _build_metrics(self, y_shape):
        if self.__dict__.get("_output_losses") is None:
            return super()._build_metrics(y_shape)
        if self._metrics is None:
            self._loss_tracker = metrics_module.Mean("loss")
            self._output_loss_trackers = [metrics_module.Mean(f"{name}_loss")
                                          for name, loss in zip(self.output_names,
                                                                self._output_losses) if loss]
            self._metrics, self._metric_outputs = [], []
            for i, (name, specs) in enumerate(zip(self.output_names,
                                                  self._output_metric_specs)):
                for spec in specs:
                    metric = metrics_module.get(spec, y_shape[i], self.outputs[i].shape)
                    metric.name = f"{name}_{metric.name}"
                    self._metrics.append(metric)
                    self._metric_outputs.append(i)
        return self._metrics

    def _prepare_targets(self, y, n, arg, y_arg):
        if self.__dict__.get("_output_losses") is None:
            return super()._prepare_targets(y, n, arg, y_arg)
        columns, shapes = [], []
        self._target_widths = []
        for i, (name, value) in enumerate(zip(self.output_names, self._structure(
                y, self.output_names, "output", y_arg))):
            loss = self._output_losses[i]
            if value is None or loss is None:
                if loss is not None:
                    raise ValueError(f"{y_arg}[{name!r}] is required: output {name!r} has a "
                                     "loss")
                columns.append(np.zeros((n, 0), np.float32))
                shapes.append(None)
                self._target_widths.append(0)
                continue
            if np.shape(value)[:1] != (n,):
                raise ValueError(f"{arg} and {y_arg}[{name!r}] must have the same number of "
                                 f"samples, got {n} and {np.shape(value)[:1]}")
            shapes.append(np.shape(value))
            targets = loss.prepare_targets(value, self.outputs[i].shape)
            columns.append(targets.reshape(n, -1).astype(np.float32))
            self._target_widths.append(columns[-1].shape[1])
        return np.ascontiguousarray(np.concatenate(columns, axis=1)), shapes

    def _split_targets(self, y):
        at, parts = 0, []
        for i, width in enumerate(self._target_widths):
            part = y[:, at:at + width]
            at += width
            loss = self._output_losses[i]
            if loss is None:
                parts.append(None)
            elif type(loss) is losses_module.SparseCategoricalCrossentropy:
                parts.append(get_ops().xp.ascontiguousarray(part.reshape(-1)).astype(np.int32))
            else:
                parts.append(get_ops().xp.ascontiguousarray(part).reshape(
                    (len(part),) + tuple(self.outputs[i].shape[1:-1]) + (-1,)))
        return parts

    def _loss_and_grad(self, out, y, w, want_grad):
        if self.__dict__.get("_output_losses") is None:
            return super()._loss_and_grad(out, y, w, want_grad)
        masks = self._output_masks()
        n, total, grads, totals = out.shape[0], 0.0, [], []
        for i, (o, t) in enumerate(zip(self._split_outputs(out), self._split_targets(y))):
            loss, weight = self._output_losses[i], self._loss_weights[i]
            if loss is None:
                grads.append(None)
                continue
            o2 = o.reshape(-1, o.shape[-1])
            rows = o2.shape[0]
            # an output's mask weighs its timesteps, as in a single-output model
            w_i = w if masks[i] is None else self._masked_weights(masks[i], w, o)
            if w_i is not None and rows != len(w_i):
                raise ValueError(f"sample_weight: output {self.output_names[i]!r} has "
                                 f"{rows // n} values per sample; weights apply to one")
            scale = (1.0 / rows if loss.reduction == "sum_over_batch_size" else 1.0) * weight
            grad = get_ops().empty(o2.shape) if want_grad else None
            t2 = t.reshape(-1) if t.dtype == np.int32 else t.reshape(rows, -1)
            # the trackers count samples (n); an output of several rows per sample (a
            # sequence) adds its mean over rows per sample, as Keras reports it
            value = _scaled(loss.value_and_grad(o2, t2, w_i, scale, grad, loss.mode(None)),
                            scale_back(loss, n) * (n / rows if loss.reduction ==
                                                   "sum_over_batch_size" else 1.0))
            totals.append(value)
            total = total + weight * value
            grads.append(None if grad is None else grad.reshape(o.shape))
        self._batch_output_totals = totals      # for _track, in this (locked) run
        return total, grads, n

    def _track(self, total, n, y, out):
        if self.__dict__.get("_output_losses") is None:
            return super()._track(total, n, y, out)
        self._loss_tracker.update_with_sum(total, n)
        for tracker, value in zip(self._output_loss_trackers, self._batch_output_totals):
            tracker.update_with_sum(value, n)
        if y is None:
            return
        outs, targets, masks = self._split_outputs(out), self._split_targets(y), \
            self._output_masks()
        for metric, i in zip(self._metrics, self._metric_outputs):
            if masks[i] is None:
                metric.update_state(targets[i], outs[i])
                continue
            rows = masks[i].size        # each timestep a row, the masked ones weighing 0
            metric.update_state(targets[i].reshape(rows, -1) if targets[i].dtype != np.int32
                                else targets[i].reshape(-1), outs[i].reshape(rows, -1),
                                sample_weight=masks[i].reshape(-1).astype(np.float32))

    def _output_masks(self):
        """The mask each output carries in this thread's last forward pass (None: none)."""
        masks = _thread_state(self._thread).__dict__.get("output_mask")
        return list(masks) if masks else [None] * len(self.outputs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        out = super().predict(x, batch_size, verbose, steps, callbacks)
        # (batched x: already split, batch by batch)
        return out if len(self.outputs) == 1 or isinstance(out, list) else \
            self._split_outputs(out)

    def __call__(self, x, training=False):
        if len(self.inputs) == 1 and len(self.outputs) == 1 or is_symbolic(x) or \
                isinstance(x, Tensor):
            return super().__call__(x, training)
        given = x if len(self.inputs) > 1 else [x]
        if not isinstance(given, (list, tuple)) or len(given) != len(self.inputs):
            raise ValueError(f"Model {self.name!r} takes a list of {len(self.inputs)} arrays")
        ops = get_ops()
        arrays = []
        for tensor, value in zip(self.inputs, given):
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{tensor.name} must be a real numeric array, got dtype "
                                f"{value.dtype}")
            if value.shape[1:] != tuple(tensor.shape[1:]):
                raise ValueError(f"Input {tensor.name!r} expects shape {tensor.shape}, got "
                                 f"{value.shape}")
            self._check_finite(value, tensor.name)
            arrays.append(Tensor(ops.asarray(value, tensor.dtype)))
        with forward_pass(self._layers, bool(training)), no_grad():
            out = self.call(arrays if len(arrays) > 1 else arrays[0], training=bool(training))
        outs = out if isinstance(out, list) else [out]
        results = [np.array(ops.to_numpy(value_of(o))) for o in outs]
        return results if isinstance(out, list) else results[0]


class Sequential(Model):
    """A chain of layers: Keras's Sequential. A model among its layers (a Sequential or a
    functional model used as a layer) makes it run on the autodiff tape, as a functional
    graph of such layers does.

    Args:
        layers: The layers, in order (the first may be a `fastnn.Input`), or `None` to add them
            later. Defaults to `None`.
        trainable: Whether the model's weights are trained. Defaults to `True`.
        name: Name of the model. Defaults to `None`.

    Example:

    ```python
    model = fastnn.Sequential([fastnn.Input(shape=(784,)),
                               fastnn.layers.Dense(64, activation="relu"),
                               fastnn.layers.Dense(10, activation="softmax")])
    ```
    """
    __setattr__ = object.__setattr__    # its layers are the ones add() takes, nothing else

    def __init__(self, layers=None, trainable=True, name=None):
        self._setup(name or unique_name("sequential"), trainable)
        self._tracked = []      # the layers as added (model.layers); _layers: what computes
        for layer in layers or []:
            self.add(layer)

    @property
    def _subclassed(self):
        return any(isinstance(layer, Model) for layer in self.__dict__.get("_tracked", ()))

    @property
    def layers(self):
        return list(self._tracked)

    def call(self, inputs, training=None):
        """Run the layers in order on `inputs`.

        Args:
            inputs: The input tensor.
            training: Whether the call is for training. Defaults to `None`.

        Returns:
            The output tensor.
        """
        for layer in self._tracked:
            inputs = layer(inputs, training=training)
        return inputs

    def add(self, layer):
        """Append a layer (or an `Input`, as the first item) to the model.

        Args:
            layer: A layer, a model, or a `fastnn.Input` tensor.
        """
        if isinstance(layer, KerasTensor) and isinstance(layer.node.layer, InputLayer):
            layer = layer.node.layer            # Sequential([fastnn.Input(shape), ...])
        if isinstance(layer, InputLayer):
            if self._tracked:
                raise ValueError("An Input/InputLayer can only be the first item of Sequential")
            self._input_shape = layer.input_shape_arg
            self._input_name = layer.name
            self._input_dtype = layer.input_dtype
        elif isinstance(layer, (Layer, Model)):
            if layer is self or layer in self._tracked:
                raise ValueError(f"Layer {layer.name!r} is already in model {self.name!r}")
            shape = layer.input_shape_arg if isinstance(layer, Layer) else layer._input_shape
            if not self._tracked and self._input_shape is None and shape is not None:
                self._input_shape = shape
            self._tracked.append(layer)
        else:
            raise TypeError(f"Sequential.add expects a fastnn layer or model, got "
                            f"{type(layer).__name__}")
        self._relayer()

    def pop(self):
        """Remove the model's last layer.

        Returns:
            The removed layer.
        """
        if not self._tracked:
            raise IndexError("There are no layers in the model to pop")
        layer = self._tracked.pop()
        self._relayer()
        return layer

    def _relayer(self):
        """_layers (what computes and holds the weights): the layers, or with a model among
        them, every layer at any depth; then built again when the input shape is known."""
        self._layers = self._all_layers() if self._subclassed else list(self._tracked)
        self.built = False
        if self._input_shape is not None and self._tracked:
            self.build()

    # Keras's Sequential is a functional graph too: inputs, outputs, and each layer's output,
    # for feature extraction: Model(model.inputs, model.get_layer("hidden").output).
    def _symbolic(self):
        """(input, output) of the chain called on an Input once (again when its layers
        change); the layers' calls are graph nodes, as any functional model's."""
        key = tuple(map(id, self._tracked))
        graph = self.__dict__.get("_graph")
        if graph is None or graph[0] != key:
            if self._input_shape is None or not self._tracked:
                raise AttributeError(f"Sequential model {self.name!r} has no defined input "
                                     "yet: start it with Input(shape=...) or build it")
            inputs = x = Input(shape=self._input_shape, dtype=self._input_dtype,
                               name=self._input_name)
            for layer in self._tracked:
                x = layer(x)
            graph = self._graph = (key, inputs, x)
        return graph[1], graph[2]

    @property
    def inputs(self):
        return [self._symbolic()[0]]

    @property
    def input(self):
        return self._symbolic()[0]

    @property
    def outputs(self):
        return [self._symbolic()[1]]

    @property
    def output(self):
        return self._symbolic()[1]

    def get_config(self):
        """The model's configuration: its input and each layer's config, as Keras writes it.

        Returns:
            A dict.
        """
        layers = []
        if self._input_shape is not None:
            layers.append({"module": "keras.layers", "class_name": "InputLayer",
                           "config": {"batch_shape": [None, *self._input_shape],
                                      "dtype": self._input_dtype, "sparse": False,
                                      "name": self._input_name or "input_layer"},
                           "registered_name": None})
        layers += [layer._config_entry() for layer in self._tracked]
        config = {"name": self.name, "trainable": self.trainable, "dtype": "float32",
                  "layers": layers}
        if self._input_shape is not None:
            config["build_input_shape"] = [None, *self._input_shape]
        return config


# The model classes a config may nest as a layer (fastnn.layers.core.layer_from_entry).
_MODEL_CLASSES.update(Sequential=Sequential, Functional=Functional, Model=Model)


def model_entry(model, compiled=True):
    """A model as Keras serializes it (config.json, to_json): its class, config, build
    config and (compiled=True) compile config.

    Args:
        model: The model.
        compiled: Whether to include its compile config. Defaults to `True`.

    Returns:
        A dict.
    """
    if isinstance(model, Sequential):
        entry = {"module": "keras", "class_name": "Sequential", "config": model.get_config(),
                 "registered_name": None,
                 "build_config": {"input_shape": list(model.input_shape or []) or None}}
    else:
        entry = {"module": "keras.src.models.functional", "class_name": "Functional",
                 "config": model.get_config(), "registered_name": "Functional",
                 "build_config": {"input_shape": None}}
    if compiled:    # Keras writes {} for a model not compiled
        entry["compile_config"] = model_config.compile_config(model) or {}
    return entry


def model_from_config_entry(entry, root="config"):
    """A model (uncompiled) from its serialized entry ({"class_name": ..., "config": ...}).

    Args:
        entry: The serialized model, a dict.
        root: Where it is, for error messages. Defaults to `"config"`.

    Returns:
        The model.
    """
    return _model_from_config(entry, compile=False, root=root)


def _model_from_config(config, compile, root="config.json", cc_root=None,
                       optimizer_key="optimizer"):
    """A model from config.json's content (root names it in errors; cc_root names where the
    compile config sits, by default root.compile_config, and optimizer_key its optimizer's
    key); every malformed entry raises, naming its path, before anything is built."""
    model_config.check_model_config(config, root)
    cc_root = cc_root or f"{root}.compile_config"
    args = None
    cc = config.get("compile_config")
    if cc is not None and not isinstance(cc, dict):
        C.fail_type(cc_root, "a JSON object or null", cc)
    if compile and cc:
        args = model_config.compile_args(cc, cc_root, optimizer_key)
    cls = Sequential if config["class_name"] == "Sequential" else Functional
    try:
        model = cls.from_config(config["config"])
    except (TypeError, ValueError) as exc:
        raise C.prefixed(exc, f"{root}.config") from None
    if args is not None:
        try:
            model.compile(**args)
        except (TypeError, ValueError) as exc:
            raise C.prefixed(exc, cc_root) from None
    return model


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model (Sequential or functional) from a .keras or legacy .h5 file, Keras's or
    fastnn's.

    Args:
        filepath: Path of a `.keras` or `.h5` file.
        custom_objects: A dict `{name: class or function}` for the custom layers, losses, ... the
            file names. Defaults to `None`.
        compile: Whether to compile the model as it was saved (optimizer, loss, metrics). Defaults
            to `True`.
        safe_mode: Whether to refuse a `Lambda` layer stored as Python bytecode (loading it runs
            code from the file). Defaults to `True`.

    Returns:
        The model.

    Example:

    ```python
    model = fastnn.models.load_model("model.keras")
    ```
    """
    return model_files.read_model(filepath, _model_from_config, custom_objects=custom_objects,
                                  compile=compile, safe_mode=safe_mode)


def clone_model(model, input_tensors=None, clone_function=None, call_function=None,
                recursive=False):
    """A new model of the same architecture with new layers (weights initialised afresh, as
    Keras does: copy them with set_weights(model.get_weights())), from the model's config.

    Args:
        model: The model to clone.
        input_tensors: Input tensor(s) to build the clone on, or `None` for new ones. Defaults to
            `None`.
        clone_function: A function from a layer to its clone, or `None` for
            `layer.__class__.from_config(layer.get_config())`. Defaults to `None`.
        call_function: A function `(layer, *args, **kwargs)` that calls each cloned layer, or
            `None`. Defaults to `None`.
        recursive: Whether to clone the layers of nested models with `clone_function` too. Defaults
            to `False`.

    Returns:
        The new model.
    """
    for arg, value in (("input_tensors", input_tensors), ("clone_function", clone_function),
                       ("call_function", call_function)):
        if value is not None:
            raise NotImplementedError(f"clone_model: {arg} is not supported by fastnn yet")
    if recursive:
        raise NotImplementedError("clone_model: recursive=True is not supported by fastnn yet")
    return type(model).from_config(model.get_config())


def model_from_json(json_string, custom_objects=None, safe_mode=None):
    """The model a to_json() string describes (its layers, not its weights), as Keras's
    keras.models.model_from_json. Class names resolve only against fastnn's own layers and
    registered or given custom objects. safe_mode=False allows a Lambda layer's Python
    bytecode (it runs code from the string: only for strings you trust).

    Args:
        json_string: A string from `Model.to_json()`.
        custom_objects: A dict `{name: class or function}` for custom objects. Defaults to `None`.
        safe_mode: `False` allows a `Lambda` layer's Python bytecode; `None` or `True` refuses it.
            Defaults to `None`.

    Returns:
        The model (new weights, uncompiled).
    """
    with registry.custom_object_scope(custom_objects), registry.safe_mode_scope(safe_mode):
        return model_from_config_entry(json.loads(json_string), root="json")

