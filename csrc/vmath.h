/* Vectorizable float exp, expm1, tanh and sigmoid shared by the activation and recurrent kernels
 * (one implementation: every kernel computes the same bits for the same input). */
#ifndef FASTNN_VMATH_H
#define FASTNN_VMATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "fastnn.h"

/* x = n ln2 + r with n = floor(x log2(e) + 0.5), |r| <= ln2/2 (Cody-Waite: ln2 in two parts,
 * the first exact in float). A NaN x gives n = 0 and r = NaN. */
FNN_INLINE float exp_reduce(float x, int32_t *n_out) {
    float fx = (x == x ? x : 0.0f) * 1.44269504088896341f + 0.5f;   /* n from a number */
    /* n = floor(fx) without a float-to-int conversion (which stops GCC vectorizing here):
     * adding 1.5 * 2^23 leaves round(fx) in the low mantissa bits. */
    float j = fx + 12582912.0f, nf = j - 12582912.0f;
    uint32_t jb;
    memcpy(&jb, &j, sizeof jb);
    int32_t n = (int32_t)(jb - 0x4B400000u), down = nf > fx;
    *n_out = n - down;
    nf -= (float)down;
    float r = x - nf * 0.693359375f;
    return r - nf * -2.12194440e-4f;
}

/* 2^n as a float, for n in the normal exponent range [-126, 127]. */
FNN_INLINE float exp2_int(int32_t n) {
    uint32_t b = (uint32_t)(n + 127) << 23;
    float s;
    memcpy(&s, &b, sizeof s);
    return s;
}

/* exp(x) for the kernels: Cephes's degree-6 polynomial for e^r after exp_reduce (under 1 ulp
 * from the exact value over the float range, subnormals included: see tests/test_ops.py), in
 * plain float and integer operations so GCC vectorizes it (glibc's expf is a scalar call) and
 * every ISA clone computes the same bits. NaN stays NaN; overflow gives inf. */
FNN_INLINE float vexpf(float x) {
    x = x > 89.0f ? 89.0f : x;             /* beyond these, +inf and 0 anyway; NaN passes */
    x = x < -104.0f ? -104.0f : x;
    int32_t n;
    float r = exp_reduce(x, &n);
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* 2^n in two normal factors, so results in the subnormal range round once, correctly */
    int32_t n1 = n / 2;
    return p * exp2_int(n1) * exp2_int(n - n1);
}

/* e^x - 1 for x <= 0 (a positive x counts as 0), accurate near 0 where exp(x) - 1 cancels:
 * e^x - 1 = 2^n expm1(r) + (2^n - 1), with 2^n - 1 exact and expm1(r) = r + r^2 q(r), q a
 * degree-5 fit on |r| <= ln2/2 (under 1 ulp overall: tests/test_ops.py). Vectorizes like
 * vexpf, where glibc's expm1f is a scalar call (SELU, ELU, tanh). NaN stays NaN. */
FNN_INLINE float vexpm1f_neg(float x) {
    x = x > 0.0f ? 0.0f : x;
    x = x < -30.0f ? -30.0f : x;           /* below, the result rounds to -1 anyway */
    int32_t n;
    float r = exp_reduce(x, &n);
    float q = 1.985159033e-4f;
    q = q * r + 1.394097926e-3f;
    q = q * r + 8.333378471e-3f;
    q = q * r + 4.166635498e-2f;
    q = q * r + 1.666666716e-1f;
    q = q * r + 0.5f;
    float s = exp2_int(n), y = s * ((r * r) * q + r) + (s - 1.0f);
    return x == 0.0f ? x : y;              /* keeps -0 as -0 */
}

/* tanh from e^(-2|x|) - 1 = u: |tanh x| = -u / (u + 2), no cancellation near 0. */
FNN_INLINE float vtanhf(float x) {
    float u = vexpm1f_neg(-2.0f * fabsf(x));
    return copysignf(-u / (u + 2.0f), x);
}

/* Branch-free, so the loop vectorizes: exp of -|x| never overflows. One division, its
 * numerator picked (1 or e): the same bits as 1 / (1 + e) and e / (1 + e) each, where the two
 * quotients and a blend cost a second vector division (the LSTM's gate pass divides for 3 of
 * its 4 gates). */
FNN_INLINE float sigmoidf(float x) {
    float e = vexpf(-fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

#endif
