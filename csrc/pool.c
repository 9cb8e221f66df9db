/* NHWC pooling. Max pooling saves, for each output, the flat index (within its image) of the
 * input it took, and backward scatters through those indices. Average pooling divides by the
 * number of in-image taps (padding is not counted, as in TensorFlow). Parallel over images. */
#include <math.h>
#include <string.h>
#include "fastnn.h"

/* Fold one tap's channels into the running maximum; ties keep the earlier tap. restrict and a
 * plain count let the compiler vectorize it as a branch-free select. */
static inline void max_tap(float *restrict o, int32_t *restrict a, const float *restrict s,
                           int32_t base, int c) {
    for (int ci = 0; ci < c; ci++) {
        float v = s[ci], cur = o[ci];
        int32_t take = -(int32_t)(v > cur);     /* all ones where the tap wins */
        o[ci] = v > cur ? v : cur;
        a[ci] = (a[ci] & ~take) | ((base + ci) & take);
    }
}

/* The first in-image tap seeds a window's maximum. */
static inline void seed_tap(float *restrict o, int32_t *restrict a, const float *restrict s,
                            int32_t base, int c) {
    for (int ci = 0; ci < c; ci++) {
        o[ci] = s[ci];
        a[ci] = base + ci;
    }
}

/* A 2x2 window whole inside the image (the usual pooling): its four taps compared in
 * registers, with the same tie rule as max_tap (the earlier tap wins). */
static inline void max_2x2(float *restrict o, int32_t *restrict a, const float *restrict s0,
                           const float *restrict s1, const float *restrict s2,
                           const float *restrict s3, int32_t b0, int32_t b1, int32_t b2,
                           int32_t b3, int c) {
    for (int ci = 0; ci < c; ci++) {
        float m = s0[ci];
        int32_t k = b0 + ci;
        k = s1[ci] > m ? b1 + ci : k;
        m = s1[ci] > m ? s1[ci] : m;
        k = s2[ci] > m ? b2 + ci : k;
        m = s2[ci] > m ? s2[ci] : m;
        k = s3[ci] > m ? b3 + ci : k;
        m = s3[ci] > m ? s3[ci] : m;
        o[ci] = m;
        a[ci] = k;
    }
}

FNN_DISPATCH
void fnn_maxpool_forward(const float *x, float *y, int32_t *argmax, const fnn_conv_geom *g,
                         int n_threads) {
    const fnn_conv_geom G = *g;   /* a local copy: stores through argmax cannot alias it */
    const size_t in_img = (size_t)G.h * G.w * G.c, out_img = (size_t)G.oh * G.ow * G.c;
    int nt = fnn_threads((size_t)G.n * out_img * G.kh * G.kw, n_threads);
    ptrdiff_t b;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (b = 0; b < G.n; b++) {
            const float *img = x + (size_t)b * in_img;
            float *out = y + (size_t)b * out_img;
            int32_t *arg = argmax + (size_t)b * out_img;
            for (int oy = 0; oy < G.oh; oy++)
                for (int ox = 0; ox < G.ow; ox++) {
                    float *o = out + ((size_t)oy * G.ow + ox) * G.c;
                    int32_t *a = arg + ((size_t)oy * G.ow + ox) * G.c;
                    int y0 = oy * G.sh - G.pad_top, x0 = ox * G.sw - G.pad_left;
                    if (G.kh == 2 && G.kw == 2 && y0 >= 0 && x0 >= 0 && y0 + 2 <= G.h &&
                        x0 + 2 <= G.w) {
                        int32_t b0 = (int32_t)(((size_t)y0 * G.w + x0) * G.c);
                        int32_t b2 = b0 + (int32_t)((size_t)G.w * G.c);
                        max_2x2(o, a, img + b0, img + b0 + G.c, img + b2, img + b2 + G.c, b0,
                                b0 + G.c, b2, b2 + G.c, G.c);
                        continue;
                    }
                    int first = 1;
                    for (int ky = 0; ky < G.kh; ky++) {
                        int iy = oy * G.sh + ky - G.pad_top;
                        if (iy < 0 || iy >= G.h) continue;
                        for (int kx = 0; kx < G.kw; kx++) {
                            int ix = ox * G.sw + kx - G.pad_left;
                            if (ix < 0 || ix >= G.w) continue;
                            int32_t base = (int32_t)(((size_t)iy * G.w + ix) * G.c);
                            if (first) {
                                seed_tap(o, a, img + base, base, G.c);
                                first = 0;
                            } else {
                                max_tap(o, a, img + base, base, G.c);
                            }
                        }
                    }
                    if (first)      /* no in-image tap: impossible for a valid geometry */
                        for (int ci = 0; ci < G.c; ci++) { o[ci] = -INFINITY; a[ci] = 0; }
                }
        });
}

/* Whether every index lies in [0, limit): the scatter of a backward pass trusts them.
 * Branch-free, so it vectorizes. */
