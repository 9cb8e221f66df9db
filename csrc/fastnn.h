/* fastnn C kernels: plain C99, no Python. Every kernel writes into caller-owned buffers (no
 * allocation), takes sizes explicitly, and takes n_threads last. Reductions run in a fixed order
 * so results are identical for any thread count. */
#ifndef FASTNN_H
#define FASTNN_H
#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Activation ids, shared with fastnn/activations.py (keep in sync). */
enum {
    FNN_LINEAR = 0, FNN_RELU = 1, FNN_SIGMOID = 2, FNN_TANH = 3, FNN_SOFTMAX = 4,
    FNN_SOFTPLUS = 5, FNN_SOFTSIGN = 6, FNN_SELU = 7, FNN_ELU = 8, FNN_EXPONENTIAL = 9,
    FNN_LEAKY_RELU = 10, FNN_GELU = 11, FNN_SILU = 12, FNN_N_ACTIVATIONS = 13
};

/* Hot elementwise kernels are compiled for AVX-512, AVX2 and baseline x86-64, and the loader
 * picks the best the CPU has (GCC function multiversioning through glibc's ifunc), so a portable
 * wheel still runs wide vectors. Every version gives bit-identical results: FMA contraction is
 * off (-ffp-contract=off) and float reductions are never reordered by the vectorizer. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(FASTNN_NO_DISPATCH)
#define FNN_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FNN_DISPATCH
#endif

/* A helper of FNN_DISPATCH kernels: inlined into every clone, so it runs the clone's vector
 * width. A static helper left out of line is compiled once, for baseline x86-64 (SSE2), which
 * made the batch-norm sums 2-3x slower than their AVX-512 callers. */
#if defined(__GNUC__)
#define FNN_INLINE static inline __attribute__((always_inline))
#else
#define FNN_INLINE static inline
#endif

/* Below this many elements a loop runs on one thread: waking a team costs more than it saves. */
#define FNN_PARALLEL_MIN 32768

/* FNN_PARALLEL_FOR(clauses, for (...) body): the loop on `nt` threads (a variable of that name
 * in scope) with the OpenMP clauses given, or, when nt is 1, as a plain loop: entering an
 * OpenMP region costs ~0.2 us even when if(0) keeps it on one thread, which is most of the
 * time of a small model's kernels (a 784-10-10 step runs ~10 of them). */
#define FNN_PRAGMA(x) _Pragma(#x)
#define FNN_PARALLEL_FOR(clauses, ...) do {                               \
        if (nt > 1) {                                                     \
            FNN_PRAGMA(omp parallel for num_threads(nt) clauses)          \
            __VA_ARGS__                                                   \
        } else {                                                          \
            __VA_ARGS__                                                   \
        }                                                                 \
    } while (0)

/* Threads to use for a loop over `work` elements. */
static inline int fnn_threads(size_t work, int n_threads) {
    return (n_threads > 1 && work >= FNN_PARALLEL_MIN) ? n_threads : 1;
}

/* gemm.c: the Fortran BLAS sgemm, found at run time (fastnn/backend/blas.py): LP64 (int) or
 * ILP64 (int64) sizes, plus the BLAS's thread-count setter and getter when it has them. */
typedef void (*fnn_sgemm_t)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                            int *ldc);
typedef void (*fnn_sgemm64_t)(char *transa, char *transb, int64_t *m, int64_t *n, int64_t *k,
                              float *alpha, float *a, int64_t *lda, float *b, int64_t *ldb,
                              float *beta, float *c, int64_t *ldc);
typedef void (*fnn_blas_set_threads_t)(int n);
typedef int (*fnn_blas_get_threads_t)(void);
void fnn_set_blas(void *sgemm, int ilp64, void *set_threads, void *get_threads);
int fnn_blas_ready(void);
/* Multiply-adds per GEMM block: big enough to amortise a BLAS call and its packing; a GEMM with
 * less than twice this runs on one thread. */
#define FNN_GEMM_BLOCK_WORK (1u << 19)
int fnn_blas_pin(void);            /* BLAS to one thread; returns the count to restore */
void fnn_blas_restore(int saved);
/* Row-major C = alpha op(A) op(B) + beta C, split into blocks on fastnn's threads. Returns -1
 * when no BLAS is set. */
int fnn_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *a, int lda, const float *b, int ldb, float beta,
             float *c, int ldc, int n_threads);
