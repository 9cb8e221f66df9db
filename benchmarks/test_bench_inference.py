"""Inference and start-up, per system: predict on 10,000 MNIST images at batch 32 and 1024, the
latency of one image through predict() and through a direct call, and the whole-process time
of an import (each import in a fresh interpreter).

The network is the mlp_adam one (784-128-64-10), untrained: the weights do not change the time."""
import os
import subprocess
import sys

import numpy as np
import pytest
import workloads as wl

N_PREDICT = 10_000
CASES = {"batch32": 32, "batch1024": 1024, "one_predict": None, "one_call": None}


def _fastnn_model():
    import fastnn
    return wl.keras_model(fastnn, "mlp_adam"), fastnn.__version__


def _keras_model():
    keras = pytest.importorskip("keras")
    return wl.keras_model(keras, "mlp_adam"), keras.__version__


def _keras_like(model, case, x, to_numpy=np.asarray):
    if case == "one_call":
        return lambda: to_numpy(model(x[:1]))
    batch = CASES[case] or 32
    return lambda: model.predict(x if CASES[case] else x[:1], batch_size=batch, verbose=0)


def _torch(case, x):
    torch = pytest.importorskip("torch")
    model = wl.torch_model("mlp_adam").eval()
    X = torch.from_numpy(x)

    def predict(batch):
        with torch.no_grad():
            return np.concatenate([torch.softmax(model(X[i:i + batch]), 1).numpy()
                                   for i in range(0, len(X), batch)])

    def one():
        with torch.no_grad():
            return torch.softmax(model(X[:1]), 1).numpy()
    return (lambda: predict(CASES[case])) if CASES[case] else one, torch.__version__


@pytest.mark.parametrize("system", ["fastnn", "torch", "keras"])
@pytest.mark.parametrize("case", CASES)
def test_predict(benchmark, mnist, rounds, case, system):
    x = np.ascontiguousarray(mnist[0][:N_PREDICT])
    if system == "torch":
        fn, ver = _torch(case, x)
    else:
        model, ver = _fastnn_model() if system == "fastnn" else _keras_model()
        # Keras on torch returns a tensor that requires grad, which np.asarray refuses;
        # keras.ops.convert_to_numpy is what a Keras user calls on any backend
        to_numpy = np.asarray if system == "fastnn" else sys.modules["keras"].ops.convert_to_numpy
        fn = _keras_like(model, case, x, to_numpy)
    benchmark.group = f"predict {case}"
    benchmark.extra_info.update(predict=case, system=system, version=ver,
                                samples=N_PREDICT if CASES[case] else 1)
    if CASES[case]:
        benchmark.pedantic(fn, rounds=max(rounds, 3), warmup_rounds=1, iterations=1)
    else:
        fn()
        benchmark.pedantic(fn, rounds=max(rounds, 3), warmup_rounds=1, iterations=200)


IMPORTS = {
    "numpy": "import numpy",
    "fastnn": "import fastnn",
    "fastnn_first_use": "import fastnn as keras; keras.Sequential([keras.Input((4,)), "
                        "keras.layers.Dense(2)]).predict(__import__('numpy').ones((1, 4)), "
                        "verbose=0)",
    "torch": "import torch",
    "keras": "import keras",
}


@pytest.mark.parametrize("name", IMPORTS)
def test_import(benchmark, name):
    code = IMPORTS[name]
    if name in ("torch", "keras"):
        pytest.importorskip(name)
    benchmark.group = "import (whole process)"
    benchmark.extra_info.update(import_=name, code=code)
    # As a user who pip-installed it: pip compiles every module to bytecode, so let the warm-up
    # round cache fastnn's (a source checkout under PYTHONDONTWRITEBYTECODE=1 would otherwise
    # compile all of it in every timed process; numpy, torch and keras are already compiled).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = lambda: subprocess.run([sys.executable, "-c", code], check=True, env=env)  # noqa: E731
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
