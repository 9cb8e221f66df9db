// CUDA kernels of CupyOps (fastnn/backend/cupy.py), compiled at first use by NVRTC.
//
// Device code only: float32 data, int32 indices. Every kernel takes the number of work items n
// first and walks them with one grid-stride loop, so any launch size covers any n; the Python side
// keeps every array below 2**31 - 2**24 elements so the loop index cannot overflow. Optional arrays
// arrive as null pointers. No shared memory, atomics or block synchronisation: each work item
// writes its own outputs only, so results do not depend on the launch shape or on scheduling
// (tests/host_kernels.py also builds this file for the CPU and runs it as a grid of threads).
// A kernel is named after the Ops method it implements (X, or X_part when the op takes several
// launches); batchnorm_partials serves both batchnorm_stats and batchnorm_backward.
//
// Images are NHWC. A window geometry is (h, w, c) of the input, then kh, kw (window), sh, sw
// (strides), pt, pl (leading padding) and oh, ow (output size), as in fastnn/backend/base.py.

#define GEOM int h, int w, int c, int kh, int kw, int sh, int sw, int pt, int pl, int oh, int ow
#define GRID_STRIDE_LOOP(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

#define CLIP_EPS 1e-7f                      // base.EPSILON: probabilities are clipped to it

__device__ __forceinline__ float clip_prob(float p) {
    return fminf(fmaxf(p, CLIP_EPS), 1.0f - CLIP_EPS);
}

// The outputs o in [lo, hi] whose window covers input position i along one axis: window o spans
// padded positions [o*s, o*s + k), and input i sits at padded position i + pad.
__device__ __forceinline__ void covering(int i, int pad, int k, int s, int out, int *lo,
                                         int *hi) {
    int p = i + pad;
    int first = p - k + 1;                      // the lowest window start that still reaches p
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    int last = p / s;
    *hi = last < out - 1 ? last : out - 1;
}

// ---- convolution: im2col / col2im ----------------------------------------------------------
// A column row is one output pixel (b, oy, ox); its entries run over (ky, kx, ci). dh, dw: the
// window's dilation, tap (ky, kx) reading padded pixel (oy*sh + ky*dh, ox*sw + kx*dw).

// n = rows * kh*kw*c: one thread per column entry; out-of-image taps read as zero.
extern "C" __global__ void im2col(int n, const float *__restrict__ x, float *__restrict__ cols,
                                  GEOM, int dh, int dw) {
    GRID_STRIDE_LOOP(i, n) {
        int ci = i % c, t = i / c;
        int kx = t % kw; t /= kw;
        int ky = t % kh; t /= kh;
        int ox = t % ow; t /= ow;
        int oy = t % oh;
        int b = t / oh;
        int iy = oy * sh + ky * dh - pt, ix = ox * sw + kx * dw - pl;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                      ? x[((b * h + iy) * w + ix) * c + ci] : 0.0f;
    }
}

// n = n_images * h*w*c: one thread per input element gathers the column entries that copied it
// (the adjoint of im2col), so no two threads write the same place and no atomics are needed.
// Undilated: the outputs whose window covers the pixel; dilated: each tap (ky, kx) whose
// output position (iy + pt - ky*dh) / sh is whole and inside the output.
extern "C" __global__ void col2im(int n, const float *__restrict__ cols, float *__restrict__ x,
                                  GEOM, int dh, int dw) {
    int row_len = kh * kw * c;
    GRID_STRIDE_LOOP(i, n) {
        int ci = i % c, t = i / c;
        int ix = t % w; t /= w;
        int iy = t % h;
        int b = t / h;
        float acc = 0.0f;
        if (dh == 1 && dw == 1) {
            int oy0, oy1, ox0, ox1;
            covering(iy, pt, kh, sh, oh, &oy0, &oy1);
            covering(ix, pl, kw, sw, ow, &ox0, &ox1);
            for (int oy = oy0; oy <= oy1; oy++) {
                int ky = iy + pt - oy * sh;
                for (int ox = ox0; ox <= ox1; ox++) {
                    int kx = ix + pl - ox * sw;
                    acc += cols[((b * oh + oy) * ow + ox) * row_len + (ky * kw + kx) * c + ci];
                }
            }
        } else {
            for (int ky = 0; ky < kh; ky++) {
                int py = iy + pt - ky * dh;
                if (py < 0 || py % sh != 0 || py / sh >= oh) continue;
                int oy = py / sh;
                for (int kx = 0; kx < kw; kx++) {
                    int px = ix + pl - kx * dw;
                    if (px < 0 || px % sw != 0 || px / sw >= ow) continue;
                    int ox = px / sw;
                    acc += cols[((b * oh + oy) * ow + ox) * row_len + (ky * kw + kx) * c + ci];
                }
            }
        }
        x[i] = acc;
    }
}

