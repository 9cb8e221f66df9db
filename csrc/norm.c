/* Batch normalization over the rows of a (rows, channels) array (NHWC images are
 * (N*H*W, C)). Each channel's sums run over rows in order: BN_FLOAT_RUN rows at a time in
 * float, each such partial sum then added to a double total (double for every element made
 * them compute-bound). Threads split the channels, so results do not depend on the thread
 * count. */
#include <math.h>
#include "fastnn.h"

#define BN_BLOCK 256  /* channels per work item: each row's run is 1 KB, which the prefetchers stream */
#define BN_FLOAT_RUN 8  /* rows summed in float before their sum joins the double total */
/* A single block of channels over many rows (a convolution's 21632 x 64) is cut into up to
 * BN_MAX_RUNS runs of rows, each summed in row order, the runs added in order: the cut depends
 * on the shape only, so results are the same for any thread count. */
#define BN_MAX_RUNS 16
#define BN_RUN_WORK 65536

static ptrdiff_t row_runs(size_t rows, size_t cols) {
    if (cols > BN_BLOCK) return 1;
    size_t runs = rows * cols / BN_RUN_WORK;
    if (runs > BN_MAX_RUNS) runs = BN_MAX_RUNS;
    if (runs > rows) runs = rows;
    return runs < 1 ? 1 : (ptrdiff_t)runs;
}

/* Channels [c0, c1) over rows [r0, r1): s += x - ref, or squared, s += (x - ref)^2; ref is
 * indexed from channel c0 on. The mean's pass takes the first row as ref (a shifted sum: a
 * constant channel sums to exactly 0, so its mean is exactly the constant and its variance
 * exactly 0, however large the values), the variance's pass the mean. */
FNN_INLINE void sum_rows(const float *x, const float *ref, int square, size_t cols, size_t c0,
                         size_t c1, size_t r0, size_t r1, double *s) {
    float part[BN_BLOCK], k[BN_BLOCK];
    size_t width = c1 - c0;
    for (size_t c = 0; c < width; c++) k[c] = ref[c];
    for (size_t r = r0; r < r1; r += BN_FLOAT_RUN) {
        size_t end = r1 - r < BN_FLOAT_RUN ? r1 : r + BN_FLOAT_RUN;
        for (size_t c = 0; c < width; c++) part[c] = 0.0f;
        for (size_t rr = r; rr < end; rr++) {
            const float *xr = x + rr * cols + c0;
            if (square) {
                for (size_t c = 0; c < width; c++) {
                    float d = xr[c] - k[c];
                    part[c] += d * d;
                }
            } else {
                for (size_t c = 0; c < width; c++) part[c] += xr[c] - k[c];
            }
        }
        for (size_t c = 0; c < width; c++) s[c] += part[c];
    }
}

/* The sums above run in float over BN_FLOAT_RUN rows, which overflows for values (or deviations
 * from the mean) past ~1e37 even where the mean and the variance fit in float. A channel whose
 * total came out infinite or NaN is summed again, alone and in row order, with every term
 * scaled by 2^-BN_RESCALE first (exact: a power of two) and the total scaled back in double;
 * terms too small to survive the scaling are negligible beside the ones that overflowed. A real
 * inf or NaN in the input stays one. Normal data never takes this path. */
#define BN_RESCALE 70

static double rescaled_sum(const float *x, size_t cols, size_t c, size_t rows, float ref,
                           int square) {
    const float scale = ldexpf(1.0f, -BN_RESCALE), ref_scaled = ref * scale;
    double total = 0.0;
    for (size_t r = 0; r < rows; r += BN_FLOAT_RUN) {
        size_t end = rows - r < BN_FLOAT_RUN ? rows : r + BN_FLOAT_RUN;
        float part = 0.0f;
        for (size_t rr = r; rr < end; rr++) {
            float d = x[rr * cols + c] * scale - ref_scaled;
            part += square ? d * d : d;
        }
        total += part;
    }
    return ldexp(total, square ? 2 * BN_RESCALE : BN_RESCALE);
}

/* Whether every total is finite, branch-free (x - x is 0 for finite x, NaN for inf or NaN). */
FNN_INLINE int all_finite(const double *s, size_t n) {
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) acc += s[i] - s[i];
    return acc == 0.0;
}

/* mean[c] and biased var[c] over rows, two-pass: mean = x[0] + sum(x - x[0]) / rows, then
 * var = sum((x - mean)^2) / rows. */
