"""A functional model's graph run without the autodiff tape, when every node is one of
fastnn's own layers: forward calls each node's layer in graph order; backward walks the nodes
back once, each layer's fused backward taking its output's gradient (fan-out gradients added
first) and returning its inputs'. No tensor objects, closures or graph search per step: the
tape's per-node cost is gone, and nothing about the math changes (the same kernels run).

A node's state lives in its layer's per-thread slot (a layer called twice, two slots), so
several threads may run one schedule at once. Graphs with a user's layer (its call() may
add_loss or call other layers) or a nested model keep the tape (Functional.call)."""
import math
import threading

import numpy as np

from . import activations
from .backend import get_ops
from .layers.core import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    Layer,
    ZeroPadding2D,
    _is_builtin,
    _takes_mask,
    drawing_from,
    record_activity,
    with_activity_gradient,
)


class Schedule:
    """The steps of a graph: (layer, input tensor ids, output tensor id, several inputs, slot,
    which inputs need a gradient, whether the output needs one).

    Args:
        inputs: The graph's input tensors.
        outputs: Its output tensors.
        nodes: The layer calls, in an order that computes each before it is read.
    """

    @classmethod
    def for_graph(cls, inputs, outputs, nodes):
        """A schedule, or None when some node needs the tape: a layer of the user's (or a
        model used as a layer), or a node with several outputs."""
        for node in nodes:
            layer = node.layer
            if not isinstance(layer, Layer) or not _is_builtin(type(layer)) \
                    or len(node.outputs) != 1 or getattr(layer, "tape_only", False):
                return None
        return cls(inputs, outputs, nodes)

    def __init__(self, inputs, outputs, nodes):
        self.inputs = [id(t) for t in inputs]
        self.outputs = [id(t) for t in outputs]
        needs = {tid: False for tid in self.inputs}     # a model input needs no gradient
        calls, self.steps = {}, []
        for node in nodes:
            layer = node.layer
            slot = calls.get(id(layer), 0)
            calls[id(layer)] = slot + 1
            ins = [id(t) for t in node.inputs]
            need_dx = [needs[t] for t in ins]
            trains = layer.trainable and bool(layer._trainable_names)
            out = id(node.outputs[0])
            needs[out] = trains or any(need_dx)
            self.steps.append((layer, ins, out, node.several, slot, need_dx, needs[out]))
        self.shared = {id(layer) for layer in (node.layer for node in nodes)
                       if calls[id(layer)] > 1}
        self.layers = list({id(node.layer): node.layer for node in nodes}.values())
        # how many steps read each tensor (the outputs are read once more, by the caller)
        self.readers = {}
        for _, ins, _, _, _, _, _ in self.steps:
            for t in ins:
                self.readers[t] = self.readers.get(t, 0) + 1
        for t in self.outputs:
            self.readers[t] = self.readers.get(t, 0) + 1
        shapes = {id(t): tuple(t.shape) for node in nodes for t in node.inputs + node.outputs}
        # A layer makes masks (Embedding(mask_zero), Masking): every step carries its input's
        # mask (layers.Layer._output_mask), and inference runs the plain steps (the fused ones
        # take no mask).
        self.masking = any(node.layer.makes_masks for node in nodes)
        self._masks = threading.local()     # this thread's last pass's output masks
        self.inference_steps = self.steps if self.masking else \
            _fused(self.steps, self.outputs, shapes)
        self.inference_readers = {}
        for _, ins, _, _, _, _, _ in self.inference_steps:
            for t in ins:
                self.inference_readers[t] = self.inference_readers.get(t, 0) + 1
        for t in self.outputs:
            self.inference_readers[t] = self.inference_readers.get(t, 0) + 1
        self._pools = threading.local()

    def forward(self, xs, training):
        """The outputs (a list) for the input arrays `xs` (one per model input). Training
        keeps every layer's buffers for backward; inference runs the fused steps (_fused)
        and lends buffers from a pool, each back to it once the last step reading it has run,
        so memory is the largest set of tensors alive at once, not the sum of all of them."""
        masks = {} if self.masking else None
        if training:
            values = dict(zip(self.inputs, xs))
            for step in self.steps:
                self._run(step, values, training, masks)
            self._masks.outputs = [masks.get(t) for t in self.outputs] if masks is not None \
                else None
            return [values[t] for t in self.outputs]
        pool = self._pools.__dict__.setdefault("pool", Pool())
        pool.reclaim()      # the last pass's outputs: the caller has read them
        values, left = dict(zip(self.inputs, xs)), dict(self.inference_readers)
        with drawing_from(pool):
            for step in self.inference_steps:
                lent = pool.lent()
                self._run(step, values, training, masks)
                pool.keep(values[step[2]], since=lent)     # scratch goes back at once
                for t in step[1]:
                    left[t] -= 1
                    if not left[t]:
                        pool.give_back(values.pop(t))
        self._masks.outputs = [masks.get(t) for t in self.outputs] if masks is not None \
            else None
        return [values[t] for t in self.outputs]

    def output_masks(self):
        """The masks this thread's last forward pass's outputs carry (None each: none)."""
        return getattr(self._masks, "outputs", None) or [None] * len(self.outputs)

    @staticmethod
    def _run(step, values, training, masks=None):
        layer, ins, out, several, slot, _, _ = step
        local = layer._thread
        local.slot = slot
        x = [values[t] for t in ins] if several else values[ins[0]]
        mask = None
        if masks is not None:
            mask = [masks.get(t) for t in ins] if several else masks.get(ins[0])
            if several and all(m is None for m in mask):
                mask = None
        try:
            if mask is not None and not several and _takes_mask(type(layer).forward):
                values[out] = layer.forward(x, training, mask=mask)
            else:
                values[out] = layer.forward(x, training)
            record_activity(layer, values[out], training)
        finally:
            local.slot = 0
        if masks is not None and (mask is not None or layer.makes_masks):
            out_mask = layer._output_mask(x, mask)
            if out_mask is not None:
                masks[out] = out_mask

    def backward(self, grads, preactivation=None):
        """Back-propagate the outputs' gradients (one array or None per output) through this
        thread's last training forward pass: every weight gradient is written (zero for a
        layer no gradient reached). preactivation: the layer whose backward gets its
        pre-activation's gradient (the loss fused with its activation)."""
        pending, owners = {}, {}        # tensor id -> gradient; memory -> gradients using it
        for tid, g in zip(self.outputs, grads):
            if g is not None:
                _add(pending, owners, tid, g)
        written = set()
        for layer, ins, out, several, slot, need_dx, needed in reversed(self.steps):
            dy = pending.pop(out, None)
            if dy is None or not needed:
                continue
            key = get_ops().address(dy)
            owners[key] -= 1
            # The layer's backward may overwrite its dy (so no other gradient may share its
            # memory) and its kernels read it row-major.
            if owners[key] or not dy.flags.c_contiguous:
                dy = dy.copy()
            kwargs = {"preactivation": True} if layer is preactivation else {}
            local = layer._thread
            local.slot = slot
            try:
                # A layer called more than once adds up its calls' weight gradients (its
                # kernels write them).
                saved = [layer.grads[n].copy() for n in layer._trainable_names] \
                    if id(layer) in written and id(layer) in self.shared else ()
                dx = layer.backward(with_activity_gradient(layer, dy),
                                    need_dx=need_dx if several else need_dx[0], **kwargs)
                for name, earlier in zip(layer._trainable_names, saved):
                    layer.grads[name] += earlier
            finally:
                local.slot = 0
            written.add(id(layer))
            for tid, g, need in zip(ins, dx if several else [dx], need_dx):
                if need and g is not None:
                    _add(pending, owners, tid, g)
        for layer in self.layers:       # no gradient reached it: its gradient is zero
            if id(layer) not in written:
                for name in layer._trainable_names:
                    layer.grads[name][...] = 0


