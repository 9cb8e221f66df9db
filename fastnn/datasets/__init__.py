"""Data sets, loaded the way `keras.datasets` loads them. Only the standard library and NumPy."""
from . import mnist

__all__ = ["mnist"]
