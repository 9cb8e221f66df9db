"""Recurrent layers with Keras 3's signatures, defaults and weight layout: SimpleRNN, LSTM,
GRU and Bidirectional (keras/src/layers/rnn/). Each layer is one node of a model: its whole
sequence runs forward and back through time in the backend's rnn_forward / rnn_backward (the
C kernels of csrc/recurrent.c on the CPU backend), not step by step on the tape.

Re-exported by fastnn.layers (as keras.layers.LSTM ...); the classes say they live there so
that configs and saving treat them as fastnn's own layers."""
import numpy as np

from .. import activations, initializers
from .. import ops as fops
from ..autodiff import Tensor, is_recording, value_of
from ..autodiff import node as autodiff_node
from ..backend import get_ops
from ..graph import KerasTensor, Node, is_symbolic
from ..rng import get_rng
from .core import _CLASSES, _PASS, Layer, _weight_options, _weight_options_config, layer_from_entry

_KINDS = {"simple": 1, "gru": 3, "lstm": 4}


def _as_bool_mask(mask, batch, steps, layer):
    """The mask as the backend's bool array (batch, steps), checked."""
    if mask is None:
        return None
    xp = get_ops().xp
    mask = value_of(mask)
    if not isinstance(mask, xp.ndarray):
        mask = xp.asarray(np.asarray(mask))
    if tuple(mask.shape) != (batch, steps):
        raise ValueError(f"Layer {layer.name!r}: mask must have shape (batch, timesteps) = "
                         f"{(batch, steps)}, got {tuple(mask.shape)}")
    return mask.astype(bool, copy=False)


