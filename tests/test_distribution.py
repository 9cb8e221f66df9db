"""Data-parallel fit over MPI (fastnn.distribution): N ranks train as one process would,
ranks end with bit-identical weights, a failing rank stops the job, and without mpi4py the
request is a clear error. The multi-rank runs launch `mpiexec` (mpich from PyPI) on scripts
written here; they run on the CPU backend, so other test backends skip them."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TEST_BACKEND
from onbackend import get, put

import fastnn
from fastnn import _core, distribution
from fastnn import layers as L

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                       os.environ.get("PATH", ""))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or TEST_BACKEND != "", reason="needs mpiexec and mpi4py (pip install "
    "'fastnn[mpi]'); the multi-rank runs use the CPU backend")

# The user's script: unchanged between one process and N ranks but for the first lines.
SCRIPT = textwrap.dedent('''
    import os, sys
    import numpy as np
    import fastnn
    from fastnn import layers as L
    if os.environ.get("FASTNN_ERR_FILES"):    # (each rank's errors in a file of its own)
        sys.stderr = open(f"{sys.argv[2]}-{os.environ['PMI_RANK']}.err", "w", buffering=1)
    if os.environ.get("FASTNN_DP") == "1":
        fastnn.distribution.set_distribution(fastnn.distribution.DataParallel())
    fastnn.utils.set_random_seed(7)
    kind, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    if kind == "mlp":
        x = rng.standard_normal((203, 10)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)
        model = fastnn.Sequential([fastnn.Input((10,)),
                                   L.Dense(16, activation="relu", kernel_regularizer="l2"),
                                   L.Dense(1, activation="sigmoid")])
        model.compile(fastnn.optimizers.Adam(0.01, clipnorm=0.5), "binary_crossentropy",
                      metrics=["accuracy", fastnn.metrics.AUC(name="auc"),
                               fastnn.metrics.Precision(name="precision")])
        y_fit = y
    elif kind == "bn":      # statistics of the global batch; the last has 3 rows
        x = rng.standard_normal((83, 6, 6, 2)).astype(np.float32) * 3 + 1
        y = (x[:, :3].mean(axis=(1, 2, 3)) > 1).astype(np.int64)
        inputs = fastnn.Input((6, 6, 2))
        h = L.Conv2D(4, 3, padding="same")(inputs)
        h = L.BatchNormalization(momentum=0.5)(h)
        h = L.Activation("relu")(h)
        h = L.Add()([h, L.BatchNormalization(scale=False)(L.Conv2D(4, 1)(inputs))])
        h = L.Flatten()(h)
        h = L.Dense(8)(h)
        h = L.BatchNormalization(center=False)(h)
        model = fastnn.Model(inputs, L.Dense(2, activation="softmax")(h))
        model.compile(fastnn.optimizers.SGD(0.05, momentum=0.9),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        y_fit = y
    else:
        x = rng.standard_normal((70, 8, 8, 1)).astype(np.float32)
        y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64)
        inputs = fastnn.Input((8, 8, 1))
        h = L.Conv2D(4, 3, activation="relu",       # (FASTNN_NO_L2: a shared arena)
                     kernel_regularizer=None if os.environ.get("FASTNN_NO_L2") else "l2")(inputs)
        h = L.MaxPooling2D()(h)
        h = L.Dropout(0.0)(h)
        h = L.Flatten()(h)
        model = fastnn.Model(inputs, L.Dense(2, activation="softmax")(h))
        model.compile(fastnn.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy",
                      metrics=["accuracy"])
        y_fit = np.eye(2, dtype=np.float32)[y]
    if kind in ("wide_cnn", "wide_short"):  # the general path; a Dense kernel of 69,120
        # weights (deferred, split by kernel rows); wide_short: 82 rows, 65 train after the
        # split, the last global batch of 1 row (ranks without rows take part)
        x = rng.standard_normal((70 if kind == "wide_cnn" else 82, 8, 8, 1)).astype(np.float32)
        y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64)
        model = fastnn.Sequential([fastnn.Input((8, 8, 1)), L.Conv2D(16, 3, activation="relu"),
                                   L.Flatten(), L.Dense(120, activation="relu"),
                                   L.Dense(2, activation="softmax")])
        model.compile(fastnn.optimizers.Adam(0.005), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        y_fit = y
    if kind in ("adam_cnn", "value_cnn"):   # the general path, each rank updating its shard
        clip = {"global_clipnorm": 0.3} if kind == "adam_cnn" else {"clipvalue": 0.02}
        x = rng.standard_normal((70, 8, 8, 1)).astype(np.float32)
        y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64)
        model = fastnn.Sequential([fastnn.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"),
                                   L.MaxPooling2D(), L.Flatten(),
                                   L.Dense(2, activation="softmax")])
        model.compile(fastnn.optimizers.Adam(0.01, amsgrad=True, **clip),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        y_fit = y
    fit_kw, calls = {}, {"fused_epochs": 0, "general_steps": 0}
    if kind in ("dense", "nonfinite", "adam", "adam_plain", "resume", "fail_dense"):  # fused
        # 123 rows: 98 train after the split, 4 global batches of 32, the last of 2 rows (on
        # 4 ranks two of them have none)
        x = rng.standard_normal((123, 12)).astype(np.float32)
        y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1)
        # (24,651 weights: the gradients' sum goes through shared memory, _NodeSum)
        # (an l2 penalty and clipnorm, fused too: once each on the summed gradients)
        model = fastnn.Sequential([fastnn.Input((12,)),
                                   L.Dense(1200, activation="relu", kernel_regularizer=None
                                           if os.environ.get("FASTNN_NO_L2") else "l2"),
                                   L.Dense(8, activation="tanh"),
                                   L.Dense(3, activation="softmax")])
        if kind in ("adam", "adam_plain", "resume", "fail_dense"):  # each rank its shard
            model = fastnn.Sequential([fastnn.Input((12,)),
                                       L.Dense(1200, activation="relu"),
                                       L.Dense(8, activation="tanh"),
                                       L.Dense(3, activation="softmax")])
            model.compile(fastnn.optimizers.Adam(0.01, **({"clipnorm": 0.2} if kind in
                                                         ("adam", "resume") else {})),
                          "sparse_categorical_crossentropy", metrics=["accuracy"])
            y_fit = y
            if kind == "resume" and os.environ.get("FASTNN_PHASE") == "b":
                model = fastnn.models.load_model(out + "-saved.keras")
        elif kind == "dense":
            model.compile(fastnn.optimizers.Adam(0.01, clipnorm=1.0),
                          "sparse_categorical_crossentropy",
                          metrics=["accuracy", fastnn.metrics.SparseTopKCategoricalAccuracy(
                              k=2, name="top2")])
            y_fit = y
            fit_kw = {"sample_weight": rng.uniform(0.5, 2.0, len(x)).astype(np.float32)}
        else:       # one row's loss overflows: that step is skipped, on every rank
            model.compile(fastnn.optimizers.SGD(0.01, momentum=0.5), "mse", metrics=["mae"])
            y_fit = np.eye(3, dtype=np.float32)[y]
            y_fit[5] = 3e19
        run_epoch, train_step = fastnn.stack.DenseRunner.run_epoch, model._train_step

        def fused(self, *args, **kwargs):
            calls["fused_epochs"] += args[6] is True and (     # (training, not evaluating)
                kwargs.get("dist") is not None or fastnn.distribution.size() == 1)
            return run_epoch(self, *args, **kwargs)

        def general(*args):
            calls["general_steps"] += 1
            return train_step(*args)
        fastnn.stack.DenseRunner.run_epoch, model._train_step = fused, general
    if kind == "switch":    # the general path (a deferred kernel), the fused one, again
        x = rng.standard_normal((123, 12)).astype(np.float32)
        y_fit = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1)
        # (tanh: no unit of 6000 on relu's kink, where rounding may flip which rows pass)
        model = fastnn.Sequential([fastnn.Input((12,)), L.Dense(6000, activation="tanh"),
                                   L.Dense(3, activation="softmax")])
        model.compile(fastnn.optimizers.Adam(0.002), "sparse_categorical_crossentropy")
        for fused, batch in (("0", 16), ("1", 64), ("0", 16)):
            os.environ["FASTNN_FUSED"] = fused  # (a bigger exchange window for the fused
            model.fit(x, y_fit, batch_size=batch, epochs=1, verbose=0)    # stack's rows)
        os.environ["FASTNN_FUSED"] = "1"
    if kind in ("fail", "fail_dense"):     # (fail_dense: the other waits in SharedStep's C)
        class Fail(fastnn.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if fastnn.distribution.rank() == 1 and batch == 2:
                    if os.environ.get("FASTNN_DIE") == "1":
                        os._exit(3)         # a crash: no exception, no MPI_Finalize
                    raise RuntimeError("rank one fails here")
        model.fit(x, y_fit, batch_size=16, epochs=50, verbose=0, callbacks=[Fail()])
    d = fastnn.distribution.distribution()

    class Deferred(fastnn.callbacks.Callback):
        """How many big Dense kernels defer their gradients, and split their products by
        kernel rows, during the fit (the fit's end drops the deferral)."""
        def on_epoch_end(self, epoch, logs=None):
            arenas = d._arenas.values() if d is not None and d.size > 1 else ()
            calls["deferred"] = sum(len(a.deferred) for a in arenas)
            calls["split"] = sum(layer._deferred.dx_all is not None
                                 for a in arenas for layer in a.deferred)
    h = model.fit(x, y_fit, batch_size=32, epochs=2, verbose=0, validation_split=0.2,
                  shuffle=True, callbacks=[Deferred()], **fit_kw)
    if d is not None and d.size > 1:    # (the fit's end drops the deferral)
        assert not any(a.deferred for a in d._arenas.values())
    calls["sharded"] = bool(d is not None and d.size > 1 and d._arenas)
    # (the step in C: _core.SharedStep)
    calls["native"] = calls["sharded"] and all(a.native_step is not None
                                               for a in d._arenas.values())
    # (the fused stack's ranks exchanging activations: fnn_stack_data.exchange)
    calls["exchanged"] = calls["sharded"] and all(a.xbuf is not None
                                                  for a in d._arenas.values())
    if kind in ("wide_cnn", "wide_short") and fastnn.distribution.rank() == 0:
        model(x[:3], training=True)     # (alone: outside a step nothing waits for the others)
    if kind == "resume" and os.environ.get("FASTNN_PHASE") == "a":
        if fastnn.distribution.is_chief():
            model.save(out + "-saved.keras")
        sys.exit(0)
    ev = model.evaluate(x, y_fit, batch_size=16, verbose=0)
    p = model.predict(x, batch_size=16, verbose=0)
    np.savez(f"{out}-{fastnn.distribution.rank()}.npz", *model.get_weights(), predict=p,
             evaluate=np.asarray(ev), **{k: np.asarray(v) for k, v in h.history.items()},
             **calls, iterations=model.optimizer.iterations,
             **{f"opt_{i}": v for i, v in enumerate(model.optimizer.variables())})
''')


def _run(tmp_path, kind, ranks, timeout=240, out=None, **env_vars):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = out or str(tmp_path / f"{kind}-{ranks}")
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTNN_DP="1" if ranks else "0", **env_vars)
    cmd = [sys.executable, str(script), kind, out]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    results = [dict(np.load(f"{out}-{r}.npz")) for r in range(max(ranks, 1))
               if os.path.exists(f"{out}-{r}.npz")]
    done.native = [bool(r.pop("native")) for r in results]     # (not compared with one's)
    done.exchanged = [bool(r.pop("exchanged")) for r in results]
    done.deferred = [int(r.pop("deferred")) for r in results]
    done.split = [int(r.pop("split")) for r in results]
    return done, results


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn", "bn", "adam", "adam_cnn", "adam_plain",
                                  "value_cnn", "wide_cnn", "wide_short"])
@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_train_as_one_process(tmp_path, kind, ranks):
    """bn: BatchNormalization normalizes by the global batch's statistics, as one process
    does, through a residual graph; with 4 ranks the last global batch (3 rows) leaves one
    rank without rows, which still takes part. bn, adam (the fused Dense stack, Adam with
    clipnorm) and adam_cnn (the general path, AMSGrad with global_clipnorm) keep their
    parameters and optimizer state in memory the ranks share, each rank updating its
    shard, and so do adam_plain (the fused stack, Adam unclipped: its ranks exchange
    activations), value_cnn (AMSGrad with clipvalue) and wide_cnn (Adam; its big Dense kernel's
    gradient computed by shards from the ranks' rows, its forward product and input gradient
    by kernel rows; wide_short: ranks without rows in the last global batch take part),
    whose steps run in C (SharedStep); mlp and cnn (weight penalties) each update all of it."""
    done, (one,) = _run(tmp_path, kind, 0)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, kind, ranks)
    assert done.returncode == 0, done.stderr
    assert len(results) == ranks
    for other in results[1:]:               # every rank holds the same weights, bit for bit
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    wide = kind in ("wide_cnn", "wide_short")
    sharded = kind in ("bn", "adam", "adam_cnn", "adam_plain", "value_cnn") or wide
    assert bool(results[0].pop("sharded")) == sharded
    assert done.native == [kind in ("bn", "adam_plain", "value_cnn") or wide] * ranks
    assert done.exchanged == [kind == "adam_plain" or wide] * ranks
    assert done.deferred == [wide] * ranks and done.split == [wide] * ranks
    assert not one.pop("sharded")
    for key, want in one.items():           # and those of one process, to rounding
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)
    assert set(one) >= {"loss", "val_loss", "accuracy", "predict", "evaluate"}
    assert int(results[0]["iterations"]) == int(one["iterations"]) > 0


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wide_cnn", "wide_short"])
def test_split_kernel_passes_on_three_ranks(tmp_path, kind):
    """Three ranks: rows 11, 11 and 10 of each global batch of 32 (the last rank's rows and
    scale differ from the others'), the kernel's rows cut unevenly by the shards."""
    done, (one,) = _run(tmp_path, kind, 0)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, kind, 3)
    assert done.returncode == 0, done.stderr
    assert done.split == [1, 1, 1] and len(results) == 3
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    results[0].pop("sharded"), one.pop("sharded")
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 4), (4, 2), (0, 3)])
def test_a_checkpoint_resumes_on_another_rank_count(tmp_path, first, then):
    """A model saved (weights and Adam state, read from the shared shards) after a fit on
    `first` ranks and loaded for a fit on `then` ranks trains as one process does through
    both fits (0: one process)."""
    base = str(tmp_path / "one")
    for phase in ("a", "b"):
        done, _ = _run(tmp_path, "resume", 0, out=base, FASTNN_PHASE=phase)
        assert done.returncode == 0, done.stderr
    (one,) = [dict(np.load(base + "-0.npz"))]
    out = str(tmp_path / "ranks")
    done, _ = _run(tmp_path, "resume", first, out=out, FASTNN_PHASE="a")
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, "resume", then, out=out, FASTNN_PHASE="b")
    assert done.returncode == 0, done.stderr
    assert len(results) == max(then, 1) and bool(results[0].pop("sharded")) == (then > 1)
    assert not one.pop("sharded") and not one.pop("native") and not one.pop("exchanged")
    assert not one.pop("deferred") and not one.pop("split")
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    assert int(results[0]["iterations"]) == int(one["iterations"]) == 16
    assert len([key for key in one if key.startswith("opt_")]) == 2 + 2 * 6  # Adam m, v
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4])
def test_the_fused_dense_stack_trains_across_ranks(tmp_path, ranks):
    """A Dense stack keeps the fused C path under DataParallel (the stack sums the gradients
    between its backward pass and its update): sample weights, a last global batch of 2 rows
    (on 4 ranks, two ranks have none), a metric the stack counts and one it does not."""
    done, (one,) = _run(tmp_path, "dense", 0)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, "dense", ranks)
    assert done.returncode == 0, done.stderr
    assert len(results) == ranks
    for result in results + [one]:
        assert result["fused_epochs"] == 2 and result["general_steps"] == 0
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)
    assert int(one["iterations"]) == 8 and {"top2", "val_accuracy"} <= set(one)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize("no_l2", ["", "1"])
def test_a_non_finite_loss_on_one_rank_skips_the_step_everywhere(tmp_path, fused, no_l2):
    """One row's loss overflows: whichever rank holds it, no rank takes that step (the flag
    rides in the gradients' allreduce), on the fused path and the general one alike, and
    with each rank updating its shard of a shared arena (no_l2)."""
    done, (one,) = _run(tmp_path, "nonfinite", 0, FASTNN_FUSED=fused, FASTNN_NO_L2=no_l2)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, "nonfinite", 2, FASTNN_FUSED=fused, FASTNN_NO_L2=no_l2)
    assert done.returncode == 0, done.stderr
    assert int(one["iterations"]) == 6 and not np.isfinite(one["loss"]).any()
    assert (one["fused_epochs"] > 0) == (fused == "1")
    assert bool(results[0].pop("sharded")) == (no_l2 == "1") and not one.pop("sharded")
    assert done.native == [no_l2 == "1"] * 2       # (SGD: the step in C)
    assert done.exchanged == [no_l2 == "1" and fused == "1"] * 2
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["adam_plain", "value_cnn", "nonfinite"])
def test_the_step_in_c_equals_the_step_in_python(tmp_path, kind):
    """SharedStep (csrc/shard.c) sums and updates in _SharedArena's order and roundings: the
    same bits as its Python step with MPI's barriers (FASTNN_MPI_SPIN=0), on the fused Dense
    stack (adam_plain, nonfinite: a skipped step; its ranks summing gradients:
    FASTNN_MPI_EXCHANGE=0) and the general path (value_cnn)."""
    got = {}
    for spin in ("1", "0"):
        done, results = _run(tmp_path, kind, 2, out=str(tmp_path / f"spin{spin}"),
                             FASTNN_MPI_SPIN=spin, FASTNN_NO_L2="1", FASTNN_MPI_EXCHANGE="0")
        assert done.returncode == 0, done.stderr
        assert done.native == [spin == "1"] * 2 and results[0]["sharded"]
        assert done.exchanged == [False] * 2
        got[spin] = results[0]
    for key in got["0"]:
        np.testing.assert_array_equal(got["1"][key], got["0"][key], err_msg=key)


@needs_mpi
@pytest.mark.slow
def test_a_model_switching_paths_keeps_its_exchange_windows_straight(tmp_path):
    """Fits on the general path (a deferred kernel), the fused stack (a bigger exchange window:
    the deferred kernel's regions go) and the general path again train as one process."""
    done, (one,) = _run(tmp_path, "switch", 0)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, "switch", 2)
    assert done.returncode == 0, done.stderr
    assert done.native == [True, True] and done.exchanged == [True, True]
    assert results[0].pop("sharded") and not one.pop("sharded")
    for other in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)


@needs_mpi
@pytest.mark.slow
def test_deferred_kernels_sum_as_usual_when_the_step_is_in_python(tmp_path):
    """With the shared arena's step in Python (FASTNN_MPI_SPIN=0: MPI's barriers, the sums in
    Python), the big Dense kernel's gradient is summed as every other one is; the ranks still
    train as one process does."""
    done, (one,) = _run(tmp_path, "wide_cnn", 0)
    assert done.returncode == 0, done.stderr
    done, results = _run(tmp_path, "wide_cnn", 2, FASTNN_MPI_SPIN="0")
    assert done.returncode == 0, done.stderr
    assert done.native == [False, False] and done.deferred == [1, 1]
    assert results[0].pop("sharded") and not one.pop("sharded")
    for key, want in one.items():
        np.testing.assert_allclose(results[0][key], want, rtol=2e-5, atol=2e-6, err_msg=key)


SUMS = textwrap.dedent('''
    import sys
    import numpy as np
    from mpi4py import MPI
    import fastnn
    d = fastnn.distribution.DataParallel()
    assert (d._node_sum is not None) == (sys.argv[2] != "0")
    if sys.argv[2] == "noroom":         # /dev/shm without room: MPI's allreduce sums
        def statvfs(path):
            raise OSError("no /dev/shm")
        fastnn.distribution.os.statvfs = statvfs
    comm = MPI.COMM_WORLD
    out = {}
    # MPI's allreduce below _NodeSum.MIN_SIZE; shared above, in one phase, then in two
    for n in (10, 16384, 50001, 140001):
        for round in range(3):          # (the window is reused)
            x = np.random.default_rng(100 * d.rank + round).standard_normal(n).astype(np.float32)
            scale = 0.375 if round == 1 else 1.0     # (a rank's share of the batch)
            want = x * np.float32(scale)
            comm.Allreduce(MPI.IN_PLACE, want)
            d.allreduce_sum(x, scale)
            np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
            every = comm.allgather(x)
            assert all(np.array_equal(e, every[0]) for e in every)   # the same bits on all
    if d._node_sum is not None:
        windows = d._node_sum.windows
        assert sorted(windows) == [16384, 50001, 140001]
        assert all((w is None) == (sys.argv[2] == "noroom") for w in windows.values())
        if sys.argv[2] == "1":          # rows: two sets of N (one phase) or N + 1 (two)
            assert [len(windows[n][1]) for n in (16384, 140001)] == [2 * d.size, d.size + 1]
    print("sums ok", d.rank)
''')


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("shared", ["1", "0", "noroom"])
def test_the_shared_memory_sum_equals_mpi_allreduce(tmp_path, ranks, shared):
    script = tmp_path / "sums.py"
    script.write_text(SUMS)
    done = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script), "x", shared],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1",
                                   FASTNN_MPI_SHARED_MEMORY="0" if shared == "0" else "1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("sums ok") == ranks


@needs_mpi
@pytest.mark.parametrize("kind, no_l2", [("fail", ""), ("fail", "1"), ("fail_dense", "")])
def test_a_failing_rank_stops_every_rank(tmp_path, kind, no_l2):
    """Also while the other rank waits at a barrier of a shared arena (no_l2: the general
    path's; fail_dense: inside the fused Dense stack's C loop)."""
    done, _ = _run(tmp_path, kind, 2, timeout=120, FASTNN_NO_L2=no_l2)
    assert done.returncode != 0
    assert "rank 1 of 2 raised" in done.stderr and "rank one fails here" in done.stderr


@needs_mpi
@pytest.mark.parametrize("kind, no_l2", [("fail", ""), ("fail", "1"), ("fail_dense", "")])
def test_a_dying_rank_stops_every_rank(tmp_path, kind, no_l2):
    done, _ = _run(tmp_path, kind, 2, timeout=120, FASTNN_DIE="1", FASTNN_NO_L2=no_l2)
    assert done.returncode != 0


@needs_mpi
def test_a_dead_rank_is_named_by_the_rank_waiting_for_it(tmp_path):
    """With mpiexec's own clean-up off (hydra's -disable-auto-cleanup), rank 0, waiting in
    the fused stack's C step for rank 1 whose process ended, finds it gone and stops with an
    error naming it (its pid check, every 100 ms), then aborts."""
    import signal
    import time
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "HYDRA" not in version:
        pytest.skip("needs MPICH's mpiexec (hydra) for -disable-auto-cleanup")
    script, log = tmp_path / "train.py", tmp_path / "out-0.err"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTNN_DP="1", FASTNN_DIE="1",
               FASTNN_ERR_FILES="1")
    job = subprocess.Popen([MPIEXEC, "-disable-auto-cleanup", "-n", "2", sys.executable,
                            str(script), "fail_dense", str(tmp_path / "out")],
                           env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:        # (with its clean-up off, mpiexec itself may outlive its ranks)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and
                                                   "aborting" in log.read_text()):
            time.sleep(0.2)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    text = log.read_text()
    assert "rank 0 of 2 raised RuntimeError" in text and "rank 1 of 2 is gone" in text, text


@needs_mpi
def test_launcher_check(tmp_path):
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastnn.distribution",
                           "--check"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "ranks: 2" in done.stdout and "MPI library" in done.stdout
    assert "GB/s" in done.stdout and done.stdout.count("allreduce") == 1   # rank 0 only


def test_without_mpi4py_the_request_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"fastnn\[mpi\]"):
        distribution.DataParallel()
    assert distribution.rank() == 0 and distribution.size() == 1      # one process


def test_arguments_fastnn_cannot_honour_raise():
    pytest.importorskip("mpi4py")
    with pytest.raises(ValueError, match="devices"):
        distribution.DataParallel(devices=["gpu:0", "gpu:1"])
    with pytest.raises(ValueError, match="auto_shard_dataset"):
        distribution.DataParallel(auto_shard_dataset=False)
    with pytest.raises(TypeError, match="DataParallel"):
        distribution.set_distribution("data_parallel")


def _ranks(size):
    """DataParallel objects standing for each rank of a job of `size` (no collectives)."""
    out = []
    for r in range(size):
        d = object.__new__(distribution.DataParallel)
        d.rank, d.size = r, size
        out.append(d)
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_global_batches_split_into_contiguous_parts(size):
    for start, stop in [(0, 32), (32, 35), (0, 1), (96, 100)]:
        parts = [d.local_rows(start, stop) for d in _ranks(size)]
        assert parts[0][0] == start and parts[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        sizes = [hi - lo for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1


def test_one_rank_job_reduces_gradients_and_metrics_on_the_active_backend():
    """A job of one rank (COMM_SELF): the collectives run and change nothing, device arrays
    included; the metric accumulators are found by what reset_state() sets."""
    mpi = pytest.importorskip("mpi4py.MPI")
    d = distribution.DataParallel(comm=mpi.COMM_SELF)
    grads = put(np.arange(7, dtype=np.float32))      # 6 gradients and the flag slot
    assert d.reduce_gradients(grads, 0.5) is False
    np.testing.assert_array_equal(get(grads), list(np.arange(6) * 0.5) + [0])
    assert d.reduce_gradients(grads, 0.5, bad=True) is True     # the step is skipped
    auc = fastnn.metrics.AUC(num_thresholds=5)
    auc.update_state(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.3]))
    mean = fastnn.metrics.Mean()
    mean.update_state(np.array([1.0, 3.0]))
    mean.update_state(np.array([[5.0], [7.0]]), sample_weight=np.array([0.0, 2.0]))
    assert mean.result() == pytest.approx((1 + 3 + 14) / 4)
    before = auc.result(), mean.result()
    with d.global_metrics([auc, mean]):
        assert (auc.result(), mean.result()) == before
    assert set(distribution._accumulators(mean)) == {"total", "count"}
    assert set(distribution._accumulators(auc)) == {"true_positives", "false_positives",
                                                   "true_negatives", "false_negatives"}


def test_batch_normalization_needs_a_row_per_rank_before_a_rankless_batch():
    model = fastnn.Sequential([fastnn.Input((4,)), L.Dense(3), L.BatchNormalization(name="bn"),
                               L.Dense(2, activation="softmax")])
    fake = _ranks(4)[3]     # its first step has no rows: it cannot know the layers' order
    fake.begin_step(1.0)
    with pytest.raises(RuntimeError, match="batch_size of at least the number of ranks"):
        fake.rankless_layers(False, model)


def test_batches_from_iterables_are_refused_across_ranks(monkeypatch):
    model = fastnn.Sequential([fastnn.Input((4,)), L.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    monkeypatch.setattr(distribution, "_DISTRIBUTION", _ranks(2)[0])
    batches = [(np.ones((4, 4), np.float32), np.zeros(4, np.int64))]
    with pytest.raises(ValueError, match="fit: under fastnn.distribution.DataParallel"):
        model.fit(iter(batches), verbose=0)
    with pytest.raises(ValueError, match="evaluate: under"):
        model.evaluate(iter(batches), verbose=0)
    with pytest.raises(ValueError, match="predict: under"):
        model.predict(iter([np.ones((4, 4), np.float32)]), verbose=0)


RESUME = textwrap.dedent('''
    import os, sys
    import numpy as np
    import fastnn
    from fastnn import layers as L
    if os.environ.get("FASTNN_DP") == "1":
        fastnn.distribution.set_distribution(fastnn.distribution.DataParallel())
    fastnn.utils.set_random_seed(1)
    stage, folder = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = os.path.join(folder, "ckpt.keras")
    if stage == "first":
        model = fastnn.Sequential([fastnn.Input((6,)), L.Dense(8, activation="relu"),
                                   L.Dense(2, activation="softmax")])
        model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                  callbacks=[fastnn.callbacks.ModelCheckpoint(path)])
    else:
        model = fastnn.models.load_model(path)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        np.savez(os.path.join(folder, f"{stage}-{fastnn.distribution.rank()}.npz"),
                 *model.get_weights())
