# cython: language_level=3
"""The compiled core: typed-memoryview wrappers over the C kernels in csrc/, plus GEMM through
a BLAS found at run time (NumPy's or SciPy's bundled OpenBLAS, see fastnn/backend/blas.py), so
nothing links against a BLAS. Every wrapper checks sizes before any memory is touched and
releases the GIL around the work. Arrays are float32 and C-contiguous; the Python backend
(fastnn/backend/cpu.py) guarantees that."""
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free

cdef extern from "fastnn.h" nogil:
    int FNN_N_ACTIVATIONS
    int FNN_SOFTMAX
    void fnn_set_blas(void *sgemm, int ilp64, void *set_threads, void *get_threads)
    int fnn_blas_ready()
    int fnn_gemm_row_blocks(int rows, int d_in, int d_out)
    int fnn_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc, int n_threads)
    int fnn_activation_needs_input(int act)
    void fnn_act_forward(int act, float alpha, const float *z, float *y, size_t rows,
                         size_t cols, int n_threads)
    void fnn_act_backward(int act, float alpha, const float *z, const float *y,
                          const float *dy, float *dz, size_t rows, size_t cols, int n_threads)
    void fnn_bias_act_forward(int act, float alpha, float *z, const float *bias, float *y,
                              size_t rows, size_t cols, int n_threads)
    void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads)
    ctypedef struct fnn_dense:
        int d_in, d_out, act
        float alpha
        const float *kernel
        const float *bias
        float *d_kernel
        float *d_bias
    int fnn_dense_forward(const fnn_dense *layer, const float *x, float *z, float *y, int rows,
                          int training, int n_threads)
    ctypedef struct fnn_rows_done:
        pass
    int fnn_dense_backward(const fnn_dense *layer, int act, const float *x, const float *z,
                           const float *y, const float *dy, float *dz, float *dx, int rows,
                           float kernel_step, const fnn_rows_done *kernel_done, int n_threads)
    int fnn_softmax_xent_sparse(const float *probs, const int32_t *labels,
                                const float *weights, float scale, float *row_loss,
                                float *grad, size_t rows, size_t cols, int n_threads)
    int fnn_softmax_xent_dense(const float *probs, const float *targets, const float *weights,
                               float scale, float *row_loss, float *grad, size_t rows,
                               size_t cols, int n_threads)
    int fnn_sigmoid_bxent(const float *probs, const float *targets, const float *weights,
                          float scale, float *row_loss, float *grad, size_t rows, size_t cols,
                          int n_threads)
    int fnn_squared_error(const float *pred, const float *targets, const float *weights,
                          float scale, float *row_loss, float *grad, size_t rows, size_t cols,
                          int n_threads)
    int fnn_absolute_error(const float *pred, const float *targets, const float *weights,
                           float scale, float *row_loss, float *grad, size_t rows, size_t cols,
                           int n_threads)
    ctypedef struct fnn_conv_geom:
        int n, h, w, c, kh, kw, sh, sw, pad_top, pad_left, oh, ow
    void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads)
    void fnn_col2im(const float *cols, float *x, const fnn_conv_geom *g, int n_threads)
    void fnn_maxpool_forward(const float *x, float *y, int32_t *argmax, const fnn_conv_geom *g,
                             int n_threads)
    void fnn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx,
                              const fnn_conv_geom *g, int n_threads)
    int fnn_indices_in_range(const int32_t *idx, size_t n, int32_t limit, int n_threads)
    void fnn_avgpool_forward(const float *x, float *y, const fnn_conv_geom *g, int n_threads)
    void fnn_avgpool_backward(const float *dy, float *dx, const fnn_conv_geom *g, int n_threads)
    int fnn_activation_monotone(int act, float alpha)
    void fnn_conv_pool_plan(int n, size_t image_floats, int *groups, int *chunk)
    int fnn_conv_pool_forward(const float *x, const float *kernel, const float *bias, int act,
                              float alpha, const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                              float *cols, float *work, float *y, int32_t *argmax,
                              int n_threads)
    int fnn_conv_pool_backward(const float *cols, const float *kernel, const float *y,
                               const int32_t *argmax, float *dy, int act, float alpha,
                               const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                               float *d_kernel, float *d_bias, float *dx, float *work,
                               float *dcols_work, float *partials, int n_threads)
    void fnn_bn_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                      int n_threads)
    void fnn_bn_apply(const float *x, const float *mean, const float *var, const float *gamma,
                      const float *beta, float eps, float *y, size_t rows, size_t cols,
                      int n_threads)
    void fnn_bn_backward(const float *x, const float *dy, const float *mean, const float *var,
                         const float *gamma, float eps, float *dx, float *d_gamma,
                         float *d_beta, size_t rows, size_t cols, int n_threads)
    void fnn_bn_update_moving(float *moving_mean, float *moving_var, const float *mean,
                              const float *var, float momentum, size_t cols)
    void fnn_sgd(float *w, const float *g, float *m, size_t n, float lr, float momentum,
                 int nesterov, int n_threads)
    void fnn_adam(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
                  float alpha, float beta1, float beta2, float eps, int n_threads)
    void fnn_rmsprop(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                     float lr, float rho, float momentum, float eps, int n_threads)
    void fnn_adagrad(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                     int n_threads)
    void fnn_adadelta(float *w, const float *g, float *acc_g, float *acc_dx, size_t n,
                      float lr, float rho, float eps, int n_threads)
    void fnn_adamax(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                    float beta1, float beta2, float eps, int n_threads)
    void fnn_nadam(float *w, const float *g, float *m, float *v, size_t n, float lr,
                   float beta1, float beta2, float eps, float mu_t, float mu_t1,
                   float u_prod, float u_prod_t1, float beta2_power, int n_threads)
    void fnn_ftrl(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
                  float lr_power, float l1, float l2, float l2_shrinkage, float beta,
                  int n_threads)
    int FNN_OPT_SLOTS, FNN_N_OPTIMIZERS, FNN_N_LOSSES, FNN_LOSS_SPARSE_XENT
    int FNN_METRIC_NONE, FNN_METRIC_BINARY_ACC
    int FNN_SRC_F32, FNN_SRC_F64, FNN_SRC_U8
    int fnn_optimizer_scalars(int kind)
    ctypedef struct fnn_stack:
        int n_layers, batch
        const fnn_dense *layers
        float **z
        float **y
        float **dx
        float *x_buf
        float *target_buf
        float *weight_buf
        float *row_loss
        float *grad
        int32_t *label_buf
        int loss, fused, mean_reduction, metric
        float threshold
        int opt
        float *params
        float *grads
        float **slots
        size_t n_params
        const size_t *kernel_at
    ctypedef struct fnn_stack_data:
        const void *x
        int x_type
        int64_t rows, x_len
        const int32_t *labels
        const float *targets
        int64_t target_len
        const float *weights
        const int64_t *order
    int64_t fnn_stack_run(const fnn_stack *s, const fnn_stack_data *d, int train, int64_t start,
                          int64_t n_steps, const float *scalars, double *sums, int *status,
                          int n_threads)
    int fnn_stack_predict(const fnn_stack *s, const fnn_stack_data *d, float *out,
                          int64_t start, int64_t rows, int n_threads)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fnn_max_threads(void) { return omp_get_max_threads(); }
    static const int fnn_openmp = 1;
    #else
    static int fnn_max_threads(void) { return 1; }
    static const int fnn_openmp = 0;
    #endif
    /* Build facts from setup.py (key=value|...), and the compiler's own version string. */
    #ifndef FASTNN_BUILD_INFO
    #define FASTNN_BUILD_INFO ""
    #endif
    #define FNN_STR_(x) #x
    #define FNN_STR(x) FNN_STR_(x)
    static const char *fnn_build_info = FASTNN_BUILD_INFO;
    #if defined(_MSC_VER)
    static const char *fnn_compiler_version = "MSVC " FNN_STR(_MSC_FULL_VER);
    #elif defined(__clang__)
    static const char *fnn_compiler_version = "clang " __clang_version__;
    #elif defined(__GNUC__)
    static const char *fnn_compiler_version = "gcc " __VERSION__;
    #else
    static const char *fnn_compiler_version = "unknown";
    #endif
    #ifdef _OPENMP
    static const long fnn_openmp_version = _OPENMP;
    #else
    static const long fnn_openmp_version = 0;
    #endif
    """
    int fnn_max_threads()
    const int fnn_openmp
    const char *fnn_build_info
    const char *fnn_compiler_version
    const long fnn_openmp_version

cdef int _n_threads = fnn_max_threads()

OPENMP = bool(fnn_openmp)
# How this extension was built: compiler, its version, the exact extra compile/link flags,
# OpenMP as setup.py enabled it ("on"/"off") and the _OPENMP version macro (0 when off).
BUILD_INFO = dict(item.split("=", 1) for item in fnn_build_info.decode("utf-8", "replace")
                  .split("|") if "=" in item)
BUILD_INFO["compiler_version"] = fnn_compiler_version.decode("utf-8", "replace").strip()
BUILD_INFO["openmp_version"] = fnn_openmp_version


def set_blas(size_t sgemm, bint ilp64, size_t set_threads=0, size_t get_threads=0):
    """Use the Fortran sgemm at address `sgemm` (ILP64 sizes when ilp64) for every GEMM, with
    the BLAS's thread-count setter/getter (addresses, or 0) to keep it single-threaded."""
    if sgemm == 0:
        raise ValueError("set_blas: the sgemm address is NULL")
    fnn_set_blas(<void *>sgemm, ilp64, <void *>set_threads, <void *>get_threads)


