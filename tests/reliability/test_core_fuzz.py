"""The C boundary: every fastnn._core entry point checks its arguments before touching memory
(no None buffers, dtypes, contiguity, consistent shapes, 64-bit size arithmetic, no output
aliasing an input where the kernel is not in place), and its errors name the argument. Each
check runs in a subprocess, so a crash fails the test instead of killing the test run."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "core_fuzz_worker.py")


def _env():
    # The installed fastnn, as the tests import it (never the source tree: it has no
    # compiled core unless built in place).
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(args, timeout=120):
    return subprocess.run([sys.executable] + args, capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=HERE)


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_every_kernel(seed):
    """~1,000 bad calls over every _core kernel (and DenseStack): each raises TypeError,
    ValueError or OverflowError; none crashes, none silently succeeds."""
    r = _run([WORKER, str(seed), "900"], timeout=240)
    last = r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else []
    assert r.returncode == 0, f"the worker died (rc {r.returncode}) at {last}"
    report = json.loads(r.stdout)
    assert not report["missing_spec"], \
        f"_core kernels without a fuzz spec in core_fuzz_worker.py: {report['missing_spec']}"
    assert len(report["kernels"]) >= 30
    assert not report["valid_failed"], report["valid_failed"]
    assert not report["wrong_error"], report["wrong_error"][:10]
    assert not report["silent"], report["silent"][:10]
    assert report["cases"] > 700
    assert set(report["per_kernel"]) >= set(report["kernels"]) | {"DenseStack"}


def _isolated(code):
    """Run `code` (which has np, _core) in a fresh interpreter; return its stdout."""
    prelude = "import numpy as np\nfrom fastnn import _core\nf32 = np.float32\n"
    r = _run(["-c", prelude + textwrap.dedent(code)], timeout=60)
    assert r.returncode == 0, f"crashed or failed (rc {r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def _expect(call, exc, *words):
    """Code that runs `call` and prints the error, checked for `exc` and the words."""
    return f"""
try:
    {call}
except {exc} as e:
    print("RAISED", e)
else:
    print("NO ERROR")
