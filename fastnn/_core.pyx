# cython: language_level=3
"""The compiled core: typed-memoryview wrappers over the C kernels in csrc/, plus GEMM through
a BLAS found at run time (NumPy's or SciPy's bundled OpenBLAS, see fastnn/backend/blas.py), so
nothing links against a BLAS. Every wrapper checks sizes before any memory is touched and
releases the GIL around the work. Arrays are float32 and C-contiguous; the Python backend
(fastnn/backend/cpu.py) guarantees that."""
import operator

from libc.math cimport INFINITY, isfinite
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strcmp
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release, PyObject_GetBuffer

cdef extern from "fastnn.h" nogil:
    ctypedef struct fnn_rnn:
        int kind, steps, batch, d_in, units, act, rec_act, reset_after, zero_output
        const float *kernel
        const float *recurrent
        const float *bias
        int x_ld, h_ld
    int fnn_rnn_act_supported(int act)
    void fnn_copy_steps(const float *src, ptrdiff_t s0, ptrdiff_t s1, float *dst, ptrdiff_t d0,
                        ptrdiff_t d1, int n0, int n1, int n, int n_threads)
    int fnn_rnn_forward(const fnn_rnn *r, const float *x, const uint8_t *mask, float *ys,
                        float *hs, float *cs, float *gates, float *extra, float *rec,
                        const float *rec_mask, float *hd, int n_threads)
    int fnn_rnn_backward(const fnn_rnn *r, const float *x, const uint8_t *mask,
                         const float *hs, const float *cs, const float *gates,
                         const float *extra, const float *dys, float *dh, float *dc,
                         float *carry, float *dht, float *drh, float *dgx, float *dgr,
                         float *d_kernel, float *d_recurrent, float *d_bias, float *dx,
                         const float *rec_mask, const float *hd, int n_threads)