cdef inline int _need_blas() except -1:
    if not fnn_blas_ready():
        from .backend import blas
        blas.install()
    return 0


def get_num_threads():
    return _n_threads


def set_num_threads(int n):
    global _n_threads
    if n < 1:
        raise ValueError(f"n_threads must be >= 1, got {n}")
    _n_threads = n if fnn_openmp else 1


def activation_needs_input(int act):
    _check_act(act)
    return bool(fnn_activation_needs_input(act))


cdef inline int _check_act(int act) except -1:
    if act < 0 or act >= FNN_N_ACTIVATIONS:
        raise ValueError(f"unknown activation id {act}")
    return 0


cdef inline int _same_shape(name, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{name}: expected shape {want}, got {got}")
    return 0


cdef tuple _shape2(const float[:, ::1] a):
    return (a.shape[0], a.shape[1])


cdef void _sgemm(bint trans_a, bint trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) noexcept nogil:
    fnn_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, _n_threads)


def gemm(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out,
         bint trans_a=False, bint trans_b=False, float alpha=1.0, float beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, row-major, op = transpose when asked."""
    _need_blas()
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    if k != kb:
        raise ValueError(f"gemm: inner dimensions differ ({k} vs {kb})")
    _same_shape("gemm out", _shape2(out), (m, n))
    if m == 0 or n == 0:
        return
    if k == 0:
        for i in range(m):
            for j in range(n):
                out[i, j] = beta * out[i, j] if beta != 0 else 0
        return
    with nogil:
        _sgemm(trans_a, trans_b, m, n, k, alpha, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
               beta, &out[0, 0], n)


def gemm_row_blocks(int rows, int d_in, int d_out):
    """Blocks of a Dense layer's training GEMMs split along its input rows (0: none)."""
    return fnn_gemm_row_blocks(rows, d_in, d_out)


def act_forward(int act, float alpha, const float[:, ::1] z, float[:, ::1] y):
    _check_act(act)
    _same_shape("activation output", _shape2(y), _shape2(z))
    if z.shape[0] == 0 or z.shape[1] == 0:
        return
    with nogil:
        fnn_act_forward(act, alpha, &z[0, 0], &y[0, 0], z.shape[0], z.shape[1], _n_threads)


def act_backward(int act, float alpha, const float[:, ::1] z, const float[:, ::1] y,
                 const float[:, ::1] dy, float[:, ::1] dz):
    """dz = dy * act'(z); z may be None for activations whose derivative is read off y."""
    _check_act(act)
    cdef tuple shape = _shape2(y)
    _same_shape("dy", _shape2(dy), shape)
    _same_shape("dz", _shape2(dz), shape)
    cdef const float *zp = NULL
    if fnn_activation_needs_input(act):
        if z is None:
            raise ValueError("this activation's backward pass needs its input z")
        _same_shape("z", _shape2(z), shape)
    if shape[0] == 0 or shape[1] == 0:
        return
    if z is not None:
        zp = &z[0, 0]
    with nogil:
        fnn_act_backward(act, alpha, zp, &y[0, 0], &dy[0, 0], &dz[0, 0], y.shape[0],
                         y.shape[1], _n_threads)


def column_sum(const float[:, ::1] a, float[::1] out):
    if out.shape[0] != a.shape[1]:
        raise ValueError(f"column_sum out: expected ({a.shape[1]},), got ({out.shape[0]},)")
    if a.shape[1] == 0:
        return
    if a.shape[0] == 0:
        out[:] = 0
        return
    with nogil:
        fnn_column_sum(&a[0, 0], &out[0], a.shape[0], a.shape[1], _n_threads)


def dense_forward(const float[:, ::1] x, const float[:, ::1] kernel, const float[::1] bias,
                  float[:, ::1] z, float[:, ::1] y, int act, float alpha, bint training=False):
    """z = x @ kernel + bias; y = act(z). y may be z itself when act's backward only needs y.
    training splits the GEMM as the layer's backward pass does (see fnn_gemm_row_blocks)."""
    _need_blas()
    _check_act(act)
    cdef int rows = x.shape[0], d_in = x.shape[1], d_out = kernel.shape[1]
    _same_shape("kernel", _shape2(kernel), (d_in, d_out))
    _same_shape("z", _shape2(z), (rows, d_out))
    _same_shape("y", _shape2(y), (rows, d_out))
    if bias is not None and bias.shape[0] != d_out:
        raise ValueError(f"bias: expected ({d_out},), got ({bias.shape[0]},)")
    if rows == 0 or d_out == 0:
        return
    if d_in == 0:
        raise ValueError("dense_forward: input has no features")
    cdef fnn_dense layer
    layer.d_in, layer.d_out, layer.act, layer.alpha = d_in, d_out, act, alpha
    layer.kernel, layer.bias, layer.d_kernel, layer.d_bias = &kernel[0, 0], NULL, NULL, NULL
    if bias is not None:
        layer.bias = &bias[0]
    with nogil:
        fnn_dense_forward(&layer, &x[0, 0], &z[0, 0], &y[0, 0], rows, training, _n_threads)


def dense_backward(const float[:, ::1] x, const float[:, ::1] kernel, const float[:, ::1] z,
                   const float[:, ::1] y, const float[:, ::1] dy, float[:, ::1] dz,
                   float[:, ::1] d_kernel, float[::1] d_bias, float[:, ::1] dx,
                   int act, float alpha, float kernel_step=0.0):
    """From dy = dL/dy: dz = dy * act'(z) (dz may be dy when act is linear), d_kernel = x^T dz,
    d_bias = column sums of dz, dx = dz kernel^T (skipped when dx is None). kernel_step > 0:
    d_kernel -= kernel_step * x^T dz instead (pass the kernel as d_kernel for the plain SGD
    step in place; dx is computed from the kernel before it changes)."""
    _need_blas()
    _check_act(act)
    cdef int rows = x.shape[0], d_in = x.shape[1], d_out = kernel.shape[1]
    cdef tuple out_shape = (rows, d_out)
    _same_shape("kernel", _shape2(kernel), (d_in, d_out))
    _same_shape("y", _shape2(y), out_shape)
    _same_shape("dy", _shape2(dy), out_shape)
    _same_shape("dz", _shape2(dz), out_shape)
    _same_shape("d_kernel", _shape2(d_kernel), (d_in, d_out))
    if d_bias is not None and d_bias.shape[0] != d_out:
        raise ValueError(f"d_bias: expected ({d_out},), got ({d_bias.shape[0]},)")
    if dx is not None:
        _same_shape("dx", _shape2(dx), (rows, d_in))
    cdef const float *zp = NULL
    if fnn_activation_needs_input(act):
        if z is None:
            raise ValueError("this activation's backward pass needs its input z")
        _same_shape("z", _shape2(z), out_shape)
        zp = &z[0, 0]
    if rows == 0 or d_in == 0 or d_out == 0:
        raise ValueError("dense_backward: empty batch or layer")
    if not kernel_step >= 0 or kernel_step == float("inf"):
        raise ValueError(f"kernel_step must be a finite float >= 0, got {kernel_step}")
    cdef fnn_dense layer
    layer.d_in, layer.d_out, layer.act, layer.alpha = d_in, d_out, act, alpha
    layer.kernel, layer.bias, layer.d_kernel, layer.d_bias = &kernel[0, 0], NULL, &d_kernel[0, 0], NULL
    if d_bias is not None:
        layer.d_bias = &d_bias[0]
    cdef float *dxp = NULL if dx is None else &dx[0, 0]
    with nogil:
        fnn_dense_backward(&layer, act, &x[0, 0], zp, &y[0, 0], &dy[0, 0], &dz[0, 0], dxp, rows,
                           kernel_step, NULL, _n_threads)


cdef double _ordered_sum(const float[::1] v) noexcept nogil:
    cdef double s = 0
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        s += v[i]
    return s


cdef int _check_loss_args(const float[:, ::1] pred, const float[::1] weights,
                          float[::1] row_loss, float[:, ::1] grad) except -1:
    cdef int rows = pred.shape[0]
    if row_loss.shape[0] != rows:
        raise ValueError(f"row_loss: expected ({rows},), got ({row_loss.shape[0]},)")
    if weights is not None and weights.shape[0] != rows:
        raise ValueError(f"sample_weight: expected ({rows},), got ({weights.shape[0]},)")
    if grad is not None:
        _same_shape("grad", _shape2(grad), _shape2(pred))
    if rows == 0 or pred.shape[1] == 0:
        raise ValueError("loss: empty predictions")
    return 0


def softmax_xent_sparse(const float[:, ::1] probs, const int32_t[::1] labels,
                        const float[::1] weights, float scale, float[::1] row_loss,
                        float[:, ::1] grad):
    """Sparse categorical cross-entropy on softmax outputs; grad (may be None) is with respect
    to the logits: scale * w * (p - onehot). Returns the ordered sum of weighted row losses."""
    _check_loss_args(probs, weights, row_loss, grad)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels: expected ({probs.shape[0]},), got ({labels.shape[0]},)")
    cdef const float *wp = NULL if weights is None else &weights[0]
    cdef float *gp = NULL if grad is None else &grad[0, 0]
    cdef int status
    with nogil:
        status = fnn_softmax_xent_sparse(&probs[0, 0], &labels[0], wp, scale, &row_loss[0], gp,
                                         probs.shape[0], probs.shape[1], _n_threads)
    if status != 0:
        raise ValueError(f"labels must be integers in [0, {probs.shape[1]})")
    return _ordered_sum(row_loss)


ctypedef int (*dense_loss_fn)(const float *, const float *, const float *, float, float *,
                              float *, size_t, size_t, int) noexcept nogil


cdef double _dense_loss(dense_loss_fn fn, const float[:, ::1] pred, const float[:, ::1] targets,
                        const float[::1] weights, float scale, float[::1] row_loss,
                        float[:, ::1] grad) except? -1:
    _check_loss_args(pred, weights, row_loss, grad)
    _same_shape("targets", _shape2(targets), _shape2(pred))
    cdef const float *wp = NULL if weights is None else &weights[0]
    cdef float *gp = NULL if grad is None else &grad[0, 0]
    with nogil:
        fn(&pred[0, 0], &targets[0, 0], wp, scale, &row_loss[0], gp, pred.shape[0],
           pred.shape[1], _n_threads)
    return _ordered_sum(row_loss)


def softmax_xent_dense(probs, targets, weights, float scale, row_loss, grad):
    return _dense_loss(fnn_softmax_xent_dense, probs, targets, weights, scale, row_loss, grad)


def sigmoid_bxent(probs, targets, weights, float scale, row_loss, grad):
    return _dense_loss(fnn_sigmoid_bxent, probs, targets, weights, scale, row_loss, grad)


def squared_error(pred, targets, weights, float scale, row_loss, grad):
    return _dense_loss(fnn_squared_error, pred, targets, weights, scale, row_loss, grad)


def absolute_error(pred, targets, weights, float scale, row_loss, grad):
    return _dense_loss(fnn_absolute_error, pred, targets, weights, scale, row_loss, grad)


cdef inline int _check_slot(name, const float[::1] w, const float[::1] s) except -1:
    if s is not None and s.shape[0] != w.shape[0]:
        raise ValueError(f"{name}: expected ({w.shape[0]},), got ({s.shape[0]},)")
    return 0


cdef inline float *_ptr(float[::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0]


def sgd_update(float[::1] w, const float[::1] g, float[::1] m, float lr, float momentum,
               bint nesterov):
    _check_slot("grad", w, g); _check_slot("momentum", w, m)
    if w.shape[0] == 0:
        return
    cdef float *mp = _ptr(m)
    with nogil:
        fnn_sgd(&w[0], &g[0], mp, w.shape[0], lr, momentum, nesterov, _n_threads)


def adam_update(float[::1] w, const float[::1] g, float[::1] m, float[::1] v, float[::1] vmax,
                float alpha, float beta1, float beta2, float eps):
    _check_slot("grad", w, g); _check_slot("m", w, m); _check_slot("v", w, v)
    _check_slot("vhat", w, vmax)
    if w.shape[0] == 0:
        return
    cdef float *vmp = _ptr(vmax)
    with nogil:
        fnn_adam(&w[0], &g[0], &m[0], &v[0], vmp, w.shape[0], alpha, beta1, beta2, eps,
                 _n_threads)


def rmsprop_update(float[::1] w, const float[::1] g, float[::1] v, float[::1] mom,
                   float[::1] mg, float lr, float rho, float momentum, float eps):
    _check_slot("grad", w, g); _check_slot("velocity", w, v)
    _check_slot("momentum", w, mom); _check_slot("average_gradient", w, mg)
    if w.shape[0] == 0:
        return
    cdef float *momp = _ptr(mom)
    cdef float *mgp = _ptr(mg)
    with nogil:
        fnn_rmsprop(&w[0], &g[0], &v[0], momp, mgp, w.shape[0], lr, rho, momentum,
                    eps, _n_threads)


def adagrad_update(float[::1] w, const float[::1] g, float[::1] acc, float lr, float eps):
    _check_slot("grad", w, g); _check_slot("accumulator", w, acc)
    if w.shape[0] == 0:
        return
    with nogil:
        fnn_adagrad(&w[0], &g[0], &acc[0], w.shape[0], lr, eps, _n_threads)


def adadelta_update(float[::1] w, const float[::1] g, float[::1] acc_g, float[::1] acc_dx,
                    float lr, float rho, float eps):
    _check_slot("grad", w, g); _check_slot("accumulated_grad", w, acc_g)
    _check_slot("accumulated_delta_var", w, acc_dx)
    if w.shape[0] == 0:
        return
    with nogil:
        fnn_adadelta(&w[0], &g[0], &acc_g[0], &acc_dx[0], w.shape[0], lr, rho, eps, _n_threads)


def adamax_update(float[::1] w, const float[::1] g, float[::1] m, float[::1] u, float alpha,
                  float beta1, float beta2, float eps):
    _check_slot("grad", w, g); _check_slot("m", w, m); _check_slot("u", w, u)
    if w.shape[0] == 0:
        return
    with nogil:
        fnn_adamax(&w[0], &g[0], &m[0], &u[0], w.shape[0], alpha, beta1, beta2, eps, _n_threads)


def nadam_update(float[::1] w, const float[::1] g, float[::1] m, float[::1] v, float lr,
                 float beta1, float beta2, float eps, float mu_t, float mu_t1, float u_prod,
                 float u_prod_t1, float beta2_power):
    _check_slot("grad", w, g); _check_slot("m", w, m); _check_slot("v", w, v)
    if w.shape[0] == 0:
        return
    with nogil:
        fnn_nadam(&w[0], &g[0], &m[0], &v[0], w.shape[0], lr, beta1, beta2, eps, mu_t, mu_t1,
                  u_prod, u_prod_t1, beta2_power, _n_threads)


def ftrl_update(float[::1] w, const float[::1] g, float[::1] acc, float[::1] lin, float lr,
                float lr_power, float l1, float l2, float l2_shrinkage, float beta):
    _check_slot("grad", w, g); _check_slot("accumulator", w, acc); _check_slot("linear", w, lin)
    if w.shape[0] == 0:
        return
    with nogil:
        fnn_ftrl(&w[0], &g[0], &acc[0], &lin[0], w.shape[0], lr, lr_power, l1, l2,
                 l2_shrinkage, beta, _n_threads)


# ---- convolution, pooling, batch normalization -------------------------------------------------
cdef fnn_conv_geom _geom(tuple x_shape, tuple window) except *:
    """window = (kh, kw, sh, sw, pad_top, pad_left, oh, ow), validated against x_shape."""
    cdef fnn_conv_geom g
    if len(window) != 8:
        raise ValueError("window must be (kh, kw, sh, sw, pad_top, pad_left, oh, ow)")
    g.n, g.h, g.w, g.c = x_shape
    g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, g.oh, g.ow = window
    if min(g.kh, g.kw, g.sh, g.sw, g.oh, g.ow) < 1 or g.pad_top < 0 or g.pad_left < 0:
        raise ValueError(f"invalid window {window}")
    return g


cdef tuple _shape4(const float[:, :, :, ::1] a):
    return (a.shape[0], a.shape[1], a.shape[2], a.shape[3])


def im2col(const float[:, :, :, ::1] x, tuple window, float[:, ::1] cols):
    cdef fnn_conv_geom g = _geom(_shape4(x), window)
    _same_shape("cols", _shape2(cols), (g.n * g.oh * g.ow, g.kh * g.kw * g.c))
    if cols.shape[0] == 0 or cols.shape[1] == 0:
        return
    with nogil:
        fnn_im2col(&x[0, 0, 0, 0], &cols[0, 0], &g, _n_threads)


def col2im(const float[:, ::1] cols, tuple window, float[:, :, :, ::1] x):
    cdef fnn_conv_geom g = _geom(_shape4(x), window)
    _same_shape("cols", _shape2(cols), (g.n * g.oh * g.ow, g.kh * g.kw * g.c))
    if x.shape[0] == 0 or cols.shape[1] == 0:
        return
    with nogil:
        fnn_col2im(&cols[0, 0], &x[0, 0, 0, 0], &g, _n_threads)


cdef int _check_argmax(const int32_t *a, size_t n, Py_ssize_t limit, where) except -1:
    """The scatter of a pooling backward pass trusts these indices: check them first."""
    cdef int ok
    if limit > 2147483647:
        raise ValueError(f"pooling input too large for int32 indices ({limit} per image)")
    with nogil:
        ok = fnn_indices_in_range(a, n, <int32_t>limit, _n_threads)
    if not ok:
        raise ValueError(f"argmax holds an index outside {where}")
    return 0


def maxpool_forward(const float[:, :, :, ::1] x, tuple window, float[:, :, :, ::1] y,
                    int32_t[:, :, :, ::1] argmax):
    cdef fnn_conv_geom g = _geom(_shape4(x), window)
    cdef tuple out = (g.n, g.oh, g.ow, g.c)
    _same_shape("y", _shape4(y), out)
    _same_shape("argmax", (argmax.shape[0], argmax.shape[1], argmax.shape[2], argmax.shape[3]),
                out)
    if g.n == 0 or g.c == 0:
        return
    with nogil:
        fnn_maxpool_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], &g, _n_threads)


