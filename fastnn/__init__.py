"""fastnn: a fast, lightweight Keras-compatible neural network library.

`import fastnn as keras` is meant to work for classic Keras scripts. Submodules are imported on
first use, so `import fastnn` costs little more than `import numpy`.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "activations", "applications", "autodiff", "backend", "callbacks", "datasets", "distribution",
    "initializers", "layers", "losses", "metrics", "models", "ops", "optimizers", "utils",
    "saving",
}
# Public names re-exported at the top level, as Keras does: name -> submodule.
_EXPORTS = {
    "Sequential": "models", "Model": "models", "Input": "layers",
    "set_num_threads": "backend", "get_num_threads": "backend", "set_backend": "backend",
    "show_config": "backend",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
