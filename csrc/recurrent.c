/* Recurrent layers (SimpleRNN, LSTM, GRU) over a whole sequence, time-major, forward and back
 * through time. The math is fastnn/backend/base.py's rnn_forward / rnn_backward (the
 * specification); the work is:
 *   forward:  the input projection of every step as one GEMM (or, batch >= 32, each chunk of
 *             rows its own step by step: step_inputs), then per step one GEMM of the previous
 *             state by the recurrent kernel (all gates at once) and one fused pass of the gate
 *             nonlinearities and the state update;
 *   backward: per step one fused pass giving the gates' gradients and one GEMM giving the
 *             previous state's; then the kernel and recurrent kernel gradients as one GEMM
 *             each over all steps (one for both with packed [x_t | h_{t-1}] rows), the input
 *             gradient per step (in the chunks, or after them), each step's rows written
 *             straight into the batch-major layout the layer returns (no copy after), the
 *             bias gradient as sums per chunk.
 * Each step's elementwise pass is small (batch x gates), so it runs on one thread; the GEMMs
 * split on fastnn's threads (fnn_gemm), with splits fixed by the shapes: results are the same
 * for any thread count. Activations here: linear, relu, sigmoid, tanh (their derivatives read
 * off the outputs); the caller takes the reference path for others. */
#include <stdlib.h>
#include <string.h>

#include "fastnn.h"
#include "vmath.h"

/* v = act(v) over n floats; the switch outside the loops so each loop vectorizes. */
FNN_INLINE void act_span(int act, float *v, int n) {
    int i;
    switch (act) {
    case FNN_RELU:
        for (i = 0; i < n; i++) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
        break;
    case FNN_SIGMOID:
        for (i = 0; i < n; i++) v[i] = sigmoidf(v[i]);
        break;
    case FNN_TANH:
        for (i = 0; i < n; i++) v[i] = vtanhf(v[i]);
        break;
    default:    /* linear */
        break;
    }
}

/* d[i] *= act'(z) read off y = act(z). */
FNN_INLINE void dact_span(int act, const float *y, float *d, int n) {
    int i;
    switch (act) {
    case FNN_RELU:
        for (i = 0; i < n; i++) d[i] = y[i] > 0.0f ? d[i] : 0.0f;
        break;
    case FNN_SIGMOID:
        for (i = 0; i < n; i++) d[i] = d[i] * (y[i] * (1.0f - y[i]));
        break;
    case FNN_TANH:
        for (i = 0; i < n; i++) d[i] = d[i] * (1.0f - y[i] * y[i]);
        break;
    default:
        break;
    }
}

/* An LSTM row's new state from its activated gates gb (i, f, candidate, o): c = f cp + i cand,
 * ex = act(c), h = o ex. restrict (the arrays never overlap) lets the loops vectorize: without
 * it they ran scalar. */
FNN_INLINE void lstm_state(int act, int u, const float *restrict gb, const float *restrict cp,
                           float *restrict c, float *restrict ex, float *restrict h) {
    const float *gi = gb, *gf = gb + u, *gc = gb + 2 * u, *go = gb + 3 * u;
    int j;
    for (j = 0; j < u; j++) {
        float cj = gf[j] * cp[j] + gi[j] * gc[j];
        c[j] = cj;
        ex[j] = cj;
    }
    act_span(act, ex, u);
    for (j = 0; j < u; j++) h[j] = go[j] * ex[j];
}

/* An LSTM row back one step: from dt (the state h's whole gradient; on return the part through
 * act(c)) and dc (c's, from the step after; on return the previous c's), the gates'
 * pre-activation gradients xb; tc = act(c), cp the previous c. */