/* Work to do on rows [lo, hi) of C once they are final, with up to n_threads threads. */
typedef struct {
    void (*fn)(void *ctx, int lo, int hi, int n_threads);
    void *ctx;
} fnn_rows_done;
/* fnn_gemm with the split chosen by the caller: FNN_SPLIT_K or FNN_SPLIT_ROWS in `blocks`
 * blocks (the same 16-panel boundaries along K or M, the same blocks to the same thread), or
 * FNN_SPLIT_AUTO (blocks ignored; a forced split that does not fit falls back to it; a K
 * split's partials go on the heap when they do not fit on the stack: -1 if malloc fails). Then
 * `done` (may be NULL) on every row of C: block by block, on the thread that computed the
 * block, for a row split; else once at the end. */
enum { FNN_SPLIT_AUTO = 0, FNN_SPLIT_K = 1, FNN_SPLIT_ROWS = 2 };
int fnn_gemm_ex(int trans_a, int trans_b, int m, int n, int k, float alpha,
                const float *a, int lda, const float *b, int ldb, float beta,
                float *c, int ldc, int split, int blocks, const fnn_rows_done *done,
                int n_threads);
/* How fnn_gemm splits an m x n x k product by itself (its shape only): FNN_PLAN_K into `blocks`
 * partial products along K, or FNN_PLAN_GRID into pm x pn blocks of rows and columns (block i:
 * row block i / pn, column block i % pn; one block when blocks is 1). fnn_gemm_block: one
 * block, C = A B, single-threaded. Callers that fuse work around each block (a convolution's
 * im2col and epilogue) run the blocks themselves and get fnn_gemm's exact results. */
enum { FNN_PLAN_GRID = 0, FNN_PLAN_K = 1 };
typedef struct {
    int kind, blocks, pm, pn;
} fnn_gemm_plan;
void fnn_gemm_plan_of(int m, int n, int k, fnn_gemm_plan *plan);
void fnn_gemm_plan_block(const fnn_gemm_plan *plan, int m, int n, int i, int *m0, int *m1,
                         int *n0, int *n1);
void fnn_gemm_block(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                    float *c, int ldc);
/* Blocks for a Dense layer's training GEMMs split along its input rows: the forward pass
 * along K, the kernel gradient along M, at the same boundaries, so each thread keeps its rows
 * of the kernel (and its gradient and optimizer state) in its own cache. 0: no split. */
int fnn_gemm_row_blocks(int rows, int d_in, int d_out);

/* activations.c */
int fnn_activation_needs_input(int act);
int fnn_activation_monotone(int act, float alpha);
void fnn_act_forward(int act, float alpha, const float *z, float *y,
                     size_t rows, size_t cols, int n_threads);
void fnn_act_backward(int act, float alpha, const float *z, const float *y, const float *dy,
                      float *dz, size_t rows, size_t cols, int n_threads);

/* dense.c: one Dense layer with a Keras (in, out) kernel; bias and gradients may be NULL. */
typedef struct {
    int d_in, d_out, act;
    float alpha;
    const float *kernel, *bias;
    float *d_kernel, *d_bias;
} fnn_dense;

/* Inference BatchNormalization statistics and factors (gamma, beta may be NULL). */
typedef struct {
    const float *mean, *var, *gamma, *beta;
    float eps;
} fnn_norm;
/* fnn_bias_act_forward's work on one block of z (rows x cols, y likewise), for callers that
 * run it block by block (fnn_conv2d_forward): scale holds the folded normalization (scale,
 * then shift; fnn_epilogue_norm, freed by the caller) or is NULL. */
typedef struct {
    int act;
    float alpha;
    float *z, *y;
    size_t cols;
    const float *bias, *mean;
    float *scale;
    const float *residual;
} fnn_epilogue;
float *fnn_epilogue_norm(const fnn_norm *norm, size_t cols);
void fnn_epilogue_block(const fnn_epilogue *e, size_t r0, size_t r1, size_t c0, size_t c1);
/* y = act(((z + bias) - mean) * gamma / sqrt(var + eps) + beta + residual), each part optional
 * (NULL); z holds the value before the activation on return. -1: out of memory. */
int fnn_bias_act_forward(int act, float alpha, float *z, const float *bias, const fnn_norm *norm,
                         const float *residual, float *y, size_t rows, size_t cols,
                         int n_threads);
void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads);
/* z = x kernel + bias, y = act(z) (y may be z). Training splits the GEMM along the kernel's
 * rows as the backward pass does (fnn_gemm_row_blocks). Returns -1 when no BLAS is set. */
int fnn_dense_forward(const fnn_dense *layer, const float *x, float *z, float *y, int rows,
                      int training, int n_threads);
