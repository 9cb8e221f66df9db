import os

import numpy as np
import pytest

DATA_DIR = os.environ.get("FASTNN_DATA_DIR")


def full_mnist_available():
    return bool(DATA_DIR) and os.path.exists(
        os.path.join(DATA_DIR, "train-images-idx3-ubyte.gz")) or (
        bool(DATA_DIR) and os.path.exists(os.path.join(DATA_DIR, "mnist.npz")))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_names():
    from fastnn.backend import clear_session
    clear_session()
    yield
