"""Training on real MNIST, per workload and system: one round is one fit(epochs=1) over the
workload's timed samples (the 60k training set for the MLPs, the first 9,600 images = 300 steps
for the CNN and the graph workloads).

test_train: the seed workloads (WORKLOADS). test_train_graph: the graph workloads of issue 15
(GRAPH_WORKLOADS), per way of writing the network (variant) and system; its ids read
`workload-variant-system`, e.g. `-k "deep_mlp and fastnn"`.

Model build and compile are outside the timing; each round trains the same model further (the
warm-up round absorbs tracing / first-touch costs). Peers that are not installed are skipped."""
import importlib

import pytest
import workloads as wl


def _fastnn(name, x, y, info, variant=None):
    import fastnn
    info.update(version=fastnn.__version__, threads=fastnn.get_num_threads())
    return wl.keras_epoch(fastnn, name, x, y, variant)


def _torch(name, x, y, info, variant=None):
    torch = pytest.importorskip("torch")
    info.update(version=torch.__version__, threads=torch.get_num_threads())
    return wl.torch_epoch(name, x, y, variant=variant)


def _keras(name, x, y, info, variant=None):
    keras = pytest.importorskip("keras")
    backend = keras.backend.backend()
    info.update(version=keras.__version__, backend=backend,
                backend_version=importlib.import_module(backend).__version__)
    return wl.keras_epoch(keras, name, x, y, variant)


SYSTEMS = {"fastnn": _fastnn, "torch": _torch, "keras": _keras}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("workload", wl.WORKLOADS)
def test_train(benchmark, mnist, rounds, samples_cap, workload, system):
    x, y = wl.workload_data(workload, *mnist)
    x, y = x[:samples_cap], y[:samples_cap]
    benchmark.group = f"{workload}: {wl.describe(workload)}, {wl.timed(workload)}"
    benchmark.extra_info.update(workload=workload, system=system, samples=len(x),
                                gemm_gflop=wl.train_gemm_flops(workload, len(x)) / 1e9)
    epoch = SYSTEMS[system](workload, x, y, benchmark.extra_info)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)


GRAPH_CASES = [(w, variant, system) for w, spec in wl.GRAPH_WORKLOADS.items()
               for variant, systems in spec["variants"].items() for system in systems]


@pytest.mark.parametrize("workload,variant,system", GRAPH_CASES)
def test_train_graph(benchmark, mnist, rounds, samples_cap, workload, variant, system):
    x, y = wl.workload_data(workload, *mnist)
    x, y = x[:samples_cap], y[:samples_cap]
    benchmark.group = f"{workload}: {wl.describe(workload)}, {wl.timed(workload)}"
    # graph_workload, not workload: report.py's seed table keys on the latter
    benchmark.extra_info.update(graph_workload=workload, variant=variant, system=system,
                                samples=len(x))
    epoch = SYSTEMS[system](workload, x, y, benchmark.extra_info, variant)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)
