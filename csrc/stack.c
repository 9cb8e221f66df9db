/* A Sequential of Dense layers run batch after batch in C: gather the batch's rows, forward,
 * loss, backward, one optimizer step, metric counts, then the next batch, with no Python in
 * between. Each piece is the kernel the layer-by-layer path calls, in the same order, so both
 * paths give bit-identical results; this one only removes the per-step interpreter work, which
 * is most of a small model's step. The caller (fastnn/stack.py through _core.DenseStack) checks
 * every size before any pointer gets here. */
#include <math.h>
#include <string.h>
#include "fastnn.h"

/* Row `i` of the run's order. */
static inline int64_t row_at(const fnn_stack_data *d, int64_t i) {
    return d->order ? d->order[i] : i;
}

/* Whether every value is finite (exponent bits not all ones), branch-free so it vectorizes;
 * a large batch is split over the threads (it is read from memory). */
FNN_DISPATCH
static int all_finite(const float *p, size_t n, int n_threads) {
    uint32_t bad = 0;
    ptrdiff_t i, len = (ptrdiff_t)n;
    int nt = fnn_threads(n / 8, n_threads);
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static) reduction(|:bad),
        for (i = 0; i < len; i++) {
            uint32_t bits;
            memcpy(&bits, p + i, sizeof bits);
            bad |= (bits & 0x7f800000u) == 0x7f800000u;
        });
    return !bad;
}

/* Whether n float32 values are all finite: the check of a whole array before a run whose
 * callbacks see single batches (one parallel pass, no temporary). */
int fnn_all_finite(const float *p, size_t n, int n_threads) {
    return all_finite(p, n, n_threads);
}

/* Rows [first, first + rows) of the order, converted to float32 into x_buf (the C cast, as
 * NumPy's astype). A contiguous float32 run is used where it lies, without a copy. NULL when a
 * value is NaN or infinite (after the cast: a double too big for float32 counts); checking
 * each batch as it is read replaces a scan of the whole array before training. Rows scattered
 * over a large array wait on memory, so a batch of more than GATHER_PARALLEL floats is split
 * over the threads (784-128-64-10 at batch 32: 15 -> 9 us a step); each row is checked while
 * it is still in cache. */
#define GATHER_PARALLEL 16384

/* A preprocessing layer's arithmetic on one gathered row (see fnn_stack_data.pre), at the
 * CPU's vector width (a division per value). */
FNN_DISPATCH
void fnn_preprocess_row(const fnn_stack_data *d, float *row, size_t len) {
    const float *a = d->pre_a, *b = d->pre_b;
    if (d->pre == FNN_PRE_AFFINE)
        for (size_t c = 0; c < len; c++) row[c] = row[c] * a[c] + b[c];
    else if (d->pre == FNN_PRE_STANDARDIZE)
        for (size_t c = 0; c < len; c++) row[c] = (row[c] - a[c]) / b[c];
}

static const float *gather_x(const fnn_stack_data *d, float *dst_buf, int64_t first, int rows,
                             int n_threads) {
    size_t len = (size_t)d->x_len;
    if (!d->order && d->x_type == FNN_SRC_F32 && d->pre == FNN_PRE_NONE) {
        const float *x = (const float *)d->x + (size_t)first * len;
        return all_finite(x, (size_t)rows * len, n_threads) ? x : NULL;
    }
    int nt = n_threads > 1 && (size_t)rows * len > GATHER_PARALLEL ? n_threads : 1, r;
    uint32_t bad = 0;
    FNN_PARALLEL_FOR(schedule(static) reduction(|:bad),
        for (r = 0; r < rows; r++) {
            size_t src = (size_t)row_at(d, first + r) * len;
            float *dst = dst_buf + (size_t)r * len;
            if (d->x_type == FNN_SRC_F32) {
                memcpy(dst, (const float *)d->x + src, len * sizeof(float));
            } else if (d->x_type == FNN_SRC_F64) {
                const double *x = (const double *)d->x + src;
                for (size_t c = 0; c < len; c++) dst[c] = (float)x[c];
            } else {
                const uint8_t *x = (const uint8_t *)d->x + src;
                for (size_t c = 0; c < len; c++) dst[c] = (float)x[c];
            }
            if (d->x_type != FNN_SRC_U8) bad |= !all_finite(dst, len, 1);
            fnn_preprocess_row(d, dst, len);
        });
    return bad ? NULL : dst_buf;
}

/* The batch's targets and sample weights into their buffers (NULL when absent). */
static void gather_targets(const fnn_stack *s, const fnn_stack_data *d, int64_t first, int rows,
                           const int32_t **labels, const float **targets,
                           const float **weights) {
    size_t len = (size_t)d->target_len;
    *labels = NULL;
    *targets = NULL;
    *weights = NULL;
    for (int r = 0; r < rows; r++) {
        int64_t src = row_at(d, first + r);
        if (d->labels) s->label_buf[r] = d->labels[src];
        else memcpy(s->target_buf + (size_t)r * len, d->targets + (size_t)src * len,
                    len * sizeof(float));
        if (d->weights) s->weight_buf[r] = d->weights[src];
    }
    if (d->labels) *labels = s->label_buf;
    else *targets = s->target_buf;
    if (d->weights) *weights = s->weight_buf;
}

