/* GEMM dispatch: row-major C = alpha op(A) op(B) + beta C through the Fortran sgemm handed to
 * fnn_set_blas (NumPy's bundled OpenBLAS when it has one, else SciPy's; see
 * fastnn/backend/blas.py), split into output blocks run on fastnn's own OpenMP threads. The BLAS
 * runs single-threaded while fastnn calls it (its thread count is set to 1 and restored), so the
 * two thread pools never compete and the user's own NumPy keeps its threads.
 * The block split depends only on the shapes, never on the thread count, so results are
 * bit-identical for any number of threads. */
#include <stdlib.h>

#include "fastnn.h"

static fnn_sgemm_t sgemm32 = 0;
static fnn_sgemm64_t sgemm64 = 0;
static fnn_blas_set_threads_t blas_set_threads = 0;
static fnn_blas_get_threads_t blas_get_threads = 0;

void fnn_set_blas(void *sgemm, int ilp64, void *set_threads, void *get_threads) {
    sgemm32 = ilp64 ? 0 : (fnn_sgemm_t)sgemm;
    sgemm64 = ilp64 ? (fnn_sgemm64_t)sgemm : 0;
    blas_set_threads = (fnn_blas_set_threads_t)set_threads;
    blas_get_threads = (fnn_blas_get_threads_t)get_threads;
}

int fnn_blas_ready(void) { return sgemm32 != 0 || sgemm64 != 0; }

/* Runs of many GEMMs (fnn_stack_run) set the BLAS to one thread once around the whole run;
 * fnn_gemm then finds it at 1 and leaves it alone. */
int fnn_blas_pin(void) {
    int saved = blas_get_threads ? blas_get_threads() : 1;
    if (blas_set_threads && saved != 1) blas_set_threads(1);
    return saved;
}

void fnn_blas_restore(int saved) {
    if (blas_set_threads && saved != 1) blas_set_threads(saved);
}

#define GEMM_MIN_BLOCK 32
#define GEMM_MAX_BLOCKS 16
/* A K-split keeps its partial products on the caller's stack: at most this many floats. */
#define GEMM_SPLIT_SCRATCH 16384
#define GEMM_MIN_K_BLOCK 64
/* Multiply-adds up to which OpenBLAS (SkylakeX and later) runs sgemm without packing. */
#define GEMM_SMALL_WORK 1000000.0
#define GEMM_PACKED_BLOCK_WORK 16e6

static void gemm_block(int trans_a, int trans_b, int m, int n, int k, float alpha,
                       const float *a, int lda, const float *b, int ldb, float beta,
                       float *c, int ldc) {
    /* Row-major C^T = op(B)^T op(A)^T in column-major terms: swap the operands. */
    char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    if (sgemm64) {
        int64_t m8 = m, n8 = n, k8 = k, lda8 = lda, ldb8 = ldb, ldc8 = ldc;
        sgemm64(&tb, &ta, &n8, &m8, &k8, &alpha, (float *)b, &ldb8, (float *)a, &lda8, &beta,
                c, &ldc8);
    } else {
        sgemm32(&tb, &ta, &n, &m, &k, &alpha, (float *)b, &ldb, (float *)a, &lda, &beta, c,
                &ldc);
    }
}

/* Blocks of a split of `dim` into whole 16-wide panels (the BLAS micro-kernels' fast path):
 * at most `blocks`, an even number when more than two, so two or four threads share alike. */
static int panel_blocks(int dim, int blocks, int min_block) {
    int panels = (dim + 15) / 16;
    if (blocks > dim / min_block) blocks = dim / min_block;
    if (blocks > panels) blocks = panels;
    if (blocks > 2) blocks &= ~1;
    return blocks;
}

/* [lo, hi) of block i of `blocks` over `dim`, at panel boundaries. */
static void panel_range(int dim, int blocks, int i, int *lo, int *hi) {
    int panels = (dim + 15) / 16;
    int p0 = (int)((long)panels * i / blocks), p1 = (int)((long)panels * (i + 1) / blocks);
    *lo = p0 * 16;
    *hi = p1 * 16 < dim ? p1 * 16 : dim;
}

/* Blocks of a K-split of this shape: its partial products live on the caller's stack. */
static int k_split_blocks(int m, int n, int k, int blocks) {
    double sc = (double)m * n;
    if ((double)(blocks - 1) * sc > GEMM_SPLIT_SCRATCH) blocks = 1 + (int)(GEMM_SPLIT_SCRATCH / sc);
    return panel_blocks(k, blocks, GEMM_MIN_K_BLOCK);
}

/* Blocks for a GEMM of this work: FNN_GEMM_BLOCK_WORK each while that keeps them within
 * OpenBLAS's unpacked small-matrix kernels; beyond, where every block packs its operands
 * anew, GEMM_PACKED_BLOCK_WORK each (but at least two), since each extra block re-packs a
 * whole operand (1024x784x128: 16 blocks 257 GFLOP/s, 6 blocks 300 on two cores). */
