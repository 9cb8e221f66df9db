"""One training epoch on the 60k MNIST training set, per workload and system.

Model build and compile are outside the timing; each round is one epoch of the same model (the
warm-up epoch absorbs tracing / first-touch costs). Peers that are not installed are skipped."""
import importlib

import pytest

import mlp_workloads as wl


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
def test_epoch(benchmark, mnist, rounds, workload, system):
    x, y = mnist
    benchmark.group = f"epoch {workload}: {wl.describe(workload)}"
    benchmark.extra_info.update(workload=workload, system=system,
                                gemm_gflop=wl.epoch_gemm_flops(workload) / 1e9)
    epoch = SYSTEMS[system](workload, x, y, benchmark.extra_info)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)
