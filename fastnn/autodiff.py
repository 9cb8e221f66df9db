"""Reverse-mode automatic differentiation for code written with `fastnn.ops`: the `call` of a
custom layer or of a subclassed model, run eagerly.

A `Tensor` holds an array (NumPy, or CuPy on a GPU backend) and, when it was computed from
tensors that need gradients, the op's backward and its inputs. `gradients(output, leaves)` walks
that record once in reverse topological order: each op's backward gets the gradient of its
output and returns one per input; gradients of a tensor used several times add up; gradients
over broadcast axes are summed back to the input's shape.

Nothing is differentiated silently wrong: a NumPy function called on a tensor that needs
gradients is routed to the `fastnn.ops` op of the same name when there is one, and raises
otherwise; so does turning such a tensor into a NumPy array (`ops.convert_to_numpy` detaches it
explicitly)."""
import contextlib
import threading

from .backend import get_ops

_state = threading.local()       # per thread: whether ops record their backward
# fastnn.ops registers its ops here (name -> function): Tensor's operators and NumPy calls on
# tensors dispatch through it, so this module does not import fastnn.ops.
OPS = {}


def _recording():
    return getattr(_state, "enabled", False)


def is_recording():
    """Whether ops called in this thread now record their backward (inside tape())."""
    return _recording()


@contextlib.contextmanager
def _recording_set(enabled):
    previous = _recording()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


class Tape:
    """The nodes a tape() block made, in the order it made them: a valid order to walk back
    (gradients(order=tape.nodes)), with no search of the graph."""

    def __init__(self):
        self.nodes = []


@contextlib.contextmanager
def tape():
    """Record ops in this thread (as TensorFlow's GradientTape does): inside, ops on tensors
    that need gradients remember their backward; outside, they only compute. A tape opened
    inside another records into it."""
    previous = _recording(), getattr(_state, "tape", None)
    _state.enabled = True
    if previous[1] is None:
        _state.tape = Tape()
    try:
        yield _state.tape
    finally:
        _state.enabled, _state.tape = previous


def no_grad():
    """Run ops without recording, even inside a tape."""
    return _recording_set(False)


class Tensor:
    """An array and, when it needs gradients, how it was computed (`parents`, `backward`).
    Its operators (+, *, @, [], <, ...) are the fastnn.ops ops of the same meaning.
    A leaf that needs gradients (a weight, or an input whose gradient is wanted) has no
    backward; `gradients` returns its gradient, or adds it into `grad` when that is an array.

    Args:
        value: The array.
        requires_grad: Whether gradients are computed for it. Defaults to `False`.
        grad: Its gradient, once computed (or `None`). Defaults to `None`.
        name: A name, for messages. Defaults to `None`.
        parents: The tensors it was computed from. Defaults to `()`.
        backward: A function from its gradient to its parents' gradients, or `None` for a leaf.
    """
    # keras_mask: the mask (batch, timesteps) a layer's output carries, as Keras's _keras_mask
    __slots__ = ("value", "parents", "backward", "requires_grad", "grad", "name", "keras_mask")
    __array_priority__ = 1000        # NumPy's binary operators defer to the reflected ones here

    def __init__(self, value, requires_grad=False, grad=None, name=None, parents=(),
                 backward=None):
        self.value = value
        self.requires_grad = requires_grad
        self.grad = grad
        self.name = name
        self.parents = parents
        self.backward = backward
        self.keras_mask = None

    # ---- array-like ------------------------------------------------------------------------
    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __len__(self):
        return len(self.value)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"<fastnn.Tensor shape={self.shape} dtype={self.dtype}{grad}>"

    def numpy(self):
        return OPS["convert_to_numpy"](self)

    def __array__(self, dtype=None, copy=None):
        if self.requires_grad and _recording():
            raise TypeError("This tensor needs gradients; NumPy would drop them. Compute with "
                            "fastnn.ops, or read its value with fastnn.ops.convert_to_numpy(x)")
        value = get_ops().to_numpy(self.value)
        return value if dtype is None else value.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = OPS.get(_UFUNC_OPS.get(ufunc.__name__))
        if method == "__call__" and op is not None and not kwargs:
            return op(*inputs)
        return _untracked(f"numpy.{ufunc.__name__}", inputs, lambda *a: getattr(ufunc, method)(
            *a, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        op = OPS.get(func.__name__) if func.__name__ in _ARRAY_FUNCTION_OPS else None
        if op is not None:
            return op(*args, **kwargs)
        return _untracked(f"numpy.{func.__name__}", args, lambda *a: func(*a, **kwargs))

    # ---- operators: the ops of the same meaning ----------------------------------------------
    def __add__(self, other):
        return OPS["add"](self, other)

    def __radd__(self, other):
        return OPS["add"](other, self)

    def __sub__(self, other):
        return OPS["subtract"](self, other)

    def __rsub__(self, other):
        return OPS["subtract"](other, self)

    def __mul__(self, other):
        return OPS["multiply"](self, other)

    def __rmul__(self, other):
        return OPS["multiply"](other, self)

    def __truediv__(self, other):
        return OPS["divide"](self, other)

    def __rtruediv__(self, other):
        return OPS["divide"](other, self)

    def __matmul__(self, other):
        return OPS["matmul"](self, other)

    def __rmatmul__(self, other):
        return OPS["matmul"](other, self)

    def __pow__(self, other):
        return OPS["power"](self, other)

    def __rpow__(self, other):
        return OPS["power"](other, self)

    def __neg__(self):
        return OPS["negative"](self)

    def __abs__(self):
        return OPS["abs"](self)

    def __getitem__(self, index):
        return OPS["get_item"](self, index)

    def __lt__(self, other):
        return OPS["less"](self, other)

    def __le__(self, other):
        return OPS["less_equal"](self, other)

    def __gt__(self, other):
        return OPS["greater"](self, other)

    def __ge__(self, other):
        return OPS["greater_equal"](self, other)

    def __eq__(self, other):
        return OPS["equal"](self, other)

    def __ne__(self, other):
        return OPS["not_equal"](self, other)

    __hash__ = object.__hash__

    @property
    def T(self):
        return OPS["transpose"](self)


# NumPy ufuncs and functions that mean the same as a fastnn.ops op (by that op's name).
_UFUNC_OPS = {"add": "add", "subtract": "subtract", "multiply": "multiply",
              "true_divide": "divide", "divide": "divide", "negative": "negative",
              "square": "square", "sqrt": "sqrt", "exp": "exp", "log": "log", "absolute": "abs",
              "maximum": "maximum", "minimum": "minimum", "power": "power", "matmul": "matmul",
              "tanh": "tanh", "log1p": "log1p", "expm1": "expm1", "sin": "sin", "cos": "cos",
              "less": "less", "less_equal": "less_equal", "greater": "greater",
              "greater_equal": "greater_equal", "equal": "equal", "not_equal": "not_equal",
              "sign": "sign", "floor": "floor", "round": "round"}
_ARRAY_FUNCTION_OPS = {"sum", "mean", "max", "min", "reshape", "transpose", "expand_dims",
                       "squeeze", "concatenate", "stack", "where", "clip", "matmul", "dot",
                       "argmax", "argmin", "square", "sqrt", "exp", "log", "abs", "maximum",
                       "minimum", "var", "std", "zeros_like", "ones_like"}


def _untracked(name, args, run):
    """A NumPy call fastnn.ops has no op for: fine on values, an error on a tensor that needs
    gradients (the gradient would be lost without a word)."""
    flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else (arg,))]
    if any(isinstance(a, Tensor) and a.requires_grad for a in flat) and _recording():
        raise TypeError(f"{name} cannot differentiate a fastnn tensor: write it with "
                        f"fastnn.ops (see dir(fastnn.ops))")
    plain = [[value_of(a) for a in arg] if isinstance(arg, (list, tuple)) else value_of(arg)
             for arg in args]
    return run(*plain)


