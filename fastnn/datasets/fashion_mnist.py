"""Fashion-MNIST (Zalando, MIT license), as `keras.datasets.fashion_mnist.load_data()` returns it:
the four gzipped IDX files from Keras's origin, cached in Keras's datasets/fashion-mnist folder.

Keras pins no hash for these files, so neither does this loader (a pin that disagreed with the
served bytes would refuse the real data); each file is checked to be an IDX file of uint8 data
of the announced size, and the labels to match the images in number."""
import gzip
import os
import struct
import zlib

import numpy as np

from ..downloads import get_file
from ._common import KERAS_ORIGIN

SUBDIR = os.path.join("datasets", "fashion-mnist")
FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


def load_data():
    """`(x_train, y_train), (x_test, y_test)`: uint8 images (60000, 28, 28) and (10000, 28, 28),
    uint8 labels 0-9 (60000,) and (10000,), in the files' order."""
    y_train, x_train, y_test, x_test = (
        _read_idx(get_file(name, origin=KERAS_ORIGIN + name, cache_subdir=SUBDIR))
        for name in FILES)
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"Fashion-MNIST files disagree: images {x.shape}, labels {y.shape}")
    return (x_train, y_train), (x_test, y_test)


def _read_idx(path):
    """The uint8 array of a gzipped IDX file (magic 0x0801 labels, 0x0803 images)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc}); delete it to "
                         "download it again") from exc
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic not in (0x801, 0x803):
        raise ValueError(f"{path}: not an IDX file of uint8 labels or images")
    ndim = magic - 0x800
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = raw[4 + 4 * ndim:]
    if len(data) != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, i.e. {int(np.prod(shape))} bytes, but "
                         f"the file holds {len(data)} (truncated or corrupt; delete it to "
                         "download it again)")
    return np.frombuffer(data, np.uint8).reshape(shape).copy()
