"""Layers with Keras 3's names, arguments, weight shapes and weight order.

Contract (see docs/architecture.md): __init__ stores the config; build(input_shape)
creates the weights; forward(x, training) returns the output and keeps what backward needs in
the calling thread's state (_state(): one model may be called from several threads at once);
backward(dy, need_dx) writes the weight gradients into self.grads and returns dx. backward may
overwrite dy in place (it is the next layer's scratch buffer). Shapes exclude nothing: the batch
axis is None in shapes given to build()."""
import base64
import builtins
import contextlib
import functools
import inspect
import itertools
import json
import marshal
import re
import threading
import types
import warnings

import numpy as np

import fastnn

from .. import activations, constraints, distribution, initializers, registry, regularizers
from .. import graph as graph_module
from .. import ops as array_ops
from .._config import without_defaults
from ..autodiff import Tensor, Variable, gradients, is_recording, no_grad, record, tape, value_of
from ..autodiff import node as autodiff_node
from ..backend import get_ops, unique_name
from ..backend.base import dilation, pointwise
from ..graph import KerasTensor, Node, flatten, is_symbolic
from ..images import _check_resize, _data_format
from ..rng import get_rng


def _finite(value, arg, layer, low=None):
    """A finite float (> low when given), or an error naming the layer and the argument."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{layer}: {arg} must be a number, got {value!r}") from None
    if not np.isfinite(value) or (low is not None and not value > low):
        bound = "" if low is None else f" greater than {low}"
        raise ValueError(f"{layer}: {arg} must be a finite number{bound}, got {value!r}")
    return value


def _is_builtin(cls):
    """Whether a layer class is one of fastnn's own (defined in the fastnn.layers package:
    saved as keras.layers.<name>, run by the functional schedule) rather than a user's."""
    return cls.__module__.startswith(__package__ + ".")


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _shape_tuple(shape, arg="input_shape"):
    if _is_int(shape):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{arg} must be a tuple of ints, got {shape!r}") from None
    if not all(d is None or _is_int(d) for d in shape):    # never truncate 4.7 to 4
        raise TypeError(f"{arg} must be a tuple of ints (or None), got {shape!r}")
    shape = tuple(None if d is None else int(d) for d in shape)
    if any(d is not None and d < 1 for d in shape):
        raise ValueError(f"{arg} dimensions must be positive, got {shape}")
    return shape


_BUILD_LOCK = threading.RLock()


@functools.cache
def _accepts_training(call):
    """Whether a call() method takes training= (read once per method)."""
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False
    return "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@functools.cache
def _takes_mask(method):
    """Whether a forward()/call() method has a `mask` argument (read once per method)."""
    try:
        return "mask" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def masked_forward(steps, x, training):
    """A chain's forward pass (a Sequential's steps) carrying masks as Keras does: each layer
    that takes a mask gets the one its input carries, and compute_mask gives its output's.
    Returns (output, the output's mask).

    Args:
        steps: The chain's steps (layers).
        x: The input.
        training: Whether the pass is for training.

    Returns:
        The output of the last step.
    """
    mask = None
    for _, _, step in steps:
        y = step.forward(x, training, mask=mask) if mask is not None and \
            _takes_mask(type(step).forward) else step.forward(x, training)
        record_activity(step, y, training)
        mask = step._output_mask(x, mask) if isinstance(step, Layer) else None
        x = y
    return x, mask


class _ThreadState:
    """One thread's forward state and workspace for a layer (Layer._state)."""

    def __init__(self):
        self.workspace = {}


def _thread_state(local):
    """The state of this thread's current call of a layer: `local.slot` numbers the calls of
    one layer within one forward pass of a model (a layer called twice keeps two states until
    backward); 0 outside such a pass."""
    states = getattr(local, "states", None)
    if states is None:
        states = local.states = [_ThreadState()]
    slot = getattr(local, "slot", 0)
    while len(states) <= slot:
        states.append(_ThreadState())
    return states[slot]


# The forward pass a model is running in this thread: how many times each layer has been
# called in it (each call gets its own state), and which layers belong to the model.
_PASS = threading.local()


_LENDER = threading.local()     # the buffer pool layers draw from in this thread, if any


@contextlib.contextmanager
def drawing_from(pool):
    """Within the block, in this thread, layers take their buffers from `pool` (pool.take)
    instead of keeping their own: an inference schedule's memory plan (fastnn.schedule).

    Args:
        pool: The buffer pool (an object with `take`).
    """
    previous, _LENDER.pool = getattr(_LENDER, "pool", None), pool
    try:
        yield
    finally:
        _LENDER.pool = previous


@contextlib.contextmanager
def forward_pass(layers, training, preactivation=None):
    """A model's forward pass over `layers` (its layers and theirs, at any depth); layers
    called in it without training= take the pass's, as in Keras. `preactivation`: the output
    layer, whose backward then gets the gradient of its pre-activation (a fused loss).

    Args:
        layers: The layers, in order.
        training: Whether the pass is for training.
        preactivation: Where to keep pre-activations for the fused backward pass, or `None`.
            Defaults to `None`.
    """
    _PASS.counts, _PASS.layers, _PASS.training = {}, {id(layer) for layer in layers}, training
    _PASS.preactivation, _PASS.losses = preactivation, []
    try:
        yield _PASS.counts
    finally:
        _PASS.counts = _PASS.layers = _PASS.training = _PASS.preactivation = None
        _PASS.losses = None


def added_losses():
    """The losses layers added (add_loss) in this thread's model forward pass so far."""
    return list(getattr(_PASS, "losses", None) or [])


_ACTIVITY = threading.local()   # the activity penalties of this thread's train or test step


@contextlib.contextmanager
def activity_penalties():
    """Within the block, in this thread, the layers with an activity_regularizer that run
    off the autodiff tape (a Sequential's steps, a schedule's) compute their penalty on their
    output; their values collect in the list this yields, their gradients wait for backward
    (with_activity_gradient). Layers on the tape add theirs as add_loss() losses."""
    previous, _ACTIVITY.values = getattr(_ACTIVITY, "values", None), []
    try:
        yield _ACTIVITY.values
    finally:
        _ACTIVITY.values = previous


def activity_loss(regularizer, y):
    """Keras's activity penalty of an output: the regularizer's value divided by the batch
    size (a Tensor on the tape, or a float array value off it).

    Args:
        regularizer: The activity regularizer.
        y: The layer's output.

    Returns:
        The penalty, a float.
    """
    value = regularizer(y)
    rows = value_of(y).shape[0] if value_of(y).ndim else 0
    return array_ops.divide(value, float(rows)) if rows else value


def record_activity(layer, y, training):
    """After `layer` ran forward off the tape: its activity penalty, when it has one and a
    train or test step is collecting them.

    Args:
        layer: The layer.
        y: Its output.
        training: Whether the call is for training.
    """
    regularizer = getattr(layer, "activity_regularizer", None)
    values = getattr(_ACTIVITY, "values", None)
    if regularizer is None:
        return
    state = layer._state()
    state.activity_grad = None
    if values is None:
        return
    out = Tensor(y, requires_grad=bool(training))
    with tape():
        value = activity_loss(regularizer, out)
    if training and isinstance(value, Tensor) and value.requires_grad:
        state.activity_grad = gradients(value, [out])[0]
    values.append(float(np.asarray(get_ops().to_numpy(value_of(value)), np.float64).reshape(())))


def with_activity_gradient(layer, dy):
    """dy plus the gradient of the layer's activity penalty (recorded by record_activity).

    Args:
        layer: The layer.
        dy: The gradient of the loss with respect to its output.

    Returns:
        The gradient including the penalty's.
    """
    if getattr(layer, "activity_regularizer", None) is None:
        return dy
    grad = layer._state().__dict__.pop("activity_grad", None)
    return dy if grad is None else dy + grad.reshape(dy.shape)