"""


OPTIMIZER_NONE = {
    "sgd_update": "_core.sgd_update(w, g, None, 0.1, 0.9, False)",
    "adam_update": "_core.adam_update(w, g, None, None, None, 1e-3, 0.9, 0.999, 1e-7)",
    "rmsprop_update": "_core.rmsprop_update(w, g, None, None, None, 1e-3, 0.9, 0.0, 1e-7)",
    "adagrad_update": "_core.adagrad_update(w, g, None, 1e-3, 1e-7)",
    "adadelta_update": "_core.adadelta_update(w, g, None, None, 1.0, 0.95, 1e-7)",
    "adamax_update": "_core.adamax_update(w, g, None, None, 1e-3, 0.9, 0.999, 1e-7)",
    "nadam_update":
        "_core.nadam_update(w, g, None, None, 1e-3, .9, .999, 1e-7, .9, .9, .9, .81, .999)",
    "ftrl_update": "_core.ftrl_update(w, g, None, None, 1e-3, -0.5, 0., 0., 0., 0.)",
}


@pytest.mark.parametrize("name", sorted(OPTIMIZER_NONE))
def test_optimizer_update_none_slot(name):
    """Was a NULL pointer and a segfault in all eight updates."""
    out = _isolated("w = np.zeros(100000, f32); g = np.ones(100000, f32)\n" +
                    _expect(OPTIMIZER_NONE[name], "TypeError"))
    assert out.startswith("RAISED"), out
    assert name in out and "got None" in out, out


def test_optimizer_update_none_grad():
    out = _isolated("w = np.zeros(10, f32)\n" +
                    _expect("_core.adagrad_update(w, None, np.zeros(10, f32), 1e-3, 1e-7)",
                            "TypeError"))
    assert "adagrad_update: g" in out, out


@pytest.mark.parametrize("call", [
    "_core.batchnorm_stats(x, None, None)",
    "_core.batchnorm_stats(x, np.zeros(4, f32), None)",
    "_core.batchnorm_update_moving(np.zeros(4, f32), None, np.zeros(4, f32), None, 0.9)",
    "_core.batchnorm_update_moving(None, None, None, None, 0.9)",
])
def test_batchnorm_none_buffers(call):
    """Was a NULL pointer and a segfault."""
    out = _isolated("x = np.ones((100000, 4), f32)\n" + _expect(call, "TypeError"))
    assert out.startswith("RAISED") and "got None" in out, out


@pytest.mark.parametrize("call", [
    "_core.im2col(x, (3, 3, 2**31 - 1, 2**31 - 1, 0, 0, 3, 3), np.zeros((9, 27), f32))",
    "_core.maxpool_forward(x, (2, 2, 2**31 - 1, 2**31 - 1, 0, 0, 3, 3), "
    "np.zeros((1, 3, 3, 3), f32), np.zeros((1, 3, 3, 3), np.int32))",
    "_core.avgpool_forward(x, (2, 2, 2**31 - 1, 1, 0, 0, 3, 3), np.zeros((1, 3, 3, 3), f32))",
    "_core.col2im(np.zeros((9, 27), f32), (3, 3, 2**30, 2**30, 0, 0, 3, 3), x)",
    "_core.maxpool_forward(x, (2**31 - 1, 2, 1, 1, 0, 0, 3, 3), "
    "np.zeros((1, 3, 3, 3), f32), np.zeros((1, 3, 3, 3), np.int32))",
])
def test_window_geometry_overflow(call):
    """(ow - 1) * sw + kw overflowed int: a segfault in im2col and maxpool_forward."""
    out = _isolated("x = np.ones((1, 8, 8, 3), f32)\n" + _expect(call, "ValueError"))
    assert out.startswith("RAISED") and "window" in out, out


@pytest.mark.parametrize("opt,slots", [(1, 0), (1, 1), (2, 0), (3, 0), (4, 1), (5, 0), (6, 1),
                                       (7, 1)])
def test_dense_stack_missing_slots(opt, slots):
    """DenseStack(train=True, opt=adam, slots=()) then .run() was a segfault."""
    out = _isolated(f"""
layers = [(np.ones((8, 4), f32), np.zeros(4, f32), np.zeros((8, 4), f32), np.zeros(4, f32), 1, 0.0)]
params = np.zeros(36, f32)
slots = tuple(np.zeros(36, f32) for _ in range({slots}))
try:
    s = _core.DenseStack(layers, 4, True, opt={opt}, params=params, grads=np.zeros(36, f32),
                         slots=slots)
    k = _core.fnn_optimizer_scalars if False else None
    s.run(np.ones((8, 8), f32), np.zeros(8, np.int32), None, None, 0, 2, True,
          np.zeros((2, s.n_scalars), f32), np.zeros(4))
except TypeError as e:
    print("RAISED", e)
else:
    print("NO ERROR")
""")
    assert out.startswith("RAISED") and "optimizer slot" in out, out


def test_dense_stack_sgd_momentum_without_slot():
    out = _isolated("""
layers = [(np.ones((8, 4), f32), np.zeros(4, f32), np.zeros((8, 4), f32), np.zeros(4, f32), 1, 0.0)]
s = _core.DenseStack(layers, 4, True, opt=0, params=np.zeros(36, f32), grads=np.zeros(36, f32))
sc = np.array([[0, 0.1, 0.9, 0]] * 2, f32)
try:
    s.run(np.ones((8, 8), f32), np.zeros(8, np.int32), None, None, 0, 2, True, sc, np.zeros(4))
except ValueError as e:
    print("RAISED", e)
else:
    print("NO ERROR")
