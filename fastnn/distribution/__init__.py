"""Data-parallel training over MPI ranks, in the shape of Keras 3's keras.distribution:

    fastnn.distribution.set_distribution(fastnn.distribution.DataParallel())

at the top of a script, launched as `mpiexec -n 4 python train.py`, makes fit / evaluate /
predict run over the ranks; run without mpiexec, the same script trains as one process.

- batch_size stays the global batch (as Keras's DataParallel): every rank walks the same
  shuffled order (rank 0's, broadcast each epoch) and takes its contiguous slice of each
  global batch, so N ranks take the steps one process takes.
- Each rank scales its gradients by its share of the global batch; one allreduce (sum) of the
  whole flat gradient buffer (the trainer's arena: every trainable weight's gradient, back to
  back, and one slot after it for whether a rank's loss was not finite) then gives the global
  batch's gradient on every rank, which takes the same optimizer step, or every rank skips it.
  Initial weights and optimizer state come from rank 0. A Dense stack keeps the fused C path
  (fastnn/stack.py): it calls the allreduce between each step's backward pass and update.
- When every rank runs on one machine, the parameters and optimizer state live in shared
  memory (_SharedArena) and each rank's backward pass writes its own row of a shared
  gradient window: each rank sums and updates only its 1/N of the weights, and all read the
  same parameters (FASTNN_MPI_SHARDED=0: every rank updates all of them, as across machines).
  That step runs in C (_core.SharedStep) with barriers of its own in the window; a rank
  waiting there for a rank whose process ended raises an error naming it.
- Metrics and losses are reduced at the end of each epoch (their accumulators summed), so
  History, callbacks and the epoch's progress-bar line show global values, and EarlyStopping
  or ReduceLROnPlateau decide the same on every rank. Per-batch progress shows rank 0's running
  values. Only rank 0 prints progress and writes checkpoint, backup and CSV files.
- evaluate and predict shard the rows and gather the results in order.
- An exception on any rank aborts the whole job (MPI_Abort), naming the rank: no rank hangs
  in a collective waiting for it.

mpi4py and an MPI library are optional (`pip install "fastnn[mpi]"`); nothing imports them
until a DataParallel is made."""
import atexit
import contextlib
import os
import sys
import time
import traceback

import numpy as np

from ..backend import get_ops

_DISTRIBUTION = None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "fastnn.distribution needs mpi4py and an MPI library: pip install "
            f"'fastnn[mpi]' (mpi4py and mpich from PyPI); importing mpi4py failed: {exc}"
        ) from None
    return MPI


