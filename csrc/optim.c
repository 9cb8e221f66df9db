/* Optimizer updates, one pass over a flat parameter buffer, with Keras 3's update rules
 * (keras/src/optimizers/). Per-step scalars (bias corrections) are computed by the caller. */
#include <float.h>
#include <math.h>
#include "fastnn.h"

/* Moments of weights whose gradient is zero (dead units) decay geometrically into the subnormal
 * range, where float arithmetic is ~100x slower. Flush them to zero, as TensorFlow's
 * flush-to-zero CPU mode does. */
static inline float flush(float x) { return fabsf(x) < FLT_MIN ? 0.0f : x; }

FNN_DISPATCH
void fnn_sgd_update(float *w, const float *g, float *m, size_t n, float lr, float momentum,
                    int nesterov, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    if (!m) {
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) w[i] -= lr * g[i];);
    } else if (nesterov) {
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                m[i] = flush(momentum * m[i] - lr * g[i]);
                w[i] += momentum * m[i] - lr * g[i];
            });
    } else {
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                m[i] = flush(momentum * m[i] - lr * g[i]);
                w[i] += m[i];
            });
    }
}

/* alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t); vmax (AMSGrad) may be NULL. */
FNN_DISPATCH
void fnn_adam_update(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
                     float alpha, float beta1, float beta2, float eps, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    (void)nt;
    if (vmax) {
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                m[i] = flush(m[i] + (g[i] - m[i]) * c1);
                v[i] = flush(v[i] + (g[i] * g[i] - v[i]) * c2);
                vmax[i] = fmaxf(vmax[i], v[i]);
                w[i] -= alpha * m[i] / (sqrtf(vmax[i]) + eps);
            });
    } else {
        FNN_PARALLEL_FOR(schedule(static),
            for (i = 0; i < len; i++) {
                m[i] = flush(m[i] + (g[i] - m[i]) * c1);
                v[i] = flush(v[i] + (g[i] * g[i] - v[i]) * c2);
                w[i] -= alpha * m[i] / (sqrtf(v[i]) + eps);
            });
    }
}

/* mom (momentum > 0) and mg (centered) may be NULL. Epsilon sits inside the square root. */
FNN_DISPATCH
void fnn_rmsprop_update(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                        float lr, float rho, float momentum, float eps, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            v[i] = flush(rho * v[i] + (1.0f - rho) * g[i] * g[i]);
            float denom = v[i] + eps;
            if (mg) {
                mg[i] = rho * mg[i] + (1.0f - rho) * g[i];
                denom -= mg[i] * mg[i];
            }
            float step = lr * g[i] / sqrtf(denom);
            if (mom) {
                mom[i] = flush(momentum * mom[i] + step);
                w[i] -= mom[i];
            } else {
                w[i] -= step;
            }
        });
}

FNN_DISPATCH
void fnn_adagrad_update(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                        int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            acc[i] += g[i] * g[i];
            w[i] -= lr * g[i] / sqrtf(acc[i] + eps);
        });
}

FNN_DISPATCH
void fnn_adadelta_update(float *w, const float *g, float *acc_g, float *acc_dx, size_t n, float lr,
                         float rho, float eps, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            acc_g[i] = flush(rho * acc_g[i] + (1.0f - rho) * g[i] * g[i]);
            float dx = -sqrtf(acc_dx[i] + eps) * g[i] / sqrtf(acc_g[i] + eps);
            acc_dx[i] = flush(rho * acc_dx[i] + (1.0f - rho) * dx * dx);
            w[i] += lr * dx;
        });
}

/* alpha = lr / (1 - beta1^t). */
FNN_DISPATCH
void fnn_adamax_update(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                       float beta1, float beta2, float eps, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            m[i] = flush(m[i] + (g[i] - m[i]) * (1.0f - beta1));
            u[i] = flush(fmaxf(beta2 * u[i], fabsf(g[i])));
            w[i] -= alpha * m[i] / (u[i] + eps);
        });
}

