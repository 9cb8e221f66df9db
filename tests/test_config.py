"""fastnn.show_config(): every line states a real fact about this install (version, build,
OpenMP, threads, BLAS, backend, NumPy, GPU), it writes where it is told, and it never fails. A
second build with FASTNN_NO_OPENMP=1 reports OpenMP off (slow; needs a compiler and Cython)."""
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import _core
from fastnn.backend import blas, get_ops


def _show():
    buf = io.StringIO()
    fastnn.show_config(file=buf)
    return buf.getvalue()


def _rows(text):
    rows = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        assert sep, f"not a 'key: value' line: {line!r}"
        rows[key.strip()] = value.strip()
    return rows


def test_writes_to_file_not_stdout(capsys):
    text = _show()
    assert capsys.readouterr().out == ""
    assert text.endswith("\n") and len(text.splitlines()) >= 8
    fastnn.show_config()
    assert capsys.readouterr().out == text


def test_lines_are_aligned_key_value_pairs():
    lines = _show().splitlines()
    assert len({line.index(":") for line in lines}) == 1, lines
    assert set(_rows("\n".join(lines))) >= {"fastnn", "compiler", "flags", "openmp", "threads",
                                             "blas", "backend", "numpy", "gpu"}


def test_version_backend_and_numpy():
    rows = _rows(_show())
    assert rows["fastnn"] == fastnn.__version__
    assert rows["backend"] == get_ops().name
    assert rows["numpy"] == np.__version__


def test_openmp_line_is_the_compiled_fact():
    text = _show()
    state = "on" if _core.OPENMP else "off"
    assert f"openmp: {state}" in text
    assert _rows(text)["openmp"].split()[0] == state
    # setup.py's decision and the compiler's _OPENMP agree.
    assert _core.BUILD_INFO["openmp"] == state
    assert (_core.BUILD_INFO["openmp_version"] > 0) == _core.OPENMP


def test_threads_line_follows_set_num_threads():
    before = fastnn.get_num_threads()
    assert _rows(_show())["threads"] == str(before)
    try:
        fastnn.set_num_threads(1)
        assert _rows(_show())["threads"] == "1" == str(fastnn.get_num_threads())
    finally:
        fastnn.set_num_threads(before)
    assert _rows(_show())["threads"] == str(fastnn.get_num_threads())


def test_blas_line_names_the_library_in_use():
    line = _rows(_show())["blas"]
    info = blas.install()
    assert line == blas.blas_info()
    assert info["name"] in line and info["symbol"] in line
    assert os.path.basename(info["path"]) in line


def test_build_line_states_compiler_and_flags():
    rows, build = _rows(_show()), _core.BUILD_INFO
    assert build["compiler"] in ("gcc", "clang", "msvc")
    assert rows["compiler"] == build["compiler_version"]
    assert rows["compiler"].split()[0] in ("gcc", "clang", "MSVC")
    flags = rows["flags"].split()
    for flag in build["cflags"].split():
        assert flag in flags or flag.startswith(("-W", "/W")), flag
    assert ("-O3" in flags) or ("/O2" in flags)
    assert "-march=native" not in build["cflags"] + build.get("env_CFLAGS", "")
    assert ("-fopenmp" in build["cflags"] or "/openmp" in build["cflags"]) == _core.OPENMP


def test_gpu_line_without_importing_cupy():
    line = _rows(_show())["gpu"]
    if importlib.util.find_spec("cupy") is None:
        assert line == "none (CuPy not installed)"
        assert "cupy" not in sys.modules


def test_never_fails_when_cupy_or_blas_break(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "cupy" else real_find_spec(name, *a))
    broken = types.ModuleType("cupy")
    broken.__version__ = "0.0"

    def no_driver():
        raise RuntimeError("CUDA driver not found")
    broken.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", broken)

    def no_blas():
        raise ImportError("fastnn found no BLAS")
    monkeypatch.setattr(blas, "blas_info", no_blas)
    rows = _rows(_show())
    assert rows["gpu"].startswith("none (CuPy installed but unusable") and "driver" in rows["gpu"]
    assert rows["blas"] == "unavailable (fastnn found no BLAS)"


# --- a second build, without OpenMP ------------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[1]


def _compiler():
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the compiler probe here is for gcc/clang")
@pytest.mark.skipif(not (_ROOT / "setup.py").exists() or not (_ROOT / "csrc").is_dir(),
                    reason="needs the source checkout beside tests/")
@pytest.mark.skipif(_compiler() is None, reason="no C compiler")
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("Cython", "setuptools")),
                    reason="needs Cython and setuptools to build")
def test_no_openmp_build_reports_openmp_off(tmp_path):
    src = tmp_path / "fastnn_src"
    junk = shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__", "*.pyc")
    shutil.copytree(_ROOT / "fastnn", src / "fastnn", ignore=junk)
    shutil.copytree(_ROOT / "csrc", src / "csrc")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(_ROOT / name, src / name)
    env = dict(os.environ, FASTNN_NO_OPENMP="1", PYTHONPATH=str(src))
    env.pop("PYTHONSAFEPATH", None)
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                            "--parallel", "2"], cwd=src, env=env, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    code = ("import io, fastnn; from fastnn import _core; b = io.StringIO(); "
            "fastnn.show_config(file=b); print(fastnn.__file__); print(_core.OPENMP); "
            "print(_core.BUILD_INFO['openmp']); print(b.getvalue())")
    run = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    where, omp, recorded, text = run.stdout.rstrip("\n").split("\n", 3)
    assert Path(where).resolve().is_relative_to(src.resolve())
    assert (omp, recorded) == ("False", "off")
    assert "openmp: off" in text and _rows(text)["threads"] == "1"
    assert "-fopenmp" not in _rows(text)["flags"]