class Layer:
    """The base class of every layer: weights, building, calling, configs.

    A custom layer subclasses it: create weights in `build(input_shape)` with `add_weight`,
    compute in `call(inputs)` with `fastnn.ops` (its gradient comes from fastnn's autodiff), and
    return its constructor arguments from `get_config` so that it can be saved and loaded.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: No other keyword argument is accepted (an error names it).

    Example:

    ```python
    class Scale(fastnn.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, inputs):
            return inputs * self.w
    ```
    """
    # Keys Keras 3 writes in this layer's config for features fastnn does not implement, at
    # the values that leave the math unchanged (from_config accepts those, refuses others).
    _KERAS_DEFAULTS = {}
    # The default of Keras's call(..., training=): Keras writes it into a functional
    # config's call of the layer when True (the image preprocessing layers).
    keras_training_default = False

    def __init__(self, trainable=True, name=None, dtype=None, input_shape=None,
                 input_dim=None, batch_input_shape=None, batch_size=None,
                 activity_regularizer=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) "
                            f"{sorted(kwargs)}")
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"{type(self).__name__}: only dtype='float32' is supported, "
                             f"got {dtype!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.trainable = trainable
        # Keras's penalty on the layer's output, added to the model's loss (divided by the
        # batch size): record_activity off the tape, _call_on_tensor on it
        try:
            self.activity_regularizer = regularizers.deserialize(
                activity_regularizer, path="activity_regularizer") \
                if isinstance(activity_regularizer, dict) else \
                regularizers.get(activity_regularizer)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{self.name}: activity_regularizer: {exc}") from None
        self.built = False
        self.input_shape_arg = None  # the legacy input_shape/input_dim, a shape without batch
        if batch_input_shape is not None:
            self.input_shape_arg = _shape_tuple(batch_input_shape, "batch_input_shape")[1:]
        elif input_shape is not None:
            self.input_shape_arg = _shape_tuple(input_shape)
        elif input_dim is not None:
            self.input_shape_arg = _shape_tuple((input_dim,), "input_dim")
        self._vars = {}
        self._trainable_names = []
        self._non_trainable_names = []
        self.grads = {}
        self._build_shape = None
        self._thread = threading.local()
        self._variables = {}
        self._inbound_nodes = []        # this layer's calls on symbolic tensors

    @property
    def _user_call(self):
        """Whether this is a user's layer: it defines call() (run on the autodiff tape)
        instead of the fused forward/backward of fastnn's own layers."""
        return type(self).call is not Layer.call

    # ---- weights --------------------------------------------------------------------------
    def __getattr__(self, name):
        # A user's layer gets its weights as Variables (so that call() is differentiated
        # through them); fastnn's layers pass the arrays to their kernels.
        vars_ = self.__dict__.get("_vars")
        if vars_ is not None and name in vars_:
            return self._variables[name] if self._user_call else vars_[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True,
                   autocast=True, regularizer=None, constraint=None, aggregation="none",
                   overwrite_with_gradient=False, name=None):
        """Keras's add_weight: a weight initialized on the host (one random stream on every
        backend) and kept where the backend computes. Returns it as a Variable.

        Args:
            shape: Shape of the weight, a tuple; `None`: a scalar.
            initializer: Initializer (a name, dict or object); `None`: `"glorot_uniform"`. Defaults
                to `None`.
            dtype: Only `"float32"` (or `None`) is supported. Defaults to `None`.
            trainable: Whether the optimizer updates the weight. Defaults to `True`.
            autocast: Accepted for Keras compatibility (no effect: float32 only). Defaults to
                `True`.
            regularizer: Regularizer whose penalty on the weight is added to the loss. Defaults to
                `None`.
            constraint: Constraint applied to the weight after each optimizer step. Defaults to
                `None`.
            aggregation: `"none"` or `"mean"` only (other Keras values are refused). Defaults to
                `"none"`.
            overwrite_with_gradient: Only `False` is supported. Defaults to `False`.
            name: Name of the weight; `None`: `"variable"` (numbered when taken). Defaults to
                `None`.

        Returns:
            The weight, a `Variable` (usable in `call` like a tensor).
        """
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"Layer {self.name!r}: add_weight(dtype={dtype!r}): fastnn keeps "
                             "weights in float32")
        given = self.__dict__.get("_weight_opts", {}).get(name, {})
        regularizer = regularizers.get(regularizer) or given.get("regularizer")
        constraint = constraints.get(constraint) or given.get("constraint")
        if overwrite_with_gradient or aggregation not in ("none", "mean", None):
            raise ValueError(f"Layer {self.name!r}: add_weight(aggregation={aggregation!r}, "
                             f"overwrite_with_gradient={overwrite_with_gradient!r}) is not "
                             "supported by fastnn")
        shape = _shape_tuple(() if shape is None else shape, "shape")
        if name is None:
            name = "variable" if "variable" not in self._vars else \
                f"variable_{len(self._vars)}"
        if name in self._vars:
            raise ValueError(f"Layer {self.name!r} already has a weight named {name!r}")
        value = np.asarray(initializers.get(initializer or "glorot_uniform")(shape))
        if value.shape != shape:
            raise ValueError(f"{self.name}: initializer returned shape {value.shape} for "
                             f"weight {name!r}, expected {shape}")
        ops = get_ops()
        self._vars[name] = ops.asarray(value).reshape(shape)    # a 0-d weight stays 0-d
        (self._trainable_names if trainable else self._non_trainable_names).append(name)
        if trainable:
            self.grads[name] = ops.alloc(shape)
        variable = self._variables[name] = Variable(self, name, bool(trainable))
        # the model adds the penalty to its loss (and its gradient) every step, and projects
        # the weight after every optimizer step (fastnn.trainer)
        if regularizer is not None:
            self.__dict__.setdefault("_penalties", {})[name] = regularizer
        if constraint is not None:
            self.__dict__.setdefault("_constraints", {})[name] = constraint
        return variable

    def add_loss(self, loss):
        """Add a scalar (a tensor computed with fastnn.ops, or a number) to the loss of the
        model this layer runs in, as Keras's add_loss (an activity penalty, say).

        Args:
            loss: A scalar tensor computed with `fastnn.ops`, or a number.
        """
        losses = getattr(_PASS, "losses", None)
        if losses is None:
            raise RuntimeError(
                f"Layer {self.name!r}: add_loss() counts only inside a model built with the "
                "functional API or by subclassing fastnn.Model (a Sequential's layers, and "
                "layers called on their own, have no loss to add to yet)")
        if np.size(value_of(loss)) != 1:
            raise ValueError(f"Layer {self.name!r}: add_loss() takes a scalar, got shape "
                             f"{np.shape(value_of(loss))}")
        losses.append(loss)

    def _rebind(self, name, array, grad=None):
        """Move a weight (and its gradient) into caller-owned storage, e.g. a flat arena."""
        array[...] = self._vars[name]
        self._vars[name] = array
        if grad is not None:
            self.grads[name] = grad

    @property
    def weights(self):
        return [self._vars[n] for n in self._trainable_names + self._non_trainable_names]

    @property
    def trainable_weights(self):
        return [self._vars[n] for n in self._trainable_names] if self.trainable else []

    @property
    def non_trainable_weights(self):
        names = self._non_trainable_names if self.trainable else \
            self._trainable_names + self._non_trainable_names
        return [self._vars[n] for n in names]

    @property
    def weight_names(self):
        return self._trainable_names + self._non_trainable_names

    def get_weights(self):
        """The weights as NumPy arrays (copies), wherever they live."""
        to_numpy = get_ops().to_numpy
        return [np.array(to_numpy(w)) for w in self.weights]

    def set_weights(self, weights):
        """Set the layer's weights from a list of arrays, in the order of `get_weights()`.

        Args:
            weights: A list of arrays with the shapes of the layer's weights.
        """
        weights = list(weights)
        current = self.weights
        if len(weights) != len(current):
            raise ValueError(f"Layer {self.name!r} expects {len(current)} weights, but "
                             f"set_weights received {len(weights)}")
        arrays = []
        device_array = get_ops().xp.ndarray
        for name, new, old in zip(self.weight_names, weights, current):
            new = new if isinstance(new, device_array) else np.asarray(new)
            if new.shape != old.shape:
                raise ValueError(f"Layer {self.name!r} weight {name!r}: expected shape "
                                 f"{old.shape}, received {new.shape}")
            arrays.append(new)
        ops = get_ops()
        for new, old in zip(arrays, current):
            old[...] = ops.asarray(new)

    def count_params(self):
        """The number of scalars in the layer's weights (the layer must be built).

        Returns:
            An int.
        """
        return int(sum(w.size for w in self.weights))

    # ---- shapes and building -------------------------------------------------------------
    def build(self, input_shape):
        """Create the layer's weights for inputs of `input_shape` (called once, on the first call).

        Args:
            input_shape: Shape of the input, a tuple with the batch axis first (`None` when
                unknown); a list of shapes for several inputs.
        """
        self._build_shape = tuple(input_shape)
        self.built = True

    def _maybe_build(self, input_shape):
        if not self.built:
            with _BUILD_LOCK:       # two threads' first calls build it once
                if not self.built:
                    self.build(tuple(input_shape))
                    # a user's build() need not call super().build()
                    self._build_shape, self.built = tuple(input_shape), True

    def compute_output_shape(self, input_shape):
        """The output shape for an input shape: the same, or for a user's layer, as its
        call() computes it on one sample of zeros (Keras traces it symbolically).

        Args:
            input_shape: Shape of the input, batch axis first (a list of shapes for several inputs).

        Returns:
            The output shape, a tuple (a list of tuples for several outputs).
        """
        if not self._user_call:
            return tuple(input_shape)
        known = self.__dict__.setdefault("_probed_shapes", {})     # call() runs once a shape
        several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
        key = tuple(tuple(s[1:]) for s in input_shape) if several else tuple(input_shape[1:])
        if key not in known:
            alloc = get_ops().alloc
            # (as Tensors, as call() gets them: their ops move a host array to the device)
            probe = [Tensor(alloc((1,) + k)) for k in key] if several else \
                Tensor(alloc((1,) + key))
            previous, _PASS.losses = getattr(_PASS, "losses", None), []   # a probe's go nowhere
            try:
                with no_grad():
                    known[key] = tuple(np.shape(value_of(self._run_call(probe, False)))[1:])
            finally:
                _PASS.losses = previous
        return (None,) + known[key]

    @property
    def input_shape(self):
        if self._build_shape is None:
            raise AttributeError(f"Layer {self.name!r} has not been built yet")
        return self._build_shape

    @property
    def output_shape(self):
        return self.compute_output_shape(self.input_shape)

    def _state(self):
        """This thread's forward state (what backward reads) and scratch buffers: several
        threads may run one layer at once, each with its own."""
        return _thread_state(self._thread)

    # ---- a layer that runs other layers (TimeDistributed, Bidirectional, the 1-D pooling
    # layers) does it through these, on itself: no layer touches another's private names ----
    def _build_inner(self, inner, input_shape):
        inner._maybe_build(input_shape)

    def _lend_thread_state(self, inner):
        """Run `inner` on this layer's per-thread state (its slot, its forward state)."""
        inner._thread = self._thread

    def _set_inner_slot(self, inner, slot):
        inner._thread.slot = slot

    def _inner_state(self, inner):
        return inner._state()

    def _inner_entry(self, inner):
        """`inner` (a wrapper's layer) as this layer's config nests it."""
        return inner._config_entry()

    def _share_weights_of(self, inner):
        """This layer's weights are `inner`'s: the same dicts, so the weights `inner` makes
        when it builds are this layer's too."""
        self._vars, self.grads = inner._vars, inner.grads
        self._trainable_names = inner._trainable_names
        self._non_trainable_names = inner._non_trainable_names

    def _adopt_weight(self, mine, inner, name):
        """`inner`'s built weight `name` as this layer's trainable weight `mine`: the same
        array, variable and gradient, with its regularizer and constraint."""
        self._vars[mine] = inner._vars[name]
        self._variables[mine] = inner._variables[name]
        self._trainable_names.append(mine)
        self.grads[mine] = inner.grads[name]
        for key in ("_penalties", "_constraints"):
            if name in inner.__dict__.get(key, {}):
                self.__dict__.setdefault(key, {})[mine] = inner.__dict__[key][name]

    def _rebind_inner(self, inner, name, array, grad=None):
        """Point `inner`'s weight `name` at `array` (the adopted weight, already moved there
        with its value by this layer's _rebind)."""
        inner._vars[name] = array
        if grad is not None:
            inner.grads[name] = grad

    def _buffer(self, key, shape, dtype="float32"):
        """A scratch array reused across steps of the same shape (kernels never allocate);
        inside `drawing_from(pool)`, one the pool lends (shared with other layers)."""
        pool = getattr(_LENDER, "pool", None)
        if pool is not None:
            return pool.take(shape, dtype)
        workspace = self._state().workspace
        buf = workspace.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = workspace[key] = get_ops().empty(shape, dtype)
        return buf

    # ---- masks (Keras's convention: boolean (batch, timesteps), True = keep) ----------------
    @property
    def supports_masking(self):
        """Whether the layer passes on (or makes) a mask: as in Keras, True when it defines
        compute_mask, or as set; a mask reaching a layer that does not is dropped."""
        return self.__dict__.get("_supports_masking",
                                 type(self).compute_mask is not Layer.compute_mask)

    @supports_masking.setter
    def supports_masking(self, value):
        self.__dict__["_supports_masking"] = bool(value)

    def compute_mask(self, inputs, previous_mask):
        """The mask of the layer's output for `inputs` whose mask is `previous_mask`.

        Args:
            inputs: The layer's input.
            previous_mask: The input's boolean mask `(batch, steps)`, or `None`.

        Returns:
            The output's mask: `previous_mask` for a layer that supports masking, else `None`.
        """
        return previous_mask

    def _output_mask(self, inputs, mask):
        """The mask this layer's output carries (None: none), given its input's."""
        if self.supports_masking:
            return self.compute_mask(inputs, mask)
        if mask is not None and not self.__dict__.get("_mask_warned"):
            self._mask_warned = True
            warnings.warn(f"Layer '{self.name}' (of type {type(self).__name__}) was passed an "
                          "input with a mask attached to it. However, this layer does not "
                          "support masking and will therefore destroy the mask information. "
                          "Downstream layers will not see the mask.", stacklevel=3)
        return None

    mask_source = False     # fastnn's layers that make masks (Embedding(mask_zero), Masking)

    @property
    def makes_masks(self):
        """Whether this layer may give its output a mask its input did not carry (then the
        model's forward pass carries masks): fastnn's layers say so (mask_source), a user's
        that computes masks may."""
        if _is_builtin(type(self)):
            return bool(self.mask_source)
        return self.supports_masking and type(self).compute_mask is not Layer.compute_mask

    # ---- computation ---------------------------------------------------------------------
    def call(self, inputs, training=None):
        """A user's layer computes here, with fastnn.ops (differentiated by fastnn.autodiff).
        fastnn's own layers implement forward/backward with fused kernels instead.

        Args:
            inputs: The input tensor (or a list of them).
            training: Whether the call is for training (dropout and the like act only then); `None`
                lets the caller decide. Defaults to `None`.

        Returns:
            The output tensor(s).
        """
        raise NotImplementedError(
            f"Layer {self.name!r} ({type(self).__name__}) defines no call(): a Layer subclass "
            "computes its output in call(self, inputs) (written with fastnn.ops)")

    def _run_call(self, x, training, mask=None):
        kwargs = {}
        if _accepts_training(type(self).call):
            kwargs["training"] = bool(training)
        if mask is not None and _takes_mask(type(self).call):
            kwargs["mask"] = mask
        return self.call(x, **kwargs)

    def forward(self, x, training=False, mask=None):
        """A user's call() (fastnn's call()-based layers' too) on an array, or a list of
        them; on its own tape when training (backward then needs it). `mask` reaches a
        call() with a mask argument.

        Args:
            x: The input array (or a list of arrays).
            training: Whether the call is for training. Defaults to `False`.
            mask: The input's mask, or `None`. Defaults to `None`.

        Returns:
            The output array(s).
        """
        if not self._user_call:
            self.call(x)                    # raises: a layer that computes nothing
        st = self._state()
        st.tape = None
        several = isinstance(x, (list, tuple))
        first = x[0] if several else x
        if not training:
            with no_grad():
                out = self._run_call([Tensor(v) for v in x] if several else Tensor(x), False,
                                     mask)
        else:
            inputs = [Tensor(v, requires_grad=True) for v in x] if several else \
                Tensor(x, requires_grad=True)
            with tape() as recorded:
                out = self._run_call(inputs, True, mask)
            st.tape = (inputs, out, recorded.nodes)
        y = value_of(out)
        ops = get_ops()
        if not isinstance(y, ops.xp.ndarray) or y.dtype != np.float32:
            y = ops.asarray(np.asarray(y) if not isinstance(y, ops.xp.ndarray) else y,
                            np.float32)
        if y.shape[:1] != first.shape[:1]:
            raise ValueError(f"Layer {self.name!r}: call() returned shape {y.shape} for an "
                             f"input of shape {first.shape}; the batch axis must be kept")
        return y if y.flags.c_contiguous else ops.xp.ascontiguousarray(y)

    def backward(self, dy, need_dx=True, **fused):
        """The gradient of a user's call(): its weights' gradients are written into their
        buffers (as the fused layers' kernels write theirs: a schedule adds up the calls of a
        shared layer itself); returns the input's (a list for a list of inputs; need_dx may
        then be one flag per input). `fused` hints of fastnn's layers (the loss's
        pre-activation gradient) do not apply: dy is the gradient of call()'s output.

        Args:
            dy: Gradient of the loss with respect to the layer's output.
            need_dx: Whether to compute the gradient with respect to the input. Defaults to `True`.
            **fused: Extra arguments of fastnn's fused paths (ignored here).

        Returns:
            The gradient with respect to the input (`None` when `need_dx` is false).
        """
        for name in self._trainable_names:      # this call's gradients add up from zero
            self.grads[name][...] = 0
        st = self._state()
        inputs, out, nodes = st.tape
        st.tape = None
        several = isinstance(inputs, list)
        tensors = inputs if several else [inputs]
        needs = list(need_dx) if isinstance(need_dx, (list, tuple)) else \
            [bool(need_dx)] * len(tensors)
        for t, need in zip(tensors, needs):
            t.requires_grad = need      # ops skip the costly gradients no one reads
        dxs = [None] * len(tensors)
        if isinstance(out, Tensor) and out.requires_grad:
            dxs = gradients(out, tensors, seed=dy.reshape(out.shape), order=nodes)
        xp = get_ops().xp
        dxs = [None if not need else xp.zeros_like(t.value) if dx is None else
               dx.astype(np.float32, copy=False) for t, dx, need in zip(tensors, dxs, needs)]
        return dxs if several else dxs[0]

    def __call__(self, x, training=None, mask=None):
        if training is None:
            training = bool(getattr(_PASS, "training", None))
        if isinstance(x, Tensor):       # inside a model's forward pass: the common case
            if mask is not None:    # Keras's explicit mask= (it replaces the carried one)
                x.keras_mask = get_ops().asarray(value_of(mask), bool)
            return self._call_on_tensor(x, training)
        if getattr(_PASS, "counts", None) is not None and \
                isinstance(x, (np.ndarray, get_ops().xp.ndarray)):
            # an array inside a model's forward pass (a user's call() returned one, maybe on
            # the host): still a node of the pass, or the layers after it would silently not
            # train
            return self._call_on_tensor(Tensor(get_ops().asarray(x, x.dtype)), training)
        if is_symbolic(x):
            return self._call_symbolic(x)
        if isinstance(x, (list, tuple)):        # several inputs: a merge layer, a user's
            return self._call_on_list(x, training)
        ops = get_ops()
        if not isinstance(x, ops.xp.ndarray):
            x = np.asarray(x)
        # indices stay integers for a layer that reads them (Embedding); the rest is float32
        x = ops.asarray(x, x.dtype if x.dtype.kind in "iu" and
                        getattr(self, "integer_input", False) else "float32")
        self._maybe_build((None,) + x.shape[1:])
        if mask is not None and _takes_mask(type(self).forward):
            return np.array(ops.to_numpy(self.forward(
                x, training, mask=ops.asarray(np.asarray(mask), bool))))
        return np.array(ops.to_numpy(self.forward(x, training)))

    def _call_symbolic(self, x):
        """Build the graph: a node for this call, returning its symbolic output."""
        several = isinstance(x, (list, tuple))
        inputs = flatten(x)
        if not all(isinstance(t, KerasTensor) for t in inputs):
            raise TypeError(f"Layer {self.name!r}: a functional call takes symbolic tensors "
                            "(from fastnn.Input or other layers' calls) only")
        shape = [t.shape for t in inputs] if several else inputs[0].shape
        self._maybe_build(shape)
        node = Node(self, inputs, [self.compute_output_shape(shape)])
        node.several = several
        self._inbound_nodes.append(node)
        return node.outputs[0]

    def _call_on_list(self, xs, training):
        if not self._user_call:
            raise TypeError(f"Layer {self.name!r} ({type(self).__name__}) takes one input, "
                            f"got a list of {len(xs)}")
        if any(isinstance(t, Tensor) for t in xs):      # inside a model's call(): the tape
            if not self.built:
                self._maybe_build([tuple(t.shape) for t in xs])
            masks = [t.keras_mask if isinstance(t, Tensor) else None for t in xs]
            out = self._run_call(list(xs), training)
            if isinstance(out, Tensor) and any(m is not None for m in masks):
                out.keras_mask = self._output_mask([value_of(t) for t in xs], masks)
            return out
        ops = get_ops()
        xs = [ops.asarray(t) for t in xs]
        self._maybe_build([(None,) + tuple(t.shape[1:]) for t in xs])
        with no_grad():
            return np.array(ops.to_numpy(value_of(self._run_call(xs, training))))

    @property
    def output(self):
        """The symbolic output of this layer's first call in a functional model."""
        if not self._inbound_nodes:
            raise AttributeError(f"Layer {self.name!r} has never been called on a symbolic "
                                 "tensor, so it has no defined output")
        return self._inbound_nodes[0].outputs[0]

    @property
    def input(self):
        if not self._inbound_nodes:
            raise AttributeError(f"Layer {self.name!r} has never been called on a symbolic "
                                 "tensor, so it has no defined input")
        node = self._inbound_nodes[0]
        return node.inputs if node.several else node.inputs[0]

    def _call_on_tensor(self, x, training):
        """A call inside a model's call() (or on any tensor): a user's layer runs inline on
        the caller's tape; one of fastnn's is one node, its fused backward the node's. An
        activity_regularizer's penalty on the output joins the pass's add_loss() losses."""
        out = self._node_on_tensor(x, training)
        losses = getattr(_PASS, "losses", None)
        if self.activity_regularizer is not None and losses is not None:
            for o in out if isinstance(out, (list, tuple)) else [out]:
                losses.append(activity_loss(self.activity_regularizer, o))
        return out

    def _node_on_tensor(self, x, training):
        self._maybe_build((None,) + tuple(x.shape[1:]))
        counts = getattr(_PASS, "counts", None)
        if counts is not None and id(self) not in _PASS.layers:
            raise ValueError(f"Layer {self.name!r} is called in a model's call() but is not "
                             "one of its layers: create layers in __init__ and keep them as "
                             "attributes (self.dense = Dense(...)), so that their weights "
                             "are trained")
        mask = x.keras_mask
        if self._user_call:
            out = self._run_call(x, training, mask)
            if isinstance(out, Tensor) and (mask is not None or self.makes_masks):
                out.keras_mask = self._output_mask(x.value, mask)
            return out
        slot = 0
        if counts is not None:
            slot = counts.get(id(self), 0)
            counts[id(self)] = slot + 1
        local = self._thread
        local.slot = slot
        try:
            y = self.forward(x.value, bool(training), mask=mask) \
                if mask is not None and _takes_mask(type(self).forward) else \
                self.forward(x.value, bool(training))
        finally:
            local.slot = 0
        out_mask = self._output_mask(x.value, mask) \
            if mask is not None or self.makes_masks else None
        trains = bool(training) and self.trainable and bool(self._trainable_names)
        if not is_recording() or not (x.requires_grad or trains):
            out = Tensor(y)
            out.keras_mask = out_mask
            return out
        fused = {"preactivation": True} if getattr(_PASS, "preactivation", None) is self else {}

        def backward(g):
            local.slot = slot
            try:
                # A layer called more than once adds up its calls' weight gradients (its
                # kernels write them; the model zeroed them before the pass).
                shared = counts is not None and counts.get(id(self), 1) > 1
                saved = [self.grads[n].copy() for n in self._trainable_names] if shared \
                    else ()
                dx = self.backward(g.copy(), need_dx=x.requires_grad, **fused)  # overwrites dy
                for name, earlier in zip(self._trainable_names, saved):
                    self.grads[name] += earlier
            finally:
                local.slot = 0
            return (dx,)
        out = autodiff_node(y, (x,), backward)
        out.keras_mask = out_mask
        return out

    def _sublayers(self):
        """The layers this layer holds as attributes (a user's composite layer), any depth."""
        found = []
        for value in self.__dict__.values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Layer) and item is not self and item not in found:
                    found.append(item)
                    found.extend(x for x in item._sublayers() if x not in found)
        return found

    # ---- config ----------------------------------------------------------------------------
    def get_config(self):
        """The layer's configuration: its constructor arguments as a JSON-compatible dict.

        `type(layer).from_config(config)` makes the same layer again (without its weights).

        Returns:
            A dict.
        """
        config = {"name": self.name, "trainable": self.trainable, "dtype": "float32"}
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):     # Keras 3's DTypePolicy entry
            dtype = (dtype.get("config") or {}).get("name")
        if dtype not in (None, "float32"):
            raise ValueError(f"{cls.__name__}.from_config: dtype {dtype!r} is not supported: "
                             "fastnn computes in float32")
        if "batch_shape" in config and cls is not InputLayer:
            config["batch_input_shape"] = config.pop("batch_shape")
        config = without_defaults(config, cls._KERAS_DEFAULTS,
                                  f"{cls.__name__} {config.get('name')!r}")
        return cls(**config)

    def _config_entry(self):
        """The layer as a model's config lists it (layer_entry; a model used as a layer
        writes its model entry: fastnn.models.Model has this method too)."""
        return layer_entry(self)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def layer_entry(layer):
    """A layer as Keras serializes it in a model's config (serialize_keras_object): fastnn's own
    class by its keras.layers name, a user's by its module and registered name (loading
    resolves it through fastnn.registry).

    Args:
        layer: The layer (or a user's model used as a layer).

    Returns:
        A dict.
    """
    cls = type(layer)
    if _is_builtin(cls):
        entry = {"module": "keras.layers", "class_name": cls.__name__,
                 "config": layer.get_config(), "registered_name": None}
    else:
        if cls.get_config is Layer.get_config and _init_args(cls):
            raise NotImplementedError(
                f"Layer {layer.name!r} ({cls.__name__}) takes arguments "
                f"{_init_args(cls)} but defines no get_config() returning them: define it "
                "(as in Keras) so that the layer can be saved")
        entry = {"module": cls.__module__, "class_name": cls.__name__,
                 "config": layer.get_config(),
                 "registered_name": registry.get_registered_name(cls)}
    if layer.built and not isinstance(layer, InputLayer):
        entry["build_config"] = {"input_shape": _as_lists(layer.input_shape)}
    return entry


def _init_args(cls):
    """The arguments a Layer subclass's constructor takes beyond Layer's own."""
    base = set(inspect.signature(Layer.__init__).parameters)
    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in base and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _as_lists(shape):
    """A shape, or a list of shapes, as JSON lists."""
    return [_as_lists(s) if isinstance(s, (list, tuple)) else s for s in shape]


class InputLayer(Layer):
    """The layer holding a model's input: `Input(shape)` makes one.

    Args:
        shape: Shape of one sample, without the batch axis. Defaults to `None`.
        batch_size: Fixed batch size, or `None`. Defaults to `None`.
        dtype: Data type of the input (float32 by default).
        name: Name of the layer. Defaults to `None`.
        batch_shape: Shape including the batch axis, instead of `shape`. Defaults to `None`.
        input_shape: Legacy name of `shape`. Defaults to `None`.
        sparse: Only `None`/`False` (sparse inputs are not supported). Defaults to `None`.
        ragged: Only `None`/`False` (ragged inputs are not supported). Defaults to `None`.
        optional: Only `False` (optional inputs are not supported). Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, batch_shape=None,
                 input_shape=None, sparse=None, ragged=None, optional=False, **kwargs):
        for arg, val in (("sparse", sparse), ("ragged", ragged), ("optional", optional)):
            if val:
                raise ValueError(f"InputLayer: {arg}=True is not supported by fastnn")
        if shape is None and batch_shape is None and input_shape is None:
            raise ValueError("InputLayer needs shape=(...), e.g. shape=(784,)")
        if batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        elif shape is None:
            shape = input_shape
        if isinstance(dtype, dict):     # Keras 3's DTypePolicy entry
            dtype = (dtype.get("config") or {}).get("name")
        try:
            dtype = np.dtype("float32" if dtype is None else dtype)
        except TypeError:
            raise ValueError(f"InputLayer: dtype {dtype!r} is not a NumPy dtype") from None
        if dtype != np.float32 and dtype.kind not in "iub":
            raise ValueError(f"InputLayer: dtype must be float32 or an integer or bool type "
                             f"(fastnn computes in float32), got {dtype.name!r}")
        super().__init__(name=name, **kwargs)
        self.input_shape_arg = _shape_tuple(shape, "shape")
        self.batch_size = batch_size
        # An integer input reaches the model's layers as it is (a user's layer, ops); fastnn's
        # kernels read it as float32, as Keras promotes int @ float.
        self.input_dtype = dtype.name
        node = Node(self, [], [(batch_size,) + self.input_shape_arg])
        node.several = False
        node.outputs[0].name = self.name
        node.outputs[0].dtype = self.input_dtype
        self._inbound_nodes.append(node)
        self.built, self._build_shape = True, (batch_size,) + self.input_shape_arg

    def get_config(self):
        return {"batch_shape": [None, *self.input_shape_arg], "dtype": self.input_dtype,
                "sparse": False, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)        # its dtype may be an integer one (__init__ checks it)


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None):
    """A model's symbolic input: call layers on it to build a functional model, or put it
    first in a Sequential. Its shape has the batch axis first (None unless batch_size).

    Args:
        shape: Shape of one sample, without the batch axis (e.g. `(784,)`; `None` for an axis of any
            size).
        batch_size: Fixed batch size, or `None`. Defaults to `None`.
        dtype: Data type of the input (float32 by default; integer types for `Embedding` inputs).
        name: Name of the input (a unique one is made when `None`). Defaults to `None`.
        batch_shape: Shape including the batch axis, instead of `shape` and `batch_size`. Defaults
            to `None`.

    Returns:
        A symbolic tensor (`KerasTensor`) to call layers on.
    """
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      batch_shape=batch_shape).output


class Dense(Layer):
    """A densely-connected layer: `output = activation(dot(input, kernel) + bias)`.

    The kernel has shape `(input_dim, units)` and acts on the last axis of the input, so an
    input `(batch, ..., input_dim)` gives an output `(batch, ..., units)`.

    Args:
        units: Dimensionality of the output space (the size of the last axis).
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    model = fastnn.Sequential([fastnn.Input(shape=(784,)),
                               fastnn.layers.Dense(128, activation="relu"),
                               fastnn.layers.Dense(10, activation="softmax")])
    ```
    """
    # its backward pass may leave the kernel's gradient to data-parallel ranks' shards
    # (fastnn.distribution._SharedArena.defer)
    _defers_kernel_gradient = True

    supports_masking = True     # passes its input's mask on, as in Keras
    _KERAS_DEFAULTS = {"quantization_config": None, "lora_rank": None, "lora_alpha": None}

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        _weight_options(self, kernel_regularizer=kernel_regularizer,
                        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                        bias_constraint=bias_constraint)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense layer {self.name!r} needs a known last input dimension, "
                             f"got input shape {tuple(input_shape)}")
        self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                        initializer=self.kernel_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        st = self._state()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        rows = x2.shape[0]
        z = self._buffer("z", (rows, self.units))
        # Keep the pre-activation only when the activation's derivative needs it.
        y = self._buffer("y", (rows, self.units)) if self.act_id in activations.NEEDS_INPUT \
            else z
        deferred = self.__dict__.get("_deferred") if training else None
        if deferred is not None and deferred.split_forward(x2, z):
            # (data-parallel: each rank multiplied the kernel rows it updates: z lacks the bias)
            get_ops().bias_act_forward(self.act_id, self.act_alpha, z, y,
                                       bias=self._vars.get("bias"))
        else:
            get_ops().dense_forward(x2, self.kernel, self._vars.get("bias"), self.act_id,
                                    self.act_alpha, z=z, y=y, training=bool(training))
        st._x, st._z, st._y = x2, z, y
        return y.reshape(lead + (self.units,))

    def forward_fused(self, x, norm=None, residual=None, act=(activations.LINEAR, 0.0)):
        """Inference only (a linear Dense): this layer, then in its GEMM's epilogue the
        BatchNormalization statistics `norm` (mean, var, gamma, beta, eps), the residual Add
        and the activation `act` (id, alpha) of the layers after it (fastnn.schedule)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        z = self._buffer("z", (x2.shape[0], self.units))
        get_ops().dense_forward(x2, self.kernel, self._vars.get("bias"), act[0], act[1], z=z,
                                y=z, norm=norm,
                                residual=None if residual is None else residual.reshape(z.shape))
        return z.reshape(lead + (self.units,))

    def backward(self, dy, need_dx=True, preactivation=False, kernel_step=0.0):
        """preactivation=True: dy is already dL/dz (a loss fused with this activation).
        kernel_step > 0: the kernel takes the plain SGD step kernel -= kernel_step * gradient
        in place, inside the weight-gradient GEMM; its gradient is not stored."""
        st = self._state()
        dy2 = dy.reshape(-1, self.units)
        act = activations.LINEAR if preactivation else self.act_id
        dx = self._buffer("dx", st._x.shape) if need_dx else False
        x, dz, d_kernel = st._x, dy2, self.grads["kernel"]
        deferred = self.__dict__.get("_deferred")
        split = False
        if deferred is not None and deferred.active and not kernel_step:
            # (data-parallel: the ranks' rows go to a shared window, and each rank computes
            # its shard of the kernel's gradient from all of them: fastnn.distribution)
            x, dz = deferred.rows(x)
            d_kernel = None
            split = deferred.forward_split
        dx = get_ops().dense_backward(x, self.kernel, st._z, st._y, dy2, act,
                                      self.act_alpha, d_kernel,
                                      self.grads.get("bias"), dx=False if split else dx,
                                      dz=dz, kernel_step=kernel_step)
        if split and need_dx:       # (each rank's kernel rows' columns of every rank's rows)
            dx = deferred.split_backward(x.shape[0])
        return None if dx is None else dx.reshape(dy.shape[:-1] + (st._x.shape[1],))

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units, "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            **_weight_options_config(self),
        })
        return config


class Activation(Layer):
    """Applies an activation function to its input.

    Args:
        activation: The activation: a name such as `"relu"` or a callable.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    layer = fastnn.layers.Activation("relu")
    ```
    """
    supports_masking = True     # passes its input's mask on, as in Keras
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)

    def forward(self, x, training=False):
        st = self._state()
        ops = get_ops()
        y = ops.act_forward(self.act_id, self.act_alpha, x, out=self._buffer("y", x.shape))
        st._x, st._y = x, y
        return y

    def backward(self, dy, need_dx=True, preactivation=False):
        st = self._state()
        if preactivation:
            return dy
        return get_ops().act_backward(self.act_id, self.act_alpha, st._x, st._y, dy,
                                      out=dy)

    def get_config(self):
        config = super().get_config()
        config["activation"] = activations.serialize(self.activation)
        return config


class _KernelOrOwn(Activation):
    """An activation layer that runs the backend's kernel `act_id` when its arguments make it
    exactly that kernel's function; otherwise (act_id None) its own forward/backward below.
    With act_id None no schedule folds it into a GEMM's epilogue and no loss fuses with it."""

    def forward(self, x, training=False):
        if self.act_id is not None:
            return super().forward(x, training)
        st = self._state()
        st._x = x
        st._y = y = self._own_forward(get_ops().xp, x)
        return y

    def backward(self, dy, need_dx=True, preactivation=False):
        if self.act_id is not None:
            return super().backward(dy, need_dx, preactivation)
        st = self._state()
        return self._own_backward(get_ops().xp, st._x, st._y, dy)