FNN_DISPATCH
int fnn_indices_in_range(const int32_t *idx, size_t n, int32_t limit, int n_threads) {
    uint32_t bad = 0;
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static) reduction(|:bad),
        for (i = 0; i < len; i++) bad |= (uint32_t)idx[i] >= (uint32_t)limit;);
    return !bad;
}

/* dx = dy at each window's argmax, 0 elsewhere. When no two windows share an input (stride >=
 * pool size, the usual 2x2/2), every tap is written once by a branch-free select, so nothing
 * is zeroed first unless the windows leave gaps; overlapping windows scatter-add. */
FNN_DISPATCH
void fnn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx,
                          const fnn_conv_geom *g, int n_threads) {
    const fnn_conv_geom G = *g;
    const size_t in_img = (size_t)G.h * G.w * G.c, out_img = (size_t)G.oh * G.ow * G.c;
    int disjoint = G.sh >= G.kh && G.sw >= G.kw;
    int tiled = disjoint && G.sh == G.kh && G.sw == G.kw && G.pad_top == 0 &&
                G.pad_left == 0 && G.oh * G.sh == G.h && G.ow * G.sw == G.w;
    int nt = fnn_threads((size_t)G.n * (in_img + out_img), n_threads);
    ptrdiff_t b;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (b = 0; b < G.n; b++) {
            float *img = dx + (size_t)b * in_img;
            const float *d = dy + (size_t)b * out_img;
            const int32_t *a = argmax + (size_t)b * out_img;
            if (!tiled) memset(img, 0, sizeof(float) * in_img);
            if (!disjoint) {
                for (size_t i = 0; i < out_img; i++) img[a[i]] += d[i];
                continue;
            }
            for (int oy = 0; oy < G.oh; oy++)
                for (int ox = 0; ox < G.ow; ox++) {
                    size_t o = ((size_t)oy * G.ow + ox) * G.c;
                    for (int ky = 0; ky < G.kh; ky++) {
                        int iy = oy * G.sh + ky - G.pad_top;
                        if (iy < 0 || iy >= G.h) continue;
                        for (int kx = 0; kx < G.kw; kx++) {
                            int ix = ox * G.sw + kx - G.pad_left;
                            if (ix < 0 || ix >= G.w) continue;
                            int32_t base = (int32_t)(((size_t)iy * G.w + ix) * G.c);
                            float *restrict out = img + base;
                            const float *restrict dr = d + o;
                            const int32_t *restrict ar = a + o;
                            for (int ci = 0; ci < G.c; ci++)
                                out[ci] = ar[ci] == base + ci ? dr[ci] : 0.0f;
                        }
                    }
                }
        });
}

/* Average pooling; backward=1 turns it into the adjoint: spread dy over the window into dx. */
FNN_DISPATCH
static void avgpool(const float *src, float *dst, const fnn_conv_geom *g, int backward,
                    int n_threads) {
    const size_t in_img = (size_t)g->h * g->w * g->c, out_img = (size_t)g->oh * g->ow * g->c;
    int nt = fnn_threads((size_t)g->n * out_img * g->kh * g->kw, n_threads);
    ptrdiff_t b;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (b = 0; b < g->n; b++) {
            const float *in = src + (size_t)b * (backward ? out_img : in_img);
            float *out = dst + (size_t)b * (backward ? in_img : out_img);
            if (backward) memset(out, 0, sizeof(float) * in_img);
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    int y0 = oy * g->sh - g->pad_top, x0 = ox * g->sw - g->pad_left;
                    int y1 = y0 + g->kh, x1 = x0 + g->kw;
                    if (y0 < 0) y0 = 0;
                    if (x0 < 0) x0 = 0;
                    if (y1 > g->h) y1 = g->h;
                    if (x1 > g->w) x1 = g->w;
                    float inv = 1.0f / (float)((y1 - y0) * (x1 - x0));
                    size_t o = ((size_t)oy * g->ow + ox) * g->c;
                    if (!backward)
                        for (int ci = 0; ci < g->c; ci++) out[o + ci] = 0.0f;
                    for (int iy = y0; iy < y1; iy++)
                        for (int ix = x0; ix < x1; ix++) {
                            size_t i = ((size_t)iy * g->w + ix) * g->c;
                            if (backward)
                                for (int ci = 0; ci < g->c; ci++) out[i + ci] += in[o + ci] * inv;
                            else
                                for (int ci = 0; ci < g->c; ci++) out[o + ci] += in[i + ci];
                        }
                    if (!backward)
                        for (int ci = 0; ci < g->c; ci++) out[o + ci] *= inv;
                }
        });
}

void fnn_avgpool_forward(const float *x, float *y, const fnn_conv_geom *g, int n_threads) {
    avgpool(x, y, g, 0, n_threads);
}

void fnn_avgpool_backward(const float *dy, float *dx, const fnn_conv_geom *g, int n_threads) {
    avgpool(dy, dx, g, 1, n_threads);
}
