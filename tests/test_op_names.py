"""One name per operation: the Ops method `X` calls `_core.X`, which wraps the C function `fnn_X`;
the CUDA kernels of `X` are named `X` (or `X_part` when the op takes several launches). A
rename on one level only fails here, naming the place."""
import ast
import inspect
import os
import re
import textwrap

import pytest

import fastnn
from fastnn.backend import cupy as cupy_backend
from fastnn.backend.base import Ops
from fastnn.backend.cpu import CpuOps
from fastnn.backend.cupy import CupyOps

CORE_PYX = os.path.join(os.path.dirname(os.path.abspath(fastnn.__file__)), "_core.pyx")

# Queries and helpers that several ops share, so they cannot carry each op's name.
SHARED_CORE = {"rnn_act_supported"}          # CpuOps.rnn_forward: does C have this activation?
SHARED_C = {"activation_needs_input",        # act_backward, dense_backward: keep z or not
            "embedding_first_bad",           # both embedding ops: the first out-of-range id
            "optimizer_scalars",             # optimizer_update, DenseStack: scalars per kind
            "winograd_work"}                 # conv2d_forward: the size of its Winograd work
SHARED_CUDA = {"batchnorm_partials"}         # batchnorm_stats and batchnorm_backward's sums
OPS_METHODS = {name for name, _ in inspect.getmembers(Ops, inspect.isfunction)}


def _methods(cls):
    """(name, ast of its body) for each public method defined in cls itself."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    return [(node.name, node) for node in tree.body[0].body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


def core_calls(cls=CpuOps):
    """{method: the _core.NAME it references} for each public method of cls."""
    return {name: {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id == "_core"}
            for name, node in _methods(cls)}


def c_calls(pyx_text):
    """{def NAME: the fnn_ functions it references} for each public `def` of _core.pyx (the
    names declared as functions; C types and constants such as fnn_dense are left out)."""
    code = re.sub(r'""".*?"""|#[^\n]*', "", pyx_text, flags=re.S)
    functions = set(re.findall(r"^\s+[\w ]+?\**\s*\bfnn_(\w+)\(", code, flags=re.M))
    found = {}
    for block in re.split(r"\n(?=\S)", code):            # top-level statements
        head = re.match(r"def ([a-z]\w*)\(", block)
        if head:
            found[head.group(1)] = set(re.findall(r"\bfnn_(\w+)", block)) & functions
    return found


def cuda_kernels(cu_text):
    return re.findall(r'extern "C" __global__ void (\w+)\(', cu_text)


def cuda_launches(cls=CupyOps):
    """{method: kernel names it launches directly} for each public method of cls."""
    return {name: {n.args[0].value for n in ast.walk(node) if isinstance(n, ast.Call)
                   and isinstance(n.func, ast.Attribute) and n.func.attr == "_launch"
                   and n.args and isinstance(n.args[0], ast.Constant)}
            for name, node in _methods(cls)}


def _owner(kernel):
    """The Ops method a CUDA kernel belongs to: its name, or the longest X with `X_` prefix."""
    if kernel in OPS_METHODS or kernel in SHARED_CUDA:
        return kernel
    owners = [m for m in OPS_METHODS if kernel.startswith(m + "_")]
    return max(owners, key=len) if owners else None


def test_cpu_ops_call_the_core_function_of_their_own_name():
    wrong = {method: sorted(called - {method} - SHARED_CORE)
             for method, called in core_calls().items() if called - {method} - SHARED_CORE}
    assert not wrong, f"CpuOps methods calling _core functions of another name: {wrong}"


@pytest.mark.skipif(not os.path.exists(CORE_PYX), reason="needs the source tree (_core.pyx)")
def test_core_functions_wrap_the_c_function_of_their_own_name():
    with open(CORE_PYX, encoding="utf-8") as f:
        wrapped = c_calls(f.read())
    assert "batchnorm_stats" in wrapped          # the parse found the wrappers
    wrong = {name: sorted(fns - {name} - SHARED_C)
             for name, fns in wrapped.items() if fns - {name} - SHARED_C}
    assert not wrong, f"_core functions wrapping fnn_ functions of another name: {wrong}"


def test_cuda_kernels_are_named_after_their_op():
    with open(cupy_backend._SOURCE, encoding="utf-8") as f:
        kernels = cuda_kernels(f.read())
    assert "batchnorm_apply" in kernels
    assert not [k for k in kernels if _owner(k) is None], \
        "kernels.cu kernels named after no Ops method"
    wrong = {method: sorted(k for k in launched if _owner(k) not in (method, k))
             for method, launched in cuda_launches().items()}
    wrong = {m: ks for m, ks in wrong.items() if ks}
    assert not wrong, f"CupyOps methods launching kernels of another op: {wrong}"
    missing = set().union(*cuda_launches().values()) - set(kernels)
    assert not missing, f"CupyOps launches kernels that kernels.cu lacks: {sorted(missing)}"


def test_the_checks_catch_a_rename_on_one_level():
    """The parsers see the names the tests above compare (the old, drifted names fail)."""
    old = ('cdef extern from "fastnn.h":\n    void fnn_bn_stats(const float *x)\n\n\n'
           'def bn_stats(x, mean, var):\n    """Calls fnn_gemm."""\n    cdef fnn_dense d\n'
           '    fnn_bn_stats(&X[0, 0])\n\n\ndef gemm(a):\n    pass\n')
    assert c_calls(old) == {"bn_stats": {"bn_stats"}, "gemm": set()}
    renamed = old.replace("def bn_stats", "def batchnorm_stats")
    assert c_calls(renamed)["batchnorm_stats"] - {"batchnorm_stats"} == {"bn_stats"}

    class Drifted(CpuOps):
        def batchnorm_stats(self, x, mean=None, var=None):
            _core = None
            return _core.bn_stats(x, mean, var)
    assert core_calls(Drifted) == {"batchnorm_stats": {"bn_stats"}}
    assert _owner("bn_partials") is None and _owner("act_backward_softmax") == "act_backward"
