/* Optimizer updates, one pass over a flat parameter buffer, with Keras 3's update rules
 * (keras/src/optimizers/). Per-step scalars (bias corrections) are computed by the caller. */
#include <float.h>
#include <math.h>
#include "fastnn.h"

/* Moments of weights whose gradient is zero (dead units) decay geometrically into the subnormal
 * range, where float arithmetic is ~100x slower: the update loops flush values below FLT_MIN
 * to zero, as TensorFlow's flush-to-zero CPU mode does.
 *
 * On x86 they run with the CPU's flush-to-zero and denormals-are-zero modes (each thread's
 * MXCSR, restored after the loop): a moment update whose result would be subnormal (g * g of a
 * tiny gradient, e.g. the l2 penalty's 2 l2 w of a weight near zero whose input is always 0)
 * takes a ~100-cycle microcode assist per vector, which made Adam's pass 2.5x slower with an
 * l2 regularizer on MNIST's dead pixels. The mode already gives 0 for every result below
 * FLT_MIN, so flush() there is nothing (its compare and select, two per value in Adam, took
 * ~15 % of Adam's pass, and made a penalty's two extra operations cost ~4 us a step of the
 * seed MLP instead of ~1 us in a loop then bound by the divide and square root). Elsewhere
 * flush() zeroes them. */
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
static inline unsigned ftz_on(void) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    return csr;
}
static inline void ftz_off(unsigned csr) { _mm_setcsr(csr); }
static inline float flush(float x) { return x; }
#else
static inline unsigned ftz_on(void) { return 0; }
static inline void ftz_off(unsigned csr) { (void)csr; }
static inline float flush(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }
#endif

/* FNN_PARALLEL_FOR with flush-to-zero on every thread that runs the loop. */
#define FTZ_PARALLEL_FOR(clauses, ...) do {                               \
        if (nt > 1) {                                                     \
            FNN_PRAGMA(omp parallel num_threads(nt))                      \
            {                                                             \
                unsigned csr_ = ftz_on();                                 \
                FNN_PRAGMA(omp for clauses)                               \
                __VA_ARGS__                                               \
                ftz_off(csr_);                                            \
            }                                                             \
        } else {                                                          \
            unsigned csr_ = ftz_on();                                     \
            __VA_ARGS__                                                   \
            ftz_off(csr_);                                                \
        }                                                                 \
    } while (0)

/* The gradient as an update reads it, clipped as Keras's base optimizer clips it before the
 * update (_clip_gradients): times gscale (clipnorm, global_clipnorm: limit / norm; else 1),
 * then clamped to [-gclip, gclip] (clipvalue; else inf). Read inside the update's one pass,
 * so clipping costs no pass of its own. NaN stays NaN, as in ops.clip: each select keeps g
 * when a comparison with NaN is false, the form of one vector min and one max (a nested
 * select took six operations a vector). */
FNN_INLINE float clip_grad(float g, float gscale, float gclip) {
    g *= gscale;
    g = gclip < g ? gclip : g;
    return -gclip > g ? -gclip : g;
}
#define G(i) clip_grad(g[i], gscale, gclip)

/* Sums in FLOAT_LANES independent float lanes, which the compiler vectorizes (a single double
 * accumulator would be one serial chain of adds, ~130 us for a 784 x 128 kernel), the lanes
 * added as a tree, then the tail and the total in double: a chunk of at most SUM_CHUNK values
 * at a time, so each lane adds few terms. n values are split into SUM_PARTS equal parts
 * whatever the thread count, each summed chunk by chunk in order, the parts then added in
 * order: the same sum on any number of threads. */
#define FLOAT_LANES 32
#define SUM_PARTS 64
#define SUM_CHUNK 1024
static size_t part_len(size_t n) { return (n + SUM_PARTS - 1) / SUM_PARTS; }
/* A weight penalty's parts (PENALIZED_LOOP): at least PENALTY_PART values, so that few parts
 * (each summed to its own total, its end in double) share a small weight (a 130-row block of
 * a 784 x 128 kernel in 64 parts: ~20 us a step of the seed MLP in the parts' ends alone),
 * and a multiple of FLOAT_LANES long, so that each part's update starts 64 bytes after the
 * last's (an update at unaligned starts took twice as long). */
