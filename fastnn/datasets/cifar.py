"""What CIFAR-10 and CIFAR-100 share: reading a batch file, a Python pickle of a dict, through
the restricted unpickler (plain data and NumPy arrays only)."""
import os

import numpy as np

from ..downloads import get_file
from ._common import unpickle


def extracted(folder_name, url, file_hash, inner):
    """The folder `inner` of the archive at `url`, downloaded and extracted as Keras does
    (`get_file(folder_name, extract=True)`: the archive cached as `<folder_name>_archive`).

    Args:
        folder_name: Name of the extracted folder in the cache.
        url: Where the archive is.
        file_hash: The archive's expected hash.
        inner: The folder inside the archive.

    Returns:
        The folder's path.
    """
    return os.path.join(get_file(folder_name, origin=url, extract=True, file_hash=file_hash),
                        inner)


def load_batch(path, label_key="labels"):
    """`(data, labels)` of one batch file: uint8 images (n, 3, 32, 32) and the list of labels.

    Args:
        path: Path of the batch file.
        label_key: The key of the labels in the file. Defaults to `"labels"`.

    Returns:
        A pair `(data, labels)`.
    """
    with open(path, "rb") as f:
        batch = unpickle(f, path, encoding="bytes")     # Python 2 pickles: str keys as bytes
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a pickled {type(batch).__name__}, "
                         "not a dict)")
    batch = {k.decode("utf8") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get(label_key)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list)
            or len(labels) != len(data)):
        raise ValueError(f"{path}: not a CIFAR batch: expected 'data', uint8 of shape "
                         f"(n, 3072), and '{label_key}', a list of n labels")
    return data.reshape(len(data), 3, 32, 32), labels