// ---- max pooling ---------------------------------------------------------------------------
// n = n_images * oh*ow*c. argmax gets the flat index (iy*w + ix)*c + ci inside the image; ties keep
// the earlier tap, like the reference and the C core.
extern "C" __global__ void maxpool_forward(int n, const float *__restrict__ x,
                                           float *__restrict__ y, int *__restrict__ argmax,
                                           GEOM) {
    GRID_STRIDE_LOOP(i, n) {
        int ci = i % c, t = i / c;
        int ox = t % ow; t /= ow;
        int oy = t % oh;
        int b = t / oh;
        const float *img = x + b * h * w * c;
        float best = 0.0f;
        int arg = -1;                           // -1: no in-image tap seen yet
        for (int ky = 0; ky < kh; ky++) {
            int iy = oy * sh + ky - pt;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; kx++) {
                int ix = ox * sw + kx - pl;
                if (ix < 0 || ix >= w) continue;
                int idx = (iy * w + ix) * c + ci;
                float v = img[idx];
                if (arg < 0 || v > best) {
                    best = v;
                    arg = idx;
                }
            }
        }
        // No in-image tap cannot happen for a valid geometry; the reference gives -inf there.
        y[i] = arg < 0 ? __int_as_float((int)0xff800000) : best;
        argmax[i] = arg < 0 ? 0 : arg;
    }
}

// n = n_images * h*w*c: one thread per input element sums dy over the windows that cover it and
// chose it, which is the scatter through argmax written as a gather (no atomics, any strides).
extern "C" __global__ void maxpool_backward(int n, const float *__restrict__ dy,
                                            const int *__restrict__ argmax,
                                            float *__restrict__ dx, GEOM) {
    GRID_STRIDE_LOOP(i, n) {
        int ci = i % c, t = i / c;
        int ix = t % w; t /= w;
        int iy = t % h;
        int b = t / h;
        int self_idx = (iy * w + ix) * c + ci;
        int oy0, oy1, ox0, ox1;
        covering(iy, pt, kh, sh, oh, &oy0, &oy1);
        covering(ix, pl, kw, sw, ow, &ox0, &ox1);
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                int o = ((b * oh + oy) * ow + ox) * c + ci;
                if (argmax[o] == self_idx) acc += dy[o];
            }
        dx[i] = acc;
    }
}

// ---- embedding -----------------------------------------------------------------------------
// n = rows * dim: out[i, c] = table[ids[i], c] (ids range-checked by the caller).
extern "C" __global__ void embedding_forward(int n, const float *__restrict__ table,
                                             const int *__restrict__ ids, int dim,
                                             float *__restrict__ out) {
    GRID_STRIDE_LOOP(i, n) {
        int r = i / dim, c = i % dim;
        out[i] = table[ids[r] * dim + c];
    }
}

// The sparse gradient, without atomics: the indices sorted stably (order), cut into segments
// of one row each (bounds[s] .. bounds[s + 1] in order, the row rows[s]). n = segments * dim:
// one thread per (segment, column) adds its segment's dy rows in their original order, so the
// sums do not depend on the launch shape, and each table entry has one writer.
extern "C" __global__ void embedding_backward(int n, const int *__restrict__ order,
                                              const int *__restrict__ bounds,
                                              const int *__restrict__ rows,
                                              const float *__restrict__ dy, int dim,
                                              float *__restrict__ d_table) {
    GRID_STRIDE_LOOP(i, n) {
        int s = i / dim, c = i % dim;
        float acc = 0.0f;
        for (int j = bounds[s]; j < bounds[s + 1]; j++) acc += dy[order[j] * dim + c];
        d_table[rows[s] * dim + c] += acc;
    }
}

