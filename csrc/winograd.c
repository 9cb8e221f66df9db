/* A 3x3, stride-1 convolution at inference by Winograd's minimal filtering F(2x2, 3x3) (Lavin
 * and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015): each 2x2 block of output
 * pixels (a tile) comes from the 4x4 input patch around it through 16 elementwise products in a
 * transformed space, so the GEMMs do 16 multiply-adds per tile and channel pair where im2col's
 * GEMM does 36: 2.25x fewer. Per tile block:
 *   V[xi] = B^T d B   (input patch d, 4x4 per channel; xi = 4 * i + j)
 *   M[xi] = V[xi] U[xi]   (16 GEMMs: tiles x c times c x filters)
 *   y = A^T M A       (2x2 per filter), then the epilogue of fnn_conv2d_forward,
 * with U[xi] = G g G^T the kernel's transform, taken once per call. The transforms only add and
 * halve, so the result differs from the direct sum by rounding alone (relative ~1e-6).
 * Tile blocks have a size fixed by the shape (never the thread count): results are the same on
 * any number of threads. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastnn.h"

/* Tiles per block: the block's V and M (16 * tiles * (c + filters) floats) about 8 MB, so
 * they stay near the cache the GEMMs stream them through. */
#define WINOGRAD_BLOCK_FLOATS (2u << 20)

/* The 16 planes of U, V and M lie this many floats further apart than their size: at a
 * power-of-two distance the 16 streams a transform reads or writes fall in one cache set and
 * evict each other (4x slower). */
#define PLANE_PAD 32

static int tiles_per_block(const fnn_conv_geom *g, int filters, size_t tiles) {
    size_t per = WINOGRAD_BLOCK_FLOATS / (16u * ((size_t)g->c + (size_t)filters));
    if (per < 16) per = 16;
    return (int)(per < tiles ? per : tiles);
}

/* Below 16 channels the 16 GEMMs are too thin (K = channels), and below 32 tiles the
 * kernel's transform (16 planes of c x filters, taken per call) costs more than the GEMMs
 * save (measured on ResNet-50's and small CNNs' shapes: 0.4-0.8x there, 1.3-2.9x above). */
#define WINOGRAD_MIN_CHANNELS 16
#define WINOGRAD_MIN_TILES 32

/* 2x2 output tiles of the batch (saturating: a shape asked about need not fit memory). */
static size_t count_tiles(const fnn_conv_geom *g) {
    size_t th = ((size_t)g->oh + 1) / 2, tw = ((size_t)g->ow + 1) / 2, n = (size_t)g->n;
    return n && th * tw > SIZE_MAX / n ? SIZE_MAX : n * th * tw;
}

size_t fnn_winograd_work(const fnn_conv_geom *g, int filters) {
    size_t tiles = count_tiles(g);
    if ((size_t)g->c * (size_t)filters > (SIZE_MAX >> 8) ||
        g->kh != 3 || g->kw != 3 || g->sh != 1 || g->sw != 1 || g->dh != 1 || g->dw != 1 ||
        g->c < WINOGRAD_MIN_CHANNELS || tiles < WINOGRAD_MIN_TILES || filters < 1)
        return 0;
    size_t block = (size_t)tiles_per_block(g, filters, tiles);
    return 16 * ((size_t)g->c * filters + block * ((size_t)g->c + filters) + 3 * PLANE_PAD) +
           g->c;
}

/* U[xi][c][f] = (G g G^T)[i][j] for input channels [c0, c1); kernel (3, 3, c, filters).
 * The loops over filters, channels and tiles below are written out element by element (no
 * small arrays indexed in them) so that they vectorize. */
