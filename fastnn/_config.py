"""Checks for configs read from files (config.json, a compile_config, an initializer or optimizer
dict). A malformed entry raises TypeError (wrong JSON type) or ValueError (bad value, missing key,
unknown name) naming where it sits in the config and the value received, before anything is
built. Nothing named in a config is ever imported or called: class names resolve only against
fastnn's own tables."""
import inspect
import math
import reprlib

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6
_REPR.maxlevel = 3


def short(value):
    """repr(value), cut short: a crafted file may hold huge or deeply nested values."""
    return _REPR.repr(value)


def _type_name(value):
    return {dict: "a JSON object", list: "a JSON array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                           type(value).__name__)


def fail_type(path, expected, value):
    raise TypeError(f"{path}: expected {expected}, got {_type_name(value)}: {short(value)}")


def fail_value(path, expected, value):
    raise ValueError(f"{path}: expected {expected}, got {short(value)}")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expect_dict(value, path):
    if not isinstance(value, dict):
        fail_type(path, "a JSON object", value)
    return value


def expect_list(value, path):
    if not isinstance(value, (list, tuple)):
        fail_type(path, "a JSON array", value)
    return value


def expect_str(value, path, none_ok=False):
    if value is None and none_ok:
        return value
    if not isinstance(value, str):
        fail_type(path, "a string" + (" or null" if none_ok else ""), value)
    return value


def expect_bool(value, path):
    if not isinstance(value, bool):
        fail_type(path, "true or false", value)
    return value


def expect_int(value, path, minimum=None, none_ok=False):
    if value is None and none_ok:
        return value
    if not is_int(value):
        fail_type(path, "an integer" + (" or null" if none_ok else ""), value)
    if minimum is not None and value < minimum:
        fail_value(path, f"an integer >= {minimum}", value)
    return value


def expect_number(value, path, none_ok=False):
    if value is None and none_ok:
        return value
    if not is_number(value):
        fail_type(path, "a number" + (" or null" if none_ok else ""), value)
    if not math.isfinite(value):
        fail_value(path, "a finite number", value)
    return value


def expect_ints(value, path, minimum=None):
    """An int, or a list of ints (kernel sizes, strides, axes)."""
    if is_int(value):
        return expect_int(value, path, minimum)
    for i, v in enumerate(expect_list(value, path)):
        expect_int(v, f"{path}[{i}]", minimum)
    return value


def expect_shape(value, path, none_ok=True):
    """A shape: a list of positive ints or nulls (a null is an unknown size)."""
    if value is None and none_ok:
        return value
    for i, d in enumerate(expect_list(value, path)):
        if d is not None:
            expect_int(d, f"{path}[{i}]", minimum=1)
    return value


def get_key(config, key, path, required=True, default=None):
    if key not in config:
        if required:
            raise ValueError(f"{path}: missing key {key!r}")
        return default
    return config[key]


def object_spec(value, path, kind):
    """A serialized object {"class_name": ..., "config": {...}, "module": ...,
    "registered_name": ...} -> (class_name, config). "module" is never imported."""
    expect_dict(value, path)
    class_name = expect_str(get_key(value, "class_name", path), f"{path}.class_name")
    config = value.get("config")
    config = {} if config is None else config
    for key in ("module", "registered_name"):
        if key in value:
            expect_str(value[key], f"{path}.{key}", none_ok=True)
    if not isinstance(config, dict):
        fail_type(f"{path}.config", f"the {kind}'s config, a JSON object", config)
    return class_name, config


def _init_params(cls):
    """{name: default} for every keyword cls's constructor accepts, following **kwargs up the
    class hierarchy; required parameters map to inspect.Parameter.empty."""
    params = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        more = False
        for name, p in inspect.signature(init).parameters.items():
            if name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                more = True
                continue
            params.setdefault(name, p.default)
        if not more:
            break
    return params


def check_kwargs(cls, config, path, checks=None):
    """Check a config dict against cls's constructor: every key must be one of its parameters,
    and each value of the JSON type its default has (a bool for a bool, a finite number for a
    number, a string for a string; a number or null where the default is null). `checks` maps a
    key to its own check(value, path)."""
    expect_dict(config, path)
    params = _init_params(cls)
    checks = checks or {}
    for key, value in config.items():
        where = f"{path}.{key}"
        if key not in params:
            raise ValueError(f"{path}: unknown key {key!r} (value {short(value)}) for "
                             f"{cls.__name__}; it accepts {', '.join(sorted(params))}")
        if key in checks:
            checks[key](value, where)
            continue
        default = params[key]
        if key == "name":
            expect_str(value, where, none_ok=True)
        elif isinstance(default, bool):
            expect_bool(value, where)
        elif is_number(default):
            expect_number(value, where)
        elif isinstance(default, str):
            expect_str(value, where)
        elif default is None:
            expect_number(value, where, none_ok=True)
    missing = [k for k, d in params.items() if d is inspect.Parameter.empty and k not in config]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(map(repr, missing))} for "
                         f"{cls.__name__}")
    return config


def without_defaults(config, defaults, owner):
    """config without the keys Keras writes for features fastnn does not implement, each at
    the value that leaves the math unchanged (Keras's default); any other value raises,
    naming the owner, the key and the value: nothing is silently ignored."""
    config = dict(config)
    for key, default in defaults.items():
        if key in config:
            value = config.pop(key)
            if value != default:
                raise ValueError(f"{owner}: {key}={short(value)} is not supported by fastnn "
                                 f"(only {default!r}, Keras's default)")
    return config


def prefixed(exc, prefix):
    """The same kind of error (TypeError or ValueError) with `prefix: ` before its message."""
    kind = TypeError if isinstance(exc, TypeError) else ValueError
    if str(exc).startswith(f"{prefix}: ") and type(exc) is kind:
        return exc
    return kind(f"{prefix}: {exc}")