/* NumPy's argmax: the first maximum, or the first NaN when there is one. */
static size_t argmax(const float *p, size_t n) {
    size_t best = 0;
    if (isnan(p[0])) return 0;
    for (size_t c = 1; c < n; c++) {
        if (isnan(p[c])) return c;
        if (p[c] > p[best]) best = c;
    }
    return best;
}

/* Correct predictions in the batch, for Keras's accuracy metrics. */
static double count_correct(const fnn_stack *s, const float *out, size_t cols, int rows,
                            const int32_t *labels, const float *targets) {
    double correct = 0;
    for (int r = 0; r < rows; r++) {
        const float *p = out + (size_t)r * cols;
        if (s->metric == FNN_METRIC_SPARSE_ACC)
            correct += argmax(p, cols) == (size_t)labels[r];
        else if (s->metric == FNN_METRIC_ACC)
            correct += argmax(p, cols) == argmax(targets + (size_t)r * cols, cols);
        else
            correct += (p[0] > s->threshold) == (targets[r] > 0.5f);
    }
    return correct;
}

static int loss_value_and_grad(const fnn_stack *s, const float *out, int rows, size_t cols,
                               const int32_t *labels, const float *targets,
                               const float *weights, float scale, float *grad, int n_threads) {
    switch (s->loss) {
    case FNN_LOSS_SPARSE_XENT:
        return fnn_softmax_xent_sparse(out, labels, weights, scale, s->row_loss, grad,
                                       (size_t)rows, cols, n_threads);
    case FNN_LOSS_XENT:
        return fnn_softmax_xent_dense(out, targets, weights, scale, s->row_loss, grad,
                                      (size_t)rows, cols, n_threads);
    case FNN_LOSS_BXENT:
        return fnn_sigmoid_bxent(out, targets, weights, scale, s->row_loss, grad, (size_t)rows,
                                 cols, n_threads);
    case FNN_LOSS_MSE:
        return fnn_squared_error(out, targets, weights, scale, s->row_loss, grad, (size_t)rows,
                                 cols, n_threads);
    default:
        return fnn_absolute_error(out, targets, weights, scale, s->row_loss, grad,
                                  (size_t)rows, cols, n_threads);
    }
}

/* Forward through every layer; returns the last layer's output. */
static const float *forward(const fnn_stack *s, const float *x, int rows, int training,
                            int n_threads) {
    for (int i = 0; i < s->n_layers; i++) {
        fnn_dense_forward(&s->layers[i], x, s->z[i], s->y[i], rows, training, n_threads);
        x = s->y[i];
    }
    return x;
}

/* The optimizer step, with this step's scalars, on params [at, at + len) of the arena, with
 * the weight penalty pen read in its pass (NULL for none); an elementwise clip (clipvalue)
 * only: a norm needs every gradient first (run_batch). */
static void update_range(const fnn_stack *s, const float *scalars, size_t at, size_t len,
                         fnn_penalty *pen, int n_threads) {
    float *slots[FNN_OPT_SLOTS];
    float clip = s->clip_mode == FNN_CLIP_VALUE ? s->clip_limit : INFINITY;
    for (int j = 0; j < FNN_OPT_SLOTS; j++) slots[j] = s->slots[j] ? s->slots[j] + at : NULL;
    fnn_optimizer_step(s->opt, s->params + at, s->grads + at, slots, len, scalars, 1.0f, clip,
                       pen, n_threads);
}

/* ---- weight penalties (s->reg) ---- */
static int penalized(const float *factors) { return factors[0] != 0.0f || factors[1] != 0.0f; }

/* Where layer i's kernel rows start in s->pen_rows (its bias's value follows them). */
static size_t pen_at(const fnn_stack *s, int i) {
    size_t at = 0;
    for (int j = 0; j < i; j++) at += (size_t)s->layers[j].d_in + 1;
    return at;
}

/* Rows [lo, hi) of layer i's kernel: their penalty values into pen_rows and, training, the
 * penalty's gradient added to theirs. */
static void penalize_kernel(const fnn_stack *s, int i, int lo, int hi, int train,
                            int n_threads) {
    const fnn_dense *layer = &s->layers[i];
    const float *r = s->reg + 4 * i;
    size_t cols = (size_t)layer->d_out;
    double *value = s->pen_rows + pen_at(s, i) + lo;
    if (!penalized(r) || hi <= lo) return;
    value[0] = fnn_l1l2_penalty(layer->kernel + (size_t)lo * cols,
                        train ? layer->d_kernel + (size_t)lo * cols : NULL,
                        (size_t)(hi - lo) * cols, r[0], r[1], n_threads);
    memset(value + 1, 0, (size_t)(hi - lo - 1) * sizeof(double));
}

static void penalize_bias(const fnn_stack *s, int i, int train, int n_threads) {
    const fnn_dense *layer = &s->layers[i];
    const float *r = s->reg + 4 * i + 2;
    if (layer->bias && penalized(r))
        s->pen_rows[pen_at(s, i) + layer->d_in] =
            fnn_l1l2_penalty(layer->bias, train ? layer->d_bias : NULL, (size_t)layer->d_out, r[0], r[1],
                     n_threads);
}

static void penalize_all(const fnn_stack *s, int train, int n_threads) {
    for (int i = 0; i < s->n_layers; i++) {
        penalize_kernel(s, i, 0, s->layers[i].d_in, train, n_threads);
        penalize_bias(s, i, train, n_threads);
    }
}