#define PENALTY_PART 4096
/* A penalty's float lanes add at most PENALTY_CHUNK / FLOAT_LANES = 128 terms each, between
 * two trees of the lanes (a tree every 1024 values: ~1 us a step more on the seed MLP). */
#define PENALTY_CHUNK 4096
static size_t penalty_part_len(size_t n) {
    size_t per = (part_len(n) + FLOAT_LANES - 1) / FLOAT_LANES * FLOAT_LANES;
    return per > PENALTY_PART ? per : PENALTY_PART;
}

/* The lanes' totals, added as a tree (short chains). */
FNN_INLINE void lane_totals(float *a1, float *a2, double *d1, double *d2) {
    for (int half = FLOAT_LANES / 2; half > 0; half /= 2)
        for (int j = 0; j < half; j++) {
            a1[j] += a1[j + half];
            a2[j] += a2[j + half];
        }
    *d1 = a1[0];
    *d2 = a2[0];
}

/* *s2 += sum p^2 over a chunk p[0..n), in the lanes above. */
FNN_INLINE void lane_squares(const float *p, size_t n, double *s2) {
    float a1[FLOAT_LANES] = {0}, a2[FLOAT_LANES] = {0};
    size_t c = 0;
    double d1, d2;
    for (; c + FLOAT_LANES <= n; c += FLOAT_LANES)
        for (int j = 0; j < FLOAT_LANES; j++) a2[j] += p[c + j] * p[c + j];
    lane_totals(a1, a2, &d1, &d2);
    for (; c < n; c++) d2 += (double)p[c] * p[c];
    *s2 += d2;
}

/* Gradient g plus Keras's l1/l2 penalty's gradient at weight w: l1 sign(w) + 2 l2 w (l2
 * alone: no sign). */
FNN_INLINE float with_penalty(float g, float w, float l1, float l2x2, int has_l1) {
    return has_l1 ? g + (l1 * (float)((w > 0.0f) - (w < 0.0f)) + l2x2 * w) : g + l2x2 * w;
}

/* The update's loop: the statements run for each i with gi, the gradient as the update reads
 * it (G). With a weight penalty (pen, see fnn_penalty) the gradient read is g plus the
 * penalty's gradient at the weight before the step, and the penalty's value is summed from
 * the same weights in the same loop (PENALIZED_LOOP). */
#define UPDATE_LOOP(...) do {                                                             \
        if (!pen) {                                                                       \
            FTZ_PARALLEL_FOR(schedule(static),                                            \
                for (i = 0; i < len; i++) {                                               \
                    float gi = G(i);                                                      \
                    __VA_ARGS__                                                           \
                });                                                                       \
        } else if (pen->l1 != 0.0f) {                                                     \
            PENALIZED_LOOP(1, __VA_ARGS__);                                               \
        } else {                                                                          \
            PENALIZED_LOOP(0, __VA_ARGS__);                                               \
        }                                                                                 \
    } while (0)

#define PENALIZED_LOOP(has_l1, ...)                                                       \
    PENALTY_SUMS(has_l1,                                                                  \
                 float gi = clip_grad(with_penalty(g[i], w_, l1_, l2x2_, has_l1), gscale, \
                                      gclip);                                             \
                 __VA_ARGS__)

/* The pragma for a penalized loop's 32 lanes: no overlap among w, g and the slots (omp simd;
 * GCC's ivdep where OpenMP is off: its check of overlap every 32 values took ~3 us a step of
 * the seed MLP with l2 instead of ~1 us). */
#if defined(_OPENMP)
#define LANES_SIMD FNN_PRAGMA(omp simd)
#elif defined(__GNUC__) && !defined(__clang__)
#define LANES_SIMD FNN_PRAGMA(GCC ivdep)
#else
#define LANES_SIMD
#endif