/* mu_t, mu_t1: momentum schedule at steps t and t+1; u_prod = prod of mu up to t, u_prod_t1 =
 * u_prod * mu_t1; beta2_power = beta2^t. */
FNN_DISPATCH
void fnn_nadam_update(float *w, const float *g, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float mu_t, float mu_t1,
                      float u_prod, float u_prod_t1, float beta2_power, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float a = mu_t1 / (1.0f - u_prod_t1), b = (1.0f - mu_t) / (1.0f - u_prod);
    float vc = 1.0f / (1.0f - beta2_power);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            m[i] = flush(m[i] + (g[i] - m[i]) * (1.0f - beta1));
            v[i] = flush(v[i] + (g[i] * g[i] - v[i]) * (1.0f - beta2));
            float m_hat = a * m[i] + b * g[i];
            w[i] -= lr * m_hat / (sqrtf(v[i] * vc) + eps);
        });
}

FNN_DISPATCH
void fnn_ftrl_update(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
                     float lr_power, float l1, float l2, float l2_shrinkage, float beta,
                     int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    float l2_reg = l2 + beta / (2.0f * lr);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            float gi = g[i] + 2.0f * l2_shrinkage * w[i];
            float new_acc = acc[i] + g[i] * g[i];
            float p_new = powf(new_acc, -lr_power), p_old = powf(acc[i], -lr_power);
            lin[i] += gi - (p_new - p_old) / lr * w[i];
            float quadratic = p_new / lr + 2.0f * l2_reg;
            float clipped = fminf(fmaxf(lin[i], -l1), l1);
            w[i] = (clipped - lin[i]) / quadratic;
            acc[i] = new_acc;
        });
}

/* Lion: the step is the sign of an interpolation of momentum and gradient (sign(0) = 0, as
 * Keras's ops.sign), then the momentum moves with beta2. */
FNN_DISPATCH
void fnn_lion_update(float *w, const float *g, float *m, size_t n, float lr, float beta1,
                     float beta2, int n_threads) {
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) {
            float c = m[i] * beta1 + g[i] * (1.0f - beta1);
            w[i] -= lr * (float)((c > 0.0f) - (c < 0.0f));
            m[i] = flush(m[i] * beta2 + g[i] * (1.0f - beta2));
        });
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
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++) w[i] -= w[i] * factor;);
}

void fnn_optimizer_step(int kind, float *w, const float *g, float *const *slots, size_t n,
                        const float *s, int n_threads) {
    if (s[0] != 0.0f) weight_decay(w, n, s[0], n_threads);
    s++;
    switch (kind) {
    case FNN_OPT_SGD:
        fnn_sgd_update(w, g, slots[0], n, s[0], s[1], s[2] != 0.0f, n_threads); break;
    case FNN_OPT_ADAM:
        fnn_adam_update(w, g, slots[0], slots[1], slots[2], n, s[0], s[1], s[2], s[3], n_threads);
        break;
    case FNN_OPT_RMSPROP:
        fnn_rmsprop_update(w, g, slots[0], slots[1], slots[2], n, s[0], s[1], s[2], s[3],
                           n_threads);
        break;
    case FNN_OPT_ADAGRAD:
        fnn_adagrad_update(w, g, slots[0], n, s[0], s[1], n_threads); break;
    case FNN_OPT_ADADELTA:
        fnn_adadelta_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], n_threads); break;
    case FNN_OPT_ADAMAX:
        fnn_adamax_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3], n_threads); break;
    case FNN_OPT_NADAM:
        fnn_nadam_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3], s[4], s[5], s[6],
                         s[7], s[8], n_threads);
        break;
    case FNN_OPT_FTRL:
        fnn_ftrl_update(w, g, slots[0], slots[1], n, s[0], s[1], s[2], s[3], s[4], s[5], n_threads);
        break;
    case FNN_OPT_LION:
        fnn_lion_update(w, g, slots[0], n, s[0], s[1], s[2], n_threads); break;
    }
}
