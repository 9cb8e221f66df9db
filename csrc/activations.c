/* Activation functions, forward and backward. Backward uses the output y where that is exact, and
 * the input z only for the few functions whose derivative cannot be read off y. */
#include <math.h>
#include <string.h>
#include "fastnn.h"
#include "vmath.h"

#define SELU_ALPHA 1.6732632423543772848170429916717f
#define SELU_SCALE 1.0507009873554804934193349852946f
#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

int fnn_activation_needs_input(int act) {
    return act == FNN_SOFTPLUS || act == FNN_GELU || act == FNN_SILU;
}

/* Non-decreasing, so max pooling commutes with it (activations.MONOTONE). */
int fnn_activation_monotone(int act, float alpha) {
    return act != FNN_SOFTMAX && act != FNN_GELU && act != FNN_SILU && act >= 0 &&
           act < FNN_N_ACTIVATIONS && alpha >= 0.0f;
}

/* log(1 + u) for u in [0, 1] as 2 atanh(s), s = u / (2 + u) in [0, 1/3]: 2s (1 + s^2/3 + s^4/5
 * + ... + s^12/13), truncated under 0.3 ulp; under 2 ulp in float, tiny u included. */
static inline float vlog1pf_unit(float u) {
    float s = u / (2.0f + u), t = s * s;
    float q = 1.0f / 13.0f;
    q = q * t + 1.0f / 11.0f;
    q = q * t + 1.0f / 9.0f;
    q = q * t + 1.0f / 7.0f;
    q = q * t + 1.0f / 5.0f;
    q = q * t + 1.0f / 3.0f;
    float s2 = 2.0f * s;
    return s2 + s2 * (t * q);
}

/* softplus = max(x, 0) + log(1 + e^-|x|), vectorized (glibc's log1pf and expf are scalar, and
 * fmaxf's NaN rule keeps GCC from vectorizing it; a NaN x gives NaN through the log here). */
static inline float softplusf(float x) {
    return (x > 0.0f ? x : 0.0f) + vlog1pf_unit(vexpf(-fabsf(x)));
}

/* The standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2, vectorized (glibc's erff is a scalar
 * call), with t = |x| / sqrt 2: below t = 0.6, erf(t) = t P(t^2); above, erfc(t) =
 * e^(-x^2/2) w G(w) with w = 1/t (G a degree-14 fit in w, centered so its float evaluation is
 * stable), and e^(-x^2/2) as e^(-h^2/2) e^(-(|x| - h)(|x| + h)/2) with h = |x| cut to 12
 * bits, whose square is exact. Phi(x < 0) = erfc(t) / 2 keeps its relative accuracy in the
 * lower tail, where 1 + erf(x / sqrt 2) cancels. Errors: tests/test_ops.py. */
static inline float gauss_cdf(float x) {
    float a = fabsf(x), t = a * INV_SQRT2, t2 = t * t;
    float p = -7.369763334e-04f;
    p = p * t2 + 5.178681109e-03f;
    p = p * t2 - 2.685812674e-02f;
    p = p * t2 + 1.128372848e-01f;
    p = p * t2 - 3.761263788e-01f;
    p = p * t2 + 1.128379226e+00f;
    float half_erf = 0.5f * (t * p);
    float ac = a < 0.6f * 1.41421356f ? 0.6f * 1.41421356f : a > 13.4f ? 13.4f : a;
    float w = 1.41421356f / ac, u = w * 1.2808989f - 1.1348314f;
    float g = -1.720653818e-04f;
    g = g * u + 1.806481305e-04f;
    g = g * u + 5.181639572e-04f;
    g = g * u - 7.674600929e-04f;
    g = g * u + 6.228840357e-05f;
    g = g * u + 3.090405153e-05f;
    g = g * u + 2.232715487e-04f;
    g = g * u + 7.909737760e-04f;
    g = g * u - 3.284808947e-03f;
    g = g * u + 7.043810096e-03f;
    g = g * u - 1.100189891e-02f;
    g = g * u + 9.004674852e-03f;
    g = g * u + 1.891983114e-02f;
    g = g * u - 1.264993697e-01f;
    g = g * u + 4.456338584e-01f;
    uint32_t hb;
    memcpy(&hb, &ac, sizeof hb);
    hb &= 0xFFFFF000u;
    float h;
    memcpy(&h, &hb, sizeof h);
    float gauss = vexpf(-0.5f * (h * h)) * vexpf(-0.5f * ((ac - h) * (ac + h)));
    float half_erfc = a > 13.4f ? 0.0f : 0.5f * (gauss * (w * g));
    int small = t < 0.6f;
    float upper = small ? 0.5f + half_erf : 1.0f - half_erfc;   /* Phi(|x|) */
    float lower = small ? 0.5f - half_erf : half_erfc;          /* Phi(-|x|) */
    return x < 0.0f ? lower : x == x ? upper : x;
}

