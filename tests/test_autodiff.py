"""fastnn.ops and fastnn.autodiff: every op's forward against NumPy and its gradient against
central finite differences (float64, so the differences are exact to ~1e-9); fan-out, shared
leaves, broadcasting; NumPy calls on tensors routed to the ops or refused."""
import numpy as np
import pytest
from gradcheck import numeric_grad

from fastnn import ops
from fastnn.autodiff import Tensor, gradients, no_grad, tape
from fastnn.backend import get_ops

RNG = np.random.default_rng(0)


def _host(x):
    return np.asarray(get_ops().to_numpy(x.value if isinstance(x, Tensor) else x))


def _check(f, *arrays, positive=False, eps=1e-6, tol=1e-6):
    """f(*tensors) against finite differences of sum(f(*arrays) * r) for every argument."""
    arrays = [np.asarray(np.abs(a) + 0.5 if positive else a) for a in arrays]
    out = _host(f(*[get_ops().asarray(a, a.dtype) for a in arrays]))
    r = RNG.standard_normal(out.shape)
    leaves = [Tensor(get_ops().asarray(a, a.dtype), requires_grad=True) for a in arrays]
    with tape():
        y = f(*leaves)
    np.testing.assert_allclose(_host(y), out, rtol=1e-12, atol=1e-12)
    grads = gradients(y, leaves, seed=get_ops().asarray(r, np.float64))
    for i, (a, g) in enumerate(zip(arrays, grads)):
        def scalar(v, i=i):
            args = [get_ops().asarray(b, b.dtype) for b in arrays]
            args[i] = get_ops().asarray(v, v.dtype)
            return float((_host(f(*args)) * r).sum())
        np.testing.assert_allclose(_host(g), numeric_grad(scalar, a, eps), rtol=tol, atol=tol,
                                   err_msg=f"argument {i}")


def _a(*shape):
    return np.asarray(RNG.standard_normal(shape))


UNARY = [
    (ops.negative, np.negative, False), (ops.square, np.square, False),
    (ops.sqrt, np.sqrt, True), (ops.exp, np.exp, False), (ops.expm1, np.expm1, False),
    (ops.log, np.log, True), (ops.log1p, np.log1p, True), (ops.abs, np.abs, False),
    (ops.sin, np.sin, False), (ops.cos, np.cos, False), (ops.tanh, np.tanh, False),
    (ops.relu, lambda a: np.maximum(a, 0), False),
    (ops.sigmoid, lambda a: 1 / (1 + np.exp(-a)), False),
    (ops.softplus, lambda a: np.log1p(np.exp(a)), False),
    (ops.silu, lambda a: a / (1 + np.exp(-a)), False),
    (ops.elu, lambda a: np.where(a > 0, a, np.expm1(a)), False),
    (lambda a: ops.leaky_relu(a, 0.1), lambda a: np.where(a > 0, a, 0.1 * a), False),
]


@pytest.mark.parametrize("op, ref, positive", UNARY,
                         ids=[getattr(u[0], "__name__", "lambda") for u in UNARY])
def test_unary_ops(op, ref, positive):
    a = _a(3, 4)
    if positive:
        a = np.abs(a) + 0.5
    np.testing.assert_allclose(_host(op(get_ops().asarray(a, a.dtype))), ref(a), rtol=1e-12)
    _check(op, a, positive=positive)


@pytest.mark.parametrize("op", [ops.add, ops.subtract, ops.multiply, ops.divide, ops.maximum,
                                ops.minimum])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                    ((3, 4), ())])
def test_binary_ops_with_broadcasting(op, shapes):
    a, b = _a(*shapes[0]), _a(*shapes[1])
    if op is ops.divide:
        b = np.abs(b) + 0.5
    _check(op, a, b)


def test_power():
    _check(lambda a, b: ops.power(a, b), np.abs(_a(3, 4)) + 0.5, _a(3, 4))
    _check(lambda a: ops.power(a, 3), _a(3, 4))
    _check(lambda a: a ** 2 + 2 ** a, _a(5))