""")
    assert out.startswith("RAISED") and "momentum" in out, out


@pytest.mark.parametrize("call", [
    "_core.gemm(a, b, a)",                                     # out is a
    "_core.gemm(a, b2, b2)",                                   # out is b
    "_core.gemm(buf[:16].reshape(4, 4), b, buf[4:20].reshape(4, 4))",  # shifted overlap
    "_core.dense_forward(a, b, None, a, a, 0, 0.0)",           # z is x
    "_core.dense_forward(a, b, None, z, b, 0, 0.0)",           # y is the kernel
    "_core.column_sum(a, a[0])",
    "_core.act_forward(1, 0.0, buf[:16].reshape(4, 4), buf[1:17].reshape(4, 4))",
    "_core.batchnorm_stats(a, a[0], np.zeros(4, f32))",
    "_core.adam_update(w, w, m, v, None, 1e-3, .9, .999, 1e-7)",
    "_core.adam_update(w, g, m, m, None, 1e-3, .9, .999, 1e-7)",
])
def test_aliased_outputs_rejected(call):
    """An output sharing memory with an input of a kernel that is not in place was accepted
    and gave wrong results."""
    out = _isolated("""
a = np.ones((4, 4), f32); b = np.ones((4, 4), f32); b2 = np.ones((4, 4), f32)
z = np.zeros((4, 4), f32); buf = np.ones(32, f32)
w, g, m, v = (np.zeros(8, f32) for _ in range(4))
""" + _expect(call, "ValueError"))
    assert out.startswith("RAISED") and ("shares memory" in out or "overlaps" in out), out


def test_in_place_uses_still_allowed():
    """The in-place calls the library itself makes keep working."""
    out = _isolated("""
x = np.random.default_rng(0).standard_normal((6, 5)).astype(f32)
k = np.ones((5, 3), f32) * 0.1
z = np.zeros((6, 3), f32)
_core.dense_forward(x, k, None, z, z, 1, 0.0)              # y is z
dy = np.ones((6, 3), f32)
_core.act_backward(2, 0.0, None, z, dy, dy)                # dz is dy
_core.dense_backward(x, k, None, z, dy, dy, k, None, None, 0, 0.0, 0.01)  # d_kernel is kernel
_core.act_forward(1, 0.0, x, x)                            # y is z
m, v = np.zeros(5, f32), np.ones(5, f32)
_core.batchnorm_apply(x, m, v, None, None, 1e-3, x)              # y is x
_core.batchnorm_backward(x, dy[:, :1].copy().repeat(5, 1), m, v, None, 1e-3, x.copy(), None, None)
d = np.ones((6, 5), f32)
_core.batchnorm_backward(x, d, m, v, None, 1e-3, d, None, None)    # dx is dy
print("OK")
""")
    assert out.strip() == "OK"


@pytest.mark.parametrize("call,words", [
    ("_core.gemm(a, a.astype(np.float64), a)", ["gemm: b", "float32", "float64"]),
    ("_core.dense_forward(a, a, None, a[:, ::2], a, 0, 0.0)",
     ["dense_forward: z", "C-contiguous"]),
    ("_core.softmax_xent_sparse(a, np.zeros(4, np.int64), None, 1.0, np.zeros(4, f32), None)",
     ["labels", "int32", "int64"]),
    ("_core.batchnorm_apply(a, np.zeros(3, f32), np.ones(4, f32), None, None, 1e-3, a.copy())",
     ["batchnorm_apply: mean", "(4,)", "(3,)"]),
    ("_core.maxpool_forward(np.zeros((1, 4, 4, 1), f32), (2, 2, 2, 2, 0, 0, 2, 2), "
     "np.zeros((1, 2, 2, 1), f32), np.zeros((1, 2, 2, 1), np.float32))",
     ["maxpool_forward: argmax", "int32"]),
    ("_core.gemm([[1.0]], a, a)", ["gemm: a", "list"]),
])
def test_errors_name_the_argument(call, words):
    """Was Cython's anonymous "Buffer dtype mismatch"."""
    out = _isolated("a = np.ones((4, 4), f32)\n" + _expect(call, "(TypeError, ValueError)"))
    assert out.startswith("RAISED"), out
    for w in words:
        assert w in out, (w, out)
    assert "Buffer dtype mismatch" not in out