/* pen->value = l1 * sum |w| + l2 * sum w^2 over w[0..n), the statements run for each i with
 * w_ = w[i], in the loop that sums it: a penalized update's sums and gradient cost it four
 * operations a vector, not a pass of their own (a sum over each part just before its update
 * took ~9 us a step of the seed MLP with l2; in the update's loop, ~1 us). Part by part
 * (penalty_part_len: the same parts on any number of threads), each in chunks of at most
 * PENALTY_CHUNK values summed in FLOAT_LANES float lanes: the statements' vector code for
 * values c..c+31 (LANES_SIMD: w, g and the slots do not overlap, as the kernels' callers
 * guarantee), each chunk's lanes added as a tree, its tail and total in double. */
#define PENALTY_SUMS(has_l1, ...) do {                                                    \
        double parts1_[SUM_PARTS] = {0}, parts2_[SUM_PARTS] = {0};                        \
        size_t per_ = penalty_part_len(n);                                                \
        float l1_ = pen->l1, l2x2_ = 2.0f * pen->l2;                                      \
        ptrdiff_t k_, n_parts_ = (ptrdiff_t)((n + per_ - 1) / per_);                      \
        (void)l1_, (void)l2x2_;                                                           \
        FTZ_PARALLEL_FOR(schedule(static),                                                \
            for (k_ = 0; k_ < n_parts_; k_++) {                                           \
                size_t lo_ = (size_t)k_ * per_, hi_ = lo_ + per_ < n ? lo_ + per_ : n;    \
                double a1_ = 0.0, a2_ = 0.0;                                              \
                for (size_t at_ = lo_; at_ < hi_; at_ += PENALTY_CHUNK) {                 \
                    size_t end_ = hi_ - at_ < PENALTY_CHUNK ? hi_ : at_ + PENALTY_CHUNK;  \
                    size_t c_ = at_;                                                      \
                    float s1_[FLOAT_LANES] = {0}, s2_[FLOAT_LANES] = {0};                 \
                    double d1_, d2_;                                                      \
                    for (; c_ + FLOAT_LANES <= end_; c_ += FLOAT_LANES) {                 \
                        LANES_SIMD                                                        \
                        for (int j_ = 0; j_ < FLOAT_LANES; j_++) {                        \
                            ptrdiff_t i = (ptrdiff_t)(c_ + (size_t)j_);                   \
                            float w_ = w[i];                                              \
                            if (has_l1) s1_[j_] += fabsf(w_);                             \
                            s2_[j_] += w_ * w_;                              \
                            __VA_ARGS__                                                   \
                        }                                                                 \
                    }                                                                     \
                    lane_totals(s1_, s2_, &d1_, &d2_);                                    \
                    for (; c_ < end_; c_++) {                                             \
                        ptrdiff_t i = (ptrdiff_t)c_;                                      \
                        float w_ = w[i];                                                  \
                        d1_ += fabsf(w_);                                                 \
                        d2_ += (double)w_ * w_;                                           \
                        __VA_ARGS__                                                       \
                    }                                                                     \
                    a1_ += d1_;                                                           \
                    a2_ += d2_;                                                           \
                }                                                                         \
                parts1_[k_] = a1_;                                                        \
                parts2_[k_] = a2_;                                                        \
            });                                                                           \
        pen->value = penalty_value(parts1_, parts2_, n_parts_, pen->l1, pen->l2);         \
    } while (0)

/* l1 * sum |w| + l2 * sum w^2 from the n_parts parts' sums, added in order. */
static double penalty_value(const double *parts1, const double *parts2, ptrdiff_t n_parts,
                            float l1, float l2) {
    double s1 = 0.0, s2 = 0.0;
    for (ptrdiff_t k = 0; k < n_parts; k++) {
        s1 += parts1[k];
        s2 += parts2[k];
    }
    return (double)l1 * s1 + (double)l2 * s2;
}

