"""Every public class and function of fastnn's API has a docstring, in Keras's style: one whose
object takes parameters has an "Args:" section, so that `help(fastnn.layers.Dense)` helps.

The API is walked by its public module names (not file paths): each module's `__all__` when it
has one, else its public names that are classes or functions of fastnn's public modules, plus
the public methods of Model, Sequential and Layer (their own and those they inherit, such as
fit). An object reached under several names is checked once."""
import importlib
import inspect

MODULES = [
    "fastnn", "fastnn.activations", "fastnn.applications", "fastnn.applications.imagenet_utils",
    "fastnn.applications.resnet", "fastnn.applications.resnet50", "fastnn.backend",
    "fastnn.callbacks", "fastnn.constraints", "fastnn.datasets",
    "fastnn.datasets.boston_housing", "fastnn.datasets.california_housing",
    "fastnn.datasets.cifar10", "fastnn.datasets.cifar100", "fastnn.datasets.fashion_mnist",
    "fastnn.datasets.imdb", "fastnn.datasets.mnist", "fastnn.datasets.reuters",
    "fastnn.distribution", "fastnn.initializers", "fastnn.layers", "fastnn.losses",
    "fastnn.metrics", "fastnn.models", "fastnn.ops", "fastnn.optimizers",
    "fastnn.optimizers.schedules", "fastnn.regularizers", "fastnn.saving", "fastnn.utils",
]
METHODS_OF = ["fastnn.models.Model", "fastnn.models.Sequential", "fastnn.layers.Layer"]


def _is_fastnn(obj):
    """A class or function of fastnn's own, from a public module (helpers that a module imports
    from a private one such as fastnn._config are not part of its API)."""
    home = (getattr(obj, "__module__", None) or "").split(".")
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and home[0] == "fastnn" and \
        not any(part.startswith("_") for part in home)


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return [n for n in names if _is_fastnn(getattr(module, n, None))]


def _own_doc(obj):
    """The object's own docstring: a class does not count its base class's (help() would show
    the base's text for a class that computes something else)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else inspect.getdoc(obj)
    return (doc or "").strip()


def _parameters(obj):
    """The named parameters a user passes (self, *args and **kwargs left out)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values() if p.name not in ("self", "cls")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def api():
    """[(qualified name, object)] of the public API, each object once."""
    seen, found = set(), []

    def add(name, obj):
        if id(obj) not in seen:
            seen.add(id(obj))
            found.append((name, obj))
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(_public_names(module)):
            add(f"{module_name}.{name}", getattr(module, name))
    for path in METHODS_OF:
        module_name, _, cls_name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        for name in dir(cls):      # its own methods and those it inherits (fit, ...)
            member = inspect.getattr_static(cls, name)
            if not name.startswith("_") and _is_fastnn(member):
                add(f"{path}.{name}", member)
    return found


def problems(objects):
    """[(name, what is wrong)] for objects without a docstring or without its Args: section."""
    bad = []
    for name, obj in objects:
        doc = _own_doc(obj)
        if not doc:
            bad.append((name, "no docstring"))
        elif _parameters(obj) and "Args:" not in doc:
            bad.append((name, "no Args: section"))
    return bad


def test_the_walk_reaches_the_api():
    names = {name for name, _ in api()}
    for expected in ("fastnn.layers.Dense", "fastnn.models.Model.fit", "fastnn.Sequential",
                     "fastnn.losses.MeanSquaredError", "fastnn.datasets.mnist.load_data",
                     "fastnn.layers.Layer.get_config"):
        assert expected in names
    assert len(names) > 300


def test_every_public_name_has_a_keras_style_docstring():
    bad = problems(api())
    assert not bad, f"{len(bad)} public names lack a docstring or its Args: section:\n" + \
        "\n".join(f"  {name}: {why}" for name, why in bad)


def test_the_check_names_what_is_missing():
    def documented(x, y=1):
        """Adds.

        Args:
            x: a number.
            y: another, default 1.
        """

    def no_args(x):
        """Adds."""

    def undocumented():
        pass

    class Base:
        """A base.

        Args:
            n: how many.
        """

        def __init__(self, n):
            self.n = n

    class Child(Base):
        pass
    assert problems([("d", documented), ("a", no_args), ("u", undocumented), ("b", Base),
                     ("c", Child)]) == [("a", "no Args: section"), ("u", "no docstring"),
                                        ("c", "no docstring")]
