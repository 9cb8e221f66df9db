"""Keras applications: pretrained models and their pre- and post-processing.

`fastnn.applications.ResNet50` (and ResNet101, ResNet152), with the module paths Keras users
import: `fastnn.applications.resnet50`, `.resnet`, `.imagenet_utils`. Submodules load on first
use."""
import importlib

_SUBMODULES = {"imagenet_utils", "resnet", "resnet50"}
_EXPORTS = {"ResNet50": "resnet", "ResNet101": "resnet", "ResNet152": "resnet"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fastnn.applications' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