FNN_INLINE void lstm_back(int act, int rec_act, int u, const float *restrict gb,
                          const float *restrict tc, const float *restrict cp,
                          float *restrict dt, float *restrict dc, float *restrict xb) {
    /* each gate's row its own pointer: xb[j] and xb[u + j] never meet, which xb alone does
     * not tell the compiler, and int offsets (gb[2 * u + j]) became emulated gathers: the
     * loop ran scalar */
    float *restrict xi = xb, *restrict xf = xb + u, *restrict xc = xb + 2 * u;
    float *restrict xo = xb + 3 * u;
    const float *gi = gb, *gf = gb + u, *gc = gb + 2 * u, *go = gb + 3 * u;
    int j;
    for (j = 0; j < u; j++) {
        xo[j] = dt[j] * tc[j];
        dt[j] = dt[j] * go[j];
    }
    dact_span(act, tc, dt, u);
    for (j = 0; j < u; j++) {
        float dct = dc[j] + dt[j];
        xi[j] = dct * gc[j];
        xf[j] = dct * cp[j];
        xc[j] = dct * gi[j];
        dc[j] = dct * gf[j];
    }
    dact_span(rec_act, gb, xb, 2 * u);
    dact_span(act, gb + 2 * u, xb + 2 * u, u);
    dact_span(rec_act, gb + 3 * u, xb + 3 * u, u);
}

/* dt = dh + dy + carry (a row's state gradient: from the step after, its output, an output
 * carried over masked steps), carry then cleared. Without a mask there is no carry, and dy may
 * be NULL (no output gradients): the same sums without the zeros. */
FNN_INLINE void state_grad(int u, const float *restrict dh, const float *restrict dy,
                           float *restrict carry, float *restrict dt) {
    int j;
    if (carry) {
        for (j = 0; j < u; j++) {
            dt[j] = dh[j] + dy[j] + carry[j];
            carry[j] = 0.0f;
        }
    } else if (dy) {
        for (j = 0; j < u; j++) dt[j] = dh[j] + dy[j];
    } else {
        for (j = 0; j < u; j++) dt[j] = dh[j];
    }
}

/* dst[i][j][:n] = src[i][j][:n] for i < n0, j < n1, the first two axes at any strides (in
 * floats): a sequence between a layer's batch-major layout and the kernels' time-major (or
 * packed) one, split over i on the threads. As a NumPy assignment it ran on one thread, twice
 * a batch (x in, dx out: 3.2 MB each at LSTM(128), T=200, B=32: 0.2-0.4 ms). */
void fnn_copy_steps(const float *src, ptrdiff_t s0, ptrdiff_t s1, float *dst, ptrdiff_t d0,
                    ptrdiff_t d1, int n0, int n1, int n, int n_threads) {
    int nt = fnn_threads((size_t)n0 * n1 * n, n_threads);
    ptrdiff_t i;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < n0; i++)
            for (int j = 0; j < n1; j++)
                memcpy(dst + i * d0 + j * d1, src + i * s0 + j * s1, (size_t)n * sizeof(float)););
}

int fnn_rnn_act_supported(int act) {
    return act == FNN_LINEAR || act == FNN_RELU || act == FNN_SIGMOID || act == FNN_TANH;
}

static int gates_of(int kind) {
    return kind == FNN_RNN_LSTM ? 4 : kind == FNN_RNN_GRU ? 3 : 1;
}

/* Row strides of x and hs (see fnn_rnn). */
static int x_ld(const fnn_rnn *r) { return r->x_ld ? r->x_ld : r->d_in; }
static int h_ld(const fnn_rnn *r) { return r->h_ld ? r->h_ld : r->units; }

/* The batch's rows run their recurrences independently, so the sequence is cut into chunks of
 * rows, each run through all its steps by one thread: a step's GEMM (batch x units x
 * gates*units: 2M multiply-adds for LSTM(128) at batch 32) is too small to split on its own
 * (waking a team T times a sequence cost 13x on two busy cores), while the chunks need no
 * synchronisation until the sequence ends. The cut depends on the batch size only (about 16
 * rows a chunk, at most RNN_MAX_CHUNKS), so results are the same for any thread count. */
/* 16 rows keep an LSTM(128) step's GEMM (16 x 128 x 512) within OpenBLAS's unpacked
 * small-matrix kernels: 32-row chunks made the whole forward and backward 2x slower on one
 * thread, 8-row chunks were as fast as 16. */