FNN_DISPATCH
void fnn_sgd_update(float *w, const float *g, float *m, size_t n, float lr, float momentum,
             int nesterov, float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    if (!m) {
        UPDATE_LOOP(w[i] -= lr * gi;);
    } else if (nesterov) {
        UPDATE_LOOP(
            m[i] = flush(momentum * m[i] - lr * gi);
            w[i] += momentum * m[i] - lr * gi;);
    } else {
        UPDATE_LOOP(
            m[i] = flush(momentum * m[i] - lr * gi);
            w[i] += m[i];);
    }
}

/* alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t); vmax (AMSGrad) may be NULL. */
FNN_DISPATCH
void fnn_adam_update(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
              float alpha, float beta1, float beta2, float eps,
              float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    (void)nt;
    if (vmax) {
        UPDATE_LOOP(
            m[i] = flush(m[i] + (gi - m[i]) * c1);
            v[i] = flush(v[i] + (gi * gi - v[i]) * c2);
            vmax[i] = fmaxf(vmax[i], v[i]);
            w[i] -= alpha * m[i] / (sqrtf(vmax[i]) + eps););
    } else {
        UPDATE_LOOP(
            m[i] = flush(m[i] + (gi - m[i]) * c1);
            v[i] = flush(v[i] + (gi * gi - v[i]) * c2);
            w[i] -= alpha * m[i] / (sqrtf(v[i]) + eps););
    }
}

/* mom (momentum > 0) and mg (centered) may be NULL. Epsilon sits inside the square root. */
FNN_DISPATCH
void fnn_rmsprop_update(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                 float lr, float rho, float momentum, float eps,
                 float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    UPDATE_LOOP(
        v[i] = flush(rho * v[i] + (1.0f - rho) * gi * gi);
        float denom = v[i] + eps;
        if (mg) {
            mg[i] = rho * mg[i] + (1.0f - rho) * gi;
            denom -= mg[i] * mg[i];
        }
        float step = lr * gi / sqrtf(denom);
        if (mom) {
            mom[i] = flush(momentum * mom[i] + step);
            w[i] -= mom[i];
        } else {
            w[i] -= step;
        });
}

FNN_DISPATCH
void fnn_adagrad_update(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                 float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    UPDATE_LOOP(
        acc[i] += gi * gi;
        w[i] -= lr * gi / sqrtf(acc[i] + eps););
}

FNN_DISPATCH
void fnn_adadelta_update(float *w, const float *g, float *acc_g, float *acc_dx, size_t n, float lr,
                  float rho, float eps, float gscale, float gclip, fnn_penalty *pen,
                  int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    UPDATE_LOOP(
        acc_g[i] = flush(rho * acc_g[i] + (1.0f - rho) * gi * gi);
        float dx = -sqrtf(acc_dx[i] + eps) * gi / sqrtf(acc_g[i] + eps);
        acc_dx[i] = flush(rho * acc_dx[i] + (1.0f - rho) * dx * dx);
        w[i] += lr * dx;);
}

/* alpha = lr / (1 - beta1^t). */
FNN_DISPATCH
void fnn_adamax_update(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                float beta1, float beta2, float eps, float gscale, float gclip,
                fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    UPDATE_LOOP(
        m[i] = flush(m[i] + (gi - m[i]) * (1.0f - beta1));
        u[i] = flush(fmaxf(beta2 * u[i], fabsf(gi)));
        w[i] -= alpha * m[i] / (u[i] + eps););
}

/* mu_t, mu_t1: momentum schedule at steps t and t+1; u_prod = prod of mu up to t, u_prod_t1 =
 * u_prod * mu_t1; beta2_power = beta2^t. */
FNN_DISPATCH
void fnn_nadam_update(float *w, const float *g, float *m, float *v, size_t n, float lr,
               float beta1, float beta2, float eps, float mu_t, float mu_t1,
               float u_prod, float u_prod_t1, float beta2_power,
               float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float a = mu_t1 / (1.0f - u_prod_t1), b = (1.0f - mu_t) / (1.0f - u_prod);
    float vc = 1.0f / (1.0f - beta2_power);
    (void)nt;
    UPDATE_LOOP(
        m[i] = flush(m[i] + (gi - m[i]) * (1.0f - beta1));
        v[i] = flush(v[i] + (gi * gi - v[i]) * (1.0f - beta2));
        float m_hat = a * m[i] + b * gi;
        w[i] -= lr * m_hat / (sqrtf(v[i] * vc) + eps););
}

