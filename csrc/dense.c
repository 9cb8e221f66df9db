/* The dense layer's work outside the GEMMs (which go through BLAS from _core.pyx): the fused
 * bias + activation epilogue of the forward pass and the bias gradient of the backward pass. */
#include <math.h>
#include <stdlib.h>

#include "fastnn.h"

/* The forward epilogue of a GEMM's output z (rows x cols), per element of column c:
 *   v = z + bias[c];  v = (v - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c] (norm);
 *   v += residual;    y = act(v)
 * each part optional (NULL): a Dense or Conv2D layer's bias and activation, and at inference
 * the BatchNormalization, residual Add and Activation layers after it, in one pass instead of
 * four. z holds v on return; y may alias z when the activation's backward does not need z.
 * The arithmetic is the one the separate layers do, in their order. Rows go chunk by chunk
 * (~64 KB), so a chunk is still in L1/L2 when its activation runs. Returns -1 when out of
 * memory for the folded normalization factors. */
#define BIAS_ACT_CHUNK 16384

/* The normalization folded into per-column factors, as fnn_batchnorm_apply computes them: the
 * epilogue's scale and shift (2 * cols floats). NULL when out of memory. */
float *fnn_epilogue_norm(const fnn_norm *norm, size_t cols) {
    float *scale = (float *)malloc(2 * cols * sizeof(float));
    if (!scale) return NULL;
    for (size_t c = 0; c < cols; c++) {
        scale[c] = (norm->gamma ? norm->gamma[c] : 1.0f) / sqrtf(norm->var[c] + norm->eps);
        scale[cols + c] = norm->beta ? norm->beta[c] : 0.0f;
    }
    return scale;
}

/* The epilogue on rows [r0, r1) and columns [c0, c1) of z, on the calling thread, in runs of
 * rows of ~64 KB, so a run is still in L1/L2 when its activation runs. A softmax needs whole
 * rows (c0 = 0, c1 = cols). */
FNN_DISPATCH
void fnn_epilogue_block(const fnn_epilogue *e, size_t r0, size_t r1, size_t c0, size_t c1) {
    size_t cols = e->cols, width = c1 - c0;
    size_t run = width >= BIAS_ACT_CHUNK ? 1 : BIAS_ACT_CHUNK / width;
    const float *shift = e->scale ? e->scale + cols : NULL;
    for (size_t lo = r0; lo < r1; lo += run) {
        size_t hi = lo + run < r1 ? lo + run : r1;
        for (size_t r = lo; r < hi; r++) {
            float *zr = e->z + r * cols;
            if (e->bias)
                for (size_t c = c0; c < c1; c++) zr[c] += e->bias[c];
            if (e->scale) {
                const float *mean = e->mean, *scale = e->scale;
                for (size_t c = c0; c < c1; c++) zr[c] = (zr[c] - mean[c]) * scale[c] + shift[c];
            }
            if (e->residual) {
                const float *rr = e->residual + r * cols;
                for (size_t c = c0; c < c1; c++) zr[c] += rr[c];
            }
        }
        if (width == cols)
            fnn_act_forward(e->act, e->alpha, e->z + lo * cols, e->y + lo * cols, hi - lo, cols,
                            1);
        else
            for (size_t r = lo; r < hi; r++)
                fnn_act_forward(e->act, e->alpha, e->z + r * cols + c0, e->y + r * cols + c0,
                                1, width, 1);
    }
}

int fnn_bias_act_forward(int act, float alpha, float *z, const float *bias, const fnn_norm *norm,
                         const float *residual, float *y, size_t rows, size_t cols,
                         int n_threads) {
    if (!bias && !norm && !residual) {
        fnn_act_forward(act, alpha, z, y, rows, cols, n_threads);
        return 0;
    }
    fnn_epilogue e = {act, alpha, z, y, cols, bias, norm ? norm->mean : NULL, NULL, residual};
    if (norm && !(e.scale = fnn_epilogue_norm(norm, cols))) return -1;
    size_t chunk = cols >= BIAS_ACT_CHUNK ? 1 : BIAS_ACT_CHUNK / cols;
    ptrdiff_t chunks = (ptrdiff_t)((rows + chunk - 1) / chunk), i;
    int nt = chunks > 1 ? fnn_threads(rows * cols, n_threads) : 1;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < chunks; i++) {
            size_t r0 = (size_t)i * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
            fnn_epilogue_block(&e, r0, r1, 0, cols);
        });
    free(e.scale);
    return 0;
}