// ---- activations (ids as in fastnn/activations.py), with the dense layer's bias fused in ------
enum { LINEAR, RELU, SIGMOID, TANH, SOFTMAX, SOFTPLUS, SOFTSIGN, SELU, ELU, EXPONENTIAL,
       LEAKY_RELU, GELU, SILU };
#define SELU_ALPHA 1.6732632423543772848170429916717f
#define SELU_SCALE 1.0507009873554804934193349852946f

__device__ __forceinline__ float sigmoid_of(float z) { return 0.5f * (1.0f + tanhf(0.5f * z)); }

__device__ float act_value(int act, float z, float alpha) {
    switch (act) {
    case RELU: return z > 0.0f || z != z ? z : 0.0f;        // NaN passes, as numpy.maximum
    case SIGMOID: return sigmoid_of(z);
    case TANH: return tanhf(z);
    case SOFTPLUS: return fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z)));
    case SOFTSIGN: return z / (1.0f + fabsf(z));
    case SELU: return SELU_SCALE * (z > 0.0f ? z : SELU_ALPHA * expm1f(fminf(z, 0.0f)));
    case ELU: return z > 0.0f ? z : alpha * expm1f(fminf(z, 0.0f));
    case EXPONENTIAL: return expf(z);
    case LEAKY_RELU: return z > 0.0f ? z : alpha * z;
    case GELU: return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
    case SILU: return z * sigmoid_of(z);
    default: return z;                                       // LINEAR
    }
}

// d act / dz from the output y (and the input z, for the ids in activations.NEEDS_INPUT).
__device__ float act_slope(int act, float z, float y, float alpha) {
    switch (act) {
    case SIGMOID: return y * (1.0f - y);
    case TANH: return 1.0f - y * y;
    case SOFTPLUS: return sigmoid_of(z);
    case SOFTSIGN: { float t = 1.0f - fabsf(y); return t * t; }
    case SELU: return y > 0.0f ? SELU_SCALE : y + SELU_SCALE * SELU_ALPHA;
    case ELU: return y > 0.0f ? 1.0f : y + alpha;
    case EXPONENTIAL: return y;
    case LEAKY_RELU: return y > 0.0f ? 1.0f : alpha;
    case GELU: return 0.5f * (1.0f + erff(z * 0.70710678118654752f)) +
                      z * expf(-0.5f * z * z) * 0.39894228040143268f;
    case SILU: { float s = sigmoid_of(z); return s * (1.0f + z * (1.0f - s)); }
    default: return 1.0f;                                    // LINEAR
    }
}

// The epilogue of a GEMM's output, each part when given (per column c): z += bias;
// z = (z - mean) * gamma / sqrt(var + eps) + beta (inference BatchNormalization); z += residual;
// y = act(z); y may be z. Elementwise ids only.
extern "C" __global__ void bias_act_forward(int n, float *z, const float *bias, int cols,
                                            int act, float alpha, float *y, const float *mean,
                                            const float *var, const float *gamma,
                                            const float *beta, float eps,
                                            const float *residual) {
    GRID_STRIDE_LOOP(i, n) {
        int c = i % cols;
        float v = z[i];
        if (bias) v = v + bias[c];
        if (mean) v = (v - mean[c]) * ((gamma ? gamma[c] : 1.0f) / sqrtf(var[c] + eps))
                      + (beta ? beta[c] : 0.0f);
        if (residual) v += residual[i];
        if (bias || mean || residual) z[i] = v;
        y[i] = act_value(act, v, alpha);
    }
}