class DataParallel:
    """Keras's DataParallel over the processes of an MPI job (one process per rank). Each
    process computes on its own CPU (or GPU) as usual; device_mesh and devices (Keras's way to
    name the accelerators of one process) have no meaning here.

    Args:
        device_mesh: Accepted for Keras compatibility (no meaning across MPI processes). Defaults to
            `None`.
        devices: Accepted for Keras compatibility (no meaning across MPI processes). Defaults to
            `None`.
        auto_shard_dataset: Whether each rank takes its slice of every global batch (Keras's
            default).
        comm: The MPI communicator (an `mpi4py` one); `None`: `MPI.COMM_WORLD`.

    Example:

    ```python
    fastnn.distribution.set_distribution(fastnn.distribution.DataParallel())
    model.fit(x, y, batch_size=256)   # run with: mpiexec -n 4 python train.py
    ```
    """

    def __init__(self, device_mesh=None, devices=None, auto_shard_dataset=True, comm=None):
        if device_mesh is not None or devices is not None:
            raise ValueError("DataParallel: fastnn distributes over MPI processes (mpiexec -n N "
                             "python script.py), one per rank; device_mesh and devices are "
                             f"not supported (got device_mesh={device_mesh!r}, "
                             f"devices={devices!r})")
        if auto_shard_dataset is not True:
            raise ValueError("DataParallel: auto_shard_dataset=False (data already split per "
                             "process) is not supported: pass every rank the whole data set; "
                             "each takes its slice of every global batch")
        mpi = _mpi()
        self._mpi = mpi
        self.comm = comm if comm is not None else mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.auto_shard_dataset = True
        self._node_sum = _NodeSum.for_comm(self.comm, mpi) if self.size > 1 else None
        self._arenas = {}       # id(model): its _SharedArena

    def __repr__(self):
        return f"<DataParallel rank={self.rank} size={self.size}>"

    # ---- what the trainer calls ------------------------------------------------------------
    def broadcast_model(self, model):
        """Rank 0's weights (trainable and not) and optimizer state on every rank."""
        weights = self.comm.bcast(model.get_weights() if self.rank == 0 else None, root=0)
        if self.rank != 0:
            model.set_weights(weights)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            state = self.comm.bcast(optimizer.snapshot() if self.rank == 0 else None, root=0)
            if self.rank != 0:
                optimizer.restore(state)

    def broadcast(self, value):
        """A small Python value (an int, a flag) from rank 0."""
        return self.comm.bcast(value, root=0)

    def shared_order(self, order):
        """Rank 0's shuffled order of the rows (every rank then slices the same batches)."""
        if order is None:
            return None
        order = np.ascontiguousarray(order, np.int64)
        self.comm.Bcast(order, root=0)
        return order

    def local_rows(self, start, stop):
        """This rank's contiguous part [start, stop) of the global batch [start, stop)."""
        n = stop - start
        base, extra = divmod(n, self.size)
        first = start + self.rank * base + min(self.rank, extra)
        return first, first + base + (self.rank < extra)

    def reduce_gradients(self, buffer, share, bad=False):
        """buffer: the gradient arena (this rank's gradients, for its rows) and one slot after
        it. The gradients times this rank's share of the global batch, and in the slot whether
        this rank's loss was not finite (`bad`), are summed over the ranks in place in one
        allreduce: the global batch's gradient on every rank. Returns whether any rank's loss
        was not finite (then no rank takes the step). When buffer is the gradient row of a
        shared arena (share_arena), this rank then holds the sum of its shard only, and
        apply_shard takes the step."""
        arena = self._arena_of(buffer)
        if arena is not None:
            return arena.reduce(share, bad)
        ops = get_ops()
        buffer[-1] = 1.0 if bad else 0.0
        host = ops.to_numpy(buffer) if ops.is_device else buffer
        host = np.ascontiguousarray(host, np.float32)
        # (the flag times a share > 0 stays nonzero; a rank without rows passes 1.0)
        self.allreduce_sum(host, share)
        if host is not buffer:
            buffer[...] = ops.asarray(host)
        return bool(host[-1] != 0)

    def allreduce_sum(self, host, scale=1.0):
        """The float32 NumPy array `host` (times `scale`) summed over the ranks, in place (MPI
        releases the GIL meanwhile). When every rank runs on this machine, a large buffer goes
        through shared memory instead (_NodeSum), scaled as it is copied there."""
        if self._node_sum is not None and host.size >= _NodeSum.MIN_SIZE and \
                self._node_sum(host, scale):
            return
        if scale != 1.0:
            host *= np.float32(scale)
        self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)

    def step_reducer(self, buffer, optimizer):
        """What the fused Dense stack calls between each step's backward pass and its update
        (fastnn/stack.py, fnn_stack_data.reduce) with the step's optimizer scalars: buffer
        (the gradient arena, already this rank's share, and its flag slot) summed over the
        ranks in place (returns 0, the stack updates the arena); with a shared arena, this
        rank's shard summed and stepped (returns 1, or 0 with the flag set: skip the step),
        by the arena's _core.SharedStep itself when it has one (the stack then calls C)."""
        arena = self._arena_of(buffer)
        if arena is None:
            return lambda scalars: self.allreduce_sum(buffer)
        native = arena.native(optimizer)
        if native is not None:      # (the stack runs it without returning to Python)
            return native

        def reduce_and_step(scalars):
            if arena.reduce(1.0, bool(buffer[-1])):
                buffer[-1] = 1.0
                return 0
            arena.step(optimizer, scalars)
            return 1
        return reduce_and_step

    def exchange_buffer(self, buffer, reducer, floats):
        """Collective, before a fused Dense stack's run: with a shared arena whose step is in
        C (`reducer`, from step_reducer, a _core.SharedStep), a float32 buffer of `floats`
        values the ranks share, in which they exchange each layer's inputs and output
        gradients instead of summing gradients (fnn_stack_data.exchange); None otherwise, or
        with FASTNN_MPI_EXCHANGE=0."""
        from .. import _core
        if not isinstance(reducer, _core.SharedStep) or \
                os.environ.get("FASTNN_MPI_EXCHANGE", "1") == "0":
            return None
        arena = self._arena_of(buffer)
        return None if arena is None else arena.exchange(floats)

    def defer_weight_gradients(self, model, batch_size):
        """Collective, at the start of a fit that takes the general path (not the fused Dense
        stack) with a shared arena: its big Dense kernels' gradients are not summed over the
        ranks; each rank writes its rows' inputs and output gradients of such a layer into a
        window the ranks share, and computes its shard of the kernel's gradient from every
        rank's rows (_DeferredKernel, SharedStep.defer). Not with FASTNN_MPI_EXCHANGE=0."""
        arena = self._arenas.get(id(model))
        if arena is not None and arena.holds(model) and \
                os.environ.get("FASTNN_MPI_EXCHANGE", "1") != "0":
            arena.defer(model, batch_size, self._trace)

    def undefer_weight_gradients(self, model):
        """At the end of a fit: the model's kernels sum their gradients again (a later
        train_on_batch may hold more rows than the fit's regions)."""
        arena = self._arenas.get(id(model))
        if arena is not None:
            arena.undefer()

    # ---- parameters and optimizer state shared by the ranks of one machine -----------------
    def share_arena(self, model):
        """Collective, at the start of fit: on one machine, the model's parameters and its
        optimizer's state move into memory the ranks share (rank 0's values), and each rank's
        gradients into its row of a shared window. Each step, each rank sums its 1/N of the
        gradients over the rows and updates that 1/N of the parameters and state (the update
        is split, not repeated, and no rank copies a sum back: every rank reads the same
        parameters). Returns whether the model's arena is shared; not when the ranks span
        machines, FASTNN_MPI_SHARDED=0, or the step needs the whole arena on each rank (the
        optimizer's weight average, constraints, weight penalties, a device backend)."""
        arena = self._arenas.get(id(model))
        if arena is not None and arena.holds(model):
            arena.node.Barrier()    # (broadcast_model may just have written the same values)
            return True
        if self._node_sum is None or os.environ.get("FASTNN_MPI_SHARDED", "1") == "0" or \
                not _SharedArena.fits(model):
            return False
        try:        # (collective: no rank allocates unless /dev/shm has room on every one)
            stat = os.statvfs("/dev/shm")
            room = stat.f_bavail * stat.f_frsize >= 2 * _SharedArena.bytes(model, self.size)
        except OSError:
            room = False
        if not self.comm.allreduce(room, op=self._mpi.LAND):
            return False
        self._arenas[id(model)] = _SharedArena(self._node_sum.node, self._mpi, model)
        return True

    def apply_shard(self, model):
        """The optimizer step of this rank's shard of a shared arena (after reduce_gradients
        summed it); returns False (nothing done) when the model's arena is not shared."""
        arena = self._arenas.get(id(model))
        if arena is None or not arena.holds(model):
            return False
        optimizer = model.optimizer
        lr = optimizer.learning_rate
        decay = np.float32(lr * optimizer.weight_decay) if optimizer.weight_decay else 0.0
        scalars = (decay,) + tuple(optimizer._scalars(lr, optimizer.iterations + 1))
        arena.step(optimizer, np.array(scalars, np.float32))
        optimizer.iterations += 1
        return True

    def _arena_of(self, buffer):
        for arena in self._arenas.values():
            if arena.row is buffer or (arena.row.ctypes.data == buffer.ctypes.data and
                                       arena.row.size == buffer.size):
                return arena
        return None

    # ---- BatchNormalization over the global batch ------------------------------------------
    # One process normalizes each global batch by its own statistics; so do the ranks: each
    # layer's moments, and in the backward pass its two gradient sums, are combined over the
    # ranks (in rank order, so every rank gets the same bits). The trainer tells each step the
    # factor its gradients are scaled by before they are summed (begin_step), and a rank with
    # no rows in a global batch takes part with nothing (rankless_layers).
    def begin_step(self, grad_scale):
        """A training step starts; this rank's gradients will be scaled by grad_scale."""
        self.grad_scale = grad_scale
        for arena in self.__dict__.get("_arenas", {}).values():
            arena.begin_step()
        if getattr(self, "_bn_now", None):
            self._bn_last = self._bn_now
        self._bn_now = ([], [])

    def batch_moments(self, layer, count, mean, var):
        """(rows, mean, biased variance) of the global batch at a BatchNormalization layer
        from this rank's `count` rows' mean and var (float64 arrays)."""
        self._trace(0).append((layer, mean.shape))
        parts = self._gather_checked(layer, (int(count), mean, var))
        total = sum(p[0] for p in parts)
        if total == 0:
            return 0, mean * 0, var * 0
        g_mean = _sum([p[0] * p[1] for p in parts]) / total
        g_var = _sum([p[0] * (p[2] + (p[1] - g_mean) ** 2) for p in parts]) / total
        return total, g_mean, g_var

    def batch_sums(self, layer, sums):
        """The sum over the ranks of a BatchNormalization layer's backward sums (float64)."""
        self._trace(1).append((layer, sums.shape))
        return _sum(self._gather_checked(layer, sums))

    def rankless_layers(self, backward, model):
        """On a rank without rows in this global batch: its part in what the others' layers
        run together, forward (backward=False) or backward, in the order this rank's last
        step ran it: the BatchNormalization layers' collectives, the split passes of the
        deferred Dense kernels (_DeferredKernel)."""
        last = getattr(self, "_bn_last", None)
        if last is None and any(getattr(layer, "_synchronizes", False)
                                for layer in model._layers):
            raise RuntimeError(
                f"fastnn.distribution: rank {self.rank} has no rows in a global batch before "
                "any step with rows, and its BatchNormalization layers must take part in the "
                "others' statistics: use a batch_size of at least the number of ranks "
                f"({self.size})")
        forward_trace, backward_trace = last or ([], [])
        for layer, shape in backward_trace if backward else forward_trace:
            if isinstance(layer, _DeferredKernel):
                layer.rankless(backward)
                continue
            zeros = np.zeros(shape, np.float64)
            if backward:
                self.batch_sums(layer, zeros)
            else:
                _, mean, var = self.batch_moments(layer, 0, zeros, zeros)
                ops = get_ops()
                layer.update_moving_statistics(ops.asarray(mean.astype(np.float32)),
                                               ops.asarray(var.astype(np.float32)))

    def _trace(self, which):
        """This step's list of what its layers ran together with the other ranks, forward
        (which=0) or backward (1): (BatchNormalization layer, shape) or (_DeferredKernel,
        None)."""
        if getattr(self, "_bn_now", None) is None:
            self._bn_now = ([], [])
        return self._bn_now[which]

    def _gather_checked(self, layer, payload):
        parts = self.comm.allgather((layer.name, payload))
        names = {name for name, _ in parts}
        if len(names) != 1:
            raise RuntimeError(f"fastnn.distribution: the ranks reached different "
                               f"BatchNormalization layers in one step ({sorted(names)}): "
                               "every rank must run the same layers in the same order")
        return [p for _, p in parts]

    def any(self, flag):
        """Whether `flag` is true on any rank (a decision every rank then takes alike)."""
        return bool(self.comm.allreduce(bool(flag), op=self._mpi.LOR))

    @contextlib.contextmanager
    def global_metrics(self, metrics):
        """Within the block, the metrics hold the sum of every rank's accumulators (their
        results are the global ones); afterwards each holds its own again."""
        saved = [m.snapshot() for m in metrics]
        states = self.comm.allgather([_accumulators(m) for m in metrics])
        for k, m in enumerate(metrics):
            for name in states[0][k]:
                parts = [s[k][name] for s in states if s[k][name] is not None]
                if parts:
                    setattr(m, name, _sum(parts))
        try:
            yield
        finally:
            for m, state in zip(metrics, saved):
                m.restore(state)

    def gather_rows(self, part):
        """Every rank's rows (NumPy arrays), concatenated in rank order, on every rank."""
        parts = self.comm.allgather(part)
        return np.concatenate(parts, axis=0) if parts else part

    def abort(self, exc):
        """Stop every rank: this one raised (an unhandled exception)."""
        # The error itself first, in one write: mpiexec may drop the rest of a rank's output
        # once the abort tears the job down.
        sys.stderr.write(f"fastnn.distribution: rank {self.rank} of {self.size} raised "
                         f"{type(exc).__name__}: {exc}; aborting all ranks\n" +
                         "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        sys.stderr.flush()
        time.sleep(0.2)     # time for mpiexec to forward it
        self.comm.Abort(1)


class _NodeSum:
    """An allreduce (sum) of float32 buffers for ranks that share one machine, through an
    MPI-3 shared-memory window: each rank copies its buffer into its row of the window, sums
    its 1/N of the columns over the rows in rank order into the result row, and copies the
    result row back. About half the memory traffic of MPI's own shared-memory allreduce at
    the gradient sizes of small models (2 ranks, 2 MiB: 183 against 252 us at best, 0.4 MiB:
    66 against 131 us), and every rank reads the same sums (bit-identical weights). When the
    rows are small (N x n <= ONE_PHASE), each rank instead sums all the rows, in the same
    order, straight into its buffer: one barrier instead of two, no copy back (0.4 MiB on 2
    ranks: about 55 against 75 us at best); its rows alternate between two sets, so a rank
    that starts the next sum cannot overwrite rows another is still reading."""
    MIN_SIZE = 16384        # floats; below, MPI's allreduce (a few us) is faster
    ONE_PHASE = 1 << 18     # floats read by each rank's full sum; above, the two phases

    def __init__(self, node, mpi):
        self.node, self.mpi, self.windows, self.calls = node, mpi, {}, 0
        atexit.register(self.free)

    @classmethod
    def for_comm(cls, comm, mpi):
        """A _NodeSum when all ranks of comm share one machine, else None (collective)."""
        if os.environ.get("FASTNN_MPI_SHARED_MEMORY", "1") == "0":
            return None
        node = comm.Split_type(mpi.COMM_TYPE_SHARED)
        if not comm.allreduce(node.Get_size() == comm.Get_size(), op=mpi.LAND):
            node.Free()
            return None
        return cls(node, mpi)

    def _window(self, n):
        """(window, its rows as a NumPy array) for buffers of n floats, or None when the
        machine's shared memory (/dev/shm) lacks room for it on some rank."""
        if n in self.windows:
            return self.windows[n]
        # (collective: every rank sums buffers of the same sizes, in the same order)
        ranks = self.node.Get_size()
        need = 4 * n * (2 * ranks if n * ranks <= self.ONE_PHASE else ranks + 1)
        try:
            stat = os.statvfs("/dev/shm")
            room = stat.f_bavail * stat.f_frsize >= 2 * need
        except OSError:
            room = False
        got = None
        if self.node.allreduce(room, op=self.mpi.LAND):
            win = self.mpi.Win.Allocate_shared(need if self.node.rank == 0 else 0, 4,
                                               comm=self.node)
            memory, _ = win.Shared_query(0)
            rows = np.ndarray(buffer=memory, dtype=np.float32, shape=(need // (4 * n), n))
            win.Lock_all(self.mpi.MODE_NOCHECK)
            got = (win, rows)
        self.windows[n] = got
        return got

    def _sync(self, win):
        win.Sync()
        self.node.Barrier()
        win.Sync()

    def __call__(self, host, scale=1.0):
        """Sum host (times scale) over the ranks in place; False (host untouched) when there
        is no shared window for its size: MPI's allreduce then sums it."""
        n, ranks, rank = host.size, self.node.Get_size(), self.node.rank
        window = self._window(n)
        if window is None:
            return False
        win, rows = window
        flat = host.reshape(-1)
        one_phase = len(rows) == 2 * ranks
        mine = rank + ranks * (self.calls & 1) if one_phase else rank
        self.calls += 1
        if scale != 1.0:
            np.multiply(flat, np.float32(scale), out=rows[mine])
        else:
            rows[mine] = flat
        self._sync(win)         # every rank's row is written
        if one_phase:
            part = rows[mine - rank:mine - rank + ranks]
            np.add(part[0], part[1], out=flat)
            for k in range(2, ranks):
                flat += part[k]
            return True
        lo, hi = n * rank // ranks, n * (rank + 1) // ranks
        out = rows[ranks, lo:hi]
        np.add(rows[0, lo:hi], rows[1, lo:hi], out=out)
        for k in range(2, ranks):
            out += rows[k, lo:hi]
        self._sync(win)         # every part of the result row is written
        flat[...] = rows[ranks]
        return True

    def free(self):
        for window in self.windows.values():
            if window is not None:
                window[0].Unlock_all()
                window[0].Free()
        self.windows = {}


class _SharedArena:
    """A model's parameters, its optimizer's slots and every rank's gradient row (and flag)
    in one MPI-3 shared-memory window of the ranks of one machine (DataParallel.share_arena).
    Each step: each rank's backward pass writes its row; a barrier; each rank sums its shard
    [lo, hi) of the columns over the rows (in rank order) and updates that shard of the
    parameters and slots; a barrier. Both barriers stand between a write and the reads of
    another rank: the gradient rows before the sums, the updated parameters before the next
    forward pass.
    A step of a small model takes ~50-100 us, as long as MPI's barriers and the Python around
    them: unless the optimizer clips by norms (the norms need the whole gradient), the step
    runs in C (_core.SharedStep, csrc/shard.c; the fused Dense stack calls it without
    returning to Python), its barriers a spin on counters at the window's end, where each rank
    also writes its process id: a rank waiting there for one whose process ended raises an
    error naming it (then the abort of set_distribution) instead of waiting forever.
    FASTNN_MPI_SPIN=0 keeps the step in Python, with MPI's barriers.
    The fused Dense stack goes further with such a step: its ranks exchange activations in a
    window of their own (exchange(); see fnn_stack_data.exchange in csrc/fastnn.h), each
    computing its shard's gradient over the whole global batch: no gradient rows are summed."""

    def __init__(self, node, mpi, model):
        self.node, self.mpi = node, mpi
        ranks, rank = node.Get_size(), node.rank
        params, optimizer = model._params, model.optimizer
        n = params.size
        names = sorted(optimizer.slots)
        at, stride, per = self.layout(n, len(names), ranks)
        self.win = mpi.Win.Allocate_shared(4 * per if rank == 0 else 0, 4, comm=node)
        memory, _ = self.win.Shared_query(0)
        flat = np.ndarray(buffer=memory, dtype=np.float32, shape=(per,))
        self.win.Lock_all(mpi.MODE_NOCHECK)
        atexit.register(self.free)
        shared = flat[at[0]:at[0] + n]
        slots = {name: flat[at[1 + k]:at[1 + k] + n] for k, name in enumerate(names)}
        start = at[-2]
        self.rows = flat[start:start + ranks * stride].reshape(ranks, stride)
        # the C barrier's arrival count and generation, then each rank's process id
        self.control = flat[at[-1]:at[-1] + 2 + ranks].view(np.uint32)
        if rank == 0:
            self.control[:2] = 0
        self.control[2 + rank] = os.getpid()
        # every rank: its layers' weights and gradients, and the optimizer's slots, become
        # views of the window (each rank writes the same values: broadcast_model made them
        # rank 0's; the barrier below ends the writes before any step reads them)
        row = self.rows[rank, :n + 1]
        for layer in model._layers:
            if layer.trainable:
                for name in layer._trainable_names:
                    start, stop = model._spans[id(layer), name]
                    shape = layer._vars[name].shape
                    layer._rebind(name, shared[start:stop].reshape(shape),
                                  row[start:stop].reshape(shape))
        if rank == 0:
            for name in names:
                slots[name][...] = optimizer.slots[name]
        self.rows[rank] = 0
        self.sync()
        self.watch = all(_visible(int(pid)) for k, pid in enumerate(self.control[2:])
                         if k != rank)
        self.native_step, self.native_key = None, None
        model._params, model._grads, model._grads_and_flag = shared, row[:n], row
        model._arena_key = tuple((id(layer), name, id(layer._vars[name]))
                                 for layer in model._layers if layer.trainable
                                 for name in layer._trainable_names)
        optimizer.slots.update(slots)
        self.params, self.row, self.optimizer, self.slots = shared, row, optimizer, slots
        self.lo, self.hi = n * rank // ranks, n * (rank + 1) // ranks
        self.sums = None        # the whole summed gradient (norm clipping)
        self.xwin = self.xbuf = None    # the fused stack's exchange buffer (exchange())
        self.deferred, self.outer = [], []  # Dense layers whose kernels defer (defer())

    @staticmethod
    def layout(n, n_slots, ranks):
        """Where the window's parts start (float offsets: the parameters, each slot, the rows,
        the control words), the rows' stride and the window's floats. Each part and row is
        64-byte aligned at its own offset in a 4 KB page (256 B apart), as Ops.arena places
        a model's buffers: Adam's update over a rank's shard took 48 us a step with the parts
        back to back (vector loads split over cache lines, 4K aliasing), ~25 us so placed."""
        page, at, end = 1024, [], 0
        for k in range(n_slots + 3):
            start = -(-end // page) * page + 64 * k
            at.append(start)
            end = start + (n if k <= n_slots else 0)
        stride = -(-(n + 2) // page) * page + 64
        at[-1] = -(-(at[-2] + ranks * stride) // 16) * 16
        return at, stride, at[-1] + 2 + ranks

    @staticmethod
    def bytes(model, ranks):
        """The window's size: parameters, slots, a row per rank (gradients, flag, scale) and
        the control words."""
        return 4 * _SharedArena.layout(model._params.size, len(model.optimizer.slots),
                                       ranks)[2]

    @staticmethod
    def fits(model):
        """Whether a step of this model can run on shards of its arena (the same answer on
        every rank: it depends on the model and optimizer only)."""
        optimizer = getattr(model, "optimizer", None)
        n = model._params.size
        return not get_ops().is_device and optimizer is not None and \
            optimizer.kind is not None and not optimizer.use_ema and \
            all(slot.size == n for slot in optimizer.slots.values()) and \
            not model.__dict__.get("_penalties") and \
            not model.__dict__.get("_constrained")

    def holds(self, model):
        return model._params is self.params and model.optimizer is self.optimizer and \
            all(model.optimizer.slots.get(name) is slot for name, slot in self.slots.items())

    def sync(self):
        self.win.Sync()
        self.node.Barrier()
        self.win.Sync()

    def native(self, optimizer):
        """The _core.SharedStep that takes this arena's steps for `optimizer`, or None (the
        step stays in Python: norm clipping, FASTNN_MPI_SPIN=0, a build without atomics). The
        same answer on every rank (it depends on the optimizer and the environment only)."""
        mode, limit = optimizer.clipping()
        key = (optimizer.kind, mode, limit)     # (holds(): the slots are the arena's)
        if key != self.native_key:
            from .. import _core
            slots = tuple(optimizer.fused_slots())
            self.native_key, self.native_step = key, None
            if mode in (0, 1) and os.environ.get("FASTNN_MPI_SPIN", "1") != "0" and \
                    _core.shard_supported():
                self.native_step = _core.SharedStep(
                    optimizer.kind, self.params, slots, self.rows, self.control,
                    self.node.rank, mode, limit, self.watch)
                self.native_step.defer(self.outer)
        return self.native_step

    def reduce(self, scale, bad):
        """This rank's row and flag are written, its gradients to be scaled by `scale` (its
        share of the global batch): sum its shard of the scaled rows into the row's shard (no
        other rank reads that part of this row); with norm clipping, every rank sums the
        whole gradient (the norms need it). Returns whether any rank's loss was not finite
        (then no rank steps, after a second barrier)."""
        for layer in self.deferred:
            layer._deferred.end()
        native = self.native(self.optimizer)
        if native is not None:
            return native.reduce(scale, bool(bad))
        rows, rank, n = self.rows, self.node.rank, self.row.size - 1
        self.row[n] = 1.0 if bad else 0.0
        rows[rank, n + 1] = scale
        self.sync()
        if rows[:, n].any():
            self.sync()     # (no rank writes its row again before every rank has read these)
            return True
        if self.optimizer.clipping()[0] in (2, 3):
            if self.sums is None:
                self.sums = np.empty(n, np.float32)
            self.sums[...] = rows[rank, :n]
            self._add_others(self.sums, 0, n)
        else:
            self._add_others(self.row[self.lo:self.hi], self.lo, self.hi)
        return False

    def _add_others(self, out, lo, hi):
        """out (this rank's row over [lo, hi)) becomes the sum of every rank's row times its
        scale there: this rank's first, then the others in rank order. With one scale for all
        (every full global batch), one multiply of the sum."""
        rows, rank, n = self.rows, self.node.rank, self.row.size - 1
        scales = rows[:, n + 1]
        same = bool((scales == scales[0]).all())
        if not same and scales[rank] != 1.0:
            out *= scales[rank]
        for k in range(len(rows)):
            if k != rank:
                out += rows[k, lo:hi] if same else rows[k, lo:hi] * scales[k]
        if same and scales[0] != 1.0:
            out *= scales[0]

    def step(self, optimizer, scalars):
        """This rank's shard of the optimizer step with scalars (float32: the decay factor,
        then the kind's own), as apply() over the whole arena would take it; then a barrier
        (every shard updated before any rank's next forward pass)."""
        native = self.native_step       # (as reduce(), just before, chose it)
        if native is not None:
            native.update(scalars)
            return
        lo, hi = self.lo, self.hi
        mode, limit = optimizer.clipping()
        grads = self.row[lo:hi]
        if mode in (2, 3):      # the norms of the whole summed gradient, then clip by value 0
            sums = self.sums
            grads = sums[lo:hi] * _clip_scales(sums, optimizer._sizes, mode, limit)[lo:hi]
            mode, limit = 0, 0.0
        slots = tuple(None if s is None else s[lo:hi] for s in optimizer.fused_slots())
        get_ops().optimizer_update(optimizer.kind, self.params[lo:hi], grads, slots, scalars,
                                   mode, limit, [hi - lo])
        self.sync()

    # a Dense kernel of at least this many weights has its gradient computed by shards from
    # the ranks' rows (defer): the CNN's 5408 x 100 kernel's partial gradients were 2.2 MB a
    # rank a step to write and sum
    DEFER_MIN = 65536

    def defer(self, model, batch_size, trace):
        """Collective: the model's big Dense kernels (2-D inputs, one call a step) get their
        gradient by shards from every rank's rows (_DeferredKernel) while this arena's step is
        in C; their regions in the exchange window hold ceil(batch / ranks) rows a rank. When
        a full global batch gives every rank rows, their forward products and input gradients
        are split by kernel rows too (SharedStep.split_forward/_backward), each rank reading
        only the kernel rows it updates; trace(0 / 1) is this step's list of what the layers
        run with the other ranks, forward / backward (DataParallel._trace)."""
        ranks, rank = self.node.Get_size(), self.node.rank
        rows = -(-batch_size // ranks)
        layers = [layer for layer in model._layers   # (a Dense, not a subclass of it)
                  if type(layer).__dict__.get("_defers_kernel_gradient") and layer.trainable and
                  layer.kernel.size >= self.DEFER_MIN and len(layer._build_shape or ()) == 2
                  and len(layer._inbound_nodes) <= 1]
        self.undefer()
        if not layers:
            return
        split = batch_size >= ranks and os.environ.get("FASTNN_MPI_SPLIT", "1") != "0"
        regions = [(("count", (ranks,)), ("x", (ranks, rows, d_in)), ("dz", (ranks, rows, d_out)))
                   + ((("z_parts", (ranks, ranks, rows, d_out)), ("dx_all", (ranks, rows, d_in)))
                      if split else ())
                   for d_in, d_out in (layer.kernel.shape for layer in layers)]
        aligned = [-(-int(np.prod(shape)) // 16) * 16 for parts in regions for _, shape in parts]
        flat = self.exchange(sum(aligned))
        at = 0
        for layer, parts in zip(layers, regions):
            views = {}
            for name, shape in parts:      # (each region 64-byte aligned)
                size = int(np.prod(shape))
                views[name] = flat[at:at + size].reshape(shape)
                at += -(-size // 16) * 16
            views["count"][rank] = 0
            kernel_at = model._spans[id(layer), "kernel"][0]
            layer._deferred = _DeferredKernel(views, rank, kernel_at, self, trace)
            self.deferred.append(layer)
            self.outer.append((kernel_at, rows, views["count"], views["x"], views["dz"]) +
                              ((views["z_parts"], views["dx_all"]) if split else ()))
        self.outer.sort(key=lambda kernel: kernel[0])
        self.native_key = None      # (the next native() applies them)
        self.node.Barrier()

    def undefer(self):
        """No kernel defers any more (the fit is over, or its regions are about to go)."""
        for layer in self.deferred:
            layer.__dict__.pop("_deferred", None)
        if self.outer:
            self.native_key = None  # (the next native() is a SharedStep without them)
        self.deferred, self.outer = [], []

    def begin_step(self):
        """Before a training step: the deferred kernels defer while the step is in C."""
        if self.deferred:
            native = self.native(self.optimizer)
            for layer in self.deferred:
                layer._deferred.begin(native)

    def split_index(self, kernel_at):
        """The native step's index of the deferred kernel at `kernel_at` (arena order)."""
        return [kernel[0] for kernel in self.outer].index(kernel_at)

    def exchange(self, floats):
        """Collective: a float32 buffer of at least `floats` values in a window of its own
        that the ranks share (kept for the next runs; every rank asks for the same size)."""
        if self.xwin is None or self.xbuf.size < floats:
            self.undefer()
            self._free_exchange()
            self.xwin = self.mpi.Win.Allocate_shared(
                4 * floats if self.node.rank == 0 else 0, 4, comm=self.node)
            memory, _ = self.xwin.Shared_query(0)
            self.xbuf = np.ndarray(buffer=memory, dtype=np.float32, shape=(floats,))
            self.xwin.Lock_all(self.mpi.MODE_NOCHECK)
            self.node.Barrier()
        return self.xbuf

    def _free_exchange(self):
        if self.xwin is not None:
            self.xbuf = None
            self.xwin.Unlock_all()
            self.xwin.Free()
            self.xwin = None

    def free(self):
        self._free_exchange()
        if self.win is not None:
            self.win.Unlock_all()
            self.win.Free()
            self.win = None


class _DeferredKernel:
    """A Dense layer's part in SharedStep.defer: this rank's regions of the exchange window
    for its rows' inputs (x) and output gradients (dz), and every rank's row count. While
    `active` (the arena's step is in C), the layer's backward pass fills them instead of
    computing its kernel's gradient. With the split passes (z_parts, dx_all), its forward
    product and input gradient are computed by kernel rows across the ranks too."""

    def __init__(self, views, rank, kernel_at, arena, trace):
        self.x, self.dz, self.count = views["x"][rank], views["dz"][rank], views["count"]
        self.dx_all = views["dx_all"][rank] if "dx_all" in views else None
        self.rank, self.kernel_at, self.arena, self.trace = rank, kernel_at, arena, trace
        self.active, self.native, self.forward_split = False, None, False

    def begin(self, native):
        """A training step starts; native: the arena's SharedStep, or None (the step in
        Python: the kernel's gradient is computed and summed as any other)."""
        self.active, self.forward_split = native is not None, False
        self.native = native if self.dx_all is not None else None
        self.count[self.rank] = 0       # (a rank without rows this step adds none)

    def rows(self, x):
        """x's rows into this rank's region (a view of it returned, for dz alike)."""
        n = x.shape[0]
        if n > self.x.shape[0]:
            raise RuntimeError(f"fastnn.distribution: a deferred Dense kernel got {n} rows, "
                               f"more than the {self.x.shape[0]} its region holds")
        if not (self.forward_split and n == self.count[self.rank]):
            self.x[:n] = x
            self.count[self.rank] = n
        return self.x[:n], self.dz[:n]

    def split_forward(self, x, z):
        """Under the split passes (else False): x's rows into this rank's region and z (rows x
        d_out) their product with the kernel, each rank computing its kernel rows' part."""
        if self.native is None:
            return False
        self.rows(x)
        self.trace(0).append((self, None))
        self.native.split_forward(self.arena.split_index(self.kernel_at), z)
        self.forward_split = True
        return True

    def split_backward(self, n):
        """After the backward pass wrote this rank's n rows of dz (forward split): their
        input gradients (a view of dx_all), each rank computing its kernel rows' columns."""
        self.trace(1).append((self, None))
        self.native.split_backward(self.arena.split_index(self.kernel_at))
        return self.dx_all[:n]

    def end(self):
        """The step's backward pass is over: no split pass outside a step (a forward pass
        in training mode on one rank alone must not wait for the others)."""
        self.active, self.native = False, None

    def rankless(self, backward):
        """A step without rows here: this rank's kernel rows' part of the others' rows."""
        if self.native is None:     # (no rank splits this step)
            return
        self.count[self.rank] = 0
        if backward:
            self.split_backward(0)
        else:
            self.trace(0).append((self, None))
            self.native.split_forward(self.arena.split_index(self.kernel_at),
                                      np.empty((0, self.dz.shape[1]), np.float32))


def _visible(pid):
    """Whether the process `pid` is visible from here (a peer in another pid namespace is not:
    then no rank is checked for being alive)."""
    if os.name == "nt":     # (os.kill would end the process there)
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, AttributeError, ValueError):
        return False
    return pid > 0


def _clip_scales(sums, sizes, mode, limit):
    """Each weight's factor under Keras's clipnorm (mode 2: by its variable's norm) or
    global_clipnorm (3: by the whole gradient's), as fnn_optimizer_update's clip_scale."""
    def factor(part, global_norm):
        norm = np.sqrt(np.dot(part.astype(np.float64), part.astype(np.float64)))
        if np.isnan(norm) or (global_norm and np.isinf(norm)):
            return np.float32(np.nan)
        return np.float32(limit / norm) if norm > limit else np.float32(1.0)
    if mode == 3:
        return np.full(sums.size, factor(sums, True), np.float32)
    return np.repeat(np.array([factor(sums[a:a + size], False) for a, size in
                               zip(np.cumsum([0] + list(sizes[:-1])), sizes)], np.float32),
                     sizes)


class _Recorder:
    """Records the attributes a metric's reset_state() assigns: its accumulators."""

    def __init__(self, metric):
        object.__setattr__(self, "_metric", metric)
        object.__setattr__(self, "names", [])

    def __getattr__(self, name):
        return getattr(self._metric, name)

    def __setattr__(self, name, value):
        self.names.append(name)


def _accumulators(metric):
    """{name: value as NumPy/float} of the state reset_state() sets (Mean: total, count;
    Precision: its confusion counts; ...): what adds up over ranks."""
    names = metric.__dict__.get("_accumulator_names")
    if names is None:
        recorder = _Recorder(metric)
        type(metric).reset_state(recorder)
        names = metric.__dict__["_accumulator_names"] = tuple(dict.fromkeys(recorder.names))
    to_numpy = get_ops().to_numpy
    out = {}
    for name in names:
        value = getattr(metric, name)
        if value is not None and not isinstance(value, (int, float, np.ndarray)):
            value = np.asarray(to_numpy(value))
        out[name] = value
    return out


def _sum(parts):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def set_distribution(value):
    """Make `value` (a DataParallel, or None for one process) the distribution fit, evaluate
    and predict use. With several ranks, an unhandled exception on any rank aborts the job.

    Args:
        value: A `DataParallel`, or `None` for one process.
    """
    global _DISTRIBUTION
    if value is not None and not isinstance(value, DataParallel):
        raise TypeError(f"set_distribution takes a DataParallel or None, got {value!r}")
    _DISTRIBUTION = value
    if value is not None and value.size > 1 and \
            getattr(sys.excepthook, "_fastnn_rank_abort", None) is None:
        previous = sys.excepthook

        def abort_all(kind, exc, tb):
            if isinstance(_DISTRIBUTION, DataParallel) and _DISTRIBUTION.size > 1:
                _DISTRIBUTION.abort(exc)
            previous(kind, exc, tb)
        abort_all._fastnn_rank_abort = True
        sys.excepthook = abort_all


def distribution():
    """The distribution set by set_distribution (None: one process)."""
    return _DISTRIBUTION


def active():
    """The distribution when it spans several ranks, else None (one process, nothing to do)."""
    d = _DISTRIBUTION
    return d if d is not None and d.size > 1 else None


def rank():
    """This process's rank in the distribution (0 without one).

    Returns:
        An int.
    """
    return 0 if _DISTRIBUTION is None else _DISTRIBUTION.rank


def size():
    """The number of processes in the distribution (1 without one).

    Returns:
        An int.
    """
    return 1 if _DISTRIBUTION is None else _DISTRIBUTION.size


def is_chief():
    """Whether this process prints and writes files: rank 0, or the only process."""
    return rank() == 0


def list_devices(device_type=None):
    """The ranks of this job, as Keras lists a process's devices.

    Args:
        device_type: `None` or `"cpu"` (fastnn distributes over CPU processes).

    Returns:
        A list of device names, `"cpu:<rank>"` for each rank.
    """
    if device_type not in (None, "cpu", "CPU"):
        raise ValueError(f"list_devices: fastnn distributes over CPU processes; got "
                         f"device_type={device_type!r}")
    return [f"cpu:{r}" for r in range(size())]