#define RNN_CHUNK_ROWS 16
#define RNN_MAX_CHUNKS 8
static int batch_chunks(int batch) {
    int chunks = batch / RNN_CHUNK_ROWS;
    return chunks < 1 ? 1 : chunks > RNN_MAX_CHUNKS ? RNN_MAX_CHUNKS : chunks;
}

static int chunk_threads(const fnn_rnn *r, int chunks, int n_threads) {
    double work = (double)r->steps * r->batch * r->units * gates_of(r->kind) * r->units;
    int nt = n_threads < chunks ? n_threads : chunks;
    return work >= FNN_PARALLEL_MIN ? nt : 1;
}

/* Whether each chunk multiplies its rows' inputs by the kernel step by step (forward x_t W,
 * backward dx_t = dg_t W^T through a transposed copy) rather than one GEMM over all steps
 * doing it: a step's product small enough for OpenBLAS's unpacked kernels (LSTM(128), 16 x
 * 128 x 512: ~120 GFLOP/s on one core, where the all-steps 6400 x 128 x 512 GEMMs pack and
 * run at 90-95) on rows in cache (the gate pass right after reads them, the step's dg rows
 * were just written). One thread, per batch of LSTM(128) at T=200, B=32: forward 22.1-22.5 ->
 * 20.7-20.8 ms, backward 37.8 -> 36.1-36.3 ms. Not with one chunk (it would run on one thread
 * what the all-steps GEMM splits on all of them) nor beyond the small kernels' size; by the
 * shapes only, so results are the same for any thread count. */
#define RNN_STEP_INPUT_WORK 1048576.0
static int step_inputs(const fnn_rnn *r, int chunks) {
    double rows = (r->batch + chunks - 1) / chunks;
    return chunks > 1 && rows * gates_of(r->kind) * r->units * r->d_in <= RNN_STEP_INPUT_WORK;
}

/* One step's elementwise pass after the recurrent GEMM (rec, batch x G*U): gates post
 * activation into g (which held the input projection), the new states, the output. */
FNN_DISPATCH
static void step_forward(const fnn_rnn *r, int b0, int b1, int t, const uint8_t *mask,
                         const float *bias, float *g, float *rec,
                         const float *hp, float *h, const float *cp, float *c, float *ex,
                         const float *y_prev, float *y) {
    int u = r->units, gu = gates_of(r->kind) * u, hl = h_ld(r), j;
    for (int b = b0; b < b1; b++) {
        float *gb = g + (size_t)b * gu, *rb = rec + (size_t)b * gu;
        const float *hpb = hp + (size_t)b * hl;
        float *hb = h + (size_t)b * hl, *yb = y ? y + (size_t)b * u : 0;
        float *exb = ex ? ex + (size_t)b * u : 0;
        int keep = !mask || mask[(size_t)t * r->batch + b];
        if (!keep) {    /* state carried over, output the previous one (or zeros) */
            memcpy(hb, hpb, (size_t)u * sizeof(float));
            if (c) memcpy(c + (size_t)b * u, cp + (size_t)b * u, (size_t)u * sizeof(float));
            if (r->zero_output || !y_prev) memset(yb, 0, (size_t)u * sizeof(float));
            else memcpy(yb, y_prev + (size_t)b * u, (size_t)u * sizeof(float));
            continue;
        }
        if (r->kind == FNN_RNN_SIMPLE) {
            for (j = 0; j < u; j++) gb[j] += rb[j];
            act_span(r->act, gb, u);
            memcpy(hb, gb, (size_t)u * sizeof(float));
        } else if (r->kind == FNN_RNN_LSTM) {
            /* the input bias added here, in the same order as a pass of its own before the
             * recurrent GEMM would: one pass over the row, not two */
            if (bias)
                for (j = 0; j < gu; j++) gb[j] = (gb[j] + bias[j]) + rb[j];
            else
                for (j = 0; j < gu; j++) gb[j] += rb[j];
            act_span(r->rec_act, gb, 2 * u);            /* i, f */
            act_span(r->act, gb + 2 * u, u);            /* c candidate */
            act_span(r->rec_act, gb + 3 * u, u);        /* o */
            lstm_state(r->act, u, gb, cp + (size_t)b * u, c + (size_t)b * u, exb, hb);
        } else {
            /* GRU: z, r from the input and recurrent parts; reset_after: r scales the
             * recurrent product (bias included), kept in ex; else z, r are done (gru_zr) and
             * rec's h part is (r h) R_h, from the second GEMM */
            if (r->reset_after) {
                for (j = 0; j < 2 * u; j++) gb[j] += rb[j];
                act_span(r->rec_act, gb, 2 * u);
                for (j = 0; j < u; j++) {
                    exb[j] = rb[2 * u + j];
                    gb[2 * u + j] += gb[u + j] * rb[2 * u + j];
                }
            } else {
                for (j = 0; j < u; j++) gb[2 * u + j] += rb[2 * u + j];
            }
            act_span(r->act, gb + 2 * u, u);
            for (j = 0; j < u; j++)
                hb[j] = gb[j] * hpb[j] + (1.0f - gb[j]) * gb[2 * u + j];
        }
        if (yb) memcpy(yb, hb, (size_t)u * sizeof(float));
    }
}