// One thread per row: z += bias (when given), y = softmax(z); y may be z.
extern "C" __global__ void bias_act_forward_softmax(int n, float *z, const float *bias,
                                                    int cols, float *y) {
    GRID_STRIDE_LOOP(r, n) {
        float *zr = z + r * cols, *yr = y + r * cols;
        float top = -__int_as_float(0x7f800000);       // -inf
        for (int j = 0; j < cols; j++) {
            if (bias) zr[j] += bias[j];
            top = fmaxf(top, zr[j]);
        }
        float s = 0.0f;
        for (int j = 0; j < cols; j++) s += (yr[j] = expf(zr[j] - top));
        for (int j = 0; j < cols; j++) yr[j] /= s;
    }
}

// dz = dy * act'(z); dz may be dy. ReLU passes dy where y > 0 (an inf gradient stays inf).
extern "C" __global__ void act_backward(int n, const float *z, const float *y, const float *dy,
                                        int act, float alpha, float *dz) {
    GRID_STRIDE_LOOP(i, n) {
        float zi = z ? z[i] : 0.0f;
        dz[i] = act == RELU ? (y[i] > 0.0f ? dy[i] : 0.0f) : dy[i] * act_slope(act, zi, y[i], alpha);
    }
}

// One thread per row: dz = y * (dy - sum(dy * y)); dz may be dy.
extern "C" __global__ void act_backward_softmax(int n, const float *y, const float *dy, int cols,
                                                float *dz) {
    GRID_STRIDE_LOOP(r, n) {
        const float *yr = y + r * cols, *dyr = dy + r * cols;
        float dot = 0.0f;
        for (int j = 0; j < cols; j++) dot += dyr[j] * yr[j];
        for (int j = 0; j < cols; j++) dz[r * cols + j] = yr[j] * (dyr[j] - dot);
    }
}

// ---- batch normalization over the rows of a (rows, c) array ----------------------------------
// n = chunks * c partial sums: thread (k, ch) walks rows k, k + chunks, ... of channel ch (adjacent
// threads read adjacent channels) and accumulates in double. With dy null it sums d and d*d, with
// dy it sums dy and dy*d, where d = x - center[ch] (center null: 0); each partial is stored times
// `scale` (1/rows for means: a variance near float's limit has float partial sums). The caller
// adds the chunks, so the reduction order is fixed by the shapes alone.
extern "C" __global__ void batchnorm_partials(int n, const float *__restrict__ x,
                                              const float *__restrict__ dy,
                                              const float *__restrict__ center, int rows, int c,
                                              float scale, float *__restrict__ part_a,
                                              float *__restrict__ part_b) {
    int chunks = n / c;
    GRID_STRIDE_LOOP(i, n) {
        int ch = i % c, k = i / c;
        float mu = center ? center[ch] : 0.0f;
        double a = 0.0, b = 0.0;
        for (int r = k; r < rows; r += chunks) {
            float d = x[r * c + ch] - mu;
            float e = dy ? dy[r * c + ch] : d;
            a += e;
            b += (double)e * d;
        }
        part_a[i] = (float)(a * scale);
        part_b[i] = (float)(b * scale);
    }
}

// out = (x - mean) * (gamma / sqrt(var + eps)) + beta, per channel; gamma, beta may be null.
extern "C" __global__ void batchnorm_apply(int n, const float *__restrict__ x,
                                           const float *__restrict__ mean,
                                           const float *__restrict__ var,
                                           const float *__restrict__ gamma,
                                           const float *__restrict__ beta, float eps, int c,
                                           float *__restrict__ out) {
    GRID_STRIDE_LOOP(i, n) {
        int ch = i % c;
        float scale = 1.0f / sqrtf(var[ch] + eps);
        if (gamma) scale *= gamma[ch];
        out[i] = (x[i] - mean[ch]) * scale + (beta ? beta[ch] : 0.0f);
    }
}