def maxpool_backward(const float[:, :, :, ::1] dy, const int32_t[:, :, :, ::1] argmax,
                     tuple window, float[:, :, :, ::1] dx):
    cdef fnn_conv_geom g = _geom(_shape4(dx), window)
    cdef tuple out = (g.n, g.oh, g.ow, g.c)
    _same_shape("dy", _shape4(dy), out)
    _same_shape("argmax", (argmax.shape[0], argmax.shape[1], argmax.shape[2], argmax.shape[3]),
                out)
    if g.n == 0 or g.c == 0:
        return
    cdef const int32_t *a = &argmax[0, 0, 0, 0]
    _check_argmax(a, <size_t>g.n * g.oh * g.ow * g.c, <Py_ssize_t>g.h * g.w * g.c,
                  "the input image")
    with nogil:
        fnn_maxpool_backward(&dy[0, 0, 0, 0], a, &dx[0, 0, 0, 0], &g, _n_threads)


def avgpool_forward(const float[:, :, :, ::1] x, tuple window, float[:, :, :, ::1] y):
    cdef fnn_conv_geom g = _geom(_shape4(x), window)
    _same_shape("y", _shape4(y), (g.n, g.oh, g.ow, g.c))
    if g.n == 0 or g.c == 0:
        return
    with nogil:
        fnn_avgpool_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &g, _n_threads)