@pytest.mark.parametrize("op", [ops.sum, ops.mean, ops.max, ops.min, ops.var, ops.std,
                                ops.logsumexp])
@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (1, True),
                                            ((0, 2), False), (-1, True)])
def test_reductions(op, axis, keepdims):
    a = _a(3, 4, 5)
    ref = {ops.sum: np.sum, ops.mean: np.mean, ops.max: np.max, ops.min: np.min,
           ops.var: np.var, ops.std: np.std}.get(op)
    got = _host(op(get_ops().asarray(a, a.dtype), axis=axis, keepdims=keepdims))
    if ref is not None:
        np.testing.assert_allclose(got, ref(a, axis=axis, keepdims=keepdims), rtol=1e-12)
    _check(lambda x: op(x, axis=axis, keepdims=keepdims), a)


def test_max_ties_share_the_gradient():
    x = Tensor(get_ops().asarray(np.array([1.0, 3.0, 3.0]), np.float64), requires_grad=True)
    with tape():
        y = ops.max(x)
    (g,) = gradients(y, [x])
    np.testing.assert_array_equal(_host(g), [0.0, 0.5, 0.5])


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)),
                                    ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                    ((4,), (4,)), ((1, 3, 4), (2, 4, 2))])
def test_matmul(shapes):
    a, b = _a(*shapes[0]), _a(*shapes[1])
    np.testing.assert_allclose(_host(ops.matmul(get_ops().asarray(a, a.dtype),
                                                get_ops().asarray(b, b.dtype))), a @ b,
                               rtol=1e-12)
    _check(ops.matmul, a, b)
    _check(lambda x, y: x @ y, a, b)


def test_shape_ops():
    a = _a(2, 3, 4)
    _check(lambda x: ops.reshape(x, (6, 4)), a)
    _check(lambda x: ops.transpose(x, (2, 0, 1)), a)
    _check(lambda x: ops.transpose(x), a)
    _check(lambda x: ops.expand_dims(x, 1), a)
    _check(lambda x: ops.squeeze(ops.expand_dims(x, 0), 0), a)
    _check(lambda x, y: ops.concatenate([x, y, x], axis=1), a, _a(2, 2, 4))
    _check(lambda x, y: ops.stack([x, y], axis=-1), a, _a(2, 3, 4))
    _check(lambda x: x[:, 1:, ::2], a)
    _check(lambda x: ops.get_item(x, (np.array([0, 1, 1]), 2)), a)     # repeats add up
    _check(lambda x: x.T, _a(3, 5))


def test_selection_ops():
    a, b = _a(3, 4), _a(3, 4)
    _check(lambda x, y: ops.where(x > y, x, y), a, b)
    _check(lambda x: ops.clip(x, -0.5, 0.5), a)
    _check(lambda x: ops.cast(x, "float32") * 1.0, a, tol=1e-4, eps=1e-3)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax(axis):
    a = _a(3, 5) * 3
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    ref = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(_host(ops.softmax(get_ops().asarray(a, a.dtype), axis)), ref,
                               rtol=1e-12)
    np.testing.assert_allclose(_host(ops.log_softmax(get_ops().asarray(a, a.dtype), axis)),
                               np.log(ref), rtol=1e-12)
    _check(lambda x: ops.softmax(x, axis), a)
    _check(lambda x: ops.log_softmax(x, axis), a)


def test_fan_out_and_shared_leaves_accumulate():
    """A tensor used by several ops gets the sum of their gradients; a leaf with a grad
    buffer has its gradient added there (+=), as a shared weight's does."""
    w_value = _a(4, 3)
    buffer = get_ops().asarray(np.full((4, 3), 10.0), np.float64)
    w = Tensor(get_ops().asarray(w_value, np.float64), requires_grad=True, grad=buffer)
    x1, x2 = _a(2, 4), _a(5, 4)
    with tape():
        h = ops.tanh(ops.matmul(get_ops().asarray(x1, np.float64), w))
        y = ops.sum(h * h) + ops.sum(ops.matmul(get_ops().asarray(x2, np.float64), w))
    (g,) = gradients(y, [w])
    t = np.tanh(x1 @ w_value)
    expected = x1.T @ (2 * t * (1 - t * t)) + x2.T @ np.ones((5, 3))
    np.testing.assert_allclose(_host(g), expected, rtol=1e-10)
    np.testing.assert_allclose(_host(buffer), 10.0 + expected, rtol=1e-10)