// Training-mode gradient through the batch statistics, given the per-channel sums of dy and of
// dy*(x - mean). dx may be dy itself: each element reads its own dy before writing.
extern "C" __global__ void batchnorm_backward(int n, const float *x, const float *dy,
                                              const float *__restrict__ mean,
                                              const float *__restrict__ var,
                                              const float *__restrict__ gamma,
                                              const float *__restrict__ sum_dy,
                                              const float *__restrict__ sum_dy_xc, float eps,
                                              int rows, int c, float *dx) {
    GRID_STRIDE_LOOP(i, n) {
        int ch = i % c;
        float inv = 1.0f / sqrtf(var[ch] + eps);
        float xhat = (x[i] - mean[ch]) * inv;
        float sum_dy_xhat = sum_dy_xc[ch] * inv;
        float g = gamma ? gamma[ch] : 1.0f;
        dx[i] = g * inv * (dy[i] - sum_dy[ch] / rows - xhat * sum_dy_xhat / rows);
    }
}

// ---- losses: per-row values (one thread per row) and gradients (one thread per element) -------
// weights (per row) may be null. Gradients are those of scale * sum_r weight_r * loss_r.

// row_loss = -w * log(clip(p[label] / sum(p))).
extern "C" __global__ void softmax_xent_sparse_rows(int n, const float *__restrict__ probs,
                                                    const int *__restrict__ labels,
                                                    const float *__restrict__ weights, int cols,
                                                    float *__restrict__ row_loss) {
    GRID_STRIDE_LOOP(r, n) {
        const float *p = probs + r * cols;
        float s = 0.0f;
        for (int j = 0; j < cols; j++) s += p[j];
        // Labels read from the host are checked there; a device label out of range makes the
        // row's loss NaN instead of a read out of bounds (checking it would cost a sync).
        int label = labels[r];
        bool valid = label >= 0 && label < cols;
        float loss = valid ? -logf(clip_prob(p[label] / s)) : __int_as_float(0x7fc00000);
        row_loss[r] = weights ? loss * weights[r] : loss;
    }
}

// grad = k * (p - onehot(label)), k = scale * w: the fused softmax + cross-entropy gradient.
extern "C" __global__ void softmax_xent_sparse_grad(int n, const float *__restrict__ probs,
                                                    const int *__restrict__ labels,
                                                    const float *__restrict__ weights, float scale,
                                                    int cols, float *__restrict__ grad) {
    GRID_STRIDE_LOOP(i, n) {
        int r = i / cols, j = i - r * cols;
        float k = weights ? scale * weights[r] : scale;
        grad[i] = k * probs[i] - (j == labels[r] ? k : 0.0f);
    }
}

// row_loss = -w * sum(t * log(clip(p / sum(p)))); row_tsum = sum(t), which the gradient needs.
extern "C" __global__ void softmax_xent_dense_rows(int n, const float *__restrict__ probs,
                                                   const float *__restrict__ targets,
                                                   const float *__restrict__ weights, int cols,
                                                   float *__restrict__ row_loss,
                                                   float *__restrict__ row_tsum) {
    GRID_STRIDE_LOOP(r, n) {
        const float *p = probs + r * cols, *t = targets + r * cols;
        float s = 0.0f;
        for (int j = 0; j < cols; j++) s += p[j];
        float loss = 0.0f, ts = 0.0f;
        for (int j = 0; j < cols; j++) {
            ts += t[j];
            loss -= t[j] * logf(clip_prob(p[j] / s));
        }
        row_loss[r] = weights ? loss * weights[r] : loss;
        row_tsum[r] = ts;
    }
}

// grad = k * (p * sum(t) - t), k = scale * w (p - t for one-hot targets).
extern "C" __global__ void softmax_xent_dense_grad(int n, const float *__restrict__ probs,
                                                   const float *__restrict__ targets,
                                                   const float *__restrict__ row_tsum,
                                                   const float *__restrict__ weights, float scale,
                                                   int cols, float *__restrict__ grad) {
    GRID_STRIDE_LOOP(i, n) {
        int r = i / cols;
        float k = weights ? scale * weights[r] : scale;
        grad[i] = k * (probs[i] * row_tsum[r] - targets[i]);
    }
}