def avgpool_backward(const float[:, :, :, ::1] dy, tuple window, float[:, :, :, ::1] dx):
    cdef fnn_conv_geom g = _geom(_shape4(dx), window)
    _same_shape("dy", _shape4(dy), (g.n, g.oh, g.ow, g.c))
    if g.n == 0 or g.c == 0:
        return
    with nogil:
        fnn_avgpool_backward(&dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, _n_threads)



# ---- convolution + max pooling, fused ------------------------------------------------------
def conv_pool_plan(int n, int oh, int ow, int filters):
    """(groups, images per chunk) of conv_pool_forward/backward over n images whose
    convolution output is oh x ow x filters: the workspaces hold groups x chunk images."""
    cdef int groups, chunk
    fnn_conv_pool_plan(n, <size_t>oh * ow * filters, &groups, &chunk)
    return groups, chunk


cdef int _conv_pool_geoms(tuple x_shape, tuple conv_window, tuple pool_window, int filters,
                          fnn_conv_geom *conv, fnn_conv_geom *pool) except -1:
    conv[0] = _geom(x_shape, conv_window)
    pool[0] = _geom((conv.n, conv.oh, conv.ow, filters), pool_window)
    if conv.n == 0 or conv.c == 0 or filters == 0:
        raise ValueError("conv_pool: empty batch, input channels or filters")
    return 0


