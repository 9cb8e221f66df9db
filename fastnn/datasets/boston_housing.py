"""The Boston housing prices, as `keras.datasets.boston_housing.load_data()` returns them."""
from ..downloads import get_file
from ._common import KERAS_ORIGIN, check_test_split, split_features

URL = KERAS_ORIGIN + "boston_housing.npz"
FILE_HASH = "f553886a1f8d56431e820c5b82552d9d95cfcb96d1e678153f8839538947dff5"   # Keras's pin


def load_data(path="boston_housing.npz", test_split=0.2, seed=113):
    """`(x_train, y_train), (x_test, y_test)`: features (n, 13) and prices (n,), the 506
    houses shuffled by `np.random.RandomState(seed)` and the last `test_split` of them the test
    set. `path` is the file's name in Keras's cache folder (~/.keras/datasets, or $KERAS_HOME).

    Args:
        path: Name of the cached file (under Keras's cache, `~/.keras/datasets`). Defaults to
            `"boston_housing.npz"`.
        test_split: Fraction of the data kept as the test set. Defaults to `0.2`.
        seed: Seed of the shuffle before the split. Defaults to `113`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, NumPy arrays.
    """
    check_test_split(test_split)
    return split_features(get_file(path, origin=URL, file_hash=FILE_HASH), test_split, seed)