def value_of(x):
    """The array inside a Tensor, or x itself.

    Args:
        x: A `Tensor` or an array.

    Returns:
        An array.
    """
    return x.value if isinstance(x, Tensor) else x


def node(value, parents, backward):
    """A recorded result: a Tensor computed from `parents` whose gradients `backward` gives
    (the gradient of this tensor -> one gradient or None per parent), on the open tape.

    Args:
        value: The result array.
        parents: The input tensors.
        backward: A function from the result's gradient to the parents' gradients.

    Returns:
        A `Tensor`.
    """
    out = Tensor(value, requires_grad=True, parents=tuple(parents), backward=backward)
    active = getattr(_state, "tape", None)
    if active is not None:
        active.nodes.append(out)
    return out


def record(value, inputs, backward):
    """The result of an op: a Tensor that remembers `backward` (gradient of the output ->
    one gradient or None per input) when some input needs gradients and recording is on;
    else a Tensor without history when some input was a Tensor; else the plain array.

    Args:
        value: The op's result array.
        inputs: The op's input tensors.
        backward: A function from the result's gradient to the inputs' gradients.

    Returns:
        A `Tensor` (or the plain array when no input needs a gradient).
    """
    tensors = False
    for t in inputs:
        if isinstance(t, Tensor):
            if t.requires_grad and getattr(_state, "enabled", False):
                return node(value, inputs, backward)
            tensors = True
    return Tensor(value) if tensors else value


