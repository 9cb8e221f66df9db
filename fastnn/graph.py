"""The functional API's graph: `Input()` returns a symbolic `KerasTensor`; calling a layer on
symbolic tensors records a `Node` (the layer, its input tensors, its output tensors) and
returns new symbolic tensors. `nodes_between(inputs, outputs)` orders the nodes of a model so
that each node comes after the nodes producing its inputs; the functional Model runs them in
that order, on a schedule of fused layer steps when every node is one of fastnn's layers
(fastnn.schedule), else on the autodiff tape (fastnn.models.Functional)."""
import numpy as np

from .autodiff import OPS
from .backend import unique_name

# fastnn.layers registers here how an op called on symbolic tensors becomes a graph node (a
# layer that runs the op), so that neither fastnn.ops nor this module imports fastnn.layers.
symbolic_op = None


class KerasTensor:
    """A symbolic tensor: a shape (batch axis None), a dtype, a name, and the node that
    produces it. It holds no values; layers called on it build the graph.

    Args:
        shape: The tensor's shape, batch axis first (`None` for unknown sizes).
        dtype: The tensor's data type. Defaults to `"float32"`.
        name: Its name. Defaults to `None`.
        node: The layer call that produced it (`None` for a model input).
        index: Which of that call's outputs it is. Defaults to `0`.
    """

    def __init__(self, shape, dtype="float32", name=None, node=None, index=0):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).name
        self.name = name or unique_name("keras_tensor")
        self.node, self.index = node, index

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self.name} is a symbolic input of a functional model (shape "
                        f"{self.shape}): it has no values; call the model on arrays")

    __hash__ = object.__hash__


def _operator(op, reflected=False):
    def method(self, *other):
        args = (other[0], self) if reflected else (self,) + other
        return OPS[op](*args)
    return method


# Python operators on symbolic tensors: the fastnn.ops ops, which become graph nodes.
for _name, _op, _reflected in (
        ("__add__", "add", False), ("__radd__", "add", True),
        ("__sub__", "subtract", False), ("__rsub__", "subtract", True),
        ("__mul__", "multiply", False), ("__rmul__", "multiply", True),
        ("__truediv__", "divide", False), ("__rtruediv__", "divide", True),
        ("__matmul__", "matmul", False), ("__rmatmul__", "matmul", True),
        ("__pow__", "power", False), ("__rpow__", "power", True),
        ("__neg__", "negative", False), ("__abs__", "abs", False),
        ("__getitem__", "get_item", False)):
    setattr(KerasTensor, _name, _operator(_op, _reflected))


def has_symbolic(args):
    """Whether call arguments hold a symbolic tensor (directly or in a list or tuple)."""
    for a in args:
        if isinstance(a, KerasTensor) or (isinstance(a, (list, tuple)) and
                                          any(isinstance(b, KerasTensor) for b in a)):
            return True
    return False


class Node:
    """One call of a layer while building a functional model.

    Args:
        layer: The layer called.
        inputs: The symbolic input tensors of the call.
        output_shapes: The shapes of the call's outputs.
    """

    def __init__(self, layer, inputs, output_shapes):
        self.layer, self.inputs = layer, list(inputs)
        self.outputs = [KerasTensor(shape, node=self, index=i)
                        for i, shape in enumerate(output_shapes)]


def flatten(structure):
    """KerasTensors (or arrays) of a tensor, a list/tuple of them, or a dict of them.

    Args:
        structure: A tensor, or a list, tuple or dict of tensors.

    Returns:
        A list.
    """
    if isinstance(structure, dict):
        return [v for value in structure.values() for v in flatten(value)]
    if isinstance(structure, (list, tuple)):
        return [v for value in structure for v in flatten(value)]
    return [structure]


def is_symbolic(structure):
    """Whether `structure` (a tensor, or a list, tuple or dict of them) holds a symbolic tensor
    (`KerasTensor`).

    Args:
        structure: A tensor, or a list, tuple or dict of tensors.

    Returns:
        A bool.
    """
    return any(isinstance(t, KerasTensor) for t in flatten(structure))


def nodes_between(inputs, outputs):
    """The nodes that compute `outputs` from `inputs` (the inputs' own nodes included), and
    the layers, both in Keras's order: by depth from the outputs, deepest first, ties in the
    order a walk from the outputs (each node's inputs left to right) first meets them. Each
    node comes after the nodes it reads from. Raises as Keras does ("Graph disconnected")
    when an output needs a tensor that the inputs do not compute.

    Args:
        inputs: The input tensors.
        outputs: The output tensors.

    Returns:
        The nodes and the layers, each a list in Keras's order.
    """
    input_ids = {id(t) for t in inputs}
    first_seen, post_order, finished, in_progress = {}, [], set(), set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            tensor, expanded = stack.pop()
            node = tensor.node
            if expanded:
                in_progress.discard(id(node))
                finished.add(id(node))
                post_order.append(node)
                continue
            if id(node) in finished:
                continue
            if id(node) in in_progress:
                raise ValueError(f"The graph has a cycle through {tensor.name}")
            if not node.inputs and id(tensor) not in input_ids:
                raise ValueError(f"Graph disconnected: {tensor.name} (shape {tensor.shape}) is "
                                 "needed for the outputs but is not one of the model's "
                                 f"inputs {[t.name for t in inputs]}")
            first_seen.setdefault(id(node.layer), len(first_seen))
            in_progress.add(id(node))
            stack.append((tensor, True))
            if id(tensor) not in input_ids:
                stack.extend((parent, False) for parent in reversed(node.inputs))
    node_depth, layer_depth = {}, {}
    for node in reversed(post_order):
        depth = max(node_depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
        layer_depth[id(node.layer)] = node_depth[id(node)] = depth
        for parent in node.inputs:
            node_depth[id(parent.node)] = max(depth + 1, node_depth.get(id(parent.node), 0))
    nodes = sorted(post_order, key=lambda n: -node_depth[id(n)])
    layers = []
    for node in post_order:
        if node.layer not in layers:
            layers.append(node.layer)
    layers.sort(key=lambda layer: (-layer_depth[id(layer)], first_seen[id(layer)]))
    return nodes, layers
