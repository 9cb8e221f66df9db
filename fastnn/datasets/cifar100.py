"""CIFAR-100 (Alex Krizhevsky), as `keras.datasets.cifar100.load_data()` returns it: the Python
version's archive from the CIFAR page, Keras's pinned hash and cache layout."""
import os

import numpy as np

from .cifar import extracted, load_batch

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FILE_HASH = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"   # Keras's pin


def load_data(label_mode="fine"):
    """`(x_train, y_train), (x_test, y_test)`: uint8 images (50000, 32, 32, 3) and
    (10000, 32, 32, 3) (channels last), int64 labels of shapes (50000, 1) and (10000, 1): the
    100 fine classes (label_mode="fine") or the 20 coarse superclasses ("coarse").

    Args:
        label_mode: `"fine"` (100 classes) or `"coarse"` (20 super-classes). Defaults to `"fine"`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, NumPy arrays.
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError('`label_mode` must be one of `"fine"`, `"coarse"`. '
                         f"Received: label_mode={label_mode}.")
    folder = extracted("cifar-100-python-target", URL, FILE_HASH, "cifar-100-python")
    out = []
    for name in ("train", "test"):
        x, y = load_batch(os.path.join(folder, name), label_key=f"{label_mode}_labels")
        out.append((x.transpose(0, 2, 3, 1), np.asarray(y).reshape(-1, 1)))
    return tuple(out)
