"""The code's shape: no import cycle among fastnn's modules (each module's top-level imports of
fastnn's own modules), and a README short enough to be a product page (issue 21)."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SOURCE = os.path.join(ROOT, "fastnn")
pytestmark = pytest.mark.skipif(not os.path.isdir(SOURCE), reason="needs the source tree")


def _modules():
    """{module name: path} of every module and package in fastnn/."""
    found = {}
    for folder, _, files in os.walk(SOURCE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = \
                    path
    return found


def _imports(module, path, modules):
    """The fastnn modules `module` imports at its top level (not inside functions)."""
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in modules else base)
    return {m for m in out if m in modules and m != module}


# Cycles not yet broken, each listed to break; a new cycle fails. (The last two, fastnn.layers
# <-> recurrent / sequence_layers, went when fastnn.layers became a package whose modules build
# on fastnn.layers.core, never on the package.)
KNOWN_CYCLES = set()


def test_no_new_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    found = {tuple(c) for c in cycles}
    assert found <= KNOWN_CYCLES, "import cycles: " + "; ".join(
        " -> ".join(c) for c in sorted(found - KNOWN_CYCLES))
    assert found == KNOWN_CYCLES, "cycles gone, remove them from KNOWN_CYCLES: " \
        f"{sorted(KNOWN_CYCLES - found)}"


def test_the_import_graph_is_found():
    """(The cycle test sees the real imports: layers imports the backend, say.)"""
    modules = _modules()
    assert "fastnn.backend" in _imports("fastnn.layers.core", modules["fastnn.layers.core"],
                                        modules)
    assert "fastnn.layers.core" in _imports("fastnn.trainer", modules["fastnn.trainer"], modules)
    assert {"fastnn.layers.core", "fastnn.layers.sequence", "fastnn.layers.recurrent"} <= \
        _imports("fastnn.layers", modules["fastnn.layers"], modules)
    assert "fastnn.activations" in _imports("fastnn.layers.recurrent",
                                            modules["fastnn.layers.recurrent"], modules)


def test_readme_is_a_product_page():
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"
    text = "\n".join(lines)
    assert 'pip install ".[plot]" && fastnn-demo' in text
    assert 'pip install ".[test]" && FASTNN_DATA_DIR=../shared/data/mnist pytest' in text


def test_layers_package_exports_its_layers():
    """fastnn.layers (a package: core, sequence, recurrent) exports the public layers; each
    says where it is defined (pickle and help() find it there) and counts as fastnn's own."""
    import sys

    from fastnn import layers
    from fastnn.layers.core import _CLASSES, _is_builtin

    for name in layers.__all__:
        obj = getattr(layers, name)
        assert getattr(sys.modules[obj.__module__], obj.__name__) is obj, name
        if isinstance(obj, type) and issubclass(obj, layers.Layer):
            assert _is_builtin(obj), name
    assert {"Dense", "Embedding", "LSTM", "Bidirectional"} <= set(_CLASSES)
    assert not _is_builtin(type("Mine", (layers.Layer,), {"__module__": "user_code"}))


# What a function may import in its body. An optional dependency, imported when the feature that
# needs it runs, so that fastnn imports without it: CuPy (the GPU backend), h5py (.h5 files),
# Pillow (image files), mpi4py (data-parallel), matplotlib (plot_history); SciPy, a dependency
# but a 0.1-0.15 s import, for one op (exact GELU's erf) and a BLAS fallback; and the compiled
# fastnn._core, since fastnn imports without it (a source checkout: CpuOps says what is missing).
OPTIONAL = {"cupy", "cupyx", "h5py", "PIL", "mpi4py", "matplotlib", "scipy", "fastnn._core"}
# Function-local imports of fastnn's own modules, each (module, imported module) and why; a new
# one fails, and one gone must leave this list (issue 21). Only the backend's are left: it loads
# only the implementation chosen at run time (cpu.py needs the compiled core; base.py needs
# fastnn.activations, which needs get_ops from fastnn.backend). (models <-> saving went when the
# files moved to fastnn.model_files, which knows no model class and which models imports;
# the wrappers -> models when a layer serialized itself: Layer._config_entry, which Model
# overrides, and layer_from_entry, which finds the model classes models registers in core.)
KNOWN_LOCAL = {
    ("fastnn.backend", "fastnn.backend.base"), ("fastnn.backend", "fastnn.backend.cpu"),
    ("fastnn.backend", "fastnn.backend.cupy"),
}


def _local_imports(module, path, modules):
    """(line, imported module) of each import inside a function of `module`."""
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                out += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    out.append((node.lineno, target if target in modules or
                                target == "fastnn._core" else base))
    return out