cdef int _check_conv_pool_act(int act, float alpha, bint backward) except -1:
    _check_act(act)
    if not fnn_activation_monotone(act, alpha):
        raise ValueError(f"conv_pool: activation id {act} (alpha {alpha}) is not "
                         "non-decreasing, so max pooling does not commute with it; run the "
                         "convolution and the pooling unfused")
    if backward and fnn_activation_needs_input(act):
        raise ValueError(f"conv_pool_backward: activation id {act} needs its input; run the "
                         "convolution and the pooling unfused")
    return 0


cdef int _check_work(name, const float[:, ::1] a, Py_ssize_t rows, Py_ssize_t cols) except -1:
    if a is None or a.shape[0] < rows or a.shape[1] != cols:
        got = None if a is None else _shape2(a)
        raise ValueError(f"{name}: expected at least ({rows}, {cols}) (see conv_pool_plan), "
                         f"got {got}")
    return 0


def conv_pool_forward(const float[:, :, :, ::1] x, const float[:, ::1] kernel,
                      const float[::1] bias, int act, float alpha, tuple conv_window,
                      tuple pool_window, float[:, ::1] cols, float[:, ::1] work,
                      float[:, :, :, ::1] y, int32_t[:, :, :, ::1] argmax):
    """y, argmax = maxpool(act(im2col(x) @ kernel + bias)), a cache-sized chunk of images at a
    time; cols (n*oh*ow, kh*kw*c) keeps the columns for backward, work is scratch."""
    _need_blas()
    _check_conv_pool_act(act, alpha, False)
    cdef fnn_conv_geom conv, pool
    cdef int filters = kernel.shape[1]
    _conv_pool_geoms(_shape4(x), conv_window, pool_window, filters, &conv, &pool)
    cdef Py_ssize_t kdim = conv.kh * conv.kw * conv.c, pixels = conv.oh * conv.ow
    cdef int groups, chunk
    groups, chunk = conv_pool_plan(conv.n, conv.oh, conv.ow, filters)
    _same_shape("kernel", _shape2(kernel), (kdim, filters))
    _check_channels("bias", bias, filters)
    _same_shape("cols", _shape2(cols), (conv.n * pixels, kdim))
    _check_work("work", work, groups * chunk * pixels, filters)
    cdef tuple out = (pool.n, pool.oh, pool.ow, filters)
    _same_shape("y", _shape4(y), out)
    _same_shape("argmax", (argmax.shape[0], argmax.shape[1], argmax.shape[2], argmax.shape[3]),
                out)
    cdef const float *bp = NULL if bias is None else &bias[0]
    with nogil:
        fnn_conv_pool_forward(&x[0, 0, 0, 0], &kernel[0, 0], bp, act, alpha, &conv, &pool,
                              &cols[0, 0], &work[0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0],
                              _n_threads)