class _Fused:
    """A linear Conv2D or Dense and, in its GEMM's epilogue, the BatchNormalization, residual
    Add and activation that follow it: one inference step (forward_fused)."""

    def __init__(self, layer, norm, residual, act, pad=None):
        self.layer, self.norm, self.residual, self.act = layer, norm, residual, act
        self.pad = pad      # a ZeroPadding2D before a Conv2D: im2col reads it as zeros
        self._thread = layer._thread

    def forward(self, xs, training=False):
        x, residual = (xs[0], xs[1]) if self.residual else (xs, None)
        norm = self.norm
        if norm is not None:
            norm = (norm.moving_mean, norm.moving_variance, norm._vars.get("gamma"),
                    norm._vars.get("beta"), norm.epsilon)
        if self.pad is None:
            return self.layer.forward_fused(x, norm=norm, residual=residual, act=self.act)
        window = self.layer.padded_window(x.shape, self.pad.padding)
        if window is None:
            x = self.pad.forward(x)
        return self.layer.forward_fused(x, norm=norm, residual=residual, act=self.act,
                                        window=window)


def _fused(steps, outputs, shapes):
    """The inference steps: each chain
        [ZeroPadding2D ->] Conv2D or Dense (linear) -> [BatchNormalization] ->
        [Add with one other input of the same shape] -> [Activation or a subclass, elementwise,
        with a kernel act_id]
    whose inner tensors have no other reader becomes one _Fused step, at the chain's last
    place (where all its inputs exist). Every other step runs as it is, and so does a layer
    with an activity_regularizer (its output is the penalty's input)."""
    readers = {}
    for k, (_, ins, _, _, _, _, _) in enumerate(steps):
        for t in ins:
            readers.setdefault(t, []).append(k)
    outputs = set(outputs)

    def sole_reader(t, kind):
        at = readers.get(t, ())
        if len(at) != 1 or t in outputs or at[0] in absorbed or \
                not isinstance(steps[at[0]][0], kind) or \
                steps[at[0]][0].activity_regularizer is not None:
            return None
        return at[0]

    producer = {step[2]: k for k, step in enumerate(steps)}
    placed, absorbed = {}, set()
    for k, (layer, ins, out, several, slot, _need_dx, _needed) in enumerate(steps):
        if type(layer) not in (Conv2D, Dense) or several or k in absorbed or \
                layer.act_id != activations.LINEAR or layer.activity_regularizer is not None:
            continue
        chain, t, norm, residual, act = [k], out, None, None, (activations.LINEAR, 0.0)
        pad, i = None, producer.get(ins[0])
        if type(layer) is Conv2D and i is not None and sole_reader(ins[0], Conv2D) == k and \
                type(steps[i][0]) is ZeroPadding2D and i not in absorbed and \
                steps[i][0].activity_regularizer is None:
            pad, ins = steps[i][0], steps[i][1]
            chain.insert(0, i)
        j = sole_reader(t, BatchNormalization)
        if j is not None:
            norm, t = steps[j][0], steps[j][2]
            chain.append(j)
        j = sole_reader(t, Add)
        if j is not None and len(steps[j][1]) == 2:
            other = [u for u in steps[j][1] if u != t]
            if len(other) == 1 and shapes.get(other[0]) == shapes.get(t):
                residual, t = other[0], steps[j][2]
                chain.append(j)
        j = sole_reader(t, Activation)
        if j is not None and steps[j][0].act_id not in (None, activations.SOFTMAX):
            act, t = (steps[j][0].act_id, steps[j][0].act_alpha), steps[j][2]
            chain.append(j)
        if len(chain) == 1:
            continue
        ins = ins + ([residual] if residual is not None else [])
        placed[chain[-1]] = (_Fused(layer, norm, residual is not None, act, pad), ins, t,
                             residual is not None, slot, [False] * len(ins), False)
        absorbed.update(chain)
    return [placed.get(k, step) for k, step in enumerate(steps)
            if k in placed or k not in absorbed]