/* GRU without reset_after: z, r first (the candidate's GEMM needs r h), ex = r h. */
FNN_DISPATCH
static void gru_zr(const fnn_rnn *r, int b0, int b1, float *g, const float *rec, const float *hp,
                   int hl, float *ex) {
    int u = r->units, gu = 3 * u, j;
    for (int b = b0; b < b1; b++) {
        float *gb = g + (size_t)b * gu;
        const float *rb = rec + (size_t)b * gu, *hpb = hp + (size_t)b * hl;
        float *exb = ex + (size_t)b * u;
        for (j = 0; j < 2 * u; j++) gb[j] += rb[j];
        act_span(r->rec_act, gb, 2 * u);
        for (j = 0; j < u; j++) exb[j] = gb[u + j] * hpb[j];
    }
}

int fnn_rnn_forward(const fnn_rnn *r, const float *x, const uint8_t *mask, float *ys, float *hs,
                    float *cs, float *gates, float *extra, float *rec, const float *rec_mask,
                    float *hd, int n_threads) {
    int T = r->steps, B = r->batch, D = r->d_in, u = r->units;
    int gu = gates_of(r->kind) * u, hl = h_ld(r);
    size_t su = (size_t)B * u, sg = (size_t)B * gu, sh = (size_t)B * hl;
    const float *in_bias = r->bias, *rec_bias = 0;
    if (r->bias && r->kind == FNN_RNN_GRU && r->reset_after) rec_bias = r->bias + gu;
    int gru_before = r->kind == FNN_RNN_GRU && !r->reset_after;
    int chunks = batch_chunks(B), nt = chunk_threads(r, chunks, n_threads), ci;
    int per_step = step_inputs(r, chunks);
    if (!fnn_blas_ready()) return -1;
    /* the input projection: by each chunk step by step, or of all steps at once (its bias
     * added step by step below, in the chunks' threads, while the rows are in cache: not a
     * serial pass over all of them) */
    if (!per_step)
        fnn_gemm(0, 0, T * B, gu, D, 1.0f, x, x_ld(r), r->kernel, gu, 0.0f, gates, gu,
                 n_threads);
    int saved = fnn_blas_pin();     /* the chunks' GEMMs call the BLAS from several threads */
    FNN_PARALLEL_FOR(schedule(static),
        for (ci = 0; ci < chunks; ci++) {
            int b0 = (int)((long)B * ci / chunks), b1 = (int)((long)B * (ci + 1) / chunks);
            int nb = b1 - b0;
            float *rc = rec + (size_t)b0 * gu;
            for (int t = 0; t < T; t++) {
                const float *hp = hs + t * sh, *hk = hp;
                int kl = hl;    /* hk's row stride */
                float *g = gates + t * sg, *ex = extra ? extra + t * su : 0;
                if (per_step)       /* this step's x_t W */
                    fnn_gemm(0, 0, nb, gu, D, 1.0f, x + ((size_t)t * B + b0) * x_ld(r),
                             x_ld(r), r->kernel, gu, 0.0f, g + (size_t)b0 * gu, gu, 1);
                if (in_bias && r->kind != FNN_RNN_LSTM) {     /* LSTM: in step_forward */
                    for (int b = b0; b < b1; b++)
                        for (int j = 0; j < gu; j++) g[(size_t)b * gu + j] += in_bias[j];
                }
                if (rec_mask) {     /* recurrent dropout: the state the kernel multiplies */
                    float *hdt = hd + t * su;
                    for (int b = b0; b < b1; b++)
                        for (int j = 0; j < u; j++)
                            hdt[(size_t)b * u + j] = hp[(size_t)b * hl + j] *
                                                     rec_mask[(size_t)b * u + j];
                    hk = hdt;
                    kl = u;
                }
                /* the recurrent product of all gates (GRU without reset_after: z, r only) */
                fnn_gemm(0, 0, nb, gru_before ? 2 * u : gu, u, 1.0f, hk + (size_t)b0 * kl, kl,
                         r->recurrent, gu, 0.0f, rc, gu, 1);
                if (rec_bias) {
                    for (int b = 0; b < nb; b++)
                        for (int j = 0; j < gu; j++) rc[(size_t)b * gu + j] += rec_bias[j];
                }
                if (gru_before) {
                    gru_zr(r, b0, b1, g, rec, hk, kl, ex);
                    fnn_gemm(0, 0, nb, u, u, 1.0f, ex + (size_t)b0 * u, u, r->recurrent + 2 * u,
                             gu, 0.0f, rc + 2 * u, gu, 1);
                }
                step_forward(r, b0, b1, t, mask, r->kind == FNN_RNN_LSTM ? in_bias : 0, g,
                             rec, hp, hs + (t + 1) * sh, cs ? cs + t * su : 0,
                             cs ? cs + (t + 1) * su : 0, ex,
                             ys && t ? ys + (t - 1) * su : 0, ys ? ys + t * su : 0);
            }
        });
    fnn_blas_restore(saved);
    return 0;
}