def conv_pool_backward(const float[:, ::1] cols, const float[:, ::1] kernel,
                       const float[:, :, :, ::1] y, const int32_t[:, :, :, ::1] argmax,
                       float[:, :, :, ::1] dy, int act, float alpha, tuple conv_window,
                       tuple pool_window, tuple x_shape, float[:, ::1] d_kernel,
                       float[::1] d_bias, float[:, :, :, ::1] dx, float[:, ::1] work,
                       float[:, ::1] dcols_work, float[:, ::1] partials):
    """From dy (the pooled gradient, overwritten with its gradient through act): d_kernel,
    d_bias and dx (each skipped when None) of conv_pool_forward. act's derivative must be
    readable off its output (not softplus, gelu, silu or softmax)."""
    _need_blas()
    _check_conv_pool_act(act, alpha, True)
    cdef fnn_conv_geom conv, pool
    cdef int filters = kernel.shape[1]
    _conv_pool_geoms(x_shape, conv_window, pool_window, filters, &conv, &pool)
    cdef Py_ssize_t kdim = conv.kh * conv.kw * conv.c, pixels = conv.oh * conv.ow
    cdef int groups, chunk
    groups, chunk = conv_pool_plan(conv.n, conv.oh, conv.ow, filters)
    _same_shape("kernel", _shape2(kernel), (kdim, filters))
    _same_shape("cols", _shape2(cols), (conv.n * pixels, kdim))
    cdef tuple out = (pool.n, pool.oh, pool.ow, filters)
    _same_shape("y", _shape4(y), out)
    _same_shape("dy", _shape4(dy), out)
    _same_shape("argmax", (argmax.shape[0], argmax.shape[1], argmax.shape[2], argmax.shape[3]),
                out)
    _check_channels("d_bias", d_bias, filters)
    if d_kernel is not None:
        _same_shape("d_kernel", _shape2(d_kernel), (kdim, filters))
        if groups > 1:
            _check_work("partials", partials, (groups - 1) * kdim, filters)
    if dx is not None:
        _same_shape("dx", _shape4(dx), x_shape)
        _check_work("dcols_work", dcols_work, groups * chunk * pixels, kdim)
    if d_kernel is not None or dx is not None:
        _check_work("work", work, groups * chunk * pixels, filters)
    cdef const int32_t *a = &argmax[0, 0, 0, 0]
    _check_argmax(a, <size_t>pool.n * pool.oh * pool.ow * filters, pixels * filters,
                  "the convolution output")
    cdef float *dkp = NULL if d_kernel is None else &d_kernel[0, 0]
    cdef float *dbp = NULL if d_bias is None else &d_bias[0]
    cdef float *dxp = NULL if dx is None else &dx[0, 0, 0, 0]
    cdef float *wp = NULL if work is None else &work[0, 0]
    cdef float *dcp = NULL if dcols_work is None else &dcols_work[0, 0]
    cdef float *pp = NULL if partials is None else &partials[0, 0]
    with nogil:
        fnn_conv_pool_backward(&cols[0, 0], &kernel[0, 0], &y[0, 0, 0, 0], a, &dy[0, 0, 0, 0],
                               act, alpha, &conv, &pool, dkp, dbp, dxp, wp, dcp, pp, _n_threads)

cdef int _check_channels(name, const float[::1] v, Py_ssize_t cols) except -1:
    if v is not None and v.shape[0] != cols:
        raise ValueError(f"{name}: expected ({cols},), got ({v.shape[0]},)")
    return 0


def bn_stats(const float[:, ::1] x, float[::1] mean, float[::1] var):
    _check_channels("mean", mean, x.shape[1]); _check_channels("var", var, x.shape[1])
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError("batch normalization of an empty batch")
    with nogil:
        fnn_bn_stats(&x[0, 0], &mean[0], &var[0], x.shape[0], x.shape[1], _n_threads)


def bn_apply(const float[:, ::1] x, const float[::1] mean, const float[::1] var,
             const float[::1] gamma, const float[::1] beta, float eps, float[:, ::1] y):
    cdef Py_ssize_t c = x.shape[1]
    _check_channels("mean", mean, c); _check_channels("var", var, c)
    _check_channels("gamma", gamma, c); _check_channels("beta", beta, c)
    if mean is None or var is None:
        raise ValueError("mean and var are required")
    _same_shape("y", _shape2(y), _shape2(x))
    if x.shape[0] == 0 or c == 0:
        return
    cdef const float *gp = NULL if gamma is None else &gamma[0]
    cdef const float *bp = NULL if beta is None else &beta[0]
    with nogil:
        fnn_bn_apply(&x[0, 0], &mean[0], &var[0], gp, bp, eps, &y[0, 0], x.shape[0], c,
                     _n_threads)


def bn_backward(const float[:, ::1] x, const float[:, ::1] dy, const float[::1] mean,
                const float[::1] var, const float[::1] gamma, float eps, float[:, ::1] dx,
                float[::1] d_gamma, float[::1] d_beta):
    cdef Py_ssize_t c = x.shape[1]
    _check_channels("mean", mean, c); _check_channels("var", var, c)
    _check_channels("gamma", gamma, c); _check_channels("d_gamma", d_gamma, c)
    _check_channels("d_beta", d_beta, c)
    if mean is None or var is None:
        raise ValueError("mean and var are required")
    _same_shape("dy", _shape2(dy), _shape2(x))
    _same_shape("dx", _shape2(dx), _shape2(x))
    if x.shape[0] == 0 or c == 0:
        raise ValueError("batch normalization of an empty batch")
    cdef const float *gp = NULL if gamma is None else &gamma[0]
    cdef float *dgp = NULL if d_gamma is None else &d_gamma[0]
    cdef float *dbp = NULL if d_beta is None else &d_beta[0]
    with nogil:
        fnn_bn_backward(&x[0, 0], &dy[0, 0], &mean[0], &var[0], gp, eps, &dx[0, 0], dgp, dbp,
                        x.shape[0], c, _n_threads)


