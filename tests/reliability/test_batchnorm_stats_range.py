"""Batch-norm statistics where the float partial sums overflow (values or deviations past
~1e37) although the mean and the variance fit in float32: were inf (the moving variance of a
BatchNormalization layer with inputs >= 1e19 went inf). Checked against NumPy in float64, for
both of the kernel's splits (channel blocks; runs of rows), 1-3 threads, identical results."""
import numpy as np
import pytest

import fastnn
from fastnn import _core

SHAPES = [(32, 4), (32, 300), (33, 700), (21632, 64), (4099, 3)]


def _stats(x, threads):
    saved = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        mean, var = np.empty(x.shape[1], np.float32), np.empty(x.shape[1], np.float32)
        _core.batchnorm_stats(x, mean, var)
    finally:
        _core.set_num_threads(saved)
    return mean, var


def _data(shape, scale, rng):
    x = (rng.standard_normal(shape) * scale + 2.5 * scale).astype(np.float32)
    x[:, 0] = np.float32(scale)              # a constant channel
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e19, 3e19, 1e37])
def test_batchnorm_stats_match_float64(shape, scale):
    rng = np.random.default_rng(1)
    x = _data(shape, scale, rng)
    x64 = x.astype(np.float64)
    want_mean, want_var = x64.mean(0), x64.var(0)
    results = [_stats(x, t) for t in (1, 2, 3)]
    for mean, var in results[1:]:                       # identical for any thread count
        assert np.array_equal(mean, results[0][0]) and np.array_equal(var, results[0][1])
    mean, var = results[0]
    fits = want_var < np.finfo(np.float32).max
    assert np.all(np.isfinite(mean))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6 * scale)
    assert np.all(np.isfinite(var[fits])), var
    np.testing.assert_allclose(var[fits], want_var[fits], rtol=1e-4,
                               atol=1e-6 * scale * scale)
    assert np.all(np.isinf(var[~fits]))


def test_batchnorm_stats_keeps_nan_and_inf():
    x = np.ones((64, 3), np.float32)
    x[5, 0], x[7, 1] = np.nan, np.inf
    mean, var = _stats(x, 1)
    assert np.isnan(mean[0]) and np.isnan(var[0])
    assert np.isinf(mean[1]) and not np.isfinite(var[1])
    assert mean[2] == 1 and var[2] == 0


@pytest.mark.parametrize("value", [1e19, 3e19])
def test_batchnorm_layer_moving_variance_finite(value):
    fastnn.utils.set_random_seed(0)
    layer = fastnn.layers.BatchNormalization()
    x = np.full((32, 8), value, np.float32)
    x[::2] *= 1.5
    layer.build(x.shape)
    layer.forward(x, training=True)
    mv = layer.get_weights()[3]
    assert np.all(np.isfinite(mv)), mv
    want = 0.99 * 1.0 + 0.01 * x.astype(np.float64).var(0)
    np.testing.assert_allclose(mv, want, rtol=1e-5)