class _Sequence(Layer):
    """How a recurrent layer is called: on arrays (eagerly), on the tape (a model's pass, a
    user's call()), or on symbolic tensors (the functional API), with a mask, initial states
    as further inputs, and several outputs (return_state)."""
    tape_only = True    # its calls take states and masks: the tape's nodes (fastnn.schedule)

    supports_masking = True

    def _several(self):
        """Whether forward returns a list of outputs."""
        return self.return_state

    def _build_shape_of(self, x):
        """The shape to build for on a first call with x: a stateful layer keeps the batch
        size (its states' rows), others leave it open."""
        return (x.shape[0] if self.stateful else None,) + tuple(x.shape[1:])

    def compute_mask(self, inputs, mask=None):
        """Keras's: the sequence output keeps the input's mask; a last output and the states
        have none."""
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out = mask if self.return_sequences else None
        if not self._several():
            return out
        n_out = 2 if getattr(self, "merge_mode", "concat") is None else 1
        n_states = len(self.compute_output_shape((None, 1, 1))) - n_out
        return [out] * n_out + [None] * n_states

    def __call__(self, x, training=None, mask=None, initial_state=None):
        if training is None:
            training = bool(getattr(_PASS, "training", None))
        if isinstance(x, (list, tuple)) and initial_state is None:
            x, initial_state = x[0], (list(x[1:]) or None)     # a functional node's inputs
        states = None if initial_state is None else (
            list(initial_state) if isinstance(initial_state, (list, tuple))
            else [initial_state])
        if is_symbolic(x) or (states and is_symbolic(states)):
            return self._call_symbolic_rnn(x, mask, states)
        ops = get_ops()
        in_pass = getattr(_PASS, "counts", None) is not None
        if isinstance(x, Tensor) or in_pass or any(isinstance(s, Tensor) for s in states or ()):
            if mask is None and isinstance(x, Tensor):
                mask = x.keras_mask         # the mask the input carries, as Keras passes it
            outs = self._call_on_tape(x, training, mask, states)
            if mask is not None:
                masks = self.compute_mask(x, mask)
                for out, out_mask in zip(outs if self._several() else [outs],
                                         masks if self._several() else [masks]):
                    out.keras_mask = out_mask
            return outs
        x = ops.asarray(x)
        self._maybe_build(self._build_shape_of(x))
        out = self.forward(x, bool(training), mask=mask, initial_state=states)
        to_np = ops.to_numpy
        return [np.array(to_np(o)) for o in out] if self._several() else \
            np.array(to_np(out))

    def _call_symbolic_rnn(self, x, mask, states):
        if mask is not None:
            raise ValueError(f"Layer {self.name!r}: in a functional model, a mask comes from "
                             "the layer before (Masking, Embedding(mask_zero=True)), not "
                             "from a mask= argument")
        inputs = [x] + list(states or [])
        if not all(isinstance(t, KerasTensor) for t in inputs):
            raise TypeError(f"Layer {self.name!r}: a functional call takes symbolic tensors "
                            "(from fastnn.Input or other layers' calls) only")
        self._maybe_build(x.shape)
        shapes = self.compute_output_shape(x.shape)
        node = Node(self, inputs, shapes if self._several() else [shapes])
        node.several = len(inputs) > 1
        node.n_states = len(inputs) - 1     # written as Keras's initial_state= (get_config)
        self._inbound_nodes.append(node)
        return list(node.outputs) if self._several() else node.outputs[0]

    def _call_on_tape(self, x, training, mask, states):
        """One node of the tape for the whole sequence: parents x and the initial states;
        several outputs are slices of one packed node."""
        ops = get_ops()
        x = x if isinstance(x, Tensor) else Tensor(ops.asarray(value_of(x)))
        states = [s if isinstance(s, Tensor) else Tensor(ops.asarray(value_of(s)))
                  for s in states or []]
        self._maybe_build(self._build_shape_of(x))
        counts = getattr(_PASS, "counts", None)
        slot = 0
        if counts is not None:
            slot = counts.get(id(self), 0)
            counts[id(self)] = slot + 1
        local = self._thread
        local.slot = slot
        try:
            out = self.forward(x.value, bool(training), mask=mask,
                               initial_state=[s.value for s in states] or None)
        finally:
            local.slot = 0
        outs = out if self._several() else [out]
        parents = (x, *states)
        trains = bool(training) and self.trainable and bool(self._trainable_names)
        if not is_recording() or not (any(p.requires_grad for p in parents) or trains):
            tensors = [Tensor(o) for o in outs]
            return tensors if self._several() else tensors[0]
        shapes = [tuple(o.shape) for o in outs]
        sizes = [int(np.prod(s[1:])) for s in shapes]
        xp = ops.xp
        packed = outs[0] if len(outs) == 1 else \
            xp.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=1)

        def backward(g):
            local.slot = slot
            try:
                pieces, at = [], 0
                for shape, size in zip(shapes, sizes):
                    pieces.append(xp.ascontiguousarray(
                        g.reshape(g.shape[0], -1)[:, at:at + size]).reshape(shape))
                    at += size
                shared = counts is not None and counts.get(id(self), 1) > 1
                saved = [self.grads[n].copy() for n in self._trainable_names] if shared \
                    else ()
                dx = self.backward(pieces if self._several() else pieces[0],
                                   need_dx=x.requires_grad)
                for name, earlier in zip(self._trainable_names, saved):
                    self.grads[name] += earlier
                d_states = self._state().d_states
            finally:
                local.slot = 0
            return (dx, *d_states[:len(states)])
        node = autodiff_node(packed, parents, backward)
        if len(outs) == 1:
            return node
        results, at = [], 0
        for shape, size in zip(shapes, sizes):
            piece = fops.get_item(node, (slice(None), slice(at, at + size)))
            results.append(fops.reshape(piece, (-1,) + shape[1:]))
            at += size
        return results