class Pool:
    """Flat buffers lent as arrays of any shape that fits (best fit by size, per dtype). A
    buffer stays lent while any tensor alive in the pass views it; views are found by where
    their data starts (Ops.address), which works the same on every backend."""

    def __init__(self):
        self.free = []
        self.busy = {}          # start address -> [buffer, users, end address]
        self.order = []         # start addresses of the buffers lent in the step running now

    def take(self, shape, dtype="float32"):
        dtype, size = np.dtype(dtype), math.prod(shape)
        fits = [(b.size, i) for i, b in enumerate(self.free)
                if b.dtype == dtype and size <= b.size <= 2 * size + 4096]
        if fits:
            buf = self.free.pop(min(fits)[1])       # the smallest that fits
        else:
            buf = get_ops().empty((max(size, 1),), dtype)
        start = get_ops().address(buf)
        self.busy[start] = [buf, 1, start + buf.nbytes]
        self.order.append(start)
        return buf[:size].reshape(shape)

    def lent(self):
        return len(self.order)

    def _holder(self, tensor):
        """The start address of the lent buffer a tensor's data lies in, or None."""
        if not isinstance(tensor, get_ops().xp.ndarray):
            return None
        at = get_ops().address(tensor)
        if at in self.busy:     # most tensors start where their buffer does
            return at
        return next((start for start, (_, _, end) in self.busy.items() if start <= at < end),
                    None)

    def keep(self, output, since):
        """After a step: the buffers it took go back, except the one its output lies in (an
        output inside an earlier tensor's buffer, a reshape say, is one more user of it)."""
        holder = self._holder(output)
        taken = self.order[since:]
        del self.order[since:]
        for start in taken:
            if start != holder:
                self._release(start)
        if holder is not None and holder not in taken:
            self.busy[holder][1] += 1

    def give_back(self, tensor):
        """A tensor no later step reads: its buffer goes back once nothing else views it."""
        holder = self._holder(tensor)
        if holder is not None:
            self._release(holder)

    def _release(self, start):
        entry = self.busy.get(start)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self.busy[start]
            self.free.append(entry[0])

    def reclaim(self):
        """Every buffer back (a new pass: the last one's tensors are all dead)."""
        self.free += [entry[0] for entry in self.busy.values()]
        self.busy, self.order = {}, []


def _add(pending, owners, tid, g):
    """Add g to tensor tid's gradient, counting the gradients whose data starts where (two
    gradients that one array or its reshapes hold share that address)."""
    address = get_ops().address
    have = pending.get(tid)
    if have is not None:
        owners[address(have)] -= 1
        g = have + g
    pending[tid] = g
    key = address(g)
    owners[key] = owners.get(key, 0) + 1


__all__ = ["Schedule"]