/* x's bits (0 exactly for +0.0). */
static uint64_t bits_of(double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* The penalties' value: each weight's blocks of rows summed in order, then the weights layer
 * by layer, kernel then bias, as the layer-by-layer path sums them (Model._regularization).
 * A block's value sits at its first row, its other rows +0.0: only the runs of 8 rows with a
 * nonzero bit are added (the same values in the same order, x + 0.0 == x for x >= 0), not
 * a chain of d_in dependent adds (784 rows: 640 -> 120 ns). */
static double penalty_total(const fnn_stack *s) {
    double total = 0.0;
    size_t at = 0;
    for (int i = 0; i < s->n_layers; i++) {
        const fnn_dense *layer = &s->layers[i];
        if (penalized(s->reg + 4 * i)) {
            const double *rows = s->pen_rows + at;
            double value = 0.0;
            int r = 0;
            for (; r + 8 <= layer->d_in; r += 8) {
                uint64_t any = 0;
                for (int j = 0; j < 8; j++) any |= bits_of(rows[r + j]);
                if (any)
                    for (int j = 0; j < 8; j++) value += rows[r + j];
            }
            for (; r < layer->d_in; r++) value += rows[r];
            total += value;
        }
        at += (size_t)layer->d_in;
        if (layer->bias && penalized(s->reg + 4 * i + 2)) total += s->pen_rows[at];
        at += 1;
    }
    return total;
}

typedef struct {
    const fnn_stack *s;
    const float *scalars;
    size_t kernel_at;
    int cols, layer;
} kernel_update;

/* Rows [lo, hi) of a layer's kernel gradient are final: their step, with their penalty read
 * in the update's pass (its value to pen_rows, as penalize_kernel puts it). A weight decay
 * comes before the update's pass, and the penalty is of the weights before it: then the
 * penalty takes a pass of its own first. */
static void update_kernel_rows(void *ctx, int lo, int hi, int n_threads) {
    const kernel_update *u = (const kernel_update *)ctx;
    const fnn_stack *s = u->s;
    const float *r = s->reg ? s->reg + 4 * u->layer : NULL;
    size_t at = u->kernel_at + (size_t)lo * u->cols, len = (size_t)(hi - lo) * u->cols;
    if (r && penalized(r) && u->scalars[0] == 0.0f && hi > lo) {
        fnn_penalty pen = {r[0], r[1], 0.0};
        double *value = s->pen_rows + pen_at(s, u->layer) + lo;
        update_range(s, u->scalars, at, len, &pen, n_threads);
        value[0] = pen.value;
        memset(value + 1, 0, (size_t)(hi - lo - 1) * sizeof(double));
        return;
    }
    if (r) penalize_kernel(s, u->layer, lo, hi, 1, n_threads);
    update_range(s, u->scalars, at, len, NULL, n_threads);
}

/* Backward through every layer. With scalars (the layers tiling the arena), each layer's
 * parameters take their optimizer step as soon as their gradients are final: the kernel's rows
 * block by block, on the thread that computed their gradient and holds those rows of the
 * kernel and optimizer state in its cache (the forward pass split the same rows the same way),
 * after the layer's input gradient has used the old kernel. The update is elementwise, so this
 * is the arithmetic of one step over the arena after the whole backward pass. kernel_step > 0
 * (plain SGD): the kernels in s->in_place_at take the step w -= kernel_step * x^T dz inside
 * their weight-gradient GEMM instead, exactly as the layer-by-layer path does. */
static void backward(const fnn_stack *s, const float *x, int rows, const float *scalars,
                     float kernel_step, int n_threads) {
    float *dy = s->grad;
    for (int i = s->n_layers - 1; i >= 0; i--) {
        const fnn_dense *layer = &s->layers[i];
        int act = (i == s->n_layers - 1 && s->fused) ? FNN_LINEAR : layer->act;
        const float *z = fnn_activation_needs_input(act) ? s->z[i] : NULL;
        float *dx = i > 0 ? s->dx[i] : NULL;
        int in_place = kernel_step > 0 && s->in_place_at && s->in_place_at[i] >= 0;
        kernel_update u = {s, scalars, scalars ? s->kernel_at[i] : 0, layer->d_out, i};
        fnn_rows_done done = {update_kernel_rows, &u};
        fnn_dense own;
        if (in_place) {     /* the kernel lies in the arena, which the stack may write */
            own = *layer;
            own.d_kernel = s->params + s->in_place_at[i];
            layer = &own;
        }
        fnn_dense_backward(layer, act, i > 0 ? s->y[i - 1] : x, z, s->y[i], dy, dy, dx, rows,
                           in_place ? kernel_step : 0.0f,
                           scalars && !in_place ? &done : NULL, n_threads);
        if (scalars && layer->d_bias && s->reg) penalize_bias(s, i, 1, n_threads);
        if (scalars && layer->d_bias)
            update_range(s, scalars, u.kernel_at + (size_t)layer->d_in * layer->d_out,
                         (size_t)layer->d_out, NULL, n_threads);
        dy = dx;
    }
}

/* The plain SGD learning rate of this step's scalars when the step is exactly w -= lr * g
 * (SGD, no weight decay, no momentum, no clipping) and some kernel takes it in place; else 0. */
static float plain_step(const fnn_stack *s, const float *scalars) {
    if (!s->in_place_at || s->opt != FNN_OPT_SGD || scalars[0] != 0.0f || scalars[2] != 0.0f ||
            s->clip_mode != FNN_CLIP_NONE)
        return 0.0f;
    return scalars[1] > 0.0f ? scalars[1] : 0.0f;
}

/* The optimizer step over the whole arena, clipped as the optimizer asks (a norm clip reads
 * every gradient first). */
static void apply_step(const fnn_stack *s, const float *scalars, int n_threads) {
    if (s->var_sizes)
        fnn_optimizer_update(s->opt, s->params, s->grads, s->slots, s->var_sizes, s->n_vars,
                            scalars, s->clip_mode, s->clip_limit, n_threads);
    else
        fnn_optimizer_update(s->opt, s->params, s->grads, s->slots, &s->n_params, 1, scalars,
                            s->clip_mode, s->clip_limit, n_threads);
}

/* One batch: forward, loss, metric counts and, training, backward and the optimizer step with
 * this step's scalars. Returns 0; -1 when the loss is not finite (its raw value is added to
 * sums[0..1] and nothing else happens); -2 for a label out of range (nothing happens).
 * penalty: evaluating, the weight penalties' value (training computes it in the step). */
static int run_batch(const fnn_stack *s, const fnn_stack_data *d, const float *x, int64_t first,
                     int rows, int train, const float *scalars, double penalty, double *sums,
                     int n_threads) {
    const int32_t *labels;
    const float *targets, *weights;
    size_t cols = (size_t)s->layers[s->n_layers - 1].d_out;
    gather_targets(s, d, first, rows, &labels, &targets, &weights);
    const float *out = forward(s, x, rows, train, n_threads);
    float scale = s->mean_reduction ? (float)(1.0 / rows) : 1.0f;
    if (loss_value_and_grad(s, out, rows, cols, labels, targets, weights, scale,
                            train ? s->grad : NULL, n_threads) != 0)
        return -2;
    double total = 0;
    for (int r = 0; r < rows; r++) total += s->row_loss[r];
    if (train && !isfinite(total)) {
        sums[0] += total;
        sums[1] += rows;
        return -1;
    }
    double counted = total * (s->mean_reduction ? 1.0 : (double)rows);
    if (d->outputs)
        memcpy(d->outputs + (size_t)(first - d->outputs_first) * cols, out,
               (size_t)rows * cols * sizeof(float));
    if (s->metric != FNN_METRIC_NONE) {
        sums[2] += count_correct(s, out, cols, rows, labels, targets);
        sums[3] += rows;
    }
    float step = train ? plain_step(s, scalars) : 0.0f;
    int norm_clip = s->clip_mode == FNN_CLIP_NORM || s->clip_mode == FNN_CLIP_GLOBAL_NORM;
    if (train && s->kernel_at && !norm_clip) {
        backward(s, x, rows, scalars, step, n_threads);
    } else if (train && step > 0) {     /* the rest of the arena, around the in-place kernels */
        backward(s, x, rows, NULL, step, n_threads);
        if (s->reg) penalize_all(s, 1, n_threads);
        for (int j = 0; j < s->n_update_spans; j++)
            update_range(s, scalars, s->update_spans[2 * j],
                         s->update_spans[2 * j + 1] - s->update_spans[2 * j], NULL, n_threads);
    } else if (train) {
        backward(s, x, rows, NULL, 0.0f, n_threads);
        if (s->reg) penalize_all(s, 1, n_threads);
        apply_step(s, scalars, n_threads);
    }
    if (train && s->reg) penalty = penalty_total(s);
    sums[0] += counted + (double)rows * penalty;     /* as Model._train_step counts it */
    sums[1] += rows;
    return 0;
}

/* run_batch under data parallelism (d->reduce, see fnn_stack_data): the same forward pass,
 * loss and backward pass on this rank's rows, then the sum of the gradient arena over the
 * ranks, then one optimizer step over the whole arena, the same on every rank (no update
 * inside the backward pass: no gradient is final before the sum). A rank without rows in the
 * last global batch adds zeros. Returns as run_batch does, and -4 when the reduction failed
 * (nothing updated). */
static int run_batch_reduced(const fnn_stack *s, const fnn_stack_data *d, const float *x,
                             int64_t first, int rows, const float *scalars, double *sums,
                             int n_threads) {
    const int32_t *labels;
    const float *targets, *weights;
    size_t cols = (size_t)s->layers[s->n_layers - 1].d_out;
    int64_t global = d->global_rows - (first / s->batch) * d->global_batch;
    if (global > d->global_batch) global = d->global_batch;
    double total = 0, correct = 0;
    int bad = 0;
    if (rows > 0) {
        gather_targets(s, d, first, rows, &labels, &targets, &weights);
        const float *out = forward(s, x, rows, 1, n_threads);
        float scale = s->mean_reduction ? (float)(1.0 / (double)global) : 1.0f;
        if (loss_value_and_grad(s, out, rows, cols, labels, targets, weights, scale, s->grad,
                                n_threads) != 0)
            return -2;
        for (int r = 0; r < rows; r++) total += s->row_loss[r];
        bad = !isfinite(total);
        if (!bad) {
            if (d->outputs)
                memcpy(d->outputs + (size_t)(first - d->outputs_first) * cols, out,
                       (size_t)rows * cols * sizeof(float));
            if (s->metric != FNN_METRIC_NONE)
                correct = count_correct(s, out, cols, rows, labels, targets);
            backward(s, x, rows, NULL, 0.0f, n_threads);
        }
    } else {
        memset(s->grads, 0, s->n_params * sizeof(float));
    }
    s->grads[s->n_params] = (float)bad;
    int stepped = d->reduce(d->reduce_ctx, scalars);
    if (stepped < 0) return -4;
    sums[0] += total * (s->mean_reduction ? 1.0 : (double)rows);
    sums[1] += rows;
    if (s->grads[s->n_params] != 0.0f) return -1;      /* a rank's loss was not finite */
    if (s->metric != FNN_METRIC_NONE) {
        sums[2] += correct;
        sums[3] += rows;
    }
    if (stepped) return 0;      /* (a shared arena: each rank updated its shard) */
    if (s->reg) {       /* the penalties once, on the summed gradients, as the rows count them */
        penalize_all(s, 1, n_threads);
        sums[0] += (double)rows * penalty_total(s);
    }
    apply_step(s, scalars, n_threads);
    return 0;
}

/* After step k of the epoch, the run's `step`-th, ended with status rc: whether the run ends
 * there, then with *status and the steps run in *step (a step whose loss was not finite
 * counts; so does a step after which d->step_end stops the run). */
static int run_ends(const fnn_stack_data *d, int64_t k, int rc, int *status, int64_t *step) {
    int stop = d->step_end && rc >= -1 && d->step_end(d->step_ctx, k, rc);
    if (rc != 0) {
        *status = rc;
        *step += rc == -1;
        return 1;
    }
    if (stop) {
        ++*step;
        return 1;
    }
    return 0;
}

/* ---- data parallelism exchanging activations (fnn_stack_data.exchange) ----
 * Ranks that each sum the others' partial weight gradients move parameter-sized data between
 * their cores every step (a 784 x 128 kernel's: 401 KB a rank), which costs a small model as
 * much as its step. A weight gradient x^T dz is a sum over the batch's rows, so the ranks
 * share their rows' layer inputs x and output gradients dz instead (16 x 784 floats and less
 * a layer at batch 32), and each computes its shard of every kernel's rows over the whole
 * global batch in one GEMM, as one process would, and updates that shard.
 * The first layer's kernel (the big one of an MLP) then still crosses between the cores: each
 * rank reads all of it forward and updates its rows, which the others read next. So its
 * forward product is split as its gradient is: each rank multiplies its columns of the whole
 * global batch's inputs by its rows of the kernel, and sums the ranks' partial products for
 * its rows; a rank only ever touches its own rows of that kernel. Its inputs need no
 * gradient, and each rank gathers its rows of the next batch into the buffer during a step.
 * A step: (first step of an epoch: gather, barrier) partial product, barrier; forward and
 * backward of this rank's rows, the next batch gathered, barrier; the shards' gradients and
 * updates, barrier (every shard updated before anything reads the parameters again). */

/* The buffer, each part at a 64-byte boundary: layer by layer, the global batch's inputs then
 * output gradients; a second input buffer of the first layer (a step gathers the next batch
 * while the others may still read this one); the ranks' partial products of the first layer
 * (ranks x global batch x its outputs). */
static size_t exchange_part(int64_t rows, int width) {
    return ((size_t)rows * (size_t)width + 15) / 16 * 16;
}

size_t fnn_stack_exchange_floats(const fnn_stack *s, int64_t global_batch, int ranks) {
    size_t n = exchange_part(global_batch, s->layers[0].d_in) +
               exchange_part(global_batch * ranks, s->layers[0].d_out);
    for (int i = 0; i < s->n_layers; i++)
        n += exchange_part(global_batch, s->layers[i].d_in) +
             exchange_part(global_batch, s->layers[i].d_out);
    return n;
}

/* Layer i's inputs (the first layer's of step `step`) and output gradients of the global
 * batch in the buffer. */
static void exchanged(const fnn_stack *s, const fnn_stack_data *d, int i, int64_t step,
                      float **x, float **dz) {
    float *at = d->exchange;
    int64_t g = d->global_batch;
    for (int j = 0; j < i; j++)
        at += exchange_part(g, s->layers[j].d_in) + exchange_part(g, s->layers[j].d_out);
    *x = at;
    *dz = at + exchange_part(g, s->layers[i].d_in);
    if (i == 0 && step % 2)
        *x = d->exchange + fnn_stack_exchange_floats(s, g, d->shard->ranks) -
             exchange_part(g * d->shard->ranks, s->layers[0].d_out) -
             exchange_part(g, s->layers[0].d_in);
}

/* Rank k's partial product of the first layer (global batch x its outputs). */
static float *partial_product(const fnn_stack *s, const fnn_stack_data *d, int k) {
    int64_t g = d->global_batch;
    return d->exchange + fnn_stack_exchange_floats(s, g, d->shard->ranks) -
           exchange_part(g * d->shard->ranks, s->layers[0].d_out) +
           (size_t)k * (size_t)g * (size_t)s->layers[0].d_out;
}

/* This rank's part [lo, hi) of n rows or columns. */
static void shard_of(const fnn_shard *sh, int n, int *lo, int *hi) {
    *lo = (int)((int64_t)n * sh->rank / sh->ranks);
    *hi = (int)((int64_t)n * (sh->rank + 1) / sh->ranks);
}

/* Step `step` of the epoch: where its rows start in this rank's order (first), the global
 * batch's rows (global), and this rank's offset (off) and rows there, as
 * DataParallel.local_rows cuts a global batch. */
typedef struct {
    int64_t step, first, global;
    int off, rows;
} exchange_step;

static exchange_step step_at(const fnn_stack *s, const fnn_stack_data *d, int64_t step) {
    const fnn_shard *sh = d->shard;
    exchange_step e = {step, step * s->batch, 0, 0, 0};
    e.global = d->global_rows - step * d->global_batch;
    if (e.global > d->global_batch) e.global = d->global_batch;
    if (e.global < 0) e.global = 0;
    int64_t base = e.global / sh->ranks, extra = e.global % sh->ranks;
    e.off = (int)(sh->rank * base + (sh->rank < extra ? sh->rank : extra));
    e.rows = (int)(base + (sh->rank < extra));
    return e;
}

/* This rank's rows of step e into the first layer's input buffer: 0, or -3 for a value that is
 * NaN or infinite. */
static int gather_exchanged(const fnn_stack *s, const fnn_stack_data *d, exchange_step e,
                            int n_threads) {
    float *x, *dz;
    if (e.rows == 0) return 0;
    exchanged(s, d, 0, e.step, &x, &dz);
    float *dst = x + (size_t)e.off * (size_t)d->x_len;
    const float *got = gather_x(d, dst, e.first, e.rows, n_threads);
    if (!got) return -3;
    if (got != dst) memcpy(dst, got, (size_t)e.rows * (size_t)d->x_len * sizeof(float));
    return 0;
}

/* This rank's partial product of the first layer for step e: its columns of every rank's
 * inputs times its rows of the kernel. */
static void first_partial(const fnn_stack *s, const fnn_stack_data *d, exchange_step e,
                          int n_threads) {
    const fnn_dense *layer = &s->layers[0];
    float *x, *dz, *p = partial_product(s, d, d->shard->rank);
    int lo, hi;
    shard_of(d->shard, layer->d_in, &lo, &hi);
    exchanged(s, d, 0, e.step, &x, &dz);
    if (hi > lo && e.global > 0)
        fnn_gemm(0, 0, (int)e.global, layer->d_out, hi - lo, 1.0f, x + lo, layer->d_in,
                 layer->kernel + (size_t)lo * layer->d_out, layer->d_out, 0.0f, p,
                 layer->d_out, n_threads);
    else
        memset(p, 0, (size_t)e.global * (size_t)layer->d_out * sizeof(float));
}

/* Forward through every layer for this rank's rows, each layer's output (the next one's
 * input) in the buffer; the first layer's product is the sum of the ranks' partials. */
static const float *forward_exchanged(const fnn_stack *s, const fnn_stack_data *d,
                                      exchange_step e, int n_threads) {
    const fnn_dense *first = &s->layers[0];
    size_t cols = (size_t)first->d_out, n = (size_t)e.rows * cols;
    float *z = s->z[0];
    memcpy(z, partial_product(s, d, 0) + (size_t)e.off * cols, n * sizeof(float));
    for (int k = 1; k < d->shard->ranks; k++) {
        const float *p = partial_product(s, d, k) + (size_t)e.off * cols;
        for (size_t j = 0; j < n; j++) z[j] += p[j];
    }
    const float *x = NULL;
    for (int i = 0; i < s->n_layers; i++) {
        float *y = s->y[i], *next_dz;
        if (i + 1 < s->n_layers) {
            float *in;
            exchanged(s, d, i + 1, e.step, &in, &next_dz);
            y = in + (size_t)e.off * s->layers[i].d_out;
        }
        if (i == 0)
            fnn_bias_act_forward(first->act, first->alpha, z, first->bias, NULL, NULL, y,
                                 (size_t)e.rows, cols, n_threads);
        else
            fnn_dense_forward(&s->layers[i], x, s->z[i], y, e.rows, 1, n_threads);
        x = y;
    }
    return x;
}

/* Backward for this rank's rows: each layer's dz into the buffer, and its dx (from the kernel
 * as it was: no rank updates before every rank is past this); not the first layer's dx. */
static void backward_exchanged(const fnn_stack *s, const fnn_stack_data *d, exchange_step e,
                               int n_threads) {
    const float *dy = s->grad;
    for (int i = s->n_layers - 1; i >= 0; i--) {
        const fnn_dense *layer = &s->layers[i];
        int act = (i == s->n_layers - 1 && s->fused) ? FNN_LINEAR : layer->act;
        const float *z = fnn_activation_needs_input(act) ? s->z[i] : NULL;
        const float *y = s->y[i];
        float *x, *dz;
        if (i + 1 < s->n_layers) {
            exchanged(s, d, i + 1, e.step, &x, &dz);
            y = x + (size_t)e.off * layer->d_out;
        }
        exchanged(s, d, i, e.step, &x, &dz);
        dz += (size_t)e.off * layer->d_out;
        fnn_act_backward(act, layer->alpha, z, y, dy, dz, (size_t)e.rows,
                         (size_t)layer->d_out, n_threads);
        if (i > 0)
            fnn_gemm(0, 1, e.rows, layer->d_in, layer->d_out, 1.0f, dz, layer->d_out,
                     layer->kernel, layer->d_out, 0.0f, s->dx[i], layer->d_in, n_threads);
        dy = s->dx[i];
    }
}

/* Every rank's rows are in the buffer: this rank's shard of each layer (kernel rows, bias
 * columns) - its gradient over the global batch into this rank's gradient row - and its
 * step. */
static void update_shards(const fnn_stack *s, const fnn_stack_data *d, exchange_step e,
                          const float *scalars, int n_threads) {
    for (int i = 0; i < s->n_layers; i++) {
        const fnn_dense *layer = &s->layers[i];
        size_t cols = (size_t)layer->d_out, at = s->layer_at[i];
        int lo, hi, c0, c1;
        float *x, *dz;
        shard_of(d->shard, layer->d_in, &lo, &hi);
        exchanged(s, d, i, e.step, &x, &dz);
        if (hi > lo) {
            fnn_gemm(1, 0, hi - lo, layer->d_out, (int)e.global, 1.0f, x + lo, layer->d_in,
                     dz, layer->d_out, 0.0f, s->grads + at + (size_t)lo * cols,
                     layer->d_out, n_threads);
            update_range(s, scalars, at + (size_t)lo * cols, (size_t)(hi - lo) * cols, NULL,
                         n_threads);
        }
        if (layer->d_bias) {
            size_t bias_at = at + (size_t)layer->d_in * cols;
            shard_of(d->shard, layer->d_out, &c0, &c1);
            fnn_column_sum(dz, s->grads + bias_at, (size_t)e.global, cols, n_threads);
            if (c1 > c0)
                update_range(s, scalars, bias_at + (size_t)c0, (size_t)(c1 - c0), NULL,
                             n_threads);
        }
    }
}

/* A barrier, its time (waiting included) added to sh->seconds: what the ranks' exchange
 * costs beyond the arithmetic one process would do. */
static int timed_barrier(fnn_shard *sh) {
    int64_t start = fnn_shard_clock();
    int rc = fnn_shard_barrier(sh);
    sh->seconds += (double)(fnn_shard_clock() - start) * 1e-9;
    return rc;
}

/* Step e of the epoch (run_batch_reduced's contract; -4: a peer died), this rank's rows
 * already in the buffer; has_next: whether the epoch has a step after it, whose rows this
 * step gathers (a bad value there is the next step's -3, before its first barrier: in
 * shard->next_bad, as the next step may be the next run's). */
static int run_batch_exchanged(const fnn_stack *s, const fnn_stack_data *d, exchange_step e,
                               int has_next, const float *scalars, double *sums,
                               int n_threads) {
    fnn_shard *sh = d->shard;
    const int32_t *labels;
    const float *targets, *weights;
    size_t cols = (size_t)s->layers[s->n_layers - 1].d_out;
    float *flags = sh->rows + sh->n;        /* each rank's flag in its row, as fnn_shard_reduce */
    double total = 0, correct = 0;
    int bad = 0;
    first_partial(s, d, e, n_threads);
    if (timed_barrier(sh) != 0) return -4;      /* every rank's partial product */
    if (e.rows > 0) {
        gather_targets(s, d, e.first, e.rows, &labels, &targets, &weights);
        const float *out = forward_exchanged(s, d, e, n_threads);
        float scale = s->mean_reduction ? (float)(1.0 / (double)e.global) : 1.0f;
        if (loss_value_and_grad(s, out, e.rows, cols, labels, targets, weights, scale,
                                s->grad, n_threads) != 0)
            return -2;
        for (int r = 0; r < e.rows; r++) total += s->row_loss[r];
        bad = !isfinite(total);
        if (!bad) {
            if (d->outputs)
                memcpy(d->outputs + (size_t)(e.first - d->outputs_first) * cols, out,
                       (size_t)e.rows * cols * sizeof(float));
            if (s->metric != FNN_METRIC_NONE)
                correct = count_correct(s, out, cols, e.rows, labels, targets);
            backward_exchanged(s, d, e, n_threads);
        }
    }
    if (has_next) sh->next_bad = gather_exchanged(s, d, step_at(s, d, e.step + 1), n_threads);
    flags[(size_t)sh->rank * sh->stride] = bad ? 1.0f : 0.0f;
    int any_bad = 0;
    if (timed_barrier(sh) != 0) return -4;      /* every rank's rows are in the buffer */
    for (int k = 0; k < sh->ranks; k++) any_bad |= flags[(size_t)k * sh->stride] != 0.0f;
    if (!any_bad) update_shards(s, d, e, scalars, n_threads);
    /* every flag read and shard updated before any rank's next step writes or reads them */
    if (timed_barrier(sh) != 0) return -4;
    sums[0] += total * (s->mean_reduction ? 1.0 : (double)e.rows);
    sums[1] += e.rows;
    if (any_bad) {
        s->grads[s->n_params] = 1.0f;
        return -1;
    }
    if (s->metric != FNN_METRIC_NONE) {
        sums[2] += correct;
        sums[3] += e.rows;
    }
    return 0;
}

/* fnn_stack_run's training loop with an exchange buffer: steps start .. start + n_steps - 1.
 * The first step of an epoch gathers its rows first; each step then gathers the next one's
 * (the epoch's steps run in order, run after run, on every rank alike). */
static int64_t run_exchanged(const fnn_stack *s, const fnn_stack_data *d, int64_t start,
                             int64_t n_steps, const float *scalars, double *sums, int *status,
                             int n_threads) {
    int n_scalars = fnn_optimizer_scalars(s->opt);
    int64_t epoch_steps = (d->global_rows + d->global_batch - 1) / d->global_batch, step;
    *status = 0;
    if (start == 0) {
        d->shard->next_bad = gather_exchanged(s, d, step_at(s, d, 0), n_threads);
        if (!d->shard->next_bad && timed_barrier(d->shard) != 0) {
            *status = -4;
            return 0;
        }
    }
    for (step = 0; step < n_steps; step++) {
        int64_t k = start + step;
        if (d->shard->next_bad) {
            *status = -3;
            break;
        }
        int rc = run_batch_exchanged(s, d, step_at(s, d, k), k + 1 < epoch_steps,
                                     scalars + step * n_scalars, sums, n_threads);
        if (run_ends(d, k, rc, status, &step)) break;
    }
    return step;
}

/* Gathering a batch means reading its rows from memory, at one core's share of the bandwidth
 * (a random 100 KB batch of MNIST takes as long as a small model's whole step). When every
 * kernel of a step runs on one thread anyway (small layers), a second thread gathers the next
 * batch meanwhile. */
static int overlap_gather(const fnn_stack *s, const fnn_stack_data *d, int n_threads) {
    if (n_threads < 2 || d->reduce || (!d->order && d->x_type == FNN_SRC_F32)) return 0;
    for (int i = 0; i < s->n_layers; i++) {
        const fnn_dense *layer = &s->layers[i];
        if ((double)s->batch * layer->d_in * layer->d_out >= 2.0 * FNN_GEMM_BLOCK_WORK ||
            (size_t)s->batch * (size_t)layer->d_out >= FNN_PARALLEL_MIN)
            return 0;
    }
    return s->n_params < FNN_PARALLEL_MIN;
}

/* n_steps batches of s->batch rows of the order, from batch `start` on (the last may be short),
 * training (one optimizer step per batch, with its row of `scalars`) or evaluating. sums
 * accumulates as the Python loss tracker and metric do: [0] += batch loss (x n for sum
 * reduction), [1] += n, [2] += correct, [3] += n. Returns the steps run: a batch whose loss is
 * not finite ends the run after adding its raw loss to sums[0..1], before its update; *status
 * is -1 then, -2 for a label out of range and -3 for a NaN or infinite input (both before the
 * batch touches anything), -4 when d->reduce failed, else 0. d->step_end (when set) runs after
 * each step that counted its loss and may end the run there. */
int64_t fnn_stack_run(const fnn_stack *s, const fnn_stack_data *d, int train, int64_t start,
                      int64_t n_steps, const float *scalars, double *sums, int *status,
                      int n_threads) {
    int n_scalars = fnn_optimizer_scalars(s->opt), rc = 0, buf = 0;
    double penalty = 0.0;       /* evaluating: the weights do not change during the run */
    if (!train && s->reg) {
        penalize_all(s, 0, n_threads);
        penalty = penalty_total(s);
    }
    if (train && d->exchange) {
        int saved = fnn_blas_pin();
        int64_t done = run_exchanged(s, d, start, n_steps, scalars, sums, status, n_threads);
        fnn_blas_restore(saved);
        return done;
    }
    int overlap = overlap_gather(s, d, n_threads);
    size_t buf_len = (size_t)s->batch * (size_t)s->layers[0].d_in;
    int saved = fnn_blas_pin();
    int64_t step, first = start * s->batch;
    int rows = (int)(d->rows - first < s->batch ? d->rows - first : s->batch);
    const float *x = gather_x(d, s->x_buf, first, rows, n_threads);
    *status = 0;
    for (step = 0; step < n_steps; step++) {
        if (!x) {
            *status = -3;
            break;
        }
        int64_t next_first = first + rows;
        int has_next = step + 1 < n_steps;
        int next_rows = (int)(d->rows - next_first < s->batch ? d->rows - next_first : s->batch);
        float *next_buf = s->x_buf + (buf ^ 1) * buf_len;
        const float *next = NULL, *sc = train ? scalars + step * n_scalars : NULL;
        if (overlap && has_next) {
            #pragma omp parallel sections num_threads(2)
            {
                #pragma omp section
                rc = run_batch(s, d, x, first, rows, train, sc, penalty, sums, 1);
                #pragma omp section
                next = gather_x(d, next_buf, next_first, next_rows, 1);
            }
        } else {
            rc = train && d->reduce
                     ? run_batch_reduced(s, d, x, first, rows, sc, sums, n_threads)
                     : run_batch(s, d, x, first, rows, train, sc, penalty, sums, n_threads);
            if (has_next && rc == 0)
                next = gather_x(d, next_buf, next_first, next_rows, n_threads);
        }
        if (run_ends(d, start + step, rc, status, &step)) break;
        x = next;
        first = next_first;
        rows = next_rows;
        buf ^= 1;
    }
    fnn_blas_restore(saved);
    return step;
}

/* Outputs of rows [start, start + rows) (in order) into out (rows x d_out), batch by batch, the
 * last layer writing straight into out. Returns 0, or -3 at a batch holding NaN or inf. */
int fnn_stack_predict(const fnn_stack *s, const fnn_stack_data *d, float *out, int64_t start,
                      int64_t rows, int n_threads) {
    const fnn_dense *last = &s->layers[s->n_layers - 1];
    int saved = fnn_blas_pin();
    for (int64_t done = 0; done < rows; done += s->batch) {
        int n = (int)(rows - done < s->batch ? rows - done : s->batch);
        const float *x = gather_x(d, s->x_buf, start + done, n, n_threads);
        if (!x) {
            fnn_blas_restore(saved);
            return -3;
        }
        for (int i = 0; i < s->n_layers; i++) {
            float *y = i == s->n_layers - 1 ? out + (size_t)done * (size_t)last->d_out : s->y[i];
            fnn_dense_forward(&s->layers[i], x, y, y, n, 0, n_threads);
            x = y;
        }
    }
    fnn_blas_restore(saved);
    return 0;
}
