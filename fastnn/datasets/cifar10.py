"""CIFAR-10 (Alex Krizhevsky), as `keras.datasets.cifar10.load_data()` returns it: the Python
version's archive from the CIFAR page, Keras's pinned hash and cache layout."""
import os

import numpy as np

from .cifar import extracted, load_batch

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FILE_HASH = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"   # Keras's pin
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")


def load_data():
    """`(x_train, y_train), (x_test, y_test)`: uint8 images (50000, 32, 32, 3) and
    (10000, 32, 32, 3) (channels last, fastnn's only image layout), uint8 labels 0-9 of shapes
    (50000, 1) and (10000, 1); the training set is data_batch_1 to data_batch_5 in order."""
    folder = extracted("cifar-10-batches-py-target", URL, FILE_HASH, "cifar-10-batches-py")
    train = [load_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
    x_test, y_test = load_batch(os.path.join(folder, "test_batch"))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([np.asarray(y, np.uint8) for _, y in train])
    return ((x_train.transpose(0, 2, 3, 1), y_train.reshape(-1, 1)),
            (x_test.transpose(0, 2, 3, 1), np.asarray(y_test, np.uint8).reshape(-1, 1)))