def test_deep_graph_does_not_recurse():
    x = Tensor(get_ops().asarray(np.ones(3), np.float64), requires_grad=True)
    y = x
    with tape():
        for _ in range(5000):
            y = y * 1.0001
        y = ops.sum(y)
    (g,) = gradients(y, [x])
    np.testing.assert_allclose(_host(g), 1.0001 ** 5000, rtol=1e-9)


def test_plain_arrays_stay_arrays_and_float_literals_are_float32():
    a = get_ops().asarray(np.ones((2, 2), np.float32))
    out = ops.add(ops.multiply(a, 2.0), 1)
    assert not isinstance(out, Tensor) and out.dtype == np.float32
    assert ops.convert_to_tensor([1.0, 2.0]).dtype == np.float32
    labels = get_ops().asarray(np.array([0, 2]), np.int64)
    assert _host(ops.one_hot(labels, 3)).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_numpy_calls_on_tensors_use_the_ops_or_refuse():
    a = _a(3, 4)
    x = Tensor(get_ops().asarray(a, np.float64), requires_grad=True)
    with tape():
        y = np.exp(x) + np.sum(x, axis=0)          # routed to ops.exp and ops.sum
        assert isinstance(y, Tensor) and y.requires_grad
        y = ops.sum(y)
        with pytest.raises(TypeError, match="cannot differentiate"):
            np.fft.fft(x)
        with pytest.raises(TypeError, match="needs gradients"):
            np.asarray(x)
        np.testing.assert_array_equal(ops.convert_to_numpy(x), a)
        with no_grad():
            assert not ops.exp(x).requires_grad
            np.asarray(x)                            # not recording: just the values
    (g,) = gradients(y, [x])
    np.testing.assert_allclose(_host(g), np.exp(a) + 3, rtol=1e-12)
    assert not ops.exp(x).requires_grad              # outside a tape nothing is recorded
    np.testing.assert_array_equal(np.asarray(x), a)


def test_gradients_needs_a_recorded_output():
    with pytest.raises(ValueError, match="does not depend"):
        gradients(Tensor(np.ones(2)), [])


def test_pad_repeat_tile_broadcast():
    a = _a(2, 3, 4)
    _check(lambda x: ops.pad(x, [(0, 0), (1, 2), (2, 0)]), a)
    _check(lambda x: ops.repeat(x, 2, axis=1), a)
    _check(lambda x: ops.repeat(x, 3), a)
    _check(lambda x: ops.tile(x, (1, 2, 3)), a)
    _check(lambda x: ops.broadcast_to(x, (5, 2, 3, 4)), a)
    np.testing.assert_array_equal(_host(ops.pad(get_ops().asarray(a, a.dtype), 1)),
                                  np.pad(a, 1))
    np.testing.assert_array_equal(_host(ops.tile(get_ops().asarray(a, a.dtype), 2)),
                                  np.tile(a, 2))


def test_walking_the_tape_equals_searching_the_graph():
    """gradients(order=tape.nodes) walks the tape back instead of searching the graph; the
    result is the same, leaves and a tensor made before the tape included."""
    a, b = _a(3, 4), _a(4, 2)
    results = []
    for use_order in (False, True):
        x = Tensor(get_ops().asarray(a, np.float64), requires_grad=True)
        w = Tensor(get_ops().asarray(b, np.float64), requires_grad=True)
        with tape():
            early = ops.tanh(x)                 # made on an earlier tape
        with tape() as recorded:
            h = ops.matmul(early, w)
            y = ops.sum(h * h) + ops.sum(ops.exp(h) * ops.mean(early))
        order = recorded.nodes if use_order else None
        results.append([_host(g) for g in gradients(y, [x, w], order=order)])
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, rtol=1e-12)