def unbroadcast(g, shape):
    """g summed over the axes along which an input of `shape` was broadcast."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _order(outputs):
    """The tensors that need gradients, reachable from the outputs, outputs first (every
    tensor after all tensors computed from it). Iterative: deep graphs do not hit the
    recursion limit."""
    seen, order, stack = set(), [], [(output, False) for output in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for parent in node.parents:
            if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in seen:
                stack.append((parent, False))
    return order[::-1]


def gradients(output, leaves=(), seed=None, order=None):
    """Back-propagate from `output` (a tensor, or a list of them; seed: its gradient, or one
    per output; ones by default). Returns the gradients of `leaves` (None for a leaf the
    outputs do not depend on); a leaf whose `grad` is an array also gets its gradient added
    there (+=), as weights shared by several calls accumulate. `order`: the nodes of the
    tape that made the outputs (Tape.nodes), walked back instead of searching the graph.

    Args:
        output: A tensor, or a list of tensors, to differentiate.
        leaves: The tensors whose gradients to return. Defaults to `()`.
        seed: The gradient of `output` (or one per output); `None`: ones.
        order: A precomputed topological order of the tape, or `None`. Defaults to `None`.

    Returns:
        The gradients of `leaves`, in order.
    """
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(outputs)
    if len(seeds) != len(outputs):
        raise ValueError(f"gradients: {len(seeds)} seeds for {len(outputs)} outputs")
    xp = get_ops().xp
    grads = {}
    for out, g in zip(outputs, seeds):
        if not isinstance(out, Tensor) or not out.requires_grad:
            raise ValueError("gradients: the output does not depend on any tensor that needs "
                             "gradients")
        if g is None:
            g = xp.ones_like(out.value)
        else:
            g = xp.asarray(value_of(g))
            if g.size != out.size:
                raise ValueError(f"gradients: seed has shape {g.shape}, the output "
                                 f"{out.shape}")
            g = g.reshape(out.shape)
        have = grads.get(id(out))
        grads[id(out)] = g if have is None else have + g
    wanted = {id(leaf): None for leaf in leaves}
    previous, _state.wanted = getattr(_state, "wanted", None), wanted
    try:
        if order is None:
            _backpropagate(_order(outputs), grads, wanted, xp)
        else:
            # The tape's nodes, newest first, then what is left: the leaves (weights,
            # inputs), and any node from before the tape, in graph order.
            pending = {id(o): o for o in outputs}
            _backpropagate(reversed(order), grads, wanted, xp, pending)
            rest = [pending[k] for k in grads]
            if any(t.backward is not None for t in rest):
                rest = _order(rest)
            _backpropagate(rest, grads, wanted, xp)     # leaves alone need no order
    finally:
        _state.wanted = previous
    return [wanted[id(leaf)] for leaf in leaves]


def grad_sink(x):
    """The gradient buffer a backward may add x's gradient into itself (then returning None
    for it), when x is a weight whose gradient in this backward pass goes nowhere else: a
    GEMM accumulates into it directly instead of writing a temporary that is then added."""
    if not isinstance(x, Variable) or not x.requires_grad:
        return None
    wanted = getattr(_state, "wanted", None)
    buf = x.grad
    if wanted is None or id(x) in wanted or buf is None or not buf.flags.c_contiguous:
        return None
    return buf


def _backpropagate(nodes, grads, wanted, xp, pending=None):
    """Each node's gradient (in `grads`, by id) through its backward into its parents';
    a leaf's into its grad buffer and `wanted`. pending: id -> tensor of the gradients
    still in `grads` (kept when the nodes walked may not reach every one)."""
    with no_grad():         # backward computes values; it records nothing
        for node in nodes:
            g = grads.pop(id(node), None)
            if g is None:
                continue
            backward = node.backward
            if backward is None:       # a leaf
                if isinstance(node.grad, xp.ndarray):
                    node.grad += g
                if id(node) in wanted:
                    wanted[id(node)] = g
                continue
            for parent, pg in zip(node.parents, backward(g)):
                if pg is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    pg = unbroadcast(pg, parent.shape)
                if pg.dtype != parent.dtype:
                    pg = pg.astype(parent.dtype)
                key = id(parent)
                have = grads.get(key)
                grads[key] = pg if have is None else have + pg
                if pending is not None:
                    pending[key] = parent


class Variable(Tensor):
    """A layer's weight as `add_weight` returns it: a leaf tensor that reads the layer's
    current array (weights move into the model's parameter buffer when it is built) and adds
    its gradient into the layer's gradient buffer. Keras's Variable API: numpy(), assign().

    Args:
        layer: The layer that owns the weight.
        key: The weight's name in that layer.
        trainable: Whether the weight is trainable.
    """
    __slots__ = ("_layer", "_key", "trainable")

    def __init__(self, layer, key, trainable):
        self._layer, self._key, self.trainable = layer, key, trainable
        super().__init__(None, name=key)

    value = property(lambda self: self._layer._vars[self._key],
                     lambda self, value: None)     # Tensor.__init__ sets it; the layer owns it
    requires_grad = property(lambda self: self.trainable and self._layer.trainable,
                             lambda self, value: None)
    grad = property(lambda self: self._layer.grads.get(self._key), lambda self, value: None)
    parents = property(lambda self: (), lambda self, value: None)
    backward = property(lambda self: None, lambda self, value: None)

    @property
    def path(self):
        return f"{self._layer.name}/{self._key}"

    def assign(self, value):
        """Write value into the weight (same shape), where the backend keeps it."""
        value = get_ops().asarray(value_of(value))
        if value.shape != self.value.shape:
            raise ValueError(f"Variable {self.path!r}: cannot assign shape {value.shape} to "
                             f"shape {self.value.shape}")
        self.value[...] = value

    def __repr__(self):
        return f"<fastnn.Variable path={self.path} shape={self.shape} dtype={self.dtype}>"
