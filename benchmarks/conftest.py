"""pytest-benchmark settings for benchmarks/ (not part of the test suite: testpaths is tests/).

    PYTHONPATH=. python -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \\
        [--bench-rounds N]

The Keras peer runs on TensorFlow when it is installed (the stack of Keras' own published
numbers), else on torch; KERAS_BACKEND set by the caller wins."""
import importlib.util
import os
import sys

import pytest

# The project runs pytest with --import-mode=importlib, which puts no test folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as wl  # noqa: E402

os.environ.setdefault("KERAS_BACKEND",
                      "tensorflow" if importlib.util.find_spec("tensorflow") else "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# fastnn against CPU peers on the CPU, even where a GPU would be picked by default;
# test_bench_gpu.py selects the CUDA backend itself.
os.environ.setdefault("FASTNN_BACKEND", "cpu")


def pytest_addoption(parser):
    parser.addoption("--bench-rounds", type=int, default=3,
                     help="timed rounds per training benchmark (after one warm-up round)")
    parser.addoption("--bench-samples", type=int, default=None,
                     help="smoke test only: train on at most this many samples per round "
                          "(the times are then not the workloads' and not comparable)")


@pytest.fixture(scope="session")
def rounds(request):
    return request.config.getoption("--bench-rounds")


@pytest.fixture(scope="session")
def samples_cap(request):
    return request.config.getoption("--bench-samples")


@pytest.fixture(scope="session")
def mnist():
    d = wl.data_dir()
    if d is None:
        pytest.skip("MNIST not found: set FASTNN_DATA_DIR to the folder of the gzipped IDX files")
    return wl.load_mnist_train(d)