FNN_DISPATCH
void fnn_batchnorm_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                         int n_threads) {
    ptrdiff_t blk, n_blk = (ptrdiff_t)((cols + BN_BLOCK - 1) / BN_BLOCK);
    ptrdiff_t runs = row_runs(rows, cols);
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    if (runs > 1) {     /* one block of channels: both passes split into runs of rows */
        double part[BN_MAX_RUNS][BN_BLOCK] = {{0}}, m[BN_BLOCK] = {0}, q[BN_BLOCK] = {0};
        for (int pass = 0; pass < 2; pass++) {
            ptrdiff_t run;
            FNN_PARALLEL_FOR(schedule(static),
                for (run = 0; run < runs; run++) {
                    for (size_t c = 0; c < cols; c++) part[run][c] = 0;
                    sum_rows(x, pass ? mean : x, pass, cols, 0, cols, rows * run / runs,
                             rows * (run + 1) / runs, part[run]);
                });
            double *dst = pass ? q : m;
            for (ptrdiff_t r = 0; r < runs; r++)
                for (size_t c = 0; c < cols; c++) dst[c] += part[r][c];
            if (!all_finite(dst, cols))
                for (size_t c = 0; c < cols; c++)
                    if (!isfinite(dst[c]))
                        dst[c] = rescaled_sum(x, cols, c, rows, pass ? mean[c] : x[c], pass);
            if (!pass)
                for (size_t c = 0; c < cols; c++)
                    mean[c] = (float)((double)x[c] + m[c] / (double)rows);
        }
        for (size_t c = 0; c < cols; c++) var[c] = (float)(q[c] / (double)rows);
        return;
    }
    FNN_PARALLEL_FOR(schedule(static),
        for (blk = 0; blk < n_blk; blk++) {
            size_t c0 = (size_t)blk * BN_BLOCK, c1 = c0 + BN_BLOCK < cols ? c0 + BN_BLOCK : cols;
            double s[BN_BLOCK] = {0}, q[BN_BLOCK] = {0};
            sum_rows(x, x + c0, 0, cols, c0, c1, 0, rows, s);
            if (!all_finite(s, c1 - c0))
                for (size_t c = c0; c < c1; c++)
                    if (!isfinite(s[c - c0])) s[c - c0] = rescaled_sum(x, cols, c, rows, x[c], 0);
            for (size_t c = c0; c < c1; c++)
                mean[c] = (float)((double)x[c] + s[c - c0] / (double)rows);
            sum_rows(x, mean + c0, 1, cols, c0, c1, 0, rows, q);
            if (!all_finite(q, c1 - c0))
                for (size_t c = c0; c < c1; c++)
                    if (!isfinite(q[c - c0]))
                        q[c - c0] = rescaled_sum(x, cols, c, rows, mean[c], 1);
            for (size_t c = c0; c < c1; c++) var[c] = (float)(q[c - c0] / (double)rows);
        });
}

/* y = gamma * (x - mean) * inv_std + beta, with inv_std = 1/sqrt(var + eps). gamma/beta may be
 * NULL (scale=False / center=False). Each thread computes a chunk's per-channel scale once and
 * applies it to its rows, so the square root and division run per channel, not per element. */
#define BN_CHUNK 512

FNN_DISPATCH
void fnn_batchnorm_apply(const float *x, const float *mean, const float *var, const float *gamma,
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

/* Channels [c0, c1) over rows [r0, r1): sd += dy, sdx += dy * xhat. */
FNN_INLINE void grad_sums(const float *x, const float *dy, const float *mean, const float *inv,
                          size_t cols, size_t c0, size_t c1, size_t r0, size_t r1, double *sd,
                          double *sdx) {
    float pd[BN_BLOCK], pdx[BN_BLOCK];
    size_t width = c1 - c0;
    const float *m = mean + c0;
    for (size_t r = r0; r < r1; r += BN_FLOAT_RUN) {
        size_t end = r1 - r < BN_FLOAT_RUN ? r1 : r + BN_FLOAT_RUN;
        for (size_t c = 0; c < width; c++) pd[c] = pdx[c] = 0.0f;
        for (size_t rr = r; rr < end; rr++) {
            const float *xr = x + rr * cols + c0, *dr = dy + rr * cols + c0;
            for (size_t c = 0; c < width; c++) {
                pd[c] += dr[c];
                pdx[c] += dr[c] * ((xr[c] - m[c]) * inv[c]);
            }
        }
        for (size_t c = 0; c < width; c++) {
            sd[c] += pd[c];
            sdx[c] += pdx[c];
        }
    }
}

/* dx on channels [c0, c1) of rows [r0, r1), from the per-channel factors. */
FNN_INLINE void grad_apply(const float *x, const float *dy, const float *mean,
                           const float *inv, const float *ginv, const float *k1, const float *k2,
                           float *dx, size_t cols, size_t c0, size_t c1, size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * cols, *dr = dy + r * cols;
        float *out = dx + r * cols;
        for (size_t c = c0; c < c1; c++) {
            float xhat = (xr[c] - mean[c]) * inv[c - c0];
            out[c] = ginv[c - c0] * (dr[c] - k1[c - c0] - xhat * k2[c - c0]);
        }
    }
}