FNN_DISPATCH
static void kernel_transform(const float *kernel, float *u, int c, int filters, int c0,
                             int c1) {
    const size_t tap = (size_t)c * filters, plane = tap + PLANE_PAD;
    for (int ci = c0; ci < c1; ci++) {
        const float *restrict g = kernel + (size_t)ci * filters;
        float *restrict o = u + (size_t)ci * filters;
#pragma omp simd
        for (size_t f = 0; f < (size_t)filters; f++) {
            /* G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of the 3x3 kernel */
            float k00 = g[f], k01 = g[tap + f], k02 = g[2 * tap + f];
            float k10 = g[3 * tap + f], k11 = g[4 * tap + f], k12 = g[5 * tap + f];
            float k20 = g[6 * tap + f], k21 = g[7 * tap + f], k22 = g[8 * tap + f];
            float t10 = 0.5f * (k00 + k10 + k20), t11 = 0.5f * (k01 + k11 + k21);
            float t12 = 0.5f * (k02 + k12 + k22);
            float t20 = 0.5f * (k00 - k10 + k20), t21 = 0.5f * (k01 - k11 + k21);
            float t22 = 0.5f * (k02 - k12 + k22);
            /* (G g) G^T: the same combination of each row's three values */
            o[f] = k00;
            o[plane + f] = 0.5f * (k00 + k01 + k02);
            o[2 * plane + f] = 0.5f * (k00 - k01 + k02);
            o[3 * plane + f] = k02;
            o[4 * plane + f] = t10;
            o[5 * plane + f] = 0.5f * (t10 + t11 + t12);
            o[6 * plane + f] = 0.5f * (t10 - t11 + t12);
            o[7 * plane + f] = t12;
            o[8 * plane + f] = t20;
            o[9 * plane + f] = 0.5f * (t20 + t21 + t22);
            o[10 * plane + f] = 0.5f * (t20 - t21 + t22);
            o[11 * plane + f] = t22;
            o[12 * plane + f] = k20;
            o[13 * plane + f] = 0.5f * (k20 + k21 + k22);
            o[14 * plane + f] = 0.5f * (k20 - k21 + k22);
            o[15 * plane + f] = k22;
        }
    }
}

/* Tile number t of the image batch: its image and the output pixel of its top-left corner. */
FNN_INLINE void tile_at(const fnn_conv_geom *g, size_t t, int *b, int *oy, int *ox) {
    int th = (g->oh + 1) / 2, tw = (g->ow + 1) / 2;
    size_t per_image = (size_t)th * tw;
    *b = (int)(t / per_image);
    size_t p = t % per_image;
    *oy = 2 * (int)(p / tw);
    *ox = 2 * (int)(p % tw);
}

/* V[xi][t - t0][c] = (B^T d B)[i][j] for tile t: its 4x4 input patch d, zeros outside x. */
FNN_DISPATCH
static void input_transform(const float *x, const fnn_conv_geom *g, const float *zeros,
                            float *v, size_t t0, size_t t, size_t block) {
    int b, oy, ox;
    tile_at(g, t, &b, &oy, &ox);
    const int c = g->c;
    const float *img = x + (size_t)b * g->h * g->w * c;
    const float *d[4][4];
    for (int i = 0; i < 4; i++) {
        int iy = oy + i - g->pad_top;
        for (int j = 0; j < 4; j++) {
            int ix = ox + j - g->pad_left;
            d[i][j] = iy >= 0 && iy < g->h && ix >= 0 && ix < g->w
                          ? img + ((size_t)iy * g->w + ix) * c : zeros;
        }
    }
    const size_t plane = block * c + PLANE_PAD;
    float *o = v + (t - t0) * c;
    for (int i = 0; i < 4; i++) {       /* row i of B^T d, then its 4 values B-combined */
        /* B^T's row i combines patch rows (p, q) with signs: p - q or p + q */
        static const int p_row[4] = {0, 1, 2, 1}, q_row[4] = {2, 2, 1, 3};
        const float sq = i == 1 ? 1.0f : -1.0f;
        const float *restrict p0 = d[p_row[i]][0], *restrict p1 = d[p_row[i]][1];
        const float *restrict p2 = d[p_row[i]][2], *restrict p3 = d[p_row[i]][3];
        const float *restrict q0 = d[q_row[i]][0], *restrict q1 = d[q_row[i]][1];
        const float *restrict q2 = d[q_row[i]][2], *restrict q3 = d[q_row[i]][3];
        float *restrict o0 = o + (4 * i) * plane, *restrict o1 = o0 + plane;
        float *restrict o2 = o1 + plane, *restrict o3 = o2 + plane;
#pragma omp simd
        for (int ch = 0; ch < c; ch++) {
            float s0 = p0[ch] + sq * q0[ch], s1 = p1[ch] + sq * q1[ch];
            float s2 = p2[ch] + sq * q2[ch], s3 = p3[ch] + sq * q3[ch];
            o0[ch] = s0 - s2;
            o1[ch] = s1 + s2;
            o2[ch] = s2 - s1;
            o3[ch] = s1 - s3;
        }
    }
}

/* Tile t's 2x2 output pixels (those inside the output) from M: z = A^T M A, then the
 * epilogue on each row of pixels it wrote. */