''')


@needs_mpi
def test_a_checkpoint_from_two_ranks_resumes_on_any_number(tmp_path):
    """Rank 0 alone writes the checkpoint; one process and four ranks resume from it and
    take the same steps."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTNN_DP="1")

    def run(stage, ranks):
        cmd = [sys.executable, str(script), stage, str(tmp_path)]
        if ranks:
            cmd = [MPIEXEC, "-n", str(ranks)] + cmd
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr

    run("first", 2)
    assert os.listdir(tmp_path).count("ckpt.keras") == 1
    run("one", 0)
    run("four", 4)
    one = np.load(tmp_path / "one-0.npz")
    for r in range(4):
        four = np.load(tmp_path / f"four-{r}.npz")
        for key in one.files:
            np.testing.assert_allclose(four[key], one[key], rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(TEST_BACKEND != "", reason="the fused Dense stack runs on the CPU backend")
def test_the_fused_stack_checks_and_propagates_its_reduction():
    """DenseStack.run(reduce=...) takes only the gradient arena with its flag slot, and an
    exception in the reduction (a failed allreduce) stops the run and reaches the caller."""
    model = fastnn.Sequential([fastnn.Input((6,)), L.Dense(4, activation="relu"),
                               L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    y = np.arange(40, dtype=np.int32) % 3
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    runner = fastnn.stack.DenseRunner.for_model(model, training=True)
    assert runner is not None
    dist = _ranks(2)[1]

    def broken(buffer, optimizer):
        def reduce(scalars):
            raise RuntimeError("the link went down")
        return reduce
    dist.step_reducer = broken
    before = model.get_weights()
    with pytest.raises(RuntimeError, match="link went down"):
        runner.run_epoch(x, y, None, None, 5, 8, True, None, False, model._logs, dist=dist)
    for got, want in zip(model.get_weights(), before):      # no update before the sum
        np.testing.assert_array_equal(got, want)
    stack = runner._stack(4, True)
    sums = np.zeros(4)
    scalars, _ = model.optimizer.fused_scalars(1)
    order = np.arange(1, 40, 2, dtype=np.int64)
    for bad in (model._grads, np.zeros(model._grads.size + 1, np.float32)):
        with pytest.raises(ValueError, match="reduce buffer"):
            stack.run(x, y, None, order, 0, 1, True, scalars, sums,
                      reduce=(lambda scalars: None, bad, 40, 8))
    with pytest.raises(ValueError, match="global batches"):
        stack.run(x, y, None, order, 0, 1, True, scalars, sums,
                  reduce=(lambda scalars: None, model._grads_and_flag, 40, 4))


def _shared_arena(n, ranks, slots):
    """Arrays as a shared arena lays them out (in one process): parameters, slots, gradient
    rows (with flag and scale) and the barrier's control words."""
    rng = np.random.default_rng(3)
    params = rng.standard_normal(n).astype(np.float32)
    rows = np.zeros((ranks, n + 2), np.float32)
    rows[:, :n] = rng.standard_normal((ranks, n))
    return params, tuple(np.abs(rng.standard_normal(n)).astype(np.float32)
                         for _ in range(slots)), rows, np.zeros(2 + ranks, np.uint32)


needs_shared_steps = pytest.mark.skipif(
    TEST_BACKEND != "" or not _core.shard_supported(),
    reason="SharedStep: the CPU backend of a build with atomics")


@needs_shared_steps
def test_a_shared_step_checks_its_arguments():
    SharedStep, ADAM, SGD = _core.SharedStep, 1, 0
    params, (m, v), rows, control = _shared_arena(10, 2, 2)
    with pytest.raises(ValueError, match="kind"):
        SharedStep(99, params, (m, v), rows, control, 0)
    with pytest.raises(ValueError, match="clip_mode"):          # norms: the Python path
        SharedStep(ADAM, params, (m, v), rows, control, 0, 2, 1.0)
    with pytest.raises(ValueError, match="limit"):
        SharedStep(ADAM, params, (m, v), rows, control, 0, 1, 0.0)
    with pytest.raises(ValueError, match="rows"):
        SharedStep(ADAM, params, (m, v), rows[:, :11].copy(), control, 0)
    with pytest.raises(ValueError, match="rank"):
        SharedStep(ADAM, params, (m, v), rows, control, 2)
    with pytest.raises(ValueError, match="control"):
        SharedStep(ADAM, params, (m, v), rows, control[:3].copy(), 0)
    with pytest.raises(TypeError, match="control"):
        SharedStep(ADAM, params, (m, v), rows, control.astype(np.float32), 0)
    with pytest.raises(TypeError, match=r"slots\[1\]"):         # Adam: m and v
        SharedStep(ADAM, params, (m,), rows, control, 0)
    with pytest.raises(ValueError, match=r"slots\[1\]"):
        SharedStep(ADAM, params, (m, v[:5].copy()), rows, control, 0)
    with pytest.raises(ValueError, match="shares memory"):
        SharedStep(ADAM, params, (m, rows[0, :10]), rows, control, 0)
    step = SharedStep(ADAM, params, (m, v), rows, control, 1)
    assert step.shard == (5, 10) and step.seconds == 0.0
    with pytest.raises(ValueError, match="scalars"):
        step.update(np.zeros(3, np.float32))
    plain = SharedStep(SGD, params, (None,), rows, control, 0)
    with pytest.raises(ValueError, match="momentum"):
        plain.update(np.array([0.0, 0.1, 0.9, 0.0], np.float32))


@needs_shared_steps
@pytest.mark.parametrize("scales", [(0.5, 0.5), (0.25, 0.75)])
def test_shared_steps_of_two_ranks_sum_and_update_their_shards(scales):
    """Two SharedSteps (ranks 0 and 1, one thread each, their barriers between the threads)
    take the step optimizer_update takes on the scaled sum of the two rows."""
    import threading
    n, ADAM = 1001, 1
    params, slots, rows, control = _shared_arena(n, 2, 2)
    control[2:] = os.getpid()
    want_p, want_s = params.copy(), tuple(s.copy() for s in slots)
    if scales[0] == scales[1]:      # (one scale: one multiply of the sum)
        total = (rows[0, :n] + rows[1, :n]) * np.float32(scales[0])
    else:
        total = rows[0, :n] * np.float32(scales[0]) + rows[1, :n] * np.float32(scales[1])
    scalars = np.array([0.0, 0.01, 0.9, 0.999, 1e-7], np.float32)
    _core.optimizer_update(ADAM, want_p, total, want_s, scalars, 0, 0.0, [n])
    steps = [_core.SharedStep(ADAM, params, slots, rows, control, r) for r in (0, 1)]
    skipped, errors = [], []

    def rank(r):
        try:
            skipped.append(steps[r].reduce(scales[r], False))
            steps[r].update(scalars)
        except BaseException as exc:        # (reported by the test below)
            errors.append(exc)
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and skipped == [False, False]
    np.testing.assert_array_equal(params, want_p)
    for got, want in zip(slots, want_s):
        np.testing.assert_array_equal(got, want)
    assert all(step.seconds > step.waited >= 0 for step in steps)
    rows[1, n] = 1.0            # a rank's loss was not finite: nothing summed, no step
    before = params.copy(), rows.copy()
    threads = [threading.Thread(target=lambda r=r: skipped.append(steps[r].reduce(1.0, r == 1)))
               for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert skipped[2:] == [True, True]
    np.testing.assert_array_equal(params, before[0])
    np.testing.assert_array_equal(rows[:, :n], before[1][:, :n])


@needs_shared_steps
def test_a_shared_step_stops_when_a_peer_process_is_gone():
    """A rank waiting at the barrier for a rank whose process ended raises an error naming
    it, within a second (set_distribution's abort then stops the job), and sums nothing."""
    import time
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                 # (reaped: its pid names no process)
    params, slots, rows, control = _shared_arena(8, 2, 2)
    control[2:] = [os.getpid(), gone.pid]
    step = _core.SharedStep(1, params, slots, rows, control, 0)
    before = rows.copy()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"rank 1 of 2 is gone .*process {gone.pid}"):
        step.reduce(1.0, False)
    assert time.monotonic() - start < 2
    np.testing.assert_array_equal(rows[:, :8], before[:, :8])
    control[:2] = 0
    with pytest.raises(RuntimeError, match="rank 1 of 2 is gone"):
        step.barrier()


@needs_shared_steps
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/stat")
def test_a_shared_step_stops_when_a_peer_is_an_unreaped_zombie():
    """A peer that ended but was not reaped yet still answers kill(pid, 0): its state in
    /proc says it is gone."""
    import time
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = f"/proc/{zombie.pid}/stat"
    deadline = time.monotonic() + 10
    while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z":    # (not reaped: no wait)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        params, slots, rows, control = _shared_arena(8, 2, 2)
        control[2:] = [os.getpid(), zombie.pid]
        step = _core.SharedStep(1, params, slots, rows, control, 0)
        with pytest.raises(RuntimeError, match=f"rank 1 of 2 is gone .*process {zombie.pid}"):
            step.barrier()
    finally:
        zombie.wait()


def _rank_stack(model, batch, grads):
    """A training DenseStack of model's Dense layers (its parameters and optimizer slots) whose
    gradient arena is `grads` (a rank's row of a shared arena), as DenseRunner builds it."""
    opt, layers = model.optimizer, model._layers[1:] if model._layers[0].__class__.__name__ \
        == "InputLayer" else model._layers
    specs = []
    for layer in layers:
        views = []
        for name in ("kernel", "bias"):
            start, stop = model._spans[id(layer), name]
            views.append(grads[start:stop].reshape(layer._vars[name].shape))
        specs.append((layer.kernel, layer._vars["bias"], views[0], views[1], layer.act_id,
                      layer.act_alpha))
    return _core.DenseStack(specs, batch, True, loss=0, fused=True, metric=1,
                            opt=fastnn.stack._OPTIMIZER_KINDS[type(opt)],
                            slots=opt.fused_slots(), params=model._params,
                            grads=grads[:model._params.size], var_sizes=opt._sizes)


@needs_shared_steps
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_ranks_exchanging_activations_take_the_steps_of_one_process(ranks):
    """DenseStack.run with an exchange buffer (fnn_stack_data.exchange), ranks as threads: each
    runs its rows of every global batch forward and backward, then its shard of each layer's
    weight gradient over the whole global batch and its update (the first layer's forward
    product split the same way), and together they take one process's steps over the global
    batches, to float32 rounding - the last global batch short (at 3 ranks, 2 rows each), the
    epoch split over two runs of each rank (the second run finds its rows gathered)."""
    import threading
    rng = np.random.default_rng(11)
    x = rng.standard_normal((70, 9)).astype(np.float32)
    y = (np.arange(70) % 3).astype(np.int32)
    model = fastnn.Sequential([fastnn.Input((9,)), L.Dense(20, activation="relu"),
                               L.Dense(6, activation="tanh"),
                               L.Dense(3, activation="softmax")])
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)   # (Adam's slots in use)
    g, steps, n = 16, 5, model._params.size     # 70 rows: 4 global batches of 16 and one of 6
    order = rng.permutation(70).astype(np.int64)
    scalars, _ = model.optimizer.fused_scalars(steps)
    slots = [s for s in model.optimizer.fused_slots() if s is not None]
    start = model._params.copy(), [s.copy() for s in slots]
    one = _rank_stack(model, g, np.zeros(n + 1, np.float32))
    want_sums = np.zeros(4)
    assert one.run(x, y, None, order, 0, steps, True, scalars, want_sums) == (steps, 0)
    want = model._params.copy(), [s.copy() for s in slots]
    model._params[...] = start[0]
    for s, s0 in zip(slots, start[1]):
        s[...] = s0
    rows = np.zeros((ranks, n + 2 + 14), np.float32)        # (rows wider than n + 2)
    control = np.zeros(2 + ranks, np.uint32)
    control[2:] = os.getpid()
    shared, sums, errors = [], [np.zeros(4) for _ in range(ranks)], []
    for r in range(ranks):
        shared.append(_core.SharedStep(1, model._params, tuple(model.optimizer.fused_slots()),
                                       rows, control, r))
    dists = _ranks(ranks)
    stacks, orders = [], []
    for d in dists:
        rank_order, batch = fastnn.stack._rank_rows(d, order, 70, steps, g)
        stacks.append(_rank_stack(model, batch, rows[d.rank]))
        orders.append(rank_order)
    exchange = np.full(stacks[0].exchange_floats(g, ranks), np.nan, np.float32)
    assert stacks[0].kernels_tile_arena

    def rank(r):
        try:
            reduce = (shared[r], rows[r, :n + 1], 70, g, exchange)
            for first, count in ((0, 2), (2, steps - 2)):
                got = stacks[r].run(x, y, None, orders[r], first, count, True,
                                    scalars[first:], sums[r], reduce=reduce)
                assert got == (count, 0), got
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    np.testing.assert_allclose(model._params, want[0], rtol=1e-5, atol=1e-6)
    for got, w in zip(slots, want[1]):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-7)
    # each rank's share of the loss sums and accuracy counts (DenseRunner sums the ranks')
    np.testing.assert_allclose(np.sum(sums, axis=0), want_sums, rtol=1e-5)
    assert all(step.seconds >= step.waited >= 0 for step in shared)


@needs_shared_steps
def test_an_exchange_buffer_is_checked():
    """DenseStack.run's exchange buffer: only with a SharedStep of this stack's parameters and
    optimizer, and at least exchange_floats(global batch, ranks) float32 values."""
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    y = np.arange(40, dtype=np.int32) % 3
    model = fastnn.Sequential([fastnn.Input((6,)), L.Dense(4, activation="relu"),
                               L.Dense(3, activation="softmax")])
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    n = model._params.size
    rows, control = np.zeros((2, n + 2), np.float32), np.zeros(4, np.uint32)
    stack = _rank_stack(model, 4, rows[0])
    need = stack.exchange_floats(8, 2)
    # (each layer's inputs and output gradients of 8 rows, 16-float aligned; the first
    # layer's inputs twice; the 2 ranks' partial products of its outputs)
    assert need == 2 * 8 * 6 + 8 * 4 + 8 * 4 + 16 * 2 + 2 * 8 * 4
    for bad in ((0, 2), (8, 0)):
        with pytest.raises(ValueError, match="global_batch|ranks"):
            stack.exchange_floats(*bad)
    slots = tuple(model.optimizer.fused_slots())
    step = _core.SharedStep(1, model._params, slots, rows, control, 0)
    order = np.arange(0, 40, 2, dtype=np.int64)
    scalars, _ = model.optimizer.fused_scalars(1)
    sums, buffer = np.zeros(4), rows[0, :n + 1]
    before = model._params.copy()
    cases = [((lambda scalars: None, buffer, 40, 8, np.zeros(need, np.float32)), "SharedStep"),
             ((step, buffer, 40, 8, np.zeros(need - 1, np.float32)), f"at least \\({need},\\)"),
             ((step, buffer, 40, 8, np.zeros(need, np.float64)), "float32"),
             ((step, buffer, 40, 8, None, None), "4 or 5 items")]
    other = _core.SharedStep(0, model._params, (None,), rows, control, 0)   # (SGD)
    cases.append(((other, buffer, 40, 8, np.zeros(need, np.float32)), "optimizer"))
    for reduce, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            stack.run(x, y, None, order, 0, 1, True, scalars, sums, reduce=reduce)
    np.testing.assert_array_equal(model._params, before)


@needs_shared_steps
def test_deferred_kernels_are_checked():
    """SharedStep.defer takes kernels in arena order, inside the arena, with each rank's
    count and regions of the same rows."""
    params, slots, rows, control = _shared_arena(100, 2, 2)
    step = _core.SharedStep(1, params, slots, rows, control, 0)
    count = np.zeros(2, np.float32)
    x, dz = np.zeros((2, 4, 6), np.float32), np.zeros((2, 4, 5), np.float32)
    step.defer([(10, 4, count, x, dz)])         # weights 10 .. 40
    step.defer([])
    bad = [([(80, 4, count, x, dz)], "not in the arena"),
           ([(10, 4, count, x, dz), (30, 4, count, x, dz)], "not in the arena"),
           ([(10, 3, count, x, dz)], "expected count"),
           ([(10, 4, np.zeros(3, np.float32), x, dz)], "expected count"),
           ([(10, 4, count, x, dz[:1])], "expected count")]
    for kernels, message in bad:
        with pytest.raises(ValueError, match=message):
            step.defer(kernels)
    with pytest.raises((ValueError, TypeError)):
        step.defer([(10, 4, count, x.astype(np.float64), dz)])
    # the split passes' regions: rank p's partial products of every rank's rows, and every
    # rank's rows' input gradients
    z_parts, dx_all = np.zeros((2, 2, 4, 5), np.float32), np.zeros((2, 4, 6), np.float32)
    for kernels, message in [([(10, 4, count, x, dz, z_parts, None)], "go together"),
                             ([(10, 4, count, x, dz, z_parts[:1], dx_all)], "z_parts"),
                             ([(10, 4, count, x, dz, z_parts, dx_all[:1])], "dx_all")]:
        with pytest.raises(ValueError, match=message):
            step.defer(kernels)
    step.defer([(10, 4, count, x, dz)])
    with pytest.raises(ValueError, match="without z_parts"):
        step.split_backward(0)
    step.defer([(10, 4, count, x, dz, z_parts, dx_all)])
    with pytest.raises(ValueError, match=r"i: expected a deferred kernel in \[0, 1\)"):
        step.split_forward(1, np.zeros((0, 5), np.float32))
    count[0] = 3        # (z must hold this rank's rows)
    with pytest.raises(ValueError, match=r"z: expected \(3, 5\)"):
        step.split_forward(0, np.zeros((4, 5), np.float32))
    count[0] = 5        # (more than its region's 4)
    with pytest.raises(ValueError, match=r"count 5.0 is not in \[0, 4\]"):
        step.split_backward(0)
