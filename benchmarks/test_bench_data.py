"""Data inputs and training extras (issue 19): one fit(epochs=1) of the seed MLP
(784-128(relu)-10(softmax), Adam lr 1e-3, batch 32, 60k MNIST, shuffle=False) fed

- `arrays`: the NumPy arrays (the baseline);
- `pydataset`: a fastnn.utils.PyDataset slicing the same arrays in memory (goal: within 10 %
  of arrays); `pydataset-workers2`: the same with 2 prefetching threads; `generator`: a Python
  generator of the same batches;
- `arrays-callback`: arrays plus a no-op per-batch callback (on_train_batch_end), and
  `arrays-metrics`: arrays with a second metric (goal for both: < 2 % over arrays);
- `arrays-l2`: arrays with `kernel_regularizer="l2"` on both Dense layers, `arrays-clipnorm`:
  arrays with Adam(clipnorm=1.0) (goal for both: < 2 %; both run in the fused Dense stack).

    PYTHONPATH=. python -m pytest benchmarks/test_bench_data.py -q -p no:cacheprovider \\
        --benchmark-only

`python benchmarks/test_bench_data.py [rounds] [variant ...]` prints each variant's best and
median round and their ratios to arrays', the variants timed in turn (round by round,
interleaved) in one process."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as wl  # noqa: E402

VARIANTS = ("arrays", "pydataset", "pydataset-workers2", "generator", "arrays-callback",
            "arrays-metrics", "arrays-l2", "arrays-clipnorm")


def seed_mlp(keras, metrics=("accuracy",), regularizer=None, **optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(128, activation="relu", kernel_regularizer=regularizer),
        keras.layers.Dense(10, activation="softmax", kernel_regularizer=regularizer)])
    model.compile(keras.optimizers.Adam(1e-3, **optimizer), "sparse_categorical_crossentropy",
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
                     "l2" if variant == "arrays-l2" else None,
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


def main(rounds=5, variants=VARIANTS):
    os.environ.setdefault("FASTNN_BACKEND", "cpu")
    x, y = wl.load_mnist_train(wl.data_dir())
    variants = ("arrays",) + tuple(v for v in variants if v != "arrays")
    runs = {v: epoch(v, x, y) for v in variants}
    times = {v: [] for v in variants}
    for r in range(rounds + 1):         # round 0 warms up
        for v, run in runs.items():
            start = time.perf_counter()
            run()
            if r:
                times[v].append(time.perf_counter() - start)
    best = {v: min(t) for v, t in times.items()}
    median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
    for v in variants:
        print(f"{v:20s} min {best[v]:.3f} s x{best[v] / best['arrays']:.3f}   median "
              f"{median[v]:.3f} s x{median[v] / median['arrays']:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, sys.argv[2:] or VARIANTS)