/* out[c] = sum over rows of a[r, c]. Each work item streams a block of up to 64 columns over a
 * run of rows, so the matrix is read once, in order. A tall matrix of one column block (a
 * convolution's bias gradient: 21632 x 64) is cut into row runs, each summed in row order, and
 * the runs are added in order. The cut depends on the shape only, so results are the same for
 * any thread count. */
#define COLSUM_BLOCK 64
#define COLSUM_MAX_RUNS 16
#define COLSUM_RUN_WORK 65536

FNN_DISPATCH
void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads) {
    ptrdiff_t blocks = (ptrdiff_t)((cols + COLSUM_BLOCK - 1) / COLSUM_BLOCK), item;
    ptrdiff_t runs = blocks > 1 ? 1 : (ptrdiff_t)(rows * cols / COLSUM_RUN_WORK);
    if (runs > COLSUM_MAX_RUNS) runs = COLSUM_MAX_RUNS;
    if (runs > (ptrdiff_t)rows) runs = (ptrdiff_t)rows;
    if (runs < 1) runs = 1;
    float partial[COLSUM_MAX_RUNS][COLSUM_BLOCK];
    int nt = blocks * runs > 1 ? fnn_threads(rows * cols, n_threads) : 1;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (item = 0; item < blocks * runs; item++) {
            ptrdiff_t b = item / runs, run = item % runs;
            size_t c0 = (size_t)b * COLSUM_BLOCK;
            size_t width = cols - c0 < COLSUM_BLOCK ? cols - c0 : COLSUM_BLOCK;
            size_t r0 = rows * (size_t)run / (size_t)runs;
            size_t r1 = rows * (size_t)(run + 1) / (size_t)runs;
            float acc[COLSUM_BLOCK] = {0};
            for (size_t r = r0; r < r1; r++) {
                const float *ar = a + r * cols + c0;
                for (size_t c = 0; c < width; c++) acc[c] += ar[c];
            }
            float *dst = runs > 1 ? partial[run] : out + c0;
            for (size_t c = 0; c < width; c++) dst[c] = acc[c];
        });
    if (runs > 1) {     /* one column block */
        for (size_t c = 0; c < cols; c++) {
            float sum = partial[0][c];
            for (ptrdiff_t run = 1; run < runs; run++) sum += partial[run][c];
            out[c] = sum;
        }
    }
}

int fnn_dense_forward(const fnn_dense *layer, const float *x, float *z, float *y, int rows,
                      int training, int n_threads) {
    int d_in = layer->d_in, d_out = layer->d_out;
    int blocks = training ? fnn_gemm_row_blocks(rows, d_in, d_out) : 0;
    if (fnn_gemm_ex(0, 0, rows, d_out, d_in, 1.0f, x, d_in, layer->kernel, d_out, 0.0f, z,
                    d_out, blocks ? FNN_SPLIT_K : FNN_SPLIT_AUTO, blocks, NULL,
                    n_threads) != 0)
        return -1;
    fnn_bias_act_forward(layer->act, layer->alpha, z, layer->bias, NULL, NULL, y, (size_t)rows,
                         (size_t)d_out, n_threads);
    return 0;
}

int fnn_dense_backward(const fnn_dense *layer, int act, const float *x, const float *z,
                       const float *y, const float *dy, float *dz, float *dx, int rows,
                       float kernel_step, const fnn_rows_done *kernel_done, int n_threads) {
    int d_in = layer->d_in, d_out = layer->d_out;
    int blocks = fnn_gemm_row_blocks(rows, d_in, d_out);
    if (!fnn_blas_ready()) return -1;
    fnn_act_backward(act, layer->alpha, z, y, dy, dz, (size_t)rows, (size_t)d_out, n_threads);
    /* dx first: it needs the kernel as it was, and kernel_done may update it. */
    if (dx)
        fnn_gemm(0, 1, rows, d_in, d_out, 1.0f, dz, d_out, layer->kernel, d_out, 0.0f, dx, d_in,
                 n_threads);
    /* kernel_step: d_kernel -= kernel_step x^T dz, the SGD step in the GEMM's output pass */
    if (layer->d_kernel)
        fnn_gemm_ex(1, 0, d_in, d_out, rows, kernel_step > 0 ? -kernel_step : 1.0f, x, d_in, dz,
                d_out, kernel_step > 0 ? 1.0f : 0.0f, layer->d_kernel, d_out,
                blocks ? FNN_SPLIT_ROWS : FNN_SPLIT_AUTO, blocks, kernel_done, n_threads);
    if (layer->d_bias) fnn_column_sum(dz, layer->d_bias, (size_t)rows, (size_t)d_out, n_threads);
    return 0;
}