FNN_DISPATCH
static void output_transform(const float *m, const fnn_conv_geom *g, int filters,
                             const fnn_epilogue *e, size_t t0, size_t t, size_t block) {
    int b, oy, ox;
    tile_at(g, t, &b, &oy, &ox);
    const size_t plane = block * filters + PLANE_PAD;
    const float *restrict q = m + (t - t0) * filters;
    const int rows = oy + 1 < g->oh ? 2 : 1, cols = ox + 1 < g->ow ? 2 : 1;
    const size_t r0 = ((size_t)b * g->oh + oy) * g->ow + ox, r1 = r0 + g->ow;
    float *z0 = e->z + r0 * filters;
    /* a pixel outside the output goes to z0's own places, overwritten right after */
    float *z1 = rows == 2 ? e->z + r1 * filters : z0;
    const size_t right = cols == 2 ? (size_t)filters : 0;
#pragma omp simd
    for (size_t f = 0; f < (size_t)filters; f++) {
        /* A^T M: rows M0 + M1 + M2 and M1 - M2 - M3 */
        float s00 = q[f] + q[4 * plane + f] + q[8 * plane + f];
        float s01 = q[plane + f] + q[5 * plane + f] + q[9 * plane + f];
        float s02 = q[2 * plane + f] + q[6 * plane + f] + q[10 * plane + f];
        float s03 = q[3 * plane + f] + q[7 * plane + f] + q[11 * plane + f];
        float s10 = q[4 * plane + f] - q[8 * plane + f] - q[12 * plane + f];
        float s11 = q[5 * plane + f] - q[9 * plane + f] - q[13 * plane + f];
        float s12 = q[6 * plane + f] - q[10 * plane + f] - q[14 * plane + f];
        float s13 = q[7 * plane + f] - q[11 * plane + f] - q[15 * plane + f];
        /* (A^T M) A: the same combination of each row's four values */
        z1[right + f] = s11 - s12 - s13;
        z1[f] = s10 + s11 + s12;
        z0[right + f] = s01 - s02 - s03;
        z0[f] = s00 + s01 + s02;
    }
    fnn_epilogue_block(e, r0, r0 + cols, 0, filters);
    if (rows == 2) fnn_epilogue_block(e, r1, r1 + cols, 0, filters);
}

int fnn_conv2d_winograd(const float *x, const fnn_conv_geom *g, const float *kernel,
                        int filters, float *work, int act, float alpha, const float *bias,
                        const fnn_norm *norm, const float *residual, float *z, float *y,
                        int n_threads) {
    if (!fnn_blas_ready()) return -1;
    size_t tiles = count_tiles(g);
    if (tiles == 0 || filters <= 0) return 0;
    const int c = g->c, block = tiles_per_block(g, filters, tiles);
    const size_t u_plane = (size_t)c * filters + PLANE_PAD;
    const size_t v_plane = (size_t)block * c + PLANE_PAD;
    const size_t m_plane = (size_t)block * filters + PLANE_PAD;
    float *u = work, *v = u + 16 * u_plane, *m = v + 16 * v_plane, *zeros = m + 16 * m_plane;
    memset(zeros, 0, sizeof(float) * c);
    fnn_epilogue e = {act, alpha, z, y, (size_t)filters, bias, norm ? norm->mean : NULL, NULL,
                      residual};
    if (norm && !(e.scale = fnn_epilogue_norm(norm, (size_t)filters))) return -2;
    int saved = fnn_blas_pin();
    int nt = fnn_threads(tiles * 16 * ((size_t)c + filters), n_threads);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        ptrdiff_t i;
#pragma omp for schedule(static)
        for (i = 0; i < c; i++) kernel_transform(kernel, u, c, filters, (int)i, (int)i + 1);
        for (size_t t0 = 0; t0 < tiles; t0 += (size_t)block) {
            size_t t1 = t0 + block < tiles ? t0 + block : tiles;
            int rows = (int)(t1 - t0);
#pragma omp for schedule(static)
            for (i = (ptrdiff_t)t0; i < (ptrdiff_t)t1; i++)
                input_transform(x, g, zeros, v, t0, (size_t)i, (size_t)block);
#pragma omp for schedule(dynamic)
            for (i = 0; i < 16; i++)
                fnn_gemm_block(rows, filters, c, v + i * v_plane, c, u + i * u_plane, filters,
                               m + i * m_plane, filters);
#pragma omp for schedule(static)
            for (i = (ptrdiff_t)t0; i < (ptrdiff_t)t1; i++)
                output_transform(m, g, filters, &e, t0, (size_t)i, (size_t)block);
        }
    }
    fnn_blas_restore(saved);
    free(e.scale);
    return 0;
}
