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

/* Below this many elements a loop runs on one thread: waking a team costs more than it saves. */
#define FNN_PARALLEL_MIN 32768

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
/* Row-major C = alpha op(A) op(B) + beta C, split into blocks on fastnn's threads. Returns -1
 * when no BLAS is set. */
int fnn_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *a, int lda, const float *b, int ldb, float beta,
             float *c, int ldc, int n_threads);

/* activations.c */
int fnn_activation_needs_input(int act);
void fnn_act_forward(int act, float alpha, const float *z, float *y,
                     size_t rows, size_t cols, int n_threads);
void fnn_act_backward(int act, float alpha, const float *z, const float *y, const float *dy,
                      float *dz, size_t rows, size_t cols, int n_threads);

/* dense.c */
void fnn_bias_act_forward(int act, float alpha, float *z, const float *bias, float *y,
                          size_t rows, size_t cols, int n_threads);
void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads);

/* conv.c, pool.c: NHWC geometry of a convolution or pooling window. pad_top/pad_left are the
 * leading pads; taps outside the image are skipped (zero for im2col). */
typedef struct {
    int n, h, w, c;        /* input batch, height, width, channels */
    int kh, kw, sh, sw;    /* window and strides */
    int pad_top, pad_left;
    int oh, ow;            /* output height and width */
} fnn_conv_geom;

void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads);
void fnn_col2im(const float *cols, float *x, const fnn_conv_geom *g, int n_threads);
void fnn_maxpool_forward(const float *x, float *y, int32_t *argmax, const fnn_conv_geom *g,
                         int n_threads);
void fnn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx,
                          const fnn_conv_geom *g, int n_threads);
void fnn_avgpool_forward(const float *x, float *y, const fnn_conv_geom *g, int n_threads);
void fnn_avgpool_backward(const float *dy, float *dx, const fnn_conv_geom *g, int n_threads);

/* norm.c */
void fnn_bn_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                  int n_threads);
void fnn_bn_apply(const float *x, const float *mean, const float *var, const float *gamma,
                  const float *beta, float eps, float *y, size_t rows, size_t cols,
                  int n_threads);
void fnn_bn_backward(const float *x, const float *dy, const float *mean, const float *var,
                     const float *gamma, float eps, float *dx, float *d_gamma, float *d_beta,
                     size_t rows, size_t cols, int n_threads);
void fnn_bn_update_moving(float *moving_mean, float *moving_var, const float *mean,
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

/* optim.c: in-place updates of one flat parameter buffer. */
void fnn_sgd(float *w, const float *g, float *m, size_t n, float lr, float momentum,
             int nesterov, int n_threads);
void fnn_adam(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
              float alpha, float beta1, float beta2, float eps, int n_threads);
void fnn_rmsprop(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                 float lr, float rho, float momentum, float eps, int n_threads);
void fnn_adagrad(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                 int n_threads);
void fnn_adadelta(float *w, const float *g, float *acc_g, float *acc_dx, size_t n, float lr,
                  float rho, float eps, int n_threads);
void fnn_adamax(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                float beta1, float beta2, float eps, int n_threads);
void fnn_nadam(float *w, const float *g, float *m, float *v, size_t n, float lr,
               float beta1, float beta2, float eps, float mu_t, float mu_t1,
               float u_prod, float u_prod_t1, float beta2_power, int n_threads);
void fnn_ftrl(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
              float lr_power, float l1, float l2, float l2_shrinkage, float beta,
              int n_threads);

#endif