class _RNN(_Sequence):
    """The shared machinery: one cell kind ("simple", "lstm" or "gru")."""
    kind = None

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, use_cudnn="auto",
                 zero_output_for_mask=False, **kwargs):
        kwargs.pop("implementation", None)      # Keras's two cell formulations: same math
        super().__init__(**kwargs)
        cls = type(self).__name__
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise ValueError(f"Received an invalid value for argument `units`, expected a "
                             f"positive integer, got {units}.")
        for arg, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{cls}: {arg} must be a float in [0, 1), got {value!r}")
        if activity_regularizer is not None:
            raise ValueError(f"{cls}: activity_regularizer is not supported by fastnn yet "
                             f"(got {activity_regularizer!r})")
        if use_cudnn not in ("auto", True, False):
            raise ValueError("Invalid valid received for argument `use_cudnn`. Expected one of "
                             f"{{'auto', True, False}}. Received: use_cudnn={use_cudnn}")
        if use_cudnn is True:
            raise ValueError(f"{cls}: use_cudnn=True, but fastnn has no cuDNN implementation: "
                             "pass use_cudnn='auto' (or False)")
        _weight_options(self, kernel_regularizer=kernel_regularizer,
                        recurrent_kernel_regularizer=recurrent_regularizer,
                        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                        recurrent_kernel_constraint=recurrent_constraint,
                        bias_constraint=bias_constraint)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.stateful, self.unroll = bool(go_backwards), bool(stateful), \
            bool(unroll)
        self.states = None      # a stateful layer's states, carried from call to call
        self.use_cudnn = use_cudnn
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.reset_after = True

    # (Keras's argument names for the recurrent kernel's regularizer and constraint)
    @property
    def recurrent_regularizer(self):
        return self.recurrent_kernel_regularizer

    @property
    def recurrent_constraint(self):
        return self.recurrent_kernel_constraint

    def weight_leaves(self):
        """Where Keras's files keep this layer's weights: in its cell (layers/<key>/cell)."""
        return [("cell", self)]

    @property
    def n_states(self):
        return 2 if self.kind == "lstm" else 1

    def _bias_init(self, units):
        return self.bias_initializer

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"Layer {self.name!r} ({type(self).__name__}) expects input of "
                             "shape (batch, timesteps, features) with known features, got "
                             f"{tuple(input_shape)}")
        if self.stateful and input_shape[0] is not None:
            # the states' rows: the batch size of the Input, else of the first call
            self.reset_states(int(input_shape[0]))
        gu = _KINDS[self.kind] * self.units
        self.add_weight(name="kernel", shape=(input_shape[-1], gu),
                        initializer=self.kernel_initializer)
        self.add_weight(name="recurrent_kernel", shape=(self.units, gu),
                        initializer=self.recurrent_initializer)
        if self.use_bias:
            shape = (2, gu) if self.kind == "gru" and self.reset_after else (gu,)
            self.add_weight(name="bias", shape=shape, initializer=self._bias_init(self.units))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        batch, steps = input_shape[0], input_shape[1]
        out = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
        if self.return_state:
            return [out] + [(batch, self.units)] * self.n_states
        return out

    # ---- computation -----------------------------------------------------------------------
    def _acts(self):
        act = activations.kernel_id(self.activation)
        rec = activations.kernel_id(self.recurrent_activation) if self.kind != "simple" \
            else act
        return act, rec

    def forward(self, x, training=False, mask=None, initial_state=None):
        """x (batch, timesteps, features); mask (batch, timesteps) bool, True = the step
        counts; initial_state: a list of n_states arrays (batch, units). Returns the output,
        or with return_state the list [output, h (, c)]."""
        ops = get_ops()
        xp = ops.xp
        st = self._state()
        if x.ndim != 3:
            raise ValueError(f"Layer {self.name!r}: expected input of shape (batch, timesteps, "
                             f"features), got {tuple(x.shape)}")
        batch, steps, d_in = x.shape
        if steps == 0:
            raise ValueError(f"Layer {self.name!r}: the input has no timesteps")
        mask = _as_bool_mask(mask, batch, steps, self)
        st.drop = None
        if training and self.dropout:
            u = ops.random_uniform(self._rng or get_rng(), ops.empty((batch, 1, d_in)))
            st.drop = (u >= self.dropout).astype("float32") * np.float32(
                1.0 / (1.0 - self.dropout))
            x = x * st.drop
        rec_mask = None
        if training and self.recurrent_dropout:
            # one mask a sequence on the previous state where it meets the recurrent kernel
            # (Keras's documented recurrent dropout; its LSTM and GRU skip it in their
            # default implementation 2, its SimpleRNN applies it as here)
            u = ops.random_uniform(self._rng or get_rng(), ops.empty((batch, self.units)))
            rec_mask = (u >= self.recurrent_dropout).astype("float32") * np.float32(
                1.0 / (1.0 - self.recurrent_dropout))
        if self.go_backwards:
            x = x[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        xs = x.transpose(1, 0, 2)      # time-major: the backend copies it where it wants it
        if xs.dtype != np.float32:
            xs = xs.astype(np.float32)
        ms = None if mask is None else xp.ascontiguousarray(mask.T)
        states = self._initial_states(initial_state, batch)
        act, rec = self._acts()
        ys, h, c, st.cache = ops.rnn_forward(
            self.kind, xs, self.kernel, self.recurrent_kernel, self._vars.get("bias"),
            states[0], states[1] if self.kind == "lstm" else None, ms, act, rec,
            self.reset_after, self.zero_output_for_mask, rec_mask, work=self._work)
        st.shape = (batch, steps, d_in)
        st.masked = mask is not None
        # what leaves the layer is copied out of the work arrays the next call reuses
        h = h.copy()
        c = c.copy() if self.kind == "lstm" else None
        if self.stateful:       # the next call starts where this one ended (no gradient)
            self.states = [h.copy()] + ([c.copy()] if self.kind == "lstm" else [])
        out = xp.ascontiguousarray(ys.transpose(1, 0, 2)) if self.return_sequences else \
            ys[-1].copy()
        if self.return_state:
            return [out, h] + ([c] if self.kind == "lstm" else [])
        return out

    def _work(self, name, shape):
        """An array kept in this call's state for the backend's recurrent kernels (its scratch
        and what backward reads), reused by the next call of the same shape: no fresh pages a
        batch. Never an inference pool's buffer: those go to other layers after this one."""
        workspace = self._state().workspace
        buf = workspace.get(name)
        if buf is None or buf.shape != shape:
            buf = workspace[name] = get_ops().empty(shape, "float32")
        return buf

    def reset_states(self, batch=None):
        """Zero a stateful layer's states (Keras's reset_state / reset_states)."""
        if self.stateful:
            batch = batch or (self.states[0].shape[0] if self.states else None)
            if batch:
                self.states = [get_ops().alloc((batch, self.units))
                               for _ in range(self.n_states)]

    reset_state = reset_states

    def _initial_states(self, initial_state, batch):
        ops = get_ops()
        if initial_state is None and self.stateful:
            if self.states is None:
                self.reset_states(batch)
            if self.states[0].shape[0] != batch:
                raise ValueError("If an RNN is stateful, the batch size of the input sequences "
                                 "must be the same as the batch size of the initial state. \n"
                                 f"- Expected batch size: {self.states[0].shape[0]}\n"
                                 f"- Received batch size: {batch}")
            return list(self.states)
        if initial_state is None:
            return [ops.alloc((batch, self.units)) for _ in range(self.n_states)]
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else \
            [initial_state]
        if len(states) != self.n_states:
            raise ValueError(f"Layer {self.name!r}: initial_state must be a list of "
                             f"{self.n_states} tensor(s) of shape (batch, {self.units}), got "
                             f"{len(states)}")
        out = []
        for i, s in enumerate(states):
            s = ops.asarray(value_of(s))
            if tuple(s.shape) != (batch, self.units):
                raise ValueError(f"Layer {self.name!r}: initial_state[{i}] must have shape "
                                 f"({batch}, {self.units}), got {tuple(s.shape)}")
            out.append(s)
        return out

    def backward(self, dy, need_dx=True):
        """dy: the output's gradient, or with return_state the list of the outputs' gradients
        (None where an output gets none). Returns dx; the initial states' gradients are left
        in this call's state (d_states)."""
        ops = get_ops()
        st = self._state()
        batch, steps, d_in = st.shape
        grads = list(dy) if self.return_state else [dy]
        d_out, d_h = grads[0], grads[1] if len(grads) > 1 else None
        d_c = grads[2] if len(grads) > 2 else None
        if d_out is None:
            dys = None
        elif self.return_sequences:
            dys = ops.copy_steps(d_out.transpose(1, 0, 2),
                                 self._work("rnn_dys", (steps, batch, self.units)))
        elif not st.masked:     # the last output is the last state: its gradient joins d_h
            dys = None
            d_h = d_out if d_h is None else d_h + d_out
        else:       # only the last output has a gradient
            dys = self._work("rnn_dys", (steps, batch, self.units))
            dys[:-1] = 0.0
            dys[-1] = d_out
        act, rec = self._acts()
        dx, dh0, dc0 = ops.rnn_backward(
            self.kind, st.cache, dys, d_h, d_c, self.kernel, self.recurrent_kernel,
            self.grads["kernel"], self.grads["recurrent_kernel"], self.grads.get("bias"),
            act, rec, self.reset_after, self.zero_output_for_mask, need_dx=bool(need_dx),
            work=self._work)
        st.d_states = [dh0] + ([dc0] if self.kind == "lstm" else [])
        st.cache = None
        if dx is None:
            return None
        dx = dx.transpose(1, 0, 2)
        if self.go_backwards:
            dx = dx[:, ::-1]
        # batch-major already (the C kernels write it so, into this call's work arrays): as
        # it is; else copied into a work array of this layer's (as Dense's dx)
        out = dx if dx.flags.c_contiguous else \
            ops.copy_steps(dx, self._work("dx", (batch, steps, d_in)))
        if st.drop is not None:
            out *= st.drop
        return out

    # ---- config ----------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update({
            "return_sequences": self.return_sequences, "return_state": self.return_state,
            "go_backwards": self.go_backwards, "stateful": self.stateful, "unroll": self.unroll,
            "zero_output_for_mask": self.zero_output_for_mask,
            "units": self.units, "activation": activations.serialize(self.activation),
        })
        if self.kind != "simple":
            config["recurrent_activation"] = activations.serialize(self.recurrent_activation)
        opts = _weight_options_config(self)
        config.update({
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": opts["kernel_regularizer"],
            "recurrent_regularizer": opts["recurrent_kernel_regularizer"],
            "bias_regularizer": opts["bias_regularizer"], "activity_regularizer": None,
            "kernel_constraint": opts["kernel_constraint"],
            "recurrent_constraint": opts["recurrent_kernel_constraint"],
            "bias_constraint": opts["bias_constraint"],
            "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("use_cudnn", None)
        return super().from_config(config)


class SimpleRNN(_RNN):
    """Keras's SimpleRNN: h_t = activation(x_t kernel + h_{t-1} recurrent_kernel + bias).

    Args:
        units: Size of the state and of each output step.
        activation: Activation of the state (a name or callable); `None`: linear. Defaults to
            `"tanh"`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        recurrent_initializer: Initializer for the recurrent kernel (the state-to-state weights) (a
            name such as `"zeros"`, a config dict, or an initializer object). Defaults to
            `"orthogonal"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        recurrent_regularizer: Regularizer for the recurrent kernel: its penalty is added to the
            model's loss. `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        recurrent_constraint: Constraint applied to the recurrent kernel after each optimizer step.
            `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        dropout: Fraction in [0, 1) of the inputs' units dropped at each step during training.
            Defaults to `0.0`.
        recurrent_dropout: Fraction in [0, 1) of the state's units dropped in the recurrent
            transformation during training. Defaults to `0.0`.
        return_sequences: Whether to return the whole output sequence `(batch, steps, units)` or
            only the last output `(batch, units)`. Defaults to `False`.
        return_state: Whether to return the final state(s) as well, after the output. Defaults to
            `False`.
        go_backwards: Whether to read the input sequence backwards (and return the reversed
            sequence). Defaults to `False`.
        stateful: Whether each batch starts from the final states of the previous batch (sample i
            continues sample i); reset with `reset_states()`. Defaults to `False`.
        unroll: Accepted for Keras compatibility; the computation is the same either way. Defaults
            to `False`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    kind = "simple"

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, seed=None, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=None,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer,
                         recurrent_regularizer=recurrent_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint,
                         recurrent_constraint=recurrent_constraint,
                         bias_constraint=bias_constraint, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll, **kwargs)


class LSTM(_RNN):
    """Keras's LSTM: gates i, f, c, o in that order along the kernels' columns.

    Args:
        units: Size of the state and of each output step.
        activation: Activation of the cell input and the output (a name or callable); `None`:
            linear. Defaults to `"tanh"`.
        recurrent_activation: Activation of the gates (a name, a callable or `None`). Defaults to
            `"sigmoid"`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        recurrent_initializer: Initializer for the recurrent kernel (the state-to-state weights) (a
            name such as `"zeros"`, a config dict, or an initializer object). Defaults to
            `"orthogonal"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        unit_forget_bias: Whether the forget gate's bias starts at 1 (the rest of the bias from
            `bias_initializer`). Defaults to `True`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        recurrent_regularizer: Regularizer for the recurrent kernel: its penalty is added to the
            model's loss. `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        recurrent_constraint: Constraint applied to the recurrent kernel after each optimizer step.
            `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        dropout: Fraction in [0, 1) of the inputs' units dropped at each step during training.
            Defaults to `0.0`.
        recurrent_dropout: Fraction in [0, 1) of the state's units dropped in the recurrent
            transformation during training. Defaults to `0.0`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        return_sequences: Whether to return the whole output sequence `(batch, steps, units)` or
            only the last output `(batch, units)`. Defaults to `False`.
        return_state: Whether to return the final state(s) as well, after the output. Defaults to
            `False`.
        go_backwards: Whether to read the input sequence backwards (and return the reversed
            sequence). Defaults to `False`.
        stateful: Whether each batch starts from the final states of the previous batch (sample i
            continues sample i); reset with `reset_states()`. Defaults to `False`.
        unroll: Accepted for Keras compatibility; the computation is the same either way. Defaults
            to `False`.
        use_cudnn: `"auto"` or `False`; `True` is refused (fastnn has no cuDNN path). Defaults to
            `"auto"`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...

    Example:

    ```python
    layer = fastnn.layers.LSTM(64, return_sequences=True)
    y = layer(fastnn.ops.ones((32, 10, 8)))   # (32, 10, 64)
    ```
    """
    kind = "lstm"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False,
                 use_cudnn="auto", **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                         stateful, unroll, use_cudnn, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_init(self, units):
        if not self.unit_forget_bias:
            return self.bias_initializer
        init = self.bias_initializer

        def forget_ones(shape, dtype="float32"):       # Keras: the forget gate's bias at 1
            return np.concatenate([np.asarray(init((units,)), np.float32),
                                   np.ones((units,), np.float32),
                                   np.asarray(init((2 * units,)), np.float32)])
        return forget_ones

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class GRU(_RNN):
    """Keras's GRU: gates z, r, h; reset_after=True (the default) has a (2, 3 units) bias,
    the input's and the recurrent product's, and applies r after the recurrent product.

    Args:
        units: Size of the state and of each output step.
        activation: Activation of the candidate state (a name or callable); `None`: linear. Defaults
            to `"tanh"`.
        recurrent_activation: Activation of the gates (a name, a callable or `None`). Defaults to
            `"sigmoid"`.
        use_bias: Whether the layer adds a bias vector. Defaults to `True`.
        kernel_initializer: Initializer for the kernel weights (a name such as `"zeros"`, a config
            dict, or an initializer object). Defaults to `"glorot_uniform"`.
        recurrent_initializer: Initializer for the recurrent kernel (the state-to-state weights) (a
            name such as `"zeros"`, a config dict, or an initializer object). Defaults to
            `"orthogonal"`.
        bias_initializer: Initializer for the bias vector (a name such as `"zeros"`, a config dict,
            or an initializer object). Defaults to `"zeros"`.
        kernel_regularizer: Regularizer for the kernel: its penalty is added to the model's loss.
            `None`: none.
        recurrent_regularizer: Regularizer for the recurrent kernel: its penalty is added to the
            model's loss. `None`: none.
        bias_regularizer: Regularizer for the bias: its penalty is added to the model's loss.
            `None`: none.
        activity_regularizer: Regularizer applied to the layer's output; its penalty, divided by the
            batch size, is added to the loss. `None`: none.
        kernel_constraint: Constraint applied to the kernel after each optimizer step. `None`: none.
        recurrent_constraint: Constraint applied to the recurrent kernel after each optimizer step.
            `None`: none.
        bias_constraint: Constraint applied to the bias after each optimizer step. `None`: none.
        dropout: Fraction in [0, 1) of the inputs' units dropped at each step during training.
            Defaults to `0.0`.
        recurrent_dropout: Fraction in [0, 1) of the state's units dropped in the recurrent
            transformation during training. Defaults to `0.0`.
        seed: Seed of the layer's random draws (an int), for reproducible results; `None`: drawn
            from the global generator (see `fastnn.utils.set_random_seed`).
        return_sequences: Whether to return the whole output sequence `(batch, steps, units)` or
            only the last output `(batch, units)`. Defaults to `False`.
        return_state: Whether to return the final state(s) as well, after the output. Defaults to
            `False`.
        go_backwards: Whether to read the input sequence backwards (and return the reversed
            sequence). Defaults to `False`.
        stateful: Whether each batch starts from the final states of the previous batch (sample i
            continues sample i); reset with `reset_states()`. Defaults to `False`.
        unroll: Accepted for Keras compatibility; the computation is the same either way. Defaults
            to `False`.
        reset_after: Whether the reset gate is applied after the recurrent transformation
            (Keras 3's default; the bias then has shape `(2, 3 * units)`) or before it.
        use_cudnn: `"auto"` or `False`; `True` is refused (fastnn has no cuDNN path). Defaults to
            `"auto"`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    kind = "gru"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, reset_after=True,
                 use_cudnn="auto", **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, activity_regularizer,
                         kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                         stateful, unroll, use_cudnn, **kwargs)
        self.reset_after = bool(reset_after)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


class Bidirectional(_Sequence):
    """Keras's Bidirectional: a copy of `layer` reads the sequence forwards, another (or
    backward_layer) backwards; their outputs merge (concat, sum, mul, ave, or None: both).
    Its weights are the forward layer's then the backward layer's; with return_state its
    outputs are the merged output(s), then the forward layer's states, then the backward's.

    Args:
        layer: The recurrent layer (`SimpleRNN`, `LSTM` or `GRU`) that reads the sequence forwards;
            a copy reads it backwards.
        merge_mode: How the two directions' outputs are combined: `"concat"`, `"sum"`, `"mul"`,
            `"ave"`, or `None` for a list of both. Defaults to `"concat"`.
        weights: Initial weights (the forward layer's, then the backward layer's), or `None`.
            Defaults to `None`.
        backward_layer: The recurrent layer for the backward direction (with `go_backwards=True`),
            or `None` to copy `layer`. Defaults to `None`.
        **kwargs: Base layer arguments: `name`, `trainable`, `dtype`, `input_shape`, ...
    """
    _MERGES = ("sum", "mul", "ave", "concat", None)

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None,
                 **kwargs):
        if not isinstance(layer, _RNN):
            raise ValueError("Please initialize `Bidirectional` layer with a recurrent layer "
                             f"(SimpleRNN, LSTM, GRU). Received: {layer}")
        if backward_layer is not None and not isinstance(backward_layer, _RNN):
            raise ValueError("`backward_layer` need to be a recurrent layer (SimpleRNN, LSTM, "
                             f"GRU). Received: {backward_layer}")
        if merge_mode not in self._MERGES:
            raise ValueError(f"Invalid merge mode. Received: {merge_mode}. Merge mode should "
                             'be one of {"sum", "mul", "ave", "concat", None}')
        super().__init__(**kwargs)
        config = layer.get_config()
        config["name"] = "forward_" + layer.name.removeprefix("forward_")
        self.forward_layer = type(layer).from_config(config)
        if backward_layer is None:
            config = layer.get_config()
            config["go_backwards"] = not layer.go_backwards
            config["name"] = "backward_" + layer.name.removeprefix("backward_")
            backward_layer = type(layer).from_config(config)
        self.backward_layer = backward_layer
        fwd, bwd = self.forward_layer, self.backward_layer
        if fwd.go_backwards == bwd.go_backwards:
            raise ValueError("Forward layer and backward layer should have different "
                             "`go_backwards` value. Received: forward_layer.go_backwards "
                             f"{fwd.go_backwards}, backward_layer.go_backwards="
                             f"{bwd.go_backwards}")
        for a in ("return_sequences", "return_state"):
            if getattr(fwd, a) != getattr(bwd, a):
                raise ValueError("Forward layer and backward layer are expected to have the "
                                 f'same value for attribute "{a}", got "{getattr(fwd, a)}" '
                                 f'for forward layer and "{getattr(bwd, a)}" for backward '
                                 "layer")
        for sub in (fwd, bwd):      # as Keras: masked outputs of a sequence are zeros
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences, self.return_state = fwd.return_sequences, fwd.return_state
        self.stateful = fwd.stateful
        self._initial_weights = weights

    def _several(self):
        return self.return_state or self.merge_mode is None

    def _sublayers(self):
        return []       # their weights are this layer's own (one copy in a model's arena)

    def reset_states(self):
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    reset_state = reset_states

    def weight_leaves(self):
        return [("forward_layer/cell", self.forward_layer),
                ("backward_layer/cell", self.backward_layer)]

    def build(self, input_shape):
        self._build_inner(self.forward_layer, input_shape)
        self._build_inner(self.backward_layer, input_shape)
        # the sublayers' weights, adopted: the same arrays, named by direction
        self._owner = {}
        for prefix, sub in (("forward_", self.forward_layer), ("backward_", self.backward_layer)):
            for name in sub.weight_names:
                mine = prefix + name
                self._adopt_weight(mine, sub, name)
                self._owner[mine] = (sub, name)
        super().build(input_shape)
        if self._initial_weights:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def _rebind(self, name, array, grad=None):
        super()._rebind(name, array, grad)
        sub, own = self._owner[name]
        self._rebind_inner(sub, own, array, grad)

    def compute_output_shape(self, input_shape):
        shape = self.forward_layer.compute_output_shape(input_shape)
        states = []
        if self.return_state:
            shape, states = shape[0], list(shape[1:])
        if self.merge_mode == "concat":
            shape = tuple(shape[:-1]) + (2 * shape[-1],)
        outs = [shape, shape] if self.merge_mode is None else [shape]
        if not self._several():
            return shape
        return outs + states + states

    def _slot(self, fn):
        """Runs fn with the sublayers on this call's slot (a layer called twice in a pass)."""
        slot = getattr(self._thread, "slot", 0)
        subs = (self.forward_layer, self.backward_layer)
        for sub in subs:
            self._set_inner_slot(sub, slot)
        try:
            return fn()
        finally:
            for sub in subs:
                self._set_inner_slot(sub, 0)

    def forward(self, x, training=False, mask=None, initial_state=None):
        return self._slot(lambda: self._forward(x, training, mask, initial_state))

    def _forward(self, x, training, mask, initial_state):
        xp = get_ops().xp
        fs = bs = None
        if initial_state is not None:
            states = list(initial_state)
            half = len(states) // 2
            fs, bs = states[:half], states[half:]
        y = self.forward_layer.forward(x, training, mask=mask, initial_state=fs)
        yr = self.backward_layer.forward(x, training, mask=mask, initial_state=bs)
        states = []
        if self.return_state:
            states = list(y[1:]) + list(yr[1:])
            y, yr = y[0], yr[0]
        if self.return_sequences:
            yr = xp.ascontiguousarray(yr[:, ::-1])
        st = self._state()
        st.y, st.yr = y, yr
        m = self.merge_mode
        if m == "concat":
            out = [xp.concatenate([y, yr], axis=-1)]
        elif m == "sum":
            out = [y + yr]
        elif m == "ave":
            out = [(y + yr) / np.float32(2)]
        elif m == "mul":
            out = [y * yr]
        else:
            out = [y, yr]
        out += states
        return out if self._several() else out[0]

    def backward(self, dy, need_dx=True):
        return self._slot(lambda: self._backward(dy, need_dx))

    def _backward(self, dy, need_dx):
        ops = get_ops()
        xp = ops.xp
        st = self._state()
        grads = list(dy) if self._several() else [dy]
        m = self.merge_mode
        n_out = 2 if m is None else 1
        outs, state_grads = grads[:n_out], grads[n_out:]

        def zeros_like(a):
            return xp.zeros(a.shape, "float32")
        if m is None:
            d_f = outs[0] if outs[0] is not None else zeros_like(st.y)
            d_b = outs[1] if outs[1] is not None else zeros_like(st.yr)
        else:
            d = outs[0] if outs[0] is not None else zeros_like(
                st.y if m != "concat" else xp.concatenate([st.y, st.yr], axis=-1))
            units = st.y.shape[-1]
            if m == "concat":
                d_f, d_b = d[..., :units], d[..., units:]
            elif m == "sum":
                d_f, d_b = d, d
            elif m == "ave":
                d_f = d_b = d * np.float32(0.5)
            else:
                d_f, d_b = d * st.yr, d * st.y
        if self.return_sequences:
            d_b = d_b[:, ::-1]
        d_f, d_b = xp.ascontiguousarray(d_f), xp.ascontiguousarray(d_b)
        n = self.forward_layer.n_states
        if self.return_state:
            d_f = [d_f] + state_grads[:n]
            d_b = [d_b] + state_grads[n:]
        dx_f = self.forward_layer.backward(d_f, need_dx)
        dx_b = self.backward_layer.backward(d_b, need_dx)
        st.d_states = self._inner_state(self.forward_layer).d_states + \
            self._inner_state(self.backward_layer).d_states
        return None if dx_f is None else dx_f + dx_b

    def get_config(self):
        config = super().get_config()
        config.update({"merge_mode": self.merge_mode,
                       "layer": self._inner_entry(self.forward_layer),
                       "backward_layer": self._inner_entry(self.backward_layer)})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = layer_from_entry(config["layer"])
        if config.get("backward_layer") is not None:
            config["backward_layer"] = layer_from_entry(config["backward_layer"])
        return super().from_config(config)


# Exported from fastnn.layers: get_class finds them by name (loading).
_CLASSES.update({c.__name__: c for c in (SimpleRNN, LSTM, GRU, Bidirectional)})