class ReLU(_KernelOrOwn):
    """Keras's ReLU: max_value=None with threshold=0 is the relu kernel (the leaky one for a
    negative_slope), fused after a linear layer; otherwise computed here as Keras computes
    it: x where x > threshold else 0, clipped to max_value, minus negative_slope *
    relu(threshold - x).

    Args:
        max_value: Upper bound of the output, or `None` for none.
        negative_slope: Slope for inputs below `threshold`. Defaults to `0.0`.
        threshold: Inputs below it take the negative slope (or 0). Defaults to `0.0`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        Layer.__init__(self, **kwargs)
        if max_value is not None and _finite(max_value, "max_value", self.name) < 0.0:
            raise ValueError("max_value of a ReLU layer cannot be a negative value. "
                             f"Received: max_value={max_value}")
        if negative_slope is None or _finite(negative_slope, "negative_slope", self.name) < 0:
            raise ValueError("negative_slope of a ReLU layer cannot be None or a negative "
                             f"value. Received: negative_slope={negative_slope}")
        if threshold is None or _finite(threshold, "threshold", self.name) < 0:
            raise ValueError("threshold of a ReLU layer cannot be None or a negative value. "
                             f"Received: threshold={threshold}")
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)
        self.activation = activations.get("leaky_relu" if self.negative_slope else "relu")
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.act_alpha = self.negative_slope
        if self.max_value is not None or self.threshold != 0:
            self.act_id = None

    def _own_forward(self, xp, x):
        t, top, slope = np.float32(self.threshold), self.max_value, np.float32(self.negative_slope)
        y = xp.where(x > t, x, np.float32(0))
        if top is not None:
            y = xp.minimum(y, np.float32(top))
        if slope:
            y -= slope * xp.maximum(t - x, np.float32(0))
        return y

    def _own_backward(self, xp, x, y, dy):
        t, top = np.float32(self.threshold), self.max_value
        through = x > t
        if top is not None:
            through &= x <= np.float32(top)
        dx = dy * through
        if self.negative_slope:
            dx += dy * (x < t) * np.float32(self.negative_slope)
        return dx

    def get_config(self):
        return {**Layer.get_config(self), "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


def _axes_of(axis, rank, layer, input_shape):
    """Keras's axis argument (an int or a list of ints) as sorted non-negative axes of an
    input of `rank`; an axis outside the input raises (the batch axis 0 included)."""
    axes = [axis] if _is_int(axis) else list(axis)
    if any(not _is_int(a) or not -rank <= a < rank or a % rank == 0 for a in axes):
        raise ValueError(f"{layer}: axis={axis!r} is out of bounds for input shape "
                         f"{tuple(input_shape)} (an axis other than the batch axis 0)")
    return tuple(sorted({int(a) % rank for a in axes}))


class Softmax(_KernelOrOwn):
    """Softmax over `axis` (an int or a list of ints). Over the last axis alone it is the
    softmax kernel (which a crossentropy loss fuses with); over other axes it is computed here
    (and fuses with nothing).

    Args:
        axis: The axis (or list of axes) the probabilities sum to 1 over. Defaults to `-1`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__("softmax", **kwargs)
        if not (_is_int(axis) or isinstance(axis, (list, tuple)) and axis and
                all(_is_int(a) for a in axis)):
            raise ValueError(f"Softmax {self.name!r}: axis must be an int or a list of ints, "
                             f"got {axis!r}")
        self.axis = int(axis) if _is_int(axis) else [int(a) for a in axis]
        if self.axis not in (-1, [-1]):
            self.act_id = None      # set by build, when the rank tells whether it is the last

    def build(self, input_shape):
        self._axes = _axes_of(self.axis, len(input_shape), self.name, input_shape)
        self.act_id = activations.SOFTMAX if self._axes == (len(input_shape) - 1,) else None
        super().build(input_shape)

    def _own_forward(self, xp, x):
        e = xp.exp(x - x.max(axis=self._axes, keepdims=True))
        return e / e.sum(axis=self._axes, keepdims=True)

    def _own_backward(self, xp, x, y, dy):
        return y * (dy - (dy * y).sum(axis=self._axes, keepdims=True))

    def get_config(self):
        return {**Layer.get_config(self), "axis": self.axis}


class LeakyReLU(Activation):
    """Leaky ReLU: `x` where `x >= 0`, else `negative_slope * x`.

    Args:
        negative_slope: Slope for negative inputs (>= 0). Defaults to `0.3`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, negative_slope=0.3, **kwargs):
        super().__init__("leaky_relu", **kwargs)
        self.negative_slope = self.act_alpha = _finite(negative_slope, "negative_slope",
                                                       self.name)

    def get_config(self):
        return {**Layer.get_config(self), "negative_slope": self.negative_slope}


class Flatten(Layer):
    """Flattens each sample to one axis: `(batch, d1, d2, ...)` becomes `(batch, d1 * d2 * ...)`.

    Args:
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Flatten: only data_format='channels_last' is supported, "
                             f"got {data_format!r}")
        self.data_format = data_format

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        size = None if any(d is None for d in rest) else int(np.prod(rest, dtype=np.int64))
        return (input_shape[0], size)

    def forward(self, x, training=False):
        st = self._state()
        st._in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        st = self._state()
        return dy.reshape(st._in_shape)

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last"}


class Dropout(Layer):
    """Sets a fraction `rate` of its input's units to 0 during training and scales the others by `1
    / (1 - rate)`.

    Outside training the input passes unchanged.

    Args:
        rate: Fraction of the input units to drop, in [0, 1).
        noise_shape: Only `None` is supported (one draw per unit). Defaults to `None`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras
    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout: noise_shape is not supported by fastnn yet")
        self.rate, self.noise_shape, self.seed = float(rate), noise_shape, seed
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def forward(self, x, training=False):
        st = self._state()
        st._mask = None
        if not training or self.rate == 0:
            return x
        ops = get_ops()
        u = ops.random_uniform(self._rng or get_rng(), self._buffer("u", x.shape))
        # Inverted dropout: keep where u >= rate, scaled by 1/(1-rate).
        mask = st._mask = ops.xp.greater_equal(u, self.rate, out=self._buffer("mask", x.shape,
                                                                               bool))
        y = self._buffer("y", x.shape)
        ops.xp.multiply(x, mask, out=y)
        y *= np.float32(1.0 / (1.0 - self.rate))
        return y

    def backward(self, dy, need_dx=True):
        st = self._state()
        if st._mask is None:
            return dy
        get_ops().xp.multiply(dy, st._mask, out=dy)
        dy *= np.float32(1.0 / (1.0 - self.rate))
        return dy

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed,
                "noise_shape": None}


def _pair(value, arg, layer):
    """An int or a pair of ints -> a validated (positive) pair."""
    if _is_int(value):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        a = b = None
    if not (_is_int(a) and _is_int(b)):
        raise ValueError(f"{layer}: {arg} must be an int or a tuple of 2 ints, got "
                         f"{value!r}")
    value = (int(a), int(b))
    if min(value) < 1:
        raise ValueError(f"{layer}: {arg} must be positive, got {value}")
    return value


def _padding(value, layer):
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same', got {value!r}")
    return value.lower()


def _window(layer, input_shape, size, strides, padding, dilation=(1, 1)):
    """TensorFlow's output size and leading pads: (kh, kw, sh, sw, pt, pl, oh, ow), followed
    by the dilation (dh, dw) when it is not (1, 1) (a window then spans (k - 1) * d + 1)."""
    if len(input_shape) != 4:
        hint = ""
        if len(input_shape) == 3:
            hint = (f"; add the channel axis, e.g. x.reshape(-1, {input_shape[1]}, "
                    f"{input_shape[2]}, 1)")
        raise ValueError(f"{type(layer).__name__} layer {layer.name!r} expects 4-D input "
                         f"(batch, height, width, channels), got shape {tuple(input_shape)}"
                         f"{hint}")
    h, w = input_shape[1], input_shape[2]
    if input_shape[3] is None:
        raise ValueError(f"Layer {layer.name!r} needs a known number of channels, got "
                         f"{tuple(input_shape)}")
    (kh, kw), (sh, sw) = size, strides
    dilated = tuple(dilation) != (1, 1)
    tail = tuple(dilation) if dilated else ()
    if h is None or w is None:      # any image size: the window is set per batch (_window_at)
        return (kh, kw, sh, sw, None, None, None, None) + tail
    eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1    # the window's extent
    if padding == "valid":
        if eh > h or ew > w:
            extent = f" (dilated to {(eh, ew)})" if dilated else ""
            raise ValueError(f"Layer {layer.name!r}: window {size}{extent} is larger than its "
                             f"input {(h, w)} with padding='valid'")
        oh, ow = (h - eh) // sh + 1, (w - ew) // sw + 1
        return (kh, kw, sh, sw, 0, 0, oh, ow) + tail
    oh, ow = -(-h // sh), -(-w // sw)
    pad_h, pad_w = max((oh - 1) * sh + eh - h, 0), max((ow - 1) * sw + ew - w, 0)
    return (kh, kw, sh, sw, pad_h // 2, pad_w // 2, oh, ow) + tail


class _Windowed:
    """A layer with a sliding window (convolution, pooling): `window` is the one for the
    input shape it was built for (None sizes where that shape leaves the image size open)."""

    @property
    def window(self):
        return self.window_at(self.input_shape)


def _window_at(layer, x_shape, size, strides, padding, dilation=(1, 1)):
    """The window for a batch of this shape (a model built for any image size meets several
    sizes), cached on the layer."""
    key = (x_shape[1], x_shape[2], size, strides, dilation)
    cache = layer.__dict__.setdefault("_windows", {})
    window = cache.get(key)
    if window is None:
        window = cache[key] = _window(layer, (None,) + tuple(x_shape[1:]), size, strides,
                                      padding, dilation)
    return window


def _positive_filters(filters, layer):
    if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
        raise ValueError(f"{layer}: Invalid value for argument `filters`. Expected a strictly "
                         f"positive value. Received filters={filters!r}.")
    return int(filters)


def _weight_options(layer, weight_names=None, **options):
    """A layer's `<weight>_regularizer` / `<weight>_constraint` arguments, resolved (names,
    objects or configs) and kept as Keras keeps them (layer.kernel_regularizer, ...);
    add_weight then attaches them to the weight of that name (weight_names maps an argument's
    prefix to another: DepthwiseConv2D's depthwise_* apply to its "kernel")."""
    for arg, value in options.items():
        weight, kind = arg.rsplit("_", 1)
        weight = (weight_names or {}).get(weight, weight)
        module = regularizers if kind == "regularizer" else constraints
        try:
            resolved = module.deserialize(value, path=arg) if isinstance(value, dict) else \
                module.get(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{layer.name}: {exc}" if arg in str(exc) else
                            f"{layer.name}: {arg}: {exc}") from None
        setattr(layer, arg, resolved)
        layer.__dict__.setdefault("_weight_opts", {}).setdefault(weight, {})[kind] = resolved
    layer.__dict__.setdefault("_weight_opt_args", []).extend(options)


def _weight_options_config(layer):
    """The config entries of _weight_options's arguments, serialized as Keras writes them."""
    return {arg: (regularizers if arg.endswith("_regularizer") else constraints).serialize(
        getattr(layer, arg)) for arg in layer.__dict__.get("_weight_opt_args", ())}


def _conv_args(layer, kernel_size, strides, padding, data_format, dilation_rate):
    """The arguments every convolution shares, validated as Keras does."""
    layer.kernel_size = _pair(kernel_size, "kernel_size", layer.name)
    layer.strides = _pair(strides, "strides", layer.name)
    layer.padding = _padding(padding, layer.name)
    layer.dilation_rate = _pair(dilation_rate, "dilation_rate", layer.name)
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{layer.name}: only data_format='channels_last' is supported")


def _no_strided_dilation(layer):
    if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:
        raise ValueError(f"{layer.name}: `strides > 1` not supported in conjunction with "
                         f"`dilation_rate > 1`. Received: strides={layer.strides} and "
                         f"dilation_rate={layer.dilation_rate}")


def _depth_multiplier(value, layer):
    if not _is_int(value) or value < 1:
        raise ValueError(f"{layer}: Invalid value for argument `depth_multiplier`. Expected a "
                         f"strictly positive value. Received depth_multiplier={value!r}.")
    return int(value)


class Conv2D(_Windowed, Layer):
    """2-D convolution over images: `activation(conv2d(input, kernel) + bias)`.

    Inputs `(batch, height, width, channels)`; the kernel has shape
    `(kernel_h, kernel_w, channels / groups, filters)`; outputs `(batch, new_h, new_w, filters)`.

    Args:
        filters: Number of output channels (convolution filters).
        kernel_size: Size of the convolution window: an int or a tuple of one int per spatial axis.
        strides: Step of the window along each spatial axis: an int or a tuple. Defaults to `(1,
            1)`.
        padding: `"valid"` (no padding) or `"same"` (zero padding so that the output size is the
            input size divided by the stride, rounded up); case-insensitive. Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, ..., channels)`) or `None` (the same)
            is supported.
        dilation_rate: Spacing between the kernel's taps: an int or a tuple. Cannot be combined with
            strides > 1. Defaults to `(1, 1)`.
        groups: Number of groups the input channels are split into, each convolved with `filters /
            groups` filters of its own; `filters` and the input channels must be divisible by it.
            Defaults to `1`.
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    model = fastnn.Sequential([fastnn.Input(shape=(28, 28, 1)),
                               fastnn.layers.Conv2D(32, 3, activation="relu"),
                               fastnn.layers.MaxPooling2D(),
                               fastnn.layers.Flatten(),
                               fastnn.layers.Dense(10, activation="softmax")])
    ```
    """
    _KERAS_DEFAULTS = {"lora_rank": None, "lora_alpha": None}

    """2-D convolution, channels_last, kernel (kh, kw, in/groups, filters): im2col + one GEMM
    with the bias and activation fused; backward is two GEMMs + col2im. dilation_rate spaces
    the window's taps (im2col reads them so); groups > 1 makes the GEMM block-diagonal (one
    GEMM per group on its channels' columns, base.Ops._grouped_gemm). dilation 1 and groups 1
    take the plain path."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or \
                filters < 1:
            raise ValueError(f"{self.name}: filters must be a positive int, got {filters!r}")
        self.filters = int(filters)
        _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate)
        _weight_options(self, kernel_regularizer=kernel_regularizer,
                        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                        bias_constraint=bias_constraint)
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"{self.name}: The number of groups must be a positive integer. "
                             f"Received: groups={groups!r}.")
        self.groups = int(groups)
        if self.filters % self.groups:
            raise ValueError(f"{self.name}: The number of filters must be evenly divisible by "
                             f"the number of groups. Received: groups={self.groups}, "
                             f"filters={self.filters}.")
        _no_strided_dilation(self)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    @property
    def _group_kw(self):
        """conv2d_forward/backward's groups argument: none at all for one group."""
        return {} if self.groups == 1 else {"groups": self.groups}

    def _kernel_and_grad(self):
        return self.kernel, self.grads.get("kernel")

    def build(self, input_shape):
        _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                self.dilation_rate)  # checks
        if input_shape[3] % self.groups:
            raise ValueError(f"{self.name}: The number of input channels must be evenly "
                             f"divisible by the number of groups. Received groups="
                             f"{self.groups}, but the input has {input_shape[3]} channels "
                             f"(full input shape is {tuple(input_shape)}).")
        kh, kw = self.kernel_size
        self.add_weight(name="kernel",
                        shape=(kh, kw, input_shape[3] // self.groups, self.filters),
                        initializer=self.kernel_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.filters,),
                            initializer=self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        w = _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                    self.dilation_rate)
        return (input_shape[0], w[6], w[7], self.filters)

    def window_at(self, x_shape):
        return _window_at(self, x_shape, self.kernel_size, self.strides, self.padding,
                          self.dilation_rate)

    def _cols(self, window, rows, c):
        """im2col's buffer; None where the input is its own im2col (pointwise, one group)."""
        kh, kw = window[0], window[1]
        return None if pointwise(window) and self.groups == 1 else \
            self._buffer("cols", (rows, kh * kw * c))

    def forward(self, x, training=False):
        st = self._state()
        window = self.window_at(x.shape)
        oh, ow = window[6], window[7]
        n, c = x.shape[0], x.shape[3]
        rows = n * oh * ow
        cols = self._cols(window, rows, c)
        z = self._buffer("z", (rows, self.filters))
        y = self._buffer("y", (rows, self.filters)) \
            if self.act_id in activations.NEEDS_INPUT else z
        cols, _, _ = get_ops().conv2d_forward(x, self._kernel_and_grad()[0],
                                              self._vars.get("bias"),
                                              self.act_id, self.act_alpha, window, cols=cols,
                                              z=z, y=y, **self._group_kw)
        st._x_shape, st._cols, st._z, st._y, st._window = x.shape, cols, z, y, window
        return y.reshape(n, oh, ow, self.filters)

    def padded_window(self, x_shape, pad):
        """The window over x that reads a ZeroPadding2D's `pad` ((top, bottom), (left, right))
        around it as im2col's zeros, or None where some window would lie wholly in the
        padding (the kernels refuse those)."""
        (top, bottom), (left, right) = pad
        n, h, w, c = x_shape
        window = self.window_at((n, h + top + bottom, w + left + right, c))
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        dh, dw = dilation(window)
        pt, pl = pt + top, pl + left
        if pt >= (kh - 1) * dh + 1 or pl >= (kw - 1) * dw + 1 or (oh - 1) * sh - pt >= h or \
                (ow - 1) * sw - pl >= w:
            return None
        return (kh, kw, sh, sw, pt, pl, oh, ow) + tuple(window[8:])

    def forward_fused(self, x, norm=None, residual=None, act=(activations.LINEAR, 0.0),
                      window=None):
        """Inference only (a linear Conv2D): as Dense.forward_fused; `window` may be a
        padded_window."""
        window = self.window_at(x.shape) if window is None else window
        oh, ow = window[6], window[7]
        n, c = x.shape[0], x.shape[3]
        rows = n * oh * ow
        ops = get_ops()
        # a 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) where the backend has it and it
        # pays: 2.25x fewer multiplications, equal to rounding, no cols to write
        floats = ops.winograd_work(x.shape, window, self.filters) if self.groups == 1 else 0
        work = self._buffer("winograd", (floats,)) if floats else None
        cols = None if floats else self._cols(window, rows, c)
        z = self._buffer("z", (rows, self.filters))
        ops.conv2d_forward(x, self._kernel_and_grad()[0], self._vars.get("bias"), act[0],
                           act[1], window, cols=cols, z=z, y=z, norm=norm,
                           residual=None if residual is None else residual.reshape(z.shape),
                           work=work, **self._group_kw)
        return z.reshape(n, oh, ow, self.filters)

    def backward(self, dy, need_dx=True, preactivation=False):
        st = self._state()
        dy2 = dy.reshape(-1, self.filters)
        act = activations.LINEAR if preactivation else self.act_id
        dx = self._buffer("dx", st._x_shape) if need_dx else False
        dcols = self._buffer("dcols", st._cols.shape) \
            if need_dx and (self.groups != 1 or not pointwise(st._window)) else None
        kernel, d_kernel = self._kernel_and_grad()
        return get_ops().conv2d_backward(st._cols, kernel, st._z, st._y, dy2, act,
                                         self.act_alpha, st._window, st._x_shape,
                                         d_kernel, self.grads.get("bias"),
                                         dx=dx, dcols=dcols, **self._group_kw)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "data_format": "channels_last",
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                **_weight_options_config(self)}


