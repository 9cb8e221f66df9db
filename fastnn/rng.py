"""fastnn's one random Generator (initialisation, shuffling, dropout), seeded by
keras.utils.set_random_seed. A module of its own, below everything that draws from it (fastnn.utils
re-exports these two, and imports much of fastnn)."""
import random

import numpy as np

_rng = None


def get_rng():
    """The Generator behind initialisation, shuffling and dropout (seeded by set_random_seed)."""
    global _rng
    if _rng is None:
        _rng = np.random.default_rng()
    return _rng


def set_random_seed(seed):
    """Fix every source of randomness fastnn uses (and Python's and NumPy's global ones, as
    keras.utils.set_random_seed does), so a script gives identical results run to run.

    Args:
        seed: An int.

    Example:

    ```python
    fastnn.utils.set_random_seed(42)
    ```
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _rng = np.random.default_rng(seed)
