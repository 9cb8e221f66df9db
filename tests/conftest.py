import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # tests' helper modules
DATA_DIR = os.environ.get("FASTNN_DATA_DIR")
# FASTNN_TEST_BACKEND=fake-cuda runs every test on CupyOps over tests/fake_cupy.py: the GPU
# backend's logic with "device" arrays NumPy cannot read, on a machine without a GPU;
# fake-kernels does the same through its CUDA kernels (kernels.cu built for the CPU).
TEST_BACKEND = os.environ.get("FASTNN_TEST_BACKEND", "")


def fake_cuda_ops():
    """CupyOps over the strict fake device module, computing through the reference."""
    import fake_cupy

    from fastnn.backend.cupy import CupyOps
    return CupyOps(xp=fake_cupy, kernels=False)


def full_mnist_available():
    return bool(DATA_DIR) and any(
        os.path.exists(os.path.join(DATA_DIR, name))
        for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "mnist.npz"))


def pytest_collection_modifyitems(config, items):
    """Tests marked `mnist` need the full data set (FASTNN_DATA_DIR); skip them without it."""
    if full_mnist_available():
        return
    skip = pytest.mark.skip(reason="full MNIST not found: set FASTNN_DATA_DIR")
    for item in items:
        if "mnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _skip_gpu_without_one(request):
    """Tests marked gpu need CuPy and a CUDA device; skip them (with the reason) elsewhere."""
    if request.node.get_closest_marker("gpu"):
        from fastnn.backend import _cuda_missing
        missing = _cuda_missing()
        if missing:
            pytest.skip(f"no usable GPU: {missing}")


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """kernels.cu built for the CPU (tests/host_kernels.py)."""
    import host_kernels as lib
    built = lib.build(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C++ compiler to build kernels.cu for the CPU")
    return built


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_session(monkeypatch, request):
    """Every test starts with fresh layer names and a fixed seed, so none depends on luck."""
    import fastnn.backend
    from fastnn.backend import clear_session
    from fastnn.utils import set_random_seed
    clear_session()
    set_random_seed(20261125)
    if TEST_BACKEND == "fake-cuda":
        monkeypatch.setattr(fastnn.backend, "_ops", fake_cuda_ops())
    elif TEST_BACKEND == "fake-kernels":
        import fake_cupy
        from host_kernels import HostKernelOps
        lib = request.getfixturevalue("host_kernels")
        monkeypatch.setattr(fastnn.backend, "_ops", HostKernelOps(lib, xp=fake_cupy))
    elif TEST_BACKEND:
        raise pytest.UsageError(f"FASTNN_TEST_BACKEND must be 'fake-cuda', 'fake-kernels' or "
                                f"unset, got {TEST_BACKEND!r}")
    if request.node.get_closest_marker("cpu_backend") and fastnn.backend.get_ops().name != "cpu":
        pytest.skip(f"tests the CPU backend's own path; the active backend is "
                    f"{fastnn.backend.get_ops().name!r}")
    yield
