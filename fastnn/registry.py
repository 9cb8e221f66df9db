"""Custom classes a saved model may name (Keras's keras.saving registry): a class registered with
`@register_keras_serializable(package=...)`, or passed as `custom_objects=` to load_model /
from_config / model_from_json (or inside `custom_object_scope`), is what a config's class name
resolves to besides fastnn's own classes. Nothing else named in a file is ever imported or
called."""
import contextlib
import inspect
import threading

_REGISTERED = {}            # "package>name" -> class
_SCOPE = threading.local()  # the custom_objects (and safe_mode) in force in this thread


def register_keras_serializable(package="Custom", name=None):
    """Class decorator: register a Layer subclass (or other object) under "package>name" (name
    defaults to the class name), the registered_name Keras writes for it.

    Args:
        package: The package part of the registered name. Defaults to `"Custom"`.
        name: The name part; `None`: the class or function name.

    Returns:
        The decorator.

    Example:

    ```python
    @fastnn.saving.register_keras_serializable(package="my_package")
    class MyLayer(fastnn.layers.Layer):
        ...
    ```
    """
    if not isinstance(package, str) or ">" in package:
        raise ValueError(f"register_keras_serializable: package must be a string without '>', "
                         f"got {package!r}")

    def register(cls):
        key = f"{package}>{name or cls.__name__}"
        if key in _REGISTERED and _REGISTERED[key] is not cls:
            raise ValueError(f"{key} has already been registered to {_REGISTERED[key]}")
        _REGISTERED[key] = cls
        cls._registered_name = key
        return cls
    return register


def get_registered_name(obj):
    """The name a saved config gives obj's class (or obj, a function): "package>name" when
    registered, else its own name.

    Args:
        obj: A class or function.

    Returns:
        A string.
    """
    if inspect.isfunction(obj):
        return getattr(obj, "_registered_name", None) or obj.__name__
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__dict__.get("_registered_name") or cls.__name__


def get_custom_objects():
    """The registry (registered name -> class), as keras.saving.get_custom_objects."""
    return _REGISTERED


@contextlib.contextmanager
def custom_object_scope(custom_objects):
    """Within the block (in this thread), class names in configs also resolve against
    `custom_objects` (name -> class).

    Args:
        custom_objects: A dict `{name: class or function}`.

    Example:

    ```python
    with fastnn.saving.custom_object_scope({"MyLayer": MyLayer}):
        model = fastnn.models.load_model("model.keras")
    ```
    """
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"custom_objects must be a dict or None, got {custom_objects!r}")
    previous = getattr(_SCOPE, "objects", {})
    _SCOPE.objects = {**previous, **(custom_objects or {})}
    try:
        yield
    finally:
        _SCOPE.objects = previous


def lookup(class_name, registered_name=None):
    """The custom class a config names, or None: custom_objects in scope first (by either
    name), then the registry (by registered name), as Keras resolves them."""
    scoped = getattr(_SCOPE, "objects", {})
    for key in (registered_name, class_name):
        if key and key in scoped:
            return scoped[key]
    return _REGISTERED.get(registered_name) if registered_name else None


@contextlib.contextmanager
def safe_mode_scope(safe_mode=None):
    """Within the block (in this thread), whether a config may hold Python bytecode to load
    (a Lambda layer's lambda): safe_mode=False allows it; None keeps the enclosing scope's
    (outside any scope: safe, as Keras's from_config fails closed)."""
    if safe_mode is not None and not isinstance(safe_mode, bool):
        raise TypeError(f"safe_mode must be True, False or None, got {safe_mode!r}")
    previous = getattr(_SCOPE, "safe_mode", None)
    if safe_mode is not None:
        _SCOPE.safe_mode = safe_mode
    try:
        yield
    finally:
        _SCOPE.safe_mode = previous


def in_safe_mode():
    """False only inside safe_mode_scope(False): code in a config must not be loaded."""
    return getattr(_SCOPE, "safe_mode", None) is not False
