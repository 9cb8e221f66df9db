"""Training on an NVIDIA GPU, side by side: fastnn's CUDA backend (CuPy) and PyTorch CUDA, the
same workloads and rounds as test_bench_train.py (the MLP's 60k epoch, the CNN's 300 steps).
Both keep the model and the whole training set on the device and read the loss back once per
epoch, so a round ends when the GPU is done. Skipped without a usable GPU."""
import pytest
import workloads as wl

GPU_WORKLOADS = ("mlp_adam", "cnn")


def _fastnn_cuda(name, x, y, info):
    import fastnn
    from fastnn import backend
    missing = backend._cuda_missing()
    if missing:
        pytest.skip(f"no usable GPU for fastnn: {missing}")
    ops = backend._make_ops("cuda")
    import cupy
    info.update(version=fastnn.__version__, cupy=cupy.__version__,
                gpu=cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    with backend.use_backend(ops):
        fit = wl.keras_epoch(fastnn, name, x, y)

    def epoch():
        with backend.use_backend(ops):
            return fit()
    return epoch


def _torch_cuda(name, x, y, info):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA GPU")
    info.update(version=torch.__version__, gpu=torch.cuda.get_device_name(0))
    return wl.torch_epoch(name, x, y, device="cuda")


SYSTEMS = {"fastnn_cuda": _fastnn_cuda, "torch_cuda": _torch_cuda}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("workload", GPU_WORKLOADS)
def test_train_gpu(benchmark, mnist, rounds, workload, system):
    x, y = wl.workload_data(workload, *mnist)
    benchmark.group = f"GPU {workload}: {wl.describe(workload)}, {wl.timed(workload)}"
    benchmark.extra_info.update(gpu_workload=workload, system=system, samples=len(x))
    epoch = SYSTEMS[system](workload, x, y, benchmark.extra_info)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)