def test_function_local_imports_only_for_optional_dependencies():
    modules = _modules()
    bad, known = [], set()
    for module, path in sorted(modules.items()):
        for line, target in _local_imports(module, path, modules):
            if target in OPTIONAL or target.split(".")[0] in OPTIONAL:
                continue
            if (module, target) in KNOWN_LOCAL:
                known.add((module, target))
                continue
            bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target}")
    assert not bad, "function-local imports (move them to the top of the module):\n" + \
        "\n".join(bad)
    assert known == KNOWN_LOCAL, f"gone, remove them from KNOWN_LOCAL: {KNOWN_LOCAL - known}"


def test_the_local_import_check_sees_them():
    modules = _modules()
    found = {t for _, t in _local_imports("fastnn.model_files", modules["fastnn.model_files"],
                                          modules)}
    assert "h5py" in found
    found = {t for _, t in _local_imports("fastnn.backend", modules["fastnn.backend"], modules)}
    assert {"fastnn._core", "fastnn.backend.cpu", "cupy"} <= found


# Modules whose import pulls in the saving, models or layers modules: each is imported first in
# a fresh interpreter, then the rest (a module importing one that imports it back fails there,
# even where the static graph above has no cycle: a package's __init__, say).
FIRST_IMPORTS = ["fastnn", "fastnn.models", "fastnn.saving", "fastnn.layers", "fastnn.layers.core",
                 "fastnn.layers.sequence", "fastnn.layers.recurrent", "fastnn.model_files",
                 "fastnn.model_config", "fastnn.trainer"]


def test_imports_in_any_order_in_a_fresh_interpreter(tmp_path):
    script = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import fastnn
from fastnn.layers import LSTM, Bidirectional, Dense, Input, TimeDistributed
inner = fastnn.Sequential([Input((6,)), Dense(2)])
model = fastnn.models.model_from_json(fastnn.Sequential(
    [Input((5, 3)), TimeDistributed(Dense(3)), Bidirectional(LSTM(3)), inner]).to_json())
assert [type(x).__name__ for x in model.layers] == \
    ["TimeDistributed", "Bidirectional", "Sequential"], model.layers
assert fastnn.saving.load_model is fastnn.models.load_model
"""
    # the fastnn this test runs (installed, or a checkout built in place), from a folder
    # where no source checkout can shadow it
    import fastnn
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    env = {**os.environ, "PYTHONPATH": home + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = [(first, subprocess.Popen(
        [sys.executable, "-c", script, first, *[m for m in FIRST_IMPORTS if m != first]],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for first in FIRST_IMPORTS]
    failed = []
    for first, run in runs:
        out = run.communicate(timeout=300)[0]
        if run.returncode:
            failed.append(f"{first} first:\n{out}")
    assert not failed, "\n".join(failed)


def test_ruff_is_clean():
    """pyproject.toml's [tool.ruff] rules hold over the code (.ci/run runs the same check)."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    run = subprocess.run([ruff, "check", "--no-cache", "fastnn", "tests", "benchmarks",
                          "setup.py"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_layers_never_reach_into_another_layers_private_names():
    """A layer class in fastnn/layers/ touches only its own private names (self._x); what it
    needs of the layers it runs (TimeDistributed, Bidirectional, the 1-D pooling layers) goes
    through the Layer methods meant for that (_build_inner, _lend_thread_state, ...)."""
    import importlib

    from fastnn.layers.core import Layer

    layer_src = ast.parse(open(os.path.join(SOURCE, "layers", "core.py")).read())
    base = next(n for n in layer_src.body if isinstance(n, ast.ClassDef) and n.name == "Layer")
    private = {n.name for n in ast.walk(base) if isinstance(n, ast.FunctionDef)} | \
        {n.attr for n in ast.walk(base) if isinstance(n, ast.Attribute) and
         isinstance(n.value, ast.Name) and n.value.id == "self"}
    private = {p for p in private if p.startswith("_") and not p.startswith("__")}
    assert {"_vars", "_thread", "_maybe_build", "_state"} <= private
    bad = []
    for name in ("core", "sequence", "recurrent"):
        module = importlib.import_module(f"fastnn.layers.{name}")
        tree = ast.parse(open(module.__file__).read())
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef) or cls.name == "Layer" or \
                    not issubclass(getattr(module, cls.name), Layer):
                continue
            for node in ast.walk(cls):
                if not (isinstance(node, ast.Attribute) and node.attr in private):
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls") or \
                        isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                    continue
                bad.append(f"{name}.py:{node.lineno} {cls.name}: {ast.unparse(node)}")
    assert not bad, "a layer reaching into another's private names:\n" + "\n".join(bad)