/* Elementwise activations on a flat range. */
FNN_DISPATCH
static void act_forward_flat(int act, float alpha, const float *z, float *y, size_t n,
                             int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    switch (act) {
    case FNN_LINEAR:
        if (y != z) for (i = 0; i < len; i++) y[i] = z[i];
        break;
    case FNN_RELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) { float v = z[i]; y[i] = v > 0.0f ? v : 0.0f; });
        break;
    case FNN_SIGMOID:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = sigmoidf(z[i]););
        break;
    case FNN_TANH:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = vtanhf(z[i]););
        break;
    case FNN_SOFTPLUS:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = softplusf(z[i]););
        break;
    case FNN_SOFTSIGN:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = z[i] / (1.0f + fabsf(z[i])););
        break;
    case FNN_SELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++)
                y[i] = z[i] > 0.0f ? SELU_SCALE * z[i] :
                               SELU_SCALE * SELU_ALPHA * vexpm1f_neg(z[i]););
        break;
    case FNN_ELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = z[i] > 0.0f ? z[i] : alpha * vexpm1f_neg(z[i]););
        break;
    case FNN_EXPONENTIAL:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = vexpf(z[i]););
        break;
    case FNN_LEAKY_RELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) { float v = z[i]; y[i] = v > 0.0f ? v : alpha * v; });
        break;
    case FNN_GELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = z[i] * gauss_cdf(z[i]););
        break;
    case FNN_SILU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) y[i] = z[i] * sigmoidf(z[i]););
        break;
    }
}

/* Numerically stable row-wise softmax: subtract the row max before exponentiating. */
FNN_DISPATCH
static void softmax_rows(const float *z, float *y, size_t rows, size_t cols, int n_threads) {
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *zr = z + (size_t)r * cols;
            float *yr = y + (size_t)r * cols;
            float m = zr[0], s = 0.0f;
            for (size_t c = 1; c < cols; c++) m = fmaxf(m, zr[c]);
            for (size_t c = 0; c < cols; c++) yr[c] = vexpf(zr[c] - m);
            for (size_t c = 0; c < cols; c++) s += yr[c];
            float inv = 1.0f / s;
            for (size_t c = 0; c < cols; c++) yr[c] *= inv;
        });
}

void fnn_act_forward(int act, float alpha, const float *z, float *y, size_t rows, size_t cols,
                     int n_threads) {
    if (act == FNN_SOFTMAX) softmax_rows(z, y, rows, cols, n_threads);
    else act_forward_flat(act, alpha, z, y, rows * cols, n_threads);
}

FNN_DISPATCH
void fnn_act_backward(int act, float alpha, const float *z, const float *y, const float *dy,
                      float *dz, size_t rows, size_t cols, int n_threads) {
    size_t n = rows * cols;
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    switch (act) {
    case FNN_LINEAR:
        if (dz != dy) for (i = 0; i < len; i++) dz[i] = dy[i];
        break;
    case FNN_RELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) { float g = dy[i]; dz[i] = y[i] > 0.0f ? g : 0.0f; });
        break;
    case FNN_SIGMOID:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) dz[i] = dy[i] * y[i] * (1.0f - y[i]););
        break;
    case FNN_TANH:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) dz[i] = dy[i] * (1.0f - y[i] * y[i]););
        break;
    case FNN_SOFTMAX: {
        ptrdiff_t r;
        FNN_PARALLEL_FOR(schedule(static),
            for (r = 0; r < (ptrdiff_t)rows; r++) {
                const float *yr = y + (size_t)r * cols, *dyr = dy + (size_t)r * cols;
                float *dzr = dz + (size_t)r * cols;
                float dot = 0.0f;
                for (size_t c = 0; c < cols; c++) dot += dyr[c] * yr[c];
                for (size_t c = 0; c < cols; c++) dzr[c] = yr[c] * (dyr[c] - dot);
            });
        break;
    }
    case FNN_SOFTPLUS:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) dz[i] = dy[i] * sigmoidf(z[i]););
        break;
    case FNN_SOFTSIGN:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) { float t = 1.0f - fabsf(y[i]); dz[i] = dy[i] * t * t; });
        break;
    case FNN_SELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                float g = dy[i], v = y[i];   /* plain loads first: the select then vectorizes */
                dz[i] = v > 0.0f ? g * SELU_SCALE : g * (v + SELU_SCALE * SELU_ALPHA);
            });
        break;
    case FNN_ELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                float g = dy[i], v = y[i];
                dz[i] = v > 0.0f ? g : g * (v + alpha);
            });
        break;
    case FNN_EXPONENTIAL:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) dz[i] = dy[i] * y[i];);
        break;
    case FNN_LEAKY_RELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) { float g = dy[i]; dz[i] = y[i] > 0.0f ? g : g * alpha; });
        break;
    case FNN_GELU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                float x = z[i];
                dz[i] = dy[i] * (gauss_cdf(x) + x * INV_SQRT_2PI * vexpf(-0.5f * x * x));
            });
        break;
    case FNN_SILU:
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                float s = sigmoidf(z[i]);
                dz[i] = dy[i] * s * (1.0f + z[i] * (1.0f - s));
            });
        break;
    }
}