static int work_blocks(int m, int n, int k) {
    double work = (double)m * n * (k > 0 ? k : 1);
    int blocks = (int)(work / FNN_GEMM_BLOCK_WORK);
    if (blocks > GEMM_MAX_BLOCKS) blocks = GEMM_MAX_BLOCKS;
    if (blocks > 1 && work / blocks > GEMM_SMALL_WORK) {
        blocks = (int)(work / GEMM_PACKED_BLOCK_WORK);
        if (blocks < 2) blocks = 2;
        if (blocks > GEMM_MAX_BLOCKS) blocks = GEMM_MAX_BLOCKS;
    }
    return blocks;
}

int fnn_gemm_row_blocks(int rows, int d_in, int d_out) {
    int blocks = work_blocks(rows, d_out, d_in);
    if (blocks <= 1) return 0;
    blocks = k_split_blocks(rows, d_out, d_in, blocks);
    return blocks > 1 ? blocks : 0;
}

/* C = alpha op(A) op(B) + beta C over K in runs small enough for OpenBLAS's unpacked kernels,
 * each run added onto C (32x10816x200 on one core: 1.33 -> 1.07 ms; the packed path copies
 * all of op(B) to multiply it by 32 rows). */
static void gemm_k_runs(int trans_a, int trans_b, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta,
                        float *c, int ldc) {
    int run = (int)(GEMM_SMALL_WORK / ((double)m * n)) & ~15;
    if (run < 16 || run >= k) {
        gemm_block(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    for (int lo = 0; lo < k; lo += run) {
        int len = k - lo < run ? k - lo : run;
        const float *al = trans_a ? a + (size_t)lo * lda : a + lo;
        const float *bl = trans_b ? b + lo : b + (size_t)lo * ldb;
        gemm_block(trans_a, trans_b, m, n, len, alpha, al, lda, bl, ldb, lo ? 1.0f : beta, c,
                   ldc);
    }
}

/* C summed from `blocks` partial products over K ranges, added in block order; the partials
 * in `partial` ((blocks - 1) m n floats). */
static void gemm_split_k(int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta,
                         float *c, int ldc, int blocks, float *partial, int n_threads) {
    int nt = n_threads < blocks ? n_threads : blocks, i;
    size_t len = (size_t)m * n;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < blocks; i++) {
            int lo, hi;
            panel_range(k, blocks, i, &lo, &hi);
            const float *ai = trans_a ? a + (size_t)lo * lda : a + lo;
            const float *bi = trans_b ? b + lo : b + (size_t)lo * ldb;
            if (i == 0)
                gemm_k_runs(trans_a, trans_b, m, n, hi - lo, alpha, ai, lda, bi, ldb, beta, c,
                            ldc);
            else
                gemm_k_runs(trans_a, trans_b, m, n, hi - lo, alpha, ai, lda, bi, ldb, 0.0f,
                            partial + (i - 1) * len, n);
        });
    for (int r = 0; r < m; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int p = 0; p < blocks - 1; p++) {
            const float *pr = partial + p * len + (size_t)r * n;
            for (int j = 0; j < n; j++) cr[j] += pr[j];
        }
    }
}

/* C in `blocks` blocks of rows (split_rows) or columns, dealt to the threads in contiguous
 * runs (static schedule), so a thread's rows are the ones the elementwise kernels after it
 * (bias, activation, pooling: static over rows) give the same thread; `done` runs on each
 * finished row block on its thread. */
static void gemm_split_mn(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta,
                          float *c, int ldc, int split_rows, int blocks,
                          const fnn_rows_done *done, int n_threads) {
    int dim = split_rows ? m : n;
    int nt = n_threads < blocks ? n_threads : blocks, i;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < blocks; i++) {
            int lo, hi;
            panel_range(dim, blocks, i, &lo, &hi);
            int len = hi - lo;
            if (split_rows) {
                const float *ai = trans_a ? a + lo : a + (size_t)lo * lda;
                gemm_block(trans_a, trans_b, len, n, k, alpha, ai, lda, b, ldb, beta,
                           c + (size_t)lo * ldc, ldc);
                if (done) done->fn(done->ctx, lo, hi, 1);
            } else {
                const float *bi = trans_b ? b + (size_t)lo * ldb : b + lo;
                gemm_block(trans_a, trans_b, m, len, k, alpha, a, lda, bi, ldb, beta, c + lo, ldc);
            }
        });
}

/* C in a pm x pn grid of blocks (big outputs: each block packs 1/pm of A and 1/pn of B
 * instead of one of them whole; 2048^3: 16 row blocks 293 GFLOP/s, 4 x 4 blocks 370 in
 * isolation on two cores), dealt to the threads in contiguous runs of block rows. */