class DepthwiseConv2D(Conv2D):
    """Keras's DepthwiseConv2D: each input channel convolved with its own depth_multiplier
    filters, kernel (kh, kw, in, depth_multiplier), output channel c * depth_multiplier + m.
    It is the grouped Conv2D with groups = in and filters = in * depth_multiplier, whose
    kernel (kh, kw, 1, in * depth_multiplier) is this kernel's memory as it lies.

    Args:
        kernel_size: Size of the convolution window: an int or a tuple of one int per spatial axis.
        strides: Step of the window along each spatial axis: an int or a tuple. Defaults to `(1,
            1)`.
        padding: `"valid"` (no padding) or `"same"` (zero padding so that the output size is the
            input size divided by the stride, rounded up); case-insensitive. Defaults to `"valid"`.
        depth_multiplier: Number of depthwise output channels for each input channel. Defaults to
            `1`.
        data_format: Only `"channels_last"` (inputs `(batch, ..., channels)`) or `None` (the same)
            is supported.
        dilation_rate: Spacing between the kernel's taps: an int or a tuple. Cannot be combined with
            strides > 1. Defaults to `(1, 1)`.
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        depthwise_initializer: Initializer for the depthwise kernel (a name such as `"zeros"`, a
            config dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        depthwise_regularizer: Regularizer for the depthwise kernel: its penalty is added to the
            model's loss. `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        depthwise_constraint: Constraint applied to the depthwise kernel after each optimizer step.
            `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    _KERAS_DEFAULTS = {}

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        Layer.__init__(self, activity_regularizer=activity_regularizer, **kwargs)
        self.depth_multiplier = _depth_multiplier(depth_multiplier, self.name)
        _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate)
        _weight_options(self, {"depthwise": "kernel"},
                        depthwise_regularizer=depthwise_regularizer,
                        bias_regularizer=bias_regularizer,
                        depthwise_constraint=depthwise_constraint,
                        bias_constraint=bias_constraint)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.groups = self.filters = None      # set by build: the input's channels

    @property
    def _group_kw(self):
        return {"groups": self.groups}

    def _channels(self, input_shape):
        _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                self.dilation_rate)  # checks
        self.groups = int(input_shape[3])
        self.filters = self.groups * self.depth_multiplier

    def build(self, input_shape):
        self._channels(input_shape)
        kh, kw = self.kernel_size
        self.add_weight(name="kernel", shape=(kh, kw, self.groups, self.depth_multiplier),
                        initializer=self.depthwise_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.filters,),
                            initializer=self.bias_initializer)
        Layer.build(self, input_shape)

    def compute_output_shape(self, input_shape):
        w = _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                    self.dilation_rate)
        return (input_shape[0], w[6], w[7], input_shape[3] * self.depth_multiplier)

    def forward(self, x, training=False):
        if x.shape[3] != self.groups:
            raise ValueError(f"Layer {self.name!r} was built for {self.groups} channels, got "
                             f"input shape {tuple(x.shape)}")
        return Conv2D.forward(self, x, training)

    def _kernel_and_grad(self):
        # the ops read a grouped kernel as (taps * in/groups, filters): this kernel's memory
        return (self.kernel.reshape(-1, self.filters),
                self.grads["kernel"].reshape(-1, self.filters))

    def get_config(self):
        return {**Layer.get_config(self), "depth_multiplier": self.depth_multiplier,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "data_format": "channels_last",
                "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                **_weight_options_config(self)}


class SeparableConv2D(_Windowed, Layer):
    """Keras's SeparableConv2D: a DepthwiseConv2D (no bias, linear) then a 1x1 convolution to
    `filters` with the bias and activation. Weights in Keras's order: depthwise_kernel
    (kh, kw, in, depth_multiplier), pointwise_kernel (1, 1, in * depth_multiplier, filters),
    bias. Forward is the grouped convolution then one GEMM; backward the reverse.

    Args:
        filters: Number of output channels (convolution filters).
        kernel_size: Size of the convolution window: an int or a tuple of one int per spatial axis.
        strides: Step of the window along each spatial axis: an int or a tuple. Defaults to `(1,
            1)`.
        padding: `"valid"` (no padding) or `"same"` (zero padding so that the output size is the
            input size divided by the stride, rounded up); case-insensitive. Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, ..., channels)`) or `None` (the same)
            is supported.
        depth_multiplier: Number of depthwise output channels for each input channel. Defaults to
            `1`.
        dilation_rate: Spacing between the kernel's taps: an int or a tuple. Cannot be combined with
            strides > 1. Defaults to `(1, 1)`.
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        depthwise_initializer: Initializer for the depthwise kernel (a name such as `"zeros"`, a
            config dict, or an initializer object). Defaults to `"glorot_uniform"`.
        pointwise_initializer: Initializer for the pointwise (1x1) kernel (a name such as `"zeros"`,
            a config dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        depthwise_regularizer: Regularizer for the depthwise kernel: its penalty is added to the
            model's loss. `None`: none.
        pointwise_regularizer: Regularizer for the pointwise kernel: its penalty is added to the
            model's loss. `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        depthwise_constraint: Constraint applied to the depthwise kernel after each optimizer step.
            `None`: none.
        pointwise_constraint: Constraint applied to the pointwise kernel after each optimizer step.
            `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 depth_multiplier=1, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, pointwise_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.depth_multiplier = _depth_multiplier(depth_multiplier, self.name)
        self.filters = _positive_filters(filters, self.name)
        _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate)
        _weight_options(self, {"depthwise": "depthwise_kernel", "pointwise": "pointwise_kernel"},
                        depthwise_regularizer=depthwise_regularizer,
                        pointwise_regularizer=pointwise_regularizer,
                        bias_regularizer=bias_regularizer,
                        depthwise_constraint=depthwise_constraint,
                        pointwise_constraint=pointwise_constraint,
                        bias_constraint=bias_constraint)
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                self.dilation_rate)  # checks
        kh, kw = self.kernel_size
        c, m = input_shape[3], self.depth_multiplier
        self.add_weight(name="depthwise_kernel", shape=(kh, kw, c, m),
                        initializer=self.depthwise_initializer)
        self.add_weight(name="pointwise_kernel", shape=(1, 1, c * m, self.filters),
                        initializer=self.pointwise_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.filters,),
                            initializer=self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        w = _window(self, input_shape, self.kernel_size, self.strides, self.padding,
                    self.dilation_rate)
        return (input_shape[0], w[6], w[7], self.filters)

    def window_at(self, x_shape):
        return _window_at(self, x_shape, self.kernel_size, self.strides, self.padding,
                          self.dilation_rate)

    def _kernels(self, c):
        m = c * self.depth_multiplier
        dk, pk = self._vars["depthwise_kernel"], self._vars["pointwise_kernel"]
        if dk.shape[2] != c:
            raise ValueError(f"Layer {self.name!r} was built for {dk.shape[2]} channels, got "
                             f"{c}")
        return dk.reshape(-1, m), pk.reshape(m, self.filters), m

    def forward(self, x, training=False):
        st = self._state()
        window = self.window_at(x.shape)
        kh, kw, oh, ow = window[0], window[1], window[6], window[7]
        n, c = x.shape[0], x.shape[3]
        rows = n * oh * ow
        dk, pk, m = self._kernels(c)
        ops = get_ops()
        cols = self._buffer("cols", (rows, kh * kw * c))
        t = self._buffer("t", (rows, m))
        cols, _, _ = ops.conv2d_forward(x, dk, None, activations.LINEAR, 0.0, window, cols=cols,
                                        z=t, y=t, groups=c)
        z = self._buffer("z", (rows, self.filters))
        y = self._buffer("y", (rows, self.filters)) \
            if self.act_id in activations.NEEDS_INPUT else z
        ops.dense_forward(t, pk, self._vars.get("bias"), self.act_id, self.act_alpha, z=z, y=y)
        st._x_shape, st._cols, st._t, st._z, st._y, st._window = \
            x.shape, cols, t, z, y, window
        return y.reshape(n, oh, ow, self.filters)

    def backward(self, dy, need_dx=True, preactivation=False):
        st = self._state()
        c = st._x_shape[3]
        dk, pk, m = self._kernels(c)
        ops = get_ops()
        dy2 = dy.reshape(-1, self.filters)
        act = activations.LINEAR if preactivation else self.act_id
        dt = self._buffer("dt", st._t.shape)
        ops.dense_backward(st._t, pk, st._z, st._y, dy2, act, self.act_alpha,
                           self.grads["pointwise_kernel"].reshape(m, self.filters),
                           self.grads.get("bias"), dx=dt, dz=dy2)
        dx = self._buffer("dx", st._x_shape) if need_dx else False
        dcols = self._buffer("dcols", st._cols.shape) if need_dx else None
        return ops.conv2d_backward(st._cols, dk, st._t, st._t, dt, activations.LINEAR, 0.0,
                                   st._window, st._x_shape,
                                   self.grads["depthwise_kernel"].reshape(-1, m), None, dx=dx,
                                   dcols=dcols, groups=c)

    def get_config(self):
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier,
                "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "data_format": "channels_last", "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                **_weight_options_config(self)}


def _transpose_axis(size, k, s, d, padding, output_padding):
    """One axis of Keras's transposed convolution: (output length, leading pad of the
    convolution it is the gradient of). The full result, (size - 1) * s + the window's
    extent long, loses `pad` entries in front and is cut (or zero-extended) behind to the
    length of Keras's output-shape rule."""
    e = (k - 1) * d + 1
    if padding == "valid":
        op = max(e, s) - e if output_padding is None else output_padding
        return (size - 1) * s + e + op, 0
    if output_padding is None:
        length, pad_len = size * s, s + e - 2
    else:
        length, pad_len = (size - 1) * s + e % 2 + output_padding, \
            e + e % 2 - 2 + output_padding
    left = min(pad_len // 2 + pad_len % 2, e - 1)      # the zero padding of the input side
    return length, e - 1 - left


class Conv2DTranspose(_Windowed, Layer):
    """Keras's Conv2DTranspose, kernel (kh, kw, filters, in): the gradient of the convolution
    from its output (n, oh, ow, filters) to its input (n, h, w, in). Forward is one GEMM then
    col2im, backward im2col then two GEMMs (base.Ops.conv2d_transpose_*). Output size and
    placement follow Keras 3 (its output-shape rule and padding on every backend).

    Args:
        filters: Number of output channels (convolution filters).
        kernel_size: Size of the convolution window: an int or a tuple of one int per spatial axis.
        strides: Step of the window along each spatial axis: an int or a tuple. Defaults to `(1,
            1)`.
        padding: `"valid"` or `"same"` (case-insensitive): with `"same"` and no `output_padding`,
            the output size is the input size times the stride; with `"valid"` it is
            `(input - 1) * stride + max(kernel_size, stride)` (undilated). Defaults to `"valid"`.
        output_padding: Extra rows/columns added to one side of the output (an int or a pair, each
            smaller than the stride), or `None` to infer the output size. Defaults to `None`.
        data_format: Only `"channels_last"` (inputs `(batch, ..., channels)`) or `None` (the same)
            is supported.
        dilation_rate: Spacing between the kernel's taps: an int or a tuple. Cannot be combined with
            strides > 1. Defaults to `(1, 1)`.
        activation: Activation applied to the output: a name such as `"relu"`, a callable, or `None`
            for none (linear). Defaults to `None`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = _positive_filters(filters, self.name)
        _conv_args(self, kernel_size, strides, padding, data_format, dilation_rate)
        _weight_options(self, kernel_regularizer=kernel_regularizer,
                        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                        bias_constraint=bias_constraint)
        if output_padding is not None:
            if _is_int(output_padding):
                output_padding = (output_padding, output_padding)
            try:
                a, b = output_padding
            except (TypeError, ValueError):
                a = b = None
            if not (_is_int(a) and _is_int(b)) or min(a, b) < 0:
                raise ValueError(f"{self.name}: output_padding must be None, a non-negative "
                                 f"int or a tuple of 2, got {output_padding!r}")
            output_padding = (int(a), int(b))
        self.output_padding = output_padding
        _no_strided_dilation(self)
        if output_padding is not None:
            for i, (op, s) in enumerate(zip(output_padding, self.strides)):
                if op >= s:
                    raise ValueError(
                        f"{self.name}: Invalid `output_padding` argument. Each value in "
                        "`output_padding` must be strictly less than the corresponding "
                        f"`strides` value.\nAt index {i}, `output_padding` is {op} and "
                        f"`strides` is {s}.\nReceived: output_padding={output_padding}, "
                        f"strides={self.strides}.")
        self.activation = activations.get(activation)
        self.act_id, self.act_alpha = activations.kernel_id(self.activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _geometry(self, input_shape):
        """(window, output (height, width)): window is the convolution from the output to
        the input (its output size is the input's)."""
        if len(input_shape) != 4 or input_shape[3] is None:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} expects 4-D input "
                             "(batch, height, width, channels) with known channels, got "
                             f"shape {tuple(input_shape)}")
        h, w = input_shape[1], input_shape[2]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        op = self.output_padding or (None, None)
        tail = (dh, dw) if (dh, dw) != (1, 1) else ()
        if h is None or w is None:
            return (kh, kw, sh, sw, None, None, h, w) + tail, (None, None)
        oh, pt = _transpose_axis(h, kh, sh, dh, self.padding, op[0])
        ow, pl = _transpose_axis(w, kw, sw, dw, self.padding, op[1])
        if oh < 1 or ow < 1:
            raise ValueError(f"Layer {self.name!r}: input {(h, w)} gives an empty output "
                             f"{(oh, ow)}")
        return (kh, kw, sh, sw, pt, pl, h, w) + tail, (oh, ow)

    def build(self, input_shape):
        self._geometry(input_shape)  # checks
        kh, kw = self.kernel_size
        self.add_weight(name="kernel", shape=(kh, kw, self.filters, input_shape[3]),
                        initializer=self.kernel_initializer)
        if self.use_bias:
            self.add_weight(name="bias", shape=(self.filters,),
                            initializer=self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        (oh, ow) = self._geometry(input_shape)[1]
        return (input_shape[0], oh, ow, self.filters)

    def window_at(self, x_shape):
        key = ("transpose", x_shape[1], x_shape[2])
        cache = self.__dict__.setdefault("_windows", {})
        if key not in cache:
            cache[key] = self._geometry((None,) + tuple(x_shape[1:]))
        return cache[key][0]

    def forward(self, x, training=False):
        st = self._state()
        window = self.window_at(x.shape)
        oh, ow = self._windows[("transpose", x.shape[1], x.shape[2])][1]
        n, c = x.shape[0], x.shape[3]
        kh, kw, f = window[0], window[1], self.filters
        y_shape = (n, oh, ow, f)
        rows = n * oh * ow
        cols = self._buffer("cols", (n * x.shape[1] * x.shape[2], kh * kw * f))
        z = self._buffer("z", (rows, f))
        y = self._buffer("y", (rows, f)) if self.act_id in activations.NEEDS_INPUT else z
        get_ops().conv2d_transpose_forward(x, self.kernel.reshape(-1, c),
                                           self._vars.get("bias"), self.act_id, self.act_alpha,
                                           window, y_shape, cols=cols, z=z, y=y)
        st._x, st._z, st._y, st._window, st._y_shape = x, z, y, window, y_shape
        return y.reshape(y_shape)

    def backward(self, dy, need_dx=True, preactivation=False):
        st = self._state()
        c = st._x.shape[3]
        act = activations.LINEAR if preactivation else self.act_id
        dx = self._buffer("dx", st._x.shape) if need_dx else False
        dcols = self._buffer("dcols", (st._x.size // c, self.kernel.size // c))
        return get_ops().conv2d_transpose_backward(
            st._x, self.kernel.reshape(-1, c), st._z, st._y, dy.reshape(-1, self.filters), act,
            self.act_alpha, st._window, st._y_shape, self.grads["kernel"].reshape(-1, c),
            self.grads.get("bias"), dx=dx, dcols=dcols)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "output_padding": self.output_padding,
                "data_format": "channels_last", "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                **_weight_options_config(self)}


class _Pooling2D(_Windowed, Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size", self.name)
        self.strides = self.pool_size if strides is None else _pair(strides, "strides",
                                                                     self.name)
        self.padding = _padding(padding, self.name)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")

    def build(self, input_shape):
        _window(self, input_shape, self.pool_size, self.strides, self.padding)  # checks
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        w = _window(self, input_shape, self.pool_size, self.strides, self.padding)
        return (input_shape[0], w[6], w[7], input_shape[3])

    def window_at(self, x_shape):
        return _window_at(self, x_shape, self.pool_size, self.strides, self.padding)

    def _out_shape(self, x, window):
        return (x.shape[0], window[6], window[7], x.shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "data_format": "channels_last"}


class MaxPooling2D(_Pooling2D):
    """Max pooling over 2-D windows: the maximum of each `pool_size` window of each channel.

    Args:
        pool_size: Size of the pooling window: an int or a tuple. Defaults to `(2, 2)`.
        strides: Step of the window: an int or a pair; `None`: `pool_size`.
        padding: `"valid"` (windows inside the image) or `"same"` (padded so that the output size is
            the input size divided by the stride, rounded up). Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def forward(self, x, training=False):
        st = self._state()
        window = self.window_at(x.shape)
        shape = self._out_shape(x, window)
        y, argmax = get_ops().maxpool_forward(
            x, window, y=self._buffer("y", shape),
            argmax=self._buffer("argmax", shape, "int32"))
        st._x_shape, st._argmax, st._window = x.shape, argmax, window
        return y

    def backward(self, dy, need_dx=True):
        st = self._state()
        if not need_dx:
            return None
        return get_ops().maxpool_backward(dy, st._argmax, st._window, st._x_shape,
                                          dx=self._buffer("dx", st._x_shape))


class ConvPool:
    """A Conv2D and the MaxPooling2D right after it, run as one step (ops.conv2d_maxpool_*):
    on the CPU a few images at a time, so the convolution's output never leaves the cache.
    Sequential runs such pairs through it; each layer keeps its weights, gradients and
    config. The activation must be non-decreasing (pooling then commutes with it) and its
    derivative readable off its output (the pooled value is the output at its argmax):
    gelu, silu, softplus and softmax stay unfused, as do dilated and grouped convolutions.

    Args:
        conv: The `Conv2D` layer.
        pool: The `MaxPooling2D` layer that follows it.
    """

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool
        self._thread = threading.local()

    def _state(self):
        return _thread_state(self._thread)

    @staticmethod
    def fuses(conv, pool):
        return (type(conv) is Conv2D and type(pool) is MaxPooling2D and conv.groups == 1 and
                conv.activity_regularizer is None and pool.activity_regularizer is None and
                conv.dilation_rate == (1, 1) and conv.act_id in activations.MONOTONE and
                conv.act_alpha >= 0 and conv.act_id not in activations.NEEDS_INPUT)

    def _plan(self, n, window):
        _, _, _, _, _, _, oh, ow = window
        groups, chunk = get_ops().conv2d_maxpool_plan(n, oh, ow, self.conv.filters)
        return groups, groups * chunk * oh * ow

    def forward(self, x, training=False):
        st = self._state()
        conv, pool = self.conv, self.pool
        window = conv.window_at(x.shape)
        kh, kw, _, _, _, _, oh, ow = window
        pool_window = pool.window_at((x.shape[0], oh, ow, conv.filters))
        n, kdim, filters = x.shape[0], kh * kw * x.shape[3], conv.filters
        _, work_rows = self._plan(n, window)
        shape = (n, pool_window[6], pool_window[7], filters)
        cols = conv._buffer("cols", (n * oh * ow, kdim))
        y, argmax = get_ops().conv2d_maxpool_forward(
            x, conv.kernel.reshape(kdim, filters), conv._vars.get("bias"), conv.act_id,
            conv.act_alpha, window, pool_window, cols=cols,
            work=conv._buffer("pool_work", (work_rows, filters)),
            y=pool._buffer("y", shape), argmax=pool._buffer("argmax", shape, "int32"))
        st._x_shape, st._cols, st._y, st._argmax = x.shape, cols, y, argmax
        st._windows = window, pool_window
        return y

    def backward(self, dy, need_dx=True):
        st = self._state()
        conv = self.conv
        window, pool_window = st._windows
        kdim, filters = st._cols.shape[1], conv.filters
        groups, work_rows = self._plan(st._x_shape[0], window)
        d_kernel = conv.grads["kernel"].reshape(kdim, filters)
        partials = conv._buffer("pool_partials", ((groups - 1) * kdim, filters)) \
            if groups > 1 else None
        return get_ops().conv2d_maxpool_backward(
            st._cols, conv.kernel.reshape(kdim, filters), st._y, st._argmax, dy,
            conv.act_id, conv.act_alpha, window, pool_window, st._x_shape,
            d_kernel, conv.grads.get("bias"),
            dx=conv._buffer("dx", st._x_shape) if need_dx else None,
            work=conv._buffer("pool_work", (work_rows, filters)),
            dcols_work=conv._buffer("pool_dcols", (work_rows, kdim)) if need_dx else None,
            partials=partials)


class AveragePooling2D(_Pooling2D):
    """Average pooling over 2-D windows: the mean of each `pool_size` window of each channel (with
    `"same"` padding, over the window's pixels inside the image).

    Args:
        pool_size: Size of the pooling window: an int or a tuple. Defaults to `(2, 2)`.
        strides: Step of the window: an int or a pair; `None`: `pool_size`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def forward(self, x, training=False):
        st = self._state()
        window = self.window_at(x.shape)
        st._x_shape, st._window = x.shape, window
        return get_ops().avgpool_forward(x, window,
                                         y=self._buffer("y", self._out_shape(x, window)))

    def backward(self, dy, need_dx=True):
        st = self._state()
        if not need_dx:
            return None
        return get_ops().avgpool_backward(dy, st._window, st._x_shape,
                                          dx=self._buffer("dx", st._x_shape))


class _GlobalPooling2D(_Windowed, Layer):
    """Global pooling is pooling with one window covering the whole image."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")
        self.keepdims = keepdims

    def build(self, input_shape):
        _window(self, input_shape, (input_shape[1], input_shape[2]), (1, 1), "valid")  # checks
        super().build(input_shape)

    def window_at(self, x_shape):
        return _window_at(self, x_shape, (x_shape[1], x_shape[2]), (1, 1), "valid")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[3]) if self.keepdims else \
            (input_shape[0], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last",
                "keepdims": self.keepdims}

    def _finish(self, y):
        return y if self.keepdims else y.reshape(y.shape[0], y.shape[3])


class GlobalAveragePooling2D(_GlobalPooling2D):
    """The mean over height and width of each channel: `(batch, h, w, c)` becomes `(batch, c)`.

    Args:
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        keepdims: Whether to keep height and width as axes of size 1. Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def forward(self, x, training=False):
        st = self._state()
        st._x_shape, st._window = x.shape, self.window_at(x.shape)
        shape = (x.shape[0], 1, 1, x.shape[3])
        return self._finish(get_ops().avgpool_forward(x, st._window,
                                                      y=self._buffer("y", shape)))

    def backward(self, dy, need_dx=True):
        st = self._state()
        if not need_dx:
            return None
        dy = dy.reshape(dy.shape[0], 1, 1, -1)
        return get_ops().avgpool_backward(dy, st._window, st._x_shape,
                                          dx=self._buffer("dx", st._x_shape))


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum over height and width of each channel: `(batch, h, w, c)` becomes `(batch, c)`.

    Args:
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        keepdims: Whether to keep height and width as axes of size 1. Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def forward(self, x, training=False):
        st = self._state()
        shape = (x.shape[0], 1, 1, x.shape[3])
        st._window = self.window_at(x.shape)
        y, st._argmax = get_ops().maxpool_forward(
            x, st._window, y=self._buffer("y", shape),
            argmax=self._buffer("argmax", shape, "int32"))
        st._x_shape = x.shape
        return self._finish(y)

    def backward(self, dy, need_dx=True):
        st = self._state()
        if not need_dx:
            return None
        return get_ops().maxpool_backward(dy.reshape(dy.shape[0], 1, 1, -1), st._argmax,
                                          st._window, st._x_shape,
                                          dx=self._buffer("dx", st._x_shape))


class BatchNormalization(Layer):
    """Normalizes over every axis but the last (2-D and 4-D NHWC inputs). Training uses batch
    statistics and updates the moving ones Keras's way; inference uses the moving ones.

    Args:
        axis: The channel axis; only the last axis (-1) is supported. Defaults to `-1`.
        momentum: Momentum of the moving averages: `moving = moving * momentum + batch_value * (1 -
            momentum)`. Defaults to `0.99`.
        epsilon: Small float added to the variance to avoid dividing by zero. Defaults to `0.001`.
        center: Whether to add the learned offset `beta`. Defaults to `True`.
        scale: Whether to multiply by the learned scale `gamma`. Defaults to `True`.
        beta_initializer: Initializer for the offset `beta` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"zeros"`.
        gamma_initializer: Initializer for the scale `gamma` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"ones"`.
        moving_mean_initializer: Initializer for the moving mean (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"zeros"`.
        moving_variance_initializer: Initializer for the moving variance (a name such as `"zeros"`,
            a config dict, or an initializer object). Defaults to `"ones"`.
        beta_regularizer: Regularizer for the offset `beta`: its penalty is added to the model's
            loss. `None`: none.
        gamma_regularizer: Regularizer for the scale `gamma`: its penalty is added to the model's
            loss. `None`: none.
        beta_constraint: Constraint applied to the offset `beta` after each optimizer step. `None`:
            none.
        gamma_constraint: Constraint applied to the scale `gamma` after each optimizer step. `None`:
            none.
        synchronized: Accepted for Keras compatibility (one process holds the whole batch). Defaults
            to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    _KERAS_DEFAULTS = {"renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99}

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ValueError(f"{self.name}: axis must be an int (the channel axis), got "
                             f"{axis!r}")
        _weight_options(self, beta_regularizer=beta_regularizer,
                        gamma_regularizer=gamma_regularizer, beta_constraint=beta_constraint,
                        gamma_constraint=gamma_constraint)
        self.momentum = _finite(momentum, "momentum", self.name)
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"{self.name}: momentum must be in [0, 1], got {momentum!r}")
        self.axis, self.epsilon = int(axis), _finite(epsilon, "epsilon", self.name, low=0)
        self.center, self.scale = center, scale
        self.initializers = {"gamma": initializers.get(gamma_initializer),
                             "beta": initializers.get(beta_initializer),
                             "moving_mean": initializers.get(moving_mean_initializer),
                             "moving_variance": initializers.get(moving_variance_initializer)}

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis % rank != rank - 1:
            raise ValueError(f"{self.name}: fastnn normalizes over the last axis (channels "
                             f"last): axis must be -1 or {rank - 1} for inputs of shape "
                             f"{tuple(input_shape)}, got {self.axis}")
        c = input_shape[-1]
        if c is None:
            raise ValueError(f"{self.name}: the channel axis must be known")
        for name, wanted, trainable in (("gamma", self.scale, True), ("beta", self.center, True),
                                        ("moving_mean", True, False),
                                        ("moving_variance", True, False)):
            if wanted:
                self.add_weight(name=name, shape=(c,), initializer=self.initializers[name],
                                trainable=trainable)
        super().build(input_shape)

    def forward(self, x, training=False):
        st = self._state()
        ops = get_ops()
        x2 = x.reshape(-1, x.shape[-1])
        gamma, beta = self._vars.get("gamma"), self._vars.get("beta")
        st._batch_stats = bool(training) and self.trainable
        st._rows = None
        if st._batch_stats:
            c = x2.shape[1]
            mean, var = ops.batchnorm_stats(x2, self._buffer("mean", (c,)),
                                            self._buffer("var", (c,)))
            dist = distribution.active()
            if dist is not None:        # the global batch's statistics, as one process's
                st._rows, g_mean, g_var = dist.batch_moments(
                    self, x2.shape[0], ops.to_numpy(mean).astype(np.float64),
                    ops.to_numpy(var).astype(np.float64))
                mean[...] = ops.asarray(g_mean.astype(np.float32))
                var[...] = ops.asarray(g_var.astype(np.float32))
            self.update_moving_statistics(mean, var)
        else:
            mean, var = self.moving_mean, self.moving_variance
        y = ops.batchnorm_apply(x2, mean, var, gamma, beta, self.epsilon,
                                out=self._buffer("y", x2.shape))
        st._x2, st._mean, st._var = x2, mean, var
        return y.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        st = self._state()
        ops = get_ops()
        dy2 = dy.reshape(st._x2.shape)
        gamma = self._vars.get("gamma")
        if st._rows is not None:
            dx = self._global_batch_backward(st, dy2, gamma)
        elif st._batch_stats:
            dx = ops.batchnorm_backward(st._x2, dy2, st._mean, st._var, gamma,
                                        self.epsilon, dx=dy2, d_gamma=self.grads.get("gamma"),
                                        d_beta=self.grads.get("beta"))
        else:   # frozen / inference statistics: an affine map
            dx = ops.batchnorm_apply(dy2, ops.xp.zeros_like(st._mean), st._var, gamma, None,
                                     self.epsilon, out=dy2)
        return dx.reshape(dy.shape)

    @property
    def _synchronizes(self):
        """Whether training under a DataParallel distribution combines its statistics over
        the ranks (fastnn.distribution)."""
        return self.trainable

    def update_moving_statistics(self, mean, var):
        """Move the moving mean and variance towards a batch's (Keras's momentum rule).

        Args:
            mean: The batch's per-channel mean.
            var: The batch's per-channel (biased) variance.
        """
        get_ops().batchnorm_update_moving(self.moving_mean, self.moving_variance, mean, var,
                                          self.momentum)

    def _global_batch_backward(self, st, dy, gamma):
        """The backward pass through statistics of the global batch (st._rows rows over the
        data-parallel ranks). This rank's dy is the gradient of its own loss; its gradients
        are scaled by f (its share) before the ranks sum them, so the global batch's dy is
        f * dy, and dx is returned in this rank's units again (divided by f)."""
        ops = get_ops()
        dist = distribution.active()
        f = float(dist.grad_scale)
        x = ops.to_numpy(st._x2).astype(np.float64)
        g = ops.to_numpy(dy).astype(np.float64)
        inv = 1.0 / np.sqrt(ops.to_numpy(st._var).astype(np.float64) + self.epsilon)
        xhat = (x - ops.to_numpy(st._mean).astype(np.float64)) * inv
        sum_dy, sum_dy_xhat = g.sum(axis=0), (g * xhat).sum(axis=0)
        c = sum_dy.shape[0]
        total = dist.batch_sums(self, np.concatenate([f * sum_dy, f * sum_dy_xhat]))
        if "gamma" in self.grads:       # this rank's part: the ranks' scaled sum is the whole
            self.grads["gamma"][...] = ops.asarray(sum_dy_xhat.astype(np.float32))
        if "beta" in self.grads:
            self.grads["beta"][...] = ops.asarray(sum_dy.astype(np.float32))
        scale = inv * (1.0 if gamma is None else ops.to_numpy(gamma).astype(np.float64))
        dx = scale * (g - (total[:c] + xhat * total[c:]) / (st._rows * f))
        dy[...] = ops.asarray(dx.astype(np.float32))
        return dy

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **{f"{k}_initializer": initializers.serialize(v)
                   for k, v in self.initializers.items()},
                **_weight_options_config(self), "synchronized": False}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("beta_initializer", "gamma_initializer", "moving_mean_initializer",
                    "moving_variance_initializer"):
            if isinstance(config.get(key), dict):
                config[key] = initializers.get(config[key])
        return super().from_config(config)