// row_loss = w * mean_j(-(t log q + (1 - t) log(1 - q))), q = clip(p).
extern "C" __global__ void sigmoid_bxent_rows(int n, const float *__restrict__ probs,
                                              const float *__restrict__ targets,
                                              const float *__restrict__ weights, int cols,
                                              float *__restrict__ row_loss) {
    GRID_STRIDE_LOOP(r, n) {
        const float *p = probs + r * cols, *t = targets + r * cols;
        float acc = 0.0f;
        for (int j = 0; j < cols; j++) {
            float q = clip_prob(p[j]);
            acc -= t[j] * logf(q) + (1.0f - t[j]) * logf(1.0f - q);
        }
        float loss = acc / cols;
        row_loss[r] = weights ? loss * weights[r] : loss;
    }
}

// grad = k * (p - t), k = scale_per_col * w: the fused sigmoid + binary cross-entropy gradient
// (the caller passes scale / cols, the mean over the last axis).
extern "C" __global__ void sigmoid_bxent_grad(int n, const float *__restrict__ probs,
                                              const float *__restrict__ targets,
                                              const float *__restrict__ weights,
                                              float scale_per_col, int cols,
                                              float *__restrict__ grad) {
    GRID_STRIDE_LOOP(i, n) {
        int r = i / cols;
        float k = weights ? scale_per_col * weights[r] : scale_per_col;
        grad[i] = k * (probs[i] - targets[i]);
    }
}

// ---- optimizer updates: one pass over each flat parameter buffer (Keras 3 rules) -------------

// m null: w -= lr g. Else m = momentum m - lr g; w += m (nesterov: momentum m - lr g).
extern "C" __global__ void sgd_update(int n, float *__restrict__ w, const float *__restrict__ g,
                                      float *__restrict__ m, float lr, float momentum,
                                      int nesterov) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i];
        if (!m) {
            w[i] -= lr * gi;
            continue;
        }
        float mi = momentum * m[i] - lr * gi;
        m[i] = mi;
        w[i] += nesterov ? momentum * mi - lr * gi : mi;
    }
}

// alpha is the bias-corrected step; vmax (amsgrad) may be null.
extern "C" __global__ void adam_update(int n, float *__restrict__ w, const float *__restrict__ g,
                                       float *__restrict__ m, float *__restrict__ v,
                                       float *__restrict__ vmax, float alpha,
                                       float one_minus_beta1, float one_minus_beta2, float eps) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i];
        float mi = m[i] + (gi - m[i]) * one_minus_beta1;
        float vi = v[i] + (gi * gi - v[i]) * one_minus_beta2;
        m[i] = mi;
        v[i] = vi;
        if (vmax) {
            vi = fmaxf(vmax[i], vi);
            vmax[i] = vi;
        }
        w[i] -= alpha * mi / (sqrtf(vi) + eps);
    }
}

// Lion: the sign of the momentum/gradient interpolation (sign(0) = 0), then the momentum.
extern "C" __global__ void lion_update(int n, float *__restrict__ w, const float *__restrict__ g,
                                       float *__restrict__ m, float lr, float beta1,
                                       float beta2) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i];
        float c = m[i] * beta1 + gi * (1.0f - beta1);
        w[i] -= lr * (float)((c > 0.0f) - (c < 0.0f));
        m[i] = m[i] * beta2 + gi * (1.0f - beta2);
    }
}

// mom (momentum) and mg (centered) may be null.
extern "C" __global__ void rmsprop_update(int n, float *__restrict__ w,
                                          const float *__restrict__ g, float *__restrict__ v,
                                          float *__restrict__ mom, float *__restrict__ mg,
                                          float lr, float rho, float one_minus_rho,
                                          float momentum, float eps) {
    GRID_STRIDE_LOOP(i, n) {
        float gi = g[i];
        float vi = rho * v[i] + one_minus_rho * gi * gi;
        v[i] = vi;
        float denom = vi + eps;
        if (mg) {
            float a = rho * mg[i] + one_minus_rho * gi;
            mg[i] = a;
            denom -= a * a;
        }
        float step = lr * gi / sqrtf(denom);
        if (mom) {
            step = momentum * mom[i] + step;
            mom[i] = step;
        }
        w[i] -= step;
    }
}