static void gemm_split_2d(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta,
                          float *c, int ldc, int pm, int pn, int n_threads) {
    int blocks = pm * pn, nt = n_threads < blocks ? n_threads : blocks, i;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < blocks; i++) {
            int m0, m1, n0, n1;
            panel_range(m, pm, i / pn, &m0, &m1);
            panel_range(n, pn, i % pn, &n0, &n1);
            const float *ai = trans_a ? a + m0 : a + (size_t)m0 * lda;
            const float *bi = trans_b ? b + (size_t)n0 * ldb : b + n0;
            gemm_block(trans_a, trans_b, m1 - m0, n1 - n0, k, alpha, ai, lda, bi, ldb, beta,
                       c + (size_t)m0 * ldc + n0, ldc);
        });
}

/* The grid pm x pn = blocks that packs the fewest floats (pn A + pm B), or pn = 1. */
static void grid_split(int m, int n, int blocks, double sa, double sb, int *pm, int *pn) {
    double best = -1;
    *pm = blocks;
    *pn = 1;
    for (int r = 1; r <= blocks; r++) {
        int q = blocks / r;
        if (r * q != blocks || panel_blocks(m, r, GEMM_MIN_BLOCK) != r ||
            panel_blocks(n, q, GEMM_MIN_BLOCK) != q)
            continue;
        double cost = q * sa + r * sb;
        if (best < 0 || cost < best) {
            best = cost;
            *pm = r;
            *pn = q;
        }
    }
}

/* The output is split by rows (M), by columns (N) or, when K is the long side, along K into
 * partial products summed in block order. Each block's BLAS call packs its share of both
 * operands, so the split picked is the one that moves the fewest floats in all, P blocks:
 * M: A + P B + C, N: P A + B + C, K: A + B + (2P - 1) C (the partials, then their sum).
 * Except that M/N blocks small enough for OpenBLAS's unpacked small-matrix kernels (32x784x32)
 * beat any K-split, which the float count does not see. At batch 32 K is picked for a wide
 * first layer (32x10816x200: 0.86 -> 0.75 ms on two cores) and a convolution's weight gradient
 * (9x21632x64: 0.39 -> 0.29 ms). It depends on the shape only, never on the thread count. */
void fnn_gemm_plan_of(int m, int n, int k, fnn_gemm_plan *plan) {
    int blocks = work_blocks(m, n, k);
    plan->kind = FNN_PLAN_GRID;
    plan->blocks = plan->pm = plan->pn = 1;
    if (blocks <= 1 || k <= 0) return;
    double sa = (double)m * k, sb = (double)k * n, sc = (double)m * n;
    int split_rows = m >= n;
    int mn_blocks = panel_blocks(split_rows ? m : n, blocks, GEMM_MIN_BLOCK);
    double mn_cost = (split_rows ? sa + mn_blocks * sb : mn_blocks * sa + sb) + sc;
    int k_blocks = k_split_blocks(m, n, k, blocks);
    double k_cost = sa + sb + (2.0 * k_blocks - 1) * sc;
    int small_blocks = mn_blocks > 1 && (double)m * n * k / mn_blocks <= GEMM_SMALL_WORK;
    if (k_blocks > 1 && (mn_blocks <= 1 || (!small_blocks && k_cost < mn_cost))) {
        plan->kind = FNN_PLAN_K;
        plan->blocks = k_blocks;
    } else if (mn_blocks > 1) {
        plan->pm = split_rows ? mn_blocks : 1;
        plan->pn = split_rows ? 1 : mn_blocks;
        if (!small_blocks && mn_blocks >= 4) grid_split(m, n, mn_blocks, sa, sb, &plan->pm,
                                                        &plan->pn);
        plan->blocks = plan->pm * plan->pn;
    }
}

void fnn_gemm_plan_block(const fnn_gemm_plan *plan, int m, int n, int i, int *m0, int *m1,
                         int *n0, int *n1) {
    panel_range(m, plan->pm, i / plan->pn, m0, m1);
    panel_range(n, plan->pn, i % plan->pn, n0, n1);
}