class _Merge(Layer):
    """A layer of several inputs of one shape (Keras's merging layers), computed with
    fastnn.ops: on the tape inside a model, so its gradients come from autodiff."""
    min_inputs = 2

    supports_masking = True

    def compute_mask(self, inputs, previous_mask):
        """Keras's: the inputs' masks OR-ed, when every input has one."""
        if previous_mask is None or any(m is None for m in previous_mask):
            return None
        out = previous_mask[0]
        for m in previous_mask[1:]:
            out = out | m
        return out

    def build(self, input_shape):
        shapes = list(input_shape) if input_shape and isinstance(input_shape[0], (tuple, list)) \
            else None
        if shapes is None or len(shapes) < self.min_inputs:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} takes a list of at "
                             f"least {self.min_inputs} inputs, got {input_shape!r}")
        self._check_shapes([tuple(s) for s in shapes])
        super().build(input_shape)

    def _check_shapes(self, shapes):
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(f"{type(self).__name__} layer {self.name!r} needs inputs of one "
                             f"shape, got {shapes}")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def call(self, inputs):
        out = inputs[0]
        for x in inputs[1:]:
            out = self._merge(out, x)
        return out


class Add(_Merge):
    """Adds its inputs element-wise.

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Add()([a, b])
    ```
    """
    def _merge(self, a, b):
        return array_ops.add(a, b)

    # A functional graph's schedule (fastnn.schedule) runs Add without the tape: the sum,
    # and the output's gradient handed to every input.
    def forward(self, xs, training=False):
        y = self._buffer("y", xs[0].shape)
        get_ops().xp.add(xs[0], xs[1], out=y)
        for x in xs[2:]:
            y += x
        self._state().inputs = len(xs)
        return y

    def backward(self, dy, need_dx=True):
        needs = need_dx if isinstance(need_dx, (list, tuple)) else \
            [need_dx] * self._state().inputs
        return [dy if need else None for need in needs]


class Subtract(_Merge):
    """Subtracts its second input from its first, element-wise (exactly two inputs).

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Subtract()([a, b])
    ```
    """
    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"Subtract layer {self.name!r} takes exactly 2 inputs, got "
                             f"{len(input_shape)}")
        super().build(input_shape)

    def _merge(self, a, b):
        return array_ops.subtract(a, b)


class Multiply(_Merge):
    """Multiplies its inputs element-wise.

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Multiply()([a, b])
    ```
    """
    def _merge(self, a, b):
        return array_ops.multiply(a, b)


class Maximum(_Merge):
    """The element-wise maximum of its inputs.

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Maximum()([a, b])
    ```
    """
    def _merge(self, a, b):
        return array_ops.maximum(a, b)


class Minimum(_Merge):
    """The element-wise minimum of its inputs.

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Minimum()([a, b])
    ```
    """
    def _merge(self, a, b):
        return array_ops.minimum(a, b)


class Average(_Merge):
    """The element-wise mean of its inputs.

    Called on a list of tensors of the same shape, it returns one tensor of that shape.

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    a = fastnn.Input(shape=(16,))
    b = fastnn.Input(shape=(16,))
    y = fastnn.layers.Average()([a, b])
    ```
    """
    def call(self, inputs):
        return array_ops.multiply(_sum(inputs), 1.0 / len(inputs))


class Concatenate(_Merge):
    """Concatenates its inputs along `axis` (the other axes must match).

    Args:
        axis: The axis to concatenate along. Defaults to `-1`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ValueError(f"Concatenate: axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def _check_shapes(self, shapes):
        rank = len(shapes[0])
        if not -rank < self.axis < rank or self.axis == 0 or self.axis == -rank:
            raise ValueError(f"Concatenate layer {self.name!r}: axis {self.axis} is not a "
                             f"feature axis of inputs of rank {rank}")
        axis = self.axis % rank
        if any(len(s) != rank or s[1:axis] + s[axis + 1:] != shapes[0][1:axis] +
               shapes[0][axis + 1:] for s in shapes):
            raise ValueError(f"Concatenate layer {self.name!r} needs inputs whose shapes "
                             f"match except along axis {self.axis}, got {shapes}")

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        axis = self.axis % len(shapes[0])
        sizes = [s[axis] for s in shapes]
        total = None if None in sizes else sum(sizes)
        return shapes[0][:axis] + (total,) + shapes[0][axis + 1:]

    def call(self, inputs):
        return array_ops.concatenate(list(inputs), axis=self.axis)


    def compute_mask(self, inputs, previous_mask):
        """Keras's: each input's mask spread over its features (all True where it has none),
        concatenated along the axis, then any() over the last axis."""
        if previous_mask is None or all(m is None for m in previous_mask):
            return None
        xp = get_ops().xp
        masks = []
        for x, m in zip(inputs, previous_mask):
            if m is None:
                m = xp.ones(x.shape, bool)
            elif m.ndim < x.ndim:
                m = xp.broadcast_to(m[..., None], x.shape)
            masks.append(m)
        return xp.concatenate(masks, axis=self.axis).any(axis=-1)
    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Dot(_Merge):
    """The dot product of two inputs along an axis of each (batch by batch), as Keras's Dot:
    the output keeps the other axes of the first input, then those of the second; a result
    with no axis left is (batch, 1). normalize=True takes the cosine (each input scaled to
    unit L2 norm along its dot axis first).

    Args:
        axes: The axis of each input to reduce (an int for both, or a pair), counted with the batch
            axis as 0.
        normalize: Whether to L2-normalize both inputs along `axes` first (the result is then the
            cosine similarity). Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        pair = (axes, axes) if _is_int(axes) else tuple(axes)
        if len(pair) != 2 or not all(_is_int(a) for a in pair):
            raise ValueError(f"Dot: axes must be an int or a tuple of 2 ints, got {axes!r}")
        self.axes, self.normalize = tuple(int(a) for a in pair), bool(normalize)

    def _axes_for(self, shapes):
        return tuple(a % len(s) for a, s in zip(self.axes, shapes))

    def _check_shapes(self, shapes):
        if len(shapes) != 2:
            raise ValueError(f"Dot layer {self.name!r} takes exactly 2 inputs, got {len(shapes)}")
        a1, a2 = self._axes_for(shapes)
        if 0 in (a1, a2) or shapes[0][a1] != shapes[1][a2]:
            raise ValueError(f"Dot layer {self.name!r}: axes {self.axes} of inputs {shapes} "
                             "must be feature axes of equal length")

    def compute_output_shape(self, input_shape):
        s1, s2 = (tuple(s) for s in input_shape)
        a1, a2 = self._axes_for((s1, s2))
        rest = s1[1:a1] + s1[a1 + 1:] + s2[1:a2] + s2[a2 + 1:]
        return (s1[0],) + (rest or (1,))

    def call(self, inputs):
        x1, x2 = inputs
        a1, a2 = self._axes_for((x1.shape, x2.shape))
        if self.normalize:
            x1, x2 = _l2_normalize(x1, a1), _l2_normalize(x2, a2)
        # x1 with its dot axis last, x2 with its dot axis first after the batch: one batched
        # matrix product of (batch, rest1, n) and (batch, n, rest2)
        t1 = array_ops.transpose(x1, [i for i in range(x1.ndim) if i != a1] + [a1])
        t2 = array_ops.transpose(x2, [0, a2] + [i for i in range(1, x2.ndim) if i != a2])
        n, batch = x1.shape[a1], x1.shape[0]
        out = array_ops.matmul(array_ops.reshape(t1, (batch, -1, n)),
                               array_ops.reshape(t2, (batch, n, -1)))
        shape = self.compute_output_shape((tuple(x1.shape), tuple(x2.shape)))
        return array_ops.reshape(out, (batch,) + shape[1:])

    def get_config(self):
        return {**super().get_config(), "axes": list(self.axes), "normalize": self.normalize}


def _l2_normalize(x, axis):
    squares = array_ops.sum(array_ops.square(x), axis=axis, keepdims=True)
    return array_ops.divide(x, array_ops.sqrt(array_ops.maximum(squares, 1e-12)))


def _sum(inputs):
    out = inputs[0]
    for x in inputs[1:]:
        out = array_ops.add(out, x)
    return out


def _merge_function(cls):
    def merge(inputs, **kwargs):
        return cls(**kwargs)(inputs)
    merge.__name__ = cls.__name__.lower()
    merge.__doc__ = (f"The {cls.__name__} layer as a function: {cls.__name__}(**kwargs)(inputs)."
                     "\n\nArgs:\n    inputs: A list of tensors.\n"
                     f"    **kwargs: Arguments of the `{cls.__name__}` layer (`name`, ...).\n\n"
                     f"Returns:\n    The output of a new `{cls.__name__}` layer called on "
                     "`inputs`.")
    return merge


add = _merge_function(Add)
subtract = _merge_function(Subtract)
multiply = _merge_function(Multiply)
maximum = _merge_function(Maximum)
minimum = _merge_function(Minimum)
average = _merge_function(Average)
concatenate = _merge_function(Concatenate)


def dot(inputs, axes=-1, **kwargs):
    """The Dot layer as a function: Dot(axes, **kwargs)(inputs).

    Args:
        inputs: A list of two tensors.
        axes: The axis of each input to reduce. Defaults to `-1`.
        **kwargs: Arguments of the `Dot` layer (`normalize`, `name`, ...).

    Returns:
        The output of a new `Dot` layer called on `inputs`.
    """
    return Dot(axes=axes, **kwargs)(inputs)


# ---- shape layers: computed with fastnn.ops (differentiated by autodiff) --------------------
def _pairs(value, arg, layer):
    """Keras's 2-D padding/cropping argument: an int, (h, w), or ((top, bottom), (left,
    right)), as ((top, bottom), (left, right)) of non-negative ints."""
    if _is_int(value):
        value = ((value, value), (value, value))
    try:
        a, b = value
        if _is_int(a) and _is_int(b):
            value = ((a, a), (b, b))
        (t, bo), (le, r) = value
        value = ((int(t), int(bo)), (int(le), int(r)))
        ok = all(_is_int(v) for v in (t, bo, le, r)) and min(t, bo, le, r) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{layer}: {arg} must be an int, a tuple of 2 ints or a tuple of 2 "
                         f"tuples of 2 non-negative ints, got {value!r}")
    return value


