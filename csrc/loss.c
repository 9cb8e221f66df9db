/* Losses fused with their gradient. For softmax/sigmoid outputs the gradient is taken with respect
 * to the logits (p - y), which is exact and stable; the loss value is computed Keras's way, from
 * probabilities clipped to [eps, 1 - eps]. row_loss[r] receives weight[r] * loss_r. */
#include <math.h>
#include "fastnn.h"

#define FNN_EPSILON 1e-7f

static inline float clip_prob(float p) {
    return p < FNN_EPSILON ? FNN_EPSILON : (p > 1.0f - FNN_EPSILON ? 1.0f - FNN_EPSILON : p);
}

static inline float row_weight(const float *weights, size_t r) {
    return weights ? weights[r] : 1.0f;
}

int fnn_softmax_xent_sparse(const float *probs, const int32_t *labels, const float *weights,
                            float scale, float *row_loss, float *grad,
                            size_t rows, size_t cols, int n_threads) {
    for (size_t r = 0; r < rows; r++)
        if (labels[r] < 0 || (size_t)labels[r] >= cols) return -1;
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *p = probs + (size_t)r * cols;
            size_t y = (size_t)labels[r];
            float w = row_weight(weights, (size_t)r), s = 0.0f;
            for (size_t c = 0; c < cols; c++) s += p[c];
            row_loss[r] = -w * logf(clip_prob(p[y] / s));
            if (grad) {
                float *g = grad + (size_t)r * cols, k = w * scale;
                for (size_t c = 0; c < cols; c++) g[c] = k * p[c];
                g[y] -= k;
            }
        });
    return 0;
}

int fnn_softmax_xent_dense(const float *probs, const float *targets, const float *weights,
                           float scale, float *row_loss, float *grad,
                           size_t rows, size_t cols, int n_threads) {
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *p = probs + (size_t)r * cols, *t = targets + (size_t)r * cols;
            float w = row_weight(weights, (size_t)r), s = 0.0f, tsum = 0.0f, loss = 0.0f;
            for (size_t c = 0; c < cols; c++) { s += p[c]; tsum += t[c]; }
            for (size_t c = 0; c < cols; c++)
                if (t[c] != 0.0f) loss -= t[c] * logf(clip_prob(p[c] / s));
            row_loss[r] = w * loss;
            if (grad) {
                float *g = grad + (size_t)r * cols, k = w * scale;
                for (size_t c = 0; c < cols; c++) g[c] = k * (p[c] * tsum - t[c]);
            }
        });
    return 0;
}

int fnn_sigmoid_bxent(const float *probs, const float *targets, const float *weights,
                      float scale, float *row_loss, float *grad,
                      size_t rows, size_t cols, int n_threads) {
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *p = probs + (size_t)r * cols, *t = targets + (size_t)r * cols;
            float w = row_weight(weights, (size_t)r), loss = 0.0f;
            for (size_t c = 0; c < cols; c++) {
                float q = clip_prob(p[c]);
                loss -= t[c] * logf(q) + (1.0f - t[c]) * logf(1.0f - q);
            }
            row_loss[r] = w * loss / (float)cols;
            if (grad) {
                float *g = grad + (size_t)r * cols, k = w * scale / (float)cols;
                for (size_t c = 0; c < cols; c++) g[c] = k * (p[c] - t[c]);
            }
        });
    return 0;
}

int fnn_squared_error(const float *pred, const float *targets, const float *weights,
                      float scale, float *row_loss, float *grad,
                      size_t rows, size_t cols, int n_threads) {
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *p = pred + (size_t)r * cols, *t = targets + (size_t)r * cols;
            float w = row_weight(weights, (size_t)r), loss = 0.0f;
            for (size_t c = 0; c < cols; c++) { float d = p[c] - t[c]; loss += d * d; }
            row_loss[r] = w * loss / (float)cols;
            if (grad) {
                float *g = grad + (size_t)r * cols, k = 2.0f * w * scale / (float)cols;
                for (size_t c = 0; c < cols; c++) g[c] = k * (p[c] - t[c]);
            }
        });
    return 0;
}

int fnn_absolute_error(const float *pred, const float *targets, const float *weights,
                       float scale, float *row_loss, float *grad,
                       size_t rows, size_t cols, int n_threads) {
    ptrdiff_t r;
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            const float *p = pred + (size_t)r * cols, *t = targets + (size_t)r * cols;
            float w = row_weight(weights, (size_t)r), loss = 0.0f;
            for (size_t c = 0; c < cols; c++) loss += fabsf(p[c] - t[c]);
            row_loss[r] = w * loss / (float)cols;
            if (grad) {
                float *g = grad + (size_t)r * cols, k = w * scale / (float)cols;
                for (size_t c = 0; c < cols; c++) {
                    float d = p[c] - t[c];
                    g[c] = d > 0.0f ? k : (d < 0.0f ? -k : 0.0f);
                }
            }
        });
    return 0;
}
