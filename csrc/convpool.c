/* A Conv2D followed by MaxPooling2D, run a few images at a time so the convolution's output
 * never leaves the cache: im2col, GEMM and pooling on one chunk of images, then the next.
 * Only the pooled output, its argmax and the im2col columns (the weight gradient's operand)
 * reach memory; the unfused pair writes the convolution output and reads it back twice
 * forward, then writes and reads its gradient backward (for a 26x26x64 output at batch 32,
 * 5.5 MB each way).
 *
 * The activation must be non-decreasing (linear, relu, sigmoid, tanh, elu, ...), so that
 * pooling commutes with it and with the bias (one per channel): max(act(z + b)) =
 * act(max(z) + b), and bias and activation run on the pooled grid, a quarter of the values
 * for 2x2 windows. Where act makes taps tie (relu's zeros), the argmax may name a different
 * tap than pooling act(z) would, but act' is the same there (0 for relu). Its derivative must
 * be readable off its output, as the pooled value is the output at the argmax: backward
 * takes the gradient through the activation on the pooled grid, then scatters it into the
 * chunk's convolution gradient, which feeds the weight-gradient and input-gradient GEMMs.
 *
 * Work is dealt in `groups` fixed by the shape: each group's images in order, its weight
 * gradient accumulated in its own buffer, the groups' buffers then added in order, so results
 * do not depend on the thread count. Every step is the kernel the unfused layers call. */
#include "fastnn.h"

#define CONVPOOL_MAX_GROUPS 16
/* Convolution output per chunk: 256 KB, well inside a core's L2. */
#define CONVPOOL_CHUNK_FLOATS 65536

void fnn_conv2d_maxpool_plan(int n, size_t image_floats, int *groups, int *chunk) {
    int g = n < CONVPOOL_MAX_GROUPS ? n : CONVPOOL_MAX_GROUPS;
    if (g < 1) g = 1;
    int per_group = (n + g - 1) / g;
    size_t fit = image_floats ? CONVPOOL_CHUNK_FLOATS / image_floats : 1;
    *groups = g;
    *chunk = fit < 1 ? 1 : fit < (size_t)per_group ? (int)fit : per_group;
}

/* Images [lo, hi) of group i of g over n. */
static void group_range(int n, int g, int i, int *lo, int *hi) {
    *lo = (int)((long)n * i / g);
    *hi = (int)((long)n * (i + 1) / g);
}

/* Per-image sizes: convolution output pixels, im2col row length, input and pooled floats. */
typedef struct {
    int n, filters;
    size_t pixels, kdim, in_img, out_img;
} sizes;

static sizes sizes_of(const fnn_conv_geom *conv, const fnn_conv_geom *pool) {
    sizes z = {conv->n, pool->c, (size_t)conv->oh * conv->ow,
               (size_t)conv->kh * conv->kw * conv->c, (size_t)conv->h * conv->w * conv->c,
               (size_t)pool->oh * pool->ow * pool->c};
    return z;
}

static fnn_conv_geom with_images(const fnn_conv_geom *g, int n) {
    fnn_conv_geom out = *g;
    out.n = n;
    return out;
}

int fnn_conv2d_maxpool_forward(const float *x, const float *kernel, const float *bias, int act,
                               float alpha, const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                               float *cols, float *work, float *y, int32_t *argmax, int n_threads) {
    if (!fnn_blas_ready()) return -1;
    const sizes sz = sizes_of(conv, pool);
    const int n = sz.n, filters = sz.filters;
    const size_t pixels = sz.pixels, kdim = sz.kdim, in_img = sz.in_img, out_img = sz.out_img;
    int groups, chunk;
    fnn_conv2d_maxpool_plan(n, pixels * filters, &groups, &chunk);
    int nt = fnn_threads((size_t)n * pixels * filters, n_threads), i;
    if (nt > groups) nt = groups;
    int saved = fnn_blas_pin();
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < groups; i++) {
            int lo, hi;
            float *z = work + (size_t)i * chunk * pixels * filters;
            group_range(n, groups, i, &lo, &hi);
            for (int b = lo; b < hi; b += chunk) {
                int m = hi - b < chunk ? hi - b : chunk;
                fnn_conv_geom cg = with_images(conv, m), pg = with_images(pool, m);
                float *c = cols + (size_t)b * pixels * kdim;
                fnn_im2col(x + (size_t)b * in_img, c, &cg, 1);
                float *yc = y + (size_t)b * out_img;
                fnn_gemm(0, 0, m * (int)pixels, filters, (int)kdim, 1.0f, c, (int)kdim, kernel,
                         filters, 0.0f, z, filters, 1);
                fnn_maxpool_forward(z, yc, argmax + (size_t)b * out_img, &pg, 1);
                fnn_bias_act_forward(act, alpha, yc, bias, NULL, NULL, yc,
                                     (size_t)m * pool->oh * pool->ow, (size_t)filters, 1);
            }
        });
    fnn_blas_restore(saved);
    return 0;
}