/* One step back: from dy (the output's gradient) and dh, dc (the state's, from the step
 * after), the gates' pre-activation gradients dgx (input side) and dgr (recurrent side: the
 * same array but for a GRU with reset_after), and in dh the part of the previous state's
 * gradient that does not go through the recurrent GEMM (the caller adds dgr R^T). A masked
 * step's gates get no gradient, its state's passes on, its output's goes to the previous
 * output (carry) unless zero_output. GRU without reset_after: this is its first half (dht
 * kept for gru_r_backward, after the GEMM through r h). keep_dh: LSTM and SimpleRNN leave dh
 * as it is (the recurrent GEMM overwrites it), else zero it for the GEMM to add to. */
FNN_DISPATCH
static void step_backward(const fnn_rnn *r, int b0, int b1, int t, const uint8_t *mask,
                          const float *dy,
                          float *carry, float *dh, float *dc, float *dht, const float *g,
                          const float *ex, const float *hp, const float *cp, float *dgx,
                          float *dgr, int keep_dh) {
    int u = r->units, gu = gates_of(r->kind) * u, j;
    for (int b = b0; b < b1; b++) {
        const float *dyb = dy ? dy + (size_t)b * u : 0, *gb = g + (size_t)b * gu;
        const float *hpb = hp + (size_t)b * h_ld(r);
        float *cb = mask ? carry + (size_t)b * u : 0, *dhb = dh + (size_t)b * u;
        float *dtb = dht + (size_t)b * u, *xb = dgx + (size_t)b * gu;
        int keep = !mask || mask[(size_t)t * r->batch + b];
        if (!keep) {
            for (j = 0; j < u; j++)
                cb[j] = r->zero_output ? 0.0f : (dyb ? dyb[j] : 0.0f) + cb[j];
            memset(xb, 0, (size_t)gu * sizeof(float));
            if (dgr != dgx) memset(dgr + (size_t)b * gu, 0, (size_t)gu * sizeof(float));
            continue;
        }
        state_grad(u, dhb, dyb, cb, dtb);
        if (r->kind == FNN_RNN_SIMPLE) {
            for (j = 0; j < u; j++) xb[j] = dtb[j];
            dact_span(r->act, gb, xb, u);
            if (!keep_dh) memset(dhb, 0, (size_t)u * sizeof(float));
        } else if (r->kind == FNN_RNN_LSTM) {
            lstm_back(r->act, r->rec_act, u, gb, ex + (size_t)b * u, cp + (size_t)b * u, dtb,
                      dc + (size_t)b * u, xb);
            if (!keep_dh) memset(dhb, 0, (size_t)u * sizeof(float));
        } else {
            for (j = 0; j < u; j++) {
                xb[2 * u + j] = dtb[j] * (1.0f - gb[j]);
                xb[j] = dtb[j] * (hpb[j] - gb[2 * u + j]);
            }
            dact_span(r->act, gb + 2 * u, xb + 2 * u, u);
            dact_span(r->rec_act, gb, xb, u);
            if (r->reset_after) {
                const float *rh = ex + (size_t)b * u;
                float *rb = dgr + (size_t)b * gu;
                for (j = 0; j < u; j++) {
                    xb[u + j] = xb[2 * u + j] * rh[j];
                    rb[2 * u + j] = xb[2 * u + j] * gb[u + j];
                    dhb[j] = dtb[j] * gb[j];
                }
                dact_span(r->rec_act, gb + u, xb + u, u);
                memcpy(rb, xb, 2 * (size_t)u * sizeof(float));
            }
        }
    }
}