def bn_update_moving(float[::1] moving_mean, float[::1] moving_var, const float[::1] mean,
                     const float[::1] var, float momentum):
    cdef Py_ssize_t c = moving_mean.shape[0]
    _check_channels("moving_variance", moving_var, c)
    _check_channels("mean", mean, c); _check_channels("var", var, c)
    if c == 0:
        return
    fnn_bn_update_moving(&moving_mean[0], &moving_var[0], &mean[0], &var[0], momentum, c)


# ---- a whole Dense stack run in C (csrc/stack.c; built and driven by fastnn/stack.py) ----------
cdef inline float *_fptr(a) except? NULL:
    """Address of a C-contiguous float32 NumPy array (None -> NULL)."""
    if a is None:
        return NULL
    cdef float[::1] flat = a.reshape(-1)
    return &flat[0] if flat.shape[0] else NULL


cdef class DenseStack:
    """A Sequential of Dense layers with its workspaces, for `batch` rows. layers: tuples
    (kernel, bias, d_kernel, d_bias, act, alpha) of float32 arrays (bias/d_bias may be None,
    gradients None for inference). Training stacks also get loss, metric and optimizer."""
    cdef fnn_stack s
    cdef fnn_dense *dense
    cdef float **bufs                 # z[n], y[n], dx[n]
    cdef float *slot_ptrs[8]
    cdef size_t *kernel_at            # each layer's kernel offset in the arena, or NULL
    cdef list keep                    # every array the pointers above point into
    cdef public int d_in, d_out, n_scalars, batch, loss
    cdef public bint train

    def __cinit__(self, list layers, int batch, bint train=False, int loss=0, bint fused=False,
                  bint mean_reduction=True, int metric=0, float threshold=0.5, int opt=0,
                  params=None, grads=None, slots=()):
        import numpy as np
        cdef int n = len(layers), i
        if n == 0 or batch < 1:
            raise ValueError("DenseStack needs at least one layer and a positive batch")
        self.dense = <fnn_dense *>calloc(n, sizeof(fnn_dense))
        self.bufs = <float **>calloc(3 * n, sizeof(float *))
        if self.dense == NULL or self.bufs == NULL:
            raise MemoryError()
        self.keep = []
        self.batch, self.train, self.loss = batch, train, loss
        prev = None
        for i, (kernel, bias, d_kernel, d_bias, act, alpha) in enumerate(layers):
            _check_act(act)
            for name, a in (("kernel", kernel), ("bias", bias), ("d_kernel", d_kernel),
                            ("d_bias", d_bias)):
                if a is not None and (a.dtype != np.float32 or not a.flags.c_contiguous):
                    raise ValueError(f"layer {i} {name}: must be C-contiguous float32")
            if kernel.ndim != 2 or (prev is not None and kernel.shape[0] != prev):
                raise ValueError(f"layer {i} kernel: expected ({prev}, units), got {kernel.shape}")
            d_in, d_out = kernel.shape
            if bias is not None and bias.shape != (d_out,):
                raise ValueError(f"layer {i} bias: expected ({d_out},), got {bias.shape}")
            if train and (d_kernel is None or d_kernel.shape != kernel.shape or
                          (bias is None) != (d_bias is None) or
                          (d_bias is not None and d_bias.shape != (d_out,))):
                raise ValueError(f"layer {i}: gradients must match the kernel and bias")
            z = np.empty((batch, d_out), np.float32)
            y = np.empty_like(z) if train and fnn_activation_needs_input(act) else z
            dx = np.empty((batch, d_in), np.float32) if train and i > 0 else None
            self.keep += [kernel, bias, d_kernel, d_bias, z, y, dx]
            self.dense[i].d_in, self.dense[i].d_out = d_in, d_out
            self.dense[i].act, self.dense[i].alpha = act, alpha
            self.dense[i].kernel, self.dense[i].bias = _fptr(kernel), _fptr(bias)
            if train:
                self.dense[i].d_kernel, self.dense[i].d_bias = _fptr(d_kernel), _fptr(d_bias)
            self.bufs[i], self.bufs[n + i], self.bufs[2 * n + i] = _fptr(z), _fptr(y), _fptr(dx)
            prev = d_out
        self.d_in, self.d_out = self.dense[0].d_in, self.dense[n - 1].d_out
        self.s.n_layers, self.s.batch, self.s.layers = n, batch, self.dense
        self.s.z, self.s.y, self.s.dx = self.bufs, self.bufs + n, self.bufs + 2 * n
        x_buf = np.empty((2, batch, self.d_in), np.float32)     # gathers alternate
        self.keep.append(x_buf)
        self.s.x_buf = _fptr(x_buf)
        if not train:
            return
        if not 0 <= loss < FNN_N_LOSSES:
            raise ValueError(f"unknown loss kind {loss}")
        if not FNN_METRIC_NONE <= metric <= FNN_METRIC_BINARY_ACC:
            raise ValueError(f"unknown metric kind {metric}")
        if metric == FNN_METRIC_BINARY_ACC and self.d_out != 1:
            raise ValueError("binary accuracy runs in C for one output column only")
        self.n_scalars = fnn_optimizer_scalars(opt)
        if self.n_scalars < 0:
            raise ValueError(f"unknown optimizer kind {opt}")
        if params is None or grads is None or params.dtype != np.float32 or \
                grads.shape != params.shape or grads.dtype != np.float32 or params.ndim != 1 \
                or not params.flags.c_contiguous or not grads.flags.c_contiguous:
            raise ValueError("params and grads must be flat float32 arrays of one length")
        slots = list(slots)
        if len(slots) > FNN_OPT_SLOTS:
            raise ValueError(f"at most {FNN_OPT_SLOTS} optimizer slots")
        for i in range(FNN_OPT_SLOTS):
            slot = slots[i] if i < len(slots) else None
            if slot is not None and (slot.shape != params.shape or slot.dtype != np.float32 or
                                     not slot.flags.c_contiguous):
                raise ValueError(f"optimizer slot {i}: expected float32 {params.shape}")
            self.slot_ptrs[i] = _fptr(slot)
            self.keep.append(slot)
        target_buf = np.empty((batch, self.d_out), np.float32)
        labels = np.empty(batch, np.int32)
        weight_buf, row_loss = np.empty(batch, np.float32), np.empty(batch, np.float32)
        grad = np.empty((batch, self.d_out), np.float32)
        self.keep += [params, grads, target_buf, labels, weight_buf, row_loss, grad]
        cdef int32_t[::1] label_view = labels
        self.s.target_buf, self.s.label_buf = _fptr(target_buf), &label_view[0]
        self.s.weight_buf, self.s.row_loss, self.s.grad = (_fptr(weight_buf), _fptr(row_loss),
                                                           _fptr(grad))
        self.s.loss, self.s.fused, self.s.mean_reduction = loss, fused, mean_reduction
        self.s.metric, self.s.threshold, self.s.opt = metric, threshold, opt
        self.s.params, self.s.grads, self.s.slots = _fptr(params), _fptr(grads), self.slot_ptrs
        self.s.n_params = params.shape[0]
        self._find_kernels(layers, params, grads)

    cdef _find_kernels(self, list layers, params, grads):
        """Point s.kernel_at at each layer's kernel offset when the layers' parameters tile the
        arena in order (kernel, bias, next kernel, ...) and their gradients tile grads alike:
        then fnn_stack_run updates each layer during the backward pass. Only worth it when a
        layer's training GEMMs split along its rows (its blocks are then updated where they
        are cached); small stacks keep one update pass over the arena."""
        cdef size_t at = 0, n = len(layers), i
        if not any(fnn_gemm_row_blocks(self.batch, k.shape[0], k.shape[1]) > 1
                   for k, *_ in layers):
            return
        offsets = []
        base, gbase = params.ctypes.data, grads.ctypes.data
        for kernel, bias, d_kernel, d_bias, _, _ in layers:
            offsets.append(at)
            for a, g in ((kernel, d_kernel), (bias, d_bias)):
                if a is None:
                    continue
                if a.ctypes.data != base + 4 * at or g.ctypes.data != gbase + 4 * at:
                    return
                at += a.size
        if at != <size_t>params.shape[0]:
            return
        self.kernel_at = <size_t *>calloc(n, sizeof(size_t))
        if self.kernel_at == NULL:
            raise MemoryError()
        for i in range(n):
            self.kernel_at[i] = offsets[i]
        self.s.kernel_at = self.kernel_at

    @property
    def updates_in_backward(self):
        """Whether training updates each layer during the backward pass (_find_kernels)."""
        return self.kernel_at != NULL

    def __dealloc__(self):
        free(self.dense)
        free(self.bufs)
        free(self.kernel_at)

    cdef int _data(self, fnn_stack_data *d, x, y, weights, order) except -1:
        """Check the source arrays against the stack and point d at them."""
        import numpy as np
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.d_in or \
                not x.flags.c_contiguous:
            raise ValueError(f"x: expected a C-contiguous array of shape (n, {self.d_in}), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        kinds = {np.dtype(np.float32): FNN_SRC_F32, np.dtype(np.float64): FNN_SRC_F64,
                 np.dtype(np.uint8): FNN_SRC_U8}
        if x.dtype not in kinds:
            raise ValueError(f"x: dtype must be float32, float64 or uint8, got {x.dtype}")
        cdef int64_t n = x.shape[0]
        d.x, d.x_type, d.rows, d.x_len = <const void *><size_t>x.ctypes.data, kinds[x.dtype], n, \
            self.d_in
        d.labels, d.targets, d.weights, d.order, d.target_len = NULL, NULL, NULL, NULL, 0
        cdef const int32_t[::1] lab
        cdef const float[:, ::1] tgt
        cdef const float[::1] wv
        cdef const int64_t[::1] ov
        if self.train:
            if self.loss == FNN_LOSS_SPARSE_XENT:
                lab = y
                if lab.shape[0] != n:
                    raise ValueError(f"y: expected int32 labels of shape ({n},)")
                d.labels = &lab[0]
            else:
                tgt = y
                if tgt.shape[0] != n or tgt.shape[1] != self.d_out:
                    raise ValueError(f"y: expected float32 targets of shape ({n}, {self.d_out})")
                d.targets, d.target_len = &tgt[0, 0], self.d_out
            if weights is not None:
                wv = weights
                if wv.shape[0] != n:
                    raise ValueError(f"sample_weight: expected ({n},)")
                d.weights = &wv[0]
        if order is not None:
            ov = order
            if ov.shape[0] != n:
                raise ValueError(f"order: expected ({n},)")
            d.order = &ov[0]
        return 0

    def run(self, x, y, weights, order, int64_t start, int64_t n_steps, bint train,
            const float[:, ::1] scalars, double[::1] sums):
        """Run batches start .. start + n_steps - 1 of the epoch (see fnn_stack_run); returns
        (steps run, status)."""
        cdef fnn_stack_data d
        if not self.train:
            raise ValueError("this DenseStack was built for inference only")
        self._data(&d, x, y, weights, order)
        if start < 0 or n_steps < 1 or (start + n_steps - 1) * self.batch >= d.rows:
            raise ValueError(f"steps {start}..{start + n_steps - 1} of batch {self.batch} lie "
                             f"outside {d.rows} rows")
        if sums.shape[0] != 4:
            raise ValueError("sums: expected (4,)")
        if train and (scalars is None or scalars.shape[0] < n_steps or
                      scalars.shape[1] != self.n_scalars):
            raise ValueError(f"scalars: expected ({n_steps}, {self.n_scalars})")
        cdef int64_t first = start * self.batch, last = min(d.rows, (start + n_steps) * self.batch)
        cdef int64_t i, bad = -1
        if d.order != NULL:
            with nogil:
                for i in range(first, last):
                    if d.order[i] < 0 or d.order[i] >= d.rows:
                        bad = i
                        break
            if bad >= 0:
                raise ValueError(f"order[{bad}] = {d.order[bad]} is not a row of x")
        cdef int status = 0
        cdef int64_t done
        cdef const float *sp = &scalars[0, 0] if train else NULL
        with nogil:
            done = fnn_stack_run(&self.s, &d, train, start, n_steps, sp, &sums[0], &status,
                                 _n_threads)
        if status == -2:
            raise ValueError(f"labels must be integers in [0, {self.d_out})")
        return done, status     # status -3: NaN or inf in the batch after the `done` run

    def predict(self, x, float[:, ::1] out, int64_t start):
        """Outputs of rows start .. start + len(out) - 1 of x into out."""
        cdef fnn_stack_data d
        self._data(&d, x, None, None, None)
        if out.shape[1] != self.d_out or start < 0 or start + out.shape[0] > d.rows:
            raise ValueError(f"out: expected (rows, {self.d_out}) within {d.rows} rows of x")
        if out.shape[0] == 0:
            return
        cdef int status
        with nogil:
            status = fnn_stack_predict(&self.s, &d, &out[0, 0], start, out.shape[0], _n_threads)
        if status == -3:
            raise ValueError("x contains NaN or inf values")