int fnn_conv2d_maxpool_backward(const float *cols, const float *kernel, const float *y,
                                const int32_t *argmax, float *dy, int act, float alpha,
                                const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                                float *d_kernel, float *d_bias, float *dx, float *work,
                                float *dcols_work, float *partials, int n_threads) {
    if (!fnn_blas_ready()) return -1;
    const sizes sz = sizes_of(conv, pool);
    const int n = sz.n, filters = sz.filters;
    const size_t pixels = sz.pixels, kdim = sz.kdim, in_img = sz.in_img, out_img = sz.out_img;
    const size_t k_len = kdim * filters;
    int groups, chunk;
    fnn_conv2d_maxpool_plan(n, pixels * filters, &groups, &chunk);
    if ((d_kernel && groups > 1 && !partials) || (dx && !dcols_work)) return -2;
    if (act != FNN_LINEAR)
        fnn_act_backward(act, alpha, NULL, y, dy, dy, (size_t)n * pool->oh * pool->ow,
                         (size_t)filters, n_threads);
    if (d_bias)
        fnn_column_sum(dy, d_bias, (size_t)n * pool->oh * pool->ow, (size_t)filters, n_threads);
    if (!d_kernel && !dx) return 0;
    int nt = fnn_threads((size_t)n * pixels * (filters + kdim), n_threads), i;
    if (nt > groups) nt = groups;
    int saved = fnn_blas_pin();
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < groups; i++) {
            int lo, hi;
            float *dz = work + (size_t)i * chunk * pixels * filters;
            float *dcols = dcols_work ? dcols_work + (size_t)i * chunk * pixels * kdim : NULL;
            float *dk = i == 0 ? d_kernel : partials ? partials + (size_t)(i - 1) * k_len : NULL;
            group_range(n, groups, i, &lo, &hi);
            for (int b = lo; b < hi; b += chunk) {
                int m = hi - b < chunk ? hi - b : chunk, rows = m * (int)pixels;
                fnn_conv_geom cg = with_images(conv, m), pg = with_images(pool, m);
                const float *c = cols + (size_t)b * pixels * kdim;
                fnn_maxpool_backward(dy + (size_t)b * out_img, argmax + (size_t)b * out_img, dz,
                                     &pg, 1);
                if (dk)
                    fnn_gemm(1, 0, (int)kdim, filters, rows, 1.0f, c, (int)kdim, dz, filters,
                             b == lo ? 0.0f : 1.0f, dk, filters, 1);
                if (dx) {
                    fnn_gemm(0, 1, rows, (int)kdim, filters, 1.0f, dz, filters, kernel, filters,
                             0.0f, dcols, (int)kdim, 1);
                    fnn_col2im(dcols, dx + (size_t)b * in_img, &cg, 1);
                }
            }
        });
    fnn_blas_restore(saved);
    if (d_kernel) {     /* the groups' weight gradients, added in group order */
        ptrdiff_t j, len = (ptrdiff_t)k_len;
        nt = fnn_threads(k_len * (size_t)groups, n_threads);
        FNN_PARALLEL_FOR(schedule(static),
            for (j = 0; j < len; j++) {
                float s = d_kernel[j];
                for (int p = 0; p < groups - 1; p++) s += partials[(size_t)p * k_len + j];
                d_kernel[j] = s;
            });
    }
    return 0;
}
