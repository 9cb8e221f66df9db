/* im2col / col2im for NHWC convolutions. A column row holds one output pixel's receptive field
 * in (ky, kx, channel) order, matching a Keras kernel (kh, kw, in, out) viewed as
 * (kh*kw*in, out), so the convolution is one GEMM. Out-of-image taps (padding) read as zero.
 * A dilated window (dh, dw > 1) spaces its taps dh rows / dw columns apart; with dw == 1 a
 * receptive-field row is kw*c contiguous floats, copied in one piece.
 * Both loops run over images in parallel: each image owns its rows of cols and its slice of x,
 * so col2im needs no atomics and sums in a fixed order. */
#include <string.h>
#include "fastnn.h"

/* One output row (oy) of an image whose receptive-field rows lie wholly inside it in x: the
 * common case, copied without bounds tests. */
static void im2col_inner_row(const float *img, float *out, const fnn_conv_geom *g, int oy,
                             size_t row_len) {
    size_t span = (size_t)g->kw * g->c, step = (size_t)g->sw * g->c;
    size_t tap_step = (size_t)g->dw * g->c;
    for (int ky = 0; ky < g->kh; ky++) {
        int iy = oy * g->sh + ky * g->dh - g->pad_top;
        float *restrict d = out + (size_t)oy * g->ow * row_len + (size_t)ky * span;
        if (iy < 0 || iy >= g->h) {
            for (int ox = 0; ox < g->ow; ox++, d += row_len)
                for (size_t j = 0; j < span; j++) d[j] = 0.0f;
            continue;
        }
        const float *restrict s = img + (size_t)iy * g->w * g->c;
        if (g->dw == 1) {
            for (int ox = 0; ox < g->ow; ox++, d += row_len, s += step)
                for (size_t j = 0; j < span; j++) d[j] = s[j];
            continue;
        }
        for (int ox = 0; ox < g->ow; ox++, d += row_len, s += step)
            for (int kx = 0; kx < g->kw; kx++)
                memcpy(d + (size_t)kx * g->c, s + kx * tap_step, sizeof(float) * g->c);
    }
}

void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads) {
    const size_t row_len = (size_t)g->kh * g->kw * g->c;
    const size_t img_rows = (size_t)g->oh * g->ow;
    const int span_w = (g->kw - 1) * g->dw + 1;     /* columns a window reaches */
    /* no horizontal padding in play: every receptive-field row is inside the image in x */
    const int inside_x = g->pad_left == 0 && (g->ow - 1) * g->sw + span_w <= g->w;
    int nt = fnn_threads((size_t)g->n * img_rows * row_len, n_threads);
    ptrdiff_t b;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (b = 0; b < g->n; b++) {
            const float *img = x + (size_t)b * g->h * g->w * g->c;
            float *out = cols + (size_t)b * img_rows * row_len;
            for (int oy = 0; oy < g->oh; oy++) {
                if (inside_x) {
                    im2col_inner_row(img, out, g, oy, row_len);
                    continue;
                }
                for (int ox = 0; ox < g->ow; ox++) {
                    float *dst = out + ((size_t)oy * g->ow + ox) * row_len;
                    for (int ky = 0; ky < g->kh; ky++) {
                        int iy = oy * g->sh + ky * g->dh - g->pad_top;
                        float *d = dst + (size_t)ky * g->kw * g->c;
                        if (iy < 0 || iy >= g->h) {
                            memset(d, 0, sizeof(float) * g->kw * g->c);
                            continue;
                        }
                        int ix0 = ox * g->sw - g->pad_left;
                        if (g->dw == 1 && ix0 >= 0 && ix0 + g->kw <= g->w) {  /* row inside */
                            memcpy(d, img + ((size_t)iy * g->w + ix0) * g->c,
                                   sizeof(float) * g->kw * g->c);
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
        });
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