/* From dy: dz = dy act'(z) (act may differ from layer->act: LINEAR when a loss already gave
 * dL/dz; dz may be dy), dx = dz kernel^T (dx may be NULL), d_kernel = x^T dz (unless NULL), then
 * kernel_done (may be NULL) on its finished rows, d_bias = column sums. z may be NULL when
 * act's derivative is read off y. kernel_step > 0 makes it d_kernel -= kernel_step x^T dz
 * instead: with d_kernel pointing at the kernel itself, the plain SGD step in place (dx has
 * used the kernel as it was by then). */
int fnn_dense_backward(const fnn_dense *layer, int act, const float *x, const float *z,
                       const float *y, const float *dy, float *dz, float *dx, int rows,
                       float kernel_step, const fnn_rows_done *kernel_done, int n_threads);

/* conv.c, pool.c: NHWC geometry of a convolution or pooling window. pad_top/pad_left are the
 * leading pads; taps outside the image are skipped (zero for im2col). dh, dw: the dilation of
 * a convolution window (tap (ky, kx) of output (oy, ox) reads padded pixel
 * (oy*sh + ky*dh, ox*sw + kx*dw)), read by im2col/col2im only; pooling windows have 1, 1. */
typedef struct {
    int n, h, w, c;        /* input batch, height, width, channels */
    int kh, kw, sh, sw;    /* window and strides */
    int pad_top, pad_left;
    int oh, ow;            /* output height and width */
    int dh, dw;            /* dilation */
} fnn_conv_geom;

void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads);
void fnn_col2im(const float *cols, float *x, const fnn_conv_geom *g, int n_threads);
/* z = im2col(x) kernel (k x filters), then the epilogue of fnn_bias_act_forward into y, with
 * cols (n*oh*ow x kh*kw*c) written on the way, or NULL where x is its own im2col (a pointwise
 * window). Bit-identical to fnn_im2col + fnn_gemm + fnn_bias_act_forward. With work (not
 * NULL; cols unused) by Winograd's F(2x2, 3x3) instead (fnn_conv2d_winograd), equal to
 * rounding. Returns -1 without a BLAS, -2 when out of memory. */
int fnn_conv2d_forward(const float *x, const fnn_conv_geom *g, const float *kernel,
                       int filters, float *cols, float *work, int act, float alpha,
                       const float *bias,
                       const fnn_norm *norm, const float *residual, float *z, float *y,
                       int n_threads);
/* winograd.c: fnn_conv2d_forward's path for a 3x3, stride-1, undilated window at inference,
 * by Winograd's F(2x2, 3x3), with the same epilogue. work: fnn_winograd_work(g, filters)
 * floats, 0 where the window is another or Winograd would not pay. */
size_t fnn_winograd_work(const fnn_conv_geom *g, int filters);
int fnn_conv2d_winograd(const float *x, const fnn_conv_geom *g, const float *kernel,
                        int filters, float *work, int act, float alpha, const float *bias,
                        const fnn_norm *norm, const float *residual, float *z, float *y,
                        int n_threads);
void fnn_maxpool_forward(const float *x, float *y, int32_t *argmax, const fnn_conv_geom *g,
                         int n_threads);
void fnn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx,
                          const fnn_conv_geom *g, int n_threads);
int fnn_indices_in_range(const int32_t *idx, size_t n, int32_t limit, int n_threads);
void fnn_avgpool_forward(const float *x, float *y, const fnn_conv_geom *g, int n_threads);
void fnn_avgpool_backward(const float *dy, float *dx, const fnn_conv_geom *g, int n_threads);

/* convpool.c: Conv2D + MaxPooling2D in cache-sized chunks of images. conv is the convolution's
 * geometry (input x), pool the pooling's (input: the convolution output, c = filters). The plan
 * gives the groups and images per chunk: work holds groups x chunk convolution outputs
 * (oh*ow*filters floats per image), dcols_work groups x chunk im2col blocks, partials
 * (groups - 1) weight gradients. cols (n*oh*ow x kh*kw*c) is written forward and read
 * backward; dy (the pooled gradient) is overwritten. bias, d_bias, d_kernel, dx may be NULL.
 * Return -1 without a BLAS, -2 when a needed workspace is NULL. */
void fnn_conv2d_maxpool_plan(int n, size_t image_floats, int *groups, int *chunk);
int fnn_conv2d_maxpool_forward(const float *x, const float *kernel, const float *bias, int act,
                               float alpha, const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                               float *cols, float *work, float *y, int32_t *argmax, int n_threads);