void fnn_gemm_block(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                    float *c, int ldc) {
    gemm_block(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

static void gemm_auto(int trans_a, int trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta,
                      float *c, int ldc, const fnn_rows_done *done, int n_threads) {
    fnn_gemm_plan plan;
    fnn_gemm_plan_of(m, n, k, &plan);
    if (plan.kind == FNN_PLAN_K) {
        float partial[GEMM_SPLIT_SCRATCH];
        gemm_split_k(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                     plan.blocks, partial, n_threads);
    } else if (plan.pm > 1 && plan.pn > 1) {
        gemm_split_2d(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, plan.pm,
                      plan.pn, n_threads);
    } else if (plan.blocks > 1) {
        gemm_split_mn(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                      plan.pn == 1, plan.blocks, done, n_threads);
        if (plan.pn == 1) return;      /* done ran block by block */
    } else {
        gemm_block(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }
    if (done) done->fn(done->ctx, 0, m, n_threads);
}

/* C = alpha A B^T + beta C with few rows and many columns: a wide layer's input gradient,
 * dz @ W^T (32x200x10816). The BLAS streams the kernel W faster as the left operand, so each
 * block of columns is computed transposed, C^T = B A^T, on the stack, and transposed into C
 * (0.93 -> 0.72 ms on two cores, the transposes included). A^T itself is transposed first
 * when it fits on the stack, so each block is a plain A B product small enough for the
 * BLAS's unpacked kernels (one core: 1.50 -> 0.95 ms). */
#define GEMM_T_BLOCK 16384

static int wide_abt(int trans_a, int trans_b, int m, int n) {
    return !trans_a && trans_b && m <= 64 && n >= 32 * m;
}

static void gemm_wide_abt(int m, int n, int k, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc,
                          int n_threads) {
    float a_t[GEMM_T_BLOCK];
    int transposed = (size_t)m * k <= GEMM_T_BLOCK;
    int cols = (GEMM_T_BLOCK / m) & ~15;
    if (transposed) {   /* blocks of at most GEMM_SMALL_WORK multiply-adds */
        int small = (int)(GEMM_SMALL_WORK / ((double)m * k)) & ~15;
        if (small < cols) cols = small < 16 ? 16 : small;
        for (int r = 0; r < m; r++)
            for (int j = 0; j < k; j++) a_t[(size_t)j * m + r] = a[(size_t)r * lda + j];
    }
    int blocks = (n + cols - 1) / cols, i;
    int nt = (double)m * n * k < 2.0 * FNN_GEMM_BLOCK_WORK ? 1
             : n_threads < blocks ? n_threads : blocks;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < blocks; i++) {
            float t[GEMM_T_BLOCK];
            int lo = i * cols, len = n - lo < cols ? n - lo : cols;
            if (transposed)
                gemm_block(0, 0, len, m, k, alpha, b + (size_t)lo * ldb, ldb, a_t, m, 0.0f, t,
                           m);
            else
                gemm_block(0, 1, len, m, k, alpha, b + (size_t)lo * ldb, ldb, a, lda, 0.0f, t,
                           m);
            for (int r = 0; r < m; r++) {
                float *cr = c + (size_t)r * ldc + lo;
                if (beta == 0.0f)
                    for (int j = 0; j < len; j++) cr[j] = t[(size_t)j * m + r];
                else
                    for (int j = 0; j < len; j++) cr[j] = t[(size_t)j * m + r] + beta * cr[j];
            }
        });
}

int fnn_gemm_ex(int trans_a, int trans_b, int m, int n, int k, float alpha,
                const float *a, int lda, const float *b, int ldb, float beta,
                float *c, int ldc, int split, int blocks, const fnn_rows_done *done,
                int n_threads) {
    if (!fnn_blas_ready()) return -1;
    if (m <= 0 || n <= 0) return 0;
    int saved = blas_get_threads ? blas_get_threads() : 1;
    if (blas_set_threads && saved != 1) blas_set_threads(1);
    if (split == FNN_SPLIT_K && k > 0 && blocks > 1 && blocks <= k) {
        /* partials on the stack when they fit, else on the heap (a long-K weight gradient
         * with a big output: the recurrent layers' over all steps) */
        float stack[GEMM_SPLIT_SCRATCH], *partial = stack;
        size_t need = (size_t)(blocks - 1) * m * n;
        if (need > GEMM_SPLIT_SCRATCH && !(partial = malloc(need * sizeof(float)))) {
            if (blas_set_threads && saved != 1) blas_set_threads(saved);
            return -1;
        }
        gemm_split_k(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, blocks,
                     partial, n_threads);
        if (partial != stack) free(partial);
        if (done) done->fn(done->ctx, 0, m, n_threads);
    } else if (split == FNN_SPLIT_ROWS && k > 0 && blocks > 1 && blocks <= (m + 15) / 16) {
        gemm_split_mn(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 1,
                      blocks, done, n_threads);
    } else if (k > 0 && wide_abt(trans_a, trans_b, m, n)) {
        gemm_wide_abt(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, n_threads);
        if (done) done->fn(done->ctx, 0, m, n_threads);
    } else {
        gemm_auto(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, done,
                  n_threads);
    }
    if (blas_set_threads && saved != 1) blas_set_threads(saved);
    return 0;
}

int fnn_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *a, int lda, const float *b, int ldb, float beta,
             float *c, int ldc, int n_threads) {
    return fnn_gemm_ex(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                       FNN_SPLIT_AUTO, 0, NULL, n_threads);
}
