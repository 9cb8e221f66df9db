"""Data sets, loaded the way `keras.datasets` loads them. Only the standard library and NumPy.

mnist finds its files as fastnn.datasets.mnist describes; the others download through
fastnn.downloads.get_file into Keras's own cache ($KERAS_HOME, else ~/.keras), from Keras's URLs
with Keras's pinned hashes, so files Keras already downloaded are reused."""
from . import (
               boston_housing,
               california_housing,
               cifar10,
               cifar100,
               fashion_mnist,
               imdb,
               mnist,
               reuters,
)

__all__ = ["boston_housing", "california_housing", "cifar10", "cifar100", "fashion_mnist", "imdb",
           "mnist", "reuters"]