/* GRU without reset_after, after drh = (candidate's gradient) R_h^T: the r gate's gradient
 * (through r hk, hk the state as the kernel saw it) and the previous state's direct part,
 * dht z + drh r (times the recurrent dropout mask rm, if any). */
FNN_DISPATCH
static void gru_r_backward(const fnn_rnn *r, int b0, int b1, int t, const uint8_t *mask,
                           const float *drh, const float *dht, const float *g, const float *hk,
                           int kl, const float *rm, float *dgx, float *dh) {
    int u = r->units, gu = 3 * u, j;
    for (int b = b0; b < b1; b++) {
        if (mask && !mask[(size_t)t * r->batch + b]) continue;
        const float *gb = g + (size_t)b * gu, *hkb = hk + (size_t)b * kl;
        const float *db = drh + (size_t)b * u, *dtb = dht + (size_t)b * u;
        float *xb = dgx + (size_t)b * gu, *dhb = dh + (size_t)b * u;
        for (j = 0; j < u; j++) {
            float via_r = db[j] * gb[u + j];
            xb[u + j] = db[j] * hkb[j];
            dhb[j] = dtb[j] * gb[j] + (rm ? via_r * rm[(size_t)b * u + j] : via_r);
        }
        dact_span(r->rec_act, gb + u, xb + u, u);
    }
}

/* A weight gradient a^T b (m x n) over all T*B rows: K (the rows) split into blocks fixed by
 * the row count, their partial products summed in order. fnn_gemm's own plan for this shape
 * (128 x 512 x 6400) is a 2 x 8 grid of blocks that each re-pack a share of both operands
 * (50 GFLOP/s on one EPYC core, where one BLAS call runs at 86); the K blocks pack each
 * operand once (4-8 blocks: 10.3-10.7 ms against 16-19 ms) and still split on threads. */
#define RNN_WGRAD_ROWS 1024
static int wgrad_blocks(int rows) {
    int b = rows / RNN_WGRAD_ROWS;
    return b < 2 ? 2 : b > 8 ? 8 : b;
}

static int wgrad(int m, int n, int rows, int blocks, const float *a, int lda, const float *b,
                 int ldb, float *c, int ldc, int n_threads) {
    return fnn_gemm_ex(1, 0, m, n, rows, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, FNN_SPLIT_K,
                       blocks, NULL, n_threads);
}