cdef extern from "fastnn.h" nogil:
    int FNN_N_ACTIVATIONS
    int FNN_IN_PLACE_MIN_WEIGHTS
    int FNN_OPT_SGD, FNN_OPT_RMSPROP
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
    ctypedef struct fnn_norm:
        const float *mean
        const float *var
        const float *gamma
        const float *beta
        float eps
    int fnn_bias_act_forward(int act, float alpha, float *z, const float *bias,
                             const fnn_norm *norm, const float *residual, float *y, size_t rows,
                             size_t cols, int n_threads)
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
        int n, h, w, c, kh, kw, sh, sw, pad_top, pad_left, oh, ow, dh, dw
    void fnn_im2col(const float *x, float *cols, const fnn_conv_geom *g, int n_threads)
    void fnn_col2im(const float *cols, float *x, const fnn_conv_geom *g, int n_threads)
    int fnn_conv2d_forward(const float *x, const fnn_conv_geom *g, const float *kernel,
                           int filters, float *cols, float *work, int act, float alpha,
                           const float *bias, const fnn_norm *norm, const float *residual,
                           float *z, float *y, int n_threads)
    size_t fnn_winograd_work(const fnn_conv_geom *g, int filters)
    void fnn_maxpool_forward(const float *x, float *y, int32_t *argmax, const fnn_conv_geom *g,
                             int n_threads)
    void fnn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx,
                              const fnn_conv_geom *g, int n_threads)
    int fnn_indices_in_range(const int32_t *idx, size_t n, int32_t limit, int n_threads)
    int64_t fnn_embedding_first_bad(const void *ids, int wide, size_t n, int64_t rows)
    void fnn_embedding_forward(const float *table, const void *ids, int wide, size_t n, size_t dim,
                               float *out, int n_threads)
    void fnn_embedding_backward(const void *ids, int wide, size_t n, const float *dy,
                                size_t dim, float *d_table, size_t rows, const void *clear,
                                int clear_wide, size_t n_clear, int n_threads)
    void fnn_avgpool_forward(const float *x, float *y, const fnn_conv_geom *g, int n_threads)
    void fnn_avgpool_backward(const float *dy, float *dx, const fnn_conv_geom *g, int n_threads)
    int fnn_activation_monotone(int act, float alpha)
    void fnn_conv2d_maxpool_plan(int n, size_t image_floats, int *groups, int *chunk)
    int fnn_conv2d_maxpool_forward(const float *x, const float *kernel, const float *bias, int act,
                                   float alpha, const fnn_conv_geom *conv,
                                   const fnn_conv_geom *pool, float *cols, float *work, float *y,
                                   int32_t *argmax, int n_threads)
    int fnn_conv2d_maxpool_backward(const float *cols, const float *kernel, const float *y,
                                    const int32_t *argmax, float *dy, int act, float alpha,
                                    const fnn_conv_geom *conv, const fnn_conv_geom *pool,
                                    float *d_kernel, float *d_bias, float *dx, float *work,
                                    float *dcols_work, float *partials, int n_threads)
    void fnn_batchnorm_stats(const float *x, float *mean, float *var, size_t rows, size_t cols,
                             int n_threads)
    void fnn_batchnorm_apply(const float *x, const float *mean, const float *var,
                             const float *gamma, const float *beta, float eps, float *y,
                             size_t rows, size_t cols, int n_threads)
    void fnn_batchnorm_backward(const float *x, const float *dy, const float *mean,
                                const float *var, const float *gamma, float eps, float *dx,
                                float *d_gamma, float *d_beta, size_t rows, size_t cols,
                                int n_threads)
    void fnn_batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                                     const float *var, float momentum, size_t cols)
    ctypedef struct fnn_penalty:
        float l1, l2
        double value
    void fnn_sgd_update(float *w, const float *g, float *m, size_t n, float lr, float momentum,
                 int nesterov, float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_adam_update(float *w, const float *g, float *m, float *v, float *vmax, size_t n,
                  float alpha, float beta1, float beta2, float eps,
                  float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_rmsprop_update(float *w, const float *g, float *v, float *mom, float *mg, size_t n,
                     float lr, float rho, float momentum, float eps,
                     float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_adagrad_update(float *w, const float *g, float *acc, size_t n, float lr, float eps,
                     float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_adadelta_update(float *w, const float *g, float *acc_g, float *acc_dx, size_t n,
                      float lr, float rho, float eps, float gscale, float gclip, fnn_penalty *pen,
                      int n_threads)
    void fnn_adamax_update(float *w, const float *g, float *m, float *u, size_t n, float alpha,
                    float beta1, float beta2, float eps, float gscale, float gclip,
                    fnn_penalty *pen, int n_threads)
    void fnn_lion_update(float *w, const float *g, float *m, size_t n, float lr, float beta1,
                  float beta2, float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_nadam_update(float *w, const float *g, float *m, float *v, size_t n, float lr,
                   float beta1, float beta2, float eps, float mu_t, float mu_t1,
                   float u_prod, float u_prod_t1, float beta2_power,
                   float gscale, float gclip, fnn_penalty *pen, int n_threads)
    void fnn_ftrl_update(float *w, const float *g, float *acc, float *lin, size_t n, float lr,
                  float lr_power, float l1, float l2, float l2_shrinkage, float beta,
                  float gscale, float gclip, fnn_penalty *pen, int n_threads)
    int FNN_CLIP_NONE, FNN_CLIP_VALUE, FNN_CLIP_NORM, FNN_CLIP_GLOBAL_NORM
    void fnn_optimizer_update(int kind, float *w, const float *g, float **slots,
                             const size_t *sizes, int n_vars, const float *scalars,
                             int clip_mode, float limit, int n_threads)
    double fnn_l1l2_penalty(const float *w, float *g, size_t n, float l1, float l2, int n_threads)
    int FNN_OPT_SLOTS, FNN_N_OPTIMIZERS, FNN_N_LOSSES, FNN_LOSS_SPARSE_XENT
    int FNN_METRIC_NONE, FNN_METRIC_BINARY_ACC
    int FNN_SRC_F32, FNN_SRC_F64, FNN_SRC_U8
    int FNN_PRE_NONE, FNN_PRE_AFFINE, FNN_PRE_STANDARDIZE
    int fnn_optimizer_scalars(int kind)
    ctypedef struct fnn_shard_outer:
        size_t at
        int d_in, d_out, max_rows
        const float *count
        const float *x
        const float *dz
        float *part
        float *z_parts
        float *dx_all
    ctypedef struct fnn_shard:
        float *params
        float *slots[3]
        float *rows
        uint32_t *control
        const fnn_shard_outer *outer
        int n_outer
        size_t n, lo, hi, stride
        int ranks, rank, kind, clip_mode
        float clip_limit
        int watch, dead
        double seconds, waited
        int next_bad
    int fnn_shard_supported()
    int fnn_shard_barrier(fnn_shard *sh)
    int fnn_shard_reduce(fnn_shard *sh, float scale, int bad, int n_threads)
    int fnn_shard_update(fnn_shard *sh, const float *scalars, int n_threads)
    int fnn_shard_step(fnn_shard *sh, const float *scalars, int n_threads)
    int fnn_shard_split_forward(fnn_shard *sh, int i, float *z, int n_threads)
    int fnn_shard_split_backward(fnn_shard *sh, int i, int n_threads)
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
        const size_t *layer_at
        const int64_t *in_place_at
        const size_t *update_spans
        int n_update_spans
        const float *reg
        double *pen_rows
        int clip_mode
        float clip_limit
        const size_t *var_sizes
        int n_vars
    ctypedef struct fnn_stack_data:
        const void *x
        int x_type
        int64_t rows, x_len
        const int32_t *labels
        const float *targets
        int64_t target_len
        const float *weights
        const int64_t *order
        float *outputs
        int64_t outputs_first
        int pre
        const float *pre_a
        const float *pre_b
        int (*reduce)(void *ctx, const float *scalars) noexcept nogil
        void *reduce_ctx
        int64_t global_rows, global_batch
        fnn_shard *shard
        float *exchange
        int (*step_end)(void *ctx, int64_t step, int status) noexcept nogil
        void *step_ctx
    int64_t fnn_stack_run(const fnn_stack *s, const fnn_stack_data *d, int train, int64_t start,
                          int64_t n_steps, const float *scalars, double *sums, int *status,
                          int n_threads)
    int fnn_all_finite(const float *p, size_t n, int n_threads)
    int fnn_stack_predict(const fnn_stack *s, const fnn_stack_data *d, float *out,
                          int64_t start, int64_t rows, int n_threads)
    size_t fnn_stack_exchange_floats(const fnn_stack *s, int64_t global_batch, int ranks)

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


# ---- the boundary: every array is checked, and named, before any pointer is taken ---------------
# Arrays arrive as plain objects and are viewed through these helpers, which turn Cython's
# anonymous buffer errors ("Buffer dtype mismatch") into a TypeError/ValueError naming the
# argument, what was expected and what came. The check is the typed-memoryview acquisition
# itself (O(1)); the description is only built on the error path. `name` is "function: arg".

cdef str _describe(a):
    if a is None:
        return "None"
    dt, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
    if dt is None or shape is None:
        return f"an object of type {type(a).__name__}"
    text = f"{dt} array of shape {tuple(shape)}"
    flags = getattr(a, "flags", None)
    if flags is not None:
        if not flags.c_contiguous:
            text += ", not C-contiguous"
        if not flags.writeable:
            text += ", read-only"
    return text


cdef int _bad(str name, a, str dtype, int ndim, bint writable, exc) except -1:
    """Raise the error for `a`, which did not convert to a C-contiguous `ndim`-D `dtype` view."""
    want = f"a C-contiguous {ndim}-D {dtype} array" + (" (writable)" if writable else "")
    got = _describe(a)
    if a is None:
        raise TypeError(f"{name}: expected {want}, got None")
    dt, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
    if dt is None or shape is None:
        raise TypeError(f"{name}: expected {want}, got {got}")
    if str(dt) != dtype:
        raise TypeError(f"{name}: expected {want}, got {got} (dtype {dt})")
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected {want}, got {got} ({len(shape)}-D)")
    raise ValueError(f"{name}: expected {want}, got {got} ({exc})")


cdef const float[::1] _cf1(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 1, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 1, False, e)


cdef float[::1] _f1(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 1, True, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 1, True, e)


cdef const float[:, ::1] _cf2(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 2, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 2, False, e)


cdef float[:, ::1] _f2(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 2, True, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 2, True, e)


cdef const float[:, :, :, ::1] _cf4(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 4, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 4, False, e)


cdef float[:, :, :, ::1] _f4(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float32", 4, True, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float32", 4, True, e)


cdef const int32_t[::1] _ci1(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "int32", 1, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "int32", 1, False, e)


cdef const int32_t[:, :, :, ::1] _ci4(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "int32", 4, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "int32", 4, False, e)


cdef int32_t[:, :, :, ::1] _i4(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "int32", 4, True, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "int32", 4, True, e)


cdef const int64_t[::1] _ci64(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "int64", 1, False, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "int64", 1, False, e)


cdef double[::1] _d1(str name, a, bint required) except *:
    if a is None:
        if required:
            _bad(name, a, "float64", 1, True, None)
        return None
    try:
        return a
    except Exception as e:
        _bad(name, a, "float64", 1, True, e)


cdef inline int _same_shape(name, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{name}: expected shape {want}, got {got}")
    return 0


cdef tuple _shape2(const float[:, ::1] a):
    return (a.shape[0], a.shape[1])


cdef tuple _shape4(const float[:, :, :, ::1] a):
    return (a.shape[0], a.shape[1], a.shape[2], a.shape[3])


cdef tuple _ishape4(const int32_t[:, :, :, ::1] a):
    return (a.shape[0], a.shape[1], a.shape[2], a.shape[3])


cdef long long INT_MAX = 2147483647

cdef inline int _fits_int(name, Py_ssize_t v) except -1:
    """A size the C kernels take as `int` (the BLAS's LP64 sizes, geometry fields)."""
    if v > INT_MAX:
        raise ValueError(f"{name}: {v} is too large (at most {INT_MAX})")
    return 0


# Overlap of two buffers, by address range (the arrays are contiguous, so their ranges are
# exactly the memory they touch). `_disjoint` rejects any overlap; `_same_or_disjoint` lets an
# output be exactly an input (same start, same size: an elementwise kernel designed in place)
# and rejects a partial overlap, which would read values the kernel has already written.
cdef inline bint _overlaps(const void *p, size_t pn, const void *q, size_t qn) noexcept nogil:
    cdef const char *a = <const char *>p
    cdef const char *b = <const char *>q
    return p != NULL and q != NULL and pn > 0 and qn > 0 and a < b + qn and b < a + pn


cdef int _disjoint(name, const void *p, size_t pn, other, const void *q,
                   size_t qn) except -1:
    if _overlaps(p, pn, q, qn):
        raise ValueError(f"{name} shares memory with {other}: this kernel does not work in "
                         "place; pass a separate output array")
    return 0


cdef int _same_or_disjoint(name, const void *p, size_t pn, other, const void *q,
                           size_t qn) except -1:
    if _overlaps(p, pn, q, qn) and not (p == q and pn == qn):
        raise ValueError(f"{name} partly overlaps {other}: an output may be exactly an input "
                         "array or separate from it, not a shifted view of it")
    return 0


cdef int _all_disjoint(str fn, list outs, list ins=[]) except -1:
    """outs, ins: (name, address, bytes). No output may overlap another output or an input
    (inputs may overlap each other: they are only read)."""
    cdef Py_ssize_t i, j
    cdef const void *p
    cdef size_t pn
    for i in range(len(outs)):
        p, pn = <const void *><size_t>outs[i][1], outs[i][2]
        # (the message is formatted only for an overlap: this runs on every kernel call)
        for j in range(i + 1, len(outs)):
            if _overlaps(p, pn, <const void *><size_t>outs[j][1], outs[j][2]):
                _disjoint(f"{fn}: {outs[i][0]}", p, pn, outs[j][0],
                          <const void *><size_t>outs[j][1], outs[j][2])
        for j in range(len(ins)):
            if _overlaps(p, pn, <const void *><size_t>ins[j][1], ins[j][2]):
                _disjoint(f"{fn}: {outs[i][0]}", p, pn, ins[j][0],
                          <const void *><size_t>ins[j][1], ins[j][2])
    return 0


cdef inline const void *_p1(const float[::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else <const void *>&a[0]


cdef inline size_t _n1(const float[::1] a) noexcept:
    return 0 if a is None else 4 * <size_t>a.shape[0]


cdef inline const void *_p2(const float[:, ::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 or a.shape[1] == 0 else <const void *>&a[0, 0]


cdef inline size_t _n2(const float[:, ::1] a) noexcept:
    return 0 if a is None else 4 * <size_t>a.shape[0] * <size_t>a.shape[1]


cdef inline const void *_p4(const float[:, :, :, ::1] a) noexcept:
    if a is None or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        return NULL
    return <const void *>&a[0, 0, 0, 0]


cdef inline size_t _n4(const float[:, :, :, ::1] a) noexcept:
    return 0 if a is None else \
        4 * <size_t>a.shape[0] * <size_t>a.shape[1] * <size_t>a.shape[2] * <size_t>a.shape[3]


cdef inline const void *_pi4(const int32_t[:, :, :, ::1] a) noexcept:
    if a is None or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        return NULL
    return <const void *>&a[0, 0, 0, 0]


cdef inline size_t _ni4(const int32_t[:, :, :, ::1] a) noexcept:
    return 0 if a is None else \
        4 * <size_t>a.shape[0] * <size_t>a.shape[1] * <size_t>a.shape[2] * <size_t>a.shape[3]


# ---- GEMM ----------------------------------------------------------------------------------------
cdef void _sgemm(bint trans_a, bint trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) noexcept nogil:
    fnn_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, _n_threads)


def gemm(a, b, out, bint trans_a=False, bint trans_b=False, float alpha=1.0, float beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, row-major, op = transpose when asked. out must
    not share memory with a or b."""
    cdef const float[:, ::1] A = _cf2("gemm: a", a, True)
    cdef const float[:, ::1] B = _cf2("gemm: b", b, True)
    cdef float[:, ::1] C = _f2("gemm: out", out, True)
    _need_blas()
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t kb = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t n = B.shape[0] if trans_b else B.shape[1]
    if k != kb:
        raise ValueError(f"gemm: inner dimensions differ (a gives {k}, b gives {kb})")
    _same_shape("gemm: out", _shape2(C), (m, n))
    _fits_int("gemm: a's rows", A.shape[0]); _fits_int("gemm: a's columns", A.shape[1])
    _fits_int("gemm: b's rows", B.shape[0]); _fits_int("gemm: b's columns", B.shape[1])
    if m == 0 or n == 0:
        return
    _disjoint("gemm: out", _p2(C), _n2(C), "a", _p2(A), _n2(A))
    _disjoint("gemm: out", _p2(C), _n2(C), "b", _p2(B), _n2(B))
    cdef Py_ssize_t i, j
    if k == 0:
        with nogil:
            for i in range(m):
                for j in range(n):
                    C[i, j] = beta * C[i, j] if beta != 0 else 0
        return
    with nogil:
        _sgemm(trans_a, trans_b, <int>m, <int>n, <int>k, alpha, &A[0, 0], <int>A.shape[1],
               &B[0, 0], <int>B.shape[1], beta, &C[0, 0], <int>n)


def gemm_row_blocks(int rows, int d_in, int d_out):
    """Blocks of a Dense layer's training GEMMs split along its input rows (0: none)."""
    if rows < 0 or d_in < 0 or d_out < 0:
        raise ValueError(f"gemm_row_blocks: sizes must be >= 0, got ({rows}, {d_in}, {d_out})")
    return fnn_gemm_row_blocks(rows, d_in, d_out)


# ---- activations, dense layers -------------------------------------------------------------------
def act_forward(int act, float alpha, z, y):
    """y = act(z); y may be z itself (in place), not a shifted view of it."""
    _check_act(act)
    cdef const float[:, ::1] Z = _cf2("act_forward: z", z, True)
    cdef float[:, ::1] Y = _f2("act_forward: y", y, True)
    _same_shape("act_forward: y", _shape2(Y), _shape2(Z))
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        return
    _same_or_disjoint("act_forward: y", _p2(Y), _n2(Y), "z", _p2(Z), _n2(Z))
    with nogil:
        fnn_act_forward(act, alpha, &Z[0, 0], &Y[0, 0], Z.shape[0], Z.shape[1], _n_threads)


def bias_act_forward(int act, float alpha, z, y, bias=None, mean=None, var=None, gamma=None,
                     beta=None, float eps=0.0, residual=None):
    """A GEMM output's epilogue, each part optional: z += bias; with mean and var, z =
    (z - mean) * gamma / sqrt(var + eps) + beta (inference BatchNormalization; gamma, beta
    may be None); z += residual; y = act(z). y may be z itself."""
    _check_act(act)
    cdef float[:, ::1] Z = _f2("bias_act_forward: z", z, True)
    cdef float[:, ::1] Y = _f2("bias_act_forward: y", y, True)
    cdef const float[:, ::1] R = _cf2("bias_act_forward: residual", residual, False)
    cdef bint norm = mean is not None or var is not None
    cdef const float[::1] B = _cf1("bias_act_forward: bias", bias, False)
    cdef const float[::1] M = _cf1("bias_act_forward: mean", mean, norm)
    cdef const float[::1] V = _cf1("bias_act_forward: var", var, norm)
    cdef const float[::1] G = _cf1("bias_act_forward: gamma", gamma, False)
    cdef const float[::1] BE = _cf1("bias_act_forward: beta", beta, False)
    cdef tuple shape = _shape2(Z)
    cdef Py_ssize_t cols = Z.shape[1]
    _same_shape("bias_act_forward: y", _shape2(Y), shape)
    if R is not None:
        _same_shape("bias_act_forward: residual", _shape2(R), shape)
    for name, vec in (("bias", B), ("mean", M), ("var", V), ("gamma", G), ("beta", BE)):
        if vec is not None and vec.shape[0] != cols:
            raise ValueError(f"bias_act_forward: {name}: expected shape ({cols},), got "
                             f"({vec.shape[0]},)")
    if not eps >= 0:
        raise ValueError(f"bias_act_forward: eps must be >= 0, got {eps}")
    if shape[0] == 0 or cols == 0:
        return
    cdef size_t nb = _n2(Z)
    _same_or_disjoint("bias_act_forward: y", _p2(Y), _n2(Y), "z", _p2(Z), nb)
    outs = [("z", <size_t>_p2(Z), nb)] + \
        ([("y", <size_t>_p2(Y), nb)] if _p2(Y) != _p2(Z) else [])
    ins = [("residual", <size_t>_p2(R), _n2(R)), ("bias", <size_t>_p1(B), _n1(B)),
           ("mean", <size_t>_p1(M), _n1(M)), ("var", <size_t>_p1(V), _n1(V)),
           ("gamma", <size_t>_p1(G), _n1(G)), ("beta", <size_t>_p1(BE), _n1(BE))]
    _all_disjoint("bias_act_forward", outs, ins)
    cdef fnn_norm nm
    nm.mean, nm.var, nm.gamma, nm.beta, nm.eps = NULL, NULL, NULL, NULL, eps
    if norm:
        nm.mean, nm.var = &M[0], &V[0]
        nm.gamma = NULL if G is None else &G[0]
        nm.beta = NULL if BE is None else &BE[0]
    cdef const float *bp = NULL if B is None else &B[0]
    cdef const float *rp = NULL if R is None else &R[0, 0]
    cdef const fnn_norm *np_ = &nm if norm else NULL
    cdef int rc
    with nogil:
        rc = fnn_bias_act_forward(act, alpha, &Z[0, 0], bp, np_, rp, &Y[0, 0], Z.shape[0], cols,
                                  _n_threads)
    if rc != 0:
        raise MemoryError("bias_act_forward: out of memory")


def act_backward(int act, float alpha, z, y, dy, dz):
    """dz = dy * act'(z); z may be None for activations whose derivative is read off y. dz may
    be exactly dy, y or z (in place)."""
    _check_act(act)
    cdef bint need_z = fnn_activation_needs_input(act)
    cdef const float[:, ::1] Z = _cf2("act_backward: z", z, need_z)
    cdef const float[:, ::1] Y = _cf2("act_backward: y", y, True)
    cdef const float[:, ::1] DY = _cf2("act_backward: dy", dy, True)
    cdef float[:, ::1] DZ = _f2("act_backward: dz", dz, True)
    cdef tuple shape = _shape2(Y)
    _same_shape("act_backward: dy", _shape2(DY), shape)
    _same_shape("act_backward: dz", _shape2(DZ), shape)
    cdef const float *zp = NULL
    if Z is not None:
        _same_shape("act_backward: z", _shape2(Z), shape)
    if shape[0] == 0 or shape[1] == 0:
        return
    if Z is not None:
        zp = &Z[0, 0]
    cdef const void *dzp = _p2(DZ)
    cdef size_t nb = _n2(DZ)
    _same_or_disjoint("act_backward: dz", dzp, nb, "dy", _p2(DY), nb)
    _same_or_disjoint("act_backward: dz", dzp, nb, "y", _p2(Y), nb)
    _same_or_disjoint("act_backward: dz", dzp, nb, "z", _p2(Z), _n2(Z))
    with nogil:
        fnn_act_backward(act, alpha, zp, &Y[0, 0], &DY[0, 0], &DZ[0, 0], Y.shape[0],
                         Y.shape[1], _n_threads)


def column_sum(a, out):
    cdef const float[:, ::1] A = _cf2("column_sum: a", a, True)
    cdef float[::1] O = _f1("column_sum: out", out, True)
    if O.shape[0] != A.shape[1]:
        raise ValueError(f"column_sum: out: expected shape ({A.shape[1]},), got "
                         f"({O.shape[0]},)")
    if A.shape[1] == 0:
        return
    if A.shape[0] == 0:
        O[:] = 0
        return
    _disjoint("column_sum: out", _p1(O), _n1(O), "a", _p2(A), _n2(A))
    with nogil:
        fnn_column_sum(&A[0, 0], &O[0], A.shape[0], A.shape[1], _n_threads)


def dense_forward(x, kernel, bias, z, y, int act, float alpha, bint training=False):
    """z = x @ kernel + bias; y = act(z). y may be z itself when act's backward only needs y.
    training splits the GEMM as the layer's backward pass does (see fnn_gemm_row_blocks)."""
    _check_act(act)
    cdef const float[:, ::1] X = _cf2("dense_forward: x", x, True)
    cdef const float[:, ::1] K = _cf2("dense_forward: kernel", kernel, True)
    cdef const float[::1] B = _cf1("dense_forward: bias", bias, False)
    cdef float[:, ::1] Z = _f2("dense_forward: z", z, True)
    cdef float[:, ::1] Y = _f2("dense_forward: y", y, True)
    _need_blas()
    cdef Py_ssize_t rows = X.shape[0], d_in = X.shape[1], d_out = K.shape[1]
    _same_shape("dense_forward: kernel", _shape2(K), (d_in, d_out))
    _same_shape("dense_forward: z", _shape2(Z), (rows, d_out))
    _same_shape("dense_forward: y", _shape2(Y), (rows, d_out))
    if B is not None and B.shape[0] != d_out:
        raise ValueError(f"dense_forward: bias: expected shape ({d_out},), got ({B.shape[0]},)")
    _fits_int("dense_forward: x's rows", rows); _fits_int("dense_forward: x's columns", d_in)
    _fits_int("dense_forward: kernel's columns", d_out)
    if rows == 0 or d_out == 0:
        return
    if d_in == 0:
        raise ValueError("dense_forward: x has no features (shape (rows, 0))")
    cdef const void *zp = _p2(Z)
    cdef const void *yp = _p2(Y)
    cdef size_t nb = _n2(Z)
    _same_or_disjoint("dense_forward: y", yp, nb, "z", zp, nb)
    _disjoint("dense_forward: z", zp, nb, "x", _p2(X), _n2(X))
    _disjoint("dense_forward: z", zp, nb, "kernel", _p2(K), _n2(K))
    _disjoint("dense_forward: z", zp, nb, "bias", _p1(B), _n1(B))
    if yp != zp:
        _disjoint("dense_forward: y", yp, nb, "x", _p2(X), _n2(X))
        _disjoint("dense_forward: y", yp, nb, "kernel", _p2(K), _n2(K))
        _disjoint("dense_forward: y", yp, nb, "bias", _p1(B), _n1(B))
    cdef fnn_dense layer
    layer.d_in, layer.d_out, layer.act, layer.alpha = <int>d_in, <int>d_out, act, alpha
    layer.kernel, layer.bias, layer.d_kernel, layer.d_bias = &K[0, 0], NULL, NULL, NULL
    if B is not None:
        layer.bias = &B[0]
    with nogil:
        fnn_dense_forward(&layer, &X[0, 0], &Z[0, 0], &Y[0, 0], <int>rows, training, _n_threads)


def dense_backward(x, kernel, z, y, dy, dz, d_kernel, d_bias, dx, int act, float alpha,
                   float kernel_step=0.0):
    """From dy = dL/dy: dz = dy * act'(z) (dz may be dy, y or z itself), d_kernel = x^T dz,
    d_bias = column sums of dz, dx = dz kernel^T (skipped when dx is None; d_kernel too, when
    None: a data-parallel rank whose shard's gradient comes later, SharedStep.defer). kernel_step > 0:
    d_kernel -= kernel_step * x^T dz instead (pass the kernel as d_kernel for the plain SGD
    step in place; dx is computed from the kernel before it changes)."""
    _check_act(act)
    cdef bint need_z = fnn_activation_needs_input(act)
    cdef const float[:, ::1] X = _cf2("dense_backward: x", x, True)
    cdef const float[:, ::1] K = _cf2("dense_backward: kernel", kernel, True)
    cdef const float[:, ::1] Z = _cf2("dense_backward: z", z, need_z)
    cdef const float[:, ::1] Y = _cf2("dense_backward: y", y, True)
    cdef const float[:, ::1] DY = _cf2("dense_backward: dy", dy, True)
    cdef float[:, ::1] DZ = _f2("dense_backward: dz", dz, True)
    cdef float[:, ::1] DK = _f2("dense_backward: d_kernel", d_kernel, False)
    cdef float[::1] DB = _f1("dense_backward: d_bias", d_bias, False)
    cdef float[:, ::1] DX = _f2("dense_backward: dx", dx, False)
    _need_blas()
    cdef Py_ssize_t rows = X.shape[0], d_in = X.shape[1], d_out = K.shape[1]
    cdef tuple out_shape = (rows, d_out)
    _same_shape("dense_backward: kernel", _shape2(K), (d_in, d_out))
    _same_shape("dense_backward: y", _shape2(Y), out_shape)
    _same_shape("dense_backward: dy", _shape2(DY), out_shape)
    _same_shape("dense_backward: dz", _shape2(DZ), out_shape)
    if DK is not None:
        _same_shape("dense_backward: d_kernel", _shape2(DK), (d_in, d_out))
    elif kernel_step > 0:
        raise ValueError("dense_backward: kernel_step needs d_kernel (the kernel)")
    if DB is not None and DB.shape[0] != d_out:
        raise ValueError(f"dense_backward: d_bias: expected shape ({d_out},), got "
                         f"({DB.shape[0]},)")
    if DX is not None:
        _same_shape("dense_backward: dx", _shape2(DX), (rows, d_in))
    if Z is not None:
        _same_shape("dense_backward: z", _shape2(Z), out_shape)
    _fits_int("dense_backward: x's rows", rows); _fits_int("dense_backward: x's columns", d_in)
    _fits_int("dense_backward: kernel's columns", d_out)
    if rows == 0 or d_in == 0 or d_out == 0:
        raise ValueError(f"dense_backward: empty batch or layer (x {_shape2(X)}, kernel "
                         f"{_shape2(K)})")
    if not kernel_step >= 0 or kernel_step == float("inf"):
        raise ValueError(f"dense_backward: kernel_step must be a finite float >= 0, got "
                         f"{kernel_step}")
    # dz: elementwise from dy (and y, z), then read by both GEMMs: it may be exactly one of
    # those, never x or the kernel. dx, d_kernel, d_bias: written while other buffers are read.
    cdef const void *dzp = _p2(DZ)
    cdef size_t nz = _n2(DZ)
    _same_or_disjoint("dense_backward: dz", dzp, nz, "dy", _p2(DY), nz)
    _same_or_disjoint("dense_backward: dz", dzp, nz, "y", _p2(Y), nz)
    _same_or_disjoint("dense_backward: dz", dzp, nz, "z", _p2(Z), _n2(Z))
    _disjoint("dense_backward: dz", dzp, nz, "x", _p2(X), _n2(X))
    _disjoint("dense_backward: dz", dzp, nz, "kernel", _p2(K), _n2(K))
    cdef const void *dkp = _p2(DK)
    cdef size_t nk = _n2(DK)
    if kernel_step > 0:     # the designed in-place step: d_kernel is the kernel itself
        _same_or_disjoint("dense_backward: d_kernel", dkp, nk, "kernel", _p2(K), _n2(K))
    else:
        _disjoint("dense_backward: d_kernel", dkp, nk, "kernel", _p2(K), _n2(K))
    _disjoint("dense_backward: d_kernel", dkp, nk, "x", _p2(X), _n2(X))
    _disjoint("dense_backward: d_kernel", dkp, nk, "dz", dzp, nz)
    _disjoint("dense_backward: d_kernel", dkp, nk, "dy", _p2(DY), _n2(DY))
    _disjoint("dense_backward: d_kernel", dkp, nk, "y", _p2(Y), _n2(Y))
    _disjoint("dense_backward: d_kernel", dkp, nk, "z", _p2(Z), _n2(Z))
    _disjoint("dense_backward: d_kernel", dkp, nk, "d_bias", _p1(DB), _n1(DB))
    _disjoint("dense_backward: d_kernel", dkp, nk, "dx", _p2(DX), _n2(DX))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "dz", dzp, nz)
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "dx", _p2(DX), _n2(DX))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "kernel", _p2(K), _n2(K))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "x", _p2(X), _n2(X))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "dy", _p2(DY), _n2(DY))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "y", _p2(Y), _n2(Y))
    _disjoint("dense_backward: d_bias", _p1(DB), _n1(DB), "z", _p2(Z), _n2(Z))
    cdef const void *dxp_ = _p2(DX)
    cdef size_t nx = _n2(DX)
    if DX is not None:
        _disjoint("dense_backward: dx", dxp_, nx, "x", _p2(X), _n2(X))
        _disjoint("dense_backward: dx", dxp_, nx, "kernel", _p2(K), _n2(K))
        _disjoint("dense_backward: dx", dxp_, nx, "dz", dzp, nz)
        _disjoint("dense_backward: dx", dxp_, nx, "dy", _p2(DY), _n2(DY))
        _disjoint("dense_backward: dx", dxp_, nx, "y", _p2(Y), _n2(Y))
        _disjoint("dense_backward: dx", dxp_, nx, "z", _p2(Z), _n2(Z))
    cdef fnn_dense layer
    layer.d_in, layer.d_out, layer.act, layer.alpha = <int>d_in, <int>d_out, act, alpha
    layer.kernel, layer.bias, layer.d_kernel, layer.d_bias = &K[0, 0], NULL, \
        (&DK[0, 0] if DK is not None else NULL), NULL
    if DB is not None:
        layer.d_bias = &DB[0]
    cdef const float *zp = NULL if Z is None else &Z[0, 0]
    cdef float *dxp = NULL if DX is None else &DX[0, 0]
    with nogil:
        fnn_dense_backward(&layer, act, &X[0, 0], zp, &Y[0, 0], &DY[0, 0], &DZ[0, 0], dxp,
                           <int>rows, kernel_step, NULL, _n_threads)


# ---- losses --------------------------------------------------------------------------------------
cdef double _ordered_sum(const float[::1] v) noexcept nogil:
    cdef double s = 0
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        s += v[i]
    return s


cdef int _check_loss_args(str fn, const float[:, ::1] pred, const float[::1] weights,
                          float[::1] row_loss, float[:, ::1] grad) except -1:
    cdef Py_ssize_t rows = pred.shape[0]
    if row_loss.shape[0] != rows:
        raise ValueError(f"{fn}: row_loss: expected shape ({rows},), got "
                         f"({row_loss.shape[0]},)")
    if weights is not None and weights.shape[0] != rows:
        raise ValueError(f"{fn}: weights: expected shape ({rows},), got ({weights.shape[0]},)")
    if grad is not None:
        _same_shape(f"{fn}: grad", _shape2(grad), _shape2(pred))
    if rows == 0 or pred.shape[1] == 0:
        raise ValueError(f"{fn}: empty predictions (shape {_shape2(pred)})")
    # outputs: row_loss and grad, written while pred, targets and weights are read
    cdef const void *lp = _p1(row_loss)
    cdef size_t ln = _n1(row_loss)
    _disjoint(f"{fn}: row_loss", lp, ln, "the predictions", _p2(pred), _n2(pred))
    _disjoint(f"{fn}: row_loss", lp, ln, "weights", _p1(weights), _n1(weights))
    _disjoint(f"{fn}: row_loss", lp, ln, "grad", _p2(grad), _n2(grad))
    _disjoint(f"{fn}: grad", _p2(grad), _n2(grad), "the predictions", _p2(pred), _n2(pred))
    _disjoint(f"{fn}: grad", _p2(grad), _n2(grad), "weights", _p1(weights), _n1(weights))
    return 0


def softmax_xent_sparse(probs, labels, weights, float scale, row_loss, grad):
    """Sparse categorical cross-entropy on softmax outputs; grad (may be None) is with respect
    to the logits: scale * w * (p - onehot). Returns the ordered sum of weighted row losses."""
    cdef const float[:, ::1] P = _cf2("softmax_xent_sparse: probs", probs, True)
    cdef const int32_t[::1] L = _ci1("softmax_xent_sparse: labels", labels, True)
    cdef const float[::1] W = _cf1("softmax_xent_sparse: weights", weights, False)
    cdef float[::1] R = _f1("softmax_xent_sparse: row_loss", row_loss, True)
    cdef float[:, ::1] G = _f2("softmax_xent_sparse: grad", grad, False)
    _check_loss_args("softmax_xent_sparse", P, W, R, G)
    if L.shape[0] != P.shape[0]:
        raise ValueError(f"softmax_xent_sparse: labels: expected shape ({P.shape[0]},), got "
                         f"({L.shape[0]},)")
    cdef size_t ln = 4 * <size_t>L.shape[0]
    _disjoint("softmax_xent_sparse: row_loss", _p1(R), _n1(R), "labels", &L[0], ln)
    _disjoint("softmax_xent_sparse: grad", _p2(G), _n2(G), "labels", &L[0], ln)
    cdef const float *wp = NULL if W is None else &W[0]
    cdef float *gp = NULL if G is None else &G[0, 0]
    cdef int status
    with nogil:
        status = fnn_softmax_xent_sparse(&P[0, 0], &L[0], wp, scale, &R[0], gp,
                                         P.shape[0], P.shape[1], _n_threads)
    if status != 0:
        raise ValueError(f"softmax_xent_sparse: labels must be integers in [0, {P.shape[1]})")
    return _ordered_sum(R)


ctypedef int (*dense_loss_fn)(const float *, const float *, const float *, float, float *,
                              float *, size_t, size_t, int) noexcept nogil


cdef double _dense_loss(str fn_name, dense_loss_fn fn, pred, targets, weights, float scale,
                        row_loss, grad) except? -1:
    cdef const float[:, ::1] P = _cf2(fn_name + ": pred", pred, True)
    cdef const float[:, ::1] T = _cf2(fn_name + ": targets", targets, True)
    cdef const float[::1] W = _cf1(fn_name + ": weights", weights, False)
    cdef float[::1] R = _f1(fn_name + ": row_loss", row_loss, True)
    cdef float[:, ::1] G = _f2(fn_name + ": grad", grad, False)
    _check_loss_args(fn_name, P, W, R, G)
    _same_shape(fn_name + ": targets", _shape2(T), _shape2(P))
    _disjoint(fn_name + ": row_loss", _p1(R), _n1(R), "targets", _p2(T), _n2(T))
    _disjoint(fn_name + ": grad", _p2(G), _n2(G), "targets", _p2(T), _n2(T))
    cdef const float *wp = NULL if W is None else &W[0]
    cdef float *gp = NULL if G is None else &G[0, 0]
    with nogil:
        fn(&P[0, 0], &T[0, 0], wp, scale, &R[0], gp, P.shape[0], P.shape[1], _n_threads)
    return _ordered_sum(R)


def softmax_xent_dense(probs, targets, weights, float scale, row_loss, grad):
    return _dense_loss("softmax_xent_dense", fnn_softmax_xent_dense, probs, targets, weights,
                       scale, row_loss, grad)


def sigmoid_bxent(probs, targets, weights, float scale, row_loss, grad):
    return _dense_loss("sigmoid_bxent", fnn_sigmoid_bxent, probs, targets, weights, scale,
                       row_loss, grad)


def squared_error(pred, targets, weights, float scale, row_loss, grad):
    return _dense_loss("squared_error", fnn_squared_error, pred, targets, weights, scale,
                       row_loss, grad)


def absolute_error(pred, targets, weights, float scale, row_loss, grad):
    return _dense_loss("absolute_error", fnn_absolute_error, pred, targets, weights, scale,
                       row_loss, grad)


# ---- optimizer updates ---------------------------------------------------------------------------
# w (updated), g (read) and the slots (updated; a required slot may not be None, an optional
# one is None or w's size) are all separate buffers of one length.
cdef int _check_update(str fn, float[::1] w, const float[::1] g, tuple names, tuple slots,
                       tuple required) except -1:
    cdef Py_ssize_t n = w.shape[0], i, j
    cdef float[::1] s
    cdef list ptrs = [(<size_t>_p1(w), "w"), (<size_t>_p1(g), "g")]
    if g.shape[0] != n:
        raise ValueError(f"{fn}: g (the gradient): expected shape ({n},) like w, got "
                         f"({g.shape[0]},)")
    for i in range(len(slots)):
        s = slots[i]
        if s is None:
            continue
        if s.shape[0] != n:
            raise ValueError(f"{fn}: {names[i]}: expected shape ({n},) like w, got "
                             f"({s.shape[0]},)")
        ptrs.append((<size_t>_p1(s), names[i]))
    if n == 0:
        return 0
    cdef size_t nb = 4 * <size_t>n
    for i in range(len(ptrs)):
        for j in range(i + 1, len(ptrs)):
            if ptrs[i][0] != 0 and ptrs[j][0] != 0:
                _disjoint(f"{fn}: {ptrs[i][1]}", <const void *><size_t>ptrs[i][0], nb,
                          ptrs[j][1], <const void *><size_t>ptrs[j][0], nb)
    return 0


cdef inline float *_ptr(float[::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0]


def sgd_update(w, g, m, float lr, float momentum, bint nesterov):
    """m (the momentum slot) is required when momentum != 0, else unused (may be None)."""
    cdef float[::1] W = _f1("sgd_update: w", w, True)
    cdef const float[::1] G = _cf1("sgd_update: g", g, True)
    cdef float[::1] M = _f1("sgd_update: m", m, momentum != 0)
    _check_update("sgd_update", W, G, ("m",), (M,), (momentum != 0,))
    if W.shape[0] == 0:
        return
    cdef float *mp = _ptr(M)
    with nogil:
        fnn_sgd_update(&W[0], &G[0], mp, W.shape[0], lr, momentum, nesterov, 1.0, INFINITY, NULL,
                       _n_threads)


def adam_update(w, g, m, v, vmax, float alpha, float beta1, float beta2, float eps):
    """vmax (AMSGrad's slot) may be None."""
    cdef float[::1] W = _f1("adam_update: w", w, True)
    cdef const float[::1] G = _cf1("adam_update: g", g, True)
    cdef float[::1] M = _f1("adam_update: m", m, True)
    cdef float[::1] V = _f1("adam_update: v", v, True)
    cdef float[::1] VM = _f1("adam_update: vmax", vmax, False)
    _check_update("adam_update", W, G, ("m", "v", "vmax"), (M, V, VM), ())
    if W.shape[0] == 0:
        return
    cdef float *vmp = _ptr(VM)
    with nogil:
        fnn_adam_update(&W[0], &G[0], &M[0], &V[0], vmp, W.shape[0], alpha, beta1, beta2, eps,
                 1.0, INFINITY, NULL, _n_threads)


def rmsprop_update(w, g, v, mom, mg, float lr, float rho, float momentum, float eps):
    """mom is required when momentum > 0 (else unused); mg (centered) may be None."""
    cdef float[::1] W = _f1("rmsprop_update: w", w, True)
    cdef const float[::1] G = _cf1("rmsprop_update: g", g, True)
    cdef float[::1] V = _f1("rmsprop_update: v", v, True)
    cdef float[::1] MOM = _f1("rmsprop_update: mom", mom, momentum > 0)
    cdef float[::1] MG = _f1("rmsprop_update: mg", mg, False)
    _check_update("rmsprop_update", W, G, ("v", "mom", "mg"), (V, MOM, MG), ())
    if W.shape[0] == 0:
        return
    cdef float *momp = _ptr(MOM)
    cdef float *mgp = _ptr(MG)
    with nogil:
        fnn_rmsprop_update(&W[0], &G[0], &V[0], momp, mgp, W.shape[0], lr, rho, momentum,
                    eps, 1.0, INFINITY, NULL, _n_threads)


def adagrad_update(w, g, acc, float lr, float eps):
    cdef float[::1] W = _f1("adagrad_update: w", w, True)
    cdef const float[::1] G = _cf1("adagrad_update: g", g, True)
    cdef float[::1] A = _f1("adagrad_update: acc", acc, True)
    _check_update("adagrad_update", W, G, ("acc",), (A,), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_adagrad_update(&W[0], &G[0], &A[0], W.shape[0], lr, eps, 1.0, INFINITY, NULL,
                           _n_threads)


def adadelta_update(w, g, acc_g, acc_dx, float lr, float rho, float eps):
    cdef float[::1] W = _f1("adadelta_update: w", w, True)
    cdef const float[::1] G = _cf1("adadelta_update: g", g, True)
    cdef float[::1] AG = _f1("adadelta_update: acc_g", acc_g, True)
    cdef float[::1] AD = _f1("adadelta_update: acc_dx", acc_dx, True)
    _check_update("adadelta_update", W, G, ("acc_g", "acc_dx"), (AG, AD), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_adadelta_update(&W[0], &G[0], &AG[0], &AD[0], W.shape[0], lr, rho, eps,
                     1.0, INFINITY, NULL, _n_threads)


def adamax_update(w, g, m, u, float alpha, float beta1, float beta2, float eps):
    cdef float[::1] W = _f1("adamax_update: w", w, True)
    cdef const float[::1] G = _cf1("adamax_update: g", g, True)
    cdef float[::1] M = _f1("adamax_update: m", m, True)
    cdef float[::1] U = _f1("adamax_update: u", u, True)
    _check_update("adamax_update", W, G, ("m", "u"), (M, U), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_adamax_update(&W[0], &G[0], &M[0], &U[0], W.shape[0], alpha, beta1, beta2, eps,
                   1.0, INFINITY, NULL, _n_threads)


def lion_update(w, g, m, float lr, float beta1, float beta2):
    cdef float[::1] W = _f1("lion_update: w", w, True)
    cdef const float[::1] G = _cf1("lion_update: g", g, True)
    cdef float[::1] M = _f1("lion_update: m", m, True)
    _check_update("lion_update", W, G, ("m",), (M,), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_lion_update(&W[0], &G[0], &M[0], W.shape[0], lr, beta1, beta2, 1.0, INFINITY, NULL,
                        _n_threads)


def nadam_update(w, g, m, v, float lr, float beta1, float beta2, float eps, float mu_t,
                 float mu_t1, float u_prod, float u_prod_t1, float beta2_power):
    cdef float[::1] W = _f1("nadam_update: w", w, True)
    cdef const float[::1] G = _cf1("nadam_update: g", g, True)
    cdef float[::1] M = _f1("nadam_update: m", m, True)
    cdef float[::1] V = _f1("nadam_update: v", v, True)
    _check_update("nadam_update", W, G, ("m", "v"), (M, V), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_nadam_update(&W[0], &G[0], &M[0], &V[0], W.shape[0], lr, beta1, beta2, eps, mu_t, mu_t1,
                  u_prod, u_prod_t1, beta2_power, 1.0, INFINITY, NULL, _n_threads)


def ftrl_update(w, g, acc, lin, float lr, float lr_power, float l1, float l2,
                float l2_shrinkage, float beta):
    cdef float[::1] W = _f1("ftrl_update: w", w, True)
    cdef const float[::1] G = _cf1("ftrl_update: g", g, True)
    cdef float[::1] A = _f1("ftrl_update: acc", acc, True)
    cdef float[::1] L = _f1("ftrl_update: lin", lin, True)
    _check_update("ftrl_update", W, G, ("acc", "lin"), (A, L), ())
    if W.shape[0] == 0:
        return
    with nogil:
        fnn_ftrl_update(&W[0], &G[0], &A[0], &L[0], W.shape[0], lr, lr_power, l1, l2,
                 l2_shrinkage, beta, 1.0, INFINITY, NULL, _n_threads)


# Optimizer slots each kind needs (the rest are optional, see fnn_optimizer_step): SGD's
# momentum slot and RMSprop's second one are needed only with momentum, checked per step.
cdef int[9] _REQUIRED_SLOTS = [0, 2, 1, 1, 2, 2, 2, 2, 1]


CLIP_NONE, CLIP_VALUE, CLIP_NORM, CLIP_GLOBAL_NORM = (FNN_CLIP_NONE, FNN_CLIP_VALUE,
                                                     FNN_CLIP_NORM, FNN_CLIP_GLOBAL_NORM)


def optimizer_update(int kind, w, g, slots, scalars, int clip_mode, float limit, sizes):
    """One step of optimizer `kind` (fnn_optimizer_step's ids) over the variables of `sizes`
    laid out back to back in w, g and the slots (a tuple in the kernel's order, None for
    unused ones), with scalars (float32: the weight decay factor, then the kind's own) and
    Keras's clipping (CLIP_*, limit > 0): clipnorm and global_clipnorm read the gradient once
    for their norms, clipvalue clamps it as the update reads it (fnn_optimizer_update)."""
    fn = "optimizer_update"
    n_scalars = fnn_optimizer_scalars(kind)
    if n_scalars < 0:
        raise ValueError(f"{fn}: kind: unknown optimizer kind {kind}")
    if not FNN_CLIP_NONE <= clip_mode <= FNN_CLIP_GLOBAL_NORM:
        raise ValueError(f"{fn}: clip_mode: expected one of 0-3 (CLIP_*), got {clip_mode}")
    if clip_mode != FNN_CLIP_NONE and not (limit > 0 and isfinite(limit)):
        raise ValueError(f"{fn}: limit: expected a finite float > 0 with clip_mode "
                         f"{clip_mode}, got {limit}")
    cdef float[::1] W = _f1(f"{fn}: w", w, True)
    cdef const float[::1] G = _cf1(f"{fn}: g", g, True)
    cdef const float[::1] SC = _cf1(f"{fn}: scalars", scalars, True)
    if SC.shape[0] != n_scalars:
        raise ValueError(f"{fn}: scalars: expected shape ({n_scalars},) for optimizer kind "
                         f"{kind}, got ({SC.shape[0]},)")
    if not isinstance(slots, (tuple, list)):
        raise TypeError(f"{fn}: slots: expected a tuple of float32 arrays or None, got "
                        f"{_describe(slots)}")
    if len(slots) > FNN_OPT_SLOTS:
        raise ValueError(f"{fn}: slots: expected at most {FNN_OPT_SLOTS}, got {len(slots)}")
    cdef float[::1] S0 = _f1(f"{fn}: slots[0]", slots[0] if len(slots) > 0 else None,
                             _REQUIRED_SLOTS[kind] > 0 or
                             kind == FNN_OPT_SGD and SC[2] != 0)
    cdef float[::1] S1 = _f1(f"{fn}: slots[1]", slots[1] if len(slots) > 1 else None,
                             _REQUIRED_SLOTS[kind] > 1 or
                             kind == FNN_OPT_RMSPROP and SC[3] > 0)
    cdef float[::1] S2 = _f1(f"{fn}: slots[2]", slots[2] if len(slots) > 2 else None,
                             _REQUIRED_SLOTS[kind] > 2)
    _check_update(fn, W, G, ("slots[0]", "slots[1]", "slots[2]"), (S0, S1, S2), ())
    _all_disjoint(fn, [("w", <size_t>_p1(W), _n1(W)), ("slots[0]", <size_t>_p1(S0), _n1(S0)),
                       ("slots[1]", <size_t>_p1(S1), _n1(S1)),
                       ("slots[2]", <size_t>_p1(S2), _n1(S2))],
                  [("scalars", <size_t>&SC[0], 4 * <size_t>SC.shape[0])])
    try:
        n_vars = len(sizes)
    except TypeError:
        raise TypeError(f"{fn}: sizes: expected a sequence of ints, got "
                        f"{_describe(sizes)}") from None
    _fits_int(f"{fn}: sizes (variables)", n_vars)
    cdef size_t *sp = <size_t *>calloc(max(1, n_vars), sizeof(size_t))
    if sp == NULL:
        raise MemoryError()
    cdef Py_ssize_t v, size, total = 0
    cdef float *ptrs[3]
    ptrs[0], ptrs[1], ptrs[2] = _ptr(S0), _ptr(S1), _ptr(S2)
    try:
        for v in range(n_vars):
            size = operator.index(sizes[v])     # (a float or a string is a TypeError)
            if size < 0 or size > W.shape[0] - total:
                raise ValueError(f"{fn}: sizes: expected sizes >= 0 adding up to len(w) = "
                                 f"{W.shape[0]}, got {list(sizes)[:8]}")
            sp[v] = <size_t>size
            total += size
        if total != W.shape[0]:
            raise ValueError(f"{fn}: sizes: expected sizes >= 0 adding up to len(w) = "
                             f"{W.shape[0]}, got {list(sizes)[:8]}")
        if total == 0:
            return
        with nogil:
            fnn_optimizer_update(kind, &W[0], &G[0], ptrs, sp, <int>n_vars, &SC[0], clip_mode,
                                limit, _n_threads)
    finally:
        free(sp)


cdef int _check_momentum_slots(str fn, int kind, bint slot0, bint slot1,
                               const float *sc) except -1:
    """The slots a step's scalars need beyond the kind's own (as optimizer_update checks)."""
    if kind == FNN_OPT_SGD and not slot0 and sc[2] != 0:
        raise ValueError(f"{fn}: SGD with momentum needs its momentum slot (slots[0])")
    if kind == FNN_OPT_RMSPROP and not slot1 and sc[3] > 0:
        raise ValueError(f"{fn}: RMSprop with momentum needs its momentum slot (slots[1])")
    return 0


def shard_supported():
    """Whether this build has SharedStep's barrier (GCC/Clang atomics; not MSVC builds)."""
    return bool(fnn_shard_supported())


cdef class SharedStep:
    """One rank's step of a data-parallel shared arena (csrc/shard.c: fastnn.distribution's
    _SharedArena), without Python: the sums of its shard [lo, hi) of the columns over the
    ranks' gradient rows and the optimizer update of that shard, between barriers that spin
    on `control` (in the shared window) and check that the peers' processes live.

    SharedStep(kind, params, slots, rows, control, rank, clip_mode=0, limit=0.0, watch=True):
    params (n float32: the shared parameters), slots (a tuple of up to 3, None or n float32,
    in optimizer_update's order), rows (ranks x (n + 2 or more) float32, C order: each rank's
    gradients, flag and scale, then any padding), control (2 + ranks uint32: zeroed by one rank before any
    barrier, then each rank's process id at 2 + rank), clip_mode CLIP_NONE or CLIP_VALUE (the
    norms need the whole gradient); watch: check the peers' processes while waiting (False
    when their ids are not visible here: another pid namespace). Every argument must stay
    alive and in place for the SharedStep's life (it keeps references)."""
    cdef fnn_shard s
    cdef object _keep, _keep_outer
    cdef bint _slot0, _slot1
    cdef fnn_shard_outer *_outer

    def __dealloc__(self):
        free(self._outer)

    def defer(self, kernels):
        """The kernels whose gradients the ranks do not sum (fnn_shard_outer): a list, in
        arena order, of (at, max_rows, count, x, dz[, z_parts, dx_all]) - the kernel's first
        weight in the arena, the rows each rank's region holds, and float32 arrays: count
        (ranks: each rank's rows this step), x (ranks, max_rows, d_in), dz (ranks, max_rows,
        d_out), which every rank fills for its rows before reduce. Each rank's shard of such a
        kernel is then computed from the ranks' rows instead of summed. With z_parts (ranks,
        ranks, max_rows, d_out) and dx_all (ranks, max_rows, d_in), split_forward and
        split_backward run for it. An empty list: none."""
        import numpy as np
        fn = "SharedStep.defer"
        cdef Py_ssize_t i, n = len(kernels)
        cdef float[::1] P
        cdef fnn_shard_outer *out = <fnn_shard_outer *>calloc(max(n, 1),
                                                             sizeof(fnn_shard_outer))
        cdef float[::1] C
        cdef float[:, :, ::1] X
        cdef float[:, :, ::1] DZ
        cdef float[:, :, :, ::1] ZP
        cdef float[:, :, ::1] DX
        cdef size_t end = 0
        if out == NULL:
            raise MemoryError()
        keep = []
        try:
            for i in range(n):
                at, max_rows, count, x, dz = kernels[i][:5]
                z_parts, dx_all = (tuple(kernels[i][5:]) + (None, None))[:2]
                C = _f1(f"{fn}: count", count, True)
                X, DZ = x, dz
                if C.shape[0] != self.s.ranks or X.shape[0] != self.s.ranks or \
                        DZ.shape[0] != self.s.ranks or X.shape[1] != max_rows or \
                        DZ.shape[1] != max_rows or max_rows < 1:
                    raise ValueError(f"{fn}: kernel {i}: expected count ({self.s.ranks},), x "
                                     f"({self.s.ranks}, {max_rows}, d_in) and dz "
                                     f"({self.s.ranks}, {max_rows}, d_out)")
                if at < end or at + X.shape[2] * DZ.shape[2] > self.s.n or X.shape[2] < 1 or \
                        DZ.shape[2] < 1:
                    raise ValueError(f"{fn}: kernel {i}: its {X.shape[2]} x {DZ.shape[2]} "
                                     f"weights from {at} are not in the arena after the last")
                if (z_parts is None) != (dx_all is None):
                    raise ValueError(f"{fn}: kernel {i}: z_parts and dx_all go together")
                part = np.empty(DZ.shape[2], np.float32)
                P = part
                out[i].at, out[i].d_in, out[i].d_out = at, X.shape[2], DZ.shape[2]
                out[i].max_rows, out[i].count = max_rows, &C[0]
                out[i].x, out[i].dz = &X[0, 0, 0], &DZ[0, 0, 0]
                out[i].part = &P[0]
                out[i].z_parts = out[i].dx_all = NULL
                if z_parts is not None:
                    ZP, DX = z_parts, dx_all
                    if tuple(z_parts.shape) != (self.s.ranks, self.s.ranks, max_rows,
                                                DZ.shape[2]) or \
                            tuple(dx_all.shape) != (self.s.ranks, max_rows, X.shape[2]):
                        raise ValueError(
                            f"{fn}: kernel {i}: expected z_parts ({self.s.ranks}, "
                            f"{self.s.ranks}, {max_rows}, {DZ.shape[2]}) and dx_all "
                            f"({self.s.ranks}, {max_rows}, {X.shape[2]}), got "
                            f"{tuple(z_parts.shape)} and {tuple(dx_all.shape)}")
                    out[i].z_parts, out[i].dx_all = &ZP[0, 0, 0, 0], &DX[0, 0, 0]
                end = at + X.shape[2] * DZ.shape[2]
                keep.append((count, x, dz, part, z_parts, dx_all))
        except BaseException:
            free(out)
            raise
        free(self._outer)
        self._outer, self._keep_outer = out, keep
        self.s.outer, self.s.n_outer = (out if n else NULL), n

    def __init__(self, int kind, params, slots, rows, control, int rank, int clip_mode=0,
                 float limit=0.0, bint watch=True):
        fn = "SharedStep"
        if not fnn_shard_supported():
            raise RuntimeError(f"{fn}: this build has no atomics for the barrier (MSVC)")
        if fnn_optimizer_scalars(kind) < 0:
            raise ValueError(f"{fn}: kind: unknown optimizer kind {kind}")
        if clip_mode not in (FNN_CLIP_NONE, FNN_CLIP_VALUE):
            raise ValueError(f"{fn}: clip_mode: expected CLIP_NONE or CLIP_VALUE (norms need "
                             f"the whole gradient), got {clip_mode}")
        if clip_mode == FNN_CLIP_VALUE and not (limit > 0 and isfinite(limit)):
            raise ValueError(f"{fn}: limit: expected a finite float > 0 with CLIP_VALUE, got "
                             f"{limit}")
        cdef float[::1] P = _f1(f"{fn}: params", params, True)
        cdef float[:, ::1] R = _f2(f"{fn}: rows", rows, True)
        cdef Py_ssize_t n = P.shape[0]
        if R.shape[0] < 1 or R.shape[1] < n + 2:
            raise ValueError(f"{fn}: rows: expected (ranks >= 1, >= {n + 2}) for {n} parameters, "
                             f"got {_shape2(R)}")
        cdef int ranks = <int>R.shape[0]
        if not 0 <= rank < ranks:
            raise ValueError(f"{fn}: rank: expected 0 <= rank < {ranks}, got {rank}")
        cdef unsigned int[::1] C
        try:
            C = control
        except Exception:
            raise TypeError(f"{fn}: control: expected a writable C-contiguous uint32 array, "
                            f"got {_describe(control)}") from None
        if C.shape[0] != 2 + ranks:
            raise ValueError(f"{fn}: control: expected shape ({2 + ranks},) for {ranks} "
                             f"ranks, got ({C.shape[0]},)")
        if not isinstance(slots, (tuple, list)) or len(slots) > FNN_OPT_SLOTS:
            raise TypeError(f"{fn}: slots: expected a tuple of at most {FNN_OPT_SLOTS} float32 "
                            f"arrays or None, got {_describe(slots)}")
        outs = [("params", <size_t>_p1(P), 4 * <size_t>n),
                ("rows", <size_t>&R[0, 0], 4 * <size_t>R.shape[0] * <size_t>R.shape[1]),
                ("control", <size_t>&C[0], 4 * <size_t>C.shape[0])]
        cdef float[::1] S
        cdef int j
        self.s.params = &P[0] if n else NULL
        for j in range(FNN_OPT_SLOTS):
            S = _f1(f"{fn}: slots[{j}]", slots[j] if j < len(slots) else None,
                    _REQUIRED_SLOTS[kind] > j)
            if S is not None and S.shape[0] != n:
                raise ValueError(f"{fn}: slots[{j}]: expected shape ({n},), got "
                                 f"({S.shape[0]},)")
            self.s.slots[j] = NULL if S is None or n == 0 else &S[0]
            if S is not None:
                outs.append((f"slots[{j}]", <size_t>_p1(S), 4 * <size_t>n))
        _all_disjoint(fn, outs)
        self._slot0 = self.s.slots[0] != NULL
        self._slot1 = self.s.slots[1] != NULL
        self.s.rows, self.s.control = &R[0, 0], <uint32_t *>&C[0]
        self.s.n, self.s.ranks, self.s.rank, self.s.stride = n, ranks, rank, R.shape[1]
        self.s.lo, self.s.hi = n * rank // ranks, n * (rank + 1) // ranks
        self.s.kind, self.s.clip_mode, self.s.clip_limit = kind, clip_mode, limit
        self.s.watch, self.s.dead, self.s.seconds, self.s.waited = watch, -1, 0.0, 0.0
        self._keep = (params, tuple(slots), rows, control)

    @property
    def shard(self):
        """This rank's columns (lo, hi)."""
        return self.s.lo, self.s.hi

    @property
    def seconds(self):
        """Seconds spent in reduce and update (with the steps of a DenseStack.run; when the
        stack exchanges activations, in its barriers: what the exchange costs beyond the
        arithmetic), since made or last set."""
        return self.s.seconds

    @seconds.setter
    def seconds(self, double value):
        self.s.seconds = value

    @property
    def waited(self):
        """Of `seconds`, those spent waiting at barriers for the last rank (0 for the rank
        that arrives last): the rest is this rank's sums and update, and the barriers' own
        cost."""
        return self.s.waited

    @waited.setter
    def waited(self, double value):
        self.s.waited = value

    cdef _gone(self):
        """The error of a failed step: a peer's process gone (s.dead), or else (-3 of the C
        calls, every rank alike) a deferred kernel's row counts outside its regions."""
        k = self.s.dead
        if k < 0:
            return ValueError("fastnn.distribution: a deferred Dense kernel's row counts are "
                              "not within its regions' rows")
        pid = (<int32_t *>self.s.control)[2 + k]
        return RuntimeError(f"fastnn.distribution: rank {k} of {self.s.ranks} is gone (its "
                            f"process {pid} ended) while rank {self.s.rank} waited for it at "
                            "a barrier of the shared arena")

    def barrier(self):
        """Wait for every rank (RuntimeError naming a rank whose process is gone)."""
        cdef int rc
        with nogil:
            rc = fnn_shard_barrier(&self.s)
        if rc != 0:
            raise self._gone()

    def split_forward(self, int i, z):
        """Deferred kernel i's forward product split by kernel rows (fnn_shard_split_forward):
        every rank calls it for each step, in the same order; z: float32 (this rank's rows
        this step, d_out), the layer's pre-activation without its bias."""
        cdef const fnn_shard_outer *o = self._split("SharedStep.split_forward", i)
        cdef float[:, ::1] Z = _f2("SharedStep.split_forward: z", z, True)
        cdef int rows = <int>o.count[self.s.rank]
        if Z.shape[0] != rows or Z.shape[1] != o.d_out:
            raise ValueError(f"SharedStep.split_forward: z: expected ({rows}, {o.d_out}), "
                             f"got {_shape2(Z)}")
        cdef int rc
        cdef float *zp = &Z[0, 0] if rows > 0 else NULL
        with nogil:
            rc = fnn_shard_split_forward(&self.s, i, zp, _n_threads)
        self._split_done("SharedStep.split_forward", i, rc)

    def split_backward(self, int i):
        """Deferred kernel i's input gradient split by kernel rows (fnn_shard_split_backward):
        after it, this rank's rows of its dx_all are every column's."""
        self._split("SharedStep.split_backward", i)
        cdef int rc
        with nogil:
            rc = fnn_shard_split_backward(&self.s, i, _n_threads)
        self._split_done("SharedStep.split_backward", i, rc)

    cdef _split_done(self, str fn, int i, int rc):
        if rc == -3:
            raise ValueError(f"{fn}: kernel {i}: a rank's count is not in [0, "
                             f"{self.s.outer[i].max_rows}]")
        if rc != 0:
            raise self._gone()

    cdef const fnn_shard_outer *_split(self, str fn, int i) except NULL:
        if i < 0 or i >= self.s.n_outer:
            raise ValueError(f"{fn}: i: expected a deferred kernel in [0, {self.s.n_outer}), "
                             f"got {i}")
        cdef const fnn_shard_outer *o = &self.s.outer[i]
        if o.z_parts == NULL:
            raise ValueError(f"{fn}: kernel {i} was deferred without z_parts and dx_all")
        cdef float rows = o.count[self.s.rank]
        if not 0 <= rows <= o.max_rows:
            raise ValueError(f"{fn}: kernel {i}: this rank's count {rows} is not in "
                             f"[0, {o.max_rows}]")
        return o

    def reduce(self, float scale, bint bad):
        """This rank's row is written (its gradients, to be multiplied by `scale`; bad: its
        loss was not finite): after a barrier, the scaled sum of every rank's row over this
        rank's shard, in its row there. Returns True (nothing summed, after a second
        barrier) when any rank's loss was not finite."""
        cdef int rc
        with nogil:
            rc = fnn_shard_reduce(&self.s, scale, bad, _n_threads)
        if rc < 0:
            raise self._gone()
        return rc == 1

    def update(self, scalars):
        """The optimizer step of this rank's shard from its summed gradients (scalars:
        float32, the weight decay factor then the kind's own), then a barrier."""
        cdef const float[::1] SC = _cf1("SharedStep.update: scalars", scalars, True)
        if SC.shape[0] != fnn_optimizer_scalars(self.s.kind):
            raise ValueError(f"SharedStep.update: scalars: expected shape "
                             f"({fnn_optimizer_scalars(self.s.kind)},) for optimizer kind "
                             f"{self.s.kind}, got ({SC.shape[0]},)")
        _check_momentum_slots("SharedStep.update", self.s.kind, self._slot0, self._slot1,
                              &SC[0])
        cdef int rc
        with nogil:
            rc = fnn_shard_update(&self.s, &SC[0], _n_threads)
        if rc != 0:
            raise self._gone()

    def __call__(self, scalars):
        """A DenseStack.run reduction step (fnn_shard_step; the stack calls it in C): reduce
        with scale 1 and this rank's flag as its row holds it, then update. Returns True
        when it stepped; False when a rank's loss was not finite (this rank's flag set)."""
        cdef const float[::1] SC = _cf1("SharedStep: scalars", scalars, True)
        if SC.shape[0] != fnn_optimizer_scalars(self.s.kind):
            raise ValueError(f"SharedStep: scalars: expected shape "
                             f"({fnn_optimizer_scalars(self.s.kind)},), got ({SC.shape[0]},)")
        _check_momentum_slots("SharedStep", self.s.kind, self._slot0, self._slot1, &SC[0])
        cdef int rc
        with nogil:
            rc = fnn_shard_step(&self.s, &SC[0], _n_threads)
        if rc < 0:
            raise self._gone()
        return rc == 1


cdef int _shard_stack_reduce(void *ctx, const float *scalars) noexcept nogil:
    """fnn_stack_data.reduce with a SharedStep: the whole step in C, without the GIL."""
    return fnn_shard_step(<fnn_shard *>ctx, scalars, _n_threads)


def l1l2_penalty(w, g, float l1, float l2):
    """Keras's l1/l2 weight penalty l1 * sum|w| + l2 * sum w^2 (as a float, summed in double);
    with g (w's shape, writable), its gradient l1 * sign(w) + 2 * l2 * w is added to g
    (fnn_l1l2_penalty)."""
    fn = "l1l2_penalty"
    import numpy as np
    for name, a, writable in (("w", w, False), ("g", g, True)):
        if a is None and name == "g":
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise TypeError(f"{fn}: {name}: expected a C-contiguous float32 array, got "
                            f"{_describe(a)}")
        if not a.flags.c_contiguous or (writable and not a.flags.writeable):
            raise ValueError(f"{fn}: {name}: expected a C-contiguous"
                             f"{' writable' if writable else ''} float32 array, got "
                             f"{_describe(a)}")
    if g is not None and g.shape != w.shape:
        raise ValueError(f"{fn}: g: expected shape {w.shape} like w, got {g.shape}")
    if not (l1 >= 0 and isfinite(l1) and l2 >= 0 and isfinite(l2)):
        raise ValueError(f"{fn}: l1, l2: expected finite floats >= 0, got {l1}, {l2}")
    if w.size == 0:
        return 0.0
    cdef const float[::1] WV = w.reshape(-1)
    cdef float[::1] GV = None if g is None else g.reshape(-1)
    cdef size_t n = WV.shape[0]
    if GV is not None:
        _disjoint(f"{fn}: g", &GV[0], 4 * n, "w", &WV[0], 4 * n)
    cdef float *gp = NULL if GV is None else &GV[0]
    cdef double total
    with nogil:
        total = fnn_l1l2_penalty(&WV[0], gp, n, l1, l2, _n_threads)
    return total


# ---- convolution, pooling, batch normalization -------------------------------------------------
cdef fnn_conv_geom _geom(str fn, tuple x_shape, window, bint dilated=False) except *:
    """window = (kh, kw, sh, sw, pad_top, pad_left, oh, ow), and where `dilated` (im2col,
    col2im) optionally (..., dh, dw), validated against x_shape in 64-bit arithmetic: every
    window's extent, (k - 1) * d + 1 per axis, overlaps the image, and every index the kernels
    compute, (o - 1) * s + (k - 1) * d, fits their int."""
    cdef fnn_conv_geom g
    if not isinstance(window, tuple) or not (len(window) == 8 or dilated and len(window) == 10):
        raise ValueError(f"{fn}: window must be a tuple (kh, kw, sh, sw, pad_top, pad_left, "
                         f"oh, ow{', [dh, dw]' if dilated else ''}), got {window!r}")
    cdef long long kh, kw, sh, sw, pt, pl, oh, ow, n, h, w, c, dh = 1, dw = 1, eh, ew
    try:
        kh, kw, sh, sw, pt, pl, oh, ow = window[:8]
        if len(window) == 10:
            dh, dw = window[8:]
    except (TypeError, OverflowError) as e:
        raise type(e)(f"{fn}: window {window!r}: {e}") from None
    n, h, w, c = x_shape
    if min(kh, kw, sh, sw, oh, ow, dh, dw) < 1 or pt < 0 or pl < 0:
        raise ValueError(f"{fn}: invalid window {window}: sizes, strides and dilations must "
                         "be >= 1, pads >= 0")
    if max(kh, kw, sh, sw, pt, pl, oh, ow, n, h, w, c, dh, dw) > INT_MAX:
        raise ValueError(f"{fn}: window {window} or input shape {x_shape} exceeds {INT_MAX}")
    if h < 1 or w < 1:
        raise ValueError(f"{fn}: input shape {x_shape} has no pixels")
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1      # the window's extent
    if pt >= eh or pl >= ew or (oh - 1) * sh - pt >= h or (ow - 1) * sw - pl >= w:
        raise ValueError(f"{fn}: window {window} does not fit input shape {x_shape}: some "
                         "windows lie wholly outside the image (pads must be smaller than the "
                         "window, and the last window must start inside the image)")
    if (oh - 1) * sh + eh > INT_MAX or (ow - 1) * sw + ew > INT_MAX:
        raise ValueError(f"{fn}: window {window}: (oh - 1) * sh + (kh - 1) * dh + 1 or "
                         f"(ow - 1) * sw + (kw - 1) * dw + 1 exceeds {INT_MAX}")
    g.n, g.h, g.w, g.c = <int>n, <int>h, <int>w, <int>c
    g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, g.oh, g.ow = \
        <int>kh, <int>kw, <int>sh, <int>sw, <int>pt, <int>pl, <int>oh, <int>ow
    g.dh, g.dw = <int>dh, <int>dw
    return g


cdef int _pool_indices_fit(str fn, const fnn_conv_geom *g) except -1:
    """Max pooling stores each tap's flat index within its image as int32."""
    if <long long>g.h * g.w * g.c > INT_MAX:
        raise ValueError(f"{fn}: an image of {g.h} x {g.w} x {g.c} has too many values for "
                         "int32 argmax indices")
    return 0


def im2col(x, window, cols):
    cdef const float[:, :, :, ::1] X = _cf4("im2col: x", x, True)
    cdef float[:, ::1] C = _f2("im2col: cols", cols, True)
    cdef fnn_conv_geom g = _geom("im2col", _shape4(X), window, True)
    _same_shape("im2col: cols", _shape2(C), (<Py_ssize_t>g.n * g.oh * g.ow,
                                             <Py_ssize_t>g.kh * g.kw * g.c))
    if C.shape[0] == 0 or C.shape[1] == 0:
        return
    _disjoint("im2col: cols", _p2(C), _n2(C), "x", _p4(X), _n4(X))
    with nogil:
        fnn_im2col(&X[0, 0, 0, 0], &C[0, 0], &g, _n_threads)


def winograd_work(tuple x_shape, window, Py_ssize_t filters):
    """Floats of the workspace conv2d_forward's Winograd F(2x2, 3x3) path needs for input
    x_shape (n, h, w, c), window and filters; 0 where it does not apply (not a 3x3, stride-1,
    undilated window) or would not pay (under 16 channels or 32 output tiles of 2x2)."""
    if len(x_shape) != 4 or not all(isinstance(v, int) and v >= 0 for v in x_shape):
        raise ValueError(f"winograd_work: x_shape must be 4 sizes >= 0 (n, h, w, c), got "
                         f"{x_shape!r}")
    cdef fnn_conv_geom g = _geom("winograd_work", x_shape, window, True)
    _fits_int("winograd_work: filters", filters)
    if filters < 0:
        raise ValueError(f"winograd_work: filters must be >= 0, got {filters}")
    return fnn_winograd_work(&g, <int>filters) if filters > 0 else 0


def conv2d_forward(x, kernel, bias, int act, float alpha, window, cols, z, y, mean=None,
                   var=None, gamma=None, beta=None, float eps=0.0, residual=None, work=None):
    """z = im2col(x) @ kernel (kh*kw*c, filters), then bias_act_forward's epilogue into y (y
    may be z), in one parallel region. cols (n*oh*ow, kh*kw*c) receives im2col(x); None only
    for a pointwise window (1x1, stride 1, no padding), where x is its own im2col. With `work`
    (winograd_work floats; a 3x3, stride-1 window) the convolution runs by Winograd's F(2x2,
    3x3) instead, 2.25x fewer multiplications, equal to rounding (cols is not written: for
    inference)."""
    _check_act(act)
    cdef const float[:, :, :, ::1] X = _cf4("conv2d_forward: x", x, True)
    cdef const float[:, ::1] K = _cf2("conv2d_forward: kernel", kernel, True)
    cdef fnn_conv_geom g = _geom("conv2d_forward", _shape4(X), window, True)
    cdef Py_ssize_t rows = <Py_ssize_t>g.n * g.oh * g.ow, taps = <Py_ssize_t>g.kh * g.kw * g.c
    cdef Py_ssize_t filters = K.shape[1]
    cdef float[:, ::1] C = _f2("conv2d_forward: cols", cols, False)
    cdef float[:, ::1] Z = _f2("conv2d_forward: z", z, True)
    cdef float[:, ::1] Y = _f2("conv2d_forward: y", y, True)
    cdef const float[:, ::1] R = _cf2("conv2d_forward: residual", residual, False)
    cdef bint norm = mean is not None or var is not None
    cdef const float[::1] B = _cf1("conv2d_forward: bias", bias, False)
    cdef const float[::1] M = _cf1("conv2d_forward: mean", mean, norm)
    cdef const float[::1] V = _cf1("conv2d_forward: var", var, norm)
    cdef const float[::1] G = _cf1("conv2d_forward: gamma", gamma, False)
    cdef const float[::1] BE = _cf1("conv2d_forward: beta", beta, False)
    cdef float[::1] W = _f1("conv2d_forward: work", work, False)
    cdef size_t need
    if W is not None:
        need = fnn_winograd_work(&g, <int>min(K.shape[1], INT_MAX))
        if need == 0 or <size_t>W.shape[0] != need:
            raise ValueError(f"conv2d_forward: work: expected shape ({need},) (winograd_work; "
                             f"0: Winograd does not apply to window {window} on input shape "
                             f"{_shape4(X)}), got ({W.shape[0]},)")
        C = None
    if K.shape[0] != taps:
        raise ValueError(f"conv2d_forward: kernel: expected {taps} rows (kh*kw*c for window "
                         f"{window} on input shape {_shape4(X)}), got shape {_shape2(K)}")
    if C is None and W is None:
        if (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left) != (1, 1, 1, 1, 0, 0):
            raise ValueError("conv2d_forward: cols is required unless the window is pointwise "
                             f"(1x1, stride 1, no padding), got window {window}")
    elif C is not None:
        _same_shape("conv2d_forward: cols", _shape2(C), (rows, taps))
    _same_shape("conv2d_forward: z", _shape2(Z), (rows, filters))
    _same_shape("conv2d_forward: y", _shape2(Y), (rows, filters))
    if R is not None:
        _same_shape("conv2d_forward: residual", _shape2(R), (rows, filters))
    for name, vec in (("bias", B), ("mean", M), ("var", V), ("gamma", G), ("beta", BE)):
        if vec is not None and vec.shape[0] != filters:
            raise ValueError(f"conv2d_forward: {name}: expected shape ({filters},), got "
                             f"({vec.shape[0]},)")
    if not eps >= 0:
        raise ValueError(f"conv2d_forward: eps must be >= 0, got {eps}")
    for name, v in (("rows (n*oh*ow)", rows), ("kernel rows", taps), ("filters", filters)):
        _fits_int(f"conv2d_forward: {name}", v)
    if rows == 0 or filters == 0:
        return
    if taps == 0:
        raise ValueError("conv2d_forward: x has no channels")
    cdef size_t nz = _n2(Z)
    _same_or_disjoint("conv2d_forward: y", _p2(Y), _n2(Y), "z", _p2(Z), nz)
    outs = [("z", <size_t>_p2(Z), nz)] + \
        ([("y", <size_t>_p2(Y), nz)] if _p2(Y) != _p2(Z) else []) + \
        ([("cols", <size_t>_p2(C), _n2(C))] if C is not None else []) + \
        ([("work", <size_t>_p1(W), _n1(W))] if W is not None else [])
    ins = [("x", <size_t>_p4(X), _n4(X)), ("kernel", <size_t>_p2(K), _n2(K)),
           ("residual", <size_t>_p2(R), _n2(R)), ("bias", <size_t>_p1(B), _n1(B)),
           ("mean", <size_t>_p1(M), _n1(M)), ("var", <size_t>_p1(V), _n1(V)),
           ("gamma", <size_t>_p1(G), _n1(G)), ("beta", <size_t>_p1(BE), _n1(BE))]
    _all_disjoint("conv2d_forward", outs, ins)
    _need_blas()
    cdef fnn_norm nm
    nm.mean, nm.var, nm.gamma, nm.beta, nm.eps = NULL, NULL, NULL, NULL, eps
    if norm:
        nm.mean, nm.var = &M[0], &V[0]
        nm.gamma = NULL if G is None else &G[0]
        nm.beta = NULL if BE is None else &BE[0]
    cdef const float *bp = NULL if B is None else &B[0]
    cdef const float *rp = NULL if R is None else &R[0, 0]
    cdef const fnn_norm *np_ = &nm if norm else NULL
    cdef float *cp = NULL if C is None else &C[0, 0]
    cdef int rc
    cdef float *wp = NULL if W is None else &W[0]
    with nogil:
        rc = fnn_conv2d_forward(&X[0, 0, 0, 0], &g, &K[0, 0], <int>filters, cp, wp, act, alpha,
                                bp, np_, rp, &Z[0, 0], &Y[0, 0], _n_threads)
    if rc == -2:
        raise MemoryError("conv2d_forward: out of memory")
    if rc != 0:
        raise RuntimeError("conv2d_forward: no BLAS sgemm is set (fastnn.backend.blas)")


def col2im(cols, window, x):
    cdef const float[:, ::1] C = _cf2("col2im: cols", cols, True)
    cdef float[:, :, :, ::1] X = _f4("col2im: x", x, True)
    cdef fnn_conv_geom g = _geom("col2im", _shape4(X), window, True)
    _same_shape("col2im: cols", _shape2(C), (<Py_ssize_t>g.n * g.oh * g.ow,
                                             <Py_ssize_t>g.kh * g.kw * g.c))
    if X.shape[0] == 0 or C.shape[1] == 0:
        return
    _disjoint("col2im: x", _p4(X), _n4(X), "cols", _p2(C), _n2(C))
    with nogil:
        fnn_col2im(&C[0, 0], &X[0, 0, 0, 0], &g, _n_threads)


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


def maxpool_forward(x, window, y, argmax):
    cdef const float[:, :, :, ::1] X = _cf4("maxpool_forward: x", x, True)
    cdef float[:, :, :, ::1] Y = _f4("maxpool_forward: y", y, True)
    cdef int32_t[:, :, :, ::1] A = _i4("maxpool_forward: argmax", argmax, True)
    cdef fnn_conv_geom g = _geom("maxpool_forward", _shape4(X), window)
    _pool_indices_fit("maxpool_forward", &g)
    cdef tuple out = (g.n, g.oh, g.ow, g.c)
    _same_shape("maxpool_forward: y", _shape4(Y), out)
    _same_shape("maxpool_forward: argmax", _ishape4(A), out)
    if g.n == 0 or g.c == 0:
        return
    _disjoint("maxpool_forward: y", _p4(Y), _n4(Y), "x", _p4(X), _n4(X))
    _disjoint("maxpool_forward: argmax", _pi4(A), _ni4(A), "x", _p4(X), _n4(X))
    _disjoint("maxpool_forward: argmax", _pi4(A), _ni4(A), "y", _p4(Y), _n4(Y))
    with nogil:
        fnn_maxpool_forward(&X[0, 0, 0, 0], &Y[0, 0, 0, 0], &A[0, 0, 0, 0], &g, _n_threads)


def maxpool_backward(dy, argmax, window, dx):
    cdef const float[:, :, :, ::1] DY = _cf4("maxpool_backward: dy", dy, True)
    cdef const int32_t[:, :, :, ::1] A = _ci4("maxpool_backward: argmax", argmax, True)
    cdef float[:, :, :, ::1] DX = _f4("maxpool_backward: dx", dx, True)
    cdef fnn_conv_geom g = _geom("maxpool_backward", _shape4(DX), window)
    _pool_indices_fit("maxpool_backward", &g)
    cdef tuple out = (g.n, g.oh, g.ow, g.c)
    _same_shape("maxpool_backward: dy", _shape4(DY), out)
    _same_shape("maxpool_backward: argmax", _ishape4(A), out)
    if g.n == 0 or g.c == 0:
        return
    _disjoint("maxpool_backward: dx", _p4(DX), _n4(DX), "dy", _p4(DY), _n4(DY))
    _disjoint("maxpool_backward: dx", _p4(DX), _n4(DX), "argmax", _pi4(A), _ni4(A))
    cdef const int32_t *a = &A[0, 0, 0, 0]
    _check_argmax(a, <size_t>g.n * g.oh * g.ow * g.c, <Py_ssize_t>g.h * g.w * g.c,
                  "the input image")
    with nogil:
        fnn_maxpool_backward(&DY[0, 0, 0, 0], a, &DX[0, 0, 0, 0], &g, _n_threads)


def avgpool_forward(x, window, y):
    cdef const float[:, :, :, ::1] X = _cf4("avgpool_forward: x", x, True)
    cdef float[:, :, :, ::1] Y = _f4("avgpool_forward: y", y, True)
    cdef fnn_conv_geom g = _geom("avgpool_forward", _shape4(X), window)
    _same_shape("avgpool_forward: y", _shape4(Y), (g.n, g.oh, g.ow, g.c))
    if g.n == 0 or g.c == 0:
        return
    _disjoint("avgpool_forward: y", _p4(Y), _n4(Y), "x", _p4(X), _n4(X))
    with nogil:
        fnn_avgpool_forward(&X[0, 0, 0, 0], &Y[0, 0, 0, 0], &g, _n_threads)


def avgpool_backward(dy, window, dx):
    cdef const float[:, :, :, ::1] DY = _cf4("avgpool_backward: dy", dy, True)
    cdef float[:, :, :, ::1] DX = _f4("avgpool_backward: dx", dx, True)
    cdef fnn_conv_geom g = _geom("avgpool_backward", _shape4(DX), window)
    _same_shape("avgpool_backward: dy", _shape4(DY), (g.n, g.oh, g.ow, g.c))
    if g.n == 0 or g.c == 0:
        return
    _disjoint("avgpool_backward: dx", _p4(DX), _n4(DX), "dy", _p4(DY), _n4(DY))
    with nogil:
        fnn_avgpool_backward(&DY[0, 0, 0, 0], &DX[0, 0, 0, 0], &g, _n_threads)


# ---- convolution + max pooling, fused ------------------------------------------------------
def conv2d_maxpool_plan(int n, int oh, int ow, int filters):
    """(groups, images per chunk) of conv2d_maxpool_forward/backward over n images whose
    convolution output is oh x ow x filters: the workspaces hold groups x chunk images."""
    if n < 0 or oh < 0 or ow < 0 or filters < 0:
        raise ValueError(f"conv2d_maxpool_plan: sizes must be >= 0, got ({n}, {oh}, {ow}, "
                         f"{filters})")
    cdef int groups, chunk
    fnn_conv2d_maxpool_plan(n, <size_t>oh * ow * filters, &groups, &chunk)
    return groups, chunk


cdef int _conv2d_maxpool_geoms(str fn, tuple x_shape, conv_window, pool_window, Py_ssize_t filters,
                               fnn_conv_geom *conv, fnn_conv_geom *pool) except -1:
    conv[0] = _geom(fn, x_shape, conv_window)
    _fits_int(f"{fn}: filters", filters)
    pool[0] = _geom(fn + " (pooling)", (conv.n, conv.oh, conv.ow, filters), pool_window)
    _pool_indices_fit(fn, pool)
    if conv.n == 0 or conv.c == 0 or filters == 0:
        raise ValueError(f"{fn}: empty batch, input channels or filters")
    _fits_int(f"{fn}: im2col rows (n * oh * ow)", <Py_ssize_t>conv.n * conv.oh * conv.ow)
    _fits_int(f"{fn}: im2col columns (kh * kw * c)", <Py_ssize_t>conv.kh * conv.kw * conv.c)
    return 0


cdef int _check_conv2d_maxpool_act(str fn, int act, float alpha, bint backward) except -1:
    _check_act(act)
    if not fnn_activation_monotone(act, alpha):
        raise ValueError(f"{fn}: activation id {act} (alpha {alpha}) is not "
                         "non-decreasing, so max pooling does not commute with it; run the "
                         "convolution and the pooling unfused")
    if backward and fnn_activation_needs_input(act):
        raise ValueError(f"{fn}: activation id {act} needs its input; run the "
                         "convolution and the pooling unfused")
    return 0


cdef int _check_work(name, const float[:, ::1] a, Py_ssize_t rows, Py_ssize_t cols) except -1:
    if a is None or a.shape[0] < rows or a.shape[1] != cols:
        got = None if a is None else _shape2(a)
        raise ValueError(f"{name}: expected at least ({rows}, {cols}) (see conv2d_maxpool_plan), "
                         f"got {got}")
    return 0


def conv2d_maxpool_forward(x, kernel, bias, int act, float alpha, conv_window, pool_window, cols,
                           work, y, argmax):
    """y, argmax = maxpool(act(im2col(x) @ kernel + bias)), a cache-sized chunk of images at a
    time; cols (n*oh*ow, kh*kw*c) keeps the columns for backward, work is scratch."""
    cdef str fn = "conv2d_maxpool_forward"
    cdef const float[:, :, :, ::1] X = _cf4("conv2d_maxpool_forward: x", x, True)
    cdef const float[:, ::1] K = _cf2("conv2d_maxpool_forward: kernel", kernel, True)
    cdef const float[::1] B = _cf1("conv2d_maxpool_forward: bias", bias, False)
    cdef float[:, ::1] C = _f2("conv2d_maxpool_forward: cols", cols, True)
    cdef float[:, ::1] WK = _f2("conv2d_maxpool_forward: work", work, True)
    cdef float[:, :, :, ::1] Y = _f4("conv2d_maxpool_forward: y", y, True)
    cdef int32_t[:, :, :, ::1] A = _i4("conv2d_maxpool_forward: argmax", argmax, True)
    _need_blas()
    _check_conv2d_maxpool_act(fn, act, alpha, False)
    cdef fnn_conv_geom conv, pool
    cdef Py_ssize_t filters = K.shape[1]
    _conv2d_maxpool_geoms(fn, _shape4(X), conv_window, pool_window, filters, &conv, &pool)
    cdef Py_ssize_t kdim = <Py_ssize_t>conv.kh * conv.kw * conv.c
    cdef Py_ssize_t pixels = <Py_ssize_t>conv.oh * conv.ow
    cdef int groups, chunk
    groups, chunk = conv2d_maxpool_plan(conv.n, conv.oh, conv.ow, <int>filters)
    _same_shape("conv2d_maxpool_forward: kernel", _shape2(K), (kdim, filters))
    if B is not None and B.shape[0] != filters:
        raise ValueError(f"conv2d_maxpool_forward: bias: expected shape ({filters},), got "
                         f"({B.shape[0]},)")
    _same_shape("conv2d_maxpool_forward: cols", _shape2(C), (conv.n * pixels, kdim))
    _check_work("conv2d_maxpool_forward: work", WK, <Py_ssize_t>groups * chunk * pixels, filters)
    cdef tuple out = (pool.n, pool.oh, pool.ow, filters)
    _same_shape("conv2d_maxpool_forward: y", _shape4(Y), out)
    _same_shape("conv2d_maxpool_forward: argmax", _ishape4(A), out)
    _all_disjoint(fn, [("cols", <size_t>_p2(C), _n2(C)), ("work", <size_t>_p2(WK), _n2(WK)),
                       ("y", <size_t>_p4(Y), _n4(Y)), ("argmax", <size_t>_pi4(A), _ni4(A))],
                  [("x", <size_t>_p4(X), _n4(X)), ("kernel", <size_t>_p2(K), _n2(K)),
                   ("bias", <size_t>_p1(B), _n1(B))])
    cdef const float *bp = NULL if B is None else &B[0]
    with nogil:
        fnn_conv2d_maxpool_forward(&X[0, 0, 0, 0], &K[0, 0], bp, act, alpha, &conv, &pool,
                                   &C[0, 0], &WK[0, 0], &Y[0, 0, 0, 0], &A[0, 0, 0, 0],
                                   _n_threads)


def conv2d_maxpool_backward(cols, kernel, y, argmax, dy, int act, float alpha, conv_window,
                            pool_window, x_shape, d_kernel, d_bias, dx, work, dcols_work,
                            partials):
    """From dy (the pooled gradient, overwritten with its gradient through act): d_kernel,
    d_bias and dx (each skipped when None) of conv2d_maxpool_forward. act's derivative must be
    readable off its output (not softplus, gelu, silu or softmax)."""
    cdef str fn = "conv2d_maxpool_backward"
    cdef const float[:, ::1] C = _cf2("conv2d_maxpool_backward: cols", cols, True)
    cdef const float[:, ::1] K = _cf2("conv2d_maxpool_backward: kernel", kernel, True)
    cdef const float[:, :, :, ::1] Y = _cf4("conv2d_maxpool_backward: y", y, True)
    cdef const int32_t[:, :, :, ::1] A = _ci4("conv2d_maxpool_backward: argmax", argmax, True)
    cdef float[:, :, :, ::1] DY = _f4("conv2d_maxpool_backward: dy", dy, True)
    cdef float[:, ::1] DK = _f2("conv2d_maxpool_backward: d_kernel", d_kernel, False)
    cdef float[::1] DB = _f1("conv2d_maxpool_backward: d_bias", d_bias, False)
    cdef float[:, :, :, ::1] DX = _f4("conv2d_maxpool_backward: dx", dx, False)
    cdef float[:, ::1] WK = _f2("conv2d_maxpool_backward: work", work, False)
    cdef float[:, ::1] DCW = _f2("conv2d_maxpool_backward: dcols_work", dcols_work, False)
    cdef float[:, ::1] PT = _f2("conv2d_maxpool_backward: partials", partials, False)
    _need_blas()
    _check_conv2d_maxpool_act(fn, act, alpha, True)
    if not isinstance(x_shape, tuple) or len(x_shape) != 4:
        raise ValueError(f"conv2d_maxpool_backward: x_shape must be a 4-tuple, got {x_shape!r}")
    for v in x_shape:
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"conv2d_maxpool_backward: x_shape must hold sizes >= 0, got "
                             f"{x_shape!r}")
    cdef fnn_conv_geom conv, pool
    cdef Py_ssize_t filters = K.shape[1]
    _conv2d_maxpool_geoms(fn, x_shape, conv_window, pool_window, filters, &conv, &pool)
    cdef Py_ssize_t kdim = <Py_ssize_t>conv.kh * conv.kw * conv.c
    cdef Py_ssize_t pixels = <Py_ssize_t>conv.oh * conv.ow
    cdef int groups, chunk
    groups, chunk = conv2d_maxpool_plan(conv.n, conv.oh, conv.ow, <int>filters)
    _same_shape("conv2d_maxpool_backward: kernel", _shape2(K), (kdim, filters))
    _same_shape("conv2d_maxpool_backward: cols", _shape2(C), (conv.n * pixels, kdim))
    cdef tuple out = (pool.n, pool.oh, pool.ow, filters)
    _same_shape("conv2d_maxpool_backward: y", _shape4(Y), out)
    _same_shape("conv2d_maxpool_backward: dy", _shape4(DY), out)
    _same_shape("conv2d_maxpool_backward: argmax", _ishape4(A), out)
    if DB is not None and DB.shape[0] != filters:
        raise ValueError(f"conv2d_maxpool_backward: d_bias: expected shape ({filters},), got "
                         f"({DB.shape[0]},)")
    cdef Py_ssize_t work_rows = <Py_ssize_t>groups * chunk * pixels
    if DK is not None:
        _same_shape("conv2d_maxpool_backward: d_kernel", _shape2(DK), (kdim, filters))
        if groups > 1:
            _check_work("conv2d_maxpool_backward: partials", PT, (groups - 1) * kdim, filters)
    if DX is not None:
        _same_shape("conv2d_maxpool_backward: dx", _shape4(DX), x_shape)
        _check_work("conv2d_maxpool_backward: dcols_work", DCW, work_rows, kdim)
    if DK is not None or DX is not None:
        _check_work("conv2d_maxpool_backward: work", WK, work_rows, filters)
    _all_disjoint(fn, [("dy", <size_t>_p4(DY), _n4(DY)),
                       ("d_kernel", <size_t>_p2(DK), _n2(DK)),
                       ("d_bias", <size_t>_p1(DB), _n1(DB)), ("dx", <size_t>_p4(DX), _n4(DX)),
                       ("work", <size_t>_p2(WK), _n2(WK)),
                       ("dcols_work", <size_t>_p2(DCW), _n2(DCW)),
                       ("partials", <size_t>_p2(PT), _n2(PT))],
                  [("cols", <size_t>_p2(C), _n2(C)), ("kernel", <size_t>_p2(K), _n2(K)),
                   ("y", <size_t>_p4(Y), _n4(Y)), ("argmax", <size_t>_pi4(A), _ni4(A))])
    cdef const int32_t *a = &A[0, 0, 0, 0]
    _check_argmax(a, <size_t>pool.n * pool.oh * pool.ow * filters, pixels * filters,
                  "the convolution output")
    cdef float *dkp = NULL if DK is None else &DK[0, 0]
    cdef float *dbp = NULL if DB is None else &DB[0]
    cdef float *dxp = NULL if DX is None else &DX[0, 0, 0, 0]
    cdef float *wp = NULL if WK is None else &WK[0, 0]
    cdef float *dcp = NULL if DCW is None else &DCW[0, 0]
    cdef float *pp = NULL if PT is None else &PT[0, 0]
    with nogil:
        fnn_conv2d_maxpool_backward(&C[0, 0], &K[0, 0], &Y[0, 0, 0, 0], a, &DY[0, 0, 0, 0],
                                    act, alpha, &conv, &pool, dkp, dbp, dxp, wp, dcp, pp,
                                    _n_threads)


cdef int _check_channels(name, const float[::1] v, Py_ssize_t cols) except -1:
    if v is not None and v.shape[0] != cols:
        raise ValueError(f"{name}: expected shape ({cols},), got ({v.shape[0]},)")
    return 0


def batchnorm_stats(x, mean, var):
    cdef const float[:, ::1] X = _cf2("batchnorm_stats: x", x, True)
    cdef float[::1] M = _f1("batchnorm_stats: mean", mean, True)
    cdef float[::1] V = _f1("batchnorm_stats: var", var, True)
    _check_channels("batchnorm_stats: mean", M, X.shape[1])
    _check_channels("batchnorm_stats: var", V, X.shape[1])
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"batchnorm_stats: batch normalization of an empty batch (x {_shape2(X)})")
    _all_disjoint("batchnorm_stats",
                  [("mean", <size_t>_p1(M), _n1(M)), ("var", <size_t>_p1(V), _n1(V))],
                  [("x", <size_t>_p2(X), _n2(X))])
    with nogil:
        fnn_batchnorm_stats(&X[0, 0], &M[0], &V[0], X.shape[0], X.shape[1], _n_threads)


def batchnorm_apply(x, mean, var, gamma, beta, float eps, y):
    """y = gamma (x - mean) / sqrt(var + eps) + beta; y may be x itself (in place)."""
    cdef const float[:, ::1] X = _cf2("batchnorm_apply: x", x, True)
    cdef const float[::1] M = _cf1("batchnorm_apply: mean", mean, True)
    cdef const float[::1] V = _cf1("batchnorm_apply: var", var, True)
    cdef const float[::1] GA = _cf1("batchnorm_apply: gamma", gamma, False)
    cdef const float[::1] BE = _cf1("batchnorm_apply: beta", beta, False)
    cdef float[:, ::1] Y = _f2("batchnorm_apply: y", y, True)
    cdef Py_ssize_t c = X.shape[1]
    _check_channels("batchnorm_apply: mean", M, c)
    _check_channels("batchnorm_apply: var", V, c)
    _check_channels("batchnorm_apply: gamma", GA, c)
    _check_channels("batchnorm_apply: beta", BE, c)
    _same_shape("batchnorm_apply: y", _shape2(Y), _shape2(X))
    if X.shape[0] == 0 or c == 0:
        return
    _same_or_disjoint("batchnorm_apply: y", _p2(Y), _n2(Y), "x", _p2(X), _n2(X))
    for other, p, nb in (("mean", <size_t>_p1(M), _n1(M)), ("var", <size_t>_p1(V), _n1(V)),
                         ("gamma", <size_t>_p1(GA), _n1(GA)), ("beta", <size_t>_p1(BE), _n1(BE))):
        _disjoint("batchnorm_apply: y", _p2(Y), _n2(Y), other, <const void *><size_t>p, nb)
    cdef const float *gp = NULL if GA is None else &GA[0]
    cdef const float *bp = NULL if BE is None else &BE[0]
    with nogil:
        fnn_batchnorm_apply(&X[0, 0], &M[0], &V[0], gp, bp, eps, &Y[0, 0], X.shape[0], c,
                            _n_threads)


def batchnorm_backward(x, dy, mean, var, gamma, float eps, dx, d_gamma, d_beta):
    """Training-mode backward; dx may be dy itself (in place)."""
    cdef const float[:, ::1] X = _cf2("batchnorm_backward: x", x, True)
    cdef const float[:, ::1] DY = _cf2("batchnorm_backward: dy", dy, True)
    cdef const float[::1] M = _cf1("batchnorm_backward: mean", mean, True)
    cdef const float[::1] V = _cf1("batchnorm_backward: var", var, True)
    cdef const float[::1] GA = _cf1("batchnorm_backward: gamma", gamma, False)
    cdef float[:, ::1] DX = _f2("batchnorm_backward: dx", dx, True)
    cdef float[::1] DG = _f1("batchnorm_backward: d_gamma", d_gamma, False)
    cdef float[::1] DB = _f1("batchnorm_backward: d_beta", d_beta, False)
    cdef Py_ssize_t c = X.shape[1]
    _check_channels("batchnorm_backward: mean", M, c)
    _check_channels("batchnorm_backward: var", V, c)
    _check_channels("batchnorm_backward: gamma", GA, c)
    _check_channels("batchnorm_backward: d_gamma", DG, c)
    _check_channels("batchnorm_backward: d_beta", DB, c)
    _same_shape("batchnorm_backward: dy", _shape2(DY), _shape2(X))
    _same_shape("batchnorm_backward: dx", _shape2(DX), _shape2(X))
    if X.shape[0] == 0 or c == 0:
        raise ValueError("batchnorm_backward: batch normalization of an empty batch "
                         f"(x {_shape2(X)})")
    _same_or_disjoint("batchnorm_backward: dx", _p2(DX), _n2(DX), "dy", _p2(DY), _n2(DY))
    _all_disjoint("batchnorm_backward", [("dx", <size_t>_p2(DX), _n2(DX)),
                                         ("d_gamma", <size_t>_p1(DG), _n1(DG)),
                                         ("d_beta", <size_t>_p1(DB), _n1(DB))],
                  [("x", <size_t>_p2(X), _n2(X)), ("mean", <size_t>_p1(M), _n1(M)),
                   ("var", <size_t>_p1(V), _n1(V)), ("gamma", <size_t>_p1(GA), _n1(GA))])
    _disjoint("batchnorm_backward: d_gamma", _p1(DG), _n1(DG), "dy", _p2(DY), _n2(DY))
    _disjoint("batchnorm_backward: d_beta", _p1(DB), _n1(DB), "dy", _p2(DY), _n2(DY))
    cdef const float *gp = NULL if GA is None else &GA[0]
    cdef float *dgp = NULL if DG is None else &DG[0]
    cdef float *dbp = NULL if DB is None else &DB[0]
    with nogil:
        fnn_batchnorm_backward(&X[0, 0], &DY[0, 0], &M[0], &V[0], gp, eps, &DX[0, 0], dgp, dbp,
                               X.shape[0], c, _n_threads)


def batchnorm_update_moving(moving_mean, moving_var, mean, var, float momentum):
    cdef float[::1] MM = _f1("batchnorm_update_moving: moving_mean", moving_mean, True)
    cdef float[::1] MV = _f1("batchnorm_update_moving: moving_var", moving_var, True)
    cdef const float[::1] M = _cf1("batchnorm_update_moving: mean", mean, True)
    cdef const float[::1] V = _cf1("batchnorm_update_moving: var", var, True)
    cdef Py_ssize_t c = MM.shape[0]
    _check_channels("batchnorm_update_moving: moving_var", MV, c)
    _check_channels("batchnorm_update_moving: mean", M, c)
    _check_channels("batchnorm_update_moving: var", V, c)
    if c == 0:
        return
    _all_disjoint("batchnorm_update_moving", [("moving_mean", <size_t>_p1(MM), _n1(MM)),
                                              ("moving_var", <size_t>_p1(MV), _n1(MV))],
                  [("mean", <size_t>_p1(M), _n1(M)), ("var", <size_t>_p1(V), _n1(V))])
    with nogil:
        fnn_batchnorm_update_moving(&MM[0], &MV[0], &M[0], &V[0], momentum, c)


# ---- a whole Dense stack run in C (csrc/stack.c; built and driven by fastnn/stack.py) ----------
IN_PLACE_MIN_WEIGHTS = FNN_IN_PLACE_MIN_WEIGHTS
# The preprocessing arithmetic the Dense stack applies as it gathers a row (fnn_stack_data.pre).
PRE_AFFINE, PRE_STANDARDIZE = FNN_PRE_AFFINE, FNN_PRE_STANDARDIZE



cdef inline float *_fptr(a) except? NULL:
    """Address of a C-contiguous float32 NumPy array (None -> NULL)."""
    if a is None:
        return NULL
    cdef float[::1] flat = a.reshape(-1)
    return &flat[0] if flat.shape[0] else NULL


cdef inline size_t _addr(a):
    """Address of a NumPy array's data (0 for None)."""
    return 0 if a is None else <size_t>a.ctypes.data


cdef int _stack_reduce(void *ctx, const float *scalars) noexcept nogil:
    """fnn_stack_data.reduce: calls the DenseStack's Python reduction (an allreduce, which
    releases the GIL itself) with a copy of the step's optimizer scalars; returns 1 when it
    took the step, 0 when not, -1 with the exception kept for DenseStack.run to raise."""
    with gil:
        stack = <DenseStack>ctx
        try:
            import numpy as np
            row = np.empty(stack.n_scalars, np.float32)
            memcpy(<void *><size_t>row.ctypes.data, scalars, 4 * <size_t>stack.n_scalars)
            return 1 if stack._reduce(row) else 0
        except BaseException as exc:
            stack._reduce_error = exc
            return -1


def all_finite(x):
    """Whether every value of x, a C-contiguous float32 array, is finite (one pass over the
    threads, without a temporary)."""
    if not hasattr(x, "flags") or not x.flags.c_contiguous:
        raise ValueError(f"all_finite: x: expected a C-contiguous float32 array, got "
                         f"{_describe(x)}")
    cdef const float[::1] v = _cf1("all_finite: x", x.reshape(-1), True)
    cdef int ok = 1
    if v.shape[0]:
        with nogil:
            ok = fnn_all_finite(&v[0], v.shape[0], _n_threads)
    return bool(ok)


def consecutive(list parts):
    """Whether the arrays in parts (at least one) are C-contiguous with one item format and
    row shape, each starting where the one before ends (slices of one array, in order, which a
    view can join). Raises BufferError or ValueError for an array without a C-contiguous
    buffer."""
    cdef Py_buffer first, view
    cdef Py_ssize_t i, j
    cdef bint ok = True
    cdef char *end
    if not parts:
        raise ValueError("consecutive: no arrays")
    PyObject_GetBuffer(parts[0], &first, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    try:
        end = <char *>first.buf + first.len
        for i in range(1, len(parts)):
            PyObject_GetBuffer(parts[i], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            ok = view.buf == end and view.ndim == first.ndim and first.ndim > 0 and \
                view.itemsize == first.itemsize and strcmp(view.format, first.format) == 0
            for j in range(1, view.ndim if ok else 0):
                ok = ok and view.shape[j] == first.shape[j]
            end = <char *>view.buf + view.len
            PyBuffer_Release(&view)
            if not ok:
                return False
        return first.ndim > 0
    finally:
        PyBuffer_Release(&first)


cdef int _stack_step_end(void *ctx, int64_t step, int status) noexcept nogil:
    """fnn_stack_data.step_end: calls run()'s step_end(step, status), which returns whether
    the run goes on; an exception ends the run and is kept for DenseStack.run to raise."""
    with gil:
        stack = <DenseStack>ctx
        try:
            if type(stack._step_end) is StepHooks:     # (no Python frame a step)
                return 0 if (<StepHooks>stack._step_end).step(step, status) else 1
            return 0 if stack._step_end(step, status) else 1
        except BaseException as exc:
            stack._step_error = exc
            return 1


cdef class StepHooks:
    """DenseStack.run's step_end when callbacks read every batch of a run of steps first ..
    first + n - 1: after each step, the loss tracker and the stack's counted metric as the
    run's sums leave them (sums: float64 [loss total, loss count, metric total, metric
    count]); after an update (status 0, training: opt not None) extra(k, j) when given (the
    other metrics, the optimizer's step state) and one more optimizer iteration; then the
    batch-end hooks with the logs, then (unless the run ends) the next batch's begin hooks.
    The logs: logs_fn() when log_names is None, else a dict of (name, 0: the mean loss /
    1: the counted metric) pairs in that order. Ends the run after its last step, when
    training stopped, or when a hook changed the optimizer's learning rate, weight decay or
    iterations (the run computed its scalars ahead). Written in Cython because a hook after
    every step of a small model costs in Python as much as a few percent of its epoch.
    After the run: begun (the next batch's begin hooks ran), changed."""
    cdef double[::1] sums
    cdef object loss_tracker, counted, opt, model, ends, begins, logs_fn, log_names, extra
    cdef object lr, decay
    cdef int64_t first, n, iterations
    cdef public bint begun, changed

    def __init__(self, sums, loss_tracker, counted, opt, model, ends, begins, int64_t first,
                 int64_t n, logs_fn=None, log_names=None, extra=None):
        if len(sums) < 4:
            raise ValueError(f"StepHooks: sums: expected 4 float64 values, got {len(sums)}")
        self.sums = sums
        self.loss_tracker, self.counted, self.opt, self.model = loss_tracker, counted, opt, model
        self.ends, self.begins = tuple(ends), tuple(begins)
        self.logs_fn, self.log_names, self.extra = logs_fn, log_names, extra
        self.first, self.n = first, n
        if log_names is None and self.ends and logs_fn is None:
            raise ValueError("StepHooks: logs_fn or log_names is needed for batch-end hooks")
        if opt is not None:
            self.lr, self.decay, self.iterations = opt._learning_rate, opt.weight_decay, \
                opt.iterations
        self.begun = self.changed = False

    def __call__(self, int64_t k, int status):
        return self.step(k, status)

    cdef bint step(self, int64_t k, int status) except -1:
        cdef int64_t j = k - self.first
        cdef double loss_total = self.sums[0], loss_count = self.sums[1]
        cdef double total = self.sums[2], count = self.sums[3]
        self.loss_tracker.total, self.loss_tracker.count = loss_total, loss_count
        if self.counted is not None:
            self.counted.total, self.counted.count = total, count
        if status == 0:
            if self.extra is not None:
                self.extra(k, j)
            if self.opt is not None:
                self.opt.iterations += 1
        if self.ends:
            if self.log_names is None:
                logs = self.logs_fn()
            else:
                loss = loss_total / loss_count if loss_count else 0.0
                metric = total / count if count else 0.0
                logs = {}
                for name, which in self.log_names:
                    logs[name] = metric if which else loss
            for fn in self.ends:
                fn(k, logs)
        self.begun = False
        if self.opt is not None and self.model.stop_training or j + 1 == self.n:
            return False
        for fn in self.begins:
            fn(k + 1, None)
            self.begun = True
        if self.opt is None:
            return True
        opt = self.opt
        self.changed = opt._learning_rate != self.lr or opt.weight_decay != self.decay or \
            opt.iterations != self.iterations + j + 1
        return not self.changed


cdef class DenseStack:
    """A Sequential of Dense layers with its workspaces, for `batch` rows. layers: tuples
    (kernel, bias, d_kernel, d_bias, act, alpha) of float32 arrays (bias/d_bias may be None,
    gradients None for inference). Training stacks also get loss, metric and optimizer."""
    cdef fnn_stack s
    cdef fnn_dense *dense
    cdef float **bufs                 # z[n], y[n], dx[n]
    cdef float *slot_ptrs[8]
    cdef size_t *kernel_at            # each layer's kernel offset in the arena, or NULL
    cdef int64_t *in_place_at         # see fnn_stack.in_place_at
    cdef size_t *update_spans
    cdef size_t *var_sizes            # the optimizer's variable sizes (clipnorm), or NULL
    cdef list keep                    # every array the pointers above point into
    cdef public int d_in, d_out, n_scalars, batch, loss
    cdef public bint train
    cdef object _reduce, _reduce_error     # run(reduce=...): the data-parallel step's sum
    cdef object _step_end, _step_error     # run(step_end=...): the per-step callback
    cdef object _keep_exchange             # run(reduce=...)'s exchange buffer, while it runs

    def __cinit__(self, list layers, int batch, bint train=False, int loss=0, bint fused=False,
                  bint mean_reduction=True, int metric=0, float threshold=0.5, int opt=0,
                  params=None, grads=None, slots=(), reg=None, int clip_mode=0,
                  float clip_limit=0.0, var_sizes=None):
        import numpy as np
        cdef int n = len(layers), i
        cdef const float[:, ::1] kv
        cdef const float[::1] bv
        cdef float[:, ::1] dkv
        cdef float[::1] dbv, pv, gv, sv
        cdef Py_ssize_t d_in, d_out
        if n == 0 or batch < 1:
            raise ValueError(f"DenseStack: needs at least one layer and a batch >= 1, got "
                             f"{n} layers, batch {batch}")
        self.dense = <fnn_dense *>calloc(n, sizeof(fnn_dense))
        self.bufs = <float **>calloc(3 * n, sizeof(float *))
        if self.dense == NULL or self.bufs == NULL:
            raise MemoryError()
        self.keep = []
        self.batch, self.train, self.loss = batch, train, loss
        prev = None
        for i in range(n):
            spec = layers[i]
            if not isinstance(spec, tuple) or len(spec) != 6:
                raise TypeError(f"DenseStack: layer {i}: expected a tuple (kernel, bias, "
                                f"d_kernel, d_bias, act, alpha), got {type(spec).__name__}")
            kernel, bias, d_kernel, d_bias, act, alpha = spec
            _check_act(act)
            kv = _cf2(f"DenseStack: layer {i} kernel", kernel, True)
            bv = _cf1(f"DenseStack: layer {i} bias", bias, False)
            d_in, d_out = kv.shape[0], kv.shape[1]
            if prev is not None and d_in != prev:
                raise ValueError(f"DenseStack: layer {i} kernel: expected ({prev}, units), got "
                                 f"{(d_in, d_out)}")
            if d_in == 0 or d_out == 0:
                raise ValueError(f"DenseStack: layer {i} kernel: empty shape {(d_in, d_out)}")
            _fits_int(f"DenseStack: layer {i} kernel rows", d_in)
            _fits_int(f"DenseStack: layer {i} kernel columns", d_out)
            if bv is not None and bv.shape[0] != d_out:
                raise ValueError(f"DenseStack: layer {i} bias: expected shape ({d_out},), got "
                                 f"({bv.shape[0]},)")
            if train:
                dkv = _f2(f"DenseStack: layer {i} d_kernel", d_kernel, True)
                dbv = _f1(f"DenseStack: layer {i} d_bias", d_bias, bias is not None)
                if dkv.shape[0] != d_in or dkv.shape[1] != d_out:
                    raise ValueError(f"DenseStack: layer {i} d_kernel: expected shape "
                                     f"{(d_in, d_out)}, got {(dkv.shape[0], dkv.shape[1])}")
                if bias is None and dbv is not None:
                    raise ValueError(f"DenseStack: layer {i}: d_bias given without a bias")
                if dbv is not None and dbv.shape[0] != d_out:
                    raise ValueError(f"DenseStack: layer {i} d_bias: expected shape ({d_out},), "
                                     f"got ({dbv.shape[0]},)")
                _all_disjoint(f"DenseStack: layer {i}",
                              [("d_kernel", <size_t>_p2(dkv), _n2(dkv)),
                               ("d_bias", <size_t>_p1(dbv), _n1(dbv))],
                              [("kernel", <size_t>_p2(kv), _n2(kv)),
                               ("bias", <size_t>_p1(bv), _n1(bv))])
            z = np.empty((batch, d_out), np.float32)
            y = np.empty_like(z) if train and fnn_activation_needs_input(act) else z
            dx = np.empty((batch, d_in), np.float32) if train and i > 0 else None
            self.keep += [kernel, bias, d_kernel, d_bias, z, y, dx]
            self.dense[i].d_in, self.dense[i].d_out = <int>d_in, <int>d_out
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
            raise ValueError(f"DenseStack: unknown loss kind {loss}")
        if not FNN_METRIC_NONE <= metric <= FNN_METRIC_BINARY_ACC:
            raise ValueError(f"DenseStack: unknown metric kind {metric}")
        if metric == FNN_METRIC_BINARY_ACC and self.d_out != 1:
            raise ValueError("DenseStack: binary accuracy runs in C for one output column only")
        self.n_scalars = fnn_optimizer_scalars(opt)
        if self.n_scalars < 0:
            raise ValueError(f"DenseStack: unknown optimizer kind {opt}")
        pv = _f1("DenseStack: params", params, True)
        gv = _f1("DenseStack: grads", grads, True)
        if gv.shape[0] != pv.shape[0]:
            raise ValueError(f"DenseStack: grads: expected shape ({pv.shape[0]},) like params, "
                             f"got ({gv.shape[0]},)")
        if not isinstance(slots, (tuple, list)):
            raise TypeError(f"DenseStack: slots: expected a tuple of arrays, got "
                            f"{type(slots).__name__}")
        slots = list(slots)
        if len(slots) > FNN_OPT_SLOTS:
            raise ValueError(f"DenseStack: slots: at most {FNN_OPT_SLOTS} optimizer slots, got "
                             f"{len(slots)}")
        outs = [("params", <size_t>_p1(pv), _n1(pv)), ("grads", <size_t>_p1(gv), _n1(gv))]
        for i in range(FNN_OPT_SLOTS):
            slot = slots[i] if i < len(slots) else None
            sv = _f1(f"DenseStack: optimizer slot {i}", slot, i < _REQUIRED_SLOTS[opt])
            if sv is not None and sv.shape[0] != pv.shape[0]:
                raise ValueError(f"DenseStack: optimizer slot {i}: expected shape "
                                 f"({pv.shape[0]},) like params, got ({sv.shape[0]},)")
            self.slot_ptrs[i] = NULL if sv is None else _fptr(slot)
            if sv is not None:
                outs.append((f"optimizer slot {i}", <size_t>_p1(sv), _n1(sv)))
            self.keep.append(slot)
        _all_disjoint("DenseStack", outs)
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
        self.s.n_params = pv.shape[0]
        self._penalties(reg)
        self._clipping(clip_mode, clip_limit, var_sizes)
        self._find_kernels(layers, params, grads)
        if opt == FNN_OPT_SGD:
            self._find_in_place(layers, params)

    cdef _penalties(self, reg):
        """reg: None, or float32 (n_layers, 4): per layer Keras's l1 and l2 factors of its
        kernel's regularizer, then of its bias's (0, 0: none), see fnn_stack.reg."""
        import numpy as np
        if reg is None:
            return
        cdef int n = self.s.n_layers, i
        cdef const float[:, ::1] R = _cf2("DenseStack: reg", reg, True)
        if R.shape[0] != n or R.shape[1] != 4:
            raise ValueError(f"DenseStack: reg: expected shape ({n}, 4), got {_shape2(R)}")
        for i in range(n):
            for j in range(4):
                if not (R[i, j] >= 0 and isfinite(R[i, j])):
                    raise ValueError(f"DenseStack: reg[{i}, {j}]: expected a finite factor "
                                     f">= 0, got {R[i, j]}")
            if self.dense[i].bias == NULL and (R[i, 2] != 0 or R[i, 3] != 0):
                raise ValueError(f"DenseStack: reg[{i}]: a bias penalty for a layer without "
                                 "a bias")
        cdef Py_ssize_t n_rows = 0
        for i in range(n):
            n_rows += self.dense[i].d_in + 1
        pen_rows = np.zeros(n_rows, np.float64)
        cdef double[::1] P = pen_rows
        self.keep += [reg, pen_rows]
        self.s.reg, self.s.pen_rows = &R[0, 0], &P[0]

    cdef _clipping(self, int clip_mode, float clip_limit, var_sizes):
        """Keras's gradient clipping (CLIP_*, limit > 0); var_sizes (ints adding up to the
        arena's size): the optimizer's variables, which clipnorm clips one by one."""
        if not FNN_CLIP_NONE <= clip_mode <= FNN_CLIP_GLOBAL_NORM:
            raise ValueError(f"DenseStack: clip_mode: expected one of 0-3 (CLIP_*), got "
                             f"{clip_mode}")
        if clip_mode != FNN_CLIP_NONE and not (clip_limit > 0 and isfinite(clip_limit)):
            raise ValueError(f"DenseStack: clip_limit: expected a finite float > 0, got "
                             f"{clip_limit}")
        self.s.clip_mode, self.s.clip_limit = clip_mode, clip_limit
        if var_sizes is None:
            return
        sizes = [int(v) for v in var_sizes]
        if any(v < 0 for v in sizes) or sum(sizes) != self.s.n_params:
            raise ValueError(f"DenseStack: var_sizes: expected sizes >= 0 adding up to the "
                             f"{self.s.n_params} parameters, got {sizes[:8]}")
        _fits_int("DenseStack: var_sizes (variables)", len(sizes))
        self.var_sizes = <size_t *>calloc(max(1, len(sizes)), sizeof(size_t))
        if self.var_sizes == NULL:
            raise MemoryError()
        for i in range(len(sizes)):
            self.var_sizes[i] = sizes[i]
        self.s.var_sizes, self.s.n_vars = self.var_sizes, len(sizes)

    cdef _find_kernels(self, list layers, params, grads):
        """Point s.layer_at at each layer's kernel offset when the layers' parameters tile the
        arena in order (kernel, bias, next kernel, ...) and their gradients tile grads alike,
        and s.kernel_at too when a layer's training GEMMs split along its rows: then
        fnn_stack_run updates each layer during the backward pass (its blocks are updated
        where they are cached); small stacks keep one update pass over the arena."""
        cdef size_t at = 0, n = len(layers), i
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
        self.s.layer_at = self.kernel_at
        if any(fnn_gemm_row_blocks(self.batch, k.shape[0], k.shape[1]) > 1
               for k, *_ in layers):
            self.s.kernel_at = self.kernel_at

    cdef _find_in_place(self, list layers, params):
        """The kernels of at least IN_PLACE_MIN_WEIGHTS weights, which lie in the arena: with
        plain SGD they take their step inside their weight-gradient GEMM, as the layer-by-layer
        path does (fastnn/models.py), so both give bit-identical weights."""
        cdef size_t n = len(layers), i, base = _addr(params), size = 4 * <size_t>params.shape[0]
        spans = []
        at = []
        for i in range(n):
            kernel = layers[i][0]
            a = _addr(kernel)
            # (not a kernel with a penalty: its gradient must be written, as on the general path)
            if self.s.reg != NULL and (self.s.reg[4 * i] != 0 or self.s.reg[4 * i + 1] != 0):
                at.append(-1)
            elif kernel.size >= FNN_IN_PLACE_MIN_WEIGHTS and base <= a and \
                    a + 4 * kernel.size <= base + size and (a - base) % 4 == 0:
                at.append((a - base) // 4)
                spans.append(((a - base) // 4, (a - base) // 4 + kernel.size))
            else:
                at.append(-1)
        if not spans:
            return
        rest, pos = [], 0
        for start, stop in sorted(spans):
            if start < pos:
                return      # overlapping kernels: leave every update to the optimizer
            if start > pos:
                rest.append((pos, start))
            pos = stop
        if pos < <size_t>params.shape[0]:
            rest.append((pos, params.shape[0]))
        self.in_place_at = <int64_t *>calloc(n, sizeof(int64_t))
        self.update_spans = <size_t *>calloc(2 * len(rest) + 1, sizeof(size_t))
        if self.in_place_at == NULL or self.update_spans == NULL:
            raise MemoryError()
        for i in range(n):
            self.in_place_at[i] = at[i]
        for i in range(len(rest)):
            self.update_spans[2 * i], self.update_spans[2 * i + 1] = rest[i]
        self.s.in_place_at, self.s.update_spans = self.in_place_at, self.update_spans
        self.s.n_update_spans = len(rest)

    @property
    def updates_in_backward(self):
        """Whether training updates each layer during the backward pass (_find_kernels)."""
        return self.kernel_at != NULL

    @property
    def in_place_layers(self):
        """The layers whose kernel takes a plain SGD step inside its GEMM (_find_in_place)."""
        if self.in_place_at == NULL:
            return ()
        return tuple(i for i in range(self.s.n_layers) if self.in_place_at[i] >= 0)

    def __dealloc__(self):
        free(self.dense)
        free(self.bufs)
        free(self.kernel_at)
        free(self.in_place_at)
        free(self.update_spans)
        free(self.var_sizes)

    cdef int _data(self, fnn_stack_data *d, x, y, weights, order, pre=None,
                   bint subset=False) except -1:
        """Check the source arrays against the stack and point d at them. pre: None, or
        (kind, a, b) with FNN_PRE_AFFINE or FNN_PRE_STANDARDIZE and float32 arrays of the
        row length (see fnn_stack_data.pre). subset: the order may name fewer rows than x has
        (a rank's rows, see run); the run then covers the order's rows."""
        import numpy as np
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.d_in or \
                not x.flags.c_contiguous:
            raise ValueError(f"DenseStack: x: expected a C-contiguous array of shape (n, "
                             f"{self.d_in}), got {_describe(x)}")
        kinds = {np.dtype(np.float32): FNN_SRC_F32, np.dtype(np.float64): FNN_SRC_F64,
                 np.dtype(np.uint8): FNN_SRC_U8}
        if x.dtype not in kinds:
            raise TypeError(f"DenseStack: x: dtype must be float32, float64 or uint8, got "
                            f"{x.dtype}")
        cdef int64_t n = x.shape[0]
        d.x, d.x_type, d.rows, d.x_len = <const void *><size_t>x.ctypes.data, kinds[x.dtype], n, \
            self.d_in
        d.labels, d.targets, d.weights, d.order, d.target_len = NULL, NULL, NULL, NULL, 0
        d.outputs, d.outputs_first = NULL, 0
        d.pre, d.pre_a, d.pre_b = FNN_PRE_NONE, NULL, NULL
        d.reduce, d.reduce_ctx, d.global_rows, d.global_batch = NULL, NULL, 0, 0
        d.shard, d.exchange = NULL, NULL
        d.step_end, d.step_ctx = NULL, NULL
        cdef const float[::1] pa
        cdef const float[::1] pb
        if pre is not None:
            kind, a, b = pre
            if kind not in (FNN_PRE_AFFINE, FNN_PRE_STANDARDIZE):
                raise ValueError(f"DenseStack: pre: kind must be {FNN_PRE_AFFINE} (affine) or "
                                 f"{FNN_PRE_STANDARDIZE} (standardize), got {kind!r}")
            pa = _cf1("DenseStack: pre a", a, True)
            pb = _cf1("DenseStack: pre b", b, True)
            if pa.shape[0] != self.d_in or pb.shape[0] != self.d_in:
                raise ValueError(f"DenseStack: pre: a and b must have shape ({self.d_in},), "
                                 f"got ({pa.shape[0]},) and ({pb.shape[0]},)")
            d.pre, d.pre_a, d.pre_b = kind, &pa[0], &pb[0]
        cdef const int32_t[::1] lab
        cdef const float[:, ::1] tgt
        cdef const float[::1] wv
        cdef const int64_t[::1] ov
        if self.train:
            if self.loss == FNN_LOSS_SPARSE_XENT:
                lab = _ci1("DenseStack: y (int32 labels)", y, True)
                if lab.shape[0] != n:
                    raise ValueError(f"DenseStack: y: expected int32 labels of shape ({n},), "
                                     f"got ({lab.shape[0]},)")
                d.labels = &lab[0] if n else NULL
            else:
                tgt = _cf2("DenseStack: y (float32 targets)", y, True)
                if tgt.shape[0] != n or tgt.shape[1] != self.d_out:
                    raise ValueError(f"DenseStack: y: expected float32 targets of shape ({n}, "
                                     f"{self.d_out}), got {_shape2(tgt)}")
                d.targets, d.target_len = (&tgt[0, 0] if n else NULL), self.d_out
            if weights is not None:
                wv = _cf1("DenseStack: sample_weight", weights, True)
                if wv.shape[0] != n:
                    raise ValueError(f"DenseStack: sample_weight: expected shape ({n},), got "
                                     f"({wv.shape[0]},)")
                d.weights = &wv[0] if n else NULL
        if order is not None:
            ov = _ci64("DenseStack: order", order, True)
            if ov.shape[0] != n and not (subset and ov.shape[0] <= n):
                raise ValueError(f"DenseStack: order: expected shape ({n},), got "
                                 f"({ov.shape[0]},)")
            d.order = &ov[0] if ov.shape[0] else NULL
            d.rows = ov.shape[0]
        return 0

    @property
    def kernels_tile_arena(self):
        """Whether the layers' kernels and biases tile the parameter arena in order (then run
        may exchange activations)."""
        return self.s.layer_at != NULL

    def exchange_floats(self, int64_t global_batch, int ranks):
        """The float32 values of run's exchange buffer for global batches of global_batch
        rows over `ranks` ranks."""
        if global_batch < 1:
            raise ValueError(f"DenseStack.exchange_floats: global_batch: expected >= 1, got "
                             f"{global_batch}")
        if ranks < 1:
            raise ValueError(f"DenseStack.exchange_floats: ranks: expected >= 1, got {ranks}")
        return fnn_stack_exchange_floats(&self.s, global_batch, ranks)

    cdef _exchange(self, fnn_stack_data *d, SharedStep shared, exchange, int64_t global_batch):
        """d's exchange buffer (run's reduce[4]) after its checks."""
        fn = "DenseStack.run: reduce exchange buffer"
        cdef float[::1] E = _f1(fn, exchange, True)
        cdef size_t need = fnn_stack_exchange_floats(&self.s, global_batch, shared.s.ranks)
        if <size_t>E.shape[0] < need:
            raise ValueError(f"{fn}: expected at least ({need},) float32 for global batches of "
                             f"{global_batch}, got ({E.shape[0]},)")
        if self.s.layer_at == NULL:
            raise ValueError(f"{fn}: the layers do not tile the arena in order")
        if shared.s.kind != self.s.opt or shared.s.clip_mode != self.s.clip_mode or \
                shared.s.clip_limit != self.s.clip_limit or shared.s.params != self.s.params:
            raise ValueError(f"{fn}: the SharedStep's parameters, optimizer or clipping are not "
                             "this stack's")
        _disjoint(fn, &E[0], 4 * need, "the parameters", self.s.params, 4 * self.s.n_params)
        _disjoint(fn, &E[0], 4 * need, "the reduce buffer", self.s.grads,
                  4 * (self.s.n_params + 1))
        d.shard, d.exchange = &shared.s, &E[0]
        self._keep_exchange = exchange

    def run(self, x, y, weights, order, int64_t start, int64_t n_steps, bint train,
            scalars, sums, outputs=None, pre=None, reduce=None, step_end=None):
        """Run batches start .. start + n_steps - 1 of the epoch (see fnn_stack_run); returns
        (steps run, status). outputs (at least n_steps * batch rows of d_out, or None): each
        batch's outputs, in the order's positions from start * batch on.

        reduce (data-parallel training, see fnn_stack_data.reduce): (fn, buffer, global_rows,
        global_batch), with buffer the gradient arena and one float32 slot after it (the
        arena a view of its start) and fn(scalars) summing buffer over the ranks in place, given
        a copy of the step's optimizer scalars; fn returns true when it also took the step
        (each rank updating its shard of a shared arena: the stack then updates nothing). The order
        is then this rank's rows of each global batch, batch rows a step; its last step may
        have none. With fn a SharedStep, a fifth item (None or a float32 array of at least
        exchange_floats(global_batch) values that the ranks share) makes the ranks exchange
        activations instead of gradients (see fnn_stack_data.exchange).

        step_end (a callback reads every batch): called as step_end(step, status) with the
        GIL after each step whose loss sums holds (status 0, or -1: not finite), step being its
        index in the epoch; the run ends after it unless it returns True. An exception it
        raises ends the run and is raised here."""
        cdef fnn_stack_data d
        cdef float[::1] RB
        cdef SharedStep shared = None
        if not self.train:
            raise ValueError("DenseStack.run: this DenseStack was built for inference only")
        self._data(&d, x, y, weights, order, pre, reduce is not None)
        cdef int64_t x_rows = x.shape[0]
        if reduce is not None:
            if not train:
                raise ValueError("DenseStack.run: reduce is for training")
            if order is None:
                raise ValueError("DenseStack.run: reduce needs the order of this rank's rows")
            fn, buffer, global_rows, global_batch, *rest = reduce
            exchange = rest[0] if len(rest) == 1 else None
            if len(rest) > 1:
                raise ValueError(f"DenseStack.run: reduce: expected 4 or 5 items, got "
                                 f"{len(reduce)}")
            RB = _f1("DenseStack.run: reduce buffer", buffer, True)
            if RB.shape[0] != self.s.n_params + 1 or &RB[0] != self.s.grads:
                raise ValueError(f"DenseStack.run: reduce buffer: expected the gradient arena "
                                 f"and one slot after it ({self.s.n_params + 1} float32 from "
                                 f"the arena's start), got {_describe(buffer)}")
            global_steps = -(-global_rows // global_batch) if global_batch > 0 else -1
            if not callable(fn) or global_batch < self.batch or global_rows < d.rows or \
                    not (global_steps - 1) * self.batch <= d.rows <= global_steps * self.batch \
                    or start + n_steps > global_steps:
                raise ValueError(f"DenseStack.run: reduce: expected (callable, buffer, global "
                                 f"rows, global batch) whose global batches match this rank's "
                                 f"{d.rows} rows in batches of {self.batch}, got "
                                 f"{fn!r}, {global_rows}, {global_batch}")
            self._reduce, self._reduce_error = fn, None
            d.reduce, d.reduce_ctx = _stack_reduce, <void *>self
            if isinstance(fn, SharedStep):      # the whole step in C (csrc/shard.c)
                shared = <SharedStep>fn
                if shared.s.n != <size_t>self.s.n_params or \
                        shared.s.rows + <size_t>shared.s.rank * shared.s.stride != self.s.grads:
                    raise ValueError("DenseStack.run: reduce: a SharedStep whose rank's row is "
                                     "not this stack's gradient arena")
                d.reduce, d.reduce_ctx = _shard_stack_reduce, <void *>&shared.s
                if exchange is not None:
                    self._exchange(&d, shared, exchange, global_batch)
            elif exchange is not None:
                raise ValueError("DenseStack.run: reduce: an exchange buffer needs a SharedStep")
            d.global_rows, d.global_batch = global_rows, global_batch
        # Python integers: start * batch cannot overflow here. Under reduce the last step may
        # have no rows on this rank.
        if start < 0 or n_steps < 1 or \
                (start + n_steps - 1) * <object>self.batch >= d.rows + (reduce is not None):
            raise ValueError(f"DenseStack.run: steps {start}..{start + n_steps - 1} of batch "
                             f"{self.batch} lie outside {d.rows} rows")
        cdef double[::1] S = _d1("DenseStack.run: sums", sums, True)
        if S.shape[0] != 4:
            raise ValueError(f"DenseStack.run: sums: expected shape (4,), got ({S.shape[0]},)")
        cdef const float[:, ::1] SC = _cf2("DenseStack.run: scalars", scalars, train)
        if train and (SC.shape[0] < n_steps or SC.shape[1] != self.n_scalars):
            raise ValueError(f"DenseStack.run: scalars: expected ({n_steps}, {self.n_scalars}), "
                             f"got {_shape2(SC)}")
        cdef int64_t j
        if shared is not None:
            for j in range(n_steps):
                _check_momentum_slots("DenseStack.run: reduce", shared.s.kind, shared._slot0,
                                      shared._slot1, &SC[j, 0])
        if train and self.s.opt == FNN_OPT_SGD and self.slot_ptrs[0] == NULL:
            for j in range(n_steps):
                if SC[j, 2] != 0:
                    raise ValueError("DenseStack.run: SGD with momentum needs its momentum "
                                     "slot (slots[0])")
        if train and self.s.opt == FNN_OPT_RMSPROP and self.slot_ptrs[1] == NULL:
            for j in range(n_steps):
                if SC[j, 3] > 0:
                    raise ValueError("DenseStack.run: RMSprop with momentum needs its momentum "
                                     "slot (slots[1])")
        _disjoint("DenseStack.run: sums", &S[0], 32, "x", d.x, <size_t>x.nbytes)
        cdef int64_t first = start * self.batch, last = min(d.rows, (start + n_steps) * self.batch)
        cdef int64_t i, bad = -1
        if d.order != NULL:
            with nogil:
                for i in range(first, last):
                    if d.order[i] < 0 or d.order[i] >= x_rows:
                        bad = i
                        break
            if bad >= 0:
                raise ValueError(f"DenseStack.run: order[{bad}] = {d.order[bad]} is not a row "
                                 "of x")
        cdef float[:, ::1] O = _f2("DenseStack.run: outputs", outputs, False)
        if O is not None:
            if O.shape[0] < last - first or O.shape[1] != self.d_out:
                raise ValueError(f"DenseStack.run: outputs: expected at least ({last - first}, "
                                 f"{self.d_out}), got {_shape2(O)}")
            _disjoint("DenseStack.run: outputs", _p2(O), _n2(O), "x", d.x, <size_t>x.nbytes)
            _disjoint("DenseStack.run: outputs", _p2(O), _n2(O), "sums", &S[0], 32)
            _disjoint("DenseStack.run: outputs", _p2(O), _n2(O), "the parameters",
                      self.s.params, 4 * self.s.n_params)
            _disjoint("DenseStack.run: outputs", _p2(O), _n2(O), "the gradients",
                      self.s.grads, 4 * self.s.n_params)
            d.outputs, d.outputs_first = &O[0, 0], first
        if step_end is not None:
            if not callable(step_end):
                raise TypeError(f"DenseStack.run: step_end: expected a callable, got "
                                f"{type(step_end).__name__}")
            self._step_end, self._step_error = step_end, None
            d.step_end, d.step_ctx = _stack_step_end, <void *>self
        cdef int status = 0
        cdef int64_t done
        cdef const float *sp = &SC[0, 0] if train else NULL
        with nogil:
            done = fnn_stack_run(&self.s, &d, train, start, n_steps, sp, &S[0], &status,
                                 _n_threads)
        self._reduce = self._step_end = self._keep_exchange = None
        if self._step_error is not None:
            error, self._step_error = self._step_error, None
            raise error
        if status == -4:
            error, self._reduce_error = self._reduce_error, None
            raise error if shared is None else shared._gone()
        if status == -2:
            raise ValueError(f"labels must be integers in [0, {self.d_out})")
        return done, status     # status -3: NaN or inf in the batch after the `done` run

    def predict(self, x, out, int64_t start, pre=None):
        """Outputs of rows start .. start + len(out) - 1 of x into out."""
        cdef fnn_stack_data d
        self._data(&d, x, None, None, None, pre)
        cdef float[:, ::1] O = _f2("DenseStack.predict: out", out, True)
        if O.shape[1] != self.d_out or start < 0 or start + O.shape[0] > d.rows:
            raise ValueError(f"DenseStack.predict: out: expected (rows, {self.d_out}) within "
                             f"{d.rows} rows of x from row {start}, got {_shape2(O)}")
        if O.shape[0] == 0:
            return
        cdef const void *op = _p2(O)
        cdef size_t on = _n2(O)
        cdef int i
        _disjoint("DenseStack.predict: out", op, on, "x", d.x, <size_t>x.nbytes)
        for i in range(self.s.n_layers):
            _disjoint("DenseStack.predict: out", op, on, f"layer {i}'s kernel",
                      self.dense[i].kernel, 4 * <size_t>self.dense[i].d_in * self.dense[i].d_out)
            _disjoint("DenseStack.predict: out", op, on, f"layer {i}'s bias",
                      self.dense[i].bias, 4 * <size_t>self.dense[i].d_out)
        cdef int status
        with nogil:
            status = fnn_stack_predict(&self.s, &d, &O[0, 0], start, O.shape[0], _n_threads)
        if status == -3:
            raise ValueError("x contains NaN or inf values")


# ---- Embedding ---------------------------------------------------------------------------------
cdef const void *_ids(str name, ids, int *wide, size_t *n) except? NULL:
    """The data of a C-contiguous 1-D int32 or int64 index array (its width in `wide`)."""
    cdef const int32_t[::1] I32
    cdef const int64_t[::1] I64
    dt = getattr(ids, "dtype", None)
    if dt is not None and str(dt) == "int64":
        I64 = ids
        wide[0], n[0] = 1, I64.shape[0]
        return &I64[0] if I64.shape[0] else NULL
    if dt is not None and str(dt) == "int32":
        I32 = ids
        wide[0], n[0] = 0, I32.shape[0]
        return &I32[0] if I32.shape[0] else NULL
    raise TypeError(f"{name}: expected a C-contiguous 1-D int32 or int64 array, got "
                    f"{_describe(ids)}")


def embedding_forward(table, ids, out):
    """out[i] = table[ids[i]]; returns -1, or the position of the first index out of range
    (then nothing is written)."""
    cdef const float[:, ::1] T = _cf2("embedding_forward: table", table, True)
    cdef float[:, ::1] O = _f2("embedding_forward: out", out, True)
    cdef int wide
    cdef size_t n
    cdef const void *p = _ids("embedding_forward: ids", ids, &wide, &n)
    cdef int64_t bad
    _same_shape("embedding_forward: out", _shape2(O), (<Py_ssize_t>n, T.shape[1]))
    if n == 0 or T.shape[1] == 0:
        return -1
    _disjoint("embedding_forward: out", _p2(O), _n2(O), "table", _p2(T), _n2(T))
    with nogil:
        bad = fnn_embedding_first_bad(p, wide, n, T.shape[0])
        if bad < 0:
            fnn_embedding_forward(&T[0, 0], p, wide, n, T.shape[1], &O[0, 0], _n_threads)
    return bad


def embedding_backward(ids, dy, d_table, clear=None):
    """d_table[ids[i]] += dy[i] after zeroing the rows in `clear` (all rows when None).
    Returns -1, or the position of the first index of ids (then of clear) out of range
    (then nothing is written)."""
    cdef const float[:, ::1] DY = _cf2("embedding_backward: dy", dy, True)
    cdef float[:, ::1] D = _f2("embedding_backward: d_table", d_table, True)
    cdef int wide, cwide = 0
    cdef size_t n, nc = 0
    cdef const void *p = _ids("embedding_backward: ids", ids, &wide, &n)
    cdef const void *c = NULL
    cdef int64_t bad = -1, bad_clear = -1
    if clear is not None:
        c = _ids("embedding_backward: clear", clear, &cwide, &nc)
    _same_shape("embedding_backward: dy", _shape2(DY), (<Py_ssize_t>n, D.shape[1]))
    if D.shape[0] == 0 or D.shape[1] == 0:
        return -1
    _disjoint("embedding_backward: d_table", _p2(D), _n2(D), "dy", _p2(DY), _n2(DY))
    with nogil:
        if n:
            bad = fnn_embedding_first_bad(p, wide, n, D.shape[0])
        if bad < 0 and nc:
            bad_clear = fnn_embedding_first_bad(c, cwide, nc, D.shape[0])
        if bad < 0 and bad_clear < 0:
            fnn_embedding_backward(p, wide, n, &DY[0, 0] if n else NULL, D.shape[1], &D[0, 0],
                                   D.shape[0], c if clear is not None else NULL, cwide, nc,
                                   _n_threads)
    if bad_clear >= 0:
        raise ValueError(f"embedding_backward: clear holds a row outside [0, {D.shape[0]})")
    return bad
# ---- recurrent layers (csrc/recurrent.c) -------------------------------------------------------
# Every array is passed flat (C-contiguous, any shape viewed 1-D) with the sequence's sizes
# given: each length is checked against them before the kernel runs.
_RNN_KINDS = {"simple": (0, 1), "lstm": (1, 4), "gru": (2, 3)}


def rnn_act_supported(int act):
    """Whether the recurrent kernels compute this activation id (an unknown id is an error,
    as in activation_needs_input, not "unsupported")."""
    _check_act(act)
    return bool(fnn_rnn_act_supported(act))


cdef int _rnn_len(str name, Py_ssize_t got, Py_ssize_t want) except -1:
    if got != want:
        raise ValueError(f"{name}: expected {want} floats for this sequence, got {got}")
    return 0


cdef tuple _rnn_setup(str fn, fnn_rnn *r, str kind, int steps, int batch, int d_in, int units,
                      int act, int rec_act, bint reset_after, bint zero_output,
                      const float[::1] K, const float[::1] R, const float[::1] Bv):
    if kind not in _RNN_KINDS:
        raise ValueError(f"{fn}: kind must be one of {sorted(_RNN_KINDS)}, got {kind!r}")
    if not fnn_rnn_act_supported(act) or not fnn_rnn_act_supported(rec_act):
        raise ValueError(f"{fn}: activation ids ({act}, {rec_act}): one has no recurrent "
                         "kernel (use the reference path)")
    if steps < 1 or batch < 1 or d_in < 1 or units < 1:
        raise ValueError(f"{fn}: sizes must be positive, got steps={steps}, batch={batch}, "
                         f"d_in={d_in}, units={units}")
    code, gates = _RNN_KINDS[kind]
    cdef Py_ssize_t gu = <Py_ssize_t>gates * units
    _fits_int(f"{fn}: steps * batch * max(d_in, gates * units)",
              <Py_ssize_t>steps * batch * max(d_in, gu))
    _rnn_len(f"{fn}: kernel", K.shape[0], <Py_ssize_t>d_in * gu)
    _rnn_len(f"{fn}: recurrent", R.shape[0], <Py_ssize_t>units * gu)
    two = code == 2 and reset_after
    if Bv is not None:
        _rnn_len(f"{fn}: bias", Bv.shape[0], gu * (2 if two else 1))
    r.kind, r.steps, r.batch, r.d_in, r.units = code, steps, batch, d_in, units
    r.act, r.rec_act, r.reset_after, r.zero_output = act, rec_act, reset_after, zero_output
    r.kernel, r.recurrent = &K[0], &R[0]
    r.bias = NULL if Bv is None else &Bv[0]
    r.x_ld = r.h_ld = 0
    return (code, gu)


cdef Py_ssize_t _rnn_packed(str fn, fnn_rnn *r, int code, bint packed, hs,
                            rec_mask) except -1:
    """x's length: with packed, x holds rows [x_t | h_{t-1}] ((steps + 1) * batch rows of
    d_in + units floats) and hs is None (it lives there)."""
    if not packed:
        return <Py_ssize_t>r.steps * r.batch * r.d_in
    if code == 2 or rec_mask is not None or hs is not None:
        raise ValueError(f"{fn}: packed x holds hs (pass hs=None); SimpleRNN and LSTM "
                         "without recurrent dropout only")
    r.x_ld = r.h_ld = r.d_in + r.units
    return (<Py_ssize_t>r.steps + 1) * r.batch * (r.d_in + r.units)


cdef const uint8_t *_rnn_mask(str fn, mask, Py_ssize_t n) except? NULL:
    if mask is None:
        return NULL
    cdef const uint8_t[::1] M
    if getattr(mask, "dtype", None) != bool or not mask.flags.c_contiguous:
        raise TypeError(f"{fn}: mask must be a C-contiguous 1-D bool array, got "
                        f"{_describe(mask)}")
    if mask.ndim != 1:      # flat, as every other array here
        raise ValueError(f"{fn}: mask must be a C-contiguous 1-D bool array, got "
                         f"{_describe(mask)}")
    try:
        M = mask.view("uint8").reshape(-1)      # a view: the pointer lives as mask does
    except Exception as e:
        raise TypeError(f"{fn}: mask must be a C-contiguous bool array, got "
                        f"{_describe(mask)}") from e
    _rnn_len(f"{fn}: mask", M.shape[0], n)
    return &M[0]


cdef tuple _extent3(const float[:, :, :] a):
    """The lowest address a 3-D view touches and its span in bytes (strides may be negative)."""
    cdef const char *p = <const char *>&a[0, 0, 0]
    cdef Py_ssize_t lo = 0, hi = 4 * a.shape[2], k
    for k in range(2):
        if a.strides[k] < 0:
            lo += (a.shape[k] - 1) * a.strides[k]
        else:
            hi += (a.shape[k] - 1) * a.strides[k]
    return <size_t>(p + lo), <size_t>(hi - lo)


def copy_steps(src, dst):
    """dst[...] = src for two 3-D float32 arrays of one shape, each with a contiguous last
    axis and any strides on the first two (a batch-major sequence into a time-major one or
    back), on fastnn's threads. They must not overlap."""
    fn = "copy_steps"
    cdef const float[:, :, :] S
    cdef float[:, :, :] D
    try:
        S = src
    except Exception as e:
        raise (TypeError if str(getattr(src, "dtype", "")) != "float32" else ValueError)(
            f"{fn}: src: expected a 3-D float32 array with a contiguous last axis, got "
            f"{_describe(src)} ({e})") from None
    try:
        D = dst
    except Exception as e:
        raise (TypeError if str(getattr(dst, "dtype", "")) != "float32" else ValueError)(
            f"{fn}: dst: expected a writable 3-D float32 array with a contiguous last axis, "
            f"got {_describe(dst)} ({e})") from None
    if S.strides[2] != 4 or D.strides[2] != 4:
        raise ValueError(f"{fn}: {'src' if S.strides[2] != 4 else 'dst'}: expected a "
                         "contiguous last axis")
    _same_shape(f"{fn}: dst", (D.shape[0], D.shape[1], D.shape[2]),
                (S.shape[0], S.shape[1], S.shape[2]))
    if S.shape[0] == 0 or S.shape[1] == 0 or S.shape[2] == 0:
        return
    _fits_int(f"{fn}: src's first axis", S.shape[0])
    _fits_int(f"{fn}: src's second axis", S.shape[1])
    _fits_int(f"{fn}: src's last axis", S.shape[2])
    sp, sn = _extent3(S)
    dp, dn = _extent3(D)
    _disjoint(f"{fn}: dst", <const void *><size_t>dp, dn, "src", <const void *><size_t>sp, sn)
    with nogil:
        fnn_copy_steps(&S[0, 0, 0], S.strides[0] // 4, S.strides[1] // 4, &D[0, 0, 0],
                       D.strides[0] // 4, D.strides[1] // 4, <int>S.shape[0], <int>S.shape[1],
                       <int>S.shape[2], _n_threads)


def rnn_forward(str kind, int steps, int batch, int d_in, int units, x, kernel, recurrent,
                bias, mask, ys, hs, cs, gates, extra, rec, int act, int rec_act,
                bint reset_after=True, bint zero_output=False, rec_mask=None, hd=None,
                bint packed=False):
    """A recurrent layer forward over a time-major sequence (see fnn_rnn_forward): hs[0] (and
    cs[0]) hold the initial states. mask: bool (steps, batch) or None. rec_mask (batch *
    units) with hd (steps * batch * units): recurrent dropout. ys may be None without a mask
    (the outputs are then hs[1:]). packed: x is ((steps + 1) * batch, d_in + units), row
    t * batch + b holding [x_t | h_{t-1}] (the initial states in rows 0's last units
    columns), and hs is None. Flat float32 arrays."""
    fn = "rnn_forward"
    cdef fnn_rnn r
    cdef const float[::1] X = _cf1(f"{fn}: x", x, True)
    cdef float[::1] XH = _f1(f"{fn}: x", x, True) if packed else None
    cdef const float[::1] K = _cf1(f"{fn}: kernel", kernel, True)
    cdef const float[::1] R = _cf1(f"{fn}: recurrent", recurrent, True)
    cdef const float[::1] Bv = _cf1(f"{fn}: bias", bias, False)
    code, gu = _rnn_setup(fn, &r, kind, steps, batch, d_in, units, act, rec_act, reset_after,
                          zero_output, K, R, Bv)
    cdef float[::1] Y = _f1(f"{fn}: ys", ys, False)
    cdef Py_ssize_t nx = _rnn_packed(fn, &r, code, packed, hs, rec_mask)
    cdef float[::1] H = _f1(f"{fn}: hs", hs, not packed)
    cdef float[::1] C = _f1(f"{fn}: cs", cs, code == 1)
    cdef float[::1] G = _f1(f"{fn}: gates", gates, True)
    cdef float[::1] E = _f1(f"{fn}: extra", extra, code != 0)
    cdef float[::1] RC = _f1(f"{fn}: rec", rec, True)
    cdef const float[::1] RM = _cf1(f"{fn}: rec_mask", rec_mask, False)
    cdef float[::1] HD = _f1(f"{fn}: hd", hd, RM is not None)
    cdef Py_ssize_t su = <Py_ssize_t>batch * units, n = <Py_ssize_t>steps * batch
    if RM is not None:
        _rnn_len(f"{fn}: rec_mask", RM.shape[0], su)
        _rnn_len(f"{fn}: hd", HD.shape[0], n * units)
    _rnn_len(f"{fn}: x", X.shape[0], nx)
    if Y is not None:
        _rnn_len(f"{fn}: ys", Y.shape[0], n * units)
    elif mask is not None:
        raise ValueError(f"{fn}: ys may be None only without a mask")
    if not packed:
        _rnn_len(f"{fn}: hs", H.shape[0], (steps + 1) * su)
    if code == 1:
        _rnn_len(f"{fn}: cs", C.shape[0], (steps + 1) * su)
    _rnn_len(f"{fn}: gates", G.shape[0], n * gu)
    if E is not None:
        _rnn_len(f"{fn}: extra", E.shape[0], n * units)
    _rnn_len(f"{fn}: rec", RC.shape[0], batch * gu)
    cdef const uint8_t *mp = _rnn_mask(fn, mask, n)
    outs = [(nm, <size_t>_p1(a), _n1(a)) for nm, a in
            (("ys", Y), ("x (packed with hs)" if packed else "hs", XH if packed else H),
             ("cs", C), ("gates", G), ("extra", E), ("rec", RC),
             ("hd", HD if RM is not None else None))]
    _all_disjoint(fn, outs, [(nm, <size_t>_p1(a), _n1(a)) for nm, a in
                             (("x", None if packed else X), ("kernel", K), ("recurrent", R),
                              ("bias", Bv), ("rec_mask", RM))])
    _need_blas()
    cdef float *cp = NULL if C is None else &C[0]
    cdef float *ep = NULL if E is None else &E[0]
    cdef const float *rmp = NULL if RM is None else &RM[0]
    cdef float *hdp = NULL if RM is None else &HD[0]
    cdef float *yp = NULL if Y is None else &Y[0]
    cdef float *hp = &XH[d_in] if packed else &H[0]
    cdef int rc
    with nogil:
        rc = fnn_rnn_forward(&r, &X[0], mp, yp, hp, cp, &G[0], ep, &RC[0], rmp, hdp,
                             _n_threads)
    if rc:
        raise RuntimeError(f"{fn}: no BLAS")


def rnn_backward(str kind, int steps, int batch, int d_in, int units, x, kernel, recurrent,
                 bias, mask, hs, cs, gates, extra, dys, dh, dc, carry, dht, drh, dgx, dgr,
                 d_kernel, d_recurrent, d_bias, dx, int act, int rec_act,
                 bint reset_after=True, bint zero_output=False, rec_mask=None, hd=None,
                 bint packed=False):
    """Back through time (see fnn_rnn_backward): dh (and dc) hold the last states' gradients
    and receive the initial states'. dgr may be dgx itself but for a GRU with reset_after;
    dx may be None; dys may be None (no output has a gradient). packed: x and hs as
    rnn_forward's (hs None)."""
    fn = "rnn_backward"
    cdef fnn_rnn r
    cdef const float[::1] X = _cf1(f"{fn}: x", x, True)
    cdef const float[::1] K = _cf1(f"{fn}: kernel", kernel, True)
    cdef const float[::1] R = _cf1(f"{fn}: recurrent", recurrent, True)
    cdef const float[::1] Bv = _cf1(f"{fn}: bias", bias, False)
    code, gu = _rnn_setup(fn, &r, kind, steps, batch, d_in, units, act, rec_act, reset_after,
                          zero_output, K, R, Bv)
    cdef Py_ssize_t nx = _rnn_packed(fn, &r, code, packed, hs, rec_mask)
    cdef const float[::1] H = _cf1(f"{fn}: hs", hs, not packed)
    cdef const float[::1] C = _cf1(f"{fn}: cs", cs, code == 1)
    cdef const float[::1] G = _cf1(f"{fn}: gates", gates, True)
    cdef const float[::1] E = _cf1(f"{fn}: extra", extra, code != 0)
    cdef const float[::1] DY = _cf1(f"{fn}: dys", dys, False)
    cdef float[::1] DH = _f1(f"{fn}: dh", dh, True)
    cdef float[::1] DC = _f1(f"{fn}: dc", dc, code == 1)
    cdef float[::1] CA = _f1(f"{fn}: carry", carry, True)
    cdef float[::1] DT = _f1(f"{fn}: dht", dht, True)
    cdef float[::1] DR = _f1(f"{fn}: drh", drh, True)
    cdef float[::1] DGX = _f1(f"{fn}: dgx", dgx, True)
    cdef float[::1] DGR = _f1(f"{fn}: dgr", dgr, True)
    cdef float[::1] DK = _f1(f"{fn}: d_kernel", d_kernel, True)
    cdef float[::1] DRK = _f1(f"{fn}: d_recurrent", d_recurrent, True)
    cdef float[::1] DB = _f1(f"{fn}: d_bias", d_bias, Bv is not None)
    cdef float[::1] DX = _f1(f"{fn}: dx", dx, False)
    cdef const float[::1] RM = _cf1(f"{fn}: rec_mask", rec_mask, False)
    cdef const float[::1] HD = _cf1(f"{fn}: hd", hd, RM is not None)
    cdef Py_ssize_t su = <Py_ssize_t>batch * units, n = <Py_ssize_t>steps * batch
    if RM is not None:
        _rnn_len(f"{fn}: rec_mask", RM.shape[0], su)
        _rnn_len(f"{fn}: hd", HD.shape[0], n * units)
    _rnn_len(f"{fn}: x", X.shape[0], nx)
    if not packed:
        _rnn_len(f"{fn}: hs", H.shape[0], (steps + 1) * su)
    if code == 1:
        _rnn_len(f"{fn}: cs", C.shape[0], (steps + 1) * su)
        _rnn_len(f"{fn}: dc", DC.shape[0], su)
    _rnn_len(f"{fn}: gates", G.shape[0], n * gu)
    if E is not None:
        _rnn_len(f"{fn}: extra", E.shape[0], n * units)
    if DY is not None:
        _rnn_len(f"{fn}: dys", DY.shape[0], n * units)
    for nm, a in (("dh", DH), ("carry", CA), ("dht", DT), ("drh", DR)):
        _rnn_len(f"{fn}: {nm}", a.shape[0], su)
    _rnn_len(f"{fn}: dgx", DGX.shape[0], n * gu)
    _rnn_len(f"{fn}: dgr", DGR.shape[0], n * gu)
    _rnn_len(f"{fn}: d_kernel", DK.shape[0], K.shape[0])
    _rnn_len(f"{fn}: d_recurrent", DRK.shape[0], R.shape[0])
    if Bv is not None:
        _rnn_len(f"{fn}: d_bias", DB.shape[0], Bv.shape[0])
    if DX is not None:
        _rnn_len(f"{fn}: dx", DX.shape[0], n * d_in)
    cdef bint separate = code == 2 and reset_after
    outs = [(nm, <size_t>_p1(a), _n1(a)) for nm, a in
            (("dh", DH), ("dc", DC), ("carry", CA), ("dht", DT), ("drh", DR), ("dgx", DGX),
             ("d_kernel", DK), ("d_recurrent", DRK), ("d_bias", DB), ("dx", DX))]
    if _p1(DGR) != _p1(DGX):
        outs.append(("dgr", <size_t>_p1(DGR), _n1(DGR)))
    elif separate:
        raise ValueError(f"{fn}: a GRU with reset_after needs dgr separate from dgx")
    _all_disjoint(fn, outs, [(nm, <size_t>_p1(a), _n1(a)) for nm, a in
                             (("x", X), ("kernel", K), ("recurrent", R), ("bias", Bv),
                              ("hs", H), ("cs", C), ("gates", G), ("extra", E), ("dys", DY),
                              ("rec_mask", RM), ("hd", HD if RM is not None else None))])
    cdef const uint8_t *mp = _rnn_mask(fn, mask, n)
    _need_blas()
    cdef const float *cp = NULL if C is None else &C[0]
    cdef const float *ep = NULL if E is None else &E[0]
    cdef float *dcp = NULL if DC is None else &DC[0]
    cdef float *dbp = NULL if DB is None else &DB[0]
    cdef float *dxp = NULL if DX is None else &DX[0]
    cdef const float *rmp = NULL if RM is None else &RM[0]
    cdef const float *hdp = NULL if RM is None else &HD[0]
    cdef const float *dyp = NULL if DY is None else &DY[0]
    cdef const float *hp = &X[d_in] if packed else &H[0]
    cdef int rc
    with nogil:
        rc = fnn_rnn_backward(&r, &X[0], mp, hp, cp, &G[0], ep, dyp, &DH[0], dcp,
                              &CA[0], &DT[0], &DR[0], &DGX[0], &DGR[0], &DK[0], &DRK[0], dbp,
                              dxp, rmp, hdp, _n_threads)
    if rc == -2:
        raise MemoryError(f"{fn}: out of memory")
    if rc:
        raise RuntimeError(f"{fn}: no BLAS")