/* The per-channel factors of dx (and d_gamma, d_beta) from the sums over all rows. */
FNN_INLINE void grad_factors(const double *sd, const double *sdx, const float *gamma,
                             const float *inv, size_t c0, size_t c1, size_t rows,
                             float *d_gamma, float *d_beta, float *ginv, float *k1, float *k2) {
    for (size_t c = c0; c < c1; c++) {
        float g = gamma ? gamma[c] : 1.0f;
        if (d_gamma) d_gamma[c] = (float)sdx[c - c0];
        if (d_beta) d_beta[c] = (float)sd[c - c0];
        k1[c - c0] = (float)(sd[c - c0] / (double)rows);
        k2[c - c0] = (float)(sdx[c - c0] / (double)rows);
        ginv[c - c0] = g * inv[c - c0];
    }
}

/* Training-mode backward. With xhat = (x - mean) * inv_std:
 * d_beta = sum dy, d_gamma = sum dy * xhat,
 * dx = gamma * inv_std / M * (M dy - d_beta - xhat * d_gamma). dx may alias dy. */
FNN_DISPATCH
void fnn_batchnorm_backward(const float *x, const float *dy, const float *mean, const float *var,
                            const float *gamma, float eps, float *dx, float *d_gamma, float *d_beta,
                            size_t rows, size_t cols, int n_threads) {
    ptrdiff_t blk, n_blk = (ptrdiff_t)((cols + BN_BLOCK - 1) / BN_BLOCK);
    ptrdiff_t runs = row_runs(rows, cols);
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    if (runs > 1) {     /* one block of channels: the sums and dx split into runs of rows */
        double psd[BN_MAX_RUNS][BN_BLOCK] = {{0}}, psdx[BN_MAX_RUNS][BN_BLOCK] = {{0}};
        double sd[BN_BLOCK] = {0}, sdx[BN_BLOCK] = {0};
        float inv[BN_BLOCK], ginv[BN_BLOCK], k1[BN_BLOCK], k2[BN_BLOCK];
        ptrdiff_t run;
        for (size_t c = 0; c < cols; c++) inv[c] = 1.0f / sqrtf(var[c] + eps);
        FNN_PARALLEL_FOR(schedule(static),
            for (run = 0; run < runs; run++)
                grad_sums(x, dy, mean, inv, cols, 0, cols, rows * run / runs,
                          rows * (run + 1) / runs, psd[run], psdx[run]););
        for (ptrdiff_t r = 0; r < runs; r++)
            for (size_t c = 0; c < cols; c++) {
                sd[c] += psd[r][c];
                sdx[c] += psdx[r][c];
            }
        grad_factors(sd, sdx, gamma, inv, 0, cols, rows, d_gamma, d_beta, ginv, k1, k2);
        FNN_PARALLEL_FOR(schedule(static),
            for (run = 0; run < runs; run++)
                grad_apply(x, dy, mean, inv, ginv, k1, k2, dx, cols, 0, cols,
                           rows * run / runs, rows * (run + 1) / runs););
        return;
    }
    FNN_PARALLEL_FOR(schedule(static),
        for (blk = 0; blk < n_blk; blk++) {
            size_t c0 = (size_t)blk * BN_BLOCK, c1 = c0 + BN_BLOCK < cols ? c0 + BN_BLOCK : cols;
            double sd[BN_BLOCK] = {0}, sdx[BN_BLOCK] = {0};
            float inv[BN_BLOCK], ginv[BN_BLOCK], k1[BN_BLOCK], k2[BN_BLOCK];
            for (size_t c = c0; c < c1; c++) inv[c - c0] = 1.0f / sqrtf(var[c] + eps);
            grad_sums(x, dy, mean, inv, cols, c0, c1, 0, rows, sd, sdx);
            grad_factors(sd, sdx, gamma, inv, c0, c1, rows, d_gamma, d_beta, ginv, k1, k2);
            grad_apply(x, dy, mean, inv, ginv, k1, k2, dx, cols, c0, c1, 0, rows);
        });
}

/* moving = moving * momentum + batch * (1 - momentum), Keras's update. */
void fnn_batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                                 const float *var, float momentum, size_t cols) {
    for (size_t c = 0; c < cols; c++) {
        moving_mean[c] = moving_mean[c] * momentum + mean[c] * (1.0f - momentum);
        moving_var[c] = moving_var[c] * momentum + var[c] * (1.0f - momentum);
    }
}