int fnn_rnn_backward(const fnn_rnn *r, const float *x, const uint8_t *mask, const float *hs,
                     const float *cs, const float *gates, const float *extra, const float *dys,
                     float *dh, float *dc, float *carry, float *dht, float *drh, float *dgx,
                     float *dgr, float *d_kernel, float *d_recurrent, float *d_bias, float *dx,
                     const float *rec_mask, const float *hd, int n_threads) {
    int T = r->steps, B = r->batch, D = r->d_in, u = r->units;
    int gu = gates_of(r->kind) * u, rows = T * B, xl = x_ld(r), hl = h_ld(r);
    size_t su = (size_t)B * u, sg = (size_t)B * gu, sh = (size_t)B * hl;
    int gru_before = r->kind == FNN_RNN_GRU && !r->reset_after;
    if (!fnn_blas_ready()) return -1;
    int chunks = batch_chunks(B), nt = chunk_threads(r, chunks, n_threads), ci;
    int step_dx = dx && step_inputs(r, chunks);
    /* R^T, so each step's product through it is a plain A B (7 % faster than A R^T); W^T
     * after it when each chunk takes dx_t = dg_t W^T step by step (likewise) */
    float *rt = malloc(((size_t)gu * u + (step_dx ? (size_t)gu * D : 0)) * sizeof(float));
    if (!rt) return -2;
    float *wt = step_dx ? rt + (size_t)gu * u : 0;
    for (int i = 0; i < u; i++)
        for (int j = 0; j < gu; j++) rt[(size_t)j * u + i] = r->recurrent[(size_t)i * gu + j];
    for (int i = 0; wt && i < D; i++)
        for (int j = 0; j < gu; j++) wt[(size_t)j * D + i] = r->kernel[(size_t)i * gu + j];
    if (mask) memset(carry, 0, su * sizeof(float));
    /* LSTM and SimpleRNN without a mask: dh is all the recurrent GEMM's (step_backward left
     * what it read there), so the GEMM writes it rather than adding to zeros */
    int dh_overwritten = !mask && !rec_mask && r->kind != FNN_RNN_GRU;
    /* the bias gradient summed per chunk as its steps go (the rows in cache), then over the
     * chunks in order: no pass over all of dgx after; GRU with reset_after: dgr's too */
    int nbias = !d_bias ? 0 : r->kind == FNN_RNN_GRU && r->reset_after ? 2 : 1;
    float *bacc = nbias ? calloc((size_t)chunks * nbias * gu, sizeof(float)) : 0;
    if (nbias && !bacc) {
        free(rt);
        return -2;
    }
    int saved = fnn_blas_pin();
    FNN_PARALLEL_FOR(schedule(static),
        for (ci = 0; ci < chunks; ci++) {
            int b0 = (int)((long)B * ci / chunks), b1 = (int)((long)B * (ci + 1) / chunks);
            int nb = b1 - b0;
            float *dhc = dh + (size_t)b0 * u;
            for (int t = T - 1; t >= 0; t--) {
                const float *ex = extra ? extra + t * su : 0;
                float *gx = dgx + t * sg, *gr = dgr + t * sg;
                step_backward(r, b0, b1, t, mask, dys ? dys + t * su : 0, carry, dh, dc, dht,
                              gates + t * sg, ex, hs + t * sh, cs ? cs + t * su : 0, gx, gr,
                              dh_overwritten);
                if (gru_before) {
                    fnn_gemm(0, 0, nb, u, u, 1.0f, gx + (size_t)b0 * gu + 2 * u, gu,
                             rt + (size_t)2 * u * u, u, 0.0f, drh + (size_t)b0 * u, u, 1);
                    gru_r_backward(r, b0, b1, t, mask, drh, dht, gates + t * sg,
                                   rec_mask ? hd + t * su : hs + t * sh, rec_mask ? u : hl,
                                   rec_mask, gx, dh);
                }
                if (nbias) {
                    float *acc = bacc + (size_t)ci * nbias * gu;
                    for (int b = b0; b < b1; b++) {
                        const float *xr = gx + (size_t)b * gu, *rr = gr + (size_t)b * gu;
                        for (int j = 0; j < gu; j++) acc[j] += xr[j];
                        if (nbias == 2)
                            for (int j = 0; j < gu; j++) acc[gu + j] += rr[j];
                    }
                }
                /* the previous state's gradient through the recurrent kernel (masked rows:
                 * dgr is zero there, so their carried dh is unchanged); with recurrent
                 * dropout, through its mask (dht is free by now: the product goes there) */
                int k = gru_before ? 2 * u : gu;
                if (step_dx)        /* this step's input gradient, while gx is in cache */
                    fnn_gemm(0, 0, nb, D, gu, 1.0f, gx + (size_t)b0 * gu, gu, wt, D, 0.0f,
                             dx + ((size_t)b0 * T + t) * D, T * D, 1);
                if (rec_mask) {
                    float *tmp = dht + (size_t)b0 * u;
                    const float *rmc = rec_mask + (size_t)b0 * u;
                    fnn_gemm(0, 0, nb, u, k, 1.0f, gr + (size_t)b0 * gu, gu, rt, u, 0.0f, tmp,
                             u, 1);
                    for (size_t i = 0; i < (size_t)nb * u; i++) dhc[i] += tmp[i] * rmc[i];
                } else {
                    fnn_gemm(0, 0, nb, u, k, 1.0f, gr + (size_t)b0 * gu, gu, rt, u,
                             dh_overwritten ? 0.0f : 1.0f, dhc, u, 1);
                }
            }
        });
    fnn_blas_restore(saved);
    free(rt);
    if (nbias) {
        memset(d_bias, 0, (size_t)nbias * gu * sizeof(float));
        for (ci = 0; ci < chunks; ci++)
            for (int j = 0; j < nbias * gu; j++) d_bias[j] += bacc[(size_t)ci * nbias * gu + j];
        free(bacc);
    }
    /* the weights' gradients over all steps at once (the states as the kernel saw them) */
    const float *hk = rec_mask ? hd : hs;
    int kl = rec_mask ? u : hl, kb = wgrad_blocks(rows), bad = 0;
    if (hs == x + D && hl == xl && !rec_mask && dgr == dgx && !gru_before) {
        /* packed [x_t | h_{t-1}] rows: [d_kernel; d_recurrent] = [x | h]^T dgx, one GEMM
         * that packs dgx (the big operand) once, not twice (17.6 against 18.7 ms a batch at
         * LSTM(128), one core); straight into the gradients when they are adjacent */
        float *both = d_recurrent == d_kernel + (size_t)D * gu ? d_kernel
                      : malloc((size_t)(D + u) * gu * sizeof(float));
        if (!both) return -2;
        bad |= wgrad(D + u, gu, rows, kb, x, xl, dgx, gu, both, gu, n_threads);
        if (both != d_kernel) {
            memcpy(d_kernel, both, (size_t)D * gu * sizeof(float));
            memcpy(d_recurrent, both + (size_t)D * gu, (size_t)u * gu * sizeof(float));
            free(both);
        }
    } else {
        if (gru_before) {
            bad |= wgrad(u, 2 * u, rows, kb, hk, kl, dgx, gu, d_recurrent, gu, n_threads);
            bad |= wgrad(u, u, rows, kb, extra, u, dgx + 2 * u, gu, d_recurrent + 2 * u, gu,
                         n_threads);
        } else {
            bad |= wgrad(u, gu, rows, kb, hk, kl, dgr, gu, d_recurrent, gu, n_threads);
        }
        bad |= wgrad(D, gu, rows, kb, x, xl, dgx, gu, d_kernel, gu, n_threads);
    }
    if (bad) return -2;
    if (dx && !step_dx) {   /* step by step, each step's rows straight into their places */
        ptrdiff_t t;
        nt = fnn_threads((size_t)rows * D * gu, n_threads);
        saved = fnn_blas_pin();
        FNN_PARALLEL_FOR(schedule(static),
            for (t = 0; t < T; t++)
                fnn_gemm(0, 1, B, D, gu, 1.0f, dgx + t * sg, gu, r->kernel, gu, 0.0f, dx + t * D,
                         T * D, 1););
        fnn_blas_restore(saved);
    }
    return 0;
}
