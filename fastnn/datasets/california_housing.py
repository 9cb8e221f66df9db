"""The California housing prices, as `keras.datasets.california_housing.load_data()` returns
them."""
from ..downloads import get_file
from ._common import KERAS_ORIGIN, check_test_split, split_features

URL = KERAS_ORIGIN + "california_housing.npz"
FILE_HASH = "1a2e3a52e0398de6463aebe6f4a8da34fb21fbb6b934cf88c3425e766f2a1a6f"   # Keras's pin
SMALL = 600     # version="small": the first 600 block groups


def load_data(version="large", path="california_housing.npz", test_split=0.2, seed=113):
    """`(x_train, y_train), (x_test, y_test)`: features (n, 8) and median house values
    (n,), all 20,640 block groups (version="large") or the first 600 ("small"), shuffled by
    `np.random.RandomState(seed)`, the last `test_split` of them the test set. `path` is the
    file's name in Keras's cache folder (~/.keras/datasets, or $KERAS_HOME).

    Args:
        version: `"large"` (all 20,640 block groups) or `"small"` (the first 600). Defaults to
            `"large"`.
        path: Name of the cached file (under Keras's cache, `~/.keras/datasets`). Defaults to
            `"california_housing.npz"`.
        test_split: Fraction of the data kept as the test set. Defaults to `0.2`.
        seed: Seed of the shuffle before the split. Defaults to `113`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, NumPy arrays.
    """
    check_test_split(test_split)
    if version not in ("large", "small"):
        raise ValueError("Argument `version` must be one of 'small', 'large'. "
                         f"Received: version={version}")
    path = get_file(path, origin=URL, file_hash=FILE_HASH)
    return split_features(path, test_split, seed, SMALL if version == "small" else None)
