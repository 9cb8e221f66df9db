"""The functional API's graph: `Input()` returns a symbolic `KerasTensor`; calling a layer on
symbolic tensors records a `Node` (the layer, its input tensors, its output tensors) and
returns new symbolic tensors. `nodes_between(inputs, outputs)` orders the nodes of a model so
that each node comes after the nodes producing its inputs; the functional Model runs them in
that order on the autodiff tape (fastnn.models.Functional)."""
import numpy as np

from .backend import unique_name


class KerasTensor:
    """A symbolic tensor: a shape (batch axis None), a dtype, a name, and the node that
    produces it. It holds no values; layers called on it build the graph."""

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


class Node:
    """One call of a layer while building a functional model."""

    def __init__(self, layer, inputs, output_shapes):
        self.layer, self.inputs = layer, list(inputs)
        self.outputs = [KerasTensor(shape, name=unique_name(layer.name), node=self, index=i)
                        for i, shape in enumerate(output_shapes)]


def flatten(structure):
    """KerasTensors (or arrays) of a tensor, a list/tuple of them, or a dict of them."""
    if isinstance(structure, dict):
        return [v for value in structure.values() for v in flatten(value)]
    if isinstance(structure, (list, tuple)):
        return [v for value in structure for v in flatten(value)]
    return [structure]


def is_symbolic(structure):
    return any(isinstance(t, KerasTensor) for t in flatten(structure))


def nodes_between(inputs, outputs):
    """The nodes that compute `outputs` from `inputs`, each after the nodes it reads from.
    Raises (as Keras's "graph disconnected") when an output needs a tensor that is not
    computed from the inputs."""
    input_ids = {id(t) for t in inputs}
    order, done, visiting = [], set(), set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            tensor, expanded = stack.pop()
            node = tensor.node
            if id(tensor) in input_ids or id(node) in done:
                continue
            if node is None or not node.inputs:
                raise ValueError(f"Graph disconnected: {tensor.name} (shape {tensor.shape}) is "
                                 "needed for the outputs but is not computed from the model's "
                                 f"inputs {[t.name for t in inputs]}")
            if expanded:
                visiting.discard(id(node))
                done.add(id(node))
                order.append(node)
                continue
            visiting.add(id(node))
            stack.append((tensor, True))
            for parent in node.inputs:
                if parent.node is not None and id(parent.node) in visiting and \
                        id(parent) not in input_ids:
                    raise ValueError(f"The graph has a cycle through {parent.name}")
                stack.append((parent, False))
    return order