int fnn_conv2d_maxpool_backward(const float *cols, const float *kernel, const float *y,
                                const int32_t *argmax, float *dy, int act, float alpha,
                                const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                                float *d_kernel, float *d_bias, float *dx, float *work,
                                float *dcols_work, float *partials, int n_threads);

/* norm.c */
void fnn_batchnorm_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                         int n_threads);
void fnn_batchnorm_apply(const float *x, const float *mean, const float *var, const float *gamma,
                         const float *beta, float eps, float *y, size_t rows, size_t cols,
                         int n_threads);
void fnn_batchnorm_backward(const float *x, const float *dy, const float *mean, const float *var,
                            const float *gamma, float eps, float *dx, float *d_gamma, float *d_beta,
                            size_t rows, size_t cols, int n_threads);
void fnn_batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                                 const float *var, float momentum, size_t cols);

/* loss.c: each fills per-row losses (row_loss) and the gradient with respect to the logits or
 * predictions, scaled per row by scale * (weights ? weights[r] : 1). Returns 0, or -1 when a
 * sparse label is out of range (nothing past the bad row is touched). */
int fnn_softmax_xent_sparse(const float *probs, const int32_t *labels, const float *weights,
                            float scale, float *row_loss, float *grad,
                            size_t rows, size_t cols, int n_threads);
int fnn_softmax_xent_dense(const float *probs, const float *targets, const float *weights,
                           float scale, float *row_loss, float *grad,
                           size_t rows, size_t cols, int n_threads);
int fnn_sigmoid_bxent(const float *probs, const float *targets, const float *weights,
                      float scale, float *row_loss, float *grad,
                      size_t rows, size_t cols, int n_threads);
int fnn_squared_error(const float *pred, const float *targets, const float *weights,
                      float scale, float *row_loss, float *grad,
                      size_t rows, size_t cols, int n_threads);
int fnn_absolute_error(const float *pred, const float *targets, const float *weights,
                       float scale, float *row_loss, float *grad,
                       size_t rows, size_t cols, int n_threads);

/* optim.c: in-place updates of one flat parameter buffer. Each reads the gradient clipped
 * as Keras clips it: g * gscale clamped to [-gclip, gclip] (1 and INFINITY: unclipped), the
 * penalty's gradient added before the clip when pen is not NULL (below).
 * Keras's l1/l2 weight penalty (regularizers.L1, L2, L1L2) read inside an update's pass: the
 * update reads the gradient plus the penalty's gradient at the weights before the step, and
 * puts in `value` the penalty of those weights, l1 * sum |w| + l2 * sum w^2, summed as
 * fnn_l1l2_penalty sums it. The update kernels take NULL for none. */
