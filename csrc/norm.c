/* Batch normalization over the rows of a (rows, channels) array (NHWC images are
 * (N*H*W, C)). Statistics accumulate in double, each channel over rows in order; threads split
 * the channels, so results do not depend on the thread count. */
#include <math.h>
#include "fastnn.h"

#define BN_BLOCK 256  /* channels per work item: each row's run is 1 KB, which the prefetchers stream */

/* mean[c] and biased var[c] over rows, two-pass. */
FNN_DISPATCH
void fnn_bn_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                  int n_threads) {
    ptrdiff_t blk, n_blk = (ptrdiff_t)((cols + BN_BLOCK - 1) / BN_BLOCK);
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (blk = 0; blk < n_blk; blk++) {
            size_t c0 = (size_t)blk * BN_BLOCK, c1 = c0 + BN_BLOCK < cols ? c0 + BN_BLOCK : cols;
            double s[BN_BLOCK] = {0}, q[BN_BLOCK] = {0};
            for (size_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols;
                for (size_t c = c0; c < c1; c++) s[c - c0] += xr[c];
            }
            for (size_t c = c0; c < c1; c++) s[c - c0] /= (double)rows;
            for (size_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols;
                for (size_t c = c0; c < c1; c++) {
                    double d = xr[c] - s[c - c0];
                    q[c - c0] += d * d;
                }
            }
            for (size_t c = c0; c < c1; c++) {
                mean[c] = (float)s[c - c0];
                var[c] = (float)(q[c - c0] / (double)rows);
            }
        });
}

/* y = gamma * (x - mean) * inv_std + beta, with inv_std = 1/sqrt(var + eps). gamma/beta may be
 * NULL (scale=False / center=False). Each thread computes a chunk's per-channel scale once and
 * applies it to its rows, so the square root and division run per channel, not per element. */
#define BN_CHUNK 512

FNN_DISPATCH
void fnn_bn_apply(const float *x, const float *mean, const float *var, const float *gamma,
                  const float *beta, float eps, float *y, size_t rows, size_t cols,
                  int n_threads) {
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    #pragma omp parallel num_threads(nt) if(nt > 1)
    {
        float scale[BN_CHUNK], shift[BN_CHUNK];
        for (size_t c0 = 0; c0 < cols; c0 += BN_CHUNK) {
            size_t width = cols - c0 < BN_CHUNK ? cols - c0 : BN_CHUNK;
            for (size_t c = 0; c < width; c++) {
                scale[c] = (gamma ? gamma[c0 + c] : 1.0f) / sqrtf(var[c0 + c] + eps);
                shift[c] = beta ? beta[c0 + c] : 0.0f;
            }
            const float *m = mean + c0;
            ptrdiff_t r;
            #pragma omp for schedule(static) nowait
            for (r = 0; r < (ptrdiff_t)rows; r++) {
                const float *xr = x + (size_t)r * cols + c0;
                float *yr = y + (size_t)r * cols + c0;
                for (size_t c = 0; c < width; c++) yr[c] = (xr[c] - m[c]) * scale[c] + shift[c];
            }
        }
    }
}

/* Training-mode backward. With xhat = (x - mean) * inv_std:
 * d_beta = sum dy, d_gamma = sum dy * xhat,
 * dx = gamma * inv_std / M * (M dy - d_beta - xhat * d_gamma). dx may alias dy. */
FNN_DISPATCH
void fnn_bn_backward(const float *x, const float *dy, const float *mean, const float *var,
                     const float *gamma, float eps, float *dx, float *d_gamma, float *d_beta,
                     size_t rows, size_t cols, int n_threads) {
    ptrdiff_t blk, n_blk = (ptrdiff_t)((cols + BN_BLOCK - 1) / BN_BLOCK);
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (blk = 0; blk < n_blk; blk++) {
            size_t c0 = (size_t)blk * BN_BLOCK, c1 = c0 + BN_BLOCK < cols ? c0 + BN_BLOCK : cols;
            double sd[BN_BLOCK] = {0}, sdx[BN_BLOCK] = {0};
            float inv[BN_BLOCK], ginv[BN_BLOCK], k1[BN_BLOCK], k2[BN_BLOCK];
            for (size_t c = c0; c < c1; c++) inv[c - c0] = 1.0f / sqrtf(var[c] + eps);
            for (size_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols, *dr = dy + r * cols;
                for (size_t c = c0; c < c1; c++) {
                    sd[c - c0] += dr[c];
                    sdx[c - c0] += (double)dr[c] * ((xr[c] - mean[c]) * inv[c - c0]);
                }
            }
            for (size_t c = c0; c < c1; c++) {
                float g = gamma ? gamma[c] : 1.0f;
                if (d_gamma) d_gamma[c] = (float)sdx[c - c0];
                if (d_beta) d_beta[c] = (float)sd[c - c0];
                k1[c - c0] = (float)(sd[c - c0] / (double)rows);
                k2[c - c0] = (float)(sdx[c - c0] / (double)rows);
                ginv[c - c0] = g * inv[c - c0];
            }
            for (size_t r = 0; r < rows; r++) {
                const float *xr = x + r * cols, *dr = dy + r * cols;
                float *out = dx + r * cols;
                for (size_t c = c0; c < c1; c++) {
                    float xhat = (xr[c] - mean[c]) * inv[c - c0];
                    out[c] = ginv[c - c0] * (dr[c] - k1[c - c0] - xhat * k2[c - c0]);
                }
            }
        });
}

/* moving = moving * momentum + batch * (1 - momentum), Keras's update. */
void fnn_bn_update_moving(float *moving_mean, float *moving_var, const float *mean,
                          const float *var, float momentum, size_t cols) {
    for (size_t c = 0; c < cols; c++) {
        moving_mean[c] = moving_mean[c] * momentum + mean[c] * (1.0f - momentum);
        moving_var[c] = moving_var[c] * momentum + var[c] * (1.0f - momentum);
    }
}
