"""Keras's utilities: to_categorical, set_random_seed, get_file, load_img / img_to_array /
array_to_img / save_img; plus fastnn's one random Generator and a history plot."""
import numpy as np

from .rng import get_rng, set_random_seed  # noqa: F401  (keras.utils names)


def to_categorical(x, num_classes=None):
    """Integer class vector -> one-hot float matrix, keras.utils.to_categorical's rules: a
    trailing axis of size 1 is dropped, num_classes defaults to max(x) + 1.

    Args:
        x: Class indices, an integer array.
        num_classes: Number of classes; `None`: `max(x) + 1`.

    Returns:
        A float one-hot array whose last axis has size `num_classes`.

    Example:

    ```python
    fastnn.utils.to_categorical([0, 2], num_classes=3)   # [[1, 0, 0], [0, 0, 1]]
    ```
    """
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("to_categorical expects integer class labels; x holds "
                             "non-integer or non-finite values")
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"to_categorical expects integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    shape = arr.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    flat = arr.reshape(-1)
    if num_classes is None:
        num_classes = int(flat.max()) + 1 if flat.size else 0
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must lie in [0, {num_classes - 1}], got "
                         f"values from {flat.min()} to {flat.max()}")
    out = np.zeros((flat.size, num_classes))
    out[np.arange(flat.size), flat] = 1.0
    return out.reshape(shape + (num_classes,))


def plot_history(history, path=None, title=None):
    """Plot loss (and every metric, with its val_ twin) per epoch from a History or its dict.
    Saves a PNG when `path` is given; returns the matplotlib Figure.

    Args:
        history: A `History` (from `fit`) or its `history` dict.
        path: Where to save the PNG, or `None`.
        title: The figure's title, or `None`.

    Returns:
        The matplotlib `Figure`.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError("plot_history expects a History (or its .history dict) with at least "
                         "one logged value")
    names = [k for k in logs if not k.startswith("val_")]
    names.sort(key=lambda k: (k != "loss", k))
    epochs = getattr(history, "epoch", None) or list(range(len(logs[names[0]])))
    epochs = [e + 1 for e in epochs]
    from matplotlib.ticker import MaxNLocator
    size = (5 * len(names), 3.8)
    if path is None:    # for display (a notebook): pyplot's current backend
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=size)
    else:               # for a file: no pyplot, so no GUI backend on a headless machine
        from matplotlib.figure import Figure
        fig = Figure(figsize=size)
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(epochs[:len(logs[name])], logs[name], "o-", label=f"training {name}")
        if "val_" + name in logs:
            ax.plot(epochs[:len(logs["val_" + name])], logs["val_" + name], "s--",
                    label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


# Keras's keras.utils file and image helpers (Pillow is imported only when an image function runs).
# Data given as batches (fit / evaluate / predict take them) and Keras's dataset helpers.
from .data_adapters import PyDataset  # noqa: E402,F401
from .dataset_utils import image_dataset_from_directory, split_dataset  # noqa: E402,F401
from .downloads import get_file  # noqa: E402,F401
from .images import array_to_img, img_to_array, load_img, save_img  # noqa: E402,F401
from .registry import custom_object_scope, get_custom_objects, register_keras_serializable  # noqa: E402,F401,E501

Sequence = PyDataset    # Keras's older name, kept as an alias in keras.utils
