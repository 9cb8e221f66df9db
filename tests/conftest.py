import os

import numpy as np
import pytest

DATA_DIR = os.environ.get("FASTNN_DATA_DIR")


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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_session():
    """Every test starts with fresh layer names and a fixed seed, so none depends on luck."""
    from fastnn.backend import clear_session
    from fastnn.utils import set_random_seed
    clear_session()
    set_random_seed(20261125)
    yield
