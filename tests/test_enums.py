"""The numbers Python and C share (activation, optimizer, loss, metric, recurrent-cell ids) are
defined in csrc/fastnn.h; every copy of them (activations.py, kernels.cu, stack.py, _core.pyx)
must agree with it, or a layer would silently compute another activation."""
import os
import re

import pytest

from fastnn import activations, losses, optimizers, stack

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HEADER = os.path.join(ROOT, "csrc", "fastnn.h")
pytestmark = pytest.mark.skipif(not os.path.exists(HEADER),
                                reason="needs the source tree (csrc/fastnn.h)")


def _enums(text):
    """Every enumerator of every `enum { ... }` in C source: name -> value."""
    values = {}
    for body in re.findall(r"enum\s*\{(.*?)\}", re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S),
                           re.S):
        value = -1
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, given = item.partition("=")
            value = int(given) if given.strip() else value + 1
            values[name.strip()] = value
    return values


@pytest.fixture(scope="module")
def header():
    with open(HEADER) as f:
        return _enums(f.read())


def _source(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


ACTIVATIONS = ["LINEAR", "RELU", "SIGMOID", "TANH", "SOFTMAX", "SOFTPLUS", "SOFTSIGN", "SELU",
               "ELU", "EXPONENTIAL", "LEAKY_RELU", "GELU", "SILU"]


def test_activation_ids(header):
    assert header["FNN_N_ACTIVATIONS"] == len(ACTIVATIONS)
    cuda = _enums(_source("fastnn", "backend", "kernels.cu"))
    for name in ACTIVATIONS:
        assert getattr(activations, name) == header[f"FNN_{name}"] == cuda[name], name


def test_optimizer_loss_and_metric_ids(header):
    names = {optimizers.AdamW: "ADAM"}
    for cls, kind in stack._OPTIMIZER_KINDS.items():
        assert header[f"FNN_OPT_{names.get(cls, cls.__name__.upper())}"] == kind, cls
    assert len(set(stack._OPTIMIZER_KINDS.values())) == header["FNN_N_OPTIMIZERS"]
    required = re.search(r"cdef int\[(\d+)\] _REQUIRED_SLOTS = \[([^\]]*)\]",
                         _source("fastnn", "_core.pyx"))
    assert int(required.group(1)) == len(required.group(2).split(",")) == \
        header["FNN_N_OPTIMIZERS"]
    loss_names = {losses.SparseCategoricalCrossentropy: "SPARSE_XENT",
                  losses.CategoricalCrossentropy: "XENT", losses.BinaryCrossentropy: "BXENT",
                  losses.MeanSquaredError: "MSE", losses.MeanAbsoluteError: "MAE"}
    assert {header[f"FNN_LOSS_{loss_names[c]}"]: k for c, k in stack._LOSS_KINDS.items()} == \
        {k: k for k in stack._LOSS_KINDS.values()}
    assert len(stack._LOSS_KINDS) == header["FNN_N_LOSSES"]
    # the metric kinds _metric_kind returns, as the header numbers them
    src = _source("fastnn", "stack.py")
    for cls, name in (("SparseCategoricalAccuracy", "SPARSE_ACC"),
                      ("CategoricalAccuracy", "ACC"), ("BinaryAccuracy", "BINARY_ACC")):
        found = re.search(rf"M\.{cls}\b[^\n]*\n\s*kind, threshold = (\d+)", src)
        assert found and int(found.group(1)) == header[f"FNN_METRIC_{name}"], cls


def test_recurrent_and_preprocessing_ids(header):
    core = _source("fastnn", "_core.pyx")
    kinds = dict(re.findall(r'"(simple|lstm|gru)": \((\d+), \d+\)', core))
    assert {k: int(v) for k, v in kinds.items()} == {
        "simple": header["FNN_RNN_SIMPLE"], "lstm": header["FNN_RNN_LSTM"],
        "gru": header["FNN_RNN_GRU"]}
    try:
        from fastnn import _core
    except ImportError:
        return
    assert (_core.PRE_AFFINE, _core.PRE_STANDARDIZE) == \
        (header["FNN_PRE_AFFINE"], header["FNN_PRE_STANDARDIZE"])