FNN_DISPATCH
void fnn_ftrl_update(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
              float lr_power, float l1, float l2, float l2_shrinkage, float beta,
              float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float l2_reg = l2 + beta / (2.0f * lr);
    (void)nt;
    UPDATE_LOOP(
        float gs = gi + 2.0f * l2_shrinkage * w[i];
        float new_acc = acc[i] + gi * gi;
        float p_new = powf(new_acc, -lr_power), p_old = powf(acc[i], -lr_power);
        lin[i] += gs - (p_new - p_old) / lr * w[i];
        float quadratic = p_new / lr + 2.0f * l2_reg;
        float clipped = fminf(fmaxf(lin[i], -l1), l1);
        w[i] = (clipped - lin[i]) / quadratic;
        acc[i] = new_acc;);
}

/* Lion: the step is the sign of an interpolation of momentum and gradient (sign(0) = 0, as
 * Keras's ops.sign), then the momentum moves with beta2. */
FNN_DISPATCH
void fnn_lion_update(float *w, const float *g, float *m, size_t n, float lr, float beta1, float beta2,
              float gscale, float gclip, fnn_penalty *pen, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    UPDATE_LOOP(
        float c = m[i] * beta1 + gi * (1.0f - beta1);
        w[i] -= lr * (float)((c > 0.0f) - (c < 0.0f));
        m[i] = flush(m[i] * beta2 + gi * (1.0f - beta2)););
}

/* Scalars after the weight decay factor, per kind (see fnn_optimizer_step). */
static const int kind_scalars[FNN_N_OPTIMIZERS] = {3, 4, 4, 2, 3, 4, 9, 6, 3};

int fnn_optimizer_scalars(int kind) {
    return kind >= 0 && kind < FNN_N_OPTIMIZERS ? 1 + kind_scalars[kind] : -1;
}

/* Keras's decoupled weight decay, w -= w * (lr * decay), before the update. */
static void weight_decay(float *w, size_t n, float factor, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FTZ_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) w[i] -= w[i] * factor;);
}

void fnn_optimizer_step(int kind, float *w, const float *g, float *const *slots, size_t n,
                        const float *s, float gscale, float gclip, fnn_penalty *pen,
                        int n_threads) {
    if (s[0] != 0.0f) weight_decay(w, n, s[0], n_threads);
    s++;
    switch (kind) {
    case FNN_OPT_SGD:
        fnn_sgd_update(w, g, slots[0], n, s[0], s[1], s[2] != 0.0f, gscale, gclip, pen,
                       n_threads);
        break;
    case FNN_OPT_ADAM:
        fnn_adam_update(w, g, slots[0], slots[1], slots[2], n, s[0], s[1], s[2], s[3],
                 gscale, gclip, pen, n_threads);
        break;
    case FNN_OPT_RMSPROP:
        fnn_rmsprop_update(w, g, slots[0], slots[1], slots[2], n, s[0], s[1], s[2], s[3],
                    gscale, gclip, pen, n_threads);
        break;
    case FNN_OPT_ADAGRAD:
        fnn_adagrad_update(w, g, slots[0], n, s[0], s[1], gscale, gclip, pen, n_threads); break;
    case FNN_OPT_ADADELTA:
        fnn_adadelta_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2],
                     gscale, gclip, pen, n_threads); break;
    case FNN_OPT_ADAMAX:
        fnn_adamax_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3],
                   gscale, gclip, pen, n_threads); break;
    case FNN_OPT_NADAM:
        fnn_nadam_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
                  s[8], gscale, gclip, pen, n_threads);
        break;
    case FNN_OPT_FTRL:
        fnn_ftrl_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3], s[4], s[5],
                 gscale, gclip, pen, n_threads);
        break;
    case FNN_OPT_LION:
        fnn_lion_update(w, g, slots[0], n, s[0], s[1], s[2], gscale, gclip, pen, n_threads); break;
    }
}

