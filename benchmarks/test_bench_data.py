"""Data inputs and training extras (issue 19): one fit(epochs=1) of the seed MLP
(784-128(relu)-10(softmax), Adam lr 1e-3, batch 32, 60k MNIST, shuffle=False) fed

- `arrays`: the NumPy arrays (the baseline); `arrays-control`: the same again, another model
  built the same way (the method's own floor: its ratio to arrays would be 1 without noise);
- `pydataset`: a fastnn.utils.PyDataset slicing the same arrays in memory (goal: within 10 %
  of arrays); `pydataset-workers2`: the same with 2 prefetching threads; `generator`: a Python
  generator of the same batches;
- `arrays-callback`: arrays plus a no-op per-batch callback (on_train_batch_end), and
  `arrays-metrics`: arrays with a second metric (goal for both: < 2 % over arrays);
- `arrays-l2`: arrays with `kernel_regularizer="l2"` on both Dense layers, `arrays-clipnorm`:
  arrays with Adam(clipnorm=1.0), `arrays-schedule`: arrays with Adam's learning rate an
  ExponentialDecay schedule (goal for all three: < 2 %; all run in the fused Dense stack).

    PYTHONPATH=. python -m pytest benchmarks/test_bench_data.py -q -p no:cacheprovider \\
        --benchmark-only

`python benchmarks/test_bench_data.py [--cpu] [rounds] [variant ...]` times every variant
once a round, in a new random order each round, in one process, and prints each variant's
best and median round and, the honest number on a shared host, the median of its per-round
ratios to the arrays round of the same round with their interquartile range (a slow spell
of the host slows both sides of a ratio; the order is shuffled so that neither side is
always the one run after the other). --cpu: process CPU time (time.process_time, every
thread of the process) instead of wall-clock time: robust to waiting for a shared core, and
comparable across thread counts only as CPU work (run with OMP_NUM_THREADS=1 for per-step
costs)."""
import os
import random
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as wl  # noqa: E402

VARIANTS = ("arrays", "arrays-control", "pydataset", "pydataset-workers2", "generator",
            "arrays-callback", "arrays-metrics", "arrays-l2", "arrays-clipnorm", "arrays-schedule")


def seed_mlp(keras, metrics=("accuracy",), regularizer=None, schedule=False, **optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(128, activation="relu", kernel_regularizer=regularizer),
        keras.layers.Dense(10, activation="softmax", kernel_regularizer=regularizer)])
    lr = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=1000, decay_rate=0.9) \
        if schedule else 1e-3
    model.compile(keras.optimizers.Adam(lr, **optimizer), "sparse_categorical_crossentropy",
                  metrics=list(metrics))
    return model


def epoch(variant, x, y):
    """Build + compile (untimed); the returned callable is one timed round: one epoch."""
    import fastnn as keras

    class Batches(keras.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def __len__(self):
            return -(-len(x) // wl.BATCH)

        def __getitem__(self, i):
            s = slice(i * wl.BATCH, (i + 1) * wl.BATCH)
            return x[s], y[s]

    class NoOp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    def generator():
        for i in range(0, len(x), wl.BATCH):
            yield x[i:i + wl.BATCH], y[i:i + wl.BATCH]

    model = seed_mlp(keras, ("accuracy", "sparse_top_k_categorical_accuracy")
                     if variant == "arrays-metrics" else ("accuracy",),
                     "l2" if variant == "arrays-l2" else None, variant == "arrays-schedule",
                     **({"clipnorm": 1.0} if variant == "arrays-clipnorm" else {}))
    if variant == "pydataset":
        return lambda: model.fit(Batches(), epochs=1, verbose=0, shuffle=False)
    if variant == "pydataset-workers2":
        return lambda: model.fit(Batches(workers=2), epochs=1, verbose=0, shuffle=False)
    if variant == "generator":
        return lambda: model.fit(generator(), epochs=1, verbose=0, shuffle=False)
    callbacks = [NoOp()] if variant == "arrays-callback" else None
    return lambda: model.fit(x, y, batch_size=wl.BATCH, epochs=1, verbose=0, shuffle=False,
                             callbacks=callbacks)


@pytest.mark.parametrize("variant", VARIANTS)
def test_data_inputs(benchmark, mnist, rounds, samples_cap, variant):
    x, y = mnist
    x, y = x[:samples_cap], y[:samples_cap]
    benchmark.group = "data inputs: 784-128-10 ADAM b32, 60k epoch"
    benchmark.extra_info.update(variant=variant, samples=len(x))
    benchmark.pedantic(epoch(variant, x, y), rounds=rounds, warmup_rounds=1, iterations=1)


def _quartiles(values):
    """(first quartile, median, third quartile), linearly interpolated."""
    v = sorted(values)

    def at(q):
        pos = q * (len(v) - 1)
        lo = int(pos)
        return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)
    return at(0.25), at(0.5), at(0.75)


def main(rounds=5, variants=VARIANTS, cpu=False):
    os.environ.setdefault("FASTNN_BACKEND", "cpu")
    x, y = wl.load_mnist_train(wl.data_dir())
    variants = ("arrays",) + tuple(v for v in variants if v != "arrays")
    clock = time.process_time if cpu else time.perf_counter
    times = {v: [] for v in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for r in range(rounds + 1):         # round 0 warms up
        shuffle(order)
        # each round's models built anew (untimed): a model's buffers land at other
        # addresses each time, which moved one model's epochs by ~3 % for a whole run when
        # each variant kept one model
        runs = {v: epoch(v, x, y) for v in order}
        for v in order:
            start = clock()
            runs[v]()
            if r:
                times[v].append(clock() - start)
    base = times["arrays"]
    print(f"{rounds} rounds, {'process CPU' if cpu else 'wall-clock'} time; ratio: the median "
          f"of the per-round ratios to arrays [interquartile range]")
    for v in variants:
        t = times[v]
        q1, med, q3 = _quartiles([a / b for a, b in zip(t, base)])
        print(f"{v:20s} min {min(t):.3f} s x{min(t) / min(base):.3f}   median "
              f"{_quartiles(t)[1]:.3f} s x{_quartiles(t)[1] / _quartiles(base)[1]:.3f}   "
              f"ratio x{med:.3f} [{q1:.3f}, {q3:.3f}]")


if __name__ == "__main__":
    args = sys.argv[1:]
    cpu = "--cpu" in args
    args = [a for a in args if a != "--cpu"]
    main(int(args[0]) if args else 5, args[1:] or VARIANTS, cpu)