def _grown(size, by):
    """An axis's size after adding `by` (an unknown size stays unknown)."""
    return None if size is None else size + by


class _ShapeLayer(Layer):
    """A layer that only moves values (no weights), written with fastnn.ops."""

    def _check_rank(self, input_shape, rank):
        if len(input_shape) != rank:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} expects inputs of "
                             f"rank {rank}, got shape {tuple(input_shape)}")


class Identity(_ShapeLayer):
    """Returns its input unchanged (a placeholder layer).

    Args:
        trainable: Whether the layer's weights are updated by training. Defaults to `True`.
        name: Name of the layer (a unique one is made from the class name when `None`). Defaults to
            `None`.
        dtype: Data type of the weights and computation; only `"float32"` (or `None`) is supported.
            Defaults to `None`.
        input_shape: Legacy shape of one input sample (without the batch axis); an `Input` is made
            from it when the layer starts a Sequential model. Defaults to `None`.
        input_dim: Legacy size of a 1-D input sample, the same as `input_shape=(input_dim,)`.
            Defaults to `None`.
        batch_input_shape: Legacy input shape including the batch axis. Defaults to `None`.
        batch_size: Legacy fixed batch size, used with `input_shape`. Defaults to `None`.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras
    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


class Reshape(_ShapeLayer):
    """Reshapes each sample to `target_shape` (the batch axis stays).

    Args:
        target_shape: The new shape without the batch axis; one entry may be -1 (inferred).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = tuple(target_shape) if not _is_int(target_shape) else (target_shape,)
        if not all(_is_int(d) and (d > 0 or d == -1) for d in target) or \
                sum(d == -1 for d in target) > 1:
            raise ValueError(f"Reshape: target_shape must be positive ints with at most one "
                             f"-1, got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target)

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape[1:], dtype=np.int64))
        known = int(np.prod([d for d in self.target_shape if d != -1], dtype=np.int64))
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"Reshape layer {self.name!r}: cannot reshape "
                                 f"{tuple(input_shape)} to {self.target_shape}")
            target = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            target = self.target_shape
        if int(np.prod(target, dtype=np.int64)) != size:
            raise ValueError(f"Reshape layer {self.name!r}: total size of the new shape "
                             f"{self.target_shape} must equal that of {tuple(input_shape)}")
        return (input_shape[0],) + target

    def call(self, inputs):
        target = self.compute_output_shape((None,) + tuple(inputs.shape[1:]))[1:]
        return array_ops.reshape(inputs, (inputs.shape[0],) + target)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Permute(_ShapeLayer):
    """Permutes the axes of each sample (the batch axis stays first).

    Args:
        dims: The new order of the axes, numbered from 1 (e.g. `(2, 1)` swaps the two axes of
            `(batch, a, b)`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        dims = tuple(dims)
        if sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"Permute: dims must be a permutation of 1..{len(dims)}, got "
                             f"{dims!r}")
        self.dims = dims

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, len(self.dims) + 1)
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def call(self, inputs):
        return array_ops.transpose(inputs, (0,) + self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}


class RepeatVector(_ShapeLayer):
    """Repeats its input `n` times: `(batch, features)` becomes `(batch, n, features)`.

    Args:
        n: Number of repetitions.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        if not _is_int(n) or n < 1:
            raise ValueError(f"RepeatVector: n must be a positive int, got {n!r}")
        self.n = int(n)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 2)
        return (input_shape[0], self.n, input_shape[1])

    def call(self, inputs):
        return array_ops.repeat(array_ops.expand_dims(inputs, 1), self.n, axis=1)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class ZeroPadding2D(_ShapeLayer):
    """Pads images with rows and columns of zeros on their sides.

    Args:
        padding: An int (the same on every side), a pair `(rows, cols)` (symmetric), or `((top,
            bottom), (left, right))`. Defaults to `(1, 1)`.
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")
        self.padding = _pairs(padding, "padding", self.name)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        (t, b), (le, r) = self.padding
        return (input_shape[0], _grown(input_shape[1], t + b), _grown(input_shape[2], le + r),
                input_shape[3])

    def call(self, inputs):
        return array_ops.pad(inputs, [(0, 0), self.padding[0], self.padding[1], (0, 0)])

    # A functional graph's schedule (fastnn.schedule) runs it without the tape, into a
    # buffer kept across batches: its border is zeroed once, only the inside is copied.
    def forward(self, x, training=False):
        (t, b), (le, r) = self.padding
        n, h, w, c = x.shape
        st = self._state()
        y = self._buffer("y", (n, h + t + b, w + le + r, c))
        if st.__dict__.get("_zeroed") is not y:
            y[...] = 0
            st._zeroed = y
        y[:, t:t + h, le:le + w] = x
        st._x_shape = x.shape
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        (t, _), (le, _) = self.padding
        _, h, w, _ = self._state()._x_shape
        dx = self._buffer("dx", self._state()._x_shape)
        dx[...] = dy[:, t:t + h, le:le + w]
        return dx

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding],
                "data_format": "channels_last"}


class Cropping2D(_ShapeLayer):
    """Crops rows and columns off the sides of images.

    Args:
        cropping: An int (the same on every side), a pair `(rows, cols)` (symmetric), or `((top,
            bottom), (left, right))`. Defaults to `((0, 0), (0, 0))`.
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")
        self.cropping = _pairs(cropping, "cropping", self.name)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        (t, b), (le, r) = self.cropping
        h, w = _grown(input_shape[1], -t - b), _grown(input_shape[2], -le - r)
        if (h is not None and h < 1) or (w is not None and w < 1):
            raise ValueError(f"Cropping2D layer {self.name!r}: cropping {self.cropping} "
                             f"leaves nothing of {tuple(input_shape)}")
        return (input_shape[0], h, w, input_shape[3])

    def call(self, inputs):
        (t, b), (le, r) = self.cropping
        h, w = inputs.shape[1], inputs.shape[2]
        return array_ops.get_item(inputs, (slice(None), slice(t, h - b), slice(le, w - r)))

    def get_config(self):
        return {**super().get_config(), "cropping": [list(c) for c in self.cropping],
                "data_format": "channels_last"}


class UpSampling2D(_ShapeLayer):
    """Repeats each row and column of images: `(batch, h, w, c)` becomes `(batch, h * size[0], w *
    size[1], c)`.

    Args:
        size: Repetitions of rows and columns: an int or a pair. Defaults to `(2, 2)`.
        data_format: Only `"channels_last"` (inputs `(batch, height, width, channels)`) or `None` is
            supported. Defaults to `None`.
        interpolation: Only `"nearest"` is supported. Defaults to `"nearest"`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported")
        if interpolation != "nearest":
            raise ValueError(f"{self.name}: interpolation={interpolation!r} is not supported "
                             "by fastnn yet (only 'nearest')")
        self.size = _pair(size, "size", self.name)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], input_shape[3])

    def call(self, inputs):
        rows = array_ops.repeat(inputs, self.size[0], axis=1)
        return array_ops.repeat(rows, self.size[1], axis=2)

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "data_format": "channels_last",
                "interpolation": "nearest"}


class Lambda(Layer):
    """Keras's Lambda: `function(inputs, **arguments)` as a layer. Write the function with
    fastnn.ops (or + - * / @ on tensors): it runs on the autodiff tape, so a model holding it
    trains. output_shape (without the batch axis, or a function of the input shape) is
    inferred by calling the function once when not given. mask: fastnn has no masking, so
    only None.

    Saved as Keras saves it: a lambda as its Python bytecode (Keras's "__lambda__" form: the
    code, defaults and closure, which must be JSON values), a named function by its registered
    name (@fastnn.saving.register_keras_serializable(), or custom_objects= when loading; the
    activations relu, sigmoid, tanh, softmax, ... by their names). Loading bytecode runs code
    from the file or config: it is refused, with Keras's error, unless safe_mode=False is
    passed to load_model / Model.from_config / model_from_json. A loaded lambda sees the
    globals fastnn, keras (fastnn too) and ops (fastnn.ops); Keras's own lambdas see none of
    Keras's names, so they use operators only.

    Args:
        function: The function, called as `function(inputs, **arguments)`.
        output_shape: Output shape without the batch axis, or a function of the input shape; `None`:
            inferred by calling `function`.
        mask: Only `None` is supported. Defaults to `None`.
        arguments: A dict of keyword arguments passed to `function`, or `None`. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda {self.name!r}: function must be callable, got "
                            f"{function!r}")
        if mask is not None:
            raise NotImplementedError(f"Lambda {self.name!r}: mask={mask!r} is not supported "
                                      "by fastnn (it has no masking); only mask=None")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"Lambda {self.name!r}: arguments must be a dict of keyword "
                            f"arguments, got {arguments!r}")
        if output_shape is not None and not callable(output_shape):
            output_shape = _shape_tuple(output_shape, f"Lambda {self.name!r}: output_shape")
        self.function, self.arguments = function, dict(arguments or {})
        self._lambda_output_shape = output_shape

    def call(self, inputs, training=None):
        kwargs = dict(self.arguments)
        params = _parameters(self.function)
        if "training" in params:
            kwargs["training"] = training
        if "mask" in params:
            kwargs["mask"] = None
        return self.function(inputs, **kwargs)

    def compute_output_shape(self, input_shape):
        shape = self._lambda_output_shape
        if shape is None:
            return super().compute_output_shape(input_shape)   # one call on zeros
        if callable(shape):
            return tuple(shape(input_shape))
        first = input_shape[0] if input_shape and isinstance(input_shape[0], (tuple, list)) \
            else input_shape
        return (first[0],) + shape

    def get_config(self):
        config = {**super().get_config(), "function": self._serialize(self.function)}
        shape = self._lambda_output_shape
        if shape is not None:
            config["output_shape"] = self._serialize(shape) if callable(shape) else list(shape)
        config["arguments"] = {key: self._json_value(value, f"arguments[{key!r}]")
                               for key, value in self.arguments.items()}
        return config

    def _json_value(self, value, what):
        """A value of the config as JSON: a NumPy array as Keras's "__numpy__" entry."""
        if isinstance(value, np.ndarray):
            return {"class_name": "__numpy__",
                    "config": {"value": value.tolist(), "dtype": value.dtype.name}}
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise ValueError(f"Lambda {self.name!r}: {what} = {value!r} cannot be saved in a "
                             "config (JSON values and NumPy arrays only)") from None

    def _serialize(self, fn):
        if isinstance(fn, types.FunctionType) and fn.__name__ == "<lambda>":
            closure = None if fn.__closure__ is None else \
                [self._json_value(c.cell_contents, "a value the lambda closes over")
                 for c in fn.__closure__]
            defaults = None if fn.__defaults__ is None else \
                [self._json_value(v, "a default of the lambda") for v in fn.__defaults__]
            return {"class_name": "__lambda__", "config": {
                "code": base64.encodebytes(marshal.dumps(fn.__code__)).decode("ascii"),
                "defaults": defaults, "closure": closure}}
        if not isinstance(fn, types.FunctionType):
            raise ValueError(f"Lambda {self.name!r}: {fn!r} cannot be saved: give a lambda or "
                             "a named (registered) function")
        return {"module": "builtins", "class_name": "function",
                "config": registry.get_registered_name(fn), "registered_name": "function"}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.get("name")
        if "function" not in config:
            raise ValueError(f"Lambda {name!r}: missing key 'function'")
        config["function"] = _load_function(config["function"], f"Lambda {name!r}: function")
        if config.get("output_shape") is not None:
            shape = config["output_shape"]
            config["output_shape"] = _load_function(shape, f"Lambda {name!r}: output_shape") \
                if isinstance(shape, dict) else shape
        arguments = config.get("arguments")
        if arguments is not None:
            if not isinstance(arguments, dict):
                raise TypeError(f"Lambda {name!r}: arguments must be a JSON object, got "
                                f"{arguments!r}")
            config["arguments"] = {k: _load_value(v, f"Lambda {name!r}: arguments[{k!r}]")
                                   for k, v in arguments.items()}
        return super().from_config(config)


def _parameters(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


# Functions Keras saves by name alone ("module": "builtins"), resolved as Keras resolves them
# (its activations), here to the fastnn.ops op of the same math, which autodiff differentiates.
_NAMED_FUNCTIONS = {name: getattr(array_ops, op) for name, op in (
    ("relu", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"), ("softmax", "softmax"),
    ("softplus", "softplus"), ("elu", "elu"), ("silu", "silu"), ("swish", "silu"),
    ("leaky_relu", "leaky_relu"), ("exponential", "exp"))}

_UNSAFE_LAMBDA = (
    "Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda. "
    "This carries a potential risk of arbitrary code execution and thus it is disallowed by "
    "default. If you trust the source of the artifact, you can override this error by passing "
    "`safe_mode=False` to the loading function (fastnn.models.load_model, Model.from_config, "
    "fastnn.models.model_from_json)")


def _load_value(value, where):
    """A config value; Keras's "__numpy__" entry as the NumPy array it holds."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__":
        inner = value.get("config")
        if not isinstance(inner, dict) or "value" not in inner:
            raise ValueError(f"{where}: a __numpy__ entry needs config.value")
        try:
            dtype = np.dtype(inner.get("dtype") or "float32")
            if dtype.kind not in "biuf":
                raise TypeError(f"dtype {dtype}")
            return np.asarray(inner["value"], dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a numeric array ({exc})") from None
    return value


def _load_function(spec, where):
    """A function from its saved form: a registered or built-in one by name; a lambda's
    bytecode only outside safe mode (registry.safe_mode_scope(False))."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_name"), str):
        raise TypeError(f"{where}: expected a serialized function (a JSON object with "
                        f"class_name), got {spec!r}")
    inner = spec.get("config")
    if spec["class_name"] == "function":
        if not isinstance(inner, str):
            raise TypeError(f"{where}: a function's config is its name, got {inner!r}")
        fn = registry.lookup(inner, inner) or _NAMED_FUNCTIONS.get(inner)
        if fn is None:
            raise ValueError(f"{where}: unknown function {inner!r}: not a registered custom "
                             "object. Register it with "
                             "@fastnn.saving.register_keras_serializable(), or pass "
                             f"custom_objects={{{inner!r}: {inner.split('>')[-1]}}}")
        return fn
    if spec["class_name"] != "__lambda__":
        raise ValueError(f"{where}: unknown function form {spec['class_name']!r} (fastnn "
                         "reads '__lambda__' and 'function')")
    if registry.in_safe_mode():
        raise ValueError(_UNSAFE_LAMBDA)
    if not isinstance(inner, dict):
        raise TypeError(f"{where}: a __lambda__'s config must be a JSON object, got {inner!r}")
    try:
        code, defaults, closure = inner["value"] if "value" in inner else \
            (inner.get("code"), inner.get("defaults"), inner.get("closure"))
        code = marshal.loads(base64.decodebytes(code.encode("ascii")))
    except (AttributeError, ValueError, EOFError, TypeError, UnicodeError) as exc:
        raise ValueError(f"{where}: the lambda's bytecode cannot be read ({exc}; it is "
                         "Python-version specific)") from None
    if not isinstance(code, types.CodeType):
        raise ValueError(f"{where}: the lambda's bytecode holds a {type(code).__name__}, not "
                         "code")
    cells = None if closure is None else tuple(types.CellType(v) for v in closure)
    try:
        return types.FunctionType(code, _lambda_globals(), code.co_name,
                                  None if defaults is None else tuple(defaults), cells)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _lambda_globals():
    return {"__builtins__": builtins, "fastnn": fastnn, "keras": fastnn, "ops": array_ops}


class _OpLayer(Layer):
    """A fastnn.ops op called on symbolic tensors while building a functional model: one
    node of the graph, running the op on the tensors its call receives."""

    def __init__(self, fn, args, kwargs):
        super().__init__(name=unique_name(fn.__name__))
        self._fn, self._args, self._kwargs = fn, args, kwargs

    def call(self, inputs):
        tensors = iter(inputs)

        def fill(value):
            if isinstance(value, KerasTensor):
                return next(tensors)
            if isinstance(value, (list, tuple)) and \
                    any(isinstance(v, KerasTensor) for v in value):
                return type(value)(next(tensors) if isinstance(v, KerasTensor) else v
                                   for v in value)
            return value
        args = [fill(a) for a in self._args]
        return self._fn(*args, **{k: fill(v) for k, v in self._kwargs.items()})


@functools.cache
def _op_layer_class(op_name):
    """The op layer class for one op, named as Keras names its Operation (add -> Add)."""
    camel = "".join(part.title() for part in op_name.split("_"))
    return type(camel, (_OpLayer,), {"__module__": __name__})


def _symbolic_op(fn, args, kwargs):
    tensors = flatten([a for a in list(args) + list(kwargs.values())
                       if isinstance(a, (KerasTensor, list, tuple))])
    layer = _op_layer_class(fn.__name__)(fn, args, kwargs)
    return layer([t for t in tensors if isinstance(t, KerasTensor)])


graph_module.symbolic_op = _symbolic_op


_CLASSES = {c.__name__: c for c in (
    InputLayer, Dense, Activation, ReLU, Softmax, LeakyReLU, Flatten, Dropout, Conv2D,
    DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, MaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D, GlobalMaxPooling2D,
    BatchNormalization, Add, Subtract, Multiply, Maximum, Minimum, Average, Concatenate, Dot,
    Identity, Reshape, Permute, RepeatVector, ZeroPadding2D, Cropping2D, UpSampling2D, Lambda)}


# The model classes a config may nest as a layer (Sequential, Functional, Model): fastnn.models
# registers them here, as sequence.py and recurrent.py register their layers in _CLASSES, so
# that layers never import models.
_MODEL_CLASSES = {}


def layer_from_entry(entry):
    """The layer an entry of a model's config describes (what Layer._config_entry writes); a
    model used as a layer (a Sequential or Functional entry) too, compiled when its entry says
    so, as in Keras.

    Args:
        entry: A dict `{"class_name": ..., "config": ..., ...}`.

    Returns:
        The layer.
    """
    name, registered = entry["class_name"], entry.get("registered_name")
    if registry.lookup(name, registered) is None and name in _MODEL_CLASSES:
        return _MODEL_CLASSES[name]._from_entry(entry)
    return get_class(name, registered).from_config(entry["config"])


def get_class(name, registered_name=None):
    """The layer class a config names: a custom class registered or passed as custom_objects
    (fastnn.registry), else one of fastnn's own. Nothing else is imported.

    Args:
        name: The class name in the config.
        registered_name: The registered name of a custom class (`package>Name`), or `None`. Defaults
            to `None`.

    Returns:
        The layer class.
    """
    custom = registry.lookup(name, registered_name)
    if custom is not None:
        return custom
    if name in _CLASSES:
        return _CLASSES[name]
    raise ValueError(f"Unknown layer class {name!r}: not one of fastnn's layers "
                     f"({', '.join(sorted(_CLASSES))}) nor a registered custom object. "
                     "Register your class with @fastnn.saving.register_keras_serializable(), "
                     f"or pass custom_objects={{{name!r}: {name}}}")


# =============================================================================================
# ---- preprocessing layers (Keras's keras.layers preprocessing; issue 18, item 6) ------------
# Written with fastnn.ops (differentiated by autodiff, run where the backend computes). The
# random image layers transform only when training (a model's fit, or a direct call, as in
# Keras); their random numbers come from `seed=` or fastnn.utils.set_random_seed's Generator.
# RandomRotation, RandomZoom and RandomTranslation share ops.image.affine_transform.
# =============================================================================================
_EPSILON = 1e-7         # keras.backend.epsilon()


def _float32(x):
    """An input as float32 (an integer image, say), on the tape when it is a tensor."""
    return x if getattr(x, "dtype", None) == np.float32 else array_ops.cast(x, "float32")


def _number_or_numbers(value, arg, layer):
    """A number, or a list/tuple of numbers (a per-channel value), as Keras takes them."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = tuple(value["config"]["value"])       # Keras's JSON form of a tuple
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()                        # (its config is JSON)
    try:
        array = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim > 1 or isinstance(value, (str, bool)) or \
            not np.all(np.isfinite(array)):
        raise ValueError(f"{layer}: {arg} must be a finite number or a list of numbers, got "
                         f"{value!r}")
    return value


class Rescaling(Layer):
    """y = x * scale + offset, in float32 (scale and offset may be per-channel lists).

    Args:
        scale: The factor (a number, or a list with one per channel).
        offset: The value added after scaling (a number or a per-channel list). Defaults to `0.0`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _number_or_numbers(scale, "scale", self.name)
        self.offset = _number_or_numbers(offset, "offset", self.name)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return array_ops.add(array_ops.multiply(_float32(inputs),
                                                np.asarray(self.scale, np.float32)),
                             np.asarray(self.offset, np.float32))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _batches(data):
    """adapt()'s data, as Keras's Normalization.adapt takes it: (shape, None, the array) for
    an array; (the first batch's shape, the other batches, the first) as float32 host arrays
    for an iterable of batches ((x, y) batches give x)."""
    to_numpy = get_ops().to_numpy
    if isinstance(data, (np.ndarray, get_ops().xp.ndarray, Tensor)):
        array = np.asarray(to_numpy(value_of(data)))
        return array.shape, None, array
    if not hasattr(data, "__iter__"):
        raise TypeError(f"Unsupported data type: {type(data)}. `adapt` supports `np.ndarray`, "
                        "backend tensors, and iterables of batches (e.g. list, generator).")
    batches = iter(data)
    first = next(batches, None)
    if first is None:
        raise ValueError("adapt() received an empty iterable (no batches). Expected at least "
                         "one batch. Pass a non-empty iterable of arrays or tensors, e.g. "
                         "layer.adapt([x]) or layer.adapt(list_of_batches).")

    def host(batch):
        batch = batch[0] if isinstance(batch, tuple) else batch
        if getattr(batch, "shape", None) is None:
            raise TypeError("adapt() expects an iterable that yields arrays or tensors with a "
                            f"`.shape` attribute (e.g. numpy arrays or backend tensors). Got an "
                            f"element of type {type(batch).__name__}. Ensure each yielded "
                            "element is array-like with a `.shape` attribute.")
        return np.asarray(to_numpy(value_of(batch)), np.float32)
    first = host(first)
    return first.shape, (host(b) for b in batches), first