typedef struct {
    float l1, l2;
    double value;
} fnn_penalty;
void fnn_sgd_update(float *w, const float *g, float *m, size_t n, float lr, float momentum,
             int nesterov, float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_adam_update(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
              float alpha, float beta1, float beta2, float eps,
              float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_rmsprop_update(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                 float lr, float rho, float momentum, float eps,
                 float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_adagrad_update(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                 float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_adadelta_update(float *w, const float *g, float *acc_g, float *acc_dx, size_t n, float lr,
                  float rho, float eps, float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_lion_update(float *w, const float *g, float *m, size_t n, float lr, float beta1, float beta2,
              float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_adamax_update(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                float beta1, float beta2, float eps, float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_nadam_update(float *w, const float *g, float *m, float *v, size_t n, float lr,
               float beta1, float beta2, float eps, float mu_t, float mu_t1,
               float u_prod, float u_prod_t1, float beta2_power,
               float gscale, float gclip, fnn_penalty *pen, int n_threads);
void fnn_ftrl_update(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
              float lr_power, float l1, float l2, float l2_shrinkage, float beta,
              float gscale, float gclip, fnn_penalty *pen, int n_threads);

/* One optimizer step by kind: scalars[0] is the decoupled weight decay factor (lr * decay, 0
 * for none), then the kind's own scalars in the order of its kernel's arguments above (SGD's
 * nesterov as 0/1); slots in the same order, unused ones NULL. pen (NULL for none): a weight
 * penalty read in the update's pass, at the weights after the decay (with a decay, a caller
 * penalizing the weights before it adds the penalty first: fnn_l1l2_penalty). */
enum {
    FNN_OPT_SGD = 0, FNN_OPT_ADAM = 1, FNN_OPT_RMSPROP = 2, FNN_OPT_ADAGRAD = 3,
    FNN_OPT_ADADELTA = 4, FNN_OPT_ADAMAX = 5, FNN_OPT_NADAM = 6, FNN_OPT_FTRL = 7,
    FNN_OPT_LION = 8, FNN_N_OPTIMIZERS = 9
};
#define FNN_OPT_SLOTS 3
#define FNN_OPT_SCALARS 10
int fnn_optimizer_scalars(int kind);
void fnn_optimizer_step(int kind, float *w, const float *g, float *const *slots, size_t n,
                        const float *scalars, float gscale, float gclip, fnn_penalty *pen,
                        int n_threads);
/* Keras's gradient clipping (one at most): clipvalue, clipnorm (each variable by its own
 * norm), global_clipnorm (one norm over them all). */
enum { FNN_CLIP_NONE = 0, FNN_CLIP_VALUE = 1, FNN_CLIP_NORM = 2, FNN_CLIP_GLOBAL_NORM = 3 };
/* One step over n_vars variables of sizes[] laid out back to back in w, g and the slots,
 * clipped by clip_mode with `limit`: a norm is one reading pass (in double) before the
 * update, clipvalue none. */
void fnn_optimizer_update(int kind, float *w, const float *g, float *const *slots,
                         const size_t *sizes, int n_vars, const float *scalars, int clip_mode,
                         float limit, int n_threads);
double fnn_sum_squares(const float *g, size_t n, int n_threads);

/* One step of a data-parallel shared arena (csrc/shard.c, fastnn.distribution._SharedArena):
 * in one shared-memory window, the parameters and optimizer slots (n floats each) and `ranks`
 * rows of n + 2 floats, `stride` apart (each rank's gradients, its flag: loss not finite, its
 * scale: the factor of its rows), and control: a barrier's arrival count and generation, then each
 * rank's process id (int32, 0: unknown). This rank sums and updates columns [lo, hi). */
/* A kernel whose gradient the ranks do not sum (fnn_shard.outer): each rank writes its rows'
 * layer inputs x and output gradients dz in its region, and each computes the kernel's part in
 * its shard from every rank's rows (sum over ranks k of scale_k x_k^T dz_k), after the first
 * barrier of a reduce. With z_parts and dx_all (the split passes), the layer's forward product
 * and input gradient are split by the kernel's rows too (fnn_shard_split_forward/_backward),
 * so that each rank reads only the kernel rows it updates: a line written by one core after
 * the other read it costs ~30 ns here, ~500 us a step for a 1 MB shard. */
typedef struct {
    size_t at;                  /* the kernel's first weight in the arena (d_in x d_out) */
    int d_in, d_out, max_rows;
    const float *count;         /* ranks floats: each rank's rows this step */
    const float *x, *dz;        /* per rank, max_rows x d_in and max_rows x d_out */
    float *part;                /* d_out floats: a row cut by the shard's edge */
    float *z_parts;             /* ranks x ranks x max_rows x d_out: rank p's partial products
                                 * of every rank's rows, or NULL (no split passes) */
    float *dx_all;              /* ranks x max_rows x d_in: every rank's rows' input gradients,
                                 * each rank writing its kernel rows' columns, or NULL */
} fnn_shard_outer;

typedef struct {
    float *params, *slots[FNN_OPT_SLOTS], *rows;
    uint32_t *control;
    const fnn_shard_outer *outer;   /* n_outer kernels in arena order, or NULL */
    int n_outer;
    size_t n, lo, hi;
    size_t stride;      /* floats from a rank's row to the next: n + 2, or more to align them */
    int ranks, rank, kind, clip_mode;   /* clip_mode: FNN_CLIP_NONE or FNN_CLIP_VALUE */
    float clip_limit;
    int watch;          /* whether a waiting rank checks that its peers' processes live */
    int dead;           /* after a failed barrier: the rank whose process is gone */
    double seconds;     /* time spent in fnn_shard_reduce and fnn_shard_update */
    double waited;      /* of which waiting at barriers for the last rank to arrive */
    int next_bad;       /* fnn_stack_data.exchange: the rows this rank gathered for its next
                         * step hold a NaN or infinite value */
} fnn_shard;
/* Whether this build has them (GCC/Clang atomics: not MSVC); the others return -2 without. */
int fnn_shard_supported(void);
/* A monotonic clock in nanoseconds (for fnn_shard.seconds). */
int64_t fnn_shard_clock(void);
/* A barrier of all ranks: 0, or -1 when a peer's process is gone (its rank in sh->dead). */
int fnn_shard_barrier(fnn_shard *sh);
/* This rank's row is written: sets its flag (bad) and scale; a barrier; 1 (after a second
 * barrier) when any rank's flag is set, else 0 with the scaled sum of every rank's row over
 * [lo, hi) in this rank's row there (the outer kernels' parts from the ranks' rows instead);
 * -1 when a peer died, -3 when an outer kernel's count is not in [0, max_rows] (every rank
 * alike; sh->dead stays -1). */
int fnn_shard_reduce(fnn_shard *sh, float scale, int bad, int n_threads);
/* The optimizer step (scalars as fnn_optimizer_update takes them) of [lo, hi) from the
 * summed gradients, then a barrier: 0, or -1 when a peer died. */
int fnn_shard_update(fnn_shard *sh, const float *scalars, int n_threads);
/* fnn_stack_data.reduce for a shared arena: reduce (scale 1, the flag as the stack left it)
 * then update; 1 when it stepped, 0 when a flag was set (this rank's flag set too), -1. */
int fnn_shard_step(fnn_shard *sh, const float *scalars, int n_threads);
/* The split passes of outer kernel i (z_parts and dx_all set); every rank calls them in the same
 * order, a rank without rows too. Kernel rows are the ranks' whose shard holds their first
 * weight. Forward: after a barrier (every rank's x and count written), this rank's kernel rows'
 * partial products of every rank's rows, then after a barrier, z (count[rank] x d_out) = the
 * sum of the ranks' parts for this rank's rows, in rank order. Backward: after a barrier (every
 * rank's dz written), every rank's rows' input gradients in this rank's kernel rows' columns,
 * then a barrier: this rank's rows of dx_all are whole. 0, -1 (a peer is gone) or -3 (a rank's
 * count is not in [0, max_rows]: every rank returns it). */
int fnn_shard_split_forward(fnn_shard *sh, int i, float *z, int n_threads);
int fnn_shard_split_backward(fnn_shard *sh, int i, int n_threads);
double fnn_l1l2_penalty(const float *w, float *g, size_t n, float l1, float l2, int n_threads);

/* A Dense kernel of at least this many weights takes a plain SGD step inside its weight-gradient
 * GEMM (C = -lr x^T dz + C): no gradient written, no second pass over a kernel that no longer
 * fits in cache. The fused stack and the layer-by-layer path (fastnn/models.py, through
 * fastnn._core.IN_PLACE_MIN_WEIGHTS) use this one threshold, so both give identical weights. */
#define FNN_IN_PLACE_MIN_WEIGHTS 65536

/* stack.c: a Sequential of Dense layers run batch after batch in C (see stack.c). */
enum { FNN_LOSS_SPARSE_XENT = 0, FNN_LOSS_XENT = 1, FNN_LOSS_BXENT = 2, FNN_LOSS_MSE = 3,
       FNN_LOSS_MAE = 4, FNN_N_LOSSES = 5 };
enum { FNN_METRIC_NONE = 0, FNN_METRIC_SPARSE_ACC = 1, FNN_METRIC_ACC = 2,
       FNN_METRIC_BINARY_ACC = 3 };
enum { FNN_SRC_F32 = 0, FNN_SRC_F64 = 1, FNN_SRC_U8 = 2 };

typedef struct {
    int n_layers, batch;               /* workspaces hold `batch` rows */
    const fnn_dense *layers;
    float *const *z, *const *y;        /* per layer, batch x d_out; y[i] may equal z[i] */
    float *const *dx;                  /* per layer, batch x d_in (dx[0] unused) */
    float *x_buf;                      /* 2 x batch x d_in: two gather buffers */
    float *target_buf, *weight_buf, *row_loss, *grad;
    int32_t *label_buf;
    int loss, fused;                   /* fused: grad is dL/dlogits of the last activation */
    int mean_reduction, metric;
    float threshold;                   /* binary accuracy */
    int opt;
    float *params, *grads;             /* the flat parameter arena and its gradient */
    float *const *slots;
    size_t n_params;
    /* Where each layer's kernel starts in the arena (its bias follows), when the layers tile
     * the arena in order; NULL otherwise. Then each layer's parameters are updated as soon as
     * their gradient is final, in the backward pass, instead of in one pass at the end. */
    const size_t *kernel_at;
    const size_t *layer_at;     /* the same offsets whenever the layers tile the arena */
    /* Plain SGD (no momentum, no weight decay) takes its step inside the weight-gradient GEMM
     * for each kernel of at least FNN_IN_PLACE_MIN_WEIGHTS weights, as the layer-by-layer path
     * does (fastnn/models.py): in_place_at[i] is layer i's kernel offset in the arena, or -1
     * when its kernel takes the usual step; NULL when no layer qualifies. update_spans holds
     * n_update_spans [start, stop) pairs of the arena that the optimizer then updates itself:
     * everything but those kernels. */
    const int64_t *in_place_at;
    const size_t *update_spans;
    int n_update_spans;
    /* Keras's l1/l2 weight penalties (fnn_l1l2_penalty), NULL for none: reg[4 i ..] = layer i's
     * kernel l1, kernel l2, bias l1, bias l2. Each training step adds their gradient to the
     * weights' before the update and their value on the weights before the step, times the
     * batch's rows, to sums[0]; evaluation adds the value. pen_rows: a workspace of one double
     * per kernel row and one per bias, layer after layer (a block of rows penalized at once
     * keeps its value at its first row, zeros after it). */
    const float *reg;
    double *pen_rows;
    /* Gradient clipping (FNN_CLIP_*, see fnn_optimizer_update) with its limit; the optimizer's
     * n_vars variable sizes, which tile the arena in order (for clipnorm). */
    int clip_mode;
    float clip_limit;
    const size_t *var_sizes;
    int n_vars;
} fnn_stack;

typedef struct {
    const void *x;                     /* x_len values a row, FNN_SRC_* */
    int x_type;
    int64_t rows, x_len;               /* rows: of the run (the order's length, or x's) */
    const int32_t *labels;             /* sparse targets, or */
    const float *targets;              /* rows x target_len */
    int64_t target_len;
    const float *weights;              /* per-row sample weights, may be NULL */
    const int64_t *order;              /* row order (a permutation), NULL for 0, 1, 2, ... */
    /* When not NULL: each batch's outputs (rows x d_out), for the metrics the stack does not
     * compute itself; the batch starting at position `first` of the order writes its rows
     * from row first - outputs_first on. */
    float *outputs;
    int64_t outputs_first;
    /* A preprocessing layer before the first Dense, applied to each gathered value c of a row
     * (x_len values each): FNN_PRE_AFFINE x * pre_a[c] + pre_b[c] (Rescaling, Normalization's
     * invert), FNN_PRE_STANDARDIZE (x - pre_a[c]) / pre_b[c] (Normalization), in float32 as
     * the layers compute it; FNN_PRE_NONE without. */
    int pre;
    const float *pre_a, *pre_b;
    /* Data-parallel training (fastnn.distribution), else reduce is NULL. This rank's rows of
     * each global batch of global_batch rows (of global_rows in all) are its batch of the
     * order (the last may be empty). Each step's loss gradient is scaled by 1 / the global
     * batch's rows (mean reduction), so the arena holds this rank's share of the global
     * gradient; reduce(reduce_ctx) then sums grads[0 .. n_params] over the ranks in place,
     * between the backward pass and the optimizer step (which updates the whole arena after
     * it): grads[n_params], one slot past the arena, carries whether any rank's loss was not
     * finite, so one collective decides both. reduce gets the step's optimizer scalars and
     * returns < 0 when it failed, 1 when it also took the step (the ranks of one machine each
     * update their shard of a shared arena: no update here), else 0. */
    int (*reduce)(void *ctx, const float *scalars);
    void *reduce_ctx;
    int64_t global_rows, global_batch;
    /* With a shared arena (shard: its step's state, see fnn_shard; stack.kernel_at set), the
     * ranks exchange activations instead of gradients when exchange is not NULL: a buffer
     * the ranks share of fnn_stack_exchange_floats(stack, global_batch) floats, holding each
     * layer's input and output gradient for every row of the global batch, each rank's rows at
     * its place in it. Each rank runs its rows forward and backward (no weight gradient), then
     * computes the weight gradient of its shard of every layer's kernel rows (and bias
     * columns) over the whole global batch and updates them: no partial gradients are written
     * or summed, and only activations cross between the ranks. reduce is then unused. */
    fnn_shard *shard;
    float *exchange;
    /* When not NULL (a callback reads every batch): called after each step whose loss was
     * counted (status 0, or -1: not finite, which ends the run) with the step's index in the
     * epoch, so one run covers many steps; the run ends after a step for which it returns
     * nonzero (training stopped, the learning rate changed, an exception). */
    int (*step_end)(void *ctx, int64_t step, int status);
    void *step_ctx;
} fnn_stack_data;

enum { FNN_PRE_NONE = 0, FNN_PRE_AFFINE = 1, FNN_PRE_STANDARDIZE = 2 };

void fnn_preprocess_row(const fnn_stack_data *d, float *row, size_t len);
int fnn_all_finite(const float *p, size_t n, int n_threads);
int64_t fnn_stack_run(const fnn_stack *s, const fnn_stack_data *d, int train, int64_t start,
                      int64_t n_steps, const float *scalars, double *sums, int *status,
                      int n_threads);
int fnn_stack_predict(const fnn_stack *s, const fnn_stack_data *d, float *out, int64_t start,
                      int64_t rows, int n_threads);
/* The floats of fnn_stack_data.exchange for global batches of global_batch rows over `ranks`. */
size_t fnn_stack_exchange_floats(const fnn_stack *s, int64_t global_batch, int ranks);


/* embed.c: Embedding's gather and sparse gradient; indices int32 (wide 0) or int64 (wide 1),
 * range-checked by the caller with fnn_embedding_first_bad (-1: all in [0, rows)). */
int64_t fnn_embedding_first_bad(const void *ids, int wide, size_t n, int64_t rows);
void fnn_embedding_forward(const float *table, const void *ids, int wide, size_t n, size_t dim,
                           float *out, int n_threads);
void fnn_embedding_backward(const void *ids, int wide, size_t n, const float *dy, size_t dim,
                            float *d_table, size_t rows, const void *clear, int clear_wide,
                            size_t n_clear, int n_threads);
/* recurrent.c: SimpleRNN / LSTM / GRU over a whole time-major sequence (T steps of B rows).
 * kernel (d_in, G*U), recurrent (U, G*U) in Keras's gate order (LSTM i f c o, GRU z r h);
 * bias (G*U), or (2, G*U) for a GRU with reset_after (input, recurrent), or NULL. */
enum { FNN_RNN_SIMPLE = 0, FNN_RNN_LSTM = 1, FNN_RNN_GRU = 2 };
typedef struct {
    int kind, steps, batch, d_in, units, act, rec_act, reset_after, zero_output;
    const float *kernel, *recurrent, *bias;
    /* row strides (floats) of x and of hs, 0 for d_in and units. Packed (x_ld = h_ld = d_in +
     * units, hs = x + d_in): row t*B + b holds [x_t | h_{t-1}], and the two weight gradients
     * are one GEMM over all steps (not for a GRU, nor with recurrent dropout). */
    int x_ld, h_ld;
} fnn_rnn;
/* dst[i][j][:n] = src[i][j][:n] (i < n0, j < n1; strides in floats, the last axis
 * contiguous; the two must not overlap), split over i on the threads. */
void fnn_copy_steps(const float *src, ptrdiff_t s0, ptrdiff_t s1, float *dst, ptrdiff_t d0,
                    ptrdiff_t d1, int n0, int n1, int n, int n_threads);
/* Whether the kernels compute this activation (else: the reference path). */
int fnn_rnn_act_supported(int act);
/* x (T*B, d_in); mask (T*B) bytes, 1 = the step counts, or NULL. Writes ys (T*B, U) outputs,
 * hs and cs ((T+1)*B*U, states; rows 0 given: the initial states; cs NULL but for an LSTM),
 * gates (T*B, G*U) after activation, extra (T*B*U: LSTM act(c), GRU the recurrent candidate
 * product (reset_after) or r h; NULL for SimpleRNN), using rec (B*G*U) as scratch.
 * rec_mask (B*U, or NULL): recurrent dropout, the previous state times it where it meets the
 * recurrent kernel; hd (T*B*U) then receives those states (backward reads them). -1: no BLAS.*/
int fnn_rnn_forward(const fnn_rnn *r, const float *x, const uint8_t *mask, float *ys, float *hs,
                    float *cs, float *gates, float *extra, float *rec, const float *rec_mask,
                    float *hd, int n_threads);
/* Back through time from dys (T*B*U, the outputs' gradients) and dh, dc (B*U, the last
 * states' gradients: on return the initial states'); scratch carry, dht, drh (B*U each),
 * dgx, dgr (T*B*G*U: the gates' gradients; dgr may be dgx but for a GRU with reset_after).
 * Writes d_kernel, d_recurrent, d_bias (may be NULL), dx (B*T*d_in, batch-major: row b*T + t
 * is step t of row b; may be NULL). rec_mask
 * and hd: the forward pass's (NULL without recurrent dropout). -1: no BLAS, -2: out of memory. */
int fnn_rnn_backward(const fnn_rnn *r, const float *x, const uint8_t *mask, const float *hs,
                     const float *cs, const float *gates, const float *extra, const float *dys,
                     float *dh, float *dc, float *carry, float *dht, float *drh, float *dgx,
                     float *dgr, float *d_kernel, float *d_recurrent, float *d_bias, float *dx,
                     const float *rec_mask, const float *hd, int n_threads);

#endif
