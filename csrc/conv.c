/* im2col / col2im for NHWC convolutions. A column row holds one output pixel's receptive field
 * in (ky, kx, channel) order, matching a Keras kernel (kh, kw, in, out) viewed as
 * (kh*kw*in, out), so the convolution is one GEMM. Out-of-image taps (padding) read as zero.
 * A dilated window (dh, dw > 1) spaces its taps dh rows / dw columns apart; with dw == 1 a
 * receptive-field row is kw*c contiguous floats, copied in one piece.
 * im2col runs over runs of rows in parallel (any run builds apart from the others); col2im over
 * images: each image owns its slice of x, so it needs no atomics and sums in a fixed order. */
#include <stdlib.h>
#include <string.h>

#include "fastnn.h"

/* Output pixels [ox0, ox1) of output row oy of an image whose receptive-field rows lie wholly
 * inside it in x: the common case, copied without bounds tests. out: pixel ox0's column row. */
static void im2col_inner_row(const float *img, float *out, const fnn_conv_geom *g, int oy,
                             int ox0, int ox1, size_t row_len) {
    size_t span = (size_t)g->kw * g->c, step = (size_t)g->sw * g->c;
    size_t tap_step = (size_t)g->dw * g->c;
    for (int ky = 0; ky < g->kh; ky++) {
        int iy = oy * g->sh + ky * g->dh - g->pad_top;
        float *restrict d = out + (size_t)ky * span;
        if (iy < 0 || iy >= g->h) {
            for (int ox = ox0; ox < ox1; ox++, d += row_len)
                for (size_t j = 0; j < span; j++) d[j] = 0.0f;
            continue;
        }
        const float *restrict s = img + (size_t)iy * g->w * g->c + (size_t)ox0 * step;
        if (g->dw == 1) {
            for (int ox = ox0; ox < ox1; ox++, d += row_len, s += step)
                for (size_t j = 0; j < span; j++) d[j] = s[j];
            continue;
        }
        for (int ox = ox0; ox < ox1; ox++, d += row_len, s += step)
            for (int kx = 0; kx < g->kw; kx++)
                memcpy(d + (size_t)kx * g->c, s + kx * tap_step, sizeof(float) * g->c);
    }
}

/* The same pixels where a window may reach into the horizontal padding. */
static void im2col_padded_row(const float *img, float *out, const fnn_conv_geom *g, int oy,
                              int ox0, int ox1, size_t row_len) {
    for (int ox = ox0; ox < ox1; ox++) {
        float *dst = out + (size_t)(ox - ox0) * row_len;
        for (int ky = 0; ky < g->kh; ky++) {
            int iy = oy * g->sh + ky * g->dh - g->pad_top;
            float *d = dst + (size_t)ky * g->kw * g->c;
            if (iy < 0 || iy >= g->h) {
                memset(d, 0, sizeof(float) * g->kw * g->c);
                continue;
            }
            int ix0 = ox * g->sw - g->pad_left;
            if (g->dw == 1 && ix0 >= 0 && ix0 + g->kw <= g->w) {  /* row inside */
                memcpy(d, img + ((size_t)iy * g->w + ix0) * g->c, sizeof(float) * g->kw * g->c);
                continue;
            }
            for (int kx = 0; kx < g->kw; kx++) {
                int ix = ix0 + kx * g->dw;
                if (ix < 0 || ix >= g->w)
                    memset(d + (size_t)kx * g->c, 0, sizeof(float) * g->c);
                else
                    memcpy(d + (size_t)kx * g->c, img + ((size_t)iy * g->w + ix) * g->c,
                           sizeof(float) * g->c);
            }
        }
    }
}

/* Rows [r0, r1) of cols (row r: image r / (oh*ow), output pixel r % (oh*ow)), so any run of
 * rows can be built apart from the others: a batch of one image splits too. */
static void im2col_rows(const float *x, float *cols, const fnn_conv_geom *g, size_t r0,
                        size_t r1) {
    const size_t row_len = (size_t)g->kh * g->kw * g->c;
    const size_t img_rows = (size_t)g->oh * g->ow;
    const int span_w = (g->kw - 1) * g->dw + 1;     /* columns a window reaches */
    /* no horizontal padding in play: every receptive-field row is inside the image in x */
    const int inside_x = g->pad_left == 0 && (g->ow - 1) * g->sw + span_w <= g->w;
    for (size_t r = r0; r < r1;) {
        size_t b = r / img_rows, p = r % img_rows;
        int oy = (int)(p / g->ow), ox0 = (int)(p % g->ow);
        int ox1 = r1 - r < (size_t)(g->ow - ox0) ? ox0 + (int)(r1 - r) : g->ow;
        const float *img = x + b * g->h * g->w * g->c;
        if (inside_x)
            im2col_inner_row(img, cols + r * row_len, g, oy, ox0, ox1, row_len);
        else
            im2col_padded_row(img, cols + r * row_len, g, oy, ox0, ox1, row_len);
        r += (size_t)(ox1 - ox0);
    }
}

/* Runs of about this many floats of cols: enough to amortize a run, small enough that two
 * threads share an image's rows (the 7x7 output of a late ResNet layer is 225 K floats). */
#define IM2COL_RUN 32768

static ptrdiff_t im2col_runs(const fnn_conv_geom *g, size_t *rows_per_run) {
    size_t rows = (size_t)g->n * g->oh * g->ow, row_len = (size_t)g->kh * g->kw * g->c;
    size_t per = IM2COL_RUN / (row_len ? row_len : 1);
    *rows_per_run = per ? per : 1;
    return (ptrdiff_t)((rows + *rows_per_run - 1) / *rows_per_run);
}