class Normalization(Layer):
    """(x - mean) / max(sqrt(variance), 1e-7) per index of the kept `axis` (invert=True: the
    inverse), with mean and variance given or learned by adapt(). Weights (adapted layers
    only, as Keras): mean, variance and count (int32; Keras's adapt leaves it 0).

    Args:
        axis: The axis (or tuple of axes) with a mean and variance of their own; `None`: one over
            everything. Defaults to `-1`.
        mean: The mean to use, or `None` to learn it with `adapt()`. Defaults to `None`.
        variance: The variance to use, or `None` to learn it with `adapt()`. Defaults to `None`.
        invert: Whether to apply the inverse, `x * sqrt(variance) + mean`. Defaults to `False`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        if axis is None:
            axis = ()
        elif _is_int(axis):
            axis = (axis,)
        else:
            try:
                axis = tuple(axis)
            except TypeError:
                axis = None
            if axis is None or not all(_is_int(a) for a in axis):
                raise ValueError(f"{self.name}: axis must be an int, a tuple of ints or None, "
                                 f"got {axis!r}")
        self.axis = tuple(int(a) for a in axis)
        self.input_mean, self.input_variance, self.invert = mean, variance, bool(invert)
        if (mean is not None) != (variance is not None):
            raise ValueError("When setting values directly, both `mean` and `variance` must be "
                             f"set. Received: mean={mean} and variance={variance}")
        if mean is not None:
            if np.shape(mean) != np.shape(variance):
                raise ValueError("When setting values directly, `mean` and `variance` must "
                                 f"have the same shape. Received: mean shape {np.shape(mean)} "
                                 f"and variance shape {np.shape(variance)}")
            if len(np.shape(mean)) > len(self.axis):
                raise ValueError("The rank of `mean` must be less than or equal to the number "
                                 f"of axes ({len(self.axis)}). Received: mean shape "
                                 f"{np.shape(mean)} for axis {self.axis}")
        self._constants = None      # (mean, variance) in the broadcast shape, on the backend

    def build(self, input_shape):
        ndim = len(input_shape)
        if any(a < -ndim or a >= ndim for a in self.axis):
            raise ValueError("All `axis` values must be in the range [-ndim, ndim). Received "
                             f"inputs with ndim={ndim}, while axis={self.axis}")
        keep = tuple(sorted(a % ndim for a in self.axis))
        for d in keep:
            if input_shape[d] is None:
                raise ValueError("All `axis` values to be kept must have a known shape. "
                                 f"Received axis={self.axis}, inputs.shape={tuple(input_shape)}, "
                                 f"with unknown axis at index {d}")
        self._keep, self._reduce = keep, tuple(d for d in range(ndim) if d not in keep)
        self._broadcast = tuple(input_shape[d] if d in keep else 1 for d in range(ndim))
        shape = tuple(input_shape[d] for d in keep)
        super().build(input_shape)
        if self.input_mean is None:
            self.add_weight(name="mean", shape=shape, initializer="zeros", trainable=False)
            self.add_weight(name="variance", shape=shape, initializer="ones", trainable=False)
            # Keras keeps the count as an int32 variable: so does fastnn (and its files)
            self._vars["count"] = get_ops().xp.zeros((), np.int32)
            self._non_trainable_names.append("count")
            self._variables["count"] = Variable(self, "count", False)
            return
        mean = np.asarray(self.input_mean, np.float32)
        variance = np.asarray(self.input_variance, np.float32)
        if mean.ndim:       # the given values fill the last kept axes
            expanded = [1] * ndim
            for i in range(1, mean.ndim + 1):
                expanded[keep[-i]] = mean.shape[-i]
            mean, variance = mean.reshape(expanded), variance.reshape(expanded)
        try:
            mean, variance = (np.broadcast_to(v, self._broadcast) for v in (mean, variance))
        except ValueError:
            raise ValueError(f"{self.name}: mean and variance of shape {np.shape(self.input_mean)}"
                             f" do not broadcast to the kept axes {keep} of inputs of shape "
                             f"{tuple(input_shape)} (shape {shape})") from None
        ops = get_ops()
        self._constants = tuple(ops.asarray(np.ascontiguousarray(v)) for v in (mean, variance))

    def adapt(self, data):
        """Learn the mean and variance of `data`: an array, or an iterable of batches (Keras's
        streaming combination of each batch's mean and variance)."""
        shape, rest, first = _batches(data)
        shape = tuple(shape)
        if not self.built:
            self._maybe_build(shape)
        else:
            for d in self._keep:
                if shape[d] != self._build_shape[d]:
                    raise ValueError(f"The layer was built with input_shape={self._build_shape}"
                                     ", but adapt() is being called with data with an "
                                     f"incompatible shape, data.shape={shape}")
        if self.input_mean is not None:
            raise ValueError(f"{self.name}: adapt() learns the mean and variance of a layer "
                             "created without them; this one was given mean= and variance=")
        if rest is None:
            mean = np.mean(first, axis=self._reduce)
            var = np.var(first, axis=self._reduce)
        else:
            mean = var = np.zeros(tuple(self._broadcast[d] for d in self._keep), np.float32)
            count = 0
            for batch in itertools.chain([first], rest):
                for d in self._keep:
                    if batch.shape[d] != self._build_shape[d]:
                        raise ValueError("adapt() yielded a batch with incompatible shape. "
                                         f"Expected {self._build_shape}, got {batch.shape}.")
                batch_mean = np.mean(batch, axis=self._reduce)
                batch_var = np.var(batch, axis=self._reduce)
                batch_count = int(np.prod([batch.shape[d] for d in self._reduce]))
                count += batch_count
                new_weight = batch_count / count
                old_weight = 1.0 - new_weight
                new_mean = mean * old_weight + batch_mean * new_weight
                var = (var + (mean - new_mean) ** 2) * old_weight + \
                    (batch_var + (batch_mean - new_mean) ** 2) * new_weight
                mean = new_mean
        ops = get_ops()
        self._vars["mean"][...] = ops.asarray(np.asarray(mean, np.float32))
        self._vars["variance"][...] = ops.asarray(np.asarray(var, np.float32))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        if self._constants is not None:
            mean, variance = self._constants
        else:
            mean = self._vars["mean"].reshape(self._broadcast)
            variance = self._vars["variance"].reshape(self._broadcast)
        std = get_ops().xp.maximum(get_ops().xp.sqrt(variance), np.float32(_EPSILON))
        x = _float32(inputs)
        if self.invert:
            return array_ops.add(mean, array_ops.multiply(x, std))
        return array_ops.divide(array_ops.subtract(x, mean), std)

    def get_config(self):
        return {**super().get_config(), "axis": list(self.axis), "invert": self.invert,
                "mean": np.array(self.input_mean).tolist(),
                "variance": np.array(self.input_variance).tolist()}



class _ImageLayer(Layer):
    """A preprocessing layer on batches of images (rank 4), channels_last or channels_first."""
    keras_training_default = True

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format)

    def __call__(self, x, training=None):
        if isinstance(x, (np.ndarray, get_ops().xp.ndarray)) and x.ndim == 3 and \
                getattr(_PASS, "counts", None) is None:
            # one image called on directly: a batch of one, as Keras takes it
            return self(x[None], training)[0]
        return super().__call__(x, training)

    @property
    def _hw(self):
        """The height and width axes."""
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _check_images(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} expects a batch of "
                             "images, a rank-4 input (batch, height, width, channels) "
                             f"({self.data_format}), or one image (rank 3) called on directly; "
                             f"received input_shape={tuple(input_shape)}")

    def build(self, input_shape):
        self._check_images(input_shape)
        super().build(input_shape)

    def _with_size(self, input_shape, height, width):
        self._check_images(input_shape)
        shape = list(input_shape)
        shape[self._hw[0]], shape[self._hw[1]] = height, width
        return tuple(shape)

    def compute_output_shape(self, input_shape):
        self._check_images(input_shape)
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


def _positive_int(value, arg, layer):
    if not _is_int(value) or value < 1:
        raise ValueError(f"{layer}: {arg} must be a positive int, got {value!r}")
    return int(value)


class Resizing(_ImageLayer):
    """ops.image.resize to (height, width), as keras.layers.Resizing.

    Args:
        height: Height of the output images.
        width: Width of the output images.
        interpolation: `"bilinear"`, `"nearest"` or another of fastnn's resize methods (not
            `"bicubic"` or `"lanczos*"`). Defaults to `"bilinear"`.
        crop_to_aspect_ratio: Whether to crop the largest centred window of the target aspect ratio
            first. Defaults to `False`.
        pad_to_aspect_ratio: Whether to pad to the target aspect ratio first (with `fill_value`).
            Defaults to `False`.
        fill_mode: Only `"constant"` is supported. Defaults to `"constant"`.
        fill_value: Value of the padding with `pad_to_aspect_ratio`. Defaults to `0.0`.
        antialias: Whether to filter when downsampling, to avoid aliasing. Defaults to `False`.
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0,
                 antialias=False, data_format=None, **kwargs):
        super().__init__(data_format=data_format, **kwargs)
        self.height = _positive_int(height, "height", self.name)
        self.width = _positive_int(width, "width", self.name)
        _check_resize((self.height, self.width), interpolation, crop_to_aspect_ratio,
                      pad_to_aspect_ratio, fill_mode)
        self.interpolation, self.fill_mode = interpolation, fill_mode
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.pad_to_aspect_ratio = bool(pad_to_aspect_ratio)
        self.fill_value = _finite(fill_value, "fill_value", self.name)
        self.antialias = bool(antialias)

    def __call__(self, x, training=None):
        if isinstance(x, (np.ndarray, get_ops().xp.ndarray)) and x.dtype.kind in "iu" and \
                x.ndim == 4 and getattr(_PASS, "counts", None) is None:
            # integer images called on directly: resized, rounded and returned in their dtype
            # (as Keras); Layer.__call__ would read them as float32
            ops = get_ops()
            self._maybe_build((None,) + x.shape[1:])
            with no_grad():
                return np.array(ops.to_numpy(self.call(ops.asarray(x, x.dtype))))
        return super().__call__(x, training)

    def compute_output_shape(self, input_shape):
        return self._with_size(input_shape, self.height, self.width)

    def call(self, inputs):
        return array_ops.image.resize(
            inputs, (self.height, self.width), interpolation=self.interpolation,
            antialias=self.antialias, crop_to_aspect_ratio=self.crop_to_aspect_ratio,
            pad_to_aspect_ratio=self.pad_to_aspect_ratio, fill_mode=self.fill_mode,
            fill_value=self.fill_value, data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "pad_to_aspect_ratio": self.pad_to_aspect_ratio, "fill_mode": self.fill_mode,
                "fill_value": self.fill_value, "antialias": self.antialias}


class CenterCrop(_ImageLayer):
    """The central (height, width) window; an image smaller than that on a side is cropped to
    the target's aspect ratio and resized (bilinear) instead, as Keras does.

    Args:
        height: Height of the output.
        width: Width of the output.
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, height, width, data_format=None, **kwargs):
        super().__init__(data_format=data_format, **kwargs)
        self.height = _positive_int(height, "height", self.name)
        self.width = _positive_int(width, "width", self.name)

    def compute_output_shape(self, input_shape):
        return self._with_size(input_shape, self.height, self.width)

    def call(self, inputs):
        x = _float32(inputs)
        ha, wa = self._hw
        h, w = x.shape[ha], x.shape[wa]
        if h < self.height or w < self.width:
            return array_ops.image.resize(x, (self.height, self.width), crop_to_aspect_ratio=True,
                                          data_format=self.data_format)
        index = [slice(None)] * 4
        top, left = (h - self.height) // 2, (w - self.width) // 2
        index[ha], index[wa] = slice(top, top + self.height), slice(left, left + self.width)
        return array_ops.get_item(x, tuple(index))

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def _factor(factor, bounds):
    """keras's BaseImagePreprocessingLayer factor: a number f (-> (max(-|f|, low), |f|)) or
    two numbers (sorted), inside bounds."""
    message = ("The `factor` argument should be a number (or a list of two numbers) in the "
               f"range [{bounds[0]}, {bounds[1]}]. Received: factor={factor}")
    factor = factor or 0.0
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or not all(isinstance(f, (int, float)) for f in factor) or \
                factor[0] > bounds[1] or factor[1] < bounds[0]:
            raise ValueError(message)
        return tuple(sorted(factor))
    if not isinstance(factor, (int, float)) or not bounds[0] <= factor <= bounds[1]:
        raise ValueError(message)
    return (max(-abs(factor), bounds[0]), abs(factor))


def _axis_factor(factor, name, message, low_open):
    """RandomZoom's and RandomTranslation's height/width factor: a number f (-> (-|f|, |f|))
    or two numbers, each in [-1, 1] ((-1, 1] when low_open)."""
    def check(number):
        if not isinstance(number, (int, float)) or number > 1.0 or \
                (number <= -1.0 if low_open else number < -1.0):
            raise ValueError(message + f"Received: input_number={number}")
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(message + f"Received: {name}={factor}")
        check(factor[0])
        check(factor[1])
        return tuple(sorted(factor))
    if not isinstance(factor, (int, float)):
        raise ValueError(message + f"Received: {name}={factor}")
    check(factor)
    return (-abs(factor), abs(factor))


class _RandomImageLayer(_ImageLayer):
    """A random augmentation: transforms only when training. As in Keras, a direct call
    (outside a model, no training=) trains; a model's predict/evaluate do not."""

    def __init__(self, seed=None, data_format=None, **kwargs):
        super().__init__(data_format=data_format, **kwargs)
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"{self.name}: seed must be a non-negative int or None, got "
                             f"{seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __call__(self, x, training=None):
        if training is None and getattr(_PASS, "counts", None) is None and \
                not is_symbolic(x):
            training = True
        return super().__call__(x, training)

    def _uniform(self, low, high, n):
        """n float32 draws in [low, high) (exactly low when high == low), as Keras draws."""
        u = (self._rng or get_rng()).random(n, dtype=np.float32)
        return u * np.float32(high - low) + np.float32(low)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        return self._transform(_float32(inputs))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class RandomFlip(_RandomImageLayer):
    """Flips each image (probability 1/2) left-right ("horizontal"), top-bottom ("vertical"),
    or both at once ("horizontal_and_vertical": one draw, as Keras).

    Args:
        mode: `"horizontal"`, `"vertical"` or `"horizontal_and_vertical"`. Defaults to
            `"horizontal_and_vertical"`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def _transform(self, x):
        flips = self._uniform(0.0, 1.0, x.shape[0]) <= 0.5
        mask = get_ops().asarray(flips.reshape(-1, 1, 1, 1), np.bool_)
        ha, wa = self._hw
        for axis, wanted in ((wa, "horizontal"), (ha, "vertical")):
            if wanted in self.mode:
                index = [slice(None)] * 4
                index[axis] = slice(None, None, -1)
                x = array_ops.where(mask, array_ops.get_item(x, tuple(index)), x)
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class _AffineLayer(_RandomImageLayer):
    """A random affine map of each image (one ops.image.affine_transform): the matrices come
    from _matrices(n, height, width), float32 (n, 8) as Keras computes them."""

    FILL_MODES = ("reflect", "wrap", "constant", "nearest")
    INTERPOLATIONS = ("nearest", "bilinear")

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        if fill_mode not in self.FILL_MODES:
            raise NotImplementedError(f"Unknown `fill_mode` {fill_mode}. Expected of one "
                                      f"{self.FILL_MODES}.")
        if interpolation not in self.INTERPOLATIONS:
            raise NotImplementedError(f"Unknown `interpolation` {interpolation}. Expected of "
                                      f"one {self.INTERPOLATIONS}.")
        self.fill_mode, self.interpolation = fill_mode, interpolation
        self.fill_value = _finite(fill_value, "fill_value", self.name)

    def _transform(self, x):
        ha, wa = self._hw
        matrices = self._matrices(x.shape[0], x.shape[ha], x.shape[wa])
        return array_ops.image.affine_transform(
            x, matrices, interpolation=self.interpolation, fill_mode=self.fill_mode,
            fill_value=self.fill_value, data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode,
                "interpolation": self.interpolation, "fill_value": self.fill_value}


def _matrices(columns):
    """(n, 8) float32 transforms from their columns (arrays of n, or numbers)."""
    n = max(np.size(c) for c in columns)
    return np.stack([np.broadcast_to(np.asarray(c, np.float32).reshape(-1), (n,))
                     for c in columns] + [np.zeros(n, np.float32)] * 2, axis=1)


class RandomRotation(_AffineLayer):
    """Rotates each image about its centre by an angle drawn from factor * 360 degrees.

    Args:
        factor: A float or a pair `(lower, upper)`, as fractions of a full turn: the angle is drawn
            from `[lower, upper] * 360` degrees (a float f means `(-f, f)`).
        fill_mode: How points outside the image are filled: `"reflect"`, `"wrap"`, `"constant"`
            (with `fill_value`) or `"nearest"`. Defaults to `"reflect"`.
        interpolation: Interpolation used to sample the image: `"bilinear"` or `"nearest"`. Defaults
            to `"bilinear"`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        fill_value: The value of points outside the image with `fill_mode="constant"`. Defaults to
            `0.0`.
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed,
                         fill_value=fill_value, data_format=data_format, **kwargs)
        self.factor = _factor(factor, (-1, 1))

    def _matrices(self, n, height, width):
        angle = self._uniform(self.factor[0] * 360.0, self.factor[1] * 360.0, n)
        angle = angle * np.float32(np.pi / 180.0)
        cos, sin = np.cos(angle), np.sin(angle)
        cx = np.float32(0.5) * (np.float32(width) - np.float32(1))
        cy = np.float32(0.5) * (np.float32(height) - np.float32(1))
        return _matrices([cos, -sin, cx - cx * cos - cy * -sin,
                          sin, cos, cy - cx * sin - cy * cos])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class RandomZoom(_AffineLayer):
    """Zooms each image about its centre by 1 + a draw from height_factor (and width_factor,
    else the same draw): a positive factor zooms out.

    Args:
        height_factor: A float or a pair `(lower, upper)`: the vertical zoom is `1 +` a draw from it
            (negative values zoom in).
        width_factor: The same for the horizontal zoom; `None`: the vertical zoom is used for both
            (the aspect ratio is kept).
        fill_mode: How points outside the image are filled: `"reflect"`, `"wrap"`, `"constant"`
            (with `fill_value`) or `"nearest"`. Defaults to `"reflect"`.
        interpolation: Interpolation used to sample the image: `"bilinear"` or `"nearest"`. Defaults
            to `"bilinear"`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        fill_value: The value of points outside the image with `fill_mode="constant"`. Defaults to
            `0.0`.
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    _MESSAGE = ("The `height_factor` and `width_factor` arguments should be a number (or a "
                "list of two numbers) in the range (-1.0, 1.0]. ")

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None,
                 **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed,
                         fill_value=fill_value, data_format=data_format, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._height = _axis_factor(height_factor, "height_factor", self._MESSAGE, True)
        self._width = None if width_factor is None else \
            _axis_factor(width_factor, "width_factor", self._MESSAGE, True)

    def _matrices(self, n, height, width):
        zoom_h = self._uniform(1.0 + self._height[0], 1.0 + self._height[1], n)
        zoom_w = zoom_h if self._width is None else \
            self._uniform(1.0 + self._width[0], 1.0 + self._width[1], n)
        half_w = (np.float32(width) - np.float32(1)) / np.float32(2)
        half_h = (np.float32(height) - np.float32(1)) / np.float32(2)
        return _matrices([zoom_w, 0, half_w * (np.float32(1) - zoom_w),
                          0, zoom_h, half_h * (np.float32(1) - zoom_h)])

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor,
                "width_factor": self.width_factor}


class RandomTranslation(_AffineLayer):
    """Shifts each image by a draw from height_factor * height rows and width_factor * width
    columns.

    Args:
        height_factor: A float or a pair `(lower, upper)`: the vertical shift is drawn from that
            fraction of the height (a float f means `(-f, f)`).
        width_factor: The same for the horizontal shift, as a fraction of the width.
        fill_mode: How points outside the image are filled: `"reflect"`, `"wrap"`, `"constant"`
            (with `fill_value`) or `"nearest"`. Defaults to `"reflect"`.
        interpolation: Interpolation used to sample the image: `"bilinear"` or `"nearest"`. Defaults
            to `"bilinear"`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        fill_value: The value of points outside the image with `fill_mode="constant"`. Defaults to
            `0.0`.
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    _MESSAGE = ("The `factor` argument should be a number (or a list of two numbers) in the "
                "range [-1.0, 1.0]. ")

    def __init__(self, height_factor, width_factor, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None,
                 **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed,
                         fill_value=fill_value, data_format=data_format, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self._height = _axis_factor(height_factor, "height_factor", self._MESSAGE, False)
        self._width = _axis_factor(width_factor, "width_factor", self._MESSAGE, False)

    def _matrices(self, n, height, width):
        shift_h = self._uniform(*self._height, n) * np.float32(height)
        shift_w = self._uniform(*self._width, n) * np.float32(width)
        return _matrices([1, 0, -shift_w, 0, 1, -shift_h])

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor,
                "width_factor": self.width_factor}