/* The sum of squares of n gradients (a norm for Keras's clipnorm and global_clipnorm: one
 * reading pass). */
FNN_DISPATCH
double fnn_sum_squares(const float *g, size_t n, int n_threads) {
    double parts[SUM_PARTS], sum = 0.0;
    size_t per = part_len(n);
    ptrdiff_t k;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FTZ_PARALLEL_FOR(schedule(static),
        for (k = 0; k < SUM_PARTS; k++) {
            size_t lo = (size_t)k * per < n ? (size_t)k * per : n;
            size_t hi = lo + per < n ? lo + per : n;
            double part = 0.0;
            for (size_t at = lo; at < hi; at += SUM_CHUNK)
                lane_squares(g + at, hi - at < SUM_CHUNK ? hi - at : SUM_CHUNK, &part);
            parts[k] = part;
        });
    for (k = 0; k < SUM_PARTS; k++) sum += parts[k];
    return sum;
}

/* The factor Keras scales a gradient of this sum of squares by: limit / norm above the limit,
 * exactly 1 at or below it. A NaN norm gives NaN, as Keras's (both modes), and so does an
 * infinite global norm (clip_by_global_norm adds norm - norm); clipnorm's factor for an
 * infinite norm is 0, as Keras's g * limit / max(norm, limit). */
static float clip_scale(double sum_squares, float limit, int global) {
    double norm = sqrt(sum_squares);
    if (isnan(norm) || (global && isinf(norm))) return NAN;
    return norm > limit ? (float)(limit / norm) : 1.0f;
}

void fnn_optimizer_update(int kind, float *w, const float *g, float *const *slots,
                         const size_t *sizes, int n_vars, const float *scalars, int clip_mode,
                         float limit, int n_threads) {
    size_t n = 0;
    for (int v = 0; v < n_vars; v++) n += sizes[v];
    if (clip_mode == FNN_CLIP_NORM) {     /* each variable by its own norm (Keras's clipnorm) */
        float *at[FNN_OPT_SLOTS];
        size_t start = 0;
        for (int v = 0; v < n_vars; v++) {
            for (int j = 0; j < FNN_OPT_SLOTS; j++) at[j] = slots[j] ? slots[j] + start : NULL;
            float scale = clip_scale(fnn_sum_squares(g + start, sizes[v], n_threads), limit, 0);
            fnn_optimizer_step(kind, w + start, g + start, at, sizes[v], scalars, scale,
                               INFINITY, NULL, n_threads);
            start += sizes[v];
        }
    } else if (clip_mode == FNN_CLIP_GLOBAL_NORM) {
        float scale = clip_scale(fnn_sum_squares(g, n, n_threads), limit, 1);
        fnn_optimizer_step(kind, w, g, slots, n, scalars, scale, INFINITY, NULL, n_threads);
    } else {
        fnn_optimizer_step(kind, w, g, slots, n, scalars, 1.0f,
                           clip_mode == FNN_CLIP_VALUE ? limit : INFINITY, NULL, n_threads);
    }
}

/* Keras's l1/l2 weight penalty (regularizers.L1, L2, L1L2) on n weights: returns
 * l1 * sum |w| + l2 * sum w^2 and, when g is not NULL, adds the penalty's gradient to the
 * weights', g += l1 * sign(w) + 2 * l2 * w, in the same pass (PENALIZED_LOOP with g written
 * back: the sums and gradients an update with this penalty reads). */
FNN_DISPATCH
double fnn_l1l2_penalty(const float *w, float *g, size_t n, float l1, float l2, int n_threads) {
    fnn_penalty value = {l1, l2, 0.0}, *pen = &value;
    float gscale = 1.0f, gclip = INFINITY;     /* (clip_grad then leaves g + penalty) */
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    if (g && l1 != 0.0f) PENALIZED_LOOP(1, g[i] = gi;);
    else if (g) PENALIZED_LOOP(0, g[i] = gi;);
    else if (l1 != 0.0f) PENALTY_SUMS(1, ;);
    else PENALTY_SUMS(0, ;);
    return value.value;
}