void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads) {
    size_t rows = (size_t)g->n * g->oh * g->ow, per;
    ptrdiff_t runs = im2col_runs(g, &per), i;
    int nt = runs > 1 ? fnn_threads(rows * g->kh * g->kw * g->c, n_threads) : 1;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(dynamic),
        for (i = 0; i < runs; i++) {
            size_t r0 = (size_t)i * per;
            im2col_rows(x, cols, g, r0, r0 + per < rows ? r0 + per : rows);
        });
}

/* The convolution's forward pass in one parallel region: the GEMM's blocks (fnn_gemm's own
 * split, so its results) dealt to the threads as they come free, each followed on its thread
 * by the epilogue of its block and, in a split by rows, preceded by the im2col of its rows.
 * A split by columns first builds all of cols (one barrier). At batch 1 the separate passes
 * had cost a fork and join each, around work too small to split well (im2col split images
 * only), and waited on a thread that a busy neighbour core had delayed. With `work`, the
 * Winograd path instead (winograd.c). */
int fnn_conv2d_forward(const float *x, const fnn_conv_geom *g, const float *kernel,
                       int filters, float *cols, float *work, int act, float alpha,
                       const float *bias, const fnn_norm *norm, const float *residual, float *z,
                       float *y, int n_threads) {
    int m = g->n * g->oh * g->ow, k = g->kh * g->kw * g->c, f = filters;
    const float *a = cols ? cols : x;
    fnn_gemm_plan plan;
    if (work)
        return fnn_conv2d_winograd(x, g, kernel, filters, work, act, alpha, bias, norm,
                                   residual, z, y, n_threads);
    if (!fnn_blas_ready()) return -1;
    if (m <= 0 || f <= 0) return 0;
    fnn_gemm_plan_of(m, f, k, &plan);
    if (plan.kind == FNN_PLAN_K || (act == FNN_SOFTMAX && plan.pn > 1)) {
        /* partial products summed at the end, or rows split across blocks: the passes apart */
        if (cols) fnn_im2col(x, cols, g, n_threads);
        if (fnn_gemm(0, 0, m, f, k, 1.0f, a, k, kernel, f, 0.0f, z, f, n_threads) != 0)
            return -1;
        return fnn_bias_act_forward(act, alpha, z, bias, norm, residual, y, (size_t)m,
                                    (size_t)f, n_threads) ? -2 : 0;
    }
    fnn_epilogue e = {act, alpha, z, y, (size_t)f, bias, norm ? norm->mean : NULL, NULL,
                      residual};
    if (norm && !(e.scale = fnn_epilogue_norm(norm, (size_t)f))) return -2;
    int by_rows = plan.pn == 1, blocks = plan.blocks, saved = fnn_blas_pin();
    size_t per = 0;
    ptrdiff_t runs = cols && !by_rows ? im2col_runs(g, &per) : 0;
    int nt = blocks > 1 || runs > 1 ? fnn_threads((size_t)m * f * (k ? k : 1), n_threads) : 1;
    if (nt > blocks && nt > runs) nt = blocks > runs ? blocks : (int)runs;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        ptrdiff_t i;
        if (runs) {
#pragma omp for schedule(dynamic)
            for (i = 0; i < runs; i++) {
                size_t r0 = (size_t)i * per;
                im2col_rows(x, cols, g, r0, r0 + per < (size_t)m ? r0 + per : (size_t)m);
            }
        }
#pragma omp for schedule(dynamic)
        for (i = 0; i < blocks; i++) {
            int m0, m1, n0, n1;
            fnn_gemm_plan_block(&plan, m, f, (int)i, &m0, &m1, &n0, &n1);
            if (cols && by_rows) im2col_rows(x, cols, g, (size_t)m0, (size_t)m1);
            fnn_gemm_block(m1 - m0, n1 - n0, k, a + (size_t)m0 * k, k, kernel + n0, f,
                           z + (size_t)m0 * f + n0, f);
            fnn_epilogue_block(&e, (size_t)m0, (size_t)m1, (size_t)n0, (size_t)n1);
        }
    }
    fnn_blas_restore(saved);
    free(e.scale);
    return 0;
}

void fnn_col2im(const float *cols, float *x, const fnn_conv_geom *g, int n_threads) {
    const size_t row_len = (size_t)g->kh * g->kw * g->c;
    const size_t img_rows = (size_t)g->oh * g->ow;
    const size_t img_size = (size_t)g->h * g->w * g->c;
    int nt = fnn_threads((size_t)g->n * img_rows * row_len, n_threads);
    ptrdiff_t b;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (b = 0; b < g->n; b++) {
            float *img = x + (size_t)b * img_size;
            const float *src_img = cols + (size_t)b * img_rows * row_len;
            memset(img, 0, sizeof(float) * img_size);
            for (int oy = 0; oy < g->oh; oy++) {
                for (int ox = 0; ox < g->ow; ox++) {
                    const float *src = src_img + ((size_t)oy * g->ow + ox) * row_len;
                    for (int ky = 0; ky < g->kh; ky++) {
                        int iy = oy * g->sh + ky * g->dh - g->pad_top;
                        if (iy < 0 || iy >= g->h) continue;
                        for (int kx = 0; kx < g->kw; kx++) {
                            int ix = ox * g->sw + kx * g->dw - g->pad_left;
                            if (ix < 0 || ix >= g->w) continue;
                            float *d = img + ((size_t)iy * g->w + ix) * g->c;
                            const float *s = src + ((size_t)ky * g->kw + kx) * g->c;
                            for (int ci = 0; ci < g->c; ci++) d[ci] += s[ci];
                        }
                    }
                }
            }
        });
}