class RandomContrast(_RandomImageLayer):
    """(x - mean) * c + mean per image and channel (mean over height and width), c drawn from
    [1 - factor[0], 1 + factor[1]], clipped to value_range.

    Args:
        factor: A float or a pair `(lower, upper)`: the contrast factor is drawn from `[1 - lower, 1
            + upper]`.
        value_range: The range of the pixel values, `(low, high)`; outputs are clipped to it.
            Defaults to `(0, 255)`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = _factor(factor, (0, 1))
        try:
            low, high = (float(v) for v in value_range)
        except (TypeError, ValueError):
            low = high = None
        if low is None or not low < high:
            raise ValueError(f"{self.name}: value_range must be two numbers (low, high) with "
                             f"low < high, got {value_range!r}")
        self.value_range = tuple(value_range)

    def _transform(self, x):
        ha, wa = self._hw
        c = self._uniform(1.0 - self.factor[0], 1.0 + self.factor[1], x.shape[0])
        c = get_ops().asarray(c.reshape(-1, 1, 1, 1))
        mean = array_ops.mean(array_ops.mean(x, axis=ha, keepdims=True), axis=wa,
                              keepdims=True)
        out = array_ops.add(array_ops.multiply(array_ops.subtract(x, mean), c), mean)
        return array_ops.clip(out, self.value_range[0], self.value_range[1])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor,
                "value_range": self.value_range}


_CLASSES.update({c.__name__: c for c in (
    Rescaling, Normalization, Resizing, CenterCrop, RandomFlip, RandomRotation, RandomZoom,
    RandomTranslation, RandomContrast)})


# =============================================================================================
# ---- normalization, noise and activation layers (Keras's; issue 18, item 5) ----------------
# Written with fastnn.ops (differentiated by autodiff, run where the backend computes); ELU is
# an activation layer like ReLU (its kernel where exact). Layer and group normalization share
# one op, _normalized (gamma and beta folded in), whose backward is written out: a few
# vectorized passes each way, one node on the tape. The noise layers act only when training
# (fit, or training=True); their random numbers come from `seed=` or
# fastnn.utils.set_random_seed's Generator, through the backend's random_uniform.
# =============================================================================================
def _normalized(x, axes, epsilon, center=True, gamma=None, beta=None, shape=None):
    """(x - mean) / sqrt(var + epsilon) over `axes` (center=False: x / sqrt(var + epsilon),
    Keras's rms_scaling), times gamma plus beta (each reshaped to `shape` to broadcast, where
    given): one op on the tape, its backward written out, a few passes over x each way."""
    xp = get_ops().xp
    a = value_of(_float32(x))
    xc = a - a.mean(axis=axes, keepdims=True)
    scratch = xc * xc
    inv = 1.0 / xp.sqrt(scratch.mean(axis=axes, keepdims=True) + np.float32(epsilon))
    xc *= inv                                   # (x - mean) / sd
    xhat = xc if center else xp.multiply(a, inv, out=scratch)
    g_ = None if gamma is None else value_of(gamma).reshape(shape)
    b_ = None if beta is None else value_of(beta).reshape(shape)
    out = xhat
    if g_ is not None:
        out = xp.multiply(xhat, g_, out=scratch if center else None)
    if b_ is not None:
        out = out + b_ if out is xhat else xp.add(out, b_, out=out)
    spread = tuple(i for i, d in enumerate(shape or ()) if d == 1)  # gamma's, beta's sums

    def backward(g):                # (g may be another op's too: it stays as it is)
        d = g * g_ if g_ is not None else g.copy()      # the gradient of xhat
        tmp = d * xhat
        project = tmp.mean(axis=axes, keepdims=True)
        if center:
            d -= d.mean(axis=axes, keepdims=True)
        d -= xp.multiply(xc, project, out=tmp)
        d *= inv
        d_gamma = None if g_ is None else xp.multiply(g, xhat, out=tmp).sum(
            axis=spread, keepdims=True).reshape(value_of(gamma).shape)
        d_beta = None if b_ is None else \
            g.sum(axis=spread, keepdims=True).reshape(value_of(beta).shape)
        return d, d_gamma, d_beta
    return record(out, (x, gamma, beta), backward)


class _AffineNorm(Layer):
    """The arguments, weights (gamma, then beta) and config Layer- and GroupNormalization
    share."""

    def __init__(self, axis, epsilon, center, scale, beta_initializer, gamma_initializer,
                 beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
                 **kwargs):
        super().__init__(**kwargs)
        _weight_options(self, beta_regularizer=beta_regularizer,
                        gamma_regularizer=gamma_regularizer, beta_constraint=beta_constraint,
                        gamma_constraint=gamma_constraint)
        self.epsilon = _finite(epsilon, "epsilon", self.name, low=0)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.axis = axis

    def _add_affine(self, shape, gamma, beta):
        if gamma:
            self.add_weight(name="gamma", shape=shape, initializer=self.gamma_initializer)
        if beta:
            self.add_weight(name="beta", shape=shape, initializer=self.beta_initializer)

    def _normalized(self, x, axes, shape, center=True):
        """x normalized over `axes`, times gamma plus beta (reshaped to `shape`)."""
        return _normalized(x, axes, self.epsilon, center, self._variables.get("gamma"),
                           self._variables.get("beta"), shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                **_weight_options_config(self)}


class LayerNormalization(_AffineNorm):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta, mean and variance over `axis` (an int
    or a list of ints) per sample; gamma and beta have the shape of those axes (in sorted
    order, reshaped to broadcast, as Keras does). rms_scaling=True (deprecated in Keras):
    x / sqrt(var + epsilon) * gamma, no beta, as Keras computes it.

    Args:
        axis: The axis (or axes) to act on; negative values count from the end. Defaults to `-1`.
        epsilon: Small float added to the variance to avoid dividing by zero. Defaults to `0.001`.
        center: Whether to add the learned offset `beta`. Defaults to `True`.
        scale: Whether to multiply by the learned scale `gamma`. Defaults to `True`.
        rms_scaling: Deprecated in Keras: divide by `sqrt(var + epsilon)` without centring and
            without `beta`, as Keras 3 computes it. Defaults to `False`.
        beta_initializer: Initializer for the offset `beta` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"zeros"`.
        gamma_initializer: Initializer for the scale `gamma` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"ones"`.
        beta_regularizer: Regularizer for the offset `beta`: its penalty is added to the model's
            loss. `None`: none.
        gamma_regularizer: Regularizer for the scale `gamma`: its penalty is added to the model's
            loss. `None`: none.
        beta_constraint: Constraint applied to the offset `beta` after each optimizer step. `None`:
            none.
        gamma_constraint: Constraint applied to the scale `gamma` after each optimizer step. `None`:
            none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 **kwargs):
        if isinstance(axis, (list, tuple)) and all(_is_int(a) for a in axis):
            axis = [int(a) for a in axis]
        elif _is_int(axis):
            axis = int(axis)
        else:
            raise TypeError("Expected an int or a list/tuple of ints for the argument 'axis', "
                            f"but received: {axis!r}")
        if rms_scaling:
            warnings.warn("You passed `rms_scaling=True`, which is deprecated. This argument "
                          "incorrectly scales the input by the variance, not the root mean "
                          "square (as Keras 3 does; fastnn computes the same).", stacklevel=2)
        super().__init__(axis, epsilon, center, scale, beta_initializer, gamma_initializer,
                         beta_regularizer, gamma_regularizer, beta_constraint,
                         gamma_constraint, **kwargs)
        self.rms_scaling = bool(rms_scaling)

    def build(self, input_shape):
        rank = len(input_shape)
        axes = sorted([self.axis] if _is_int(self.axis) else self.axis)
        self._axes = _axes_of(self.axis, rank, self.name, input_shape)
        if len(self._axes) != len(axes):
            raise ValueError(f"{self.name}: axis={self.axis!r} names an axis twice (for "
                             f"input shape {tuple(input_shape)})")
        shape = tuple(input_shape[a] for a in axes)
        if None in shape:
            raise ValueError(f"{self.name}: the normalized axes {axes} of input shape "
                             f"{tuple(input_shape)} must be known")
        self._broadcast = [1] * rank
        for a in axes:
            self._broadcast[a] = input_shape[a]
        self._add_affine(shape, self.scale or self.rms_scaling,
                         self.center and not self.rms_scaling)
        self.axis = axes                # as Keras: the sorted list once built
        super().build(input_shape)

    def call(self, inputs):
        return self._normalized(inputs, self._axes, self._broadcast,
                                center=not self.rms_scaling)

    def get_config(self):
        return {**super().get_config(), "rms_scaling": self.rms_scaling}


class GroupNormalization(_AffineNorm):
    """The channels of `axis` split into `groups` groups (-1: one per channel); each sample's
    group normalized over its channels and every other axis; then gamma and beta per
    channel.

    Args:
        groups: Number of groups the channels are split into (-1: one per channel); must divide the
            channels. Defaults to `32`.
        axis: The channel axis. Defaults to `-1`.
        epsilon: Small float added to the variance to avoid dividing by zero. Defaults to `0.001`.
        center: Whether to add the learned offset `beta`. Defaults to `True`.
        scale: Whether to multiply by the learned scale `gamma`. Defaults to `True`.
        beta_initializer: Initializer for the offset `beta` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"zeros"`.
        gamma_initializer: Initializer for the scale `gamma` (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"ones"`.
        beta_regularizer: Regularizer for the offset `beta`: its penalty is added to the model's
            loss. `None`: none.
        gamma_regularizer: Regularizer for the scale `gamma`: its penalty is added to the model's
            loss. `None`: none.
        beta_constraint: Constraint applied to the offset `beta` after each optimizer step. `None`:
            none.
        gamma_constraint: Constraint applied to the scale `gamma` after each optimizer step. `None`:
            none.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 **kwargs):
        if not _is_int(groups) or (groups <= 0 and groups != -1):
            raise ValueError("Received an invalid value for argument `groups`, expected a "
                             "positive integer (or `-1` for instance normalization). "
                             f"Received: groups={groups}")
        if not _is_int(axis):
            raise ValueError(f"GroupNormalization: axis must be an int, got {axis!r}")
        super().__init__(int(axis), epsilon, center, scale, beta_initializer,
                         gamma_initializer, beta_regularizer, gamma_regularizer,
                         beta_constraint, gamma_constraint, **kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        rank = len(input_shape)
        (self._at,) = _axes_of(self.axis, rank, self.name, input_shape)
        dim = input_shape[self._at]
        if dim is None:
            raise ValueError(f"Axis {self.axis} of input tensor should have a defined "
                             f"dimension but the layer received an input with shape "
                             f"{tuple(input_shape)}.")
        if self.groups == -1:
            self.groups = dim
        if dim < self.groups:
            raise ValueError(f"Number of groups ({self.groups}) cannot be more than the "
                             f"number of channels ({dim}).")
        if dim % self.groups != 0:
            raise ValueError(f"Number of groups ({self.groups}) must be a multiple of the "
                             f"number of channels ({dim}).")
        self._add_affine((dim,), self.scale, self.center)
        super().build(input_shape)

    def call(self, inputs):
        shape, at, g = tuple(inputs.shape), self._at, self.groups
        grouped = array_ops.reshape(inputs, shape[:at] + (g, shape[at] // g) + shape[at + 1:])
        axes = tuple(i for i in range(1, len(shape) + 1) if i != at)
        per_channel = tuple(grouped.shape[i] if i in (at, at + 1) else 1
                            for i in range(len(shape) + 1))
        return array_ops.reshape(self._normalized(grouped, axes, per_channel), shape)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def _rate(value, arg="rate"):
    """Keras's check of a dropout rate or noise stddev: a number in [0, 1]."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, bool) and 0 <= value <= 1
    if not ok:
        raise ValueError(f"Invalid value received for argument `{arg}`. Expected a float "
                         f"value between 0 and 1. Received: {arg}={value}")
    return float(value)


class _Noise(Layer):
    """A layer that acts only when training, with its own Generator when given a seed."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"{self.name}: seed must be a non-negative int or None, got "
                             f"{seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    def _uniform(self, shape):
        """Uniform [0, 1) float32 draws where the backend computes."""
        ops = get_ops()
        return ops.random_uniform(self._rng or get_rng(), ops.empty(tuple(shape)))

    def _normal(self, shape, mean, stddev):
        """Normal float32 draws (Box-Muller on two uniform draws)."""
        xp = get_ops().xp
        u1, u2 = self._uniform(shape), self._uniform(shape)
        z = xp.sqrt(np.float32(-2) * xp.log1p(-u1)) * xp.cos(np.float32(2 * np.pi) * u2)
        return z * np.float32(stddev) + np.float32(mean)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class _SpatialDropout(_Noise):
    """Dropout of whole channels: one draw per sample and channel (kept with probability
    1 - rate, then scaled by 1 / (1 - rate); rate 1 drops everything)."""
    rank = None

    def __init__(self, rate, seed=None, name=None, dtype=None, data_format=None):
        super().__init__(seed=seed, name=name, dtype=dtype)
        self.rate = _rate(rate)
        if data_format not in (None, "channels_last", "channels_first"):
            raise ValueError("The `data_format` argument must be one of {'channels_first', "
                             f"'channels_last'}}. Received: data_format={data_format}")
        self.data_format = data_format or "channels_last"

    def build(self, input_shape):
        if len(input_shape) != self.rank:
            raise ValueError(f"Input 0 of layer {self.name!r} is incompatible with the layer: "
                             f"expected ndim={self.rank}, found ndim={len(input_shape)}. "
                             f"Full shape received: {tuple(input_shape)}")
        super().build(input_shape)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        shape = tuple(inputs.shape)
        channel = 1 if self.data_format == "channels_first" else len(shape) - 1
        noise = tuple(d if i in (0, channel) else 1 for i, d in enumerate(shape))
        if self.rate == 1:
            return array_ops.multiply(_float32(inputs), np.float32(0))
        keep = get_ops().xp.greater_equal(self._uniform(noise), np.float32(self.rate))
        scale = keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.rate))
        return array_ops.multiply(_float32(inputs), scale)

    def get_config(self):
        config = super().get_config()
        del config["trainable"]         # Keras's spatial dropout config has none (nor takes it)
        return {**config, "rate": self.rate}


class SpatialDropout1D(_SpatialDropout):
    """Inputs (batch, steps, channels): drops whole channels of each sample.

    Args:
        rate: Fraction of the channels to drop, in [0, 1).
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        name: Name of the layer. Defaults to `None`.
        dtype: Only `"float32"` (or `None`). Defaults to `None`.
    """
    rank = 3

    def __init__(self, rate, seed=None, name=None, dtype=None):
        super().__init__(rate, seed=seed, name=name, dtype=dtype)


class SpatialDropout2D(_SpatialDropout):
    """Inputs (batch, height, width, channels) (or channels first): drops whole channels.

    Args:
        rate: Fraction of the channels to drop, in [0, 1).
        data_format: `"channels_last"` (images `(batch, height, width, channels)`) or
            `"channels_first"`; `None` uses `fastnn.backend.image_data_format()`. Defaults to
            `None`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        name: Name of the layer. Defaults to `None`.
        dtype: Only `"float32"` (or `None`). Defaults to `None`.
    """
    rank = 4

    def __init__(self, rate, data_format=None, seed=None, name=None, dtype=None):
        super().__init__(rate, seed=seed, name=name, dtype=dtype, data_format=data_format)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class GaussianNoise(_Noise):
    """Training only: x + a normal draw of mean 0 and standard deviation `stddev`.

    Args:
        stddev: Standard deviation of the noise.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.stddev = _rate(stddev, "stddev")

    def call(self, inputs, training=False):
        if not training or self.stddev == 0:
            return inputs
        return array_ops.add(_float32(inputs), self._normal(inputs.shape, 0.0, self.stddev))

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


class GaussianDropout(_Noise):
    """Training only: x times a normal draw of mean 1 and variance rate / (1 - rate).

    Args:
        rate: Drop probability in [0, 1): the noise's variance is `rate / (1 - rate)`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = _rate(rate)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        if self.rate == 1:
            raise ValueError(f"{self.name}: rate=1.0 makes the noise's variance rate / "
                             "(1 - rate) infinite (Keras divides by zero here); use a rate "
                             "below 1 when training")
        stddev = np.sqrt(self.rate / (1.0 - self.rate))
        return array_ops.multiply(_float32(inputs), self._normal(inputs.shape, 1.0, stddev))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class ELU(_KernelOrOwn):
    """x if x > 0 else alpha * (exp(x) - 1): the elu kernel (fused after a linear layer) for
    alpha >= 0; a negative alpha is computed here (the kernel's backward reads the sign of
    the output, which a negative alpha flips).

    Args:
        alpha: Scale of the negative part. Defaults to `1.0`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__("elu", **kwargs)
        self.alpha = self.act_alpha = _finite(alpha, "alpha", self.name)
        if self.alpha < 0:
            self.act_id = None

    def _own_forward(self, xp, x):
        return xp.where(x > 0, x, np.float32(self.alpha) * xp.expm1(xp.minimum(x, 0)))

    def _own_backward(self, xp, x, y, dy):
        return dy * xp.where(x > 0, np.float32(1), np.float32(self.alpha) *
                             xp.exp(xp.minimum(x, 0)))

    def get_config(self):
        return {**Layer.get_config(self), "alpha": self.alpha}


class PReLU(Layer):
    """relu(x) - alpha * relu(-x) with a trainable alpha of the input's shape (without the
    batch axis), of size 1 along `shared_axes`.

    Args:
        alpha_initializer: Initializer for the learned slopes `alpha` (a name such as `"zeros"`, a
            config dict, or an initializer object). Defaults to `"Zeros"`.
        alpha_regularizer: Regularizer for the slopes `alpha`: its penalty is added to the model's
            loss. `None`: none.
        alpha_constraint: Constraint applied to the slopes `alpha` after each optimizer step.
            `None`: none.
        shared_axes: Axes (1-based, after the batch axis) along which one `alpha` is shared, e.g.
            `[1, 2]` for one per channel of an image; `None`: one per input unit. Defaults to
            `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    supports_masking = True     # passes its input's mask on, as in Keras

    def __init__(self, alpha_initializer="Zeros", alpha_regularizer=None,
                 alpha_constraint=None, shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        _weight_options(self, alpha_regularizer=alpha_regularizer,
                        alpha_constraint=alpha_constraint)
        self.alpha_initializer = initializers.get(alpha_initializer)
        if shared_axes is not None:
            shared_axes = list(shared_axes) if isinstance(shared_axes, (list, tuple)) \
                else [shared_axes]
            if not all(_is_int(a) for a in shared_axes):
                raise ValueError(f"{self.name}: shared_axes must be an int or a list of ints, "
                                 f"got {shared_axes!r}")
        self.shared_axes = shared_axes

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for a in self.shared_axes or ():
            if not -len(shape) <= a - 1 < len(shape):
                raise ValueError(f"{self.name}: shared_axes={self.shared_axes} names an axis "
                                 f"outside the input shape {tuple(input_shape)}")
            shape[a - 1] = 1
        if None in shape:
            raise ValueError(f"{self.name}: alpha needs known axes: input shape "
                             f"{tuple(input_shape)} (share the unknown ones: shared_axes)")
        self.add_weight(name="alpha", shape=tuple(shape), initializer=self.alpha_initializer)
        super().build(input_shape)

    def call(self, inputs):
        x = _float32(inputs)
        negative = array_ops.relu(array_ops.negative(x))
        return array_ops.subtract(array_ops.relu(x), array_ops.multiply(self.alpha, negative))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "alpha_initializer": initializers.serialize(self.alpha_initializer),
                **_weight_options_config(self),
                "shared_axes": self.shared_axes}


_CLASSES.update({c.__name__: c for c in (
    LayerNormalization, GroupNormalization, SpatialDropout1D, SpatialDropout2D, GaussianNoise,
    GaussianDropout, ELU, PReLU)})

