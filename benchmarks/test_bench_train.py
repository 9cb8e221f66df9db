"""Training on real MNIST, per workload and system: one round is one fit(epochs=1) over the
workload's timed samples (the 60k training set for the MLPs, the first 9,600 images = 300 steps
for the CNN).

Model build and compile are outside the timing; each round trains the same model further (the
warm-up round absorbs tracing / first-touch costs). Peers that are not installed are skipped."""
import importlib

import pytest

import workloads as wl


def _fastnn(name, x, y, info):
    import fastnn
    info.update(version=fastnn.__version__, threads=fastnn.get_num_threads())
    return wl.keras_epoch(fastnn, name, x, y)


def _torch(name, x, y, info):
    torch = pytest.importorskip("torch")
    info.update(version=torch.__version__, threads=torch.get_num_threads())
    return wl.torch_epoch(name, x, y)


def _keras(name, x, y, info):
    keras = pytest.importorskip("keras")
    backend = keras.backend.backend()
    info.update(version=keras.__version__, backend=backend,
                backend_version=importlib.import_module(backend).__version__)
    return wl.keras_epoch(keras, name, x, y)


SYSTEMS = {"fastnn": _fastnn, "torch": _torch, "keras": _keras}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("workload", wl.WORKLOADS)
def test_train(benchmark, mnist, rounds, workload, system):
    x, y = wl.workload_data(workload, *mnist)
    benchmark.group = f"{workload}: {wl.describe(workload)}, {wl.timed(workload)}"
    benchmark.extra_info.update(workload=workload, system=system, samples=len(x),
                                gemm_gflop=wl.train_gemm_flops(workload, len(x)) / 1e9)
    epoch = SYSTEMS[system](workload, x, y, benchmark.extra_info)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)
